"""The few-shot fold protocol of the Astromer papers (the official ``create_datasets.py``), as functions.

For each fold ``k`` (an independent random draw, seeded by ``(seed, k)``):

1. **test** = ``test_per_class`` curves of every class, without replacement; shared by all SPC values of the fold
   (as upstream, where the test set is drawn once per fold).
2. For each ``spc`` (seeded by ``(seed, k, spc)``), from the remaining pool:
   **validation** = ``int(val_fraction · spc)`` curves *per class* (stratified), without replacement;
   **train** = ``spc`` curves per class from what is left, **without replacement**.

**Small classes.** Test and train sizes are the protocol and are never reduced: a class with fewer than
``test_per_class + spc`` curves is a :class:`FoldError` that names it. Validation takes what such a class has left:
``min(int(val_fraction · spc), n_class - test_per_class - spc)`` curves, possibly none (e.g. RRc, 104 curves, at
40 test and 60 train per class keeps 4 for validation instead of 12). ``val_fraction=0`` makes no validation split.

**Labels** are integers (``-1`` = unlabelled, ignored) or a ``ClassLabel``; a text label column (a user's own
table) is encoded to a ``ClassLabel`` with the class names in sorted order first.

Deviations from the official A2 ``create_datasets.py`` (each reproducible with an option):

* upstream draws train with ``replace=True`` (duplicates possible; the A1 notebook drew without). We default to
  without replacement so that ``spc`` is the number of distinct light curves; ``train_with_replacement=True``
  gives the upstream behaviour (only then can a class have fewer than ``spc`` curves left).
* upstream draws ``int(0.2·spc)`` validation curves from all classes *together* (at spc=20 that is 4 curves,
  some classes absent). We stratify; ``stratified_validation=False`` gives the upstream draw.

The samplers use ``numpy.random.Generator`` (not pandas' ``sample``), so the splits are deterministic per seed but
not the same objects as upstream's. Train/validation/test never share a row of the input dataset.

Command line: ``astromer folds`` (:mod:`astromer_app.dataset_commands`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

from hub_datasets.atomic import staging_folder
from modeling_astromer.errors import AstromerError


class FoldError(AstromerError, ValueError):
    """The fold protocol cannot be applied: invalid sizes, no labels, or a class too small for them (named)."""


def _label_names(dataset: datasets.Dataset) -> list[str]:
    feature = dataset.features.get("label")
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    labels = np.unique(np.asarray(dataset["label"]))
    return [str(v) for v in labels]


def _per_class_indices(labels: np.ndarray) -> dict[int, np.ndarray]:
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def encode_text_labels(dataset: datasets.Dataset) -> datasets.Dataset:
    """``dataset`` with a text ``label`` column encoded as a ``ClassLabel`` (names in sorted order); other label
    columns are returned unchanged."""
    feature = dataset.features.get("label")
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return dataset.class_encode_column("label")
    return dataset


def small_class_validation_size(n_val: int, pool: int, spc: int, with_replacement: bool = False) -> int:
    """Validation curves of one class: ``n_val``, or what the class has left after its ``spc`` training curves
    when that is fewer (``pool`` = the class's curves outside the test set)."""
    if with_replacement:
        return min(n_val, max(pool - 1, 0))
    return max(0, min(n_val, pool - spc))


def make_fewshot_splits(
    dataset: datasets.Dataset,
    n_folds: int = 3,
    test_per_class: int = 100,
    samples_per_class: Sequence[int] = (20, 100, 500),
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    train_with_replacement: bool = False,
    stratified_validation: bool = True,
) -> dict[tuple[int, int], datasets.DatasetDict]:
    """Few-shot splits ``{(fold, spc): DatasetDict(train, validation, test)}`` (protocol in the module docstring).

    ``dataset`` needs a ``label`` column: integers (a ``ClassLabel`` keeps its names) or text (encoded, see the
    module docstring); labels ``-1`` (unlabelled) are ignored. Every class must have at least
    ``test_per_class + spc`` curves (``spc`` → 1 with replacement), else :class:`FoldError` names the class; a class
    short of validation curves gets fewer (the small-class rule). Same arguments ⇒ the same rows in the same
    order.
    """
    if n_folds < 1 or test_per_class < 1:
        raise FoldError(f"n_folds and test_per_class must be >= 1, got {n_folds}, {test_per_class}")
    if not 0.0 <= val_fraction < 1.0:
        raise FoldError(f"val_fraction must be in [0, 1), got {val_fraction}")
    spcs = [int(s) for s in samples_per_class]
    if not spcs or min(spcs) < 1:
        raise FoldError(f"samples_per_class must be positive integers, got {samples_per_class}")
    if "label" not in dataset.column_names:
        raise FoldError(f"dataset has no 'label' column (columns: {dataset.column_names})")
    dataset = encode_text_labels(dataset)
    labels = np.asarray(dataset.with_format("numpy")["label"], dtype=np.int64)
    names = _label_names(dataset)
    by_class = {c: idx for c, idx in _per_class_indices(labels).items() if c >= 0}
    if not by_class:
        raise FoldError("dataset has no labelled curves (every label is -1)")
    for c, idx in by_class.items():
        need = test_per_class + (1 if train_with_replacement else max(spcs))
        if len(idx) < need:
            name = names[c] if 0 <= c < len(names) else str(c)
            raise FoldError(
                f"class {name!r} (label {c}) has {len(idx)} curves; the protocol needs {need} "
                f"(test {test_per_class} + train {'1 (with replacement)' if train_with_replacement else max(spcs)}; "
                "validation takes what is left)"
            )

    splits: dict[tuple[int, int], datasets.DatasetDict] = {}
    for fold in range(n_folds):
        fold_rng = np.random.default_rng([seed, fold])
        test_idx, pools = [], {}
        for c, idx in by_class.items():
            chosen = fold_rng.permutation(idx)
            test_idx.append(np.sort(chosen[:test_per_class]))
            pools[c] = np.sort(chosen[test_per_class:])
        test = np.concatenate(test_idx)
        for spc in spcs:
            rng = np.random.default_rng([seed, fold, spc])
            n_val = int(val_fraction * spc)
            val_parts, train_parts = [], []
            remaining = {}
            if stratified_validation:
                for c, pool in pools.items():
                    order = rng.permutation(pool)
                    class_val = small_class_validation_size(n_val, len(pool), spc, train_with_replacement)
                    val_parts.append(np.sort(order[:class_val]))
                    remaining[c] = np.sort(order[class_val:])
            else:
                everything = np.concatenate(list(pools.values()))
                val = rng.choice(everything, size=min(n_val, len(everything)), replace=False)
                val_parts.append(np.sort(val))
                taken = set(val.tolist())
                remaining = {
                    c: np.asarray([i for i in pool if i not in taken], dtype=np.int64)
                    for c, pool in pools.items()
                }
            for c, pool in remaining.items():
                if len(pool) == 0 or (not train_with_replacement and len(pool) < spc):
                    raise FoldError(
                        f"fold {fold}, spc {spc}: class {names[c]!r} has {len(pool)} curves left for train"
                    )
                train_parts.append(np.sort(rng.choice(pool, size=spc, replace=train_with_replacement)))
            splits[(fold, spc)] = datasets.DatasetDict(
                {
                    "train": dataset.select(np.concatenate(train_parts)),
                    "validation": dataset.select(
                        np.concatenate(val_parts) if val_parts else np.zeros(0, np.int64)
                    ),
                    "test": dataset.select(test),
                }
            )
    return splits


def config_name(fold: int, spc: int) -> str:
    """The name of one (fold, spc) configuration, e.g. ``fold0_spc20``."""
    return f"fold{fold}_spc{spc}"


def write_splits(
    splits: dict[tuple[int, int], datasets.DatasetDict],
    out: str | Path,
    overwrite: bool = False,
    fmt: str = "arrow",
) -> list[Path]:
    """Write each split to ``out/<config_name>/`` (``save_to_disk``, or ``fmt="parquet"``: ``<split>.parquet``).

    The folder is built in a temporary sibling and renamed into place; an existing non-empty ``out`` is refused
    unless ``overwrite``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    if fmt not in ("arrow", "parquet"):
        raise FoldError(f"format must be 'arrow' or 'parquet', got {fmt!r}")
    written = []
    with staging_folder(out) as tmp:
        for (fold, spc), dd in sorted(splits.items()):
            folder = tmp / config_name(fold, spc)
            if fmt == "arrow":
                dd.save_to_disk(str(folder))
            else:
                folder.mkdir()
                for split, ds in dd.items():
                    ds.to_parquet(str(folder / f"{split}.parquet"))
            written.append(out / config_name(fold, spc))
    return written

