"""Host memory: keep freed blocks in the C heap, so that a CPU training step does not fault in fresh pages.

glibc serves every allocation above its mmap threshold (adaptive, at most 32 MB) with a new ``mmap`` and hands
it back to the kernel on ``free``. MobileNetV2 at 128x64 allocates activations of up to 50 MB in a training step
of 64 crops and up to 200 MB in an extraction batch of 256, afresh each time, and the kernel zeroes each 4 KB
page on first touch: in the demo that was 27% of all CPU time, and 43% of a Stage III process's, all of it
system time (benchmarks/README.md, "Host memory").
Allocating from the heap alone, without trimming it, lets the next step reuse the same blocks.

Why a library call and not jemalloc or tcmalloc, which PyTorch's CPU guide suggests: those are system packages
that have to be ``LD_PRELOAD``-ed before the interpreter starts, which neither ``pip install`` nor a SLURM
script of ours can promise; ``mallopt`` is one call, made at start-up, wherever glibc is the allocator.

The cost: the process keeps its peak heap until it exits, and the peak is higher while freed blocks coalesce
(+16% in the benchmark). ``ITKM_HOST_MEMORY=release`` keeps glibc's defaults. Elsewhere (macOS, musl) this
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NO_TRIMMING = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"

OPT_OUT = "ITKM_HOST_MEMORY"


def keep_freed_memory() -> bool:
    """Make glibc serve large blocks from the heap and never trim it; True when that took effect."""
    if os.environ.get(OPT_OUT, "").lower() == "release" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NO_TRIMMING))
