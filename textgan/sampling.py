"""Batched sampling from a causal LM with a KV cache, returning a typed rollout record.

One forward pass over the prompt fills the cache; then each step feeds only the newest token.
Rows share one prompt length (prompts of different lengths are left-padded and masked, as a
style-transfer source is); rows that have ended get padding until every row has ended, and on a
CPU they leave the decoder once enough of them have (:func:`_rows_to_keep`). :func:`sample_texts`
is the text-in, text-out layer on top (unconditional or prompted samples, seeded).
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Rollout(NamedTuple):
    """Sampled continuations. B rows, T sampled positions.

    tokens:   (B, T) long, padding after each row's end token
    logprobs: (B, T) float, log-probability of each token under the distribution it was
              sampled from (after temperature / top-k / top-p); 0 at padding
    mask:     (B, T) bool, True up to and including the end token
    lengths:  (B,) long, number of True entries of ``mask`` per row
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor


def inference(fn):
    """Run ``fn`` in ``torch.inference_mode`` and hand back its tensors as ordinary ones.

    Inference mode skips autograd's bookkeeping (version counters, view tracking) on every tensor
    call, which is about a tenth of the sampler's time on a CPU, where a decoding step is a hundred
    small calls. Autograd refuses its tensors, and the recipes train on what sampling returns, so
    the results are cloned out of it (B x T numbers: next to nothing).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode():
            return _ordinary(fn(*args, **kwargs))

    return wrapper


def _ordinary(out):
    """``out`` (a tensor, or a tuple or list of them) with every inference-mode tensor cloned into
    an ordinary one; anything else as it is."""
    if isinstance(out, torch.Tensor):
        if not out.is_inference():
            return out
        with torch.inference_mode(False):
            return out.clone()
    if isinstance(out, tuple):
        items = [_ordinary(x) for x in out]
        return type(out)(*items) if hasattr(out, "_fields") else tuple(items)
    if isinstance(out, list):
        return [_ordinary(x) for x in out]
    return out


def check_settings(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> None:
    """A ValueError naming the first sampling setting out of range: a temperature that is not a finite positive
    number, a negative top-k, a top-p outside (0, 1]. Outside them sampling would fail deep inside (an index out
    of bounds where every probability is nan) or quietly mean something else."""
    if not 0 < temperature < math.inf:  # nan too
        raise ValueError(f"temperature must be a finite positive number, got {temperature}")
    if not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise ValueError(f"top_k must be a whole number, zero or more (0: no top-k), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1: no nucleus filtering), got {top_p}")


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering. logits: (B, V) -> (B, V).
    Settings out of range are a ValueError (:func:`check_settings`)."""
    check_settings(temperature, top_k, top_p)
    return _filter_logits(logits, temperature, top_k, top_p)


def _filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """:func:`filter_logits` without the checks, for the token loop: its callers check the settings once."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already cover top_p
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(probs: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of probs (B, V) by inverse-CDF sampling: (B,) long.

    Faster than ``torch.multinomial`` on a CPU: for 64 rows, 4x on an Intel Xeon and 17x on an AMD EPYC at a
    vocabulary of 428 (23 us against 406), 36x at 9,327 (231 us against 8.4 ms; most of it the cumulative sum,
    itself twice the softmax before it). A token of probability 0 is never drawn: its CDF interval is empty,
    and the point searched for, the uniform times the row's total, is below the total (a product with a number
    below 1 rounds below the other factor, for totals in the normal range of fp32 or fp64; other dtypes are
    drawn in fp32), so it never falls past the last token with mass.

    uniform: (B, 1), one draw from U[0, 1) per row, in ``probs``' dtype; None draws them from the
    global torch RNG.
    """
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()
        uniform = None if uniform is None else uniform.float()
    return _draw_column(probs, uniform).squeeze(1)


def _draw_column(probs: torch.Tensor, uniform: torch.Tensor | None) -> torch.Tensor:
    """:func:`draw` on fp32 or fp64 ``probs``, as a (B, 1) column."""
    cdf = probs.cumsum(-1)
    if uniform is None:
        uniform = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype)
    return torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)


