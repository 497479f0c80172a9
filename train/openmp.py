"""Let idle OpenMP threads sleep, so CPU training and embedding keep their speed when other processes share the cores.

PyTorch's CPU kernels and oneDNN run their parallel regions on libgomp threads. With ``OMP_WAIT_POLICY`` unset,
a thread that finishes its share spins for a while before it sleeps. When another process holds one of the cores,
the thread that waits keeps its core busy spinning while the thread it waits for is descheduled, and every barrier
costs a scheduler time slice. The blocked attention path (``astromer_blocked`` with the oneDNN linear layers) runs
many small GEMMs, hence many barriers per step, and on the 2-core development machine with one competing CPU-bound
process it fell below plain sdpa fp32; with ``OMP_WAIT_POLICY=PASSIVE`` the waiting threads sleep at once and the
slow-down stays proportional to the cores taken (``train/benchmarks/contention.py`` measures both).

libgomp reads the policy once, when it is loaded, that is when ``torch`` is first imported; setting it later has no
effect. Importing :mod:`astromer_train` therefore calls :func:`prefer_passive_openmp_wait` before anything else, so
the training scripts (``python train/pretrain.py``, ``python -m astromer_train.pretrain``, ``accelerate launch``)
and the ``astromer`` command get it. A value the user set wins, ``ASTROMER_OMP_WAIT_POLICY=0`` turns it off, and
nothing is set when torch is already loaded (it could no longer take effect in this process).

This module must not import torch.
"""

from __future__ import annotations

import os
import sys

__all__ = ["OMP_WAIT_POLICY", "openmp_wait_policy", "prefer_passive_openmp_wait"]

OMP_WAIT_POLICY = "OMP_WAIT_POLICY"
_SWITCH = "ASTROMER_OMP_WAIT_POLICY"

_status = "OpenMP wait policy not examined"


def prefer_passive_openmp_wait() -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy, turned this off, or torch is already loaded.

    Returns what was done, for logs (also kept for :func:`openmp_wait_policy`).
    """
    global _status
    if OMP_WAIT_POLICY in os.environ:
        _status = f"{OMP_WAIT_POLICY}={os.environ[OMP_WAIT_POLICY]} (set by the user)"
    elif os.environ.get(_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        _status = f"{OMP_WAIT_POLICY} unset ({_SWITCH}=0): idle OpenMP threads spin before they sleep"
    elif "torch" in sys.modules:
        _status = (f"{OMP_WAIT_POLICY} unset: torch was imported before astromer_train; set "
                   f"{OMP_WAIT_POLICY}=PASSIVE before starting Python for the contention-proof setting")
    else:
        os.environ[OMP_WAIT_POLICY] = "PASSIVE"
        _status = f"{OMP_WAIT_POLICY}=PASSIVE: idle OpenMP threads sleep (keeps speed when the cores are shared)"
    return _status


def openmp_wait_policy() -> str:
    """The policy decision of this process, for logs."""
    return _status
