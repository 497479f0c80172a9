"""The few-shot evaluation table of the Astromer papers in one command: folds × samples per class.

For every fold ``k`` and SPC ``n`` it runs the fine-tuning protocol of ``astromer_train.finetune`` (continued
self-supervised training, then the frozen-encoder skip/γ classifier with ``Trainer``) and collects the test
macro-F1, then reports **mean ± population std** (``np.std``, as the paper) over the folds, per window (the paper's
metric) and per light curve, in the layout of the paper's table (one row per dataset and SPC).

Data: ``--folds-dir`` (the ``fold{k}_spc{n}/`` folders written by ``python -m hub_datasets.folds``), or a labelled
dataset (``--dataset`` / ``--synthetic N``) from which the folds are drawn with ``hub_datasets.make_fewshot_splits``.

Outputs in ``--output-dir``: ``results.json`` (every run and the summary), ``results.md`` (the table) and one
sub-folder per run (``fold{k}_spc{n}/``, see ``finetune``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("astromer_train.evaluate")
LEVELS = ("window", "light_curve")


def build_parser() -> argparse.ArgumentParser:
    from astromer_train.cli_utils import positive_int
    from astromer_train.finetune import add_finetune_arguments

    parser = argparse.ArgumentParser(
        prog="astromer evaluate",
        description="Few-shot evaluation table (folds x samples per class): mean +- std test macro-F1 of the paper's "
        "fine-tuning protocol, written as Markdown and JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--folds-dir", help="folder of fold{k}_spc{n}/ DatasetDicts (python -m hub_datasets.folds)")
    source.add_argument("--dataset", help="labelled light-curve dataset to draw the folds from")
    source.add_argument("--synthetic", type=positive_int, metavar="N", help="N labelled synthetic curves")
    data.add_argument("--survey", choices=("macho", "atlas"), default="macho")
    data.add_argument("--class-proportions", choices=("published", "uniform"), default="published",
                      help="class mix of --synthetic")
    data.add_argument("--dataset-name", default=None, help="name in the table (default: the source)")
    data.add_argument("--folds", type=positive_int, default=3)
    data.add_argument("--spc", type=positive_int, nargs="+", default=[20, 100, 500], help="samples per class")
    data.add_argument("--test-per-class", type=positive_int, default=100)
    data.add_argument("--split", default="train", help="split of --dataset to draw the folds from")
    add_finetune_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", required=True)
    out.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    from astromer_train.cli_utils import UsageError

    if args.folds_dir is None and args.dataset is None and args.synthetic is None:
        raise UsageError("give a data source: --folds-dir, --dataset or --synthetic")
    for flag in ("folds_dir", "dataset"):
        value = getattr(args, flag)
        if value is not None and not Path(value).exists():
            raise UsageError(f"--{flag.replace('_', '-')} {value}: no such file or folder")
    if not (Path(args.model) / "config.json").is_file():
        raise UsageError(f"--model {args.model}: no config.json there (expected a save_pretrained folder)")
    if len(set(args.spc)) != len(args.spc):
        raise UsageError(f"--spc values must be distinct, got {args.spc}")
    if args.folds_dir is not None:
        missing = [f"fold{k}_spc{n}" for k in range(args.folds) for n in args.spc
                   if not (Path(args.folds_dir) / f"fold{k}_spc{n}").is_dir()]
        if missing:
            raise UsageError(f"--folds-dir {args.folds_dir} lacks {missing[:6]} (for --folds {args.folds} "
                             f"--spc {' '.join(map(str, args.spc))})")


def iter_splits(args: argparse.Namespace):
    """Yields ``(fold, spc, DatasetDict(train, validation, test))`` in table order."""
    from astromer_train.data import load_light_curves

    if args.folds_dir is not None:
        for fold in range(args.folds):
            for spc in args.spc:
                yield fold, spc, load_light_curves(str(Path(args.folds_dir) / f"fold{fold}_spc{spc}"))
        return
    from hub_datasets import make_fewshot_splits

    if args.synthetic is not None:
        table = load_light_curves(synthetic=args.synthetic, survey=args.survey, seed=args.seed,
                                  class_proportions=args.class_proportions)["train"]
    else:
        splits = load_light_curves(args.dataset)
        if args.split not in splits:
            from astromer_train.data import DataSourceError

            raise DataSourceError(f"no split {args.split!r} in {args.dataset} (splits: {sorted(splits)})")
        table = splits[args.split]
    folds = make_fewshot_splits(table, n_folds=args.folds, test_per_class=args.test_per_class,
                                samples_per_class=tuple(args.spc), seed=args.seed)
    for fold in range(args.folds):
        for spc in args.spc:
            yield fold, spc, folds[(fold, spc)]


def summarise(runs: list[dict[str, Any]], spcs: Sequence[int]) -> dict[str, dict[str, dict[str, float]]]:
    """``{str(spc): {level: {"mean", "std", "n_folds", "values"}}}``; std is the population std (``np.std``)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for spc in spcs:
        summary[str(spc)] = {}
        for level in LEVELS:
            values = np.array([r[f"f1_macro_{level}"] for r in runs if r["spc"] == spc], dtype=np.float64)
            summary[str(spc)][level] = {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "n_folds": int(values.size),
                "values": values.tolist(),
            }
    return summary


