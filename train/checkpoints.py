"""The files of a pretraining run: resumable checkpoints, the best model and the final model, each written whole
or not at all (through :mod:`hub_datasets.atomic`).

Layout of a run folder: ``checkpoints/step-NNNNNNNN/`` (``Accelerator.save_state``: weights, optimiser, scheduler,
RNG states of every process and the loop position), ``best_model/`` (``save_pretrained`` of the best-validation
weights with ``best_metrics.json``) and, at the end, the final model (``config.json``, ``model.safetensors``,
``preprocessor_config.json``) at the top of the folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import FeatureExtractionMixin
from transformers.utils import FEATURE_EXTRACTOR_NAME

from hub_datasets.atomic import atomic_file, staging_folder, write_json_atomic

CHECKPOINT_PREFIX = "step-"
BEST_MODEL = "best_model"
FINAL_MODEL_FILES = ("config.json", "model.safetensors")


def checkpoint_folder(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:08d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoints/step-*`` folder of a run (temporary folders start with a dot)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = sorted(
        (int(p.name[len(CHECKPOINT_PREFIX):]), p)
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()
    )
    return steps[-1][1] if steps else None


@contextmanager
def _shared_staging_folder(accelerator: Accelerator, destination: Path) -> Iterator[Path]:
    """A staging folder for ``destination`` that every process writes into; the main process creates it and
    publishes it when the block ends (after all processes are done)."""
    if accelerator.is_main_process:
        with staging_folder(destination) as staging:
            broadcast_object_list([str(staging)])
            yield staging
            accelerator.wait_for_everyone()
    else:
        shared = broadcast_object_list([None])[0]
        yield Path(shared)
        accelerator.wait_for_everyone()


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> None:
    """``save_state`` of every process into ``checkpoints/step-NNNNNNNN``, then keep only the newest ``keep``
    checkpoints (collective)."""
    final = checkpoint_folder(output_dir, step)
    with _shared_staging_folder(accelerator, final) as staging:
        accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        complete = sorted(p for p in final.parent.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_model(accelerator: Accelerator, model, folder: Path, extra_files: dict[str, Any] | None = None) -> None:
    """``save_pretrained`` of the unwrapped model into ``folder``, with ``extra_files`` as JSON (collective: the
    state dict is gathered from every process under FSDP/DeepSpeed)."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        with staging_folder(folder) as staging:
            accelerator.unwrap_model(model).save_pretrained(staging, state_dict=state_dict)
            for name, payload in (extra_files or {}).items():
                write_json_atomic(staging / name, payload)
    accelerator.wait_for_everyone()


def publish_final_model(output_dir: Path, feature_extractor: FeatureExtractionMixin) -> None:
    """Copy the best model's weights and configuration to the top of the run folder and write the feature
    extractor next to them (main process only)."""
    best = output_dir / BEST_MODEL
    for name in FINAL_MODEL_FILES:
        with atomic_file(output_dir / name) as temporary:
            shutil.copyfile(best / name, temporary)
    with atomic_file(output_dir / FEATURE_EXTRACTOR_NAME) as temporary:
        feature_extractor.to_json_file(temporary)


__all__ = [
    "BEST_MODEL",
    "CHECKPOINT_PREFIX",
    "checkpoint_folder",
    "latest_checkpoint",
    "publish_final_model",
    "save_checkpoint",
    "save_model",
]
