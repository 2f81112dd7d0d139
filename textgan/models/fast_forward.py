"""A lean teacher-forced forward for Llama-architecture generators, for training and scoring.

Every MLE step, every policy-gradient step and every NLL evaluation scores whole sequences in one
teacher-forced pass. At the sizes textgan trains on a CPU, a third of such a training step is not
matrix products but elementwise passes over activations (RMSNorm, rotary embeddings, the gated MLP
and their backward passes), each reading and writing memory once, and autograd adds passes of
its own (zero-filled gradients of slices, concatenations of gradient halves). This forward
computes the same function of the same parameters with fewer passes:

- q, k and v in one matrix product, the MLP's gate and up projections in another (the weights
  concatenated per call: a few hundred thousand numbers against the activations' millions);
- queries and keys turned by one complex multiplication (q and k rows in pairs, as the KV-cache
  decoder orders them), as an autograd Function whose backward writes the q, k and v gradients
  into one buffer, turned back on the way;
- RMSNorm and the SiLU-gated product as autograd Functions with hand-written backward passes
  (RMSNorm's in six passes over the activations; the gate and up gradients written into the halves
  of one buffer);
- the residual adds inside the output projections' matrix products (``addmm``).

An MLE step on a batch of 64 x 15 or 64 x 21 positions is 7-9% faster at d128 and at d256
(``benchmarks/train_forward.py``, whose results are in ``benchmarks/results/train_forward.md``).
The results differ from the Hugging Face forward by rounding only (the test suite checks the
logits to 1e-5 and the gradients to 1e-4).

:func:`applies` says when a model gets it: the Llama family as :func:`fast_decode.supports`
covers it, in fp32, outside autocast and not compiled (a compiled model keeps the forward it was
compiled from; bf16 autocast keeps the Hugging Face forward, which normalizes in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fast_decode


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


def forward(model, ids: torch.Tensor) -> torch.Tensor:
    """ids (B, T) -> logits (B, T, V): the Hugging Face forward's maths in fewer passes (module docstring)."""
    body, config = model.model, model.config
    B, T = ids.shape
    H, Hkv = config.num_attention_heads, config.num_key_value_heads
    D = getattr(config, "head_dim", None) or config.hidden_size // H
    rotation = fast_decode.rotation_table(body.rotary_emb, T, ids.device)[:, None]  # (T, 1, D / 2)
    x = F.embedding(ids.flatten(), body.embed_tokens.weight)  # (B * T, C), the residual stream
    for layer in body.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv_weight = torch.cat([fast_decode._as_pairs(attn.q_proj.weight, H), fast_decode._as_pairs(attn.k_proj.weight, Hkv),
                                attn.v_proj.weight.view(Hkv, D // 2, 2, -1)])  # (H + 2 Hkv, D / 2, 2, C)
        qkv = _norm(x, layer.input_layernorm) @ qkv_weight.flatten(0, 2).t()
        q, k, v = _Rotary.apply(qkv.view(B, T, -1), rotation, H, Hkv)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling, enable_gqa=H != Hkv)
        x = torch.addmm(x, attended.transpose(1, 2).reshape(B * T, H * D), attn.o_proj.weight.t())
        gate_up = _norm(x, layer.post_attention_layernorm) @ torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t()
        x = torch.addmm(x, _GatedSiLU.apply(gate_up), mlp.down_proj.weight.t())
    return (_norm(x, body.norm) @ model.lm_head.weight.t()).view(B, T, -1)


def _norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    return _RMSNorm.apply(x, norm.weight, norm.variance_epsilon)
