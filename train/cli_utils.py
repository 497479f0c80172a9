"""Argument types, output-folder guards and atomic writes shared by the training entry points."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from modeling_astromer.errors import InputError


class UsageError(InputError):
    """Invalid command-line arguments; entry points print the message and return exit status 2."""


def _number_type(convert, accept, expected: str):
    """An argparse ``type`` that converts with ``convert`` and keeps only values for which ``accept`` is true."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = expected  # argparse names the type in its messages
    return parse


positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number_type(float, lambda v: 0 < v < float("inf"), "a positive finite number")
fraction = _number_type(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
open_fraction = _number_type(float, lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1")


def configure_process() -> None:
    """For a training entry point: warnings from libraries, progress messages from the training tools, and a CPU
    allocator that keeps freed activations for the next step (:mod:`astromer_kernels.allocator`)."""
    from astromer_kernels.allocator import keep_freed_memory

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("astromer_train")
    logger.setLevel(logging.INFO)
    logger.debug(keep_freed_memory())


def usage_error(parser: argparse.ArgumentParser, exc: Exception) -> int:
    """Print ``exc`` the way argparse prints its own errors; returns the exit status 2."""
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {exc}", file=sys.stderr)
    return 2


def prepare_output_dir(path: str | Path, overwrite: bool, resume: bool | None = None) -> Path:
    """Check that ``path`` may be written: a missing or empty folder always; an existing non-empty one only with
    ``overwrite`` (its contents are removed) or ``resume`` (kept; ``None`` for commands without ``--resume``, which
    then are not suggested it). A file in the way is an error."""
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


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary sibling and rename it into place."""
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


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON to a temporary sibling and rename it into place."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


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
    "configure_process",
    "fraction",
    "non_negative_int",
    "open_fraction",
    "positive_float",
    "positive_int",
    "prepare_output_dir",
    "reset_accelerate_state",
    "usage_error",
    "write_json_atomic",
    "write_text_atomic",
]
