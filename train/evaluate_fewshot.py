"""``astromer evaluate``: the few-shot evaluation table (folds × samples per class) from the command line.

Run as ``python train/evaluate_fewshot.py``, ``accelerate launch train/evaluate_fewshot.py``, ``python -m
astromer_train.evaluate_fewshot`` or ``astromer evaluate``. The flags are the fields of
:class:`astromer_train.EvaluationConfig`; the run is :func:`astromer_train.run_evaluation` (see
:mod:`astromer_train.fewshot`). Outputs in ``--output-dir``: ``results.json``, ``results.md`` and one folder per
run. (The script is not called ``evaluate.py``: run by path, its folder comes first on ``sys.path`` and that name
would hide the Hugging Face ``evaluate`` package.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from astromer_train.cli_utils import UsageError, configure_process, positive_int, usage_error
from astromer_train.configuration import BASELINES, CLASS_PROPORTIONS, SURVEYS, EvaluationConfig
from astromer_train.data import DataSourceError
from astromer_train.fewshot import run_evaluation
from astromer_train.finetune import add_finetune_arguments, parse_arguments
from hub_datasets.folds import FoldError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astromer evaluate",
        description="Few-shot evaluation table (folds x samples per class): mean +- std test macro-F1 of the paper's "
        "fine-tuning protocol, written as Markdown and JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Any transformers TrainingArguments option is accepted as in the Hugging Face example scripts "
        "(--report_to, --bf16, --gradient_checkpointing, ...) and overrides the classifier stage.",
        allow_abbrev=False,
    )
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--folds-dir", help="folder of fold{k}_spc{n}/ DatasetDicts (astromer folds)")
    source.add_argument("--dataset", help="labelled light-curve dataset to draw the folds from")
    source.add_argument("--synthetic", type=positive_int, metavar="N", help="N labelled synthetic curves")
    data.add_argument("--survey", choices=SURVEYS, default="macho")
    data.add_argument("--class-proportions", choices=CLASS_PROPORTIONS, default="published",
                      help="class mix of --synthetic")
    data.add_argument("--dataset-name", default=None, help="name in the table (default: the source)")
    data.add_argument("--folds", type=positive_int, default=3)
    data.add_argument("--spc", type=positive_int, nargs="+", default=[20, 100, 500], help="samples per class")
    data.add_argument("--test-per-class", type=positive_int, default=100)
    data.add_argument("--split", default="train", help="split of --dataset to draw the folds from")
    data.add_argument("--baseline", choices=[b for b in BASELINES if b], default=None,
                      help="also score light-curve features + random forest in the same folds (the [baselines] extra)")
    add_finetune_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", required=True)
    out.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")
    return parser


def config_from_arguments(args: argparse.Namespace) -> EvaluationConfig:
    """The configuration of parsed flags (every flag is the field of the same name); raises ``UsageError``."""
    return EvaluationConfig(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``astromer evaluate``); returns the exit status."""
    parser = build_parser()
    args = parse_arguments(parser, argv)
    configure_process()
    try:
        table = run_evaluation(config_from_arguments(args))
    except (UsageError, DataSourceError, FoldError) as exc:
        return usage_error(parser, exc)
    print(table.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
