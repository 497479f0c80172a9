"""The fine-tuning protocol for one few-shot split, with Accelerate and ``Trainer``.

1. **Continued self-supervised training** (optional, ``skip_ssl`` leaves it out) of the pretrained encoder on the
   split's training light curves (sequential windows, the official masking and weighted loss, all layers trainable,
   Adam, early stopping on the validation curves' RMSE): :func:`~astromer_train.pretraining.run_pretraining` from the
   pretrained model.
2. **Classifier**, one of
   - ``classifier="mlp"``: ``AstromerForSequenceClassification`` (γ-weighted skip embedding + the 1024/512/256 MLP)
     trained with ``transformers.Trainer`` on sequential windows (ragged windows padded by ``PaddingCollator``,
     cross-entropy, early stopping on the validation loss). The encoder is frozen (run in eval mode) unless
     ``train_encoder``. ``best_on_validation`` keeps the weights of the epoch with the lowest validation loss; the
     paper kept the final epoch's. Every ``TrainingArguments`` field can be overridden (``trainer_arguments``).
   - ``classifier="linear"``: a logistic-regression probe (scikit-learn, standardised inputs) on the frozen
     encoder's window embeddings (``pooling``), its inverse regularisation ``C`` chosen by cross-validation on the
     training curves alone (folds grouped by light curve).
3. **Metrics** (the ``evaluate`` module ``astromer_train/metrics/light_curve_classification``, loaded by path):
   macro-F1, accuracy and the per-class report on the validation and test splits, per **window** (the paper's
   metric) and per **light curve** (class probabilities averaged over a curve's windows).

Outputs in the output folder: ``ssl_model/`` (the adapted encoder + reconstruction head, when step 1 runs),
``classifier/`` (the ``Trainer``'s model and the feature extractor, or ``linear_probe.json``), ``metrics.json``.

Both stages run in one process. Accelerate keeps one state per process; what the second stage needs from the
first is only that the mixed-precision setting agrees (both stages take ``mixed_precision``; unset, both read the
launcher's setting) and that the process group is still alive (the first stage runs with ``end_training=False``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import PartialState
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import EarlyStoppingCallback, EvalPrediction, PrinterCallback, Trainer, TrainingArguments
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
from astromer_train.metrics import load_metric
from astromer_train.pretraining import run_pretraining
from hub_datasets import make_fewshot_splits
from hub_datasets.atomic import write_json_atomic, write_text_atomic
from modeling_astromer import (
    AstromerConfig,
    AstromerFeatureExtractor,
    AstromerForSequenceClassification,
    AstromerModel,
)

logger = logging.getLogger("astromer_train.finetuning")
SPLITS = ("train", "validation", "test")


# ------------------------------------------------------------------------------------------------------ metrics
def classification_metrics(labels: np.ndarray, predictions: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    """Macro-F1 over every class of ``label_names`` (the paper's metric), accuracy, ``n`` and the per-class report,
    from the package's ``evaluate`` module (:mod:`astromer_train.metrics`)."""
    return load_metric().compute(predictions=np.asarray(predictions).tolist(),
                                 references=np.asarray(labels).tolist(), label_names=list(label_names))


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
    scores = load_metric().compute(predictions=predictions.tolist(), references=labels.tolist())
    return {"f1_macro": scores["f1_macro"], "accuracy": scores["accuracy"]}


def split_metrics(probabilities: np.ndarray, table: datasets.Dataset, names: Sequence[str]) -> dict[str, Any]:
    """Window and light-curve metrics of `(n_windows, n_classes)` class probabilities for the windows of
    ``table`` (its ``label`` and ``light_curve`` columns)."""
    window_labels = np.asarray(table["label"])
    curve_predictions, curve_labels = per_light_curve(probabilities, np.asarray(table["light_curve"]), window_labels)
    return {
        "window": classification_metrics(window_labels, probabilities.argmax(axis=1), names),
        "light_curve": classification_metrics(curve_labels, curve_predictions, names),
    }


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
    """The ``DatasetDict(train, [validation,] test)`` of ``config``: its ``dataset`` folder, or the (``fold``,
    ``spc``) split drawn from ``synthetic`` labelled curves."""
    if config.synthetic is not None:
        table = load_light_curves(synthetic=config.synthetic, survey=config.survey, seed=config.seed,
                                  class_proportions=config.class_proportions)["train"]
        splits = make_fewshot_splits(table, n_folds=config.fold + 1, test_per_class=config.test_per_class,
                                     samples_per_class=(config.spc,), seed=config.seed)
        return splits[(config.fold, config.spc)]
    splits = load_light_curves(config.dataset)
    if "validation" not in splits and "val" in splits:
        splits["validation"] = splits.pop("val")
    missing = [s for s in ("train", "test") if s not in splits]
    if missing:
        raise DataSourceError(f"{config.dataset} lacks split(s) {missing} (has {sorted(splits)}; the validation "
                              "split is optional)")
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


def training_arguments(options: FinetuningOptions, output_dir: Path, has_validation: bool = True) -> TrainingArguments:
    """The classifier's ``Trainer`` settings: the official classifier's Adam (Keras defaults), a constant learning
    rate, evaluation every epoch, the best-validation (``best_on_validation``) or final-epoch weights, on the device
    of the continued pretraining (``TrainingArguments`` refuses bf16 without a GPU unless told that the run is on
    the CPU); then ``options.trainer_arguments`` override any of them. The model is written to
    ``output_dir/classifier`` (the ``Trainer``'s ``output_dir``, so ``push_to_hub`` pushes it); the epoch
    checkpoints that best-validation selection needs are removed after training."""
    precision: dict[str, Any] = {}
    if options.mixed_precision == "bf16":
        precision["bf16"] = True
    elif options.mixed_precision == "fp16":
        precision["fp16"] = True
    best = options.best_on_validation and has_validation
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir / "classifier"),
        remove_unused_columns=False,  # the collator needs the raw ragged columns
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=max(options.batch_size, 64),
        learning_rate=options.learning_rate,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-7,  # Keras Adam defaults (the official classifier)
        lr_scheduler_type="constant",
        num_train_epochs=options.epochs,
        eval_strategy="epoch" if has_validation else "no",
        save_strategy="epoch" if best else "no",
        save_total_limit=1 if best else None,
        save_only_model=True,
        logging_strategy="epoch",
        load_best_model_at_end=best,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to="none",
        seed=options.seed,
        data_seed=options.seed,
        dataloader_num_workers=options.dataloader_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=options.quiet,
        log_level="error" if options.quiet else "passive",
        label_names=["labels"],
        use_cpu=PartialState().device.type == "cpu",
        **precision,
    )
    settings.update(options.trainer_arguments)
    return TrainingArguments(**settings)


