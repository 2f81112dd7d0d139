"""Word vectors from the training corpus itself: positive PMI of co-occurrences, reduced by SVD.

ScratchGAN starts its generator and discriminator from GloVe vectors, so that both players
know from the first step which words behave alike. Offline, with no vectors to download,
the same kind of vectors can be computed from the training sentences in a second (Levy,
Goldberg and Dagan 2015: a PPMI matrix factorised by SVD is about as good as GloVe on
similarity tasks). This uses the corpus's co-occurrence counts, not its likelihood: the
generator is still never trained to imitate a sentence.
"""

from __future__ import annotations

import torch

MAX_VOCAB = 8192  # covers the word-level vocabularies and the 8,000 of bpe / unigram


def cooccurrence(ids: torch.Tensor, vocab_size: int, pad_id: int, window: int = 2) -> torch.Tensor:
    """Symmetric co-occurrence counts within ``window`` tokens, each pair weighted 1/distance.

    ids: (N, L) long rows (padding ``pad_id``) -> (V, V) float64, ``counts[a, b]`` = ``counts[b, a]``.
    """
    counts = torch.zeros(vocab_size * vocab_size, dtype=torch.float64)
    for distance in range(1, min(window, ids.shape[1] - 1) + 1):
        left, right = ids[:, :-distance].reshape(-1), ids[:, distance:].reshape(-1)
        keep = (left != pad_id) & (right != pad_id)
        pairs = left[keep] * vocab_size + right[keep]
        counts += torch.bincount(pairs, minlength=vocab_size * vocab_size).double() / distance
    counts = counts.view(vocab_size, vocab_size)
    return counts + counts.T


def ppmi(counts: torch.Tensor, alpha: float = 0.75) -> torch.Tensor:
    """Positive pointwise mutual information of a (V, V) count matrix -> (V, V).

    PMI(a, b) = log P(a, b) / (P(a) P_alpha(b)), with the context distribution raised to
    ``alpha`` (Levy et al. 2015: 0.75 keeps rare contexts from dominating); negative values
    and pairs never seen are 0.
    """
    total = counts.sum()
    if total == 0:
        return torch.zeros_like(counts)
    rows = counts.sum(dim=1, keepdim=True) / total  # (V, 1)
    contexts = counts.sum(dim=0, keepdim=True) ** alpha
    contexts = contexts / contexts.sum()  # (1, V)
    pmi = torch.log(counts / total) - torch.log(rows) - torch.log(contexts)  # -inf where never seen
    return torch.where(counts > 0, pmi, torch.zeros_like(pmi)).clamp_min(0.0)


def ppmi_vectors(ids: torch.Tensor, vocab_size: int, dim: int, pad_id: int, window: int = 2) -> torch.Tensor:
    """Word vectors from the SVD of the corpus's PPMI matrix: ``U_k sqrt(S_k)``.

    ids: (N, L) long rows -> (V, dim) float32, each column scaled to unit standard deviation.
    Words that never occur (padding, unknown) get zero vectors; if ``dim`` exceeds the rank
    the SVD can give, the extra columns are zero. The co-occurrence matrix is dense, so
    vocabularies are limited to ``MAX_VOCAB`` words (a few GB of memory at the limit).
    """
    if vocab_size > MAX_VOCAB:
        raise ValueError(f"PPMI word vectors need a vocabulary of at most {MAX_VOCAB:,} words (a dense "
                         f"co-occurrence matrix); this one has {vocab_size:,}")
    matrix = ppmi(cooccurrence(ids, vocab_size, pad_id, window))
    if vocab_size > 2048:  # a full SVD is cubic in V: take the top components only
        U, S, _ = torch.svd_lowrank(matrix, q=min(dim + 16, vocab_size), niter=4)
    else:
        U, S, _ = torch.linalg.svd(matrix)
    k = min(dim, len(S))
    vectors = torch.zeros(vocab_size, dim, dtype=torch.float64)
    vectors[:, :k] = U[:, :k] * S[:k].sqrt()
    std = vectors[:, :k].std(dim=0, keepdim=True)
    vectors[:, :k] /= torch.where(std > 0, std, torch.ones_like(std))
    return vectors.float()


def init_embedding(weight: torch.Tensor, vectors: torch.Tensor) -> None:
    """Copy ``vectors`` (V, D) into an embedding ``weight`` (V, D), scaled to the weight's own
    standard deviation, so the layers above see inputs of the size they were initialised for."""
    if weight.shape != vectors.shape:
        raise ValueError(f"embedding is {tuple(weight.shape)} but the vectors are {tuple(vectors.shape)}")
    with torch.no_grad():
        weight.copy_(vectors.to(weight) * weight.float().std())
