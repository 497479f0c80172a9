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

from astromer_train.cli_utils import add_output_arguments, entry_point_parser, positive_int, run_entry_point
from astromer_train.configuration import BASELINES, CLASS_PROPORTIONS, SURVEYS, EvaluationConfig
from astromer_train.fewshot import run_evaluation
from astromer_train.finetune import add_finetune_arguments, parse_arguments


def build_parser() -> argparse.ArgumentParser:
    parser, data, source = entry_point_parser(
        "astromer evaluate",
        "Few-shot evaluation table (folds x samples per class): mean +- std test macro-F1 of the paper's "
        "fine-tuning protocol, written as Markdown and JSON.",
        epilog="Any transformers TrainingArguments option is accepted as in the Hugging Face example scripts "
        "(--report_to, --bf16, --gradient_checkpointing, ...) and overrides the classifier stage.",
        allow_abbrev=False,
    )
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
    add_output_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``astromer evaluate``); returns the exit status."""
    status, _, table = run_entry_point(
        build_parser(), EvaluationConfig, run_evaluation, argv, parse=parse_arguments
    )
    if table is not None:
        print(table.markdown)
    return status


if __name__ == "__main__":
    sys.exit(main())
