"""Shared test configuration.

The Triton interpreter must be switched on before any ``@triton.jit`` decorator runs, so it is set here,
before the test modules import ``astromer_kernels``. On a CUDA machine the real compiler is used instead.
"""

import os
from pathlib import Path

import pytest

# torch 2.13's fake-tensor dispatch cache crashed this test process (a dispatcher assert on a missing schema, or a
# segmentation fault) when the astromer::blocked_varlen_attn_fwd custom op was traced, depending on what earlier tests
# had done; the whole suite passes with the cache off. It must be set before torch is imported.
os.environ.setdefault("TORCH_FAKE_TENSOR_DISPATCH_CACHE", "0")

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
