"""The Hub repository layout: weights, configs and self-contained remote code in one folder.

A folder written by [`write_hub_folder`] loads in two ways:

- with this package installed (`import modeling_astromer` first): the locally registered classes are used;
- without it: `AutoModel.from_pretrained(repo, trust_remote_code=True)` imports the `.py` files stored next to the
  weights, which only import each other (relative imports), `torch`, `numpy` and `transformers`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transformers import PreTrainedModel

import modeling_astromer
from hub_datasets.atomic import staging_folder
from modeling_astromer import AstromerFeatureExtractor

PACKAGE_DIR = Path(modeling_astromer.__file__).resolve().parent

# Files copied verbatim into the Hub folder: each must only import its siblings, torch, numpy and transformers.
REMOTE_CODE_FILES = (
    "configuration_astromer.py",
    "modeling_astromer.py",
    "feature_extraction_astromer.py",
    "errors.py",
)

MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_astromer.AstromerConfig",
    "AutoModel": "modeling_astromer.AstromerModel",
    "AutoModelForPreTraining": "modeling_astromer.AstromerForMaskedReconstruction",
    "AutoModelForSequenceClassification": "modeling_astromer.AstromerForSequenceClassification",
}
FEATURE_EXTRACTOR_AUTO_MAP = {"AutoFeatureExtractor": "feature_extraction_astromer.AstromerFeatureExtractor"}


def _update_json(path: Path, updates: dict) -> None:
    content = json.loads(path.read_text())
    content.update(updates)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def write_hub_folder(
    model: PreTrainedModel,
    folder: str | os.PathLike,
    feature_extractor: AstromerFeatureExtractor | None = None,
    extra_code_files: dict[str, Path] | None = None,
    config_updates: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` (weights + config), its feature extractor and the remote code into `folder`, atomically.

    Args:
        model: any Astromer model (base or head).
        folder: destination; must not exist (or be empty) unless `overwrite=True`.
        feature_extractor: defaults to `AstromerFeatureExtractor(window_size=model.config.window_size)`.
        extra_code_files: more self-contained `.py` files to ship (e.g. the pipeline), `{name_in_repo: source}`.
        config_updates: extra top-level keys for `config.json` (e.g. `custom_pipelines`).
        overwrite: replace an existing non-empty folder (only after the new one is complete).

    Returns:
        The destination path.
    """
    destination = Path(folder)
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise FileExistsError(f"{destination} exists and is not empty; pass overwrite=True to replace it")
    with staging_folder(destination) as staging:
        model.save_pretrained(staging)
        if feature_extractor is None:
            feature_extractor = AstromerFeatureExtractor(window_size=model.config.window_size)
        feature_extractor.save_pretrained(staging)
        for name in REMOTE_CODE_FILES:
            shutil.copyfile(PACKAGE_DIR / name, staging / name)
        for name, source in (extra_code_files or {}).items():
            shutil.copyfile(source, staging / name)
        _update_json(staging / "config.json", {"auto_map": dict(MODEL_AUTO_MAP), **(config_updates or {})})
        _update_json(staging / "preprocessor_config.json", {"auto_map": dict(FEATURE_EXTRACTOR_AUTO_MAP)})
    return destination
