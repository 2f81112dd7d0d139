"""A lean teacher-forced forward for Llama-architecture generators, for training and scoring.

Every MLE step, every policy-gradient step, every NLL evaluation and every step of the
style-transfer recipe (its reconstruction, cycle and policy rows) scores whole sequences in one
teacher-forced pass. At the sizes textgan trains on a CPU, a third of such a training step is not
matrix products but elementwise passes over activations (RMSNorm, rotary embeddings, the gated MLP
and their backward passes), each reading and writing memory once, and autograd adds passes of its
own (zero-filled gradients of slices, concatenations of gradient halves). This forward computes the
same function of the same parameters with fewer passes:

- q, k and v in one matrix product, the MLP's gate and up projections in another (the weights
  concatenated per call: a few hundred thousand numbers against the activations' millions);
- queries and keys turned by one complex multiplication (q and k rows in pairs, as the KV-cache
  decoder orders them), as an autograd Function whose backward writes the q, k and v gradients
  into one buffer, turned back on the way;
- RMSNorm and the SiLU-gated product as autograd Functions with hand-written backward passes
  (RMSNorm's in six passes over the activations; the gate and up gradients written into the halves
  of one buffer);
- the residual adds inside the output projections' matrix products (``addmm``);
- every matrix product through :mod:`textgan.models.onednn` where torch's default BLAS would run it
  at half speed (AMD CPUs with AVX-512, where MKL runs AVX2 kernels).

Prompts of different lengths, left-padded to a common one (style transfer's), pass a key mask
(:func:`causal_lm_hidden`): no position attends to padding, and every row keeps positions 0..T-1, as
the Hugging Face forward given only an attention mask does (a padded position attends to itself
alone, so that its softmax is never empty; its outputs reach nothing).

Target log-probabilities over a large vocabulary (:func:`head_logprobs`, from 2^24 logits on a CPU)
are computed a block of rows at a time, so that the logits never exist whole.

An MLE step on a batch of 64 x 15 or 64 x 21 positions is 7-10% faster at d128 and at d256
(``benchmarks/train_forward.py``, whose results are in ``benchmarks/results/train_forward.md``), and
the style-transfer recipe's adversarial steps 1.13-1.24x faster (its warm-up steps 1.02-1.11x).
The results differ from the Hugging Face forward by rounding only (the test suite checks the
logits to 1e-5 and the gradients to 1e-4).

:func:`applies` says when a model gets it: the Llama family as :func:`fast_decode.supports`
covers it, in fp32, outside autocast and not compiled (a compiled model keeps the forward it was
compiled from; bf16 autocast keeps the Hugging Face forward, which normalizes in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fast_decode, onednn


def applies(model, device_type: str) -> bool:
    """Whether :func:`causal_lm_logits` runs ``model`` by this forward rather than the Hugging Face one."""
    if not fast_decode.supports(model) or model.lm_head.weight.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled(device_type):
        return False
    return all(getattr(m, "_compiled_call_impl", None) is None for m in (model, model.model))


def causal_lm_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """The logits of every next token given its prefix: ids (B, T) long -> (B, T, V), no attention
    mask (rows are padded on the right, after their end token, so no position attends to padding).
    By :func:`forward` where :func:`applies`, else by the model's own forward."""
    if applies(model, ids.device.type):
        return forward(model, ids)
    return model(input_ids=ids).logits


