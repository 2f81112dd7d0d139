"""Data-parallel training across processes: every recipe runs unchanged under ``torchrun``.

    torchrun --nproc_per_node 2 -m textgan.recipes.scratchgan batch_size=256

Each process holds a full copy of the models. Every step, all processes draw the same global
batch (batches are a function of ``(seed, step)``) and each takes its contiguous slice, so
``batch_size`` in a config is the global batch whatever the number of processes. After each
backward pass the gradients are averaged across processes with one all-reduce of a flat buffer
(what ``DistributedDataParallel`` does, without wrapping the model, so that the samplers, the
Hugging Face export and the checkpoint code see the plain module); identical gradients and
identical optimizers keep the copies identical, which :func:`check_in_sync` verifies at every
checkpoint. A non-finite loss on any process poisons the all-reduced gradient, so every process
skips that step together.

A loss is the mean over the global batch's tokens (:func:`textgan.rl.loss_mean`: each process divides its
sum by the processes' mean count), so that the averaged gradient is the one a single process given the
whole batch would compute, however the tokens fall between the processes; REINFORCE's batch statistics
are the global batch's too (:func:`summed`).

Sampling differs per process: the torch random stream is re-seeded at every step from
``(seed, step, rank)``, which also makes a resumed multi-process run draw what an uninterrupted
one would. Only rank 0 writes: the run folder, logs, samples, checkpoints and the exported model.
Backends: gloo on CPU, nccl on GPUs (each process takes the GPU of its ``LOCAL_RANK``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

import torch
import torch.distributed as dist

from .config import ConfigError
from .data import step_seed


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched_world_size() -> int:
    """How many processes torchrun started (its WORLD_SIZE; 1 when run alone), known before :func:`init`."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as torchrun set it (its RANK; 0 when run alone), known before :func:`init`."""
    return int(os.environ.get("RANK", "0")) if launched_world_size() > 1 else 0


ALIKE_ERROR_WAIT_S = 30.0  # how long a rank other than 0 leaves rank 0 to say an error they all hit


def say_for_all(message: str) -> None:
    """Say ``message``, an error every torchrun process hits alike (the same command line, parsed the same way),
    once: on stderr, by rank 0.

    A rank other than 0 waits :data:`ALIKE_ERROR_WAIT_S` seconds before it returns, for rank 0 to say it and fail,
    whereupon torchrun stops the other processes. Were it to fail at once, quietly, torchrun could stop rank 0 before
    rank 0 printed anything (the first process to fail stops its siblings), and the run would end with no error line
    at all. Should rank 0 not fail within the wait (a node that reads a different file, say), the rank says the
    error itself. Run alone, or as rank 0, it is a plain print."""
    if launched_rank() != 0:
        time.sleep(ALIKE_ERROR_WAIT_S)
    print(f"error: {message}", file=sys.stderr)


def raise_rank_zeros(check: Callable[[], object] | None) -> None:
    """Run ``check`` (None: nothing to run here) and raise rank 0's ConfigError from it in every process: for what
    only rank 0 checks, its run folder (writable, not another run's while that run trains). Under torchrun every
    process joins the call, and each then stops with the same line, where the others would otherwise wait on rank 0
    in their next collective and fail there with a traceback of their own. Run alone: raises the check's error."""
    message = None
    if check is not None:
        try:
            check()
        except ConfigError as e:
            message = str(e)
    if active():
        shared = [message]
        dist.broadcast_object_list(shared, src=0)
        message = shared[0]
    if message:
        raise ConfigError(message)


