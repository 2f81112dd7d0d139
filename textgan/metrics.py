"""Sample-quality and diversity metrics that need no model: distinct-n, uniqueness, copying."""

from __future__ import annotations

import math
from collections import Counter

from .config import check_sentences


def _check(sentences, name: str = "sentences") -> None:
    """A TypeError for one string given in place of a list of sentences; a ValueError for none (a rate of no
    sentences means nothing, and returning 0 hid an empty sample file)."""
    check_sentences(sentences, name)
    if not len(sentences):
        raise ValueError(f"no {name} to score")


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(sentences: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams in the set (Li et al. 2016). 0 if its sentences hold none (all shorter
    than n words)."""
    _check(sentences)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"distinct-n needs a positive integer n, got {n!r}")
    counts = Counter(g for s in sentences for g in ngrams(s.split(), n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def unique_rate(sentences: list[str]) -> float:
    """Fraction of distinct sentences."""
    _check(sentences)
    return len(set(sentences)) / len(sentences)


def copy_rate(sentences: list[str], training: set[str] | list[str]) -> float:
    """Fraction of sentences that appear verbatim in the training set."""
    _check(sentences)
    check_sentences(training, "training")  # a string would be taken for its set of characters
    training = training if isinstance(training, set) else set(training)
    return sum(s in training for s in sentences) / len(sentences)


def grammar_scores(sentences: list[str], grammar=None) -> dict[str, float]:
    """Exact quality under a known grammar (the embedded one by default).

    Returns the grammatical rate, and the mean per-token NLL (nats; the end of the sentence
    counts as a token) of the grammatical sentences under the grammar.
    """
    _check(sentences)
    if grammar is None:
        from .grammar import Grammar

        grammar = Grammar.default()
    logprobs = [grammar.logprob(s) for s in sentences]
    ok = [(lp, len(s.split()) + 1) for lp, s in zip(logprobs, sentences) if lp > -math.inf]
    return {
        "grammatical": len(ok) / len(sentences),
        "grammar_nll": -sum(lp for lp, _ in ok) / sum(n for _, n in ok) if ok else math.inf,
    }
