"""Discriminators: a per-token (per-prefix) one for dense rewards, and SeqGAN's CNN.

- :class:`TokenDiscriminator` scores every prefix of a sentence, as ScratchGAN's does: an
  LSTM, or a causal Transformer, over token embeddings. Output (B, T) logits.
- :class:`CNNDiscriminator` scores whole sentences with convolutions of several widths,
  max-pooling over time, a highway layer and dropout, as in SeqGAN. Output (B,) logits.

Both take tokens without BOS, ``(B, T)`` with padding after EOS.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from ..rl import loss_mean


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectrally normalise every Linear and Conv1d weight of ``module`` in place."""
    for child in list(module.modules()):
        if isinstance(child, (nn.Linear, nn.Conv1d)):
            _spectral_norm(child)
    return module


class TokenDiscriminator(nn.Module):
    """Logit of "real" for every prefix: ``logits[:, t]`` judges ``tokens[:, : t + 1]``."""

    def __init__(self, vocab_size: int, pad_id: int, *, kind: str = "lstm", dim: int = 128,
                 n_layers: int = 1, n_heads: int = 4, dropout: float = 0.1, max_positions: int = 64,
                 lm_head: bool = False, token_values: bool = False):
        super().__init__()
        if kind not in ("lstm", "transformer"):
            raise ValueError(f"unknown token discriminator kind {kind!r}; choose lstm or transformer")
        if lm_head and token_values:
            raise ValueError("a discriminator with token values has no auxiliary LM head")
        self.kind = kind
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        if kind == "lstm":
            self.encoder = nn.LSTM(dim, dim, num_layers=n_layers, batch_first=True,
                                   dropout=dropout if n_layers > 1 else 0.0)
        else:
            self.position = nn.Embedding(max_positions, dim)
            layer = nn.TransformerEncoderLayer(dim, n_heads, 4 * dim, dropout, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = None if token_values else nn.Linear(dim, 1)
        self.lm_head = nn.Linear(dim, vocab_size) if lm_head else None
        # token values: the state before token t scores every candidate for it, through D's own
        # (tied) embeddings, and the logit of a prefix is the sum of its tokens' values
        self.start = nn.Parameter(torch.zeros(dim)) if token_values else None
        self.value_bias = nn.Parameter(torch.zeros(vocab_size)) if token_values else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) long -> (B, T) float logits."""
        return self.score(self.hidden(tokens), tokens)

    def score(self, h: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, D) from :meth:`hidden` -> (B, T) float logits (fp32 under bf16 autocast too).

        With token values, the logits sum the taken tokens' values, so the tokens (B, T) are needed."""
        if self.start is None:
            return self.head(self.dropout(h)).squeeze(-1).float()
        if tokens is None:
            raise ValueError("a discriminator with token values scores hidden states with their tokens")
        # the taken tokens' values only: no (B, T, V) product. A lookup without padding_idx gives the
        # padding row its gradient, so D can learn to value a padding token that the generator writes
        # inside a sentence; and unlike indexing (weight[tokens]), whose CPU backward adds in a
        # thread-dependent order, it repeats exactly
        rows = nn.functional.embedding(tokens, self.embedding.weight).float()
        bias = nn.functional.embedding(tokens, self.value_bias[:, None]).squeeze(-1)
        return ((self.dropout(h).float() * rows).sum(-1) + bias).cumsum(1)

    def token_values(self, tokens: torch.Tensor) -> torch.Tensor:
        """D's value of every candidate token at every position: (B, T) long -> (B, T, V) float.

        ``values[:, t, v]`` reads ``tokens[:, :t]`` only; the logit of the prefix ending at t is
        ``sum(values[:, s, tokens[:, s]] for s <= t)``. That is the form of the best discriminator's
        logit, log p_data(prefix) − log p_G(prefix), whose terms are the per-token log-ratios
        log p_data(v | prefix) − log p_G(v | prefix); so values[:, t] estimates them for every v at once.
        """
        if self.start is None:
            raise ValueError("this discriminator was built without token values (token_values=True)")
        h = self.hidden(tokens)
        return (self.dropout(h) @ self.embedding.weight.t()).float() + self.value_bias

    def lm_loss(self, h: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Auxiliary language-model loss: mean cross-entropy of ``tokens[:, t + 1]`` predicted from
        ``h[:, t]`` by the LM head, over the positions where ``mask[:, t + 1]``. -> scalar.

        Trained on real sentences only, it teaches D's encoder what real continuations look like
        (which nouns a verb takes, say), features the real/fake head then reads.
        """
        if self.lm_head is None:
            raise ValueError("this discriminator was built without an LM head (lm_head=True)")
        logits = self.lm_head(self.dropout(h[:, :-1])).float()  # (B, T - 1, V)
        losses = nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        return loss_mean(losses, mask[:, 1:])

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) long -> (B, T, D) encoder states, state t having read tokens[:, : t + 1]
        (with token values, tokens[:, : t])."""
        x = self.dropout(self.embedding(tokens))  # (B, T, D)
        if self.start is not None:  # state t reads tokens[:, :t]
            x = torch.cat([self.start.expand(x.shape[0], 1, -1).to(x.dtype), x[:, :-1]], dim=1)
        if self.kind == "lstm":
            # under CPU bf16 autocast oneDNN builds its LSTM kernel only on CPUs with bf16 instructions
            # (it fails elsewhere, e.g. on AVX2-only machines), so on a CPU the recurrence runs in fp32
            with torch.autocast("cpu", enabled=False) if x.device.type == "cpu" else contextlib.nullcontext():
                h, _ = self.encoder(x)
        else:
            T = tokens.shape[1]
            x = x + self.position(torch.arange(T, device=tokens.device))
            causal = nn.Transformer.generate_square_subsequent_mask(T, device=tokens.device)
            h = self.encoder(x, mask=causal, is_causal=True)
        return h


class CNNDiscriminator(nn.Module):
    """SeqGAN's sentence classifier: multi-width convolutions, max-over-time, highway."""

    def __init__(self, vocab_size: int, pad_id: int, *, dim: int = 64,
                 filter_sizes: tuple[int, ...] = (2, 3, 4, 5), num_filters: int = 64, dropout: float = 0.25):
        super().__init__()
        self.pad_id = pad_id
        self.min_length = max(filter_sizes)
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(dim, num_filters, k) for k in filter_sizes)
        features = num_filters * len(filter_sizes)
        self.highway = nn.Linear(features, 2 * features)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) long -> (B,) float logits."""
        if tokens.shape[1] < self.min_length:
            tokens = nn.functional.pad(tokens, (0, self.min_length - tokens.shape[1]), value=self.pad_id)
        x = self.embedding(tokens).transpose(1, 2)  # (B, D, T)
        pooled = torch.cat([torch.relu(conv(x)).amax(dim=2) for conv in self.convs], dim=1)  # (B, F)
        transform, gate = self.highway(pooled).chunk(2, dim=1)
        gate = torch.sigmoid(gate)
        h = gate * torch.relu(transform) + (1 - gate) * pooled
        return self.head(self.dropout(h)).squeeze(-1).float()  # fp32 logits under bf16 autocast too


def build_discriminator(kind: str, vocab_size: int, pad_id: int, *, dim: int = 128, n_layers: int = 1,
                        dropout: float = 0.1, spectral_norm: bool = False, max_positions: int = 64,
                        lm_head: bool = False, token_values: bool = False) -> nn.Module:
    """``kind``: ``lstm`` or ``transformer`` (per-token), or ``cnn`` (per-sentence).

    ``lm_head``: give a per-token discriminator an auxiliary next-token head (see
    :meth:`TokenDiscriminator.lm_loss`)."""
    if kind == "cnn":
        model = CNNDiscriminator(vocab_size, pad_id, dim=dim, dropout=dropout)
    elif kind in ("lstm", "transformer"):
        model = TokenDiscriminator(vocab_size, pad_id, kind=kind, dim=dim, n_layers=n_layers,
                                   dropout=dropout, max_positions=max_positions, lm_head=lm_head,
                                   token_values=token_values)
    else:
        raise ValueError(f"unknown discriminator {kind!r}; choose lstm, transformer or cnn")
    return apply_spectral_norm(model) if spectral_norm else model
