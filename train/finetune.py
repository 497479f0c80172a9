"""``astromer finetune``: the paper's fine-tuning protocol on one few-shot split, from the command line.

Run as ``python train/finetune.py``, ``accelerate launch train/finetune.py``, ``python -m astromer_train.finetune``
or ``astromer finetune``. The flags are the fields of :class:`astromer_train.FinetuningConfig`; the run is
:func:`astromer_train.run_finetuning` (see :mod:`astromer_train.finetuning`). Outputs in ``--output-dir``:
``ssl_model/``, ``classifier/`` and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from astromer_train.cli_utils import (
    add_output_arguments,
    entry_point_parser,
    non_negative_int,
    positive_float,
    positive_int,
    run_entry_point,
)
from astromer_train.configuration import (
    CLASS_PROPORTIONS,
    CLASSIFIER_ATTENTION,
    MIXED_PRECISION,
    POOLING,
    SURVEYS,
    FinetuningConfig,
)
from astromer_train.finetuning import run_finetuning

logger = logging.getLogger("astromer_train.finetune")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``finetune`` and ``evaluate`` (everything except the data source and the output): the
    fields of :class:`astromer_train.configuration.FinetuningOptions`."""
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="pretrained Astromer folder (save_pretrained)")
    model.add_argument("--attn-implementation", choices=CLASSIFIER_ATTENTION, default="sdpa")
    model.add_argument("--pooling", choices=POOLING, default="skip",
                       help="classifier input: the paper's gamma-weighted skip embedding, or last-block mean/max")
    model.add_argument("--train-encoder", action="store_true",
                       help="also train the encoder in the classification stage (the paper keeps it frozen)")
    model.add_argument("--mixed-precision", choices=[m for m in MIXED_PRECISION if m], default=None)

    ssl = parser.add_argument_group("continued self-supervised training (step 1)")
    ssl.add_argument("--skip-ssl", action="store_true", help="classify with the pretrained encoder as it is")
    ssl.add_argument("--ssl-epochs", type=positive_int, default=10000, help="maximum epochs (early stopping ends it)")
    ssl.add_argument("--ssl-max-steps", type=positive_int, default=None)
    ssl.add_argument("--ssl-learning-rate", type=positive_float, default=1e-5)
    ssl.add_argument("--ssl-batch-size", type=positive_int, default=256)
    ssl.add_argument("--ssl-patience", type=positive_int, default=20)
    ssl.add_argument("--mask-token", dest="mask_token", action="store_const", const=True, default=None,
                     help="use the trainable MASK token in step 1 (default: the pretrained model's setting)")
    ssl.add_argument("--no-mask-token", dest="mask_token", action="store_const", const=False)

    clf = parser.add_argument_group("classifier (step 2)")
    clf.add_argument("--epochs", type=positive_int, default=10000, help="maximum epochs (early stopping ends it)")
    clf.add_argument("--learning-rate", type=positive_float, default=1e-5)
    clf.add_argument("--batch-size", type=positive_int, default=256)
    clf.add_argument("--patience", type=positive_int, default=40, help="epochs without a lower validation loss")
    clf.add_argument("--seed", type=int, default=0)
    clf.add_argument("--dataloader-workers", type=non_negative_int, default=0)
    clf.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser, data, source = entry_point_parser(
        "astromer finetune",
        "Fine-tune a pretrained Astromer on one few-shot split: continued self-supervised training, then "
        "the skip/gamma classifier on the frozen encoder (Trainer); test macro-F1 per window and per light curve.",
    )
    source.add_argument("--dataset", help="DatasetDict folder / parquet folder with train, validation and test splits "
                        "(e.g. one fold{k}_spc{n} folder of `astromer folds`)")
    source.add_argument("--synthetic", type=positive_int, metavar="N",
                        help="generate N labelled synthetic curves and draw the (--fold, --spc) split from them")
    data.add_argument("--survey", choices=SURVEYS, default="macho")
    data.add_argument("--class-proportions", choices=CLASS_PROPORTIONS, default="published",
                      help="class mix of --synthetic")
    data.add_argument("--fold", type=int, default=0, help="fold of --synthetic")
    data.add_argument("--spc", type=positive_int, default=20, help="samples per class of --synthetic")
    data.add_argument("--test-per-class", type=positive_int, default=100, help="test curves per class (--synthetic)")
    add_finetune_arguments(parser)
    add_output_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``astromer finetune``); returns the exit status."""
    status, config, results = run_entry_point(build_parser(), FinetuningConfig, run_finetuning, argv)
    if results is not None:
        test = results["test"]
        logger.info("test macro-F1: %.4f per window, %.4f per light curve (%s)", test["window"]["f1_macro"],
                    test["light_curve"]["f1_macro"], Path(config.output_dir) / "metrics.json")
    return status


if __name__ == "__main__":
    sys.exit(main())
