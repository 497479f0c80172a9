"""Light-curve sources, cleaned curve storage, deterministic window datasets, samplers and collators.

Everything the training scripts feed to a model goes through here:

1. :func:`load_light_curves` opens any ``datasets`` source (a ``save_to_disk`` folder, parquet files or a folder of
   them, a Hub/``load_dataset`` name available offline, or a synthetic survey) as a :class:`datasets.DatasetDict`.
2. :class:`CleanedCurves` applies the official cleaning once (the feature extractor's ``clean``: ``0 < err < 1``,
   finite values, sorted times, at least ``min_observations`` points; shorter curves are dropped and counted) and
   keeps the curves as flat float64 arrays.
3. :class:`WindowDataset` cuts 200-observation windows, centred in float64 per window, with the feature
   extractor's own functions (``window_starts``, ``window_rows``, ``centre_windows``): ``"random"`` (one window
   per curve per epoch, pretraining) or ``"sequential"`` (every official window; fine-tuning, classification,
   evaluation). Items are addressed by an integer *key*
   ``epoch * len(dataset) + index`` so that the window drawn for a curve depends only on ``(seed, epoch, index)``:
   the same in every process layout, with any number of workers, and after a resume.
4. :class:`EpochShuffleSampler` yields those keys in a permutation seeded by ``(seed, epoch)``.
5. :class:`DeterministicMaskingCollator` applies the official probing (``AstromerMaskingCollator``) with a generator
   seeded by ``(seed, keys of the batch)``, so the masks of a batch do not depend on global RNG state or on which
   DataLoader worker built it, and pads or packs the result; :class:`PaddingCollator` pads classification windows
   (``pad_windows``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from hub_datasets.synthetic import generate_survey
from modeling_astromer import AstromerFeatureExtractor, AstromerMaskingCollator
from modeling_astromer.errors import InputError, LightCurveValidationError
from modeling_astromer.feature_extraction_astromer import (
    centre_windows,
    pad_windows,
    padding_mask,
    window_rows,
    window_starts,
)
from modeling_astromer.packing import AstromerPackingCollator

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("time", "mag", "err")
SAMPLING_MODES = ("random", "sequential")


class DataSourceError(InputError):
    """A dataset source that cannot be used for training (names the source, the split or the column)."""


# ------------------------------------------------------------------------------------------------------ sources
def load_light_curves(
    source: str | None = None,
    *,
    synthetic: int | None = None,
    survey: str = "macho",
    seed: int = 0,
    class_proportions: str = "published",
) -> datasets.DatasetDict:
    """Open a light-curve dataset as a ``DatasetDict`` (a single table becomes the split ``"train"``).

    Args:
        source: a ``Dataset``/``DatasetDict`` folder written by ``save_to_disk``; a ``.parquet`` file or a folder of
            parquet files (``<split>.parquet`` or ``<split>-*.parquet`` name the splits, otherwise ``train``); or
            any other ``load_dataset`` path or name (resolved offline from the local cache when the Hub is not
            reachable).
        synthetic: instead of ``source``, generate this many synthetic curves with
            ``hub_datasets.synthetic.generate_survey(synthetic, survey, seed)``.
        survey: ``"macho"`` or ``"atlas"`` for ``synthetic``.
        seed: seed for ``synthetic``.
        class_proportions: ``"published"`` (the survey's class mix) or ``"uniform"`` for ``synthetic``.

    Every split must have ``time``, ``mag`` and ``err`` list columns (``label`` when classifying).
    """
    if (source is None) == (synthetic is None):
        raise DataSourceError("give exactly one data source: a dataset path/name or a synthetic curve count")
    if synthetic is not None:
        if synthetic < 1:
            raise DataSourceError(f"the synthetic curve count must be positive, got {synthetic}")
        return datasets.DatasetDict({"train": generate_survey(
            int(synthetic), survey=survey, seed=seed, class_proportions=class_proportions)})

    path = Path(source)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_file() and path.suffix == ".parquet":
        loaded = datasets.load_dataset("parquet", data_files={"train": str(path)})
    elif path.is_dir() and any(path.glob("*.parquet")) and not (path / "README.md").is_file():
        loaded = datasets.load_dataset("parquet", data_files=_parquet_splits(path))
    else:
        try:
            loaded = datasets.load_dataset(str(source))
        except Exception as exc:
            raise DataSourceError(
                f"cannot read a light-curve dataset from {source!r} (not a save_to_disk folder, a parquet file or "
                f"folder, nor a dataset that load_dataset can open offline): {exc}"
            ) from exc
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    for split, table in loaded.items():
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise DataSourceError(
                f"split {split!r} of {source!r} lacks column(s) {missing}; light-curve tables need "
                f"{list(REQUIRED_COLUMNS)} (has {table.column_names})"
            )
    return loaded


def _parquet_splits(folder: Path) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for file in sorted(folder.glob("*.parquet")):
        stem = file.stem.split("-")[0]
        split = stem if stem in ("train", "validation", "val", "test") else "train"
        files.setdefault("validation" if split == "val" else split, []).append(str(file))
    return files


def split_train_validation(
    splits: datasets.DatasetDict,
    train_split: str = "train",
    validation_split: str | None = "validation",
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The training table and a validation table: ``validation_split`` when present, else a seeded
    ``validation_fraction`` of the training curves (by light curve, so no curve is in both)."""
    if train_split not in splits:
        raise DataSourceError(f"no split {train_split!r} in the dataset (splits: {sorted(splits)})")
    train = splits[train_split]
    if validation_split and validation_split in splits:
        return train, splits[validation_split]
    if not 0.0 < validation_fraction < 1.0:
        raise DataSourceError(
            f"the dataset has no {validation_split!r} split and validation_fraction={validation_fraction} is not in "
            "(0, 1), so there is nothing to validate on"
        )
    n_val = max(1, int(round(validation_fraction * len(train))))
    if n_val >= len(train):
        raise DataSourceError(f"only {len(train)} training curves: too few to hold out {n_val} for validation")
    order = np.random.default_rng([seed, 7]).permutation(len(train))
    return train.select(np.sort(order[n_val:])), train.select(np.sort(order[:n_val]))


# ------------------------------------------------------------------------------------------------ cleaned curves
@dataclass
class CleanedCurves:
    """Cleaned light curves stored back to back.

    Attributes:
        time, mag, err: `(total_points,)` float64 concatenation of every kept curve.
        offsets: `(n_curves + 1,)` int64 start of each curve in the flat arrays.
        labels: `(n_curves,)` int64 class labels, or ``None`` for unlabelled data.
        source_index: `(n_curves,)` int64 row of each kept curve in the input table.
        n_dropped: number of input curves dropped for having too few valid points.
    """

    time: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray | None
    source_index: np.ndarray
    n_dropped: int = 0

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    @classmethod
    def from_table(
        cls,
        table: datasets.Dataset,
        feature_extractor: AstromerFeatureExtractor | None = None,
        with_labels: bool = False,
        name: str = "dataset",
    ) -> CleanedCurves:
        """Clean every row of ``table`` with the feature extractor's official filter.

        Curves left with fewer than ``min_observations`` valid points are dropped (the official pipeline drops
        them too) and counted in ``n_dropped``; any other invalid curve raises a ``LightCurveValidationError`` that
        names it.
        """
        fe = feature_extractor or AstromerFeatureExtractor()
        columns = list(REQUIRED_COLUMNS) + (["label"] if with_labels else []) + (["id"] if "id" in table.column_names else [])
        if with_labels and "label" not in table.column_names:
            raise DataSourceError(f"{name} has no 'label' column (columns: {table.column_names})")
        rows = table.select_columns(columns).with_format("numpy")
        times, mags, errs, labels, kept = [], [], [], [], []
        n_dropped = 0
        for i in range(len(rows)):
            row = rows[i]
            curve_id = row.get("id", i)
            try:
                cleaned = fe.clean({"time": row["time"], "mag": row["mag"], "err": row["err"]}, curve_id=curve_id)
            except LightCurveValidationError as exc:
                if exc.field == "observations":
                    n_dropped += 1
                    continue
                raise LightCurveValidationError(
                    f"{name}, row {i}: {exc}", curve_index=i, curve_id=curve_id, field=exc.field
                ) from exc
            times.append(cleaned.time)
            mags.append(cleaned.mag)
            errs.append(cleaned.err)
            kept.append(i)
            if with_labels:
                labels.append(int(row["label"]))
        if not kept:
            raise DataSourceError(
                f"{name}: none of its {len(rows)} light curves has {fe.min_observations} valid observations"
            )
        if n_dropped:
            logger.warning("%s: dropped %d of %d light curves with < %d valid observations", name, n_dropped,
                           len(rows), fe.min_observations)
        lengths = np.array([t.size for t in times], dtype=np.int64)
        return cls(
            time=np.concatenate(times),
            mag=np.concatenate(mags),
            err=np.concatenate(errs),
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            labels=np.asarray(labels, dtype=np.int64) if with_labels else None,
            source_index=np.asarray(kept, dtype=np.int64),
            n_dropped=n_dropped,
        )


# ------------------------------------------------------------------------------------------------------ windows
class WindowDataset(torch.utils.data.Dataset):
    """Centred Astromer windows of cleaned curves, addressed by keys ``epoch * len(self) + index``.

    ``"random"``: ``len`` = number of curves; key → one contiguous window of curve ``index`` with the pivot drawn
    from ``default_rng([seed, epoch, index])`` (U{0..L−W}; the whole curve when L ≤ W).
    ``"sequential"``: ``len`` = number of official windows (pivots 0, W, …, clamped); the epoch is ignored.

    An item is a dict of unpadded 1-D float32 arrays ``magnitudes``, ``times`` (both minus their float64 window
    mean), ``errors`` (original), the int ``key``, the ``light_curve`` index and, for labelled curves, ``label``.
    """

    def __init__(self, curves: CleanedCurves, sampling: str, window_size: int = 200, seed: int = 0) -> None:
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        self.curves = curves
        self.sampling = sampling
        self.window_size = int(window_size)
        self.seed = int(seed)
        if sampling == "sequential":
            self.window_curve, self.window_start = window_starts(curves.lengths, self.window_size, "sequential")
        else:
            self.window_curve = np.arange(len(curves), dtype=np.int64)
            self.window_start = None

    def __len__(self) -> int:
        return int(self.window_curve.size)

    def _start(self, epoch: int, index: int) -> int:
        if self.window_start is not None:
            return int(self.window_start[index])
        lengths = self.curves.lengths[index : index + 1]
        _, start = window_starts(lengths, self.window_size, "random", np.random.default_rng([self.seed, epoch, index]))
        return int(start[0])

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = divmod(int(key), len(self))
        curve = int(self.window_curve[index])
        rows, lengths = window_rows(self.curves.offsets, [curve], [self._start(epoch, index)], self.window_size)
        magnitudes, _ = centre_windows(self.curves.mag[rows], lengths)
        times, _ = centre_windows(self.curves.time[rows], lengths)
        item: dict[str, Any] = {
            "magnitudes": magnitudes,
            "times": times,
            "errors": self.curves.err[rows].astype(np.float32),
            "key": int(key),
            "light_curve": curve,
        }
        if self.curves.labels is not None:
            item["label"] = int(self.curves.labels[curve])
        return item


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """Yields the keys ``epoch * n + i`` of one epoch, in a permutation seeded by ``(seed, epoch)`` (or in order;
    ``fixed_epoch`` pins the epoch, for validation).

    ``set_epoch`` is called by Accelerate's data loaders at the start of every pass (and by the training loop on
    resume), so the order and the random windows of epoch ``e`` are the same in every run.
    """

    def __init__(self, n_items: int, seed: int = 0, shuffle: bool = True, fixed_epoch: int | None = None) -> None:
        self.n_items = int(n_items)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.fixed_epoch = fixed_epoch
        self.epoch = 0 if fixed_epoch is None else int(fixed_epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (ignored with ``fixed_epoch``: validation sees the same windows every time)."""
        if self.fixed_epoch is None:
            self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_items

    def __iter__(self) -> Iterator[int]:
        order = (
            np.random.default_rng([self.seed, self.epoch, 1]).permutation(self.n_items)
            if self.shuffle
            else np.arange(self.n_items)
        )
        base = self.epoch * self.n_items
        return iter((base + order).tolist())


# --------------------------------------------------------------------------------------------------- collators
class DeterministicMaskingCollator:
    """Pretraining collator: the official masking with a generator seeded by ``(seed, keys of the batch)``.

    Args:
        probed_fraction, random_fraction, same_fraction, window_size: as ``AstromerMaskingCollator``.
        seed: base seed of every batch's generator.
        packed: return the packed batch (for the packed model path) instead of the padded one.
        token_budgets: with ``packed``, ``(max_tokens, max_sequences)`` pairs: each batch is padded to the smallest
            budget its windows fit (``AstromerPackingCollator(pad_to_budget=True)``), so batches take one of a few
            static shapes (for a compiled model).

    Items are :class:`WindowDataset` items (unpadded windows). The probing works on their real observations;
    the result is then padded, giving the ``AstromerMaskingCollator`` batch (``magnitudes, labels, times, errors,
    attention_mask, mask_positions, loss_mask, loss_weights``, all `(B, window_size)`), or, with ``packed=True``,
    packed without padding it first: the ``AstromerPackingCollator`` batch (``(1, T)`` token fields,
    ``cu_seqlens``, ``max_seqlen = window_size``, ``sequence_index``), equal to packing the padded batch.
    """

    def __init__(self, probed_fraction: float, random_fraction: float, same_fraction: float,
                 window_size: int = 200, seed: int = 0, packed: bool = False,
                 token_budgets: Sequence[tuple[int, int]] = ()) -> None:
        self.masking = AstromerMaskingCollator(probed_fraction, random_fraction, same_fraction, window_size)
        budgeted = [AstromerPackingCollator(max_tokens=tokens, max_seqlen=window_size, pad_to_budget=True,
                                            max_sequences=sequences) for tokens, sequences in sorted(token_budgets)]
        self.packings = (budgeted or [AstromerPackingCollator(max_seqlen=window_size)]) if packed else []
        self.seed = int(seed)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        keys = [int(item["key"]) for item in items]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, *keys]))
        windows = self.masking.ragged_windows([{k: item[k] for k in ("magnitudes", "times", "errors")}
                                               for item in items])
        probed = self.masking.probe(windows, rng)
        if not self.packings:
            return self.masking.pad(probed)
        tokens = int(np.sum(windows.lengths))
        packing = next((p for p in self.packings if p.max_tokens is None or tokens <= p.max_tokens), self.packings[-1])
        return packing.pack(self.masking.token_fields(probed), windows.lengths)


class PaddingCollator:
    """Classification collator: right-pads ragged windows to ``window_size``.

    Returns ``magnitudes``, ``times`` float32 `(B, W)`, ``attention_mask`` int64 `(B, W)` and, when the items carry
    a ``label``, ``labels`` int64 `(B,)`. Items may be dicts of 1-D arrays or lists (rows of a ``datasets`` table).
    """

    def __init__(self, window_size: int = 200) -> None:
        self.window_size = int(window_size)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        W = self.window_size
        mags, times = [], []
        for b, item in enumerate(items):
            m = np.asarray(item["magnitudes"], np.float32).reshape(-1)
            t = np.asarray(item["times"], np.float32).reshape(-1)
            if m.size != t.size or m.size == 0 or m.size > W:
                raise ValueError(
                    f"window {b}: magnitudes ({m.size}) and times ({t.size}) must have the same length in [1, {W}]"
                )
            mags.append(m)
            times.append(t)
        lengths = np.array([m.size for m in mags], dtype=np.int64)
        batch = {
            "magnitudes": torch.from_numpy(pad_windows(np.concatenate(mags), lengths, W)),
            "times": torch.from_numpy(pad_windows(np.concatenate(times), lengths, W)),
            "attention_mask": torch.from_numpy(padding_mask(lengths, W).astype(np.int64)),
        }
        if "label" in items[0]:
            batch["labels"] = torch.tensor([int(item["label"]) for item in items], dtype=torch.long)
        return batch


def windows_table(windows: WindowDataset) -> datasets.Dataset:
    """Materialise a sequential :class:`WindowDataset` as a ``datasets.Dataset`` (one row per window) with ragged
    ``magnitudes``/``times``/``errors`` columns, ``label`` and ``light_curve``: the input of ``Trainer``."""
    if windows.sampling != "sequential":
        raise ValueError("only sequential windows are fixed; random windows change every epoch")
    rows = [windows[i] for i in range(len(windows))]
    columns: dict[str, list] = {
        "magnitudes": [r["magnitudes"] for r in rows],
        "times": [r["times"] for r in rows],
        "errors": [r["errors"] for r in rows],
        "light_curve": [r["light_curve"] for r in rows],
    }
    features = {
        "magnitudes": datasets.List(datasets.Value("float32")),
        "times": datasets.List(datasets.Value("float32")),
        "errors": datasets.List(datasets.Value("float32")),
        "light_curve": datasets.Value("int64"),
    }
    if rows and "label" in rows[0]:
        columns["label"] = [r["label"] for r in rows]
        features["label"] = datasets.Value("int64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


__all__ = [
    "CleanedCurves",
    "DataSourceError",
    "DeterministicMaskingCollator",
    "EpochShuffleSampler",
    "PaddingCollator",
    "WindowDataset",
    "load_light_curves",
    "split_train_validation",
    "windows_table",
]
