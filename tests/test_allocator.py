"""The CPU allocator setting used by the entry points (modeling_astromer.allocator), checked in fresh processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from astromer_kernels import allocator
from astromer_kernels.allocator import _glibc

PROBE = textwrap.dedent(
    """
    import ctypes
    import importlib.util
    import sys

    # load the module alone: importing the package would pull in torch and transformers
    spec = importlib.util.spec_from_file_location("allocator", sys.argv[1])
    allocator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(allocator)
    _glibc, keep_freed_memory = allocator._glibc, allocator.keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = _glibc()
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    print(keep_freed_memory())
    before = libc.mallinfo2().hblks
    block = libc.malloc(16 * 1024 * 1024)  # the size of one bf16 activation of a 256-window batch
    print("MMAPPED", libc.mallinfo2().hblks - before)
    libc.free(ctypes.c_void_p(block))
    """
)


def run_probe(**env_changes):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ASTROMER_MALLOC_TUNING"}
    env.update(env_changes)
    proc = subprocess.run([sys.executable, "-c", PROBE, allocator.__file__], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    message, mmapped = proc.stdout.strip().splitlines()
    return message, int(mmapped.split()[1])


needs_glibc = pytest.mark.skipif(_glibc() is None or not hasattr(_glibc(), "mallinfo2"),
                                 reason="needs glibc >= 2.33 (mallinfo2)")


@needs_glibc
def test_large_blocks_stay_in_the_heap_after_tuning():
    message, mmapped = run_probe()
    assert message.startswith("glibc malloc keeps freed memory"), message
    assert mmapped == 0


@needs_glibc
@pytest.mark.parametrize("env, reason", [
    ({"ASTROMER_MALLOC_TUNING": "0"}, "ASTROMER_MALLOC_TUNING=0"),
    ({"MALLOC_TRIM_THRESHOLD_": "131072"}, "MALLOC_TRIM_THRESHOLD_ is set"),
])
def test_users_choice_is_left_alone(env, reason):
    message, mmapped = run_probe(**env)
    assert message == f"allocator unchanged ({reason})"
    assert mmapped == 1  # glibc's default: a 16 MiB block is its own mapping
