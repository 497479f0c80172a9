"""Shared test configuration.

The Triton interpreter must be switched on before any ``@triton.jit`` decorator runs, so it is set here,
before the test modules import ``astromer_kernels``. On a CUDA machine the real compiler is used instead.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tracing the astromer:: custom ops with torch.compile (torch 2.13) crashed the test process (a dispatcher assert on
# a missing schema, or a segmentation fault) depending on what earlier tests had done in that process, with and
# without the fake-tensor dispatch cache, and once in a fresh `astromer pretrain --compile` process. Tests marked
# ``compile_in_fresh_process`` therefore run, each in a new Python process, through pytest: a failed assertion there
# fails the test; a death by a signal is reported as an expected failure naming the known crash. The cache stays off,
# which made the crash rarer.
os.environ.setdefault("TORCH_FAKE_TENSOR_DISPATCH_CACHE", "0")
_INNER_RUN = "ASTROMER_TEST_IN_FRESH_PROCESS"

try:  # torch is a hard dependency, but keep collection errors readable if it is missing
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# load_pipeline's timed probe would make the tested attention path depend on the machine's load (and write to
# ~/.cache/astromer): the suite keeps the rule's choice; tests/test_host_selection.py switches the probe back on.
os.environ.setdefault("ASTROMER_HOST_PROBE", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("ASTROMER_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's ``../shared`` folder; tests that need it skip when it is absent (users' machines)."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder {SHARED_DIR} is not present")
    return SHARED_DIR


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    """TensorFlow parity references (``../shared/reference``)."""
    path = shared_dir / "reference"
    if not (path / "astromer2_tf_random.npz").is_file():
        pytest.skip(f"TensorFlow reference data not found in {path}")
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Run a ``compile_in_fresh_process`` test in a new pytest process (see the note at the top)."""
    if item.get_closest_marker("compile_in_fresh_process") is None or os.environ.get(_INNER_RUN) == "1":
        return
    env = {**os.environ, _INNER_RUN: "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", item.nodeid],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
    )
    if proc.returncode < 0:  # killed by a signal: the known crash, reported as such (an assertion still fails)
        pytest.xfail(f"{item.nodeid}: the fresh process died of signal {-proc.returncode}, the known intermittent "
                     "crash of torch 2.13 while tracing the astromer:: custom ops (README, Training: known issue)")
    if proc.returncode != 0:
        pytest.fail(f"{item.nodeid} failed in a fresh process (exit {proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}", pytrace=False)
    item.runtest = lambda: None  # passed in the fresh process
