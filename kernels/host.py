"""The machine a run is on, and the fastest working choice among code paths there, measured once and cached.

:func:`host_info` names the CPU (model, the flags that decide the fast bf16 paths: ``amx_bf16``, ``avx512_bf16``),
the logical CPU count and the torch version. :func:`select_fastest` tries each candidate on a small input (one that
raises is never chosen), times the ones that work and keeps the fastest; the result is cached per host and torch
version in ``~/.cache/astromer/host_selection.json`` (``ASTROMER_CACHE`` moves it; ``ASTROMER_HOST_PROBE=0`` skips
the probe and takes the fallback). A forced choice is used as is, untried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["BF16_FLAGS", "HostInfo", "Selection", "host_info", "load_average", "probe_enabled", "select_fastest",
           "selection_cache"]

logger = logging.getLogger("astromer_kernels.host")

#: CPU flags that decide which bf16 paths are fast: AMX tiles (Intel Sapphire Rapids and later), AVX-512 bf16
#: dot products (AMD Zen 4, Intel Cooper Lake), plain AVX-512 and AVX2.
BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")
CACHE_FILE = "host_selection.json"
_PROBE_SWITCH = "ASTROMER_HOST_PROBE"


@dataclass(frozen=True)
class HostInfo:
    """What a measurement on this machine depends on."""

    cpu_model: str
    flags: tuple[str, ...]
    logical_cpus: int
    torch_version: str

    @property
    def key(self) -> str:
        """A short id of the CPU model, its flags, the CPU count and the torch version."""
        text = json.dumps([self.cpu_model, self.flags, self.logical_cpus, self.torch_version])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        """One line for logs and benchmark headers."""
        flags = ", ".join(f"{flag} {'yes' if flag in self.flags else 'no'}" for flag in ("amx_bf16", "avx512_bf16"))
        return f"{self.cpu_model} ({flags}), {self.logical_cpus} logical CPUs, torch {self.torch_version}"


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


@lru_cache(maxsize=1)
def host_info() -> HostInfo:
    """This machine's :class:`HostInfo` (``/proc/cpuinfo`` on Linux; the platform's processor name elsewhere)."""
    fields = _cpuinfo()
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    return HostInfo(model, tuple(flag for flag in BF16_FLAGS if flag in flags), os.cpu_count() or 1,
                    torch.__version__)


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def probe_enabled() -> bool:
    """False when ``ASTROMER_HOST_PROBE`` is ``0`` (e.g. for runs that must not depend on the machine's load)."""
    return os.environ.get(_PROBE_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def selection_cache() -> Path:
    """The cache file of :func:`select_fastest`: ``$ASTROMER_CACHE/host_selection.json``, by default under
    ``~/.cache/astromer``."""
    root = os.environ.get("ASTROMER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "astromer")
    return Path(root) / CACHE_FILE


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict) -> None:
    """Write ``data`` to a file beside ``path`` and rename it over ``path``, so readers never see half a file; a
    cache that cannot be written only costs the next run a probe."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(partial, path)
    except OSError as exc:
        logger.debug("host selection cache not written (%s)", exc)
        if partial.is_file():
            partial.unlink()


@dataclass
class Selection:
    """The choice of :func:`select_fastest`, why, and the median seconds of each candidate measured."""

    choice: str
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def describe(self, task: str) -> str:
        return f"{task}: {self.choice} ({self.reason})"


def _works(candidate: str, run: Callable[[str], object]) -> str | None:
    """None if ``run(candidate)`` returns, else the error in one line."""
    try:
        run(candidate)
    except Exception as exc:  # noqa: BLE001 - any failure rules the candidate out
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def select_fastest(
    task: str,
    candidates: Sequence[str],
    run: Callable[[str], object],
    fallback: str,
    forced: str | None = None,
    repeats: int = 2,
    use_cache: bool = True,
    keep_first_within: float = 0.0,
) -> Selection:
    """The fastest of ``candidates`` at ``run(candidate)`` on this host.

    Args:
        task: what is being chosen (e.g. ``"embed fp32 Astromer 2"``); the cache keeps one choice per task and host.
        candidates: names passed to ``run``; each is run once (warm-up, and a failure rules it out), then
            ``repeats`` times, timed.
        run: runs the task's small input with a candidate; an exception means the candidate cannot be used here.
        fallback: the choice when no candidate works or the probe is switched off (``ASTROMER_HOST_PROBE=0``);
            it is not run.
        forced: the user's explicit choice: returned as is.
        use_cache: read and write the choice in :func:`selection_cache` (keyed by :attr:`HostInfo.key` and
            ``task``). A cached choice is run once more before it is trusted.
        keep_first_within: the first candidate, when it works, is kept unless another is faster by more than this
            fraction of its time (for a first candidate with gains the probe does not measure).
    """
    if forced is not None:
        return Selection(forced, "requested")
    if not probe_enabled():
        return Selection(fallback, f"{_PROBE_SWITCH}=0")
    host = host_info()
    path = selection_cache()
    cached = _read_cache(path).get(host.key, {}).get(task) if use_cache else None
    if isinstance(cached, dict) and cached.get("choice") in candidates:
        error = _works(cached["choice"], run)
        if error is None:
            return Selection(cached["choice"], "measured earlier on this host", dict(cached.get("seconds", {})))
        logger.warning("%s: the cached choice %s fails now (%s); measuring again", task, cached["choice"], error)
    seconds: dict[str, float] = {}
    failures: dict[str, str] = {}
    for candidate in candidates:
        error = _works(candidate, run)
        if error is not None:
            failures[candidate] = error
            continue
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            error = _works(candidate, run)
            times.append(time.perf_counter() - start)
            if error is not None:
                failures[candidate] = error
                break
        else:
            seconds[candidate] = statistics.median(times)
    if not seconds:
        return Selection(fallback, "no candidate ran: " + "; ".join(f"{k}: {v}" for k, v in failures.items()),
                         failures=failures)
    choice = min(seconds, key=seconds.get)
    first = candidates[0]
    if first in seconds and seconds[first] <= (1 + keep_first_within) * seconds[choice]:
        choice = first
    timings = ", ".join(f"{name} {1e3 * value:.0f} ms" for name, value in seconds.items())
    reason = f"fastest here: {timings}" + (f"; failed: {', '.join(failures)}" if failures else "")
    if use_cache:
        data = _read_cache(path)
        entry = data.setdefault(host.key, {"host": host.describe()})
        entry[task] = {"choice": choice, "seconds": seconds, "measured": time.strftime("%Y-%m-%d %H:%M")}
        _write_cache(path, data)
    return Selection(choice, reason, seconds, failures)
