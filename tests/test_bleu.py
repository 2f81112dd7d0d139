"""BLEU and Self-BLEU must equal nltk's Texygen-protocol scores, case by case."""

import random

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from textgan.bleu import bleu, bleu_scores, self_bleu, self_bleu_scores

ORDERS = (1, 2, 3, 4, 5)


def nltk_bleu(hypothesis, references, n):
    return sentence_bleu(references, hypothesis, (1.0 / n,) * n, smoothing_function=SmoothingFunction().method1)


def random_corpus(rng, size, vocab=6, min_len=0, max_len=9):
    words = [f"w{i}" for i in range(vocab)]
    return [[rng.choice(words) for _ in range(rng.randint(min_len, max_len))] for _ in range(size)]


def assert_equal_to_nltk_bleu(hypotheses, references):
    ours = bleu_scores(hypotheses, references, ORDERS)
    for n in ORDERS:
        expected = [nltk_bleu(h, references, n) for h in hypotheses]
        assert ours[n] == pytest.approx(expected, abs=1e-9, rel=0)


def assert_equal_to_nltk_self_bleu(sentences):
    ours = self_bleu_scores(sentences, ORDERS)
    for n in ORDERS:
        expected = [nltk_bleu(s, sentences[:i] + sentences[i + 1 :], n) for i, s in enumerate(sentences)]
        assert ours[n] == pytest.approx(expected, abs=1e-9, rel=0)


@pytest.mark.parametrize("seed", range(6))
def test_bleu_equals_nltk_on_random_corpora(seed):
    rng = random.Random(seed)
    vocab = rng.choice([3, 6, 20])
    assert_equal_to_nltk_bleu(random_corpus(rng, 25, vocab), random_corpus(rng, 15, vocab))


@pytest.mark.parametrize("seed", range(6))
def test_self_bleu_equals_nltk_leave_one_out_on_random_corpora(seed):
    rng = random.Random(100 + seed)
    assert_equal_to_nltk_self_bleu(random_corpus(rng, 30, rng.choice([3, 6, 20])))


def test_edge_cases_match_nltk():
    references = [["a"], [], ["a", "b", "a", "b"], ["c", "a", "b"]]
    hypotheses = [
        [],  # empty: 0
        ["a"],  # one token
        ["z"],  # no unigram match: 0
        ["a", "b", "a", "b", "a", "b", "a", "b", "c", "a"],  # longer than every reference
        ["a", "a", "a", "a"],  # clipping
        ["c", "a", "b"],  # exact copy of a reference
    ]
    assert_equal_to_nltk_bleu(hypotheses, references)


def test_self_bleu_with_duplicates_and_unique_lengths_matches_nltk():
    sentences = [
        ["a", "b", "c"],
        ["a", "b", "c"],  # a twin: its Self-BLEU is 1
        ["a", "b", "c", "d", "e", "f", "g"],  # the only sentence of its length
        ["b", "b", "b", "b", "b"],
        ["b", "b", "b", "b"],  # the largest count of ("b",) is held by one sentence only
        ["x"],
        [],
    ]
    assert_equal_to_nltk_self_bleu(sentences)
    assert self_bleu_scores(sentences, (3,))[3][0] == 1.0  # (BLEU-4 of a 3-token sentence is smoothed below 1)


def test_self_bleu_leaves_the_hypothesis_out():
    # Including the hypothesis among its references (Texygen's bug) scores 1.0 for all-distinct sentences.
    sentences = ["a man rides a bike", "two dogs play in the snow", "a plate of food on a table"]
    assert self_bleu(sentences)[2] < 0.5
    assert bleu(sentences, sentences)[2] == pytest.approx(1.0)


def test_strings_are_split_on_whitespace():
    assert bleu(["a b c"], ["a b c d"]) == bleu([["a", "b", "c"]], [["a", "b", "c", "d"]])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="two sentences"):
        self_bleu(["only one"])
    with pytest.raises(ValueError, match="reference"):
        bleu(["a"], [])
    with pytest.raises(ValueError, match="orders"):
        bleu(["a"], ["a"], orders=(0,))
    with pytest.raises(ValueError, match="at least one hypothesis"):  # a mean over none, not 0.0
        bleu([], ["a b"])
    with pytest.raises(ValueError, match="at least one hypothesis"):
        bleu(iter([]), ["a b"])


@pytest.mark.parametrize("call", [lambda: bleu("a b c", ["a b c"]), lambda: bleu(["a b c"], "a b c"),
                                  lambda: self_bleu("a b c d"), lambda: bleu_scores(b"a b", ["a b"])],
                         ids=["hypotheses", "references", "self-bleu", "bytes"])
def test_one_string_in_place_of_a_list_of_sentences_is_refused(call):
    """Iterating over a string would score each character as a one-token sentence and return a plausible
    number (BLEU-2 0.19 for bleu("a b c", "a b c")); the call names the mistake instead."""
    with pytest.raises(TypeError, match="list of sentences.*wrap it in a list"):
        call()