def causal_lm_hidden(model, ids: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The final hidden states (after the last norm, before the vocabulary projection): ids (B, T)
    long -> (B, T, C). ``key_mask`` (B, T) bool, False on padding that no position may attend to
    (left padding of prompts of different lengths); every row shares positions 0..T-1, as the
    Hugging Face forward given only an attention mask. By :func:`hidden_states` where
    :func:`applies`, else by the model's own body."""
    if applies(model, ids.device.type):
        return hidden_states(model, ids, key_mask)
    body = getattr(model, "base_model", None) or model.model
    attention = None if key_mask is None else key_mask.long()
    return body(input_ids=ids, attention_mask=attention).last_hidden_state


class _RMSNorm(torch.autograd.Function):
    """y = gain * x / sqrt(mean(x^2) + eps) over the last dimension of x (N, C)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
        scale = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        normed = x * scale  # (N, C)
        ctx.save_for_backward(normed, scale, gain)
        return normed * gain

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        normed, scale, gain = ctx.saved_tensors
        grad_gain = (grad * normed).sum(0) if ctx.needs_input_grad[1] else None
        grad_normed = grad * gain
        # d/dx of x * scale: scale * (g - normed * mean(g * normed)), g the gradient at normed
        projection = torch.linalg.vecdot(grad_normed, normed).unsqueeze_(-1).div_(-normed.shape[-1])
        return torch.addcmul(grad_normed, normed, projection).mul_(scale), grad_gain, None


class _GatedSiLU(torch.autograd.Function):
    """silu(gate) * up, from gate_up (N, 2F) = [gate | up] -> (N, F)."""

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        activated = F.silu(gate)
        ctx.save_for_backward(gate_up, activated)
        return activated * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate_up, activated = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        out = torch.empty_like(gate_up)  # both halves' gradients, written in place: no concatenation
        grad_gate, grad_up = out.chunk(2, dim=-1)
        torch.mul(grad, activated, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return out


class _Rotary(torch.autograd.Function):
    """Split qkv (B, T, (H + 2 Hkv) D), q and k rows in pairs (:func:`fast_decode._as_pairs`), into
    q (B, H, T, D), k and v (B, Hkv, T, D), queries and keys turned by ``rotation`` (T, 1, D / 2)
    complex in one multiplication. The backward turns their gradients back into one (B, T, .) buffer."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, rotation: torch.Tensor, heads: int, kv_heads: int):
        D = qkv.shape[-1] // (heads + 2 * kv_heads)
        split = (heads + kv_heads) * D
        turned = fast_decode._rotate_pairs(qkv[..., :split].unflatten(-1, (heads + kv_heads, D)), rotation)
        value = qkv[..., split:].unflatten(-1, (kv_heads, D))
        ctx.save_for_backward(rotation)
        ctx.heads = heads
        return turned[:, :, :heads].transpose(1, 2), turned[:, :, heads:].transpose(1, 2), value.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor):
        (rotation,) = ctx.saved_tensors
        heads = ctx.heads
        B, kv_heads, T, D = grad_v.shape
        split = (heads + kv_heads) * D
        out = grad_v.new_empty(B, T, split + kv_heads * D)
        turned = _complex(out[..., :split].unflatten(-1, (heads + kv_heads, D)))  # (B, T, H + Hkv, D / 2)
        back = rotation.conj()
        for grad, place in ((grad_q, turned[:, :, :heads]), (grad_k, turned[:, :, heads:])):
            torch.mul(_complex(grad.transpose(1, 2)), back, out=place)
        out[..., split:].view(B, T, kv_heads, D).copy_(grad_v.transpose(1, 2))
        return out, None, None, None


def _complex(x: torch.Tensor) -> torch.Tensor:
    """(..., D) real, pairs side by side -> (..., D / 2) complex, a view."""
    return torch.view_as_complex(x.unflatten(-1, (-1, 2)))


# Logits (rows x vocabulary) from this many on are scored by the row-chunked head on a CPU: 2^24, 64 MB
# in fp32. Below it the chunks gain nothing in a training step: the style-transfer recipe's warm-up
# steps (64 x 21 rows over 9,327 words, 12.5M logits) took as long either way, or longer (201-208 ms
# against 189-191 in three runs each with a 2^23 threshold, 2026-12-05), its adversarial steps (192 x 21
# rows) 7-8% less time chunked (``benchmarks/train_forward.py``).
CHUNKED_HEAD_LOGITS = 1 << 24


