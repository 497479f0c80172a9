"""Keep freed tensor memory in the process on Linux/glibc, so CPU training and embedding do not page-fault every step.

glibc serves allocations above ``M_MMAP_THRESHOLD`` (128 KiB at start, raised on the fly up to 32 MiB) with ``mmap``
and gives them back to the kernel on ``free``. An Astromer batch allocates and frees dozens of 5-30 MB activations per
layer, so by default every step maps fresh pages and pays a page fault per 4 KiB. Raising the mmap threshold and the
trim threshold lets ``free`` keep that memory for the next step. On the 2-core development machine,
``train/benchmarks/throughput.py`` with and without ``--default-allocator`` gave 1.15-2.1x more training windows/s for
eager and sdpa attention; PyTorch's CPU performance guide gives the same advice (or jemalloc/tcmalloc via
``LD_PRELOAD``).

Only entry points call :func:`keep_freed_memory` (the CLI, the training scripts, the benchmarks); importing the
library never changes the process allocator. It does nothing when the user already chose: ``MALLOC_MMAP_THRESHOLD_``
or ``MALLOC_TRIM_THRESHOLD_`` set, jemalloc/tcmalloc in ``LD_PRELOAD``, or ``ASTROMER_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

_ENV_SWITCH = "ASTROMER_MALLOC_TUNING"


def _user_chose_allocator() -> str | None:
    """Why to leave the allocator alone, or None."""
    if os.environ.get(_ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{_ENV_SWITCH}=0"
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if name in os.environ:
            return f"{name} is set"
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload:
        return "a different allocator is preloaded"
    return None


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - musl and others lack it; their mallopt differs
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds for this process; returns what was done, for logs."""
    reason = _user_chose_allocator()
    if reason:
        return f"allocator unchanged ({reason})"
    libc = _glibc()
    if libc is None:
        return "allocator unchanged (not glibc)"
    done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    done = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and done
    if not done:
        return "allocator unchanged (mallopt refused)"
    return f"glibc malloc keeps freed memory (mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB, trim threshold " \
           f"{TRIM_THRESHOLD_BYTES >> 20} MiB)"


def release_freed_memory() -> bool:
    """Give the memory glibc keeps for reuse back to the system (``malloc_trim(0)``); returns whether it ran.

    Long streaming jobs call it between chunks: with packed batches every step has other activation sizes, and
    glibc's heap then keeps the freed pieces of all of them, so a bf16 embedding process grew with the number of
    curves embedded (about 1 GB per 100,000 short light curves) instead of staying flat.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)  # only glibc's own heap: harmless when another allocator serves most allocations
    return True


#: oneDNN primitives kept for reuse in a long streaming job (the library's default is 1,024).
STREAMING_PRIMITIVE_CACHE_CAPACITY = 128


def bound_primitive_cache(capacity: int = STREAMING_PRIMITIVE_CACHE_CAPACITY) -> str:
    """Cap oneDNN's primitive cache for this process, unless the user set ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``.

    oneDNN keeps one primitive, with its buffers, per GEMM shape it has run; a streaming job whose batches have
    ever new shapes (packed windows, bf16 on a CPU) grew by hundreds of MB with it. oneDNN reads the variable when it
    creates its first primitive, so call this before the first model runs. Returns what was done, for logs.
    """
    value = os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))
    return f"oneDNN primitive cache capacity {value}"