@inference
def sample(
    model,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    fast: bool = True,
    prompt_mask: torch.Tensor | None = None,
) -> Rollout:
    """Sample up to ``max_new_tokens`` tokens after ``prompt``.

    Args:
        prompt: (B, P) long, BOS followed by any prefix; rows whose prefix already holds
            ``eos_id`` (after column 0) are finished and get only padding.
        fast: decode Llama-architecture models with textgan's static-cache decoder
            (:mod:`textgan.models.fast_decode`); other models, or ``fast=False``, use the
            Hugging Face forward with its KV cache.
        prompt_mask: (B, P) bool, False on left padding, for prompts of different lengths
            (a style-transfer source); None when every row's prompt is all real tokens.
    Returns:
        a :class:`Rollout` over the new positions only; T <= max_new_tokens (sampling stops
        early once every row has ended). Sampling runs in ``torch.inference_mode`` (see
        :func:`inference`); the tensors returned are ordinary ones, which training can use.

    Precision: in fp32, also under autocast; with :data:`BF16_SAMPLING` set, under bfloat16 autocast
    (``precision=bf16 sample_precision=bf16`` in a recipe) the fast decoder runs its large projections
    (q/k/v, the MLP's) in bf16 and everything else (attention, norms, the output layer, the token
    draws) in fp32: see :func:`matmul_dtype`.
    """
    check_settings(temperature, top_k, top_p)
    _check_prompt(model, prompt, max_new_tokens, prompt_mask)
    low = matmul_dtype(prompt.device)
    with torch.autocast(prompt.device.type, enabled=False):
        return _sample(model, prompt, max_new_tokens, eos_id, pad_id, temperature, top_k, top_p, fast, prompt_mask,
                       low)


