"""Figures that show what Astromer sees, as PNG files (matplotlib, headless ``Agg`` backend).

- :func:`plot_reconstruction`: for a few light curves, the observed window, the points hidden from the model
  (with their error bars) and the model's reconstruction of them (:func:`masked_reconstruction_examples`
  computes these with the official probing procedure).
- :func:`plot_learning_curves`: every logged metric against the step, from a training run's JSONL tracker log.
- :func:`plot_embedding_map`: a 2-D PCA map of per-curve embeddings, coloured by class.

Every function writes the PNG atomically (temporary file, then rename) with exactly ``figsize * dpi`` pixels and
returns the output path; nothing is overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.decomposition import PCA

from hub_datasets.atomic import atomic_file
from modeling_astromer import AstromerMaskingCollator

__all__ = [
    "ReconstructionExample",
    "masked_reconstruction_examples",
    "pca_2d",
    "plot_embedding_map",
    "plot_learning_curves",
    "plot_reconstruction",
    "read_tracker_log",
]

DEFAULT_DPI = 100


# ------------------------------------------------------------------------------------------------------- saving
def _check_target(path: str | os.PathLike, overwrite: bool) -> Path:
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"{target}: plots are written as PNG, the file name must end in .png")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory")
    return target


def _save_png(figure: Figure, target: Path, dpi: int) -> Path:
    """Write `figure` to `target` atomically."""
    try:
        with atomic_file(target, suffix=".png") as temporary:
            # no bbox_inches="tight": the pixel size stays figsize * dpi
            figure.savefig(temporary, dpi=dpi, format="png")
    finally:
        plt.close(figure)
    return target


# ----------------------------------------------------------------------------------------------- reconstruction
@dataclass
class ReconstructionExample:
    """One window prepared for the reconstruction plot; all arrays `(n_observed,)`, in the curve's own units.

    Attributes:
        time: observation times (days, the original time scale).
        magnitude: observed magnitudes.
        error: magnitude uncertainties.
        hidden: True where the point was hidden from the model (a "masked" probed position).
        reconstruction: the model's magnitude at every position (meaningful where ``hidden``).
        title: panel title (e.g. the curve id).
    """

    time: np.ndarray
    magnitude: np.ndarray
    error: np.ndarray
    hidden: np.ndarray
    reconstruction: np.ndarray
    title: str = ""

    @property
    def rmse(self) -> float:
        """Root-mean-square error of the reconstruction over the hidden points (magnitudes)."""
        residual = self.reconstruction[self.hidden] - self.magnitude[self.hidden]
        return float(np.sqrt(np.mean(residual**2))) if residual.size else float("nan")


def masked_reconstruction_examples(
    model: Any,
    feature_extractor: Any,
    light_curves: Sequence[Any],
    titles: Sequence[str] | None = None,
    hidden_fraction: float = 0.5,
    seed: int = 0,
) -> list[ReconstructionExample]:
    """Hide a random ``hidden_fraction`` of the first window of each curve and let `model` reconstruct it.

    Args:
        model: an ``AstromerForMaskedReconstruction`` (anything returning ``.reconstruction`` `(B, W)`).
        feature_extractor: an ``AstromerFeatureExtractor``.
        light_curves: curves in any form the feature extractor accepts.
        titles: one title per curve (defaults to ``"light curve i"``).
        hidden_fraction: fraction of the observed points hidden (all probed points are "masked": none are kept
            visible or replaced by random values, so every probed point is a genuine prediction).
        seed: seed of the probing draw.

    Returns:
        One :class:`ReconstructionExample` per curve, in input order.
    """

    if not hasattr(model, "reconstruction_head"):
        raise TypeError(
            f"the reconstruction plot needs a model with a reconstruction head (AstromerForMaskedReconstruction), "
            f"got {type(model).__name__}"
        )
    curves = list(light_curves)
    titles = [f"light curve {i}" for i in range(len(curves))] if titles is None else list(titles)
    if len(titles) != len(curves):
        raise ValueError(f"got {len(titles)} titles for {len(curves)} light curves")
    features = feature_extractor(curves, ids=titles)
    first_window = np.flatnonzero(np.r_[True, np.diff(features["light_curve_index"]) != 0])  # (n_curves,)
    collator = AstromerMaskingCollator(
        probed_fraction=hidden_fraction,
        same_fraction=0.0,
        random_fraction=0.0,
        window_size=feature_extractor.window_size,
        seed=seed,
    )
    batch = collator(
        {key: features[key][first_window] for key in ("magnitudes", "times", "errors", "attention_mask")}
    )
    # A model without a MASK token (the released Astromer 1 and 2) would still read a hidden point's own magnitude
    # at its position, and the window's centring would carry their mean: the input is centred on the visible points
    # and shows that centre (0) at the hidden ones, so every hidden point is predicted from the others only.
    observed = batch["attention_mask"].bool()
    hidden = batch["mask_positions"].bool()
    visible = observed & ~hidden
    visible_mean = (batch["magnitudes"] * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True).clamp(min=1)
    inputs = (batch["magnitudes"] - visible_mean).masked_fill(hidden | ~observed, 0.0)
    model.eval()
    with torch.no_grad():
        output = model(
            magnitudes=inputs,
            times=batch["times"],
            attention_mask=batch["attention_mask"],
            mask_positions=batch["mask_positions"],
        )
    reconstruction = (output.reconstruction.float() + visible_mean).numpy()
    examples = []
    for row, window in enumerate(first_window):
        real = batch["attention_mask"][row].numpy().astype(bool)
        time_offset = float(features["time_offset"][window])
        magnitude_offset = float(features["magnitude_offset"][window])
        examples.append(
            ReconstructionExample(
                time=batch["times"][row].numpy()[real].astype(np.float64) + time_offset,
                magnitude=batch["labels"][row].numpy()[real].astype(np.float64) + magnitude_offset,
                error=batch["errors"][row].numpy()[real].astype(np.float64),
                hidden=batch["mask_positions"][row].numpy()[real].astype(bool),
                reconstruction=reconstruction[row][real].astype(np.float64) + magnitude_offset,
                title=str(titles[row]),
            )
        )
    return examples


def plot_reconstruction(
    examples: Sequence[ReconstructionExample],
    path: str | os.PathLike,
    figsize: tuple[float, float] | None = None,
    dpi: int = DEFAULT_DPI,
    overwrite: bool = False,
) -> Path:
    """One panel per example: visible points, hidden points with error bars, and the reconstruction there.

    Magnitudes grow downwards (astronomical convention). The default size is 10 x 2.6 inches per panel.
    """
    if not examples:
        raise ValueError("no light curves to plot")
    target = _check_target(path, overwrite)
    figsize = figsize or (10.0, 2.6 * len(examples))
    figure, axes = plt.subplots(len(examples), 1, figsize=figsize, squeeze=False, layout="constrained")
    for axis, example in zip(axes[:, 0], examples):
        visible = ~example.hidden
        axis.plot(example.time[visible], example.magnitude[visible], ".", color="0.55", ms=3, label="visible")
        axis.errorbar(
            example.time[example.hidden],
            example.magnitude[example.hidden],
            yerr=example.error[example.hidden],
            fmt="o",
            ms=3,
            color="tab:blue",
            elinewidth=0.8,
            label="hidden (observed ± err)",
        )
        axis.plot(
            example.time[example.hidden],
            example.reconstruction[example.hidden],
            "x",
            color="tab:red",
            ms=4,
            label="reconstruction",
        )
        axis.invert_yaxis()
        axis.set_ylabel("magnitude")
        axis.set_title(f"{example.title}  (RMSE on hidden points {example.rmse:.3f} mag)", fontsize=9)
    axes[-1, 0].set_xlabel("time [d]")
    axes[0, 0].legend(loc="upper right", fontsize=7, ncols=3)
    return _save_png(figure, target, dpi)


# ---------------------------------------------------------------------------------------------- learning curves
_STEP_KEYS = ("step", "global_step", "epoch")


def read_tracker_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL tracker log: one JSON object per line (blank lines ignored).

    Raises:
        ValueError: naming the file and line for a line that is not a JSON object.
    """
    source = Path(path)
    records = []
    with source.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{source}, line {number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise ValueError(
                    f"{source}, line {number}: expected a JSON object, got {type(record).__name__}"
                )
            records.append(record)
    if not records:
        raise ValueError(f"{source}: the tracker log is empty")
    return records


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def _metric_series(
    records: Iterable[Mapping[str, Any]],
) -> tuple[str, dict[str, tuple[list[float], list[float]]]]:
    """``(x_name, {metric: (x values, y values)})`` for every finite numeric metric of the log."""
    # the tracker writes {"event": "config", ...} once and {"event": "log", "step": s, ...} per logging call
    flat_records = [_flatten(r) for r in records if r.get("event", "log") == "log"]
    x_name = next((k for k in _STEP_KEYS if any(k in r for r in flat_records)), None)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, record in enumerate(flat_records):
        x = record.get(x_name, index) if x_name else index
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            continue
        for key, value in record.items():
            if key in _STEP_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(float(x))
            ys.append(float(value))
    return x_name or "record", series


def _metric_group(name: str) -> str:
    """Panel of a metric: its name without the split prefix/suffix (``train/loss`` and ``eval_loss`` share one)."""
    base = name.split("/")[-1]
    for split in ("train_", "eval_", "val_", "validation_", "test_"):
        base = base.removeprefix(split)
    return base


_IGNORED_METRICS = {"time", "wall_time", "timestamp", "elapsed", "elapsed_s", "seconds", "n", "n_windows"}


def _shown_by_default(name: str) -> bool:
    """Hide bookkeeping: timestamps, counts, running bests and end-of-run summaries (``final/...``)."""
    base = name.split("/")[-1]
    return base not in _IGNORED_METRICS and not base.startswith("best_") and not name.startswith("final/")


def plot_learning_curves(
    log: str | os.PathLike | Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    metrics: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = DEFAULT_DPI,
    overwrite: bool = False,
    panels: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Plot every logged metric against the step (or epoch), one panel per metric family.

    Args:
        log: a JSONL tracker log path, or its records (dicts; nested dicts are flattened as ``a/b``).
        path: output PNG.
        metrics: only these metric names (default: every numeric metric except timestamps, counts, running
            bests ``best_*`` and ``final/*`` summaries).
        panels: explicit ``{panel title: [metric names]}`` (e.g. a training loss and the validation metric
            that measures the same quantity in one panel); metrics absent from the log are skipped.
        figsize: defaults to 5 inches wide per panel (up to 3 per row) x 3.4 inches per row.
    """
    records = read_tracker_log(log) if isinstance(log, (str, os.PathLike)) else list(log)
    x_name, series = _metric_series(records)
    if metrics is not None:
        unknown = sorted(set(metrics) - set(series))
        if unknown:
            raise ValueError(f"metrics {unknown} are not in the log; it has {sorted(series)}")
        series = {k: series[k] for k in metrics}
    elif panels is None:
        series = {k: v for k, v in series.items() if _shown_by_default(k)}
    groups: dict[str, list[str]] = {}
    if panels is not None:
        for title, names in panels.items():
            present = [n for n in names if n in series]
            if present:
                groups[title] = present
    else:
        for name in series:
            groups.setdefault(_metric_group(name), []).append(name)
    if not groups:
        raise ValueError("the tracker log has no numeric metric to plot")
    target = _check_target(path, overwrite)
    n_columns = min(3, len(groups))
    n_rows = math.ceil(len(groups) / n_columns)
    figsize = figsize or (5.0 * n_columns, 3.4 * n_rows)
    figure, axes = plt.subplots(n_rows, n_columns, figsize=figsize, squeeze=False, layout="constrained")
    for axis, (group, names) in zip(axes.flat, groups.items()):
        for name in names:
            xs, ys = series[name]
            axis.plot(xs, ys, "-", marker="." if len(xs) < 30 else None, label=name)
        axis.set_title(group, fontsize=10)
        axis.set_xlabel(x_name)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(groups) :]:
        axis.set_visible(False)
    return _save_png(figure, target, dpi)


# ------------------------------------------------------------------------------------------------ embedding map
def pca_2d(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project `(N, D)` embeddings on their first two principal components.

    Returns:
        ``(coordinates (N, 2), explained variance ratio (2,))``, computed in float64.
    """

    data = np.asarray(embeddings, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"need an (N >= 2, D) array of embeddings, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("embeddings contain NaN or infinite values")
    n_components = min(2, data.shape[0], data.shape[1])
    pca = PCA(n_components=n_components, svd_solver="full")
    coordinates = pca.fit_transform(data)
    ratio = pca.explained_variance_ratio_
    if n_components < 2:
        coordinates = np.pad(coordinates, ((0, 0), (0, 2 - n_components)))
        ratio = np.pad(ratio, (0, 2 - n_components))
    return coordinates, ratio


def plot_embedding_map(
    embeddings: np.ndarray,
    labels: Sequence[Any] | None,
    path: str | os.PathLike,
    title: str = "Astromer embeddings (PCA)",
    figsize: tuple[float, float] = (7.0, 6.0),
    dpi: int = DEFAULT_DPI,
    overwrite: bool = False,
) -> Path:
    """Scatter the 2-D PCA projection of `(N, D)` embeddings, one colour per class (``labels``, length N;
    ``None`` draws every point in one colour)."""
    data = np.asarray(embeddings)
    if labels is not None and len(labels) != data.shape[0]:
        raise ValueError(f"got {len(labels)} labels for {data.shape[0]} embeddings")
    target = _check_target(path, overwrite)
    coordinates, ratio = pca_2d(data)
    figure, axis = plt.subplots(figsize=figsize, layout="constrained")
    if labels is None:
        axis.scatter(coordinates[:, 0], coordinates[:, 1], s=14, alpha=0.8)
    else:
        label_array = np.asarray([str(label) for label in labels])
        classes = sorted(set(label_array.tolist()))
        colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for k, name in enumerate(classes):
            chosen = label_array == name
            axis.scatter(
                coordinates[chosen, 0],
                coordinates[chosen, 1],
                s=14,
                alpha=0.8,
                color=colours(k % colours.N),
                label=f"{name} ({int(chosen.sum())})",
            )
        axis.legend(fontsize=8, markerscale=1.5, loc="best")
    axis.set_xlabel(f"PC 1 ({100 * ratio[0]:.1f} % of variance)")
    axis.set_ylabel(f"PC 2 ({100 * ratio[1]:.1f} % of variance)")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    return _save_png(figure, target, dpi)
