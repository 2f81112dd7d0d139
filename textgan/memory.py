"""Keep freed memory inside a training process, so that its steps stop paying page faults (Linux, glibc).

A training step on a CPU allocates and frees tens of megabytes of activations, gradients and library
workspaces. glibc's allocator gives large blocks back to the kernel as they are freed (those it maps
by themselves, and free space at the top of its heap, by thresholds it adjusts as it goes), and every
block taken again is mapped afresh: each of its pages costs a page fault and a zero-fill at its first
write. On the 2-core AMD EPYC an MLE step of 64 x 22 tokens took 400-2,000 such faults at d128 and
1,600-4,000 at d256, and one of the d256 step's element-wise products, writing into a fresh 11 MB
buffer, took 1.8 ms instead of 0.2-0.3.

:func:`keep_freed_memory` fixes both thresholds (``mallopt``): blocks under 32 MiB come from the heap,
and up to 256 MiB of free space at its top stays mapped. Blocks of 32 MiB and more are still mapped
and returned as before. The faults fall to a few dozen a step or none; over seven alternating pairs of
processes (``python benchmarks/memory.py``, ``benchmarks/results/memory_amd_epyc.md``) ScratchGAN steps
ran 1.065x faster at d128 and 1.055x at d256 and MLE steps 1.009x and 1.040x (medians; single pairs of
the small MLE step scatter from 0.89x to 1.25x as the machine's speed shifts between processes), at
1.005x the peak memory. Every number is computed bitwise as before: the allocator decides where
tensors live, not what is computed on them.

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

MMAP_THRESHOLD = 32 << 20  # bytes: blocks from here up are mapped by themselves (glibc's largest allowed on 64-bit)
TRIM_THRESHOLD = 256 << 20  # bytes of free space at the heap's top kept mapped

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)


def setting() -> str:
    """``TEXTGAN_MALLOC`` (keep when unset); a :class:`~textgan.config.ConfigError` naming the choices if it
    is none of them."""
    from .config import ConfigError

    choice = os.environ.get("TEXTGAN_MALLOC", "").strip().lower() or "keep"
    if choice not in CHOICES:
        raise ConfigError(f"TEXTGAN_MALLOC={os.environ['TEXTGAN_MALLOC']!r} is not a choice: set it to "
                          f"{', '.join(CHOICES)}, or unset it")
    return choice


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
        # makes more faults than neither (the trim threshold alone: ten times as many in a d256 MLE step)
        _kept = mallopt is not None and all([mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                             mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)])
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
