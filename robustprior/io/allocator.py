"""Keep freed memory in the process (glibc ``mallopt``), for the command-line entry points.

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold (at most
32 MiB) with a fresh ``mmap`` and hands them back to the kernel on ``free``, and trims the heap top
after large frees, so a loop that allocates the same large tensors again and again (64 prompts x 1024
image tokens x 128 channels in the two-way transformer is exactly 32 MiB) pays page faults on every
pass: on this project's CPU machine a third of a SAM prior's CPU time went to the kernel. Here every
block comes from the heap (no ``mmap``), the heap grows in 512 MiB steps and is never trimmed, so
freed pages are reused; the cost is that the resident size stays at its peak.

Called by ``robustprior``'s command line, the Table-8 recipes, ``restoration.train`` and
``benchmarks/bench_priors.py``; a library import never changes the allocator. Python users may call
:func:`keep_freed_memory` themselves. Set ``ROBUSTPRIOR_DEFAULT_MALLOC=1`` to leave glibc's defaults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 16 * 1024 ** 3
TOP_PAD = 512 * 1024 * 1024

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's ``malloc`` as the module docstring says; returns whether it was applied (False off
    Linux/glibc or with ``ROBUSTPRIOR_DEFAULT_MALLOC=1``). Safe to call more than once."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("ROBUSTPRIOR_DEFAULT_MALLOC", "") not in ("", "0") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                    and mallopt(_M_TOP_PAD, TOP_PAD))
    return _applied