def _check_prompt(model, prompt: torch.Tensor, max_new_tokens: int, prompt_mask: torch.Tensor | None) -> None:
    """A ValueError for a prompt :func:`sample` cannot continue: not a (B, P) tensor of token ids of the model's
    vocabulary, or a mask of another shape (each failed deep in the decoder, an IndexError). A warning where prompt
    and new tokens pass the model's positions, as ``generate()`` gives one: rotary embeddings decode positions the
    model never trained on, and learned ones fail."""
    if prompt.dim() != 2 or prompt.dtype not in (torch.long, torch.int):
        raise ValueError(f"prompt must be a (B, P) tensor of token ids (long), got {tuple(prompt.shape)} {prompt.dtype}")
    if prompt_mask is not None and prompt_mask.shape != prompt.shape:
        raise ValueError(f"prompt_mask {tuple(prompt_mask.shape)} must have the prompt's shape {tuple(prompt.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    vocab = model.get_input_embeddings().num_embeddings
    low, high = torch.stack(torch.aminmax(prompt)).tolist() if prompt.numel() else (0, 0)  # one host sync
    if not 0 <= low <= high < vocab:
        raise ValueError(f"the prompt holds ids outside the model's vocabulary of {vocab} tokens ({low}..{high})")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and prompt.shape[1] + max_new_tokens > limit:
        warnings.warn(f"a prompt of {prompt.shape[1]} tokens and {max_new_tokens} new ones pass the model's {limit} "
                      f"positions, which it never trained beyond; ask for at most {max(limit - prompt.shape[1], 0)} "
                      "new tokens", stacklevel=3)


# Opt-in: sample with bf16 projections under bfloat16 autocast (see matmul_dtype); recipes set it for their
# training steps with sample_precision=bf16 (bf16_sampling below). Off by default (see matmul_dtype).
BF16_SAMPLING = False


@contextlib.contextmanager
def bf16_sampling(enabled: bool = True):
    """Set :data:`BF16_SAMPLING` to ``enabled`` inside the block and restore it after: what a recipe
    with ``sample_precision=bf16`` wraps its training steps in (``textgan.training.autocast``)."""
    global BF16_SAMPLING
    before, BF16_SAMPLING = BF16_SAMPLING, enabled
    try:
        yield
    finally:
        BF16_SAMPLING = before


def matmul_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype the fast decoder's large projections take when sampling (``LlamaDecoder``'s
    ``matmul_dtype``): with :data:`BF16_SAMPLING` set, ``torch.bfloat16`` inside bfloat16 autocast on
    ``device``; else None (fp32 sampling).

    Sampling turns autocast itself off, because autocast would cast every matmul's operands at every
    step and leave bf16 activations behind it. Instead the decoder folds its q/k/v, gate/up and down
    matrices into bf16 once, and keeps the residual stream, attention, norms and output layer in fp32,
    so the logits are fp32 products of a bf16-rounded body. On a Xeon with AMX that samples 1.34-1.38x
    faster than fp32 at d_model 256 and 3-4% slower at the default 128 (``benchmarks/sampler_speed.py
    --precision bf16``). The distribution moves by bf16's rounding, as the bf16 training forward's
    does: on the trained default generator, logits up to 0.08 apart and next-token distributions up
    to 0.035 apart in total variation (KL at most 3e-3). Other autocast dtypes (fp16) sample in fp32.

    It is off by default: it saves little at the sizes measured on 2 CPU cores (ScratchGAN steps 1.05x
    faster at d_model 256, 1.35x at 512), and what it does to a run is unknown. Three seeds of the
    default grammar run showed no difference; two Yelp seeds went in opposite directions, one much
    further from its sources than fp32 sampling and one much closer (README, *The same recipe in
    bf16*). Recipes turn it on with ``sample_precision=bf16``.
    """
    kind = device.type
    if BF16_SAMPLING and torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16:
        return torch.bfloat16
    return None


def _sample(model, prompt, max_new_tokens, eos_id, pad_id, temperature, top_k, top_p, fast, prompt_mask,
            low=None) -> Rollout:
    finished = (prompt[:, 1:] == eos_id).any(dim=1)
    logits, next_logits, reorder = _decoder(model, prompt, max_new_tokens, fast, prompt_mask, low)
    tokens, logprobs = _draw_tokens(logits, next_logits, finished, max_new_tokens, eos_id, pad_id, temperature, top_k,
                                    top_p, reorder)
    mask = _mask_new(tokens, prompt, eos_id)
    return Rollout(tokens, logprobs, mask, mask.sum(1))


# Rows the decoder keeps after dropping ended ones are a multiple of this: BLAS libraries pick their
# small-matrix kernels (which sum in another order) for a few rows only, so each kept row's logits
# are then bitwise those of the whole batch, and a seed samples the same tokens with or without
# the drop (measured on an AMD EPYC, where rows 1-3, 5-7 and 9-11 take another kernel; other CPUs
# may differ in the last bits, which tests/test_sampling.py's tolerance allows).
ROW_MULTIPLE = 8


def _rows_to_keep(finished: torch.Tensor, held: torch.Tensor | None, *, multiple: int = ROW_MULTIPLE,
                  least: int | None = None, n_live: int | None = None) -> torch.Tensor | None:
    """Which of the decoder's rows to keep, as indices into them, or None to keep all.

    finished: (B,) bool over the whole batch; held: the batch rows the decoder holds, in its
    order (None: all B). Rows go once ``least`` of the held ones can (default a quarter of
    them: fewer drops, fewer cache copies); the unfinished rows are kept in order, topped up
    with ended ones to a multiple of ``multiple``. Beam search drops whole sources, ``beam``
    decoder rows each, and passes the multiple of sources that makes :data:`ROW_MULTIPLE` rows.
    ``n_live``: how many of the held rows have not finished, when the caller has counted them
    already (the sampler's loop, in which every unfinished row is held).
    """
    ended = finished if held is None else finished[held]
    n_held = ended.shape[0]
    if n_live is None:
        n_live = int((~ended).sum())
    n_keep = min(n_held, -(-n_live // multiple) * multiple)
    if n_held - n_keep < (max(n_held // 4, 1) if least is None else least):
        return None
    live = (~ended).nonzero().squeeze(1)
    filler = ended.nonzero().squeeze(1)[: n_keep - n_live]
    return torch.cat([live, filler]).sort().values


def _draw_tokens(logits, next_logits, finished, max_new_tokens, eos_id, pad_id, temperature, top_k, top_p,
                 reorder=None, greedy=False):
    """The token-by-token loop: (B, T) tokens and their log-probabilities, T <= max_new_tokens.

    greedy: take each row's most likely token instead of drawing one; no random numbers are used,
    and the log-probabilities are 0 (greedy decoding draws from a point mass).

    reorder: the decoder's ``reorder(index)`` (keep its rows ``index``, in that order), or None.
    With it, on a CPU, rows that have ended stop being decoded (:func:`_rows_to_keep`): most
    sentences end well before the longest, so late steps run on a fraction of the batch. Every row
    still takes its uniform from the same draw of B, so the random stream does not depend on the
    drops. A GPU keeps the whole batch, whose decoding steps replay one CUDA graph.
    """
    B = logits.shape[0]
    keep_rows = reorder if logits.device.type == "cpu" else None
    held = None  # the batch rows the decoder holds, in its order; None: all B
    # Every call below costs a CPU step a few microseconds, a few percent of a token's time: tokens stay
    # (B, 1) columns, the rows that have ended are counted once per step (the loop's one host sync, which
    # both the stop and the row drops read), and nothing is masked until a row has ended.
    ended = int(finished.sum())
    finished = finished[:, None]
    tokens, logprobs = [], []
    for t in range(max_new_tokens):
        if greedy:
            token = logits.argmax(-1, keepdim=True)  # (held rows, 1)
            token_logp = torch.zeros(token.shape, device=token.device)
        else:
            probs = _filter_logits(logits.float(), temperature, top_k, top_p).softmax(-1)  # (held rows, V)
            uniform = torch.rand(B, 1, device=probs.device, dtype=probs.dtype)
            token = _draw_column(probs, uniform if held is None else uniform[held])
            token_logp = probs.gather(1, token).log_()  # a drawn token's probability is > 0
        if held is not None:  # back to (B, 1): rows not held have ended, and get padding below
            token = torch.full_like(finished, pad_id, dtype=token.dtype).index_copy_(0, held, token)
            token_logp = torch.zeros_like(finished, dtype=token_logp.dtype).index_copy_(0, held, token_logp)
        if ended:
            token = token.masked_fill(finished, pad_id)
            token_logp = token_logp.masked_fill(finished, 0.0)
        tokens.append(token)
        logprobs.append(token_logp)
        finished = finished | (token == eos_id)
        ended = int(finished.sum())
        if t + 1 == max_new_tokens or ended == B:
            break
        keep = None if keep_rows is None else _rows_to_keep(finished.view(-1), held, n_live=B - ended)
        if keep is not None:
            keep_rows(keep)
            held = keep if held is None else held[keep]
        logits = next_logits(token.view(-1) if held is None else token.view(-1)[held])
    tokens = torch.cat(tokens, 1) if tokens else finished.new_zeros(B, 0, dtype=torch.long)
    logprobs = torch.cat(logprobs, 1) if logprobs else torch.zeros(B, 0, device=finished.device)
    return tokens, logprobs


# On a GPU, SeqGAN's rollouts of every prefix length run in batches of as many rows as this many bytes of
# forked KV cache and per-step vocabulary vectors hold (the whole default batch of 64 x 16 rollouts x 20
# prefixes in one; fewer rows for deeper, wider or longer generators and larger vocabularies).
PREFIX_BATCH_BYTES = 2 * 2**30


class PrefixCompleter:
    """Completions of prefixes of sampled sentences that start from the sentences' own KV cache.

    SeqGAN's Monte-Carlo rewards complete every prefix of every sampled sentence K times. Here the
    batch's keys and values are computed once, in one batched pass over the whole sentences; a
    completion of ``tokens[b, :t]`` forks row b's cache at that prefix (K copies) and decodes
    from there, so no prefix is encoded again, neither per token nor per prefix length. Models
    the fast decoder does not cover (or ``fast=False``) prefill each prefix instead: the same
    distribution, more work.

    Call with ``(prefixes, rows)``: prefixes (N, t) are ``tokens[rows, :t]``; returns (N, t + T')
    sentences, the prefix followed by its completion (T' <= T - t new tokens, padded after the
    end token). This is the ``complete`` argument of :func:`textgan.rl.mc_rollout_rewards`.

    On a GPU, prefixes of every length are completed in one batch instead (:meth:`every_prefix`,
    up to ``prefix_batch_rows`` rows at a time): each row decodes from its own position, so one
    CUDA graph replays T - 1 steps for all of them, where the loop over prefix lengths launches
    about T² / 2 steps that are too small to keep a GPU busy. On a CPU, whose time is arithmetic,
    the loop is faster (the batch decodes every row for T - 1 steps, the loop each only as far as
    it needs), so ``prefix_batch_rows`` defaults to 0 (off) there, and on CUDA to as many rows as
    fit in :data:`PREFIX_BATCH_BYTES` (:meth:`rows_in_prefix_batch_bytes`).
    """

    def __init__(self, model, prompt: torch.Tensor, tokens: torch.Tensor, *, eos_id: int, pad_id: int,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, fast: bool = True,
                 prefix_batch_rows: int | None = None):
        from .models.fast_decode import LlamaDecoder, supports

        check_settings(temperature, top_k, top_p)
        self.model, self.prompt, self.tokens, self.length = model, prompt, tokens, tokens.shape[1]
        self.options = {"eos_id": eos_id, "pad_id": pad_id, "temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.base = None
        if fast and supports(model):
            low = matmul_dtype(prompt.device)  # as in sample(): bf16 projections only with BF16_SAMPLING set
            with torch.inference_mode(), torch.autocast(prompt.device.type, enabled=False):
                ids = torch.cat([prompt, tokens], 1)
                self.base = LlamaDecoder(model, ids.shape[0], ids.shape[1], matmul_dtype=low)
                self.base.prefill(ids)
        if prefix_batch_rows is None and self.base is not None and prompt.device.type == "cuda":
            prefix_batch_rows = self.rows_in_prefix_batch_bytes()
        # read by mc_rollout_rewards: the most rows to complete in one every_prefix call; 0: one call per length
        self.prefix_batch_rows = (prefix_batch_rows or 0) if self.base is not None else 0

    @inference
    def __call__(self, prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        new = self.length - prefixes.shape[1]
        if self.base is None:
            rest = sample(self.model, torch.cat([self.prompt[rows], prefixes], 1), new, **self.options, fast=False)
            return torch.cat([prefixes, rest.tokens], 1)
        o = self.options
        with torch.autocast(prefixes.device.type, enabled=False):
            decoder = self.base.fork(rows, self.prompt.shape[1] + prefixes.shape[1] - 1)
            logits = decoder.step(prefixes[:, -1])  # the prefix's last token, at its own position
            finished = (prefixes == o["eos_id"]).any(dim=1)
            tokens, _ = _draw_tokens(logits, decoder.step, finished, new, o["eos_id"], o["pad_id"], o["temperature"],
                                     o["top_k"], o["top_p"], decoder.reorder)
        return torch.cat([prefixes, tokens], 1)

    def rows_in_prefix_batch_bytes(self) -> int:
        """How many rows fit in :data:`PREFIX_BATCH_BYTES`, each its forked KV cache (keys and values
        of every layer) and four fp32 vectors over the vocabulary (a step's logits, filtered logits,
        probabilities and their running sum): ``prefix_batch_rows``' default on CUDA."""
        keys = self.base.keys
        row = 2 * keys[:, :1].numel() * keys.element_size() + 4 * self.base.head.shape[0] * 4
        return max(1, PREFIX_BATCH_BYTES // row)

    @inference
    def every_prefix(self, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Completions of ``tokens[rows[i], :lengths[i]]`` (1 <= lengths < T) for prefixes of any
        lengths in one batch: (N, T) sentences, each its prefix followed by its completion, padded
        after the end token. The same distribution as calling the completer on each length alone.

        Every row forks its sentence's cache whole and decodes up to T - 1 steps from its own
        position (:meth:`LlamaDecoder.step_static` with a position per row) in the sampler's token
        loop; a row whose completion is full runs on at the cache's last position, and what it
        draws there is dropped.
        """
        if self.base is None:
            raise ValueError("every_prefix continues from the fast decoder's cache, which this model has none of")
        o, T, N = self.options, self.length, rows.shape[0]
        sentences = self.tokens[rows]
        if T < 2:
            return sentences
        last = self.base.max_length - 1
        with torch.autocast(rows.device.type, enabled=False):
            decoder = self.base.fork(rows, self.base.position)
            step = decoder.graphed_step_static()
            position = self.prompt.shape[1] + lengths - 1  # where each prefix's last token sits

            def next_logits(token: torch.Tensor) -> torch.Tensor:  # each row one position on
                nonlocal position
                position = position + 1
                return step(token, position.clamp(max=last))

            logits = step(sentences.gather(1, (lengths - 1)[:, None]).squeeze(1), position)
            finished = torch.zeros(N, dtype=torch.bool, device=rows.device)
            drawn, _ = _draw_tokens(logits, next_logits, finished, T - 1, o["eos_id"], o["pad_id"], o["temperature"],
                                    o["top_k"], o["top_p"])
        # (N, T - 1): row i's new tokens, for columns lengths[i], lengths[i] + 1, ...; padding after all rows ended
        drawn = F.pad(drawn, (0, T - 1 - drawn.shape[1]), value=o["pad_id"])
        column = torch.arange(T, device=rows.device)[None]
        new = drawn.gather(1, (column - lengths[:, None]).clamp(0, T - 2))
        return torch.where(column >= lengths[:, None], new, sentences)


def _decoder(model, prompt: torch.Tensor, max_new_tokens: int, fast: bool, prompt_mask: torch.Tensor | None = None,
             low: torch.dtype | None = None):
    """(logits after the prompt, next_logits(newest token (B,)) -> (B, V), reorder(index) or None).

    ``reorder`` permutes the cache rows for beam search; only the fast decoder has one. ``low``: the
    fast decoder's projection dtype (:func:`matmul_dtype`); the Hugging Face path runs in fp32.
    """
    from .models.fast_decode import LlamaDecoder, supports

    if fast and supports(model):
        decoder = LlamaDecoder(model, prompt.shape[0], prompt.shape[1] + max_new_tokens, matmul_dtype=low)
        return decoder.prefill(prompt, prompt_mask), decoder.graphed_step(), decoder.reorder
    attention = None if prompt_mask is None else prompt_mask.long()
    out = model(input_ids=prompt, attention_mask=attention, use_cache=True)
    state = {"cache": _returned_cache(out), "attention": attention}
    cache_arg = _cache_argument(model)

    def next_logits(token: torch.Tensor) -> torch.Tensor:
        if state["attention"] is not None:
            state["attention"] = torch.cat([state["attention"], state["attention"].new_ones(len(token), 1)], dim=1)
        out = model(input_ids=token[:, None], attention_mask=state["attention"], use_cache=True,
                    **{cache_arg: state["cache"]})
        state["cache"] = _returned_cache(out)
        return out.logits[:, -1]

    return out.logits[:, -1], next_logits, None


def _cache_argument(model) -> str:
    """The forward's name for the KV cache: ``cache`` in newer transformers, ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _mask_new(tokens: torch.Tensor, prompt: torch.Tensor, eos_id: int) -> torch.Tensor:
    """True for new tokens up to and including the first end token (none if the prompt ended)."""
    from .data import sequence_mask

    already = (prompt[:, 1:] == eos_id).any(dim=1, keepdim=True)
    return sequence_mask(tokens, eos_id) & ~already


def sample_batches(model, n: int, batch_size: int, max_length: int, *, bos_id: int, eos_id: int, pad_id: int,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, device: str | torch.device = "cpu",
                   prefix: list[int] = ()):
    """Yield rollouts of samples, ``n`` rows in all, ``batch_size`` at a time: unconditional, or
    continuations of the ``prefix`` ids (up to ``max_length`` new tokens before the end token)."""
    start_ids = torch.tensor([bos_id, *prefix], dtype=torch.long, device=device)
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        prompt = start_ids.expand(rows, -1).contiguous()
        yield sample(model, prompt, max_length + 1, eos_id=eos_id, pad_id=pad_id,
                     temperature=temperature, top_k=top_k, top_p=top_p)


@contextlib.contextmanager
def eval_mode(model):
    """``model`` in eval mode (no dropout) inside the block, and in the mode it was in again after it: sampling or
    scoring in the middle of a training loop leaves the loop's model as it found it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class PromptError(ValueError):
    """A prompt the model cannot continue (unknown words, too long); the message says what to do."""


def sample_texts(model, tokenizer, n: int, *, prompt: str = "", temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, max_length: int | None = None, batch_size: int = 256, seed: int = 0,
                 progress: bool = False) -> list[str]:
    """``n`` samples as text, reproducible from ``seed`` whatever the global RNG state.

    With a ``prompt`` ("a man"), every sample continues it and the returned sentences start with
    it; without one they are unconditional. Sampling draws from its own seeded random stream, so
    it neither perturbs a training run's stream (a resumed run matches an uninterrupted one) nor
    depends on it. ``max_length``, the tokens a sentence may have before its end token (the
    prompt's included), defaults to, and is capped at, the model's position limit less BOS and EOS;
    a row the model has not ended by then is cut one token later.
    """
    from tqdm.auto import tqdm

    from .tokenization import special_ids

    if n < 0 or batch_size < 1 or (max_length is not None and max_length < 1):
        raise ValueError(f"sample_texts needs n >= 0, batch_size >= 1 and max_length >= 1 (or None), got n={n}, "
                         f"batch_size={batch_size}, max_length={max_length}")
    check_settings(temperature, top_k, top_p)
    bos, eos, pad = special_ids(tokenizer)
    limit = getattr(model.config, "max_position_embeddings", 64) - 2
    max_length = min(max_length or limit, limit)
    prefix = encode_prompt(tokenizer, prompt, max_length)
    device = next(model.parameters()).device
    texts: list[str] = []
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), eval_mode(model):
        torch.manual_seed(seed)
        batches = sample_batches(model, n, batch_size, max_length - len(prefix), bos_id=bos, eos_id=eos, pad_id=pad,
                                 temperature=temperature, top_k=top_k, top_p=top_p, device=device, prefix=prefix)
        for rollout in tqdm(batches, total=math.ceil(n / batch_size), desc=f"sampling T={temperature:g}",
                            disable=not progress, leave=False):
            texts.extend(decode(tokenizer, rollout, prefix))
    return texts


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as one batch, right-aligned: ids (B, P) padded on the left with
    ``pad_id``, and the mask (B, P), False on the padding (the ``prompt_mask`` of :func:`sample`)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = True
    return ids, mask


def encode_prompt(tokenizer, prompt: str, max_length: int) -> list[int]:
    """The token ids of ``prompt`` (no special tokens), refusing words the tokenizer cannot represent.

    A word-level tokenizer maps a word it has not seen to its unknown token, which decoding would
    silently drop from the sample; such a prompt is refused, naming the words. Raises
    :class:`PromptError` too when the prompt leaves no room for a continuation within ``max_length``.
    """
    if not prompt.strip():
        return []
    text, fast = prompt.strip(), getattr(tokenizer, "is_fast", False)  # only fast tokenizers give offsets
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
    ids, unk = encoded["input_ids"], tokenizer.unk_token_id
    offsets = encoded["offset_mapping"] if fast else [(0, len(text))] * len(ids)
    unknown = [text[start:end] for token, (start, end) in zip(ids, offsets) if unk is not None and token == unk]
    if unknown:
        words = ", ".join(repr(word) for word in dict.fromkeys(unknown))
        hint = ""
        if all(tokenizer.convert_tokens_to_ids(word.lower()) not in (None, unk) for word in unknown):
            hint = " (it knows them in lower case)"
        raise PromptError(f"the model's vocabulary has no {words}{hint}; write the prompt as its training text was "
                          "written (word-level models: the same spelling, case and tokenization)")
    if len(ids) >= max_length:
        tokens = f"{len(ids)} token{'s' * (len(ids) > 1)}"
        raise PromptError(f"the prompt is {tokens}, and sentences are at most {max_length}; shorten it (or raise "
                          "--max-length up to the model's limit)")
    return ids


def decode(tokenizer, rollout: Rollout, prefix: list[int] = ()) -> list[str]:
    """The sampled text of each row (special tokens dropped), after the ``prefix`` ids it continues."""
    rows = [list(prefix) + row[: int(n)].tolist() for row, n in zip(rollout.tokens.cpu(), rollout.lengths.cpu())]
    return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]
