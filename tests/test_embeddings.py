"""Corpus word vectors (PPMI + SVD) and their use as ScratchGAN's starting embeddings."""

import math

import pytest
import torch
from conftest import TINY_RUN

from textgan.embeddings import cooccurrence, init_embedding, ppmi, ppmi_vectors

PAD = 0


def test_cooccurrence_counts_pairs_within_the_window_weighted_by_distance():
    ids = torch.tensor([[1, 2, 3, PAD], [2, 3, PAD, PAD]])
    counts = cooccurrence(ids, 4, PAD, window=2)
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[1, 2] = expected[2, 1] = 1.0  # row 1, distance 1
    expected[2, 3] = expected[3, 2] = 2.0  # rows 1 and 2, distance 1
    expected[1, 3] = expected[3, 1] = 0.5  # row 1, distance 2
    assert counts.is_sparse
    torch.testing.assert_close(counts.to_dense(), expected)


def test_ppmi_by_hand():
    counts = torch.tensor([[0.0, 2.0, 1.0], [2.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    total = 8.0
    p_row = counts.sum(1) / total
    context = counts.sum(0) ** 0.75
    context = context / context.sum()
    expected = torch.zeros(3, 3, dtype=torch.float64)
    for a in range(3):
        for b in range(3):
            if counts[a, b] > 0:
                expected[a, b] = max(0.0, math.log(counts[a, b] / total / (p_row[a] * context[b])))
    torch.testing.assert_close(ppmi(counts), expected)
    assert ppmi(torch.zeros(3, 3)).abs().sum() == 0
    sparse = ppmi(counts.to_sparse())
    assert sparse.is_sparse
    torch.testing.assert_close(sparse.to_dense(), expected)


@pytest.mark.parametrize("vocab_size", [9, 5000], ids=["full-svd", "truncated-svd"])
def test_words_used_alike_get_similar_vectors_and_padding_none(vocab_size):
    # "cat" and "dog" (3, 4) share every context; "red" and "blue" (5, 6) share theirs;
    # with 5,000 words (all but 9 unseen) the truncated SVD of the sparse matrix must find the same
    a, the, sat, cat, dog, red, blue, car = range(1, 9)
    rows = []
    for g in range(40):
        animal = (cat, dog)[g % 2]
        colour = (red, blue)[(g // 2) % 2]
        rows += [[the, animal, sat, PAD], [a, colour, car, PAD]]
    vectors = ppmi_vectors(torch.tensor(rows), vocab_size, 4, PAD)
    assert vectors.shape == (vocab_size, 4) and vectors.dtype == torch.float32
    assert vectors[PAD].abs().sum() == 0 and vectors[9:].abs().sum() == 0
    unit = torch.nn.functional.normalize(vectors, dim=1)
    assert unit[cat] @ unit[dog] > 0.9 and unit[red] @ unit[blue] > 0.9
    assert unit[cat] @ unit[red] < 0.5


def test_more_dimensions_than_the_rank_leaves_zero_columns():
    vectors = ppmi_vectors(torch.tensor([[1, 2, 3], [3, 2, 1]]), 4, 6, PAD)
    assert vectors.shape == (4, 6) and vectors[:, 4:].abs().sum() == 0


def test_a_pretrained_size_vocabulary_stays_sparse():
    # 50,257 words (GPT-2's tokenizer): a dense co-occurrence matrix would be 20 GB
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50257, (400, 12), generator=generator)
    counts = cooccurrence(ids, 50257, PAD)
    assert counts.is_sparse and counts._nnz() <= 2 * 400 * (11 + 10)
    vectors = ppmi_vectors(ids, 50257, 16, PAD)
    assert vectors.shape == (50257, 16) and torch.isfinite(vectors).all()
    unseen = torch.ones(50257, dtype=torch.bool)
    unseen[ids.unique()] = False
    assert vectors[unseen].abs().sum() == 0 and vectors[~unseen].abs().sum() > 0


def test_init_embedding_keeps_the_weights_scale_and_checks_the_shape():
    weight = torch.nn.Embedding(5, 3).weight
    scale = float(weight.detach().std())
    vectors = torch.randn(5, 3)
    init_embedding(weight, vectors)
    torch.testing.assert_close(weight.detach(), vectors * scale)
    with pytest.raises(ValueError, match="embedding is"):
        init_embedding(weight, torch.randn(5, 4))


def _tiny_scratchgan(tmp_path):
    """(config, setup, discriminator) of a tiny embed_init=ppmi ScratchGAN run, before training."""
    from textgan.models.discriminator import build_discriminator
    from textgan.recipes import scratchgan
    from textgan.training import Run, prepare

    config = scratchgan.ScratchGANConfig(out_dir=str(tmp_path / "run"), embed_init="ppmi", disc_dim=16, **TINY_RUN)
    setup = prepare(config, Run(config))
    return config, setup, build_discriminator("lstm", len(setup.tokenizer), setup.pad_id, dim=16)


def test_scratchgan_starts_both_players_from_corpus_vectors(tmp_path):
    from textgan.recipes import scratchgan

    config, setup, discriminator = _tiny_scratchgan(tmp_path)
    scratchgan.init_from_corpus(config, setup, discriminator)
    vectors = ppmi_vectors(setup.train_ids, len(setup.tokenizer), 32, setup.pad_id)
    for weight, dim in ((discriminator.embedding.weight, 16), (setup.generator.get_input_embeddings().weight, 32)):
        cosine = torch.nn.functional.cosine_similarity(weight.detach().flatten(), vectors[:, :dim].flatten(), dim=0)
        assert cosine > 0.999


def test_embed_init_must_be_known():
    from textgan.config import ConfigError
    from textgan.recipes import scratchgan

    with pytest.raises(ConfigError, match="embed_init"):
        scratchgan.ScratchGANConfig(embed_init="glove").check()