def markdown_table(dataset_name: str, summary: dict[str, dict[str, dict[str, float]]], model_name: str) -> str:
    """The paper's layout: one row per (dataset, SPC), test macro-F1 as ``mean ± std`` over folds."""
    lines = [
        f"Test macro-F1, mean ± std over folds ({model_name} + {{pooling}} classifier).",
        "",
        "| dataset | SPC | macro-F1 (windows) | macro-F1 (light curves) | folds |",
        "|---|---|---|---|---|",
    ]
    for spc, levels in summary.items():
        w, c = levels["window"], levels["light_curve"]
        lines.append(f"| {dataset_name} | {spc} | {w['mean']:.4f} ± {w['std']:.4f} | "
                     f"{c['mean']:.4f} ± {c['std']:.4f} | {w['n_folds']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``astromer evaluate``); returns the exit status."""
    from astromer_train.cli_utils import (
        UsageError,
        clear_output_dir,
        configure_process,
        prepare_output_dir,
        usage_error,
        write_json_atomic,
        write_text_atomic,
    )
    from astromer_train.data import DataSourceError
    from astromer_train.finetune import run_finetune
    from hub_datasets.folds import FoldError

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_process()
    try:
        validate_args(args)
        output_dir = prepare_output_dir(args.output_dir, args.overwrite)
        if args.overwrite:
            clear_output_dir(output_dir)
        runs = []
        for fold, spc, splits in iter_splits(args):
            logger.info("fold %d, SPC %d", fold, spc)
            result = run_finetune(args, splits, output_dir / f"fold{fold}_spc{spc}")
            runs.append({
                "fold": fold,
                "spc": spc,
                "f1_macro_window": result["test"]["window"]["f1_macro"],
                "f1_macro_light_curve": result["test"]["light_curve"]["f1_macro"],
                "accuracy_window": result["test"]["window"]["accuracy"],
                "n_test_windows": result["test"]["window"]["n"],
                "n_test_light_curves": result["test"]["light_curve"]["n"],
            })
    except (UsageError, DataSourceError, FoldError) as exc:
        return usage_error(parser, exc)
    summary = summarise(runs, args.spc)
    name = args.dataset_name or (f"synthetic {args.survey}" if args.synthetic else Path(args.folds_dir or args.dataset).name)
    table = markdown_table(name, summary, Path(args.model).name).replace("{pooling}", args.pooling)
    write_json_atomic(output_dir / "results.json", {
        "dataset": name, "model": str(args.model), "pooling": args.pooling, "metric": "test macro-F1",
        "std": "population (numpy.std, ddof=0)", "runs": runs, "summary": summary,
    })
    write_text_atomic(output_dir / "results.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
