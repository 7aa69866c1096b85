"""CPU training: keep the memory a step frees for the next step instead of handing it back to the OS.

glibc's malloc serves every block above its mmap threshold (128 KiB, raised as blocks are freed, at most 32 MiB on
64-bit) with a fresh ``mmap`` and gives it back with ``munmap`` when it is freed, and trims the top of its heap back
to the OS once more than its trim threshold is free there (mallopt(3)). A training step allocates and frees the same
large tensors every step (at 64^3 and batch 2 each stage-1 attention matrix of the tiny encoder is 50 MiB), so every
step the kernel maps those pages again and zeroes them: on the 2-core CPU a DINO step took 2.6 s instead of 1.3 s and
the bare encoder step 0.54 s instead of 0.31 s (benchmarks/pretrain_step.py, ``--malloc system`` against ``keep``;
documentation/pretraining.md). :func:`keep_freed_memory` switches both off through ``mallopt``: ``M_MMAP_MAX = 0``
(every block of the main arena comes from the heap; threads' arenas and a heap that cannot grow still map) and
``M_TRIM_THRESHOLD = -1`` (the heap is never trimmed), which is what the environment variables ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=<large>`` do at start-up. No value changes. The cost is memory: the process keeps its peak heap
until it exits, with some fragments in it (a DINO loop at tiny 64^3: 4.1 GiB resident instead of 2.6 GiB, stable after
the first 20 steps).

``NNSSL_CPU_MALLOC=system`` leaves malloc as it is. Where the C library has no ``mallopt`` (not glibc) nothing changes.
The settings are the process's: DataLoader workers started by fork (Linux's default start method up to Python 3.13)
inherit them; workers started by spawn or forkserver keep glibc's defaults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

#: mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: The environment variable that opts out (value ``system``); ``keep`` (the default) applies the settings.
ENV = "NNSSL_CPU_MALLOC"

_applied = False


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory in the process (see the module docstring); call it once a process
    knows that it trains on the CPU (DataLoader workers forked later inherit it). Returns whether this call applied
    the settings or found them applied: False with ``NNSSL_CPU_MALLOC=system`` (which does not undo an earlier call)
    or without glibc. A value of the variable other than ``keep`` or
    ``system`` is a ValueError naming both."""
    global _applied
    choice = os.environ.get(ENV, "keep").strip().lower()
    if choice not in ("keep", "system"):
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: use 'keep' (the default: freed memory stays in the process) or "
                         "'system' (glibc's own malloc settings)")
    if choice == "system":
        return False
    if _applied:
        return True
    try:
        # the process's own symbols first: an allocator preloaded in glibc's place answers for itself
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None) or ctypes.CDLL(ctypes.util.find_library("c") or
                                                                              "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. macOS, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; -1 for M_TRIM_THRESHOLD means "never trim" (mallopt(3))
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
    return _applied


__all__ = ["ENV", "M_MMAP_MAX", "M_TRIM_THRESHOLD", "keep_freed_memory"]