def init(device: str = "auto") -> bool:
    """Join the process group that ``torchrun`` describes in the environment; False when run alone."""
    if launched_world_size() <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= gpus:  # one process per GPU: NCCL cannot put two ranks on one GPU
            started = os.environ.get("LOCAL_WORLD_SIZE", str(local_rank + 1))
            raise ConfigError(f"torchrun started {started} processes on a machine with {gpus} GPU(s): "
                              f"use --nproc_per_node {gpus}, or device=cpu to train on the CPU")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def reader_gone() -> int:
    """What a command does when the reader of its standard output has gone (``textgan evaluate ... | head``, a
    BrokenPipeError): no traceback. Standard output is pointed at the null device, so that the interpreter's last
    flush of it cannot fail again, and the exit status is the one a shell gives a program that SIGPIPE ended,
    141. Files the command writes are written whole or not at all, as they always are."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError):  # no descriptor to point (a test's captured stdout): nothing will flush to it
        pass
    return 128 + 13  # SIGPIPE


def exit_process(code: int) -> NoReturn:
    """End the process with exit status ``code``: the last call of a command-line entry point.

    A process that torchrun started leaves without the interpreter's teardown (``os._exit``, once its output is
    flushed), since gloo can kill it there. A gloo worker thread drops the work of the last all-reduce only after
    the caller has its result, and that work holds tensors whose Python objects are still alive; dropping them takes
    the GIL, which a finalizing interpreter answers by ending the thread, and the unwind through gloo's C++ frames
    calls ``std::terminate`` ("terminate called without an active exception", SIGABRT). :func:`shutdown` does not
    prevent it: it unregisters the process group, but the worker threads outlive it. It struck 2 of 161 2-process
    runs on a 2-core AMD EPYC, after the run had written everything, and torchrun failed the whole run for it
    (``benchmarks/results/torchrun_exit_amd_epyc_zen4.md``). By this point everything a command writes is closed and
    renamed into place. A process run alone exits as usual (``sys.exit``)."""
    if launched_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def local_device(device: torch.device) -> torch.device:
    """With several processes on GPUs, each uses the GPU of its ``LOCAL_RANK``."""
    if active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(batch):
    """This process's contiguous slice of a global batch (a tensor along dim 0, or a list)."""
    if not active():
        return batch
    n, r = world_size(), rank()
    if torch.is_tensor(batch):
        return torch.tensor_split(batch, n)[r]
    size, extra = divmod(len(batch), n)
    start = r * size + min(r, extra)
    return batch[start : start + size + (r < extra)]


def local_batch_size(global_size: int) -> int:
    """Rows of a global batch of ``global_size`` that this process gets."""
    return len(shard(range(global_size)))


def seed_step(seed: int, step: int) -> None:
    """Re-seed the torch stream per (seed, step, rank) so that processes sample differently (no-op alone)."""
    if active():
        torch.manual_seed(step_seed(seed, step) * 1_009 + rank())


def broadcast_modules(modules) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    if not active():
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(module: torch.nn.Module, poison: bool = False,
                      loss: torch.Tensor | None = None) -> torch.Tensor | None:
    """Average the gradients of ``module`` over processes in place (missing gradients count as zero).

    ``poison``: this process's loss was not finite; its gradient becomes NaN, and so does the
    average on every process, which then skips the step together.
    ``loss``: a scalar averaged in the same all-reduce, returned (None without one, and alone).
    """
    if not active():
        return None
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    extra = [] if loss is None else [loss.detach().reshape(1).to(params[0].grad.dtype)]
    flat = torch.cat([p.grad.reshape(-1) for p in params] + extra)
    if poison:
        flat.fill_(float("nan"))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()
    return None if loss is None else flat[-1]


def averaged(values: dict[str, float]) -> dict[str, float]:
    """Each of a step's logged ``values`` averaged over processes (every process logs the same keys): a loss
    made by :func:`textgan.rl.loss_mean`, the global batch's; a mean over this process's rows (a reward, an
    accuracy), the processes' average of theirs. ``values`` itself alone."""
    if not active() or not values:
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only (set_device: init)
    total = all_sum(torch.tensor(list(values.values()), dtype=torch.float64, device=device)) / world_size()
    return dict(zip(values, total.tolist()))


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over processes, the same on every process; ``tensor`` itself alone."""
    if not active():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def summed(width: int):
    """The ``reduce`` of :mod:`textgan.rl`'s batch statistics under torchrun: their sums and counts summed
    over processes, so that each process's means and spreads are the global batch's. Per-position
    ones, (k, T) with T <= ``width``, travel padded to ``width`` (each process samples rows of its own
    length) and come back cut to T. None in a single process: the statistics stay as they are."""
    if not active():
        return None

    def reduce(stats: torch.Tensor) -> torch.Tensor:
        if stats.dim() == 2:
            T = stats.shape[1]
            if T > width:  # padding by a negative amount would crop, silently
                raise ValueError(f"per-position statistics of {T} positions, more than the {width} they travel in")
            return all_sum(torch.nn.functional.pad(stats, (0, width - T)))[:, :T]
        return all_sum(stats)

    return reduce


def check_in_sync(modules) -> None:
    """Raise if the processes' copies of ``modules`` differ (they never should)."""
    if not active():
        return
    total = torch.stack([t.detach().double().sum() for m in modules for t in m.parameters()]).sum().reshape(1)
    low, high = total.clone(), total.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if float(high - low) != 0.0:
        raise RuntimeError(f"processes hold different parameters (checksums {float(low)} .. {float(high)})")