def _quiet_transformers(options: FinetuningOptions) -> None:
    """With ``quiet``: no weight-loading progress bars or reports (a new head's weights are reported as missing:
    expected, not news)."""
    if options.quiet:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _remove_checkpoints(folder: Path) -> None:
    """The epoch checkpoints of best-validation selection, once the best weights are loaded."""
    for checkpoint in folder.glob("checkpoint-*"):
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint)


def _best_step(trainer: Trainer) -> int | None:
    checkpoint = trainer.state.best_model_checkpoint
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None


def _mlp_classifier(options: FinetuningOptions, encoder_dir: Path, tables: dict[str, datasets.Dataset],
                    names: list[str], fe: AstromerFeatureExtractor, output_dir: Path) -> tuple[dict, dict]:
    """The paper's head with ``Trainer``; returns ``(probabilities by split, classifier summary)``."""
    has_validation = len(tables["validation"]) > 0
    _quiet_transformers(options)
    model = AstromerForSequenceClassification.from_pretrained(
        encoder_dir,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        classifier_pooling=options.pooling,
        freeze_encoder=not options.train_encoder,
    )
    model.set_attn_implementation(options.attn_implementation)
    args = training_arguments(options, output_dir, has_validation)
    callbacks = [EarlyStoppingCallback(early_stopping_patience=options.patience)] if has_validation else []
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tables["train"],
        eval_dataset=tables["validation"] if has_validation else None,
        data_collator=PaddingCollator(fe.window_size),
        compute_metrics=_trainer_metrics,
        callbacks=callbacks,
    )
    if options.quiet:
        trainer.remove_callback(PrinterCallback)
    train_result = trainer.train()
    classifier_dir = Path(args.output_dir)
    best_step = _best_step(trainer)
    _remove_checkpoints(classifier_dir)
    trainer.save_model()
    if trainer.is_world_process_zero():
        fe.save_pretrained(classifier_dir)
    if args.push_to_hub:
        trainer.push_to_hub()
    probabilities = {}
    for split in ("validation", "test"):
        if len(tables[split]):
            logits = np.asarray(_logits(trainer.predict(tables[split]).predictions), dtype=np.float64)
            probabilities[split] = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    summary = {
        "kind": "mlp",
        "best_on_validation": bool(args.load_best_model_at_end),
        "best_step": best_step,
        "epochs_trained": float(trainer.state.epoch or 0),
        "global_step": int(trainer.state.global_step),
        "train_loss": float(train_result.training_loss),
        "log_history": trainer.state.log_history,
    }
    return probabilities, summary


@torch.no_grad()
def window_embeddings(model: AstromerModel, table: datasets.Dataset, pooling: str, window_size: int,
                      batch_size: int = 256) -> np.ndarray:
    """`(n_windows, hidden_size)` float64 embeddings of the windows of a :func:`windows_table`."""
    collate = PaddingCollator(window_size)
    parts = []
    for start in range(0, len(table), batch_size):
        batch = collate([table[i] for i in range(start, min(start + batch_size, len(table)))])
        parts.append(model.embed(batch["magnitudes"], batch["times"], batch["attention_mask"], pooling=pooling))
    return torch.cat(parts).double().numpy() if parts else np.zeros((0, model.config.hidden_size))


