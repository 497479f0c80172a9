"""Bridge from a light-curve ``datasets.Dataset`` to model inputs: 200-observation windows and padded batches.

Two routes, both through :class:`modeling_astromer.feature_extraction_astromer.AstromerFeatureExtractor` (the
single implementation of cleaning, windowing, centring and padding):

* :func:`windows_dataset` — precompute the windows once with ``Dataset.map(batched=True)``: one output row per
  window (fixed-length lists of ``window_size``), carrying the curve's ``id``/``label``. Then
  ``windows.with_format("torch")`` yields **stacked** tensors because every row has the same length, so a
  ``torch.utils.data.DataLoader`` (default collate) or :func:`collate_windows` gives padded batches directly.
* :class:`LightCurveCollator` — window on the fly in the ``DataLoader``/``Trainer`` (needed for
  ``sampling="random"``, a new window every epoch): rows in, :class:`BatchFeature` of torch tensors out, with
  ``labels`` per window.

**The formatting trap** (datasets 5): ``with_format("torch")`` returns a *list of tensors* for a ragged slice but a
*stacked tensor* when the lengths happen to be equal; ``"numpy"`` returns object arrays. Both routes avoid it by
reading the columns as Arrow (flat values + offsets → zero-copy numpy views per curve) or by accepting tensors,
arrays or lists per row, never relying on the batch container's type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

_CURVE_COLUMNS = ("time", "mag", "err")


def _list_column_views(column: pa.ChunkedArray | pa.Array, dtype: type) -> list[np.ndarray]:
    """Per-row numpy views (no per-element Python work) of an Arrow list column; shape (L_i,) each."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        first = int(np.flatnonzero(np.asarray(array.is_null()))[0])
        raise ValueError(f"row {first}: light-curve column is null")
    offsets = np.asarray(array.offsets, dtype=np.int64)
    offsets = offsets - offsets[0]  # flatten() starts at the slice's first value
    values = np.asarray(array.flatten().to_numpy(zero_copy_only=False), dtype=dtype)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(array))]


def curves_from_arrow(table: pa.Table) -> list[dict[str, np.ndarray]]:
    """``[{"time", "mag", "err"}]`` float64 views of an Arrow batch of light curves (one dict per row)."""
    missing = [c for c in _CURVE_COLUMNS if c not in table.column_names]
    if missing:
        raise KeyError(f"light-curve columns {missing} missing (have {table.column_names})")
    views = {c: _list_column_views(table.column(c), np.float64) for c in _CURVE_COLUMNS}
    return [{c: views[c][i] for c in _CURVE_COLUMNS} for i in range(table.num_rows)]


def window_features(
    window_size: int, extra: Mapping[str, datasets.features.FeatureType]
) -> datasets.Features:
    """Features of :func:`windows_dataset` output (fixed-length lists so torch formatting stacks them)."""
    fixed = {"length": window_size}
    features = {
        "magnitudes": datasets.List(datasets.Value("float32"), **fixed),
        "times": datasets.List(datasets.Value("float32"), **fixed),
        "errors": datasets.List(datasets.Value("float32"), **fixed),
        "attention_mask": datasets.List(datasets.Value("int8"), **fixed),
        "light_curve_index": datasets.Value("int64"),
        "window_start": datasets.Value("int64"),
        "time_offset": datasets.Value("float64"),
        "magnitude_offset": datasets.Value("float64"),
    }
    features.update(extra)
    return datasets.Features(features)


