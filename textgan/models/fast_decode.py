"""A lean incremental decoder for Llama-architecture generators, with a static KV cache.

Sampling a text GAN's rollouts is one token per step for every row of a batch. At the sizes
textgan trains on a CPU, a step's arithmetic is tiny and the cost is Python: the Hugging Face
forward builds masks, cache objects and output records on every call. This decoder runs the
same maths on the model's parameters with a preallocated cache and a handful of tensor
operations per layer (q, k and v in one matmul; the queries and the new key and value each turned
by one complex multiplication, the key and value straight into the cache; the MLP's gate and up
projections in one matmul; RMSNorm gains and the attention scale folded into those weights; RMSNorm
itself as four calls, where torch's CPU ``rms_norm`` makes about a dozen), each writing into a
buffer made once per sampling call rather than allocating, and no views made per step but the few
that depend on the position.
The folded weights are copied when a decoder is made, so a decoder serves one sampling call:
make a new one after the weights change. On a CPU, decoders made while the weights stay unchanged
(evaluation, inference) share one copy (:class:`_FoldCache`).

A decoder of an fp32 model made with ``matmul_dtype=torch.bfloat16`` (what sampling makes under
bf16 autocast with ``textgan.sampling.BF16_SAMPLING`` set) folds its q/k/v, gate/up and down
projections into bf16 and keeps the residual stream, attention, the output projection, norms and
output layer in fp32: most of a layer's arithmetic runs at bf16 speed (AMX on recent Xeons) and the
logits stay fp32 numbers, within bf16's rounding of the fp32 decoder's.

On CPUs where torch's fp32 products run at half speed (AMD processors with AVX-512, where MKL runs
its AVX2 kernels: :mod:`.onednn`), an fp32 decoder packs its matrices once into oneDNN's layout and
multiplies through oneDNN, with the residual adds fused into the output projections, except for
products too small to repay oneDNN's set-up, which stay torch's (:meth:`LlamaDecoder._one_position_packed`).

On a GPU the cost of those operations is launching them: :meth:`LlamaDecoder.graphed_step`
captures one step, with shapes that do not change from position to position
(:meth:`LlamaDecoder.step_static`), as a CUDA graph and replays it for every token.

It covers the Llama family as ``build_generator`` makes it (RMSNorm, rotary embeddings of the
default type, grouped-query attention, SiLU-gated MLP, no biases). Anything else falls back to
the Hugging Face forward; :func:`supports` says which path a model gets. The test suite checks
its logits against the Hugging Face forward.
"""

from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F

from . import onednn


def supports(model) -> bool:
    """Whether ``model`` is a Llama causal LM this decoder reproduces exactly."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", "") != "llama":
        return False
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    return (
        rope_type == "default"
        and getattr(config, "hidden_act", "silu") == "silu"
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and (not model.training or not getattr(config, "attention_dropout", 0.0))
    )


def rotation_table(rotary, length: int, device: torch.device) -> torch.Tensor:
    """Each position's rotary turn per pair of dimensions, from a Hugging Face rotary embedding
    module: (length, D / 2) complex64, of magnitude its ``attention_scaling``."""
    freqs = torch.arange(length, device=device, dtype=torch.float32)[:, None] * rotary.inv_freq.to(device, torch.float32)
    return torch.polar(torch.full_like(freqs, getattr(rotary, "attention_scaling", 1.0)), freqs)


def padded_causal_mask(key_valid: torch.Tensor) -> torch.Tensor:
    """key_valid (B, S) bool, False on padding -> (B, 1, S, S) bool, True where a query may attend a
    key: an earlier or the same position that is not padding. A padding query attends to itself
    only, so that no row of the softmax is empty (its outputs are finite, and reach nothing)."""
    positions = torch.arange(key_valid.shape[1], device=key_valid.device)
    causal = positions[None, :] <= positions[:, None]  # (S, S), [query, key]
    return (causal & key_valid[:, None, None, :]) | (positions[None, :] == positions[:, None])


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without its gain (the decoder folds gains into the next matmul), computed in fp32."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, x.shape[-1:], None, eps)
    return F.rms_norm(x.float(), x.shape[-1:], None, eps).to(x.dtype)


def _mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight`` in the weight's dtype, returned in x's (a bf16 projection of a mixed decoder)."""
    return torch.matmul(x.to(weight.dtype), weight).to(x.dtype)


