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

DENSE_SVD_LIMIT = 2048  # above this many words a full SVD (cubic in V) gives way to a truncated one


def cooccurrence(ids: torch.Tensor, vocab_size: int, pad_id: int, window: int = 2) -> torch.Tensor:
    """Symmetric co-occurrence counts within ``window`` tokens, each pair weighted 1/distance.

    ids: (N, L) long rows (padding ``pad_id``) -> (V, V) sparse COO float64, coalesced,
    ``counts[a, b]`` = ``counts[b, a]``. Sparse because a corpus pairs each word with few
    others: a 50,000-word vocabulary costs memory in proportion to its distinct pairs, not V^2.
    """
    rows, cols, weights = [], [], []
    for distance in range(1, min(window, ids.shape[1] - 1) + 1):
        left, right = ids[:, :-distance].reshape(-1), ids[:, distance:].reshape(-1)
        keep = (left != pad_id) & (right != pad_id)
        left, right = left[keep], right[keep]
        weight = torch.full(left.shape, 1.0 / distance, dtype=torch.float64)
        rows += [left, right]
        cols += [right, left]
        weights += [weight, weight]
    empty = [torch.zeros(0, dtype=torch.long)]  # rows of one token have no pairs
    indices = torch.stack([torch.cat(rows or empty), torch.cat(cols or empty)])
    values = torch.cat(weights) if weights else torch.zeros(0, dtype=torch.float64)
    return torch.sparse_coo_tensor(indices, values, (vocab_size, vocab_size), check_invariants=True).coalesce()


def ppmi(counts: torch.Tensor, alpha: float = 0.75) -> torch.Tensor:
    """Positive pointwise mutual information of a (V, V) count matrix -> (V, V), sparse if
    ``counts`` is.

    PMI(a, b) = log P(a, b) / (P(a) P_alpha(b)), with the context distribution raised to
    ``alpha`` (Levy et al. 2015: 0.75 keeps rare contexts from dominating); negative values
    and pairs never seen are 0, so only the pairs seen are computed.
    """
    dense = not counts.is_sparse
    sparse = (counts.to_sparse() if dense else counts).coalesce()
    indices, values = sparse.indices(), sparse.values().double()
    a, b = indices
    size = counts.shape[0]
    total = values.sum()
    if total == 0:
        return torch.zeros_like(counts)
    rows = torch.zeros(size, dtype=torch.float64).index_add_(0, a, values) / total
    contexts = torch.zeros(size, dtype=torch.float64).index_add_(0, b, values) ** alpha
    contexts = contexts / contexts.sum()
    pmi = torch.log(values / total) - torch.log(rows[a]) - torch.log(contexts[b])
    keep = pmi > 0
    result = torch.sparse_coo_tensor(indices[:, keep], pmi[keep], counts.shape, check_invariants=True).coalesce()
    return result.to_dense().to(counts.dtype) if dense else result


def ppmi_vectors(ids: torch.Tensor, vocab_size: int, dim: int, pad_id: int, window: int = 2) -> torch.Tensor:
    """Word vectors from the SVD of the corpus's PPMI matrix: ``U_k sqrt(S_k)``.

    ids: (N, L) long rows -> (V, dim) float32, each column scaled to unit standard deviation.
    Words that never occur (padding, unknown) get zero vectors; if ``dim`` exceeds the rank
    the SVD can give, the extra columns are zero. Above ``DENSE_SVD_LIMIT`` words only the top
    components are computed, from the sparse matrix (a randomized SVD: Halko et al. 2011), so
    a pretrained tokenizer's 50,000 words take seconds and memory in proportion to V * dim.
    """
    matrix = ppmi(cooccurrence(ids, vocab_size, pad_id, window))
    if vocab_size > DENSE_SVD_LIMIT:
        U, S, _ = torch.svd_lowrank(matrix, q=min(dim + 16, vocab_size), niter=4)
    else:
        U, S, _ = torch.linalg.svd(matrix.to_dense())
    k = min(dim, len(S))
    vectors = torch.zeros(vocab_size, dim, dtype=torch.float64)
    vectors[:, :k] = U[:, :k] * S[:k].sqrt()
    seen = torch.zeros(vocab_size, dtype=torch.bool)
    seen[matrix.indices()[0]] = True  # ppmi() returns it coalesced
    vectors[~seen] = 0.0  # the randomized SVD leaves rounding noise where a row is empty
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
