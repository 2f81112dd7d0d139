"""Sample-quality and diversity metrics that need no model: distinct-n, uniqueness, copying."""

from __future__ import annotations

import math
from collections import Counter


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(sentences: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams in the set (Li et al. 2016). 0 if there are none."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"distinct-n needs a positive integer n, got {n!r}")
    counts = Counter(g for s in sentences for g in ngrams(s.split(), n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def unique_rate(sentences: list[str]) -> float:
    """Fraction of distinct sentences."""
    return len(set(sentences)) / len(sentences) if sentences else 0.0


def copy_rate(sentences: list[str], training: set[str] | list[str]) -> float:
    """Fraction of sentences that appear verbatim in the training set."""
    training = training if isinstance(training, set) else set(training)
    return sum(s in training for s in sentences) / len(sentences) if sentences else 0.0


def grammar_scores(sentences: list[str], grammar) -> dict[str, float]:
    """Exact quality under a known grammar.

    Returns the grammatical rate, and the mean per-token NLL (nats; the end of the sentence
    counts as a token) of the grammatical sentences under the grammar.
    """
    logprobs = [grammar.logprob(s) for s in sentences]
    ok = [(lp, len(s.split()) + 1) for lp, s in zip(logprobs, sentences) if lp > -math.inf]
    return {
        "grammatical": len(ok) / len(sentences) if sentences else 0.0,
        "grammar_nll": -sum(lp for lp, _ in ok) / sum(n for _, n in ok) if ok else math.inf,
    }