def _as_pairs(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The output rows of a q or k projection (heads * D, C), head by head, reordered from Hugging
    Face's halves layout [x0 .. x(D/2-1), y0 .. y(D/2-1)] to pairs [x0, y0, x1, y1, ...], so that a
    rotary rotation is one complex multiplication: a (heads, D / 2, 2, C) view, no copy. q and k get
    the same order, and a dot product does not depend on the order of the dimensions it sums over,
    so the attention scores are unchanged."""
    return weight.view(heads, 2, weight.shape[0] // heads // 2, -1).transpose(1, 2)


def _rotate_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """x: (..., 2N) real, pairs (x, y) side by side; rotation: complex, broadcastable to (..., N).
    Returns (..., 2N): each pair turned by its angle, (x + iy) * (cos + i sin)."""
    if x.dtype in (torch.float16, torch.bfloat16):  # half precision turns in fp32 (complex64), as the tables
        return _rotate_pairs(x.float(), rotation).to(x.dtype)
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2)


def _rotate_into(out: torch.Tensor, x: torch.Tensor, rotation: torch.Tensor) -> None:
    """out = x with each pair turned by its angle (:func:`_rotate_pairs`), written in place.

    fp32 decoders pass complex views of their buffers, and the turn is one multiplication that
    writes where its result belongs (a step's keys and values go straight into the cache); other
    dtypes pass the real views, turned in fp32 and copied in.
    """
    if x.is_complex():
        torch.mul(x, rotation, out=out)
    else:
        out.copy_(_rotate_pairs(x, rotation))


def _product(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None, *, out: torch.Tensor | None = None,
             residual: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight (+ residual) for a decoder whose products go through oneDNN: by ``packed``, weight's
    oneDNN copy, or by torch.mm where it is None (a product too small for oneDNN, :func:`.onednn.pays`).
    weight: (input, output), as :attr:`LlamaDecoder.weights` holds it. ``out``: the result is written
    there; ``residual``: added into it, in place on torch.mm's path (the decoder's own hidden state)."""
    if packed is not None:
        y = onednn.product(x, packed, residual)
        return y if out is None else out.copy_(y)
    if residual is not None:
        return residual.addmm_(x, weight)
    return torch.mm(x, weight, out=out)


class _Workspace:
    """A decoding step's buffers on the decoder's first B rows, and the views of them and of the
    cache that the step reads and writes, made once per row count instead of at every step.

    A step writes its intermediates into these (``out=`` and in-place calls), so it neither
    allocates them nor makes views of them: at sampling sizes on a CPU, each call saved is a few
    microseconds of a step of about a millisecond. The buffers are the decoder's, sized for all of
    its rows; B rows use their first B (the sampler keeps its live rows first).
    """

    def __init__(self, decoder: LlamaDecoder, B: int):
        buffers, cache = decoder._buffers, decoder._cache[:, :B]  # cache: (L, B, Hkv, T, 2D)
        Hkv, D, G = decoder.n_kv_heads, decoder.head_dim, decoder.n_heads // decoder.n_kv_heads
        L, T = cache.shape[0], cache.shape[3]
        fp32 = decoder.keys.dtype == torch.float32  # fp32 decoders turn complex views and normalize in four calls
        as_pairs = torch.view_as_complex if fp32 else (lambda x: x.flatten(-2))
        self.qkv = buffers["qkv"][:B]  # (B, Hkv * (G + 2) * D), per key/value head: G queries, key, value
        per_head = self.qkv.view(B, Hkv, G + 2, D // 2, 2)
        self.q_in, self.kv_in = as_pairs(per_head[:, :, :G]).flatten(2), as_pairs(per_head[:, :, G:]).flatten(2)
        q = buffers["q"][:B]  # (B, H * D): the turned queries
        self.q_heads = q.view(B * Hkv, G, D)  # grouped by the key/value head they share
        self.q_out = as_pairs(q.view(B, Hkv, G * D // 2, 2))
        kv = buffers["kv"][:B]  # (B, Hkv, 2D): step_static's turned key and value, before they are scattered
        self.kv_rows = kv
        self.kv_out = as_pairs(kv.view(B, Hkv, D, 2))
        self.attention_rows = buffers["attention"][:B]  # (B, H * D)
        self.attention = self.attention_rows.view(B * Hkv, G, D)
        self.gate_up = buffers["gate_up"][:B]  # in the projections' dtype, as are low_normed, qkv_low and down
        self.gate, self.up = self.gate_up.chunk(2, dim=-1)
        self.normed, self.norm, self.scale = buffers["normed"][:B], buffers["norm"][:B], buffers["scale"][:B]
        self.low_normed = buffers["low_normed"][:B] if "low_normed" in buffers else self.normed
        self.qkv_low = buffers["qkv_low"][:B] if "qkv_low" in buffers else None
        self.down = buffers["down"][:B] if "down" in buffers else None
        self._eps = decoder._eps_tensors if fp32 else None
        layers = [cache[i].view(B * Hkv, T, 2 * D) for i in range(L)]
        self.keys_t = [layer[..., :D].transpose(1, 2) for layer in layers]  # (B * Hkv, D, T)
        self.values = [layer[..., D:] for layer in layers]  # (B * Hkv, T, D)
        self.slots = [as_pairs(cache[i].view(B, Hkv, T, D, 2)) for i in range(L)]  # (B, Hkv, T, D) complex in fp32

    def normalize(self, h: torch.Tensor, eps: float, low: bool = False) -> torch.Tensor:
        """:func:`_normalize` of a step's h (B, C), into the workspace's buffer, in four calls that
        allocate nothing: the row norms, 1 / sqrt(norm^2 / C + eps), and the scaling. On a CPU torch's
        ``rms_norm`` is a composite of about a dozen calls, and this saves 6-8% of a decoding step at
        the default size. It rounds differently (the mean square is taken as the squared norm over C),
        by about one unit in the last place. Decoders in other dtypes take :func:`_normalize`.

        low: written in the low-precision projections' dtype (the scaling rounds into it), for a
        mixed decoder's bf16 matmul to read; in fp32 where the decoder has none."""
        if self._eps is None:
            return _normalize(h, eps)
        torch.linalg.vector_norm(h, dim=-1, keepdim=True, out=self.norm)
        torch.addcmul(self._eps[eps], self.norm, self.norm, value=1.0 / h.shape[-1], out=self.scale).rsqrt_()
        return torch.mul(h, self.scale, out=self.low_normed if low else self.normed)


def _fold_sources(model) -> list[torch.Tensor]:
    """The parameters a decoder's fold reads (:meth:`LlamaDecoder._fold_weights`), read afresh from the modules."""
    tensors = [model.model.embed_tokens.weight, model.lm_head.weight, model.model.norm.weight]
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        tensors += [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight,
                    mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight,
                    layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
    return tensors


class _FoldCache:
    """One model's folded (and packed) matrices, kept between sampling calls on a CPU while its parameters stay
    as they were.

    Folding a decoder's matrices and packing them for oneDNN costs a sampling call about a millisecond on a CPU:
    on the AMD EPYC a decoder's set-up took 0.89 ms at the default size (some 8% of a 20-token call on 64 rows)
    and 1.78 at d256, and 0.18 and 0.32 reusing the matrices. Training changes the weights between calls, but
    evaluation and inference draw batch after batch from the same ones, and there every decoder from the third
    on reuses the matrices of the one before (``benchmarks/sampler_speed.py`` times both kinds of call).

    The parameters count as unchanged when they are the same tensors (by storage address), none has been
    changed in place (version counters: an optimizer step, ``load_state_dict``, ``copy_`` under ``no_grad`` each
    bump them), and each has the same L2 norm, bitwise (a change through ``.data``, which the version counter
    does not see). The matrices are kept only once a decoder finds the parameters as the previous one left them,
    so training, whose weights change between calls, pays for reading addresses and versions alone (about 25 us at
    the default size), neither the norms (60-70 us) nor the memory of a kept copy. :func:`forget` drops a model's.
    """

    def __init__(self):
        self.key = None  # the previous decoder's: rows, matmul dtype, oneDNN choices, (address, version) per tensor
        self.folded: tuple | None = None
        self.norms: torch.Tensor | None = None
        self.keep = False  # the next fold is worth keeping: the parameters were unchanged at the last lookup

    def lookup(self, sources: list[torch.Tensor], rows: int, low: torch.dtype | None) -> tuple | None:
        """The kept matrices for a decoder of ``rows`` rows, or None: fold them, and :meth:`store` them.
        sources: :func:`_fold_sources` of the model."""
        key = (rows, low, onednn.SMALL_PRODUCT_FLOPS, onednn.applies(sources[1]),
               tuple((t.data_ptr(), t._version) for t in sources))
        if key != self.key:
            self.key, self.folded, self.norms, self.keep = key, None, None, False
            return None
        if self.folded is not None and torch.equal(_norms(sources), self.norms):
            return self.folded
        self.folded, self.norms, self.keep = None, None, True
        return None

    def store(self, sources: list[torch.Tensor], folded: tuple) -> None:
        """Keep ``folded``, just made from ``sources`` as :meth:`lookup` saw them, if they were unchanged there."""
        if self.keep:
            self.folded, self.norms, self.keep = folded, _norms(sources), False


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Each tensor's L2 norm, in one call: (len(tensors),)."""
    with torch.no_grad():
        return torch.stack(torch._foreach_norm(tensors))


_FOLDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _FoldCache


def forget(model) -> None:
    """Drop the folded matrices kept for ``model`` (:class:`_FoldCache`): their memory, or after changing its
    parameters in a way none of the checks sees."""
    _FOLDS.pop(model, None)


class LlamaDecoder:
    """Prefill a prompt, then decode one token at a time. Batch rows share positions.

    Usage: ``logits = decoder.prefill(prompt)`` then ``logits = decoder.step(token)`` per token,
    each returning the (B, V) float logits of the next position.

    Prompts of different lengths are left-padded and passed with ``prompt_mask`` (False on the
    padding): padded keys are never attended to. Rotary embeddings make attention depend only
    on the distance between tokens, so a left-padded row computes exactly what it would alone.

    ``matmul_dtype``: bf16 (or another dtype) for the q/k/v, gate/up and down projections of an fp32
    model: a mixed decoder. None, or a model in another dtype, keeps every matmul in the model's.
    """

    def __init__(self, model, batch_size: int, max_length: int, matmul_dtype: torch.dtype | None = None):
        config = model.config
        self.model = model
        self.layers = model.model.layers
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        weight = model.model.embed_tokens.weight
        self._embedding = weight.detach()  # the decoder computes no gradients (its steps write into buffers)
        # per layer, row and key/value head, its keys and values side by side for every position:
        # a step writes both in one call, and attention reads each as a strided view
        self._use_cache(weight.new_zeros(len(self.layers), batch_size, self.n_kv_heads, max_length, 2 * self.head_dim))
        self.max_length = max_length
        self.position = 0
        self.key_valid: torch.Tensor | None = None  # (B, max_length) bool, set by a padded prefill
        self._key_positions = torch.arange(max_length, device=weight.device)  # step_static's mask
        self.rotation = rotation_table(model.model.rotary_emb, max_length, weight.device)  # (T, D / 2)
        # a mixed decoder: the q/k/v, gate/up and down projections in this dtype, the rest in fp32
        mixed = weight.dtype == torch.float32 and matmul_dtype not in (None, torch.float32)
        self.low = matmul_dtype if mixed else None
        self._fold_or_reuse(model)

    def _fold_or_reuse(self, model) -> None:
        """:meth:`_fold_weights`, or on a CPU the folded (and packed) matrices of this model's previous decoder
        where its parameters have not changed since (:class:`_FoldCache`)."""
        if self._embedding.device.type != "cpu":  # on a GPU folding is a few kernel launches and memory dearer:
            forget(model)  # keep nothing, and drop any copy kept while the model was on the CPU
            self._fold_weights(model)
            return self._fold_tables()
        entry, sources = _FOLDS.setdefault(model, _FoldCache()), _fold_sources(model)
        folded = entry.lookup(sources, self._cache.shape[1], self.low)
        if folded is not None:
            self.weights, self.head, self._head_t, self._packed, self._packed_head = folded
        else:
            self._fold_weights(model)
            entry.store(sources, (self.weights, self.head, self._head_t, self._packed, self._packed_head))
        self._fold_tables()

    def _fold_weights(self, model) -> None:
        """One matmul for q, k and v and one for the MLP's gate and up projections, with each
        RMSNorm's gain folded into the matmul that reads its output and the attention scale into
        the query rows; q and k rows interleaved for the complex rotation (:func:`_as_pairs`) and
        the q, k and v rows ordered by key/value head (its G query heads, its key, its value), so
        that a step's queries and keys turn in one multiplication each; the residual adds ride on
        ``addmm``. The folds change rounding only (tested to 1e-5 against the Hugging Face forward).

        A decoder is made per sampling call, after every training step, so each folded matrix is
        written once: one multiplication by its gain, reading the parameter through a reordering view
        and writing straight into its place in the fused matrix (at the default size, 425 us against
        627 for concatenating, reshaping and then multiplying)."""
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        G = H // Hkv
        self.weights = []  # per layer, each (input, output) for torch.mm: (qkv^T, o_proj^T, gate_up^T, down^T)
        with torch.no_grad():
            for layer in self.layers:
                attn, mlp = layer.self_attn, layer.mlp
                low = self.low or attn.q_proj.weight.dtype  # the three projections' dtype
                gain, post_gain = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
                C = gain.shape[0]
                # in the projections' dtype, as the output projections the step also multiplies by
                qkv = attn.q_proj.weight.new_empty(Hkv, G + 2, D, C, dtype=low)  # per head: G queries, key, value
                pairs = qkv.view(Hkv, G + 2, D // 2, 2, C)
                torch.mul(_as_pairs(attn.q_proj.weight, H).view(Hkv, G, D // 2, 2, C), gain * attn.scaling,
                          out=pairs[:, :G])
                torch.mul(_as_pairs(attn.k_proj.weight, Hkv), gain, out=pairs[:, G])
                torch.mul(attn.v_proj.weight.view(Hkv, D, C), gain, out=qkv[:, G + 1])
                gate, up = mlp.gate_proj.weight, mlp.up_proj.weight
                gate_up = gate.new_empty(gate.shape[0] + up.shape[0], C, dtype=low)
                torch.mul(gate, post_gain, out=gate_up[: gate.shape[0]])
                torch.mul(up, post_gain, out=gate_up[gate.shape[0]:])
                # transposed views of (output, input) matrices: the kernel reads them as they are stored
                self.weights.append((qkv.view(-1, C).t(), attn.o_proj.weight.detach().t(), gate_up.t(),
                                     mlp.down_proj.weight.detach().to(low).t()))
            self.head = model.lm_head.weight * model.model.norm.weight  # (V, C)
            self._head_t = self.head.t()
            # where torch's fp32 products are slow (onednn.applies), the same matrices in oneDNN's layout; None
            # for those too small for oneDNN to pay at the batch's rows (onednn.pays), which torch.mm multiplies
            self._packed = self._packed_head = None
            if self.low is None and onednn.applies(self.head):
                rows = self._cache.shape[1]

                def pack(weight: torch.Tensor) -> torch.Tensor | None:  # (N, K)
                    return onednn.packed(weight, rows) if onednn.pays(rows, weight) else None

                self._packed = [tuple(pack(w.t()) for w in weights) for weights in self.weights]
                self._packed_head = pack(self.head)

    def _fold_tables(self) -> None:
        """The rotary and epsilon tables a step reads, made per decoder (they depend on its length)."""
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        G = H // Hkv
        # each position's turn of one key/value head's G queries and key, and of its value by angle 0 (a
        # multiplication by 1 + 0i, which leaves it bitwise as it was): (T, 1, (G + 2) * D / 2)
        table = torch.cat([self.rotation.repeat(1, G + 1), self.rotation.new_ones(self.max_length, D // 2)], 1)
        self._rotation_table = table[:, None]
        split = G * D // 2
        # a step's turns, per position: (queries (1, G * D / 2), key and value (1, D)), all heads alike
        self._rotations = list(zip(table[:, None, :split].unbind(0), table[:, None, split:].unbind(0)))
        self._rotation_real = torch.view_as_real(self._rotation_table).contiguous()  # step_static's, by index_select
        self.eps = [(layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon)
                    for layer in self.layers]
        self.final_eps = self.model.model.norm.variance_epsilon
        device = self._embedding.device  # each epsilon as a tensor, the first operand of a step's addcmul
        self._eps_tensors = {eps: torch.tensor(eps, device=device) for eps in {self.final_eps, *sum(self.eps, ())}}

    def _use_cache(self, cache: torch.Tensor) -> None:
        """cache: (L, B, Hkv, T, 2D), each layer's keys and values. Sets :attr:`keys` and
        :attr:`values`, its (L, B, Hkv, T, D) halves, and drops the step buffers of the cache before."""
        self._cache = cache
        D = cache.shape[-1] // 2
        self.keys, self.values = cache[..., :D], cache[..., D:]
        self._buffers: dict | None = None
        self._workspaces: dict[int, _Workspace] = {}

    def _workspace(self, B: int) -> _Workspace:
        """The step buffers and views for the cache's first B rows (made at the first step on B rows)."""
        workspace = self._workspaces.get(B)
        if workspace is None:
            if self._buffers is None:
                rows, Hkv, D = self._cache.shape[1], self.n_kv_heads, self.head_dim
                G, C, new = self.n_heads // Hkv, self._embedding.shape[1], self._cache.new_empty
                projected = self.weights[0][2].dtype  # gate_up's: the projections' dtype
                self._buffers = {"qkv": new(rows, Hkv * (G + 2) * D), "q": new(rows, Hkv * G * D),
                                 "kv": new(rows, Hkv, 2 * D), "attention": new(rows, Hkv * G * D),
                                 "gate_up": new(rows, self.weights[0][2].shape[1], dtype=projected),
                                 "normed": new(rows, C), "norm": new(rows, 1), "scale": new(rows, 1)}
                if self.low is not None:  # the bf16 projections' other inputs and outputs
                    self._buffers.update(low_normed=new(rows, C, dtype=self.low), down=new(rows, C, dtype=self.low),
                                         qkv_low=new(rows, Hkv * (G + 2) * D, dtype=self.low))
            workspace = self._workspaces[B] = _Workspace(self, B)
        return workspace

    def _room(self, end: int) -> None:
        if end > self.max_length:
            raise ValueError(f"decoder cache holds {self.max_length} positions, asked for {end}")

    def _prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, S), S > 1, at positions [0, S) -> last position's logits (B, V)."""
        B, S = ids.shape
        self._room(S)
        mask = self._attention_mask(B, S)
        h = F.embedding(ids, self._embedding)  # (B, S, C)
        H, Hkv = self.n_heads, self.n_kv_heads
        G = H // Hkv
        for i, (w_qkv, w_out, w_mlp, w_down) in enumerate(self.weights):
            qkv = _mm(_normalize(h, self.eps[i][0]), w_qkv).view(B, S, Hkv, -1)
            # queries and keys turned (values by angle 0) in one pass: (B, S, Hkv, G + 2, D)
            qkv = _rotate_pairs(qkv, self._rotation_table[:S]).view(B, S, Hkv, G + 2, self.head_dim)
            q = qkv[:, :, :, :G].flatten(2, 3).transpose(1, 2)  # (B, H, S, D), grouped by key/value head
            k, v = qkv[:, :, :, G].transpose(1, 2), qkv[:, :, :, G + 1].transpose(1, 2)  # (B, Hkv, S, D)
            self.keys[i, :B, :, :S] = k
            self.values[i, :B, :, :S] = v
            # the attention scale is folded into q; without padding the prefill is plainly causal
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=1.0,
                                                 enable_gqa=Hkv != H)
            h = h + torch.matmul(out.transpose(1, 2).reshape(B, S, -1), w_out)
            gate, up = _mm(_normalize(h, self.eps[i][1]), w_mlp).chunk(2, dim=-1)
            h = h + _mm(F.silu(gate) * up, w_down)
        self.position = S
        return F.linear(_normalize(h[:, -1], self.final_eps), self.head).float()

    def _attention_mask(self, B: int, S: int) -> torch.Tensor | None:
        """(B, 1, S, S) bool for a prefill of S tokens, True where a query may attend; None when no
        key is padding."""
        return None if self.key_valid is None else padded_causal_mask(self.key_valid[:B, :S])

    def prefill(self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """prompt: (B, P) long, from position 0 -> (B, V) logits after it.

        prompt_mask: (B, P) bool, False on left padding (None: no padding).
        """
        if prompt.shape[1] > 1 and self.position:
            raise ValueError("prefill starts from an empty cache")
        if prompt_mask is not None and not bool(prompt_mask.all()):
            self.key_valid = torch.ones(prompt.shape[0], self.max_length, dtype=torch.bool, device=prompt.device)
            self.key_valid[:, : prompt.shape[1]] = prompt_mask
        return self.step(prompt[:, 0]) if prompt.shape[1] == 1 else self._prefill(prompt)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep cache rows ``index`` (B',) in that order, as rows [0, B'): beam search's reshuffle of
        hypotheses, or the sampler dropping rows that have ended. Later steps take B' tokens."""
        B, end = index.shape[0], self.position  # positions from ``end`` on are not written yet
        if B > self._cache.shape[1]:
            raise ValueError(f"decoder cache holds {self._cache.shape[1]} rows, asked for {B}")
        self._cache[:, :B, :, :end] = self._cache[:, index, :, :end]
        if self.key_valid is not None:
            self.key_valid[:B] = self.key_valid[index]

    def fork(self, rows: torch.Tensor, length: int) -> LlamaDecoder:
        """A decoder over rows ``rows`` (N,) of this cache (repeats allowed), holding positions
        [0, length): it continues from there without recomputing them. SeqGAN's rollouts fork
        the sampled batch's cache at every prefix length, K rows per sentence."""
        if not 0 < length <= self.position:
            raise ValueError(f"can fork at positions 1..{self.position}, asked for {length}")
        child = copy.copy(self)  # shares the model, the folded weights and the rotary tables
        child._use_cache(self._cache[:, rows])  # (L, N, Hkv, T, 2D), a copy
        child.key_valid = None if self.key_valid is None else self.key_valid[rows]
        child.position = length
        return child

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """token: (B,) long, the newest token -> (B, V) logits of the next position.

        The same maths as :meth:`_prefill` with one query, in as few tensor calls as we could: at
        sampling sizes on a CPU the calls, not the arithmetic, are most of a step's time.
        """
        B, pos = token.shape[0], self.position
        end = pos + 1
        self._room(end)
        work = self._workspace(B)
        hidden = None if self.key_valid is None else ~self.key_valid[:B, None, None, :end]  # (B, 1, 1, end)
        rotate_q, rotate_kv = self._rotations[pos]

        def write(i: int):  # this position's key and value, turned straight into the cache
            _rotate_into(work.slots[i][:, :, pos], work.kv_in, rotate_kv)
            return work.keys_t[i][:, :, :end], work.values[i][:, :end]

        logits = self._one_position(token, work, rotate_q, write, hidden)
        self.position = end
        return logits

    def step_static(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """:meth:`step` with shapes that do not depend on the position, for a CUDA graph.

        token: (B,) long, B the cache's rows; position: long tensor on the device, where ``token``
        sits: 0-dim (every row at the same position) or (B,) (each row at its own, as SeqGAN's
        rollouts of every prefix length in one batch are). Attention reads the whole cache with
        each row's keys after its position masked, and the cache write and the rotary angle are
        indexed by the tensor, so one captured graph replays at every position. Does not advance
        :attr:`position` (the caller does).
        """
        B, Hkv, D = token.shape[0], self.n_kv_heads, self.head_dim
        work = self._workspace(B)
        index = position.view(-1)  # (P,), P = 1 or B: a 0-dim position serves every row
        hidden = (self._key_positions[None] > index[:, None]).view(-1, 1, 1, self.max_length)  # keys not yet written
        if self.key_valid is not None:
            hidden = hidden | ~self.key_valid[:B, None, None, :]  # (B, 1, 1, T)
        rotation = torch.view_as_complex(self._rotation_real.index_select(0, index))  # (P, 1, (G + 2) D / 2)
        split = rotation.shape[-1] - D
        slots = index.view(-1, 1, 1, 1).expand(B, Hkv, 1, 2 * D)

        def write(i: int):
            _rotate_into(work.kv_out, work.kv_in, rotation[..., split:])
            self._cache[i, :B].scatter_(2, slots, work.kv_rows.unsqueeze(2))
            return work.keys_t[i], work.values[i]  # every position: (B * Hkv, D, T), (B * Hkv, T, D)

        return self._one_position(token, work, rotation[..., :split], write, hidden)

    def _one_position(self, token: torch.Tensor, work: _Workspace, rotate_q: torch.Tensor, write,
                      hidden: torch.Tensor | None) -> torch.Tensor:
        """The decoder layers on one new token per row: the body of :meth:`step` and :meth:`step_static`.

        ``rotate_q`` turns the queries; ``write(i)`` turns layer i's new keys and values into the
        cache and returns the keys (transposed, (B * Hkv, D, n)) and values ((B * Hkv, n, D)) to
        attend to; ``hidden`` (broadcast to the scores, viewed as (B, Hkv, G, n)) is True where a key
        must not be attended to, or None. Every call here is a few microseconds of a step's time on a
        CPU, so there are as few as the maths allows, and the intermediates go to the workspace's
        buffers: q, k and v come out of one matmul, each turned by one multiplication into its place,
        attention is two batched matmuls over views of the cache, and the residual adds are in place.
        """
        mixed = self.low is not None
        h = F.embedding(token, self._embedding)  # (B, C)
        if self._packed is not None:
            return self._one_position_packed(h, work, rotate_q, write, hidden)
        for i, (w_qkv, w_out, w_mlp, w_down) in enumerate(self.weights):
            if mixed:  # q, k and v come out in bf16 and turn in fp32
                work.qkv.copy_(torch.mm(work.normalize(h, self.eps[i][0], low=True), w_qkv, out=work.qkv_low))
            else:
                torch.mm(work.normalize(h, self.eps[i][0]), w_qkv, out=work.qkv)
            h.addmm_(self._attend(i, work, rotate_q, write, hidden), w_out)
            torch.mm(work.normalize(h, self.eps[i][1], low=mixed), w_mlp, out=work.gate_up)
            gated = F.silu(work.gate, inplace=True).mul_(work.up)
            if mixed:
                h.add_(torch.mm(gated, w_down, out=work.down))
            else:
                h.addmm_(gated, w_down)
        logits = torch.mm(work.normalize(h, self.final_eps), self._head_t)
        return logits if logits.dtype == torch.float32 else logits.float()

    def _attend(self, i: int, work: _Workspace, rotate_q: torch.Tensor, write, hidden: torch.Tensor | None):
        """Layer i's attention for the step's q, k and v (in ``work.qkv``): the queries turned, the key and
        value turned into the cache (``write``), two batched matmuls over views of it. Returns the heads'
        outputs, (B, H * D), in the workspace's buffer."""
        _rotate_into(work.q_out, work.q_in, rotate_q)
        keys_t, values = write(i)
        scores = torch.bmm(work.q_heads, keys_t)  # (B * Hkv, G, n)
        if hidden is not None:
            Hkv = self.n_kv_heads  # the mask (B or 1, 1, 1, n) broadcast over (B, Hkv, G, n)
            scores.view(-1, Hkv, scores.shape[1], scores.shape[2]).masked_fill_(hidden, float("-inf"))
        torch.bmm(scores.softmax(-1), values, out=work.attention)
        return work.attention_rows

    def _one_position_packed(self, h: torch.Tensor, work: _Workspace, rotate_q: torch.Tensor, write,
                             hidden: torch.Tensor | None) -> torch.Tensor:
        """:meth:`_one_position` of an fp32 decoder whose products go through oneDNN (:mod:`.onednn`):
        the same steps, with the weights packed once per decoder and the residual adds fused into the
        output projections, except for matrices too small for oneDNN to pay (no packed copy), which
        :func:`_product` multiplies by torch.mm. oneDNN's products return new tensors: q, k and v are
        copied into the workspace's buffer (its views feed the rotations), the MLP's halves are views
        of its output."""
        for i, (p_qkv, p_out, p_mlp, p_down) in enumerate(self._packed):
            w_qkv, w_out, w_mlp, w_down = self.weights[i]
            _product(work.normalize(h, self.eps[i][0]), w_qkv, p_qkv, out=work.qkv)
            h = _product(self._attend(i, work, rotate_q, write, hidden), w_out, p_out, residual=h)
            gate, up = _product(work.normalize(h, self.eps[i][1]), w_mlp, p_mlp).chunk(2, dim=-1)
            h = _product(F.silu(gate, inplace=True).mul_(up), w_down, p_down, residual=h)
        return _product(work.normalize(h, self.final_eps), self._head_t, self._packed_head)

    def graphed_step(self):
        """A drop-in for :meth:`step` that replays a CUDA graph of :meth:`step_static`.

        On a GPU, a decoding step at sampling sizes is a few dozen tiny kernels, and launching
        them from Python costs more than running them; a graph launches them all at once.
        Returns :meth:`step` itself off CUDA or when :data:`CUDA_GRAPHS` is False.
        """
        if not CUDA_GRAPHS or self.keys.device.type != "cuda":
            return self.step
        return _GraphedStep(self)

    def graphed_step_static(self):
        """A drop-in for :meth:`step_static` with a (B,) position per row (B the cache's rows) that
        replays a CUDA graph; :meth:`step_static` itself off CUDA or when :data:`CUDA_GRAPHS` is False."""
        if not CUDA_GRAPHS or self.keys.device.type != "cuda":
            return self.step_static
        return _GraphedStep(self, per_row=True).replay


# Sampling on a GPU replays each decoding step from a CUDA graph; set False to launch kernels one by one.
CUDA_GRAPHS = True

_capture_state: dict = {}  # per device index: (capture stream, a one-kernel graph that holds the shared pool)


def _capture_stream_and_pool(device: torch.device) -> tuple[torch.cuda.Stream, tuple[int, int]]:
    """The side stream that step graphs are captured on, and the memory pool they allocate from: one
    of each per device, for the life of the process.

    One stream, because the eager warm-up step before each capture allocates on it, and the caching
    allocator reuses a freed block only on the stream it was allocated on: a new stream per capture
    would leave a warm-up's memory behind every time. One pool, because a graph's own pool is not
    given back when the graph is freed (only at ``torch.cuda.empty_cache()``), and sharing is safe
    here: a graph is replayed only inside the sampling call that captured it, in capture order, and
    its output is copied out after each replay, so a later graph may reuse an earlier one's memory.
    The allocator forgets a pool once no graph uses it and then refuses to share it, so a tiny graph
    captured into it is kept alive with it."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _capture_state:
        stream, keeper = torch.cuda.Stream(device), torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            keeper.capture_begin()
            try:
                torch.zeros(1, device=device)  # one kernel: a graph must not be empty
            finally:
                keeper.capture_end()
        _capture_state[index] = (stream, keeper)
    stream, keeper = _capture_state[index]
    return stream, keeper.pool()


class _GraphedStep:
    """``decoder.step`` through a CUDA graph of ``decoder.step_static``, captured at the first call
    (one per sampling call); with ``per_row``, :meth:`replay` is ``step_static`` with a position per row."""

    def __init__(self, decoder: LlamaDecoder, per_row: bool = False):
        self.decoder = decoder
        rows, device = decoder.keys.shape[1], decoder.keys.device
        self.token = torch.zeros(rows, dtype=torch.long, device=device)
        self.position = torch.zeros(rows if per_row else (), dtype=torch.long, device=device)
        decoder._workspace(rows)  # the step's buffers, made here on the current stream, not in the capture's
        self.graph = None
        self.logits = None

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        decoder = self.decoder
        if token.shape[0] != self.token.shape[0]:  # not the rows the graph was made for: run eagerly
            return decoder.step(token)
        decoder._room(decoder.position + 1)
        self.position.fill_(decoder.position)
        logits = self.replay(token)
        decoder.position += 1
        return logits

    def replay(self, token: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        """The graph's step on ``token`` at ``position`` (None: the position already set)."""
        self.token.copy_(token)
        if position is not None:
            self.position.copy_(position)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits.clone()  # the graph's output buffer is overwritten by the next replay

    def _capture(self) -> None:
        # one eager run first, on a side stream, so that cuBLAS sets up outside the capture; it writes
        # this position's keys and values, which the replay then writes again with the same numbers
        device = self.token.device
        side, pool = _capture_stream_and_pool(device)
        side.wait_stream(torch.cuda.current_stream(device))
        # captured with capture_begin / capture_end rather than `with torch.cuda.graph(...)`, whose entry
        # synchronizes the device and empties the caching allocator: once per sampling call, that left the
        # training step that follows to allocate all its memory from the driver again
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            self.decoder.step_static(self.token, self.position)
            graph.capture_begin(pool=pool)
            try:
                self.logits = self.decoder.step_static(self.token, self.position)
            finally:
                graph.capture_end()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = graph
