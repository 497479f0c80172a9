"""The few-shot fold protocol of the Astromer papers (``create_datasets.py``, data.md §3), as a function and a CLI.

For each fold ``k`` (an independent random draw, seeded by ``(seed, k)``):

1. **test** = ``test_per_class`` curves of every class, without replacement; shared by all SPC values of the fold
   (as upstream, where the test set is drawn once per fold).
2. For each ``spc`` (seeded by ``(seed, k, spc)``), from the remaining pool:
   **validation** = ``int(val_fraction · spc)`` curves *per class* (stratified), without replacement;
   **train** = ``spc`` curves per class from what is left, **without replacement**.

Deviations from the official A2 ``create_datasets.py`` (each reproducible with an option):

* upstream draws train with ``replace=True`` (duplicates possible; the A1 notebook drew without). We default to
  without replacement so that ``spc`` is the number of distinct light curves; ``train_with_replacement=True``
  gives the upstream behaviour (only then can a class have fewer than ``spc`` curves left).
* upstream draws ``int(0.2·spc)`` validation curves from all classes *together* (at spc=20 that is 4 curves,
  some classes absent). We stratify; ``stratified_validation=False`` gives the upstream draw.

The samplers use ``numpy.random.Generator`` (not pandas' ``sample``), so the splits are deterministic per seed but
not the same objects as upstream's. Train/validation/test never share a row of the input dataset.

CLI::

    python -m hub_datasets.folds --synthetic macho --n-curves 20000 --out folds/ [--overwrite]
    python -m hub_datasets.folds --from-disk alcock_ds/ --out folds/ --spc 20 100 500 --folds 3
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np

from modeling_astromer.errors import AstromerError


class FoldError(AstromerError, ValueError):
    """The dataset cannot supply the requested split sizes (names the class and the counts)."""


def _label_names(dataset: datasets.Dataset) -> list[str]:
    feature = dataset.features.get("label")
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    labels = np.unique(np.asarray(dataset["label"]))
    return [str(v) for v in labels]


def _per_class_indices(labels: np.ndarray) -> dict[int, np.ndarray]:
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


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

    ``dataset`` needs an integer ``label`` column (a ``ClassLabel`` keeps its names); labels ``-1`` (unlabelled) are
    ignored. Every class must have at least ``test_per_class + int(val_fraction·spc) + spc`` curves (``spc`` → 1 with
    replacement), else :class:`FoldError` names the class. Same arguments ⇒ the same rows in the same order.
    """
    if n_folds < 1 or test_per_class < 1:
        raise ValueError(f"n_folds and test_per_class must be >= 1, got {n_folds}, {test_per_class}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    spcs = [int(s) for s in samples_per_class]
    if not spcs or min(spcs) < 1:
        raise ValueError(f"samples_per_class must be positive integers, got {samples_per_class}")
    if "label" not in dataset.column_names:
        raise ValueError(f"dataset has no 'label' column (columns: {dataset.column_names})")
    labels = np.asarray(dataset.with_format("numpy")["label"], dtype=np.int64)
    names = _label_names(dataset)
    by_class = {c: idx for c, idx in _per_class_indices(labels).items() if c >= 0}
    for c, idx in by_class.items():
        n_val = int(val_fraction * max(spcs))
        need = (
            test_per_class
            + (n_val if stratified_validation else 0)
            + (1 if train_with_replacement else max(spcs))
        )
        if len(idx) < need:
            name = names[c] if 0 <= c < len(names) else str(c)
            raise FoldError(
                f"class {name!r} (label {c}) has {len(idx)} curves; the protocol needs {need} "
                f"(test {test_per_class} + validation {n_val if stratified_validation else 0} + train "
                f"{'1 (with replacement)' if train_with_replacement else max(spcs)})"
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
                    val_parts.append(np.sort(order[:n_val]))
                    remaining[c] = np.sort(order[n_val:])
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    written = []
    try:
        for (fold, spc), dd in sorted(splits.items()):
            folder = tmp / config_name(fold, spc)
            if fmt == "arrow":
                dd.save_to_disk(str(folder))
            elif fmt == "parquet":
                folder.mkdir()
                for split, ds in dd.items():
                    ds.to_parquet(str(folder / f"{split}.parquet"))
            else:
                raise ValueError(f"format must be 'arrow' or 'parquet', got {fmt!r}")
            written.append(out / config_name(fold, spc))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def load_input(args: argparse.Namespace) -> datasets.Dataset:
    """The dataset named by `--synthetic` or `--from-disk` (a save_to_disk folder, or a .parquet file) and `--split`."""
    if args.synthetic:
        from hub_datasets.synthetic import generate_survey

        return generate_survey(args.n_curves, survey=args.synthetic, seed=args.seed)
    path = Path(args.from_disk)
    if not path.exists():
        raise FileNotFoundError(f"--from-disk {path}: no such file or folder")
    if path.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if args.split not in loaded:
            raise KeyError(f"--from-disk {path}: split {args.split!r} not found (have {list(loaded)})")
        return loaded[args.split]
    return loaded


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m hub_datasets.folds``."""
    parser = argparse.ArgumentParser(
        prog="python -m hub_datasets.folds",
        description="Write the Astromer few-shot splits (fold × samples-per-class) of a labelled light-curve dataset.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-disk",
        metavar="PATH",
        help="a save_to_disk folder (Dataset or DatasetDict) or a .parquet file",
    )
    source.add_argument("--synthetic", choices=["macho", "atlas"], help="generate a synthetic survey instead")
    parser.add_argument(
        "--split", default="train", help="split to use when --from-disk is a DatasetDict (default: train)"
    )
    parser.add_argument("--n-curves", type=int, default=20_000, help="synthetic survey size (default: 20000)")
    parser.add_argument(
        "--out", required=True, help="output folder; one sub-folder fold<k>_spc<n> per configuration"
    )
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument(
        "--spc", type=int, nargs="+", default=[20, 100, 500], help="samples per class (default: 20 100 500)"
    )
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--with-replacement", action="store_true", help="train drawn with replacement (upstream A2)"
    )
    parser.add_argument(
        "--unstratified-validation",
        action="store_true",
        help="validation drawn from all classes together (upstream A2)",
    )
    parser.add_argument("--format", choices=["arrow", "parquet"], default="arrow")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing, non-empty --out folder"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 on bad input, with a one-line error on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        parser.error(f"output folder {out} exists and is not empty; pass --overwrite to replace it")
    try:
        dataset = load_input(args)
        splits = make_fewshot_splits(
            dataset,
            n_folds=args.folds,
            test_per_class=args.test_per_class,
            samples_per_class=args.spc,
            val_fraction=args.val_fraction,
            seed=args.seed,
            train_with_replacement=args.with_replacement,
            stratified_validation=not args.unstratified_validation,
        )
        written = write_splits(splits, out, overwrite=args.overwrite, fmt=args.format)
    except (FoldError, ValueError, FileNotFoundError, KeyError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for (fold, spc), dd in sorted(splits.items()):
        sizes = ", ".join(f"{k} {len(v)}" for k, v in dd.items())
        print(f"{config_name(fold, spc)}: {sizes}")
    print(f"wrote {len(written)} configurations to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
