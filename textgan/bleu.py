"""Exact, fast BLEU and Self-BLEU in the Texygen protocol.

Texygen (and every text-GAN paper since) scores a hypothesis with nltk's ``sentence_bleu``
against the *whole* reference set as multiple references, uniform weights over orders
1..n and ``SmoothingFunction().method1``, and reports the mean over hypotheses. Self-BLEU
scores each generated sentence against all the *other* generated sentences.

nltk recounts every reference for every hypothesis, which is quadratic: Self-BLEU-2..5 of
10,000 sentences takes hours. The clipped count of an n-gram only needs its largest count
in any single reference, so we compute that table once (linear in the corpus). For the
leave-one-out references of Self-BLEU we keep the two largest counts of each n-gram: if the
held-out sentence holds the largest one, the maximum over the others is the second. The
closest reference length (ties go to the shorter, as in nltk) is a sorted search.

The arithmetic after counting repeats nltk's operation for operation, so the scores agree
with nltk bit for bit in practice, and within 1e-9 in the tests.

Sentences are token lists, or strings split on whitespace (the corpora are pre-tokenized).
Texygen tokenized with ``nltk.word_tokenize``; on pre-tokenized, lower-cased text that
splits the same way except for rare punctuation cases.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Sequence

from .config import check_sentences

Tokens = Sequence[str]

# nltk's SmoothingFunction().method1 adds this count to a zero precision.
EPSILON = 0.1


def tokenize(sentences: Iterable[str | Tokens]) -> list[list[str]]:
    """Strings are split on whitespace; token lists are kept as they are.

    A single string in place of the collection is a TypeError: iterating over it would score each of
    its characters as a sentence of one token and return a number that means nothing."""
    check_sentences(sentences)
    return [s.split() if isinstance(s, str) else list(s) for s in sentences]


def ngram_counts(tokens: Tokens, max_n: int) -> list[Counter]:
    """Counters of the n-grams of orders 1..max_n (index 0 holds order 1)."""
    return [Counter(zip(*(tokens[i:] for i in range(n)))) for n in range(1, max_n + 1)]


def _score(counts: list[Counter], length: int, ref_length: int, max_counts, orders: Sequence[int]) -> list[float]:
    """nltk's corpus_bleu for one hypothesis, given max_counts(order_index, ngram, count) -> clip."""
    max_n = len(counts)
    numerators = [sum(min(c, max_counts(k, g, c)) for g, c in counts[k].items()) for k in range(max_n)]
    if numerators[0] == 0:  # no unigram matches: nltk returns 0 before smoothing
        return [0.0 for _ in orders]
    precisions = []
    for k in range(max_n):
        denominator = max(1, length - k)
        # method1: a zero precision becomes (0 + epsilon) / denominator.
        precisions.append(numerators[k] / denominator if numerators[k] else (0 + EPSILON) / denominator)
    if length > ref_length:
        brevity = 1
    elif length == 0:
        brevity = 0
    else:
        brevity = math.exp(1 - ref_length / length)
    scores = []
    for n in orders:
        weight = 1.0 / n
        scores.append(brevity * math.exp(math.fsum(weight * math.log(p) for p in precisions[:n])))
    return scores


def _closest(lengths: list[int], length: int) -> int:
    """The reference length closest to `length`; ties go to the shorter (nltk's rule)."""
    i = bisect.bisect_left(lengths, length)
    candidates = lengths[max(0, i - 1) : i + 1]
    return min(candidates, key=lambda r: (abs(r - length), r))


def check_orders(orders: Sequence[int]) -> list[int]:
    if isinstance(orders, (int, str)):  # orders=4 would be taken for one order, or for 1..4
        raise TypeError(f"orders must be a sequence of n-gram orders such as (2, 3, 4, 5), got {orders!r}")
    orders = list(orders)
    if not orders or any(not isinstance(n, int) or n < 1 for n in orders):
        raise ValueError(f"orders must be positive integers, got {orders}")
    return orders


def bleu_scores(
    hypotheses: Iterable[str | Tokens], references: Iterable[str | Tokens], orders: Sequence[int] = (2, 3, 4, 5)
) -> dict[int, list[float]]:
    """Per-hypothesis BLEU-n against the whole reference set, for each n in `orders`."""
    orders = check_orders(orders)
    max_n = max(orders)
    references = tokenize(references)
    if not references:
        raise ValueError("BLEU needs at least one reference sentence")
    table: list[dict] = [{} for _ in range(max_n)]
    for ref in references:
        for k, counts in enumerate(ngram_counts(ref, max_n)):
            best = table[k]
            for g, c in counts.items():
                if c > best.get(g, 0):
                    best[g] = c
    ref_lengths = sorted({len(r) for r in references})

    def max_counts(k, g, c):
        return table[k].get(g, 0)

    results: dict[int, list[float]] = {n: [] for n in orders}
    for hyp in tokenize(hypotheses):
        scores = _score(ngram_counts(hyp, max_n), len(hyp), _closest(ref_lengths, len(hyp)), max_counts, orders)
        for n, s in zip(orders, scores):
            results[n].append(s)
    return results