def _linear_classifier(options: FinetuningOptions, encoder_dir: Path, tables: dict[str, datasets.Dataset],
                       names: list[str], fe: AstromerFeatureExtractor, output_dir: Path) -> tuple[dict, dict]:
    """The logistic-regression probe; returns ``(probabilities by split, classifier summary)``."""
    _quiet_transformers(options)
    encoder = AstromerModel.from_pretrained(encoder_dir).eval()
    encoder.set_attn_implementation(options.attn_implementation)
    embeddings = {split: window_embeddings(encoder, table, options.pooling, fe.window_size)
                  for split, table in tables.items() if len(table)}
    labels = np.asarray(tables["train"]["label"])
    groups = np.asarray(tables["train"]["light_curve"])
    per_class = np.bincount(labels, minlength=len(names))
    n_splits = int(min(5, per_class[per_class > 0].min()))
    if n_splits < 2:
        raise DataSourceError("the linear probe needs at least 2 training curves of every class")
    folds = StratifiedGroupKFold(n_splits, shuffle=True, random_state=options.seed)
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=np.logspace(-4, 2, 13), cv=list(folds.split(embeddings["train"], labels, groups)),
        scoring="neg_log_loss", max_iter=5000))
    probe.fit(embeddings["train"], labels)
    probabilities = {}
    for split in ("validation", "test"):
        if split in embeddings:
            scores = np.zeros((len(embeddings[split]), len(names)))
            scores[:, probe.classes_] = probe.predict_proba(embeddings[split])
            probabilities[split] = scores
    scaler, regression = probe[0], probe[-1]
    chosen_c = float(np.atleast_1d(regression.C_)[0])
    classifier_dir = output_dir / "classifier"
    classifier_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(classifier_dir / "linear_probe.json", json.dumps({
        "encoder": str(encoder_dir), "pooling": options.pooling, "label_names": names, "C": chosen_c,
        "classes": regression.classes_.tolist(), "coef": regression.coef_.tolist(),
        "intercept": regression.intercept_.tolist(), "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
    }) + "\n")
    return probabilities, {"kind": "linear", "C": chosen_c, "cv_folds": n_splits}


def finetune_split(options: FinetuningOptions, splits: datasets.DatasetDict, output_dir: Path) -> dict[str, Any]:
    """Steps 1-3 on ``splits`` (train/validation/test; the validation split may be empty or missing); writes
    ``output_dir`` and returns the metrics (also in ``metrics.json``)."""
    if "validation" not in splits:
        splits = datasets.DatasetDict({**splits, "validation": splits["train"].select([])})
    names = label_names(splits)
    window_size = AstromerConfig.from_pretrained(options.model).window_size
    fe = AstromerFeatureExtractor(window_size=window_size)
    curves = {name: CleanedCurves.from_table(splits[name], fe, with_labels=True, name=f"split {name!r}")
              for name in SPLITS if len(splits[name])}

    ssl_summary: dict[str, Any] | None = None
    encoder_dir = Path(options.model)
    if not options.skip_ssl:
        if "validation" not in curves:
            raise DataSourceError("continued pretraining validates on the validation curves, and this split has "
                                  "none: pass --skip-ssl or give a validation split")
        ssl_config = continued_pretraining_config(
            options, PretrainingData(curves["train"], curves["validation"]), output_dir / "ssl_model"
        )
        ssl_summary = run_pretraining(ssl_config, end_training=False)  # the Trainer stage needs the process group
        encoder_dir = output_dir / "ssl_model"

    tables = {name: windows_table(WindowDataset(curves[name], "sequential", window_size)) if name in curves
              else _empty_windows_table() for name in SPLITS}
    train_classifier = _linear_classifier if options.classifier == "linear" else _mlp_classifier
    probabilities, classifier_summary = train_classifier(options, encoder_dir, tables, names, fe, output_dir)

    results: dict[str, Any] = {"label_names": names}
    for split, scores in probabilities.items():
        results[split] = split_metrics(scores, tables[split], names)
    results["classifier"] = classifier_summary
    results["ssl"] = ssl_summary
    results["data"] = {name: {"light_curves": len(curves[name]) if name in curves else 0,
                              "windows": len(tables[name]),
                              "dropped_short": curves[name].n_dropped if name in curves else 0}
                       for name in SPLITS}
    if PartialState().is_main_process:
        write_json_atomic(output_dir / "metrics.json", results)
    return results


def _empty_windows_table() -> datasets.Dataset:
    features = datasets.Features({
        "magnitudes": datasets.List(datasets.Value("float32")), "times": datasets.List(datasets.Value("float32")),
        "errors": datasets.List(datasets.Value("float32")), "light_curve": datasets.Value("int64"),
        "label": datasets.Value("int64"),
    })
    return datasets.Dataset.from_dict({name: [] for name in features}, features=features)


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
    "split_metrics",
    "training_arguments",
    "window_embeddings",
]
