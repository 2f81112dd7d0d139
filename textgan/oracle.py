"""The SeqGAN synthetic-data oracle: a fixed random LSTM whose exact likelihood scores samples.

Yu et al. (2017) sample 10,000 sequences of 20 tokens (vocabulary 5,000) from this LSTM as
training data; a generator's samples are then scored by their mean per-token NLL under the
oracle ("NLL-oracle", lower is better quality) and the generator by its NLL on held-out
oracle samples ("NLL-test", lower is better coverage). The parameters ship as an npz file
(``../shared/data/oracle/seqgan_oracle.npz``; arrays only, loaded without pickle).

As text, an oracle sequence is its token ids separated by spaces ("12 4093 7 ..."), so the
word-level tokenizer and the recipes handle it like any other corpus.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

PARAMETERS = ("g_embeddings", "Wi", "Ui", "bi", "Wf", "Uf", "bf", "Wog", "Uog", "bog", "Wc", "Uc", "bc", "Wo", "bo")


class OracleError(ValueError):
    """The oracle file is missing or is not a SeqGAN oracle."""


class Oracle:
    """The oracle LSTM (equations in ``../shared/data/README.md``), in float64 for exact scores."""

    start_token = 0
    length = 20

    def __init__(self, params: dict[str, torch.Tensor]):
        missing = [k for k in PARAMETERS if k not in params]
        if missing:
            raise OracleError(f"oracle parameters missing: {', '.join(missing)}; pass the path to seqgan_oracle.npz")
        self.p = {k: params[k].double() for k in PARAMETERS}
        self.vocab_size = self.p["g_embeddings"].shape[0]
        self._check_shapes()

    def _check_shapes(self) -> None:
        """Every parameter's shape against the embedding table's (V, E) and the hidden size H of Ui."""
        p = self.p
        if p["g_embeddings"].dim() != 2 or p["Ui"].dim() != 2:
            raise OracleError("oracle parameters have the wrong shapes: g_embeddings and Ui must be matrices")
        (V, E), H = p["g_embeddings"].shape, p["Ui"].shape[0]
        expected = {"g_embeddings": (V, E), "Wo": (H, V), "bo": (V,)}
        for gate in ("i", "f", "og", "c"):
            expected |= {f"W{gate}": (E, H), f"U{gate}": (H, H), f"b{gate}": (H,)}
        wrong = [f"{k} {tuple(p[k].shape)} (expected {shape})" for k, shape in expected.items() if tuple(p[k].shape) != shape]
        if wrong:
            raise OracleError(f"oracle parameters have the wrong shapes: {', '.join(wrong)}")

    @classmethod
    def load(cls, path: str | Path) -> Oracle:
        import numpy as np

        path = Path(path)
        if not path.is_file():
            raise OracleError(f"oracle file {path} not found; pass the path to seqgan_oracle.npz")
        # np.load takes any file it can guess a format for (a lone .npy array, a pickle it then refuses), so an
        # npz is told by its zip archive first, and each member must read as an array
        not_npz = f"{path} is not an npz file of oracle parameters (numpy.savez's zip of arrays)"
        if not zipfile.is_zipfile(path):
            raise OracleError(f"{not_npz}; pass the path to seqgan_oracle.npz")
        try:
            with np.load(path, allow_pickle=False) as arrays:
                loaded = {k: arrays[k] for k in arrays.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise OracleError(f"{not_npz}: {e}") from None
        bad = [k for k, v in loaded.items() if not isinstance(v, np.ndarray)]
        if bad:
            raise OracleError(f"{not_npz}: {', '.join(map(repr, bad))} {'is' if len(bad) == 1 else 'are'} not a "
                              "numpy array")
        return cls({k: torch.from_numpy(v.copy()) for k, v in loaded.items()})

    def _step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        p = self.p
        i = torch.sigmoid(x @ p["Wi"] + h @ p["Ui"] + p["bi"])
        f = torch.sigmoid(x @ p["Wf"] + h @ p["Uf"] + p["bf"])
        o = torch.sigmoid(x @ p["Wog"] + h @ p["Uog"] + p["bog"])
        c_new = torch.tanh(x @ p["Wc"] + h @ p["Uc"] + p["bc"])
        c = f * c + i * c_new
        h = o * torch.tanh(c)
        return h @ p["Wo"] + p["bo"], h, c  # logits (B, V)

    def _start(self, batch: int):
        hidden = self.p["Ui"].shape[0]
        h = torch.zeros(batch, hidden, dtype=torch.float64)
        x = self.p["g_embeddings"][torch.full((batch,), self.start_token)]
        return x, h, h.clone()

    @torch.no_grad()
    def sample(self, n: int, seed: int, batch_size: int = 1000) -> torch.Tensor:
        """(n, 20) long: n sequences sampled at temperature 1, reproducible from ``seed``."""
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be at least 1, got n={n}, batch_size={batch_size}")
        rng = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, n, batch_size):
            rows = min(batch_size, n - start)
            x, h, c = self._start(rows)
            tokens = []
            for _ in range(self.length):
                logits, h, c = self._step(x, h, c)
                token = torch.multinomial(F.softmax(logits, -1), 1, generator=rng).squeeze(1)
                tokens.append(token)
                x = self.p["g_embeddings"][token]
            out.append(torch.stack(tokens, 1))
        return torch.cat(out)

    @torch.no_grad()
    def token_logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) long, teacher-forced from the start state -> (B, T) float64 log-probs."""
        x, h, c = self._start(tokens.shape[0])
        out = []
        for t in range(tokens.shape[1]):
            logits, h, c = self._step(x, h, c)
            out.append(F.log_softmax(logits, -1).gather(1, tokens[:, t : t + 1]).squeeze(1))
            x = self.p["g_embeddings"][tokens[:, t]]
        return torch.stack(out, 1)

    def nll(self, tokens: torch.Tensor, batch_size: int = 2000) -> float:
        """NLL-oracle: mean per-token negative log-likelihood (nats) of (N, T) sequences; a ValueError for no tokens
        or a token that is not an oracle id."""
        if not tokens.numel():
            raise ValueError("NLL-oracle needs at least one sequence")
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise ValueError(f"NLL-oracle: token ids must be in [0, {self.vocab_size}), got "
                             f"{int(tokens.min())}..{int(tokens.max())}")
        total = sum(-self.token_logprobs(tokens[i : i + batch_size]).sum().item() for i in range(0, len(tokens), batch_size))
        return total / tokens.numel()

    def entropy_estimate(self, n: int = 10_000, seed: int = 12345) -> float:
        """Monte-Carlo estimate of the oracle's per-token entropy (its own NLL on its samples)."""
        return self.nll(self.sample(n, seed))


def to_text(tokens: torch.Tensor) -> list[str]:
    """Oracle sequences as lines of space-separated token ids."""
    return [" ".join(map(str, row)) for row in tokens.tolist()]


def from_text(lines: list[str], length: int = Oracle.length, vocab_size: int = 5000) -> tuple[torch.Tensor, int]:
    """Parse sample lines back into sequences; keeps lines of exactly ``length`` valid ids.

    Returns the (N, length) tensor and the number of lines dropped (wrong length or a token
    that is not an oracle id), which a report must state.
    """
    rows = []
    for line in lines:
        words = line.split()
        if len(words) == length and all(w.isdigit() and int(w) < vocab_size for w in words):
            rows.append([int(w) for w in words])
    tensor = torch.tensor(rows, dtype=torch.long) if rows else torch.zeros(0, length, dtype=torch.long)
    return tensor, len(lines) - len(rows)


def uniform_nll(vocab_size: int = 5000) -> float:
    """The NLL of a uniform guess, a sanity ceiling for NLL-oracle."""
    return math.log(vocab_size)
