"""Keep freed memory inside a training process, so that its steps stop paying page faults (Linux, glibc).

A training step on a CPU allocates and frees tens of megabytes of activations, gradients and library
workspaces. glibc's allocator gives large blocks back to the kernel as they are freed (those it maps
by themselves, and free space at the top of its heap, by thresholds it adjusts as it goes), and every
block taken again is mapped afresh: each of its pages costs a page fault and a zero-fill at its first
write. On the 2-core AMD EPYC an MLE step of 64 x 22 tokens took 800-2,300 such faults at d128 and
1,900-6,700 at d256, and one of the d256 step's element-wise products, writing into a fresh 11 MB
buffer, took 1.8 ms instead of 0.2-0.3 (``benchmarks/results/memory_page_faults_amd_epyc.md``).

:func:`keep_freed_memory` fixes both thresholds (``mallopt``): blocks under 256 MiB (32 MiB where an older
glibc refuses more) come from the heap, and up to 1 GiB of free space at its top stays mapped. The faults
fall to a few dozen a step or none; over seven alternating pairs of processes (``python
benchmarks/memory.py``, ``benchmarks/results/memory_amd_epyc.md``) ScratchGAN steps ran 1.082x faster at
d128 and 1.067x at d256 and MLE steps 1.062x and 1.039x (medians), at 1.002x the peak memory, and the Yelp
style-transfer recipe, whose steps take blocks over 32 MiB, ran its warm-up steps 1.33x and its
adversarial steps 1.11-1.16x faster at a peak memory 0.5-1.6% higher
(``benchmarks/results/memory_style_transfer_amd_epyc.md``). Every number is computed bitwise as before:
the allocator decides where tensors live, not what is computed on them. The price is memory a process
keeps after it has freed it: up to 1 GiB of free heap stays counted in its resident size.

The command-line entry points (every recipe, ``textgan train``, ``sample``, ``transfer``, ``evaluate``
and ``sweep``) call it first; a script that trains through the library may call it itself.
``TEXTGAN_MALLOC=default`` leaves the allocator as glibc sets it; anything but ``keep`` (the default)
or ``default`` stops every command with a one-line error. Elsewhere (macOS, Windows, musl) it does
nothing.
"""

from __future__ import annotations

import ctypes
import os

CHOICES = ("keep", "default")

# bytes: blocks from here up are mapped by themselves. Tried in order: glibc before 2.35 or so refuses more
# than 32 MiB on 64-bit systems (the limit its manual states); 2.36 takes 256 MiB
MMAP_THRESHOLDS = (256 << 20, 32 << 20)
TRIM_THRESHOLD = 1 << 30  # bytes of free space at the heap's top kept mapped

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)


def setting() -> str:
    """``TEXTGAN_MALLOC`` (keep when unset); a :class:`~textgan.config.ConfigError` naming the choices if it
    is none of them."""
    from .config import env_choice

    return env_choice("TEXTGAN_MALLOC", CHOICES)


def _mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
    except (AttributeError, ValueError, OSError):  # not a GNU system
        return None
    try:
        return ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None


_kept: bool | None = None  # keep_freed_memory's answer, once it has been asked


def keep_freed_memory() -> bool:
    """Raise glibc's thresholds (module docstring), once per process, unless :func:`setting` says
    ``default``. Returns whether they are raised: False under ``TEXTGAN_MALLOC=default`` or off glibc.
    Raises :class:`~textgan.config.ConfigError` for a bad ``TEXTGAN_MALLOC``."""
    global _kept
    choice = setting()  # read at every call, so that a bad value stops every command, not just the first
    if _kept is None:  # the thresholds are the process's: set once, never undone
        mallopt = _mallopt() if choice == "keep" else None
        # both thresholds: setting either one turns off glibc's own adjustment of the other, and one alone
        # makes more faults than neither (the trim threshold alone: ten times as many in a d256 MLE step), so
        # the trim threshold is set only once an mmap threshold has been taken (a refusal changes nothing)
        _kept = (mallopt is not None and any(mallopt(_M_MMAP_THRESHOLD, value) for value in MMAP_THRESHOLDS)
                 and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    return _kept


def describe() -> str:
    """Whether this process keeps freed memory, and the setting: for benchmark records."""
    try:
        choice = setting()
    except ValueError:
        return f"allocator as glibc sets it (TEXTGAN_MALLOC={os.environ.get('TEXTGAN_MALLOC')!r} is not a choice)"
    if _kept is None:
        return f"allocator as glibc sets it: not asked to keep freed memory in this process (TEXTGAN_MALLOC={choice})"
    return f"freed memory {'kept' if _kept else 'returned'} (TEXTGAN_MALLOC={choice})"
