"""Training objectives for the generator (MLE) and the discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rl import loss_mean, loss_means

DISC_OBJECTIVES = ("bce", "hinge", "lsgan")


def mle_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per real token (of the global batch under torchrun: :func:`~textgan.rl.loss_mean`).
    logprobs, mask: (B, T) -> scalar."""
    return -loss_mean(logprobs, mask)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_mask: torch.Tensor | None = None,
                       fake_mask: torch.Tensor | None = None, *, objective: str = "bce") -> torch.Tensor:
    """Loss that pushes real logits up and fake logits down.

    Works for per-token logits (B, T) with masks of their shape, or per-sentence logits (B,) without.

    - ``bce``: −log D(real) − log(1 − D(fake)), the standard GAN cross-entropy
    - ``hinge``: relu(1 − real) + relu(1 + fake)
    - ``lsgan``: ½(real − 1)² + ½ fake² (least squares)
    """
    if objective == "bce":
        real_term, fake_term = F.softplus(-real_logits), F.softplus(fake_logits)
    elif objective == "hinge":
        real_term, fake_term = F.relu(1 - real_logits), F.relu(1 + fake_logits)
    elif objective == "lsgan":
        real_term, fake_term = 0.5 * (real_logits - 1) ** 2, 0.5 * fake_logits**2
    else:
        raise ValueError(f"unknown discriminator objective {objective!r}; choose one of {', '.join(DISC_OBJECTIVES)}")
    for name, logits, mask in (("real", real_logits, real_mask), ("fake", fake_logits, fake_mask)):
        if mask is not None and mask.shape != logits.shape:  # it would broadcast over rows or positions
            raise ValueError(f"{name}_mask {tuple(mask.shape)} must have the shape of {name}_logits {tuple(logits.shape)}")
    real, fake = loss_means((real_term, real_mask), (fake_term, fake_mask))
    return real + fake
