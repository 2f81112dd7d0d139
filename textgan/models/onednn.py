"""fp32 matrix products through oneDNN on CPUs where torch's default BLAS runs them at half speed.

torch's CPU wheels multiply fp32 matrices with Intel's MKL, which picks its kernels by CPU vendor:
on AMD processors it runs its AVX2 kernels even where the CPU has AVX-512. On the 2-core AMD EPYC
(Zen 5) that textgan is benchmarked on, a 2048 x 2048 fp32 matmul runs at 220 GFLOP/s through
``torch.mm`` and at 480 through oneDNN (also inside torch, as ``torch.ops.mkldnn._linear_pointwise``),
which picks its kernels by instruction set; at the generator's shapes the products are 1.3-2.2x
faster (``benchmarks/results/cpu_matmul_amd_epyc.md``). On Intel CPUs MKL already runs AVX-512, and
oneDNN is the slower of the two: on a 2-core Intel Xeon (AVX-512, AMX) 258 against 290 GFLOP/s for the
large product, MLE steps 0.93-0.97x and sampling 0.72-0.85x as fast as through torch.mm
(``benchmarks/results/cpu_matmul_intel_r_xeon_r_processor.md``).

:func:`active` says whether textgan's own forward passes and decoder use oneDNN for their fp32
products on the CPU: by default (``TEXTGAN_CPU_MATMUL=auto``) on AMD CPUs with AVX-512, where torch
has the operator; ``TEXTGAN_CPU_MATMUL=onednn`` forces it wherever torch has it, ``default`` never.
The choice is made once per process from the CPU, not from timings, so a run and its resumption
compute the same numbers. The two libraries differ in rounding only (the products sum in another
order); the test suite checks the training forward, its gradients and the decoder against torch's.
"""

from __future__ import annotations

import contextlib
import functools
import platform

import torch

CHOICES = ("auto", "onednn", "default")


def _operator():
    """torch's oneDNN linear (y = x @ w.T, with an optional fused add), or None where this torch lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def cpu_vendor() -> str:
    """The CPU's vendor string ('GenuineIntel', 'AuthenticAMD', ...), or '' where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() if platform.processor() in ("GenuineIntel", "AuthenticAMD") else ""


def setting() -> str:
    """``TEXTGAN_CPU_MATMUL`` (auto when unset); a :class:`~textgan.config.ConfigError` naming the choices
    if it is none of them. The command-line entry points call it first, so a typo stops a run at once."""
    from ..config import env_choice

    return env_choice("TEXTGAN_CPU_MATMUL", CHOICES)


def _choice() -> str:
    """:func:`setting`, with an unknown value read as auto (the entry points refuse it before this is asked)."""
    try:
        return setting()
    except ValueError:
        return "auto"


@functools.cache
def active() -> bool:
    """Whether textgan's fp32 CPU products go through oneDNN in this process (module docstring).
    Decided at the first call."""
    choice = _choice()
    if choice == "default" or _operator() is None:
        return False
    if choice == "onednn":
        return True
    return cpu_vendor() == "AuthenticAMD" and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def describe() -> str:
    """Which library multiplies textgan's fp32 CPU matrices, and the setting: for version lines and benchmark records."""
    return f"{'oneDNN' if active() else 'torch default'} (TEXTGAN_CPU_MATMUL={_choice()})"


_forced: bool | None = None  # set by use(): overrides active() inside the block


@contextlib.contextmanager
def use(enabled: bool):
    """Within the block, textgan's fp32 CPU products go through oneDNN (True) or torch's default (False),
    whatever :func:`active` says: for comparing the two in one process (``benchmarks/cpu_matmul.py``).
    A decoder keeps the choice it was made under."""
    global _forced
    if enabled and _operator() is None:
        raise RuntimeError("this torch has no oneDNN linear operator")
    before, _forced = _forced, bool(enabled)
    try:
        yield
    finally:
        _forced = before


