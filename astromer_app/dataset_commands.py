"""``astromer folds`` and ``astromer publish-dataset``: the few-shot splits and a code-free Hub dataset.

::

    astromer folds --synthetic macho --n-curves 20000 --out folds/ [--overwrite]
    astromer folds --from-disk alcock_ds/ --out folds/ --spc 20 100 500 --folds 3
    astromer publish-dataset --synthetic macho --n-curves 5000 --out pub/ --repo-id me/astromer-synthetic --dry-run
    astromer publish-dataset --from-disk alcock_ds/ --survey alcock --out pub/ --repo-id astromer/alcock

Both exit with status 2 and a one-line message for bad input, and never replace a non-empty ``--out`` folder without
``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import datasets

from astromer_train.cli_utils import fraction, non_negative_int, positive_int
from hub_datasets.folds import config_name, make_fewshot_splits, write_splits
from hub_datasets.publish import build_folder, push_folder
from hub_datasets.synthetic import generate_survey
from modeling_astromer.errors import AstromerError, InputError

__all__ = ["folds_main", "load_input", "publish_main"]


def load_input(args: argparse.Namespace) -> datasets.Dataset:
    """The dataset named by ``--synthetic`` or ``--from-disk`` (a save_to_disk folder, or a .parquet file) and
    ``--split``."""
    if args.synthetic:
        return generate_survey(args.n_curves, survey=args.synthetic, seed=args.seed)
    path = Path(args.from_disk)
    if not path.exists():
        raise InputError(f"--from-disk {path}: no such file or folder")
    if path.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if args.split not in loaded:
            raise InputError(f"--from-disk {path}: split {args.split!r} not found (have {list(loaded)})")
        return loaded[args.split]
    return loaded


def _add_source_arguments(parser: argparse.ArgumentParser, n_curves: int) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-disk", metavar="PATH", help="a save_to_disk folder (Dataset or DatasetDict) or a .parquet file"
    )
    source.add_argument("--synthetic", choices=["macho", "atlas"], help="generate a synthetic survey instead")
    parser.add_argument(
        "--split", default="train", help="split to use when --from-disk is a DatasetDict (default: train)"
    )
    parser.add_argument(
        "--n-curves", type=positive_int, default=n_curves, help=f"synthetic survey size (default: {n_curves})"
    )


def _add_fold_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the paper's fold protocol (:func:`hub_datasets.folds.make_fewshot_splits`)."""
    parser.add_argument("--test-per-class", type=positive_int, default=100)
    parser.add_argument(
        "--spc", type=positive_int, nargs="+", default=[20, 100, 500], help="samples per class (default: 20 100 500)"
    )
    parser.add_argument("--val-fraction", type=fraction, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-replacement", action="store_true", help="train drawn with replacement (upstream A2)")
    parser.add_argument(
        "--unstratified-validation",
        action="store_true",
        help="validation drawn from all classes together (upstream A2)",
    )


def _fewshot_splits(args: argparse.Namespace, dataset: datasets.Dataset) -> dict[tuple[int, int], datasets.DatasetDict]:
    return make_fewshot_splits(
        dataset,
        n_folds=args.folds,
        test_per_class=args.test_per_class,
        samples_per_class=args.spc,
        val_fraction=args.val_fraction,
        seed=args.seed,
        train_with_replacement=args.with_replacement,
        stratified_validation=not args.unstratified_validation,
    )


def _refuse_non_empty(parser: argparse.ArgumentParser, out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        parser.error(f"output folder {out} exists and is not empty; pass --overwrite to replace it")


# ------------------------------------------------------------------------------------------------------- folds
def build_folds_parser() -> argparse.ArgumentParser:
    """The parser of ``astromer folds``."""
    parser = argparse.ArgumentParser(
        prog="astromer folds",
        description="Write the Astromer few-shot splits (fold × samples-per-class) of a labelled light-curve dataset.",
    )
    _add_source_arguments(parser, n_curves=20_000)
    parser.add_argument(
        "--out", required=True, help="output folder; one sub-folder fold<k>_spc<n> per configuration"
    )
    parser.add_argument("--folds", type=positive_int, default=3)
    _add_fold_arguments(parser)
    parser.add_argument("--format", choices=["arrow", "parquet"], default="arrow")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")
    return parser


def folds_main(argv: Sequence[str] | None = None) -> int:
    """``astromer folds``; returns the exit status (2 on bad input, with a one-line error on stderr)."""
    parser = build_folds_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    _refuse_non_empty(parser, out, args.overwrite)
    try:
        dataset = load_input(args)
        splits = _fewshot_splits(args, dataset)
        written = write_splits(splits, out, overwrite=args.overwrite, fmt=args.format)
    except (AstromerError, FileExistsError) as exc:
        print(f"astromer folds: error: {exc}", file=sys.stderr)
        return 2
    for (fold, spc), dd in sorted(splits.items()):
        sizes = ", ".join(f"{k} {len(v)}" for k, v in dd.items())
        print(f"{config_name(fold, spc)}: {sizes}")
    print(f"wrote {len(written)} configurations to {out}")
    return 0


# ----------------------------------------------------------------------------------------------------- publish
def build_publish_parser() -> argparse.ArgumentParser:
    """The parser of ``astromer publish-dataset``."""
    parser = argparse.ArgumentParser(
        prog="astromer publish-dataset",
        description="Write a survey and its few-shot folds as Parquet + dataset card, then push it to the Hub.",
    )
    _add_source_arguments(parser, n_curves=5000)
    parser.add_argument("--survey", help="survey name for the card (default: folder name)")
    parser.add_argument("--out", required=True, help="local output folder")
    parser.add_argument("--repo-id", help="Hub dataset repo, e.g. astromer/alcock (required unless --dry-run)")
    parser.add_argument(
        "--folds", type=non_negative_int, default=3, help="number of folds (0: publish only the 'full' config)"
    )
    _add_fold_arguments(parser)
    parser.add_argument("--max-rows-per-shard", type=positive_int, default=20_000)
    parser.add_argument(
        "--license",
        help="Hub licence identifier of the data (default for --synthetic: mit, the licence of the generator; "
        "required for real surveys: their own terms, e.g. 'other' with --license-name and --license-link)",
    )
    parser.add_argument("--license-name", help="name of the data's terms when --license other")
    parser.add_argument("--license-link", help="link to the data's terms when --license other")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="write the folder only; do not push")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out folder")
    return parser


def _data_license(args: argparse.Namespace) -> str:
    """The licence of the published data: stated by the user, or this package's own for generated data."""
    license = args.license or ("mit" if args.synthetic else None)
    if license is None:
        raise InputError(
            "state the licence of the survey data: --license ID, or --license other --license-name NAME "
            "--license-link URL"
        )
    if license == "other" and not args.license_name:
        raise InputError("--license other needs --license-name (and best --license-link)")
    return license


def publish_main(argv: Sequence[str] | None = None) -> int:
    """``astromer publish-dataset``; returns the exit status (2 on bad input)."""
    parser = build_publish_parser()
    args = parser.parse_args(argv)
    if not args.dry_run and not args.repo_id:
        parser.error("--repo-id is required unless --dry-run")
    out = Path(args.out)
    _refuse_non_empty(parser, out, args.overwrite)
    try:
        dataset = load_input(args)
        license = _data_license(args)
        survey = f"synthetic-{args.synthetic}" if args.synthetic else args.survey or Path(args.from_disk).name
        configs: dict[str, datasets.DatasetDict] = {"full": datasets.DatasetDict({"train": dataset})}
        protocol = ""
        if args.folds > 0:
            splits = _fewshot_splits(args, dataset)
            configs.update({config_name(f, s): dd for (f, s), dd in sorted(splits.items())})
            protocol = (
                f"Few-shot configs: {args.folds} folds × samples per class {args.spc}; test = {args.test_per_class} "
                f"curves per class per fold; validation = {args.val_fraction:.0%} of spc per class; seed {args.seed} "
                "(`hub_datasets.folds.make_fewshot_splits`)."
            )
        build_folder(
            configs,
            out,
            survey,
            protocol,
            args.max_rows_per_shard,
            overwrite=args.overwrite,
            repo_id=args.repo_id,
            license=license,
            license_name=args.license_name,
            license_link=args.license_link,
        )
    except (AstromerError, FileExistsError) as exc:
        print(f"astromer publish-dataset: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(configs)} configs to {out}")
    if args.dry_run:
        print("dry run: not pushed")
        return 0
    url = push_folder(out, args.repo_id, private=args.private)
    print(f"pushed to {args.repo_id}: {url}")
    return 0
