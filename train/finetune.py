"""The paper's fine-tuning protocol for one few-shot split (Astromer spec §5), with Accelerate and ``Trainer``.

1. **Continued self-supervised training** of the pretrained encoder on the split's training light curves
   (sequential windows, the official masking and weighted loss, all layers trainable, Adam lr 1e-5, early stopping
   on the validation curves' RMSE): the pretraining loop of ``astromer_train.pretrain`` with ``--init-from``.
2. **Classifier**: ``AstromerForSequenceClassification`` (γ-weighted skip embedding + the 1024/512/256 MLP) on the
   **frozen** encoder (run in eval mode), trained with ``transformers.Trainer`` on sequential windows: ragged windows
   padded by ``PaddingCollator``, ``remove_unused_columns=False``, cross-entropy, early stopping on the validation
   loss, and the **final-epoch** weights kept (``load_best_model_at_end=False``), as the paper does.
3. **Metrics** (scikit-learn): macro-F1, accuracy and the per-class report on the test split, per **window** (the
   paper's metric) and per **light curve** (class probabilities averaged over a curve's windows).

Outputs in ``--output-dir``: ``ssl_model/`` (the adapted encoder + reconstruction head), ``classifier/``
(``save_model`` of the classifier and the feature extractor), ``metrics.json``.

Run as ``python train/finetune.py``, ``accelerate launch train/finetune.py`` or ``astromer finetune``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("astromer_train.finetune")


# ------------------------------------------------------------------------------------------------------ arguments
def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``finetune`` and ``evaluate`` (everything except the data source and the output)."""
    from astromer_train.cli_utils import non_negative_int, positive_float, positive_int

    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="pretrained Astromer folder (save_pretrained)")
    model.add_argument("--attn-implementation", choices=("sdpa", "eager"), default="sdpa")
    model.add_argument("--pooling", choices=("skip", "mean", "max"), default="skip",
                       help="classifier input: the paper's gamma-weighted skip embedding, or last-block mean/max")
    model.add_argument("--train-encoder", action="store_true",
                       help="also train the encoder in the classification stage (the paper keeps it frozen)")
    model.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None)

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
    from astromer_train.cli_utils import positive_int

    parser = argparse.ArgumentParser(
        prog="astromer finetune",
        description="Fine-tune a pretrained Astromer on one few-shot split: continued self-supervised training, then "
        "the skip/gamma classifier on the frozen encoder (Trainer); test macro-F1 per window and per light curve.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="DatasetDict folder / parquet folder with train, validation and test splits "
                        "(e.g. one fold{k}_spc{n} folder of `python -m hub_datasets.folds`)")
    source.add_argument("--synthetic", type=positive_int, metavar="N",
                        help="generate N labelled synthetic curves and draw the (--fold, --spc) split from them")
    data.add_argument("--survey", choices=("macho", "atlas"), default="macho")
    data.add_argument("--class-proportions", choices=("published", "uniform"), default="published",
                      help="class mix of --synthetic")
    data.add_argument("--fold", type=int, default=0, help="fold of --synthetic")
    data.add_argument("--spc", type=positive_int, default=20, help="samples per class of --synthetic")
    data.add_argument("--test-per-class", type=positive_int, default=100, help="test curves per class (--synthetic)")
    add_finetune_arguments(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", required=True)
    out.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    from astromer_train.cli_utils import UsageError

    if getattr(args, "dataset", None) is None and getattr(args, "synthetic", None) is None:
        raise UsageError("give a data source: --dataset PATH or --synthetic N")
    if getattr(args, "dataset", None) is not None and not Path(args.dataset).exists():
        raise UsageError(f"--dataset {args.dataset}: no such file or folder")
    if not (Path(args.model) / "config.json").is_file():
        raise UsageError(f"--model {args.model}: no config.json there (expected a save_pretrained folder)")
    if getattr(args, "fold", 0) < 0:
        raise UsageError(f"--fold must be >= 0, got {args.fold}")


# ------------------------------------------------------------------------------------------------------ metrics
def classification_metrics(labels: np.ndarray, predictions: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    """Macro-F1 (sklearn ``f1_score(average="macro")``, the paper's metric), accuracy and the per-class report."""
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    present = list(range(len(label_names)))
    return {
        "f1_macro": float(f1_score(labels, predictions, average="macro", labels=present, zero_division=0)),
        "accuracy": float(accuracy_score(labels, predictions)),
        "n": int(labels.size),
        "report": classification_report(labels, predictions, labels=present, target_names=list(label_names),
                                        output_dict=True, zero_division=0),
    }


def per_light_curve(probabilities: np.ndarray, light_curve: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average the window class probabilities of each light curve.

    Args:
        probabilities: `(n_windows, n_classes)` softmax outputs.
        light_curve: `(n_windows,)` curve index of each window.
        labels: `(n_windows,)` window labels (constant within a curve).

    Returns:
        ``(curve_predictions, curve_labels)``, both `(n_curves,)`, in order of first appearance.
    """
    curves, first = np.unique(light_curve, return_index=True)
    inverse = np.searchsorted(curves, light_curve)
    summed = np.zeros((curves.size, probabilities.shape[1]))
    np.add.at(summed, inverse, probabilities)
    return summed.argmax(axis=1), labels[first]


def _compute_trainer_metrics(eval_prediction) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    logits = eval_prediction.predictions[0] if isinstance(eval_prediction.predictions, tuple) else eval_prediction.predictions
    predictions = np.asarray(logits).argmax(axis=-1)
    labels = np.asarray(eval_prediction.label_ids)
    return {"f1_macro": float(f1_score(labels, predictions, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(labels, predictions))}


# ------------------------------------------------------------------------------------------------------ the run
def _label_names(splits) -> list[str]:
    import datasets

    feature = splits["train"].features.get("label")
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted({int(v) for split in splits.values() for v in split["label"]})
    if values != list(range(len(values))):
        raise ValueError(f"labels must be 0..n-1 (or a ClassLabel), got {values[:20]}")
    return [str(v) for v in values]


def load_split(args: argparse.Namespace):
    """The ``DatasetDict(train, validation, test)`` of this run."""
    from astromer_train.data import DataSourceError, load_light_curves

    if args.synthetic is not None:
        from hub_datasets import make_fewshot_splits

        table = load_light_curves(synthetic=args.synthetic, survey=args.survey, seed=args.seed,
                                  class_proportions=args.class_proportions)["train"]
        splits = make_fewshot_splits(table, n_folds=args.fold + 1, test_per_class=args.test_per_class,
                                     samples_per_class=(args.spc,), seed=args.seed)
        return splits[(args.fold, args.spc)]
    splits = load_light_curves(args.dataset)
    missing = [s for s in ("train", "validation", "test") if s not in splits]
    if "validation" in missing and "val" in splits:
        splits["validation"] = splits.pop("val")
        missing.remove("validation")
    if missing:
        raise DataSourceError(f"{args.dataset} lacks split(s) {missing} (has {sorted(splits)})")
    return splits


def _ssl_arguments(args: argparse.Namespace, output_dir: Path) -> argparse.Namespace:
    from astromer_train.pretrain import build_parser as pretrain_parser

    argv = [
        "--synthetic", "1",  # placeholder source; the cleaned curves are passed in directly
        "--init-from", str(args.model), "--windows", "sequential", "--output-dir", str(output_dir), "--overwrite",
        "--learning-rate", str(args.ssl_learning_rate), "--batch-size", str(args.ssl_batch_size),
        "--epochs", str(args.ssl_epochs), "--patience", str(args.ssl_patience), "--seed", str(args.seed),
        "--attn-implementation", args.attn_implementation, "--run-name", "ssl", "--save-total-limit", "1",
    ]
    if args.ssl_max_steps:
        argv += ["--max-steps", str(args.ssl_max_steps)]
    if args.mask_token is not None:
        argv.append("--mask-token" if args.mask_token else "--no-mask-token")
    if args.mixed_precision:
        argv += ["--mixed-precision", args.mixed_precision]
    if args.quiet:
        argv.append("--quiet")
    return pretrain_parser().parse_args(argv)


def run_finetune(args: argparse.Namespace, splits, output_dir: Path) -> dict[str, Any]:
    """Steps 1–3 on ``splits`` (train/validation/test); writes ``output_dir`` and returns the metrics."""
    import torch
    from transformers import EarlyStoppingCallback, Trainer
    from transformers.utils import logging as hf_logging

    from astromer_train.cli_utils import reset_accelerate_state, write_json_atomic
    from astromer_train.data import CleanedCurves, PaddingCollator, WindowDataset, windows_table
    from astromer_train.pretrain import PretrainingData, run_pretraining
    from modeling_astromer import AstromerFeatureExtractor, AstromerForSequenceClassification

    label_names = _label_names(splits)
    model_source = Path(args.model)
    from modeling_astromer import AstromerConfig

    window_size = AstromerConfig.from_pretrained(model_source).window_size
    fe = AstromerFeatureExtractor(window_size=window_size)
    curves = {name: CleanedCurves.from_table(splits[name], fe, with_labels=True, name=f"split {name!r}")
              for name in ("train", "validation", "test")}

    ssl_summary: dict[str, Any] | None = None
    encoder_dir = model_source
    if not args.skip_ssl:
        ssl_args = _ssl_arguments(args, output_dir / "ssl_model")
        ssl_summary = run_pretraining(ssl_args, PretrainingData(curves["train"], curves["validation"]),
                                      end_training=False)
        encoder_dir = output_dir / "ssl_model"
        reset_accelerate_state()

    tables = {name: windows_table(WindowDataset(c, "sequential", window_size)) for name, c in curves.items()}
    model = AstromerForSequenceClassification.from_pretrained(
        encoder_dir,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
        classifier_pooling=args.pooling,
        freeze_encoder=not args.train_encoder,
    )
    model.set_attn_implementation(args.attn_implementation)
    if args.quiet:
        hf_logging.disable_progress_bar()
    training_args = _training_arguments(args, output_dir)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tables["train"],
        eval_dataset=tables["validation"],
        data_collator=PaddingCollator(window_size),
        compute_metrics=_compute_trainer_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=args.patience)],
    )
    train_result = trainer.train()
    classifier_dir = output_dir / "classifier"
    trainer.save_model(str(classifier_dir))
    if trainer.is_world_process_zero():
        fe.save_pretrained(classifier_dir)

    results: dict[str, Any] = {"label_names": label_names}
    for split in ("validation", "test"):
        prediction = trainer.predict(tables[split])
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        probabilities = torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float64)), dim=-1).numpy()
        window_labels = np.asarray(tables[split]["label"])
        curve_predictions, curve_labels = per_light_curve(
            probabilities, np.asarray(tables[split]["light_curve"]), window_labels
        )
        results[split] = {
            "window": classification_metrics(window_labels, probabilities.argmax(axis=1), label_names),
            "light_curve": classification_metrics(curve_labels, curve_predictions, label_names),
        }
    results["classifier"] = {
        "epochs_trained": float(trainer.state.epoch or 0),
        "global_step": int(trainer.state.global_step),
        "train_loss": float(train_result.training_loss),
        "log_history": trainer.state.log_history,
    }
    results["ssl"] = ssl_summary
    results["data"] = {name: {"light_curves": len(c), "windows": len(tables[name]), "dropped_short": c.n_dropped}
                       for name, c in curves.items()}
    if trainer.is_world_process_zero():
        write_json_atomic(output_dir / "metrics.json", results)
    reset_accelerate_state()
    return results


def _training_arguments(args: argparse.Namespace, output_dir: Path):
    import torch
    from transformers import TrainingArguments

    extra: dict[str, Any] = {}
    if args.mixed_precision == "bf16":
        extra["bf16"] = True
    elif args.mixed_precision == "fp16":
        extra["fp16"] = True
    return TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        remove_unused_columns=False,  # the collator needs the raw ragged columns
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-7,  # Keras Adam defaults (the official classifier)
        lr_scheduler_type="constant",
        num_train_epochs=args.epochs,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="epoch",
        load_best_model_at_end=False,  # the paper evaluates the final-epoch classifier
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=args.dataloader_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=args.quiet,
        label_names=["labels"],
        **extra,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``astromer finetune``); returns the exit status."""
    from astromer_train.cli_utils import (
        UsageError,
        clear_output_dir,
        configure_process,
        prepare_output_dir,
        usage_error,
    )
    from astromer_train.data import DataSourceError
    from hub_datasets.folds import FoldError

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_process()
    try:
        validate_args(args)
        output_dir = prepare_output_dir(args.output_dir, args.overwrite)
        if args.overwrite:
            clear_output_dir(output_dir)
        splits = load_split(args)
        results = run_finetune(args, splits, output_dir)
    except (UsageError, DataSourceError, FoldError) as exc:
        return usage_error(parser, exc)
    test = results["test"]
    logger.info("test macro-F1: %.4f per window, %.4f per light curve (%s)", test["window"]["f1_macro"],
                test["light_curve"]["f1_macro"], output_dir / "metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
