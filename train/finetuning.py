"""The paper's fine-tuning protocol for one few-shot split, with Accelerate and ``Trainer``.

1. **Continued self-supervised training** of the pretrained encoder on the split's training light curves
   (sequential windows, the official masking and weighted loss, all layers trainable, Adam lr 1e-5, early stopping
   on the validation curves' RMSE): :func:`~astromer_train.pretraining.run_pretraining` from the pretrained model.
2. **Classifier**: ``AstromerForSequenceClassification`` (γ-weighted skip embedding + the 1024/512/256 MLP) on the
   **frozen** encoder (run in eval mode), trained with ``transformers.Trainer`` on sequential windows: ragged windows
   padded by ``PaddingCollator``, ``remove_unused_columns=False``, cross-entropy, early stopping on the validation
   loss, and the **final-epoch** weights kept (``load_best_model_at_end=False``), as the paper does.
3. **Metrics** (scikit-learn): macro-F1, accuracy and the per-class report on the test split, per **window** (the
   paper's metric) and per **light curve** (class probabilities averaged over a curve's windows).

Outputs in the output folder: ``ssl_model/`` (the adapted encoder + reconstruction head), ``classifier/``
(``save_model`` of the classifier and the feature extractor), ``metrics.json``.

Both stages run in one process. Accelerate keeps one state per process; what the second stage needs from the
first is only that the mixed-precision setting agrees (both stages take ``mixed_precision``; unset, both read the
launcher's setting) and that the process group is still alive (the first stage runs with ``end_training=False``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import PartialState
from sklearn.metrics import accuracy_score, classification_report, f1_score
from transformers import EarlyStoppingCallback, EvalPrediction, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from astromer_train.cli_utils import clear_output_dir, prepare_output_dir
from astromer_train.configuration import (
    FinetuningConfig,
    FinetuningOptions,
    PretrainingConfig,
    PretrainingData,
)
from astromer_train.data import (
    CleanedCurves,
    DataSourceError,
    PaddingCollator,
    WindowDataset,
    load_light_curves,
    windows_table,
)
from astromer_train.pretraining import run_pretraining
from hub_datasets import make_fewshot_splits
from hub_datasets.atomic import write_json_atomic
from modeling_astromer import AstromerConfig, AstromerFeatureExtractor, AstromerForSequenceClassification

logger = logging.getLogger("astromer_train.finetuning")
SPLITS = ("train", "validation", "test")


# ------------------------------------------------------------------------------------------------------ metrics
def classification_metrics(labels: np.ndarray, predictions: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    """Macro-F1 (sklearn ``f1_score(average="macro")``, the paper's metric), accuracy and the per-class report."""
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


def _logits(predictions: np.ndarray | tuple) -> np.ndarray:
    return predictions[0] if isinstance(predictions, tuple) else predictions


def _trainer_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    predictions = np.asarray(_logits(eval_prediction.predictions)).argmax(axis=-1)
    labels = np.asarray(eval_prediction.label_ids)
    return {"f1_macro": float(f1_score(labels, predictions, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(labels, predictions))}


# --------------------------------------------------------------------------------------------------------- data
def label_names(splits: datasets.DatasetDict) -> list[str]:
    """The class names: those of a ``ClassLabel`` column, else the labels ``0..n-1`` as text."""
    feature = splits["train"].features.get("label")
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted({int(v) for split in splits.values() for v in split["label"]})
    if values != list(range(len(values))):
        raise DataSourceError(f"labels must be 0..n-1 (or a ClassLabel), got {values[:20]}")
    return [str(v) for v in values]


def load_split(config: FinetuningConfig) -> datasets.DatasetDict:
    """The ``DatasetDict(train, validation, test)`` of ``config``: its ``dataset`` folder, or the (``fold``,
    ``spc``) split drawn from ``synthetic`` labelled curves."""
    if config.synthetic is not None:
        table = load_light_curves(synthetic=config.synthetic, survey=config.survey, seed=config.seed,
                                  class_proportions=config.class_proportions)["train"]
        splits = make_fewshot_splits(table, n_folds=config.fold + 1, test_per_class=config.test_per_class,
                                     samples_per_class=(config.spc,), seed=config.seed)
        return splits[(config.fold, config.spc)]
    splits = load_light_curves(config.dataset)
    missing = [s for s in SPLITS if s not in splits]
    if "validation" in missing and "val" in splits:
        splits["validation"] = splits.pop("val")
        missing.remove("validation")
    if missing:
        raise DataSourceError(f"{config.dataset} lacks split(s) {missing} (has {sorted(splits)})")
    return splits


# ------------------------------------------------------------------------------------------------------- stages
def continued_pretraining_config(options: FinetuningOptions, curves: PretrainingData,
                                 output_dir: Path) -> PretrainingConfig:
    """Step 1 as a pretraining run: from ``options.model`` on the split's sequential windows."""
    return PretrainingConfig(
        curves=curves,
        init_from=options.model,
        windows="sequential",
        output_dir=str(output_dir),
        overwrite=True,
        learning_rate=options.ssl_learning_rate,
        batch_size=options.ssl_batch_size,
        epochs=options.ssl_epochs,
        max_steps=options.ssl_max_steps,
        patience=options.ssl_patience,
        seed=options.seed,
        attn_implementation=options.attn_implementation,
        mask_token=options.mask_token,
        mixed_precision=options.mixed_precision,
        run_name="ssl",
        save_total_limit=1,
        quiet=options.quiet,
    )


def training_arguments(options: FinetuningOptions, output_dir: Path) -> TrainingArguments:
    """The classifier's ``Trainer`` settings: the official classifier's Adam (Keras defaults), a constant learning
    rate, evaluation every epoch and the final-epoch weights, on the device of the continued pretraining
    (``TrainingArguments`` refuses bf16 without a GPU unless told that the run is on the CPU)."""
    precision: dict[str, Any] = {}
    if options.mixed_precision == "bf16":
        precision["bf16"] = True
    elif options.mixed_precision == "fp16":
        precision["fp16"] = True
    return TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        remove_unused_columns=False,  # the collator needs the raw ragged columns
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-7,  # Keras Adam defaults (the official classifier)
        lr_scheduler_type="constant",
        num_train_epochs=options.epochs,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="epoch",
        load_best_model_at_end=False,  # the paper evaluates the final-epoch classifier
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to="none",
        seed=options.seed,
        data_seed=options.seed,
        dataloader_num_workers=options.dataloader_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=options.quiet,
        label_names=["labels"],
        use_cpu=PartialState().device.type == "cpu",
        **precision,
    )


def _test_metrics(trainer: Trainer, table: datasets.Dataset, names: list[str]) -> dict[str, Any]:
    """Window and light-curve metrics of the classifier on one split."""
    prediction = trainer.predict(table)
    logits = np.asarray(_logits(prediction.predictions), dtype=np.float64)
    probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    window_labels = np.asarray(table["label"])
    curve_predictions, curve_labels = per_light_curve(probabilities, np.asarray(table["light_curve"]), window_labels)
    return {
        "window": classification_metrics(window_labels, probabilities.argmax(axis=1), names),
        "light_curve": classification_metrics(curve_labels, curve_predictions, names),
    }


def finetune_split(options: FinetuningOptions, splits: datasets.DatasetDict, output_dir: Path) -> dict[str, Any]:
    """Steps 1-3 on ``splits`` (train/validation/test); writes ``output_dir`` and returns the metrics (also in
    ``metrics.json``)."""
    names = label_names(splits)
    window_size = AstromerConfig.from_pretrained(options.model).window_size
    fe = AstromerFeatureExtractor(window_size=window_size)
    curves = {name: CleanedCurves.from_table(splits[name], fe, with_labels=True, name=f"split {name!r}")
              for name in SPLITS}

    ssl_summary: dict[str, Any] | None = None
    encoder_dir = Path(options.model)
    if not options.skip_ssl:
        ssl_config = continued_pretraining_config(
            options, PretrainingData(curves["train"], curves["validation"]), output_dir / "ssl_model"
        )
        ssl_summary = run_pretraining(ssl_config, end_training=False)  # the Trainer stage needs the process group
        encoder_dir = output_dir / "ssl_model"

    tables = {name: windows_table(WindowDataset(c, "sequential", window_size)) for name, c in curves.items()}
    model = AstromerForSequenceClassification.from_pretrained(
        encoder_dir,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        classifier_pooling=options.pooling,
        freeze_encoder=not options.train_encoder,
    )
    model.set_attn_implementation(options.attn_implementation)
    if options.quiet:
        hf_logging.disable_progress_bar()
    trainer = Trainer(
        model=model,
        args=training_arguments(options, output_dir),
        train_dataset=tables["train"],
        eval_dataset=tables["validation"],
        data_collator=PaddingCollator(window_size),
        compute_metrics=_trainer_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=options.patience)],
    )
    train_result = trainer.train()
    classifier_dir = output_dir / "classifier"
    trainer.save_model(str(classifier_dir))
    if trainer.is_world_process_zero():
        fe.save_pretrained(classifier_dir)

    results: dict[str, Any] = {"label_names": names}
    for split in ("validation", "test"):
        results[split] = _test_metrics(trainer, tables[split], names)
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
    return results


def run_finetuning(config: FinetuningConfig) -> dict[str, Any]:
    """The fine-tuning protocol on ``config``'s split, written to ``config.output_dir``; returns the metrics."""
    output_dir = prepare_output_dir(config.output_dir, config.overwrite)
    if config.overwrite:
        clear_output_dir(output_dir)
    return finetune_split(config, load_split(config), output_dir)


__all__ = [
    "classification_metrics",
    "continued_pretraining_config",
    "finetune_split",
    "label_names",
    "load_split",
    "per_light_curve",
    "run_finetuning",
    "training_arguments",
]
