"""A local, network-free experiment tracker for Accelerate: one JSON object per line.

``JSONLTracker`` subclasses ``accelerate.tracking.GeneralTracker``; pass an instance in
``Accelerator(log_with=[JSONLTracker(run_name, logging_dir)])``. The file ``<logging_dir>/<run_name>.jsonl`` gets a
``{"event": "config", ...}`` line from ``init_trackers`` and ``{"event": "log", "step": s, ...}`` lines from
``accelerator.log``; lines are appended and flushed immediately, so a killed run keeps everything logged so far and a
resumed run continues the same file.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, on_main_process


def _plain(value: Any) -> Any:
    """JSON-safe scalars: tensors and numpy numbers become Python numbers, non-finite floats become strings."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JSONLTracker(GeneralTracker):
    """Appends config and metric records to ``<logging_dir>/<run_name>.jsonl`` (main process only)."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str | Path) -> None:
        # no @on_main_process here: it would create a non-distributed PartialState before the Accelerator exists
        super().__init__()
        self.run_name = run_name
        self.path = Path(logging_dir) / f"{run_name}.jsonl"

    @property
    def tracker(self) -> Path:
        return self.path

    @on_main_process
    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(_plain(record), sort_keys=True) + "\n")
            handle.flush()

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        self._write({"event": "config", "time": time.time(), **values})

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self._write({"event": "log", "time": time.time(), "step": step, **values})


def build_trackers(report_to: str, run_name: str, logging_dir: str | Path) -> list[GeneralTracker | str]:
    """The ``log_with`` list of an ``Accelerator`` for ``report_to``: ``"jsonl"``, ``"tensorboard"``, ``"all"``,
    ``"none"``, or ``"auto"`` (JSONL, plus TensorBoard when it is installed)."""
    trackers: list[GeneralTracker | str] = []
    if report_to in ("auto", "jsonl", "all"):
        trackers.append(JSONLTracker(run_name, logging_dir))
    if report_to in ("tensorboard", "all") or (report_to == "auto" and importlib.util.find_spec("tensorboard")):
        trackers.append("tensorboard")
    return trackers


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL log (a truncated last line from a killed run is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


__all__ = ["JSONLTracker", "build_trackers", "read_jsonl"]
