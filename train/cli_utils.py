"""Argument types, output-folder guards and atomic writes shared by the training entry points."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


class UsageError(ValueError):
    """Invalid command-line arguments; entry points print the message and return exit status 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def prepare_output_dir(path: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Check that ``path`` may be written: a missing or empty folder always; an existing non-empty one only with
    ``overwrite`` (its contents are removed) or ``resume`` (kept). A file in the way is an error."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder")
    non_empty = out.is_dir() and any(out.iterdir())
    if non_empty and not (overwrite or resume):
        raise UsageError(
            f"output folder {out} already exists and is not empty; pass --overwrite to replace it"
            + (" or --resume to continue the run in it" if resume is not None else "")
        )
    return out


def clear_output_dir(out: Path) -> None:
    """Remove the contents of ``out`` (the caller has checked ``--overwrite``)."""
    if out.is_dir():
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON to a temporary sibling and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def reset_accelerate_state() -> None:
    """Forget the process-wide Accelerate state so that a new ``Accelerator`` (or ``Trainer``) can be created in the
    same process with other settings (e.g. another mixed precision); a live process group is kept."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    if not PartialState().use_distributed:
        PartialState._reset_state()


__all__ = [
    "UsageError",
    "clear_output_dir",
    "fraction",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "prepare_output_dir",
    "reset_accelerate_state",
    "write_json_atomic",
    "write_text_atomic",
]