def windows_dataset(
    dataset: datasets.Dataset,
    feature_extractor: Any,
    sampling: str = "sequential",
    seed: int | None = None,
    batch_size: int = 512,
    num_proc: int | None = None,
    keep_columns: Sequence[str] = ("id", "label"),
) -> datasets.Dataset:
    """One row per window of every light curve of ``dataset`` (``Dataset.map``, batched, Arrow input).

    Output columns: ``magnitudes``, ``times``, ``errors`` (float32 lists of ``window_size``), ``attention_mask``
    (int8 list), ``light_curve_index`` (row of ``dataset``), ``window_start``, ``time_offset``,
    ``magnitude_offset``, plus ``keep_columns`` present in ``dataset`` copied from each window's curve.
    ``sampling="random"`` draws one window per curve, seeded by ``(seed, first row of the map batch)``.
    """
    keep = [c for c in keep_columns if c in dataset.column_names]
    features = window_features(feature_extractor.window_size, {c: dataset.features[c] for c in keep})

    def to_windows(batch: pa.Table, indices: list[int]) -> pa.Table:
        curves = curves_from_arrow(batch)
        batch_ids = batch.column("id").to_pylist() if "id" in batch.column_names else list(indices)
        rng = None if seed is None else np.random.default_rng([seed, indices[0] if indices else 0])
        out = feature_extractor(curves, return_tensors="np", sampling=sampling, seed=rng, ids=batch_ids)
        local = np.asarray(out["light_curve_index"], dtype=np.int64)
        width = feature_extractor.window_size
        n_windows = len(local)

        def fixed(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
            return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), arrow_type), width)

        columns = {
            "magnitudes": fixed(np.asarray(out["magnitudes"]), pa.float32()),
            "times": fixed(np.asarray(out["times"]), pa.float32()),
            "errors": fixed(np.asarray(out["errors"]), pa.float32()),
            "attention_mask": fixed(np.asarray(out["attention_mask"]).astype(np.int8), pa.int8()),
            "light_curve_index": pa.array(np.asarray(indices, dtype=np.int64)[local] if n_windows else local),
            "window_start": pa.array(np.asarray(out["window_start"], dtype=np.int64)),
            "time_offset": pa.array(np.asarray(out["time_offset"], dtype=np.float64)),
            "magnitude_offset": pa.array(np.asarray(out["magnitude_offset"], dtype=np.float64)),
        }
        for name in keep:
            columns[name] = batch.column(name).take(pa.array(local))
        return pa.table(columns)

    return (
        dataset.with_format("arrow")
        .map(
            to_windows,
            batched=True,
            batch_size=batch_size,
            with_indices=True,
            num_proc=num_proc,
            remove_columns=dataset.column_names,
            features=features,
            desc="windowing light curves",
        )
        .with_format(None)
    )


def _as_numpy(value: Any, dtype: type) -> np.ndarray:
    """A row value (list, numpy array, torch tensor) as a numpy array of ``dtype``."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def collate_windows(rows: Sequence[Mapping[str, Any]], label_column: str = "label") -> dict[str, Any]:
    """Stack rows of :func:`windows_dataset` into torch tensors; rows may hold lists, arrays or tensors.

    Returns ``magnitudes``, ``times``, ``errors`` float32 ``(B, W)``, ``attention_mask`` int64 ``(B, W)``,
    ``light_curve_index`` int64 ``(B,)`` and, when present, ``labels`` int64 ``(B,)``.
    """
    import torch

    if not rows:
        raise ValueError("collate_windows got an empty batch")
    out: dict[str, Any] = {}
    for name, dtype in (("magnitudes", np.float32), ("times", np.float32), ("errors", np.float32)):
        out[name] = torch.from_numpy(np.stack([_as_numpy(r[name], dtype) for r in rows]))
    out["attention_mask"] = torch.from_numpy(
        np.stack([_as_numpy(r["attention_mask"], np.int64) for r in rows])
    )
    out["light_curve_index"] = torch.as_tensor([int(r["light_curve_index"]) for r in rows], dtype=torch.int64)
    if label_column in rows[0]:
        out["labels"] = torch.as_tensor([int(r[label_column]) for r in rows], dtype=torch.int64)
    return out


class LightCurveCollator:
    """Collator from raw light-curve rows to a padded window batch (for ``DataLoader`` or ``Trainer``).

    ``rows``: mappings with ``time``, ``mag``, ``err`` (lists, numpy arrays or torch tensors — any ``with_format``)
    and optionally ``label``/``id``. Returns the feature extractor's ``BatchFeature`` (torch tensors) plus ``labels``
    ``(n_windows,)`` = the label of each window's curve. Use ``TrainingArguments(remove_unused_columns=False)`` so
    that Trainer keeps the raw columns.
    """

    def __init__(
        self,
        feature_extractor: Any,
        sampling: str = "sequential",
        seed: int | None = None,
        label_column: str = "label",
    ) -> None:
        self.feature_extractor = feature_extractor
        self.sampling = sampling
        self.label_column = label_column
        self._rng = np.random.default_rng(seed)

    def __call__(self, rows: Iterable[Mapping[str, Any]]) -> Any:
        import torch

        rows = list(rows)
        if not rows:
            raise ValueError("LightCurveCollator got an empty batch")
        curves = [{c: _as_numpy(r[c], np.float64) for c in _CURVE_COLUMNS} for r in rows]
        ids = [r.get("id", i) for i, r in enumerate(rows)]
        batch = self.feature_extractor(
            curves, return_tensors="pt", sampling=self.sampling, seed=self._rng, ids=ids
        )
        if self.label_column in rows[0]:
            labels = torch.as_tensor([int(r[self.label_column]) for r in rows], dtype=torch.int64)
            batch["labels"] = labels[batch["light_curve_index"]]
        return batch
