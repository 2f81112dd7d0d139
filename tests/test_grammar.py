import hashlib
import itertools
import math
import random
from collections import Counter

import pytest

from textgan.data import load_corpus
from textgan.grammar import Grammar

# An ambiguous grammar: "a b" has two derivations (S -> A B and S -> X), probabilities add up.
TOY = """
S -> A B @3 | X @1 | A @1
A -> a
B -> b @1 | b b @1 | @2
X -> a b
"""


def test_toy_logprob_sums_over_derivations():
    g = Grammar.from_text(TOY)
    # P(a b) = P(S->A B) P(B->b) + P(S->X) = 3/5 * 1/4 + 1/5
    assert math.exp(g.logprob("a b")) == pytest.approx(3 / 5 * 1 / 4 + 1 / 5)
    # P(a) = P(S->A B) P(B->eps) + P(S->A) = 3/5 * 1/2 + 1/5
    assert math.exp(g.logprob("a")) == pytest.approx(3 / 5 * 1 / 2 + 1 / 5)
    assert math.exp(g.logprob("a b b")) == pytest.approx(3 / 5 * 1 / 4)
    assert g.logprob("b a") == -math.inf
    assert g.logprob("") == -math.inf


def test_toy_probabilities_sum_to_one_and_match_sampling():
    g = Grammar.from_text(TOY)
    strings = [" ".join(w) for n in range(4) for w in itertools.product("ab", repeat=n)]
    total = sum(math.exp(g.logprob(s)) for s in strings)
    assert total == pytest.approx(1.0)
    counts = Counter(g.sample_corpus(20000, seed=1))
    for s, c in counts.items():
        p = math.exp(g.logprob(s))
        assert abs(c / 20000 - p) < 5 * math.sqrt(p * (1 - p) / 20000) + 1e-3


def test_sample_takes_a_random_generator_or_a_seed():
    g = Grammar.default()
    assert g.sample(7) == g.sample(random.Random(7))
    assert g.is_grammatical(" ".join(g.sample(7)))
    assert g.sample_corpus(0) == []
    with pytest.raises(ValueError, match="sample_corpus needs n >= 0, got -1"):  # was an empty corpus
        g.sample_corpus(-1)


def test_recursive_grammar_is_rejected():
    with pytest.raises(ValueError, match="recursive"):
        Grammar.from_text("S -> a S | b")


def test_missing_rule_is_rejected():
    with pytest.raises(ValueError, match="no rules"):
        Grammar.from_text("S -> a NOUN")


def test_default_grammar_corpus():
    g = Grammar.default()
    assert 300 <= len(g.vocabulary) <= 1000
    corpus = g.sample_corpus(2000, seed=0)
    assert corpus == g.sample_corpus(2000, seed=0)
    assert corpus != g.sample_corpus(2000, seed=1)
    lengths = [len(s.split()) for s in corpus]
    assert min(lengths) >= 3 and max(lengths) <= 22
    assert sum(lengths) / len(lengths) > 6
    assert all(g.is_grammatical(s) for s in corpus[:500])


def test_the_default_corpus_is_the_one_the_recorded_results_trained_on():
    """Every recorded default-recipe result trained on these 20,000 + 1,000 sentences: a change to the grammar
    file or to sampling (the order of random draws) would change them all, and must be a deliberate one."""
    corpus = load_corpus("grammar", seed=0)
    text = "\n".join(corpus.train + corpus.valid)
    assert (len(corpus.train), len(corpus.valid)) == (20000, 1000)
    assert corpus.train[0] == "a clean kitchen with a black television and a mirror ."
    assert hashlib.sha256(text.encode()).hexdigest() == "860816abab6f526637eb7d5e0ba49be1e450b3922bddb1f80634a31ae998191d"


def test_default_grammar_scores_corruptions_as_ungrammatical():
    g = Grammar.default()
    rng = random.Random(0)
    sentence = "a man riding a red bike down a busy street ."
    assert g.is_grammatical(sentence)
    words = sentence.split()
    swapped = words[:]
    swapped[1], swapped[2] = swapped[2], swapped[1]
    assert not g.is_grammatical(swapped)
    assert not g.is_grammatical(words[:-3])  # cut mid-phrase
    assert not g.is_grammatical(words + ["."])
    shuffled = words[:]
    rng.shuffle(shuffled)
    assert g.logprob(shuffled) < g.logprob(words) or shuffled == words
