"""``astromer finetune``: the paper's fine-tuning protocol on one few-shot split, from the command line.

Run as ``python train/finetune.py``, ``accelerate launch train/finetune.py``, ``python -m astromer_train.finetune``
or ``astromer finetune``. The flags are the fields of :class:`astromer_train.FinetuningConfig`; the run is
:func:`astromer_train.run_finetuning` (see :mod:`astromer_train.finetuning`). Outputs in ``--output-dir``:
``ssl_model/``, ``classifier/`` and ``metrics.json``.

Every ``transformers.TrainingArguments`` option is accepted too, spelled as in the Hugging Face example scripts
(``--report_to tensorboard``, ``--bf16``, ``--gradient_checkpointing``, ``--push_to_hub --hub_model_id me/model``,
``--per_device_train_batch_size 64``...): :func:`parse_arguments` collects them with ``HfArgumentParser`` into
``trainer_arguments``, where they override the classifier stage's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from astromer_train.cli_utils import (
    UsageError,
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
    CLASSIFIERS,
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
    model.add_argument("--model", required=True,
                       help="pretrained Astromer folder (save_pretrained) or bundled model name (astromer1-macho)")
    model.add_argument("--attn-implementation", choices=CLASSIFIER_ATTENTION, default="sdpa")
    model.add_argument("--pooling", choices=POOLING, default="skip",
                       help="classifier input: the paper's gamma-weighted skip embedding, or last-block mean/max")
    model.add_argument("--classifier", choices=CLASSIFIERS, default="mlp",
                       help="mlp: the paper's head trained with Trainer; linear: logistic-regression probe on the frozen "
                       "window embeddings (C chosen by cross-validation on the training curves)")
    model.add_argument("--train-encoder", action="store_true",
                       help="also train the encoder in the classification stage (full fine-tuning; the paper keeps it "
                       "frozen)")
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
    clf.add_argument("--epochs", type=positive_int, default=300, help="maximum epochs (early stopping ends it)")
    clf.add_argument("--learning-rate", type=positive_float, default=1e-4, help="the paper: 1e-5")
    clf.add_argument("--batch-size", type=positive_int, default=16, help="the paper: 256")
    clf.add_argument("--patience", type=positive_int, default=30,
                     help="epochs without a lower validation loss (the paper: 40)")
    clf.add_argument("--best-on-validation", action=argparse.BooleanOptionalAction, default=True,
                     help="keep the weights of the epoch with the lowest validation loss (the paper keeps the last: "
                     "--no-best-on-validation)")
    clf.add_argument("--seed", type=int, default=0)
    clf.add_argument("--dataloader-workers", type=non_negative_int, default=0)
    clf.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser, data, source = entry_point_parser(
        "astromer finetune",
        "Fine-tune a pretrained Astromer on one few-shot split: continued self-supervised training, then "
        "the skip/gamma classifier on the frozen encoder (Trainer); test macro-F1 per window and per light curve.",
        epilog="Any transformers TrainingArguments option is accepted as in the Hugging Face example scripts "
        "(--report_to, --bf16, --gradient_checkpointing, --push_to_hub, ...) and overrides the classifier stage.",
        allow_abbrev=False,
    )
    source.add_argument("--dataset", help="DatasetDict folder / parquet folder with train, validation and test splits "
                        "(e.g. one fold{k}_spc{n} folder of `astromer folds`); the validation split is optional")
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


def trainer_arguments(tokens: Sequence[str]) -> dict[str, Any]:
    """The ``TrainingArguments`` options among ``tokens`` (the flags this script does not know), parsed by
    ``HfArgumentParser``: ``{field: value}`` for the fields given. Raises ``UsageError`` for anything else."""
    parser = HfArgumentParser(TrainingArguments)
    known, unknown = parser.parse_known_args(list(tokens))
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (neither an option of this command nor a "
                         "transformers TrainingArguments field)")
    field_names = {f.name for f in dataclasses.fields(TrainingArguments)}
    given = {}
    for token in tokens:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        if name.startswith("no_") and name[3:] in field_names and name not in field_names:
            name = name[3:]
        if name in field_names:
            given[name] = getattr(known, name)
    return given


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """This command's flags, plus the ``TrainingArguments`` options (``--report_to``, ``--bf16``...) in
    ``trainer_arguments``; an unknown flag exits with status 2 like argparse."""
    args, rest = parser.parse_known_args(argv)
    try:
        args.trainer_arguments = trainer_arguments(rest)
    except UsageError as exc:
        parser.error(str(exc))
    return args


def config_from_arguments(args: argparse.Namespace) -> FinetuningConfig:
    """The run's :class:`FinetuningConfig` from parsed flags (bundled model names resolved, fields checked)."""
    return FinetuningConfig(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``astromer finetune``); returns the exit status."""
    status, config, results = run_entry_point(
        build_parser(), FinetuningConfig, run_finetuning, argv, parse=parse_arguments
    )
    if results is not None:
        test = results["test"]
        logger.info("test macro-F1: %.4f per window, %.4f per light curve (%s)", test["window"]["f1_macro"],
                    test["light_curve"]["f1_macro"], Path(config.output_dir) / "metrics.json")
    return status


if __name__ == "__main__":
    sys.exit(main())
