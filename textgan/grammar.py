"""A probabilistic context-free grammar with exact sampling and exact scoring.

textgan ships one such grammar (``data/captions.pcfg``): English-like image captions
("a man riding a red bike down a busy street ."). Because the grammar is the true
distribution of the default corpus, every sample a generator writes can be checked exactly:
is it a sentence the grammar can produce, and what is its true log-probability?

Scoring runs the forward algorithm over *parser configurations*: a configuration is the
tuple of symbols still to be produced, leftmost first. Expanding the leftmost nonterminal
until a word is in front is cached, so the automaton is built lazily and scoring a sentence
costs a few dictionary look-ups per token. The grammar must not be recursive, which keeps
every expansion finite; ambiguity is allowed (probabilities of all derivations are summed).
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from pathlib import Path

_NONTERMINAL = re.compile(r"^[A-Z][A-Z0-9_]*$")

DEFAULT_GRAMMAR = "captions.pcfg"


def data_path(name: str) -> Path:
    """Find a file shipped in ``data/``: inside an installed wheel or a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "data" / name, here.parent / "data" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"textgan data file {name!r} is missing; reinstall textgan")


@dataclass(frozen=True)
class Rule:
    lhs: str
    rhs: tuple[str, ...]
    prob: float


def is_nonterminal(symbol: str) -> bool:
    return bool(_NONTERMINAL.match(symbol))


class Grammar:
    """A non-recursive PCFG with start symbol ``S``.

    Args:
        rules: lhs -> list of (rhs symbols, probability); probabilities of one lhs sum to 1.
    """

    def __init__(self, rules: dict[str, list[tuple[tuple[str, ...], float]]], start: str = "S"):
        self.rules = rules
        self.start = start
        self._check()
        self._expand = lru_cache(maxsize=None)(self._expand_uncached)
        # Each nonterminal's alternatives with their cumulative probabilities, for sample(): random.choices
        # would add the weights up again at every draw, and draws the same alternative from these.
        self._choices = {lhs: ([rhs for rhs, _ in alts], list(accumulate(p for _, p in alts)))
                         for lhs, alts in rules.items()}

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_text(cls, text: str) -> Grammar:
        weights: dict[str, list[tuple[tuple[str, ...], float]]] = defaultdict(list)
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if "->" not in line:
                raise ValueError(f"grammar line {lineno}: expected 'LHS -> alternatives'")
            lhs, rhs = (part.strip() for part in line.split("->", 1))
            if not is_nonterminal(lhs):
                raise ValueError(f"grammar line {lineno}: {lhs!r} is not an UPPER_CASE nonterminal")
            for alternative in rhs.split("|"):
                symbols = alternative.split()
                weight = 1.0
                if symbols and symbols[-1].startswith("@"):
                    weight = float(symbols.pop()[1:])
                if weight <= 0:
                    raise ValueError(f"grammar line {lineno}: weights must be positive")
                weights[lhs].append((tuple(symbols), weight))
        rules = {}
        for lhs, alternatives in weights.items():
            total = sum(w for _, w in alternatives)
            rules[lhs] = [(rhs, w / total) for rhs, w in alternatives]
        return cls(rules)

    @classmethod
    def from_file(cls, path: str | Path) -> Grammar:
        return cls.from_text(Path(path).read_text(encoding="utf-8"))

    @classmethod
    def default(cls) -> Grammar:
        """The embedded caption grammar that ships with textgan."""
        return cls.from_file(data_path(DEFAULT_GRAMMAR))

    def _check(self) -> None:
        if self.start not in self.rules:
            raise ValueError(f"grammar has no rules for the start symbol {self.start}")
        for lhs, alternatives in self.rules.items():
            for rhs, _ in alternatives:
                for symbol in rhs:
                    if is_nonterminal(symbol) and symbol not in self.rules:
                        raise ValueError(f"{lhs} uses {symbol}, which has no rules")
        # Depth-first search for cycles: a recursive grammar has unbounded expansions.
        state: dict[str, int] = {}

        def visit(symbol: str, path: tuple[str, ...]) -> None:
            if state.get(symbol) == 2:
                return
            if state.get(symbol) == 1:
                raise ValueError("grammar is recursive: " + " -> ".join(path + (symbol,)))
            state[symbol] = 1
            for rhs, _ in self.rules[symbol]:
                for child in rhs:
                    if is_nonterminal(child):
                        visit(child, path + (symbol,))
            state[symbol] = 2

        visit(self.start, ())

    @property
    def vocabulary(self) -> list[str]:
        """Every word the grammar can produce, sorted."""
        words = {s for alts in self.rules.values() for rhs, _ in alts for s in rhs if not is_nonterminal(s)}
        return sorted(words)

    # ---------------------------------------------------------------- sampling
    def sample(self, rng: random.Random | int) -> list[str]:
        """One sentence, as a list of words, drawn with ``rng`` (a ``random.Random``, or a seed for a new one)."""
        if isinstance(rng, int):
            rng = random.Random(rng)
        out: list[str] = []
        stack = [self.start]
        while stack:
            symbol = stack.pop()
            if not is_nonterminal(symbol):
                out.append(symbol)
                continue
            alternatives, cumulative = self._choices[symbol]
            rhs = rng.choices(alternatives, cum_weights=cumulative)[0]
            stack.extend(reversed(rhs))
        return out

    def sample_corpus(self, n: int, seed: int = 0) -> list[str]:
        """``n`` sentences (space-joined words), deterministic for a given seed."""
        if n < 0:
            raise ValueError(f"sample_corpus needs n >= 0, got {n}")
        rng = random.Random(seed)
        return [" ".join(self.sample(rng)) for _ in range(n)]

    # ---------------------------------------------------------------- scoring
    def _expand_uncached(self, config: tuple[str, ...]) -> tuple[tuple[tuple[str, ...], float], ...]:
        """Expand the leftmost nonterminal until a word (or nothing) is in front.

        Returns (configuration, probability) pairs whose first symbol is a word, or the empty
        configuration (the sentence may end here).
        """
        if not config or not is_nonterminal(config[0]):
            return ((config, 1.0),)
        merged: dict[tuple[str, ...], float] = defaultdict(float)
        for rhs, prob in self.rules[config[0]]:
            for expanded, sub in self._expand(rhs + config[1:]):
                merged[expanded] += prob * sub
        return tuple(merged.items())

    def logprob(self, words: list[str] | str) -> float:
        """Exact log-probability (natural log) of a whole sentence; ``-inf`` if ungrammatical."""
        if isinstance(words, str):
            words = words.split()
        frontier: dict[tuple[str, ...], float] = {(self.start,): 1.0}
        log_scale = 0.0  # rescale each step so long sentences do not underflow
        for word in words:
            nxt: dict[tuple[str, ...], float] = defaultdict(float)
            for config, prob in frontier.items():
                for expanded, sub in self._expand(config):
                    if expanded and expanded[0] == word:
                        nxt[expanded[1:]] += prob * sub
            if not nxt:
                return -math.inf
            total = sum(nxt.values())
            log_scale += math.log(total)
            frontier = {c: p / total for c, p in nxt.items()}
        end = sum(prob * sub for config, prob in frontier.items() for expanded, sub in self._expand(config) if not expanded)
        return log_scale + math.log(end) if end > 0 else -math.inf

    def is_grammatical(self, words: list[str] | str) -> bool:
        return self.logprob(words) > -math.inf
