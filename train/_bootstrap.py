"""Make ``astromer_train`` (this folder) and its sibling packages importable when a script in ``train/`` is run by
path (``python train/pretrain.py``, ``accelerate launch train/pretrain.py``) from a source checkout where the
distribution is not installed. Installed packages always win; this only fills in what is missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TRAIN_DIR = Path(__file__).resolve().parent
REPO_ROOT = TRAIN_DIR.parent


def _alias(name: str, folder: Path) -> None:
    if importlib.util.find_spec(name) is not None or not (folder / "__init__.py").is_file():
        return
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def ensure_importable() -> None:
    if importlib.util.find_spec("modeling_astromer") is None:
        sys.path.insert(1, str(REPO_ROOT))
    _alias("astromer_kernels", REPO_ROOT / "kernels")
    _alias("astromer_train", TRAIN_DIR)