def head_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(lm_head(hidden))[targets]: hidden (B, T, C), targets (B, T) long -> (B, T) float.

    Where :func:`applies`, on a CPU, when the logits would be :data:`CHUNKED_HEAD_LOGITS` numbers or
    more, by :class:`_HeadLogProbs`: the logits are computed, used and dropped a block of rows at a
    time and never exist whole (for the style-transfer recipe's 192 rows of 21 tokens over 9,327
    words they are 150 MB, written and read again by the log-softmax, its backward and the gather's
    zero-filled gradient); else by the head and a log-softmax over the whole logits."""
    head = model.get_output_embeddings()
    V = head.weight.shape[0]
    if (hidden.device.type == "cpu" and targets.numel() * V >= CHUNKED_HEAD_LOGITS and hidden.dtype == torch.float32
            and applies(model, "cpu")):
        return _HeadLogProbs.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, targets.reshape(-1),
                                   head_block_rows(V)).view(targets.shape)
    logits = (onednn.linear(hidden, head.weight) if applies(model, hidden.device.type) else head(hidden)).float()
    return F.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def head_block_rows(vocab: int) -> int:
    """Rows per block of the chunked head: about 2M logits (8 MB in fp32), at least 64 rows."""
    return max(64, (1 << 21) // vocab)


class _HeadLogProbs(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[target] of each row: hidden (N, C), weight (V, C), targets (N,)
    -> (N,), ``rows`` rows at a time. Saves each row's log-sum-exp; the backward computes each
    block's logits again (a third more of the head's FLOPs) and turns them into its gradient in
    place: softmax times -grad, plus grad at the target."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        N = hidden.shape[0]
        out, lse = hidden.new_empty(N), hidden.new_empty(N)
        for start in range(0, N, rows):
            block = slice(start, start + rows)
            logits = onednn.linear(hidden[block], weight)  # (rows, V)
            torch.logsumexp(logits, -1, out=lse[block])
            torch.sub(logits.gather(1, targets[block, None]).squeeze_(1), lse[block], out=out[block])
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        by_onednn = onednn.applies(hidden)
        weight_t = weight.t().contiguous() if by_onednn else None  # (C, V): dlogits @ weight as a linear by it
        for start in range(0, hidden.shape[0], ctx.rows):
            block = slice(start, start + ctx.rows)
            g = grad[block, None]
            grad_logits = onednn.linear(hidden[block], weight).sub_(lse[block, None]).exp_().mul_(-g)
            grad_logits.scatter_add_(1, targets[block, None], g)
            if grad_hidden is not None:
                if by_onednn:
                    grad_hidden[block] = onednn.linear(grad_logits, weight_t)
                else:
                    torch.mm(grad_logits, weight, out=grad_hidden[block])
            if grad_weight is not None:
                if by_onednn:
                    grad_weight += onednn.weight_gradient(grad_logits, hidden[block])
                else:
                    grad_weight.addmm_(grad_logits.t(), hidden[block])
        return grad_hidden, grad_weight, None, None


def forward(model, ids: torch.Tensor) -> torch.Tensor:
    """ids (B, T) -> logits (B, T, V): the Hugging Face forward's maths in fewer passes (module docstring)."""
    return onednn.linear(hidden_states(model, ids), model.lm_head.weight)


def hidden_states(model, ids: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ids (B, T) -> the last norm's output (B, T, C); ``key_mask`` as :func:`causal_lm_hidden`."""
    body, config = model.model, model.config
    B, T = ids.shape
    H, Hkv = config.num_attention_heads, config.num_key_value_heads
    D = getattr(config, "head_dim", None) or config.hidden_size // H
    rotation = fast_decode.rotation_table(body.rotary_emb, T, ids.device)[:, None]  # (T, 1, D / 2)
    mask = _attention_mask(key_mask)  # None: causal only
    x = F.embedding(ids.flatten(), body.embed_tokens.weight)  # (B * T, C), the residual stream
    for layer in body.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv_weight = torch.cat([fast_decode._as_pairs(attn.q_proj.weight, H), fast_decode._as_pairs(attn.k_proj.weight, Hkv),
                                attn.v_proj.weight.view(Hkv, D // 2, 2, -1)])  # (H + 2 Hkv, D / 2, 2, C)
        qkv = onednn.linear(_norm(x, layer.input_layernorm), qkv_weight.flatten(0, 2))
        q, k, v = _Rotary.apply(qkv.view(B, T, -1), rotation, H, Hkv)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=attn.scaling,
                                                  enable_gqa=H != Hkv)
        x = onednn.add_linear(x, attended.transpose(1, 2).reshape(B * T, H * D), attn.o_proj.weight)
        gate_up = onednn.linear(_norm(x, layer.post_attention_layernorm),
                                torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        x = onednn.add_linear(x, _GatedSiLU.apply(gate_up), mlp.down_proj.weight)
    return _norm(x, body.norm).view(B, T, -1)


def _attention_mask(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The decoder's prefill mask (:func:`fast_decode.padded_causal_mask`), (B, 1, T, T); None
    without padding (causal attention alone)."""
    if key_mask is None or bool(key_mask.all()):
        return None
    return fast_decode.padded_causal_mask(key_mask)


def _norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    return _RMSNorm.apply(x, norm.weight, norm.variance_epsilon)
