"""Value rules, output-folder guards and process set-up shared by the training entry points.

A :class:`ValueRule` is both the ``type`` of a command-line flag (it parses text) and the check of the matching
configuration field (it validates a Python value), so a flag and a field accept exactly the same values.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astromer_kernels.allocator import keep_freed_memory
from modeling_astromer.errors import AstromerError, InputError


class UsageError(InputError):
    """Invalid arguments or configuration; entry points print the message and return exit status 2."""


def flag(field_name: str) -> str:
    """The command-line flag of a configuration field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field_name.replace("_", "-")


@dataclass(frozen=True)
class ValueRule:
    """The values one number may take.

    Calling the rule parses a command-line string (an argparse ``type``); :meth:`check` validates a configuration
    field's value. ``expected`` describes the accepted values in messages ("a positive integer").
    """

    kind: type
    accept: Callable[[Any], bool]
    expected: str

    def __call__(self, text: str) -> Any:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text!r}") from None
        if not self.accept(value):
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text}")
        return value

    def check(self, field_name: str, value: Any) -> None:
        """Raise ``UsageError`` naming the field's flag unless ``value`` is accepted."""
        kinds = (int, float) if self.kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, kinds) or not self.accept(value):
            raise UsageError(f"{flag(field_name)}: expected {self.expected}, got {value!r}")


positive_int = ValueRule(int, lambda v: v >= 1, "a positive integer")
non_negative_int = ValueRule(int, lambda v: v >= 0, "an integer >= 0")
any_int = ValueRule(int, lambda v: True, "an integer")
positive_float = ValueRule(float, lambda v: 0 < v < float("inf"), "a positive finite number")
finite_float = ValueRule(float, lambda v: abs(v) < float("inf"), "a finite number")
fraction = ValueRule(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
open_fraction = ValueRule(float, lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1")


def check_fields(config: Any, rules: dict[str, ValueRule], choices: dict[str, tuple]) -> None:
    """Check the fields of a configuration dataclass: numbers against ``rules`` (``None`` passes: it means
    "default"), strings against ``choices``."""
    for name, rule in rules.items():
        value = getattr(config, name)
        if value is not None:
            rule.check(name, value)
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value not in allowed:
            shown = ", ".join(str(a) for a in allowed if a is not None)
            raise UsageError(f"{flag(name)}: expected one of {shown}, got {value!r}")


def configure_process() -> None:
    """For a training entry point: warnings from libraries, progress messages from the training tools, and a CPU
    allocator that keeps freed activations for the next step (:mod:`astromer_kernels.allocator`)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("astromer_train")
    logger.setLevel(logging.INFO)
    logger.debug(keep_freed_memory())


def usage_error(parser: argparse.ArgumentParser, exc: Exception) -> int:
    """Print ``exc`` the way argparse prints its own errors; returns the exit status 2."""
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {exc}", file=sys.stderr)
    return 2


def entry_point_parser(
    prog: str, description: str, **parser_options: Any
) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup, argparse._MutuallyExclusiveGroup]:
    """The parser of a training entry point, with its ``data`` group and the mutually exclusive data sources in it
    (each entry point adds its own sources and options); ``parser_options`` go to ``ArgumentParser``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **parser_options
    )
    data = parser.add_argument_group("data")
    return parser, data, data.add_mutually_exclusive_group()


def add_output_arguments(parser: argparse.ArgumentParser, output_help: str | None = None) -> argparse._ArgumentGroup:
    """The ``output`` group every training entry point has: ``--output-dir`` and ``--overwrite``."""
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", required=True, help=output_help)
    out.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")
    return out


def run_entry_point(
    parser: argparse.ArgumentParser,
    config_type: Callable[..., Any],
    run: Callable[[Any], Any],
    argv: Sequence[str] | None,
    parse: Callable[[argparse.ArgumentParser, Sequence[str] | None], argparse.Namespace] | None = None,
) -> tuple[int, Any, Any]:
    """Parse ``argv`` (with ``parse`` when given, else ``parser.parse_args``) into ``config_type`` (every flag is the
    field of the same name) and ``run`` it.

    Returns ``(0, config, result)``, or ``(2, None, None)`` after printing a one-line error for any
    ``AstromerError`` (bad flags, data sources, folds, light curves), as argparse prints its own.
    """
    args = parser.parse_args(argv) if parse is None else parse(parser, argv)
    configure_process()
    try:
        config = config_type(**vars(args))
        return 0, config, run(config)
    except AstromerError as exc:
        return usage_error(parser, exc), None, None


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


__all__ = [
    "UsageError",
    "ValueRule",
    "add_output_arguments",
    "any_int",
    "check_fields",
    "clear_output_dir",
    "configure_process",
    "entry_point_parser",
    "finite_float",
    "flag",
    "fraction",
    "non_negative_int",
    "open_fraction",
    "positive_float",
    "positive_int",
    "prepare_output_dir",
    "run_entry_point",
    "usage_error",
]