def self_bleu_scores(sentences: Iterable[str | Tokens], orders: Sequence[int] = (2, 3, 4, 5)) -> dict[int, list[float]]:
    """Per-sentence Self-BLEU-n: each sentence against all the others (leave-one-out by position).

    A sentence that occurs twice has its twin among its references, as it should: duplicates
    are a loss of diversity that Self-BLEU is meant to show.
    """
    orders = check_orders(orders)
    max_n = max(orders)
    sentences = tokenize(sentences)
    if len(sentences) < 2:
        raise ValueError("Self-BLEU needs at least two sentences")
    all_counts = [ngram_counts(s, max_n) for s in sentences]
    # The largest and second-largest count of each n-gram over single sentences.
    top1: list[dict] = [{} for _ in range(max_n)]
    top2: list[dict] = [{} for _ in range(max_n)]
    for counts in all_counts:
        for k in range(max_n):
            first, second = top1[k], top2[k]
            for g, c in counts[k].items():
                f = first.get(g, 0)
                if c > f:
                    if f:
                        second[g] = f
                    first[g] = c
                elif c > second.get(g, 0):
                    second[g] = c

    def max_counts(k, g, c):
        # The held-out sentence holds count c; if that is the largest, the others' best is the second.
        f = top1[k][g]
        return top2[k].get(g, 0) if c == f else f

    length_counts = Counter(len(s) for s in sentences)
    unique_lengths = sorted(length_counts)
    results: dict[int, list[float]] = {n: [] for n in orders}
    for tokens, counts in zip(sentences, all_counts):
        length = len(tokens)
        if length_counts[length] > 1:
            ref_length = length
        else:
            others = unique_lengths[:]
            others.remove(length)
            ref_length = _closest(others, length)
        for n, s in zip(orders, _score(counts, length, ref_length, max_counts, orders)):
            results[n].append(s)
    return results


def _mean(scores: dict[int, list[float]]) -> dict[int, float]:
    """The mean per order; a ValueError where there were no hypotheses, whose mean is undefined (not 0)."""
    if not next(iter(scores.values()), []):
        raise ValueError("BLEU needs at least one hypothesis")
    return {n: math.fsum(v) / len(v) for n, v in scores.items()}


def bleu(
    hypotheses: Iterable[str | Tokens], references: Iterable[str | Tokens], orders: Sequence[int] = (2, 3, 4, 5)
) -> dict[int, float]:
    """Mean BLEU-n of the hypotheses against the whole reference set (Texygen's BLEU), by order."""
    return _mean(bleu_scores(hypotheses, references, orders))


def self_bleu(sentences: Iterable[str | Tokens], orders: Sequence[int] = (2, 3, 4, 5)) -> dict[int, float]:
    """Mean leave-one-out Self-BLEU-n of a sample set, by order. Lower means more diverse."""
    return _mean(self_bleu_scores(sentences, orders))


def corpus_bleu(hypotheses: Sequence[str | Tokens], references: Sequence[str | Tokens], max_n: int = 4) -> float:
    """Corpus-level BLEU (Papineni et al. 2002) with one reference per hypothesis, on a 0-100 scale.

    Clipped n-gram counts and lengths are summed over the corpus before the precisions and
    the brevity penalty are taken, with sacreBLEU's default ``exp`` smoothing of zero counts;
    on whitespace-tokenized text it equals ``sacrebleu.corpus_bleu(hyps, [refs], tokenize='none')``.
    This is the self-BLEU (against the inputs) and ref-BLEU (against human rewrites) of style transfer.
    """
    hyps, refs = tokenize(hypotheses), tokenize(references)
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references; give one reference per hypothesis")
    correct, total = [0] * max_n, [0] * max_n
    hyp_length = ref_length = 0
    for hyp, ref in zip(hyps, refs):
        hyp_length, ref_length = hyp_length + len(hyp), ref_length + len(ref)
        for n, (h, r) in enumerate(zip(ngram_counts(hyp, max_n), ngram_counts(ref, max_n))):
            correct[n] += sum(min(count, r[gram]) for gram, count in h.items())
            total[n] += max(len(hyp) - n, 0)
    if hyp_length == 0 or correct[0] == 0:  # no word in common: 0, as sacreBLEU
        return 0.0
    log_precision, smooth = 0.0, 1.0
    for n in range(max_n):
        if total[n] == 0:
            return 0.0
        if correct[n] == 0:
            smooth *= 2
            log_precision += math.log(1.0 / (smooth * total[n]))
        else:
            log_precision += math.log(correct[n] / total[n])
    brevity = 0.0 if hyp_length >= ref_length else 1.0 - ref_length / hyp_length
    return 100.0 * math.exp(brevity + log_precision / max_n)