def applies(x: torch.Tensor) -> bool:
    """Whether a product with ``x`` as its input goes through oneDNN: :func:`active` (or :func:`use`), an
    fp32 CPU tensor, outside autocast (autocast's products are bf16 ones, which torch hands to oneDNN)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and (active() if _forced is None else _forced)
            and not torch.is_autocast_enabled("cpu"))


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T (weight (N, K), as ``F.linear``'s), through oneDNN where :func:`applies`, with gradients."""
    if not applies(x):
        return x @ weight.t()
    return _Linear.apply(x, weight, None)


def add_linear(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """residual + x @ weight.T, the add fused into the product (``torch.addmm``'s job); x (N, K), residual (N, M)."""
    if not applies(x):
        return torch.addmm(residual, x, weight.t())
    return _Linear.apply(x, weight, residual)


class _Linear(torch.autograd.Function):
    """y = x @ w.T (+ residual) by oneDNN, and its backward by oneDNN: dx = dy @ w, dw = dy.T @ x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_residual = residual is not None
        flat = x.reshape(-1, x.shape[-1])
        out = product(flat, weight, None if residual is None else residual.reshape(flat.shape[0], -1))
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:  # dy @ w: a linear by w.T, (K, N), made contiguous (a small copy)
            grad_x = product(flat_grad, weight.t().contiguous()).view(x.shape)
        if ctx.needs_input_grad[1]:  # dy.T @ x
            grad_weight = weight_gradient(flat_grad, x.reshape(-1, x.shape[-1]))
        grad_residual = grad if ctx.has_residual and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_residual


def weight_gradient(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad.T @ x by oneDNN, without gradients: a linear layer's weight gradient (N, K) from its output's
    gradient (M, N) and its input (M, K), summed over the M rows.

    oneDNN's product sums over its input's contiguous dimension, and here both operands run along M, so one
    of them is copied transposed: the smaller. Where N > K that is x, and the product is computed as
    (x.T @ grad).T; at the generator's training shapes the copy of grad.T it saves is most of the cost
    (2,688 rows, the 128 x 1,024 gate/up projection: 1.9 ms against 3.7 on the AMD EPYC)."""
    if grad.shape[1] <= x.shape[1]:
        return product(grad.t(), x.t())  # oneDNN copies grad.T, the smaller
    return product(x.t().contiguous(), grad.t()).t()


# A product of fewer floating-point operations than this costs less through torch.mm than through oneDNN,
# even where MKL runs its AVX2 kernels: each oneDNN call spends about 10 us setting up, whatever its size.
# On the AMD EPYC at the decoder's 64 rows (benchmarks/results/cpu_matmul_amd_epyc.md, "decoding"), a
# 128 x 128 product (2.1 MFLOP) ran at 126-131 GFLOP/s through torch.mm against 116-123 through oneDNN
# with a packed weight in three runs, and 128 x 384 (6.3 MFLOP) at 153-165 against 194-235. The decoder,
# which makes the same small products at every step, picks each matrix's library by it (:func:`pays`):
# whole sampling calls at the default size ran 1-3% faster at length 20 than with every product through
# oneDNN, and -2% to +6% at length 50 (alternating, 5 rounds).
SMALL_PRODUCT_FLOPS = 3e6


def pays(rows: int, weight: torch.Tensor) -> bool:
    """Whether a product of ``rows`` rows by ``weight`` (N, K) is large enough for oneDNN's faster kernels to
    repay its set-up (:data:`SMALL_PRODUCT_FLOPS`): decided from the shapes alone, so it is the same on every run."""
    return 2 * rows * weight.numel() >= SMALL_PRODUCT_FLOPS


def packed(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` (N, K) reordered once into oneDNN's blocked layout for products with ``rows``-row inputs
    (other row counts are still right, if a little slower): the decoder's weights, which a sampling call
    multiplies by at every step. An opaque tensor that only :func:`product` reads."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)


def product(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, K) @ weight.T (+ residual (B, N)) by oneDNN, without gradients: ``weight`` (N, K) as it is, or
    :func:`packed`. The one place that spells out the operator's arguments."""
    op = _operator()
    if residual is None:
        return op(x, weight, None, "none", [], "")
    return op.binary(x, residual, weight, None, "add")
