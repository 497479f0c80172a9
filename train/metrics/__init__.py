"""The ``evaluate`` metric modules of this package, loaded by path (offline): :func:`load_metric`."""

from __future__ import annotations

import functools
from pathlib import Path

import evaluate

#: The folder of each metric module shipped with the package.
METRICS_DIR = Path(__file__).resolve().parent
CLASSIFICATION_METRIC = METRICS_DIR / "light_curve_classification"


@functools.lru_cache(maxsize=None)
def load_metric(path: str = str(CLASSIFICATION_METRIC)) -> evaluate.EvaluationModule:
    """``evaluate.load`` of a metric folder of this package (default: the classification metrics); loaded once per
    process."""
    return evaluate.load(path)


__all__ = ["CLASSIFICATION_METRIC", "METRICS_DIR", "load_metric"]
