"""The few-shot evaluation table of the Astromer papers: folds × samples per class.

For every fold ``k`` and SPC ``n``, :func:`run_evaluation` runs the fine-tuning protocol of
:mod:`astromer_train.finetuning` (optional continued self-supervised training, then the chosen classifier) and
collects the test macro-F1, then reports **mean ± population std** (``np.std``, as the paper) over the folds, per
window (the paper's metric) and per light curve, in the layout of the paper's table (one row per dataset and SPC).
A single fold is reported as its value, without a spread. With ``baseline="features"`` the same folds are also
classified by light-curve features + a random forest (:mod:`astromer_train.feature_baseline`, per light curve),
and the table shows both side by side.

The folds come from ``fold{k}_spc{n}/`` folders (as written by ``astromer folds``) or are drawn from a labelled
dataset or synthetic curves with ``hub_datasets.make_fewshot_splits``.

Outputs in the output folder: ``results.json`` (every run and the summary), ``results.md`` (the table) and one
sub-folder per run (``fold{k}_spc{n}/``, see :mod:`astromer_train.finetuning`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from astromer_train.cli_utils import clear_output_dir, prepare_output_dir
from astromer_train.configuration import EvaluationConfig, FinetuningOptions
from astromer_train.data import CleanedCurves, DataSourceError, load_light_curves
from astromer_train.feature_baseline import FeatureBaseline, FeatureTable
from astromer_train.feature_baseline import describe as describe_baseline
from astromer_train.finetuning import classification_metrics, finetune_split, label_names
from hub_datasets import make_fewshot_splits
from hub_datasets.atomic import write_json_atomic, write_text_atomic
from modeling_astromer import AstromerConfig, AstromerFeatureExtractor

logger = logging.getLogger("astromer_train.fewshot")
LEVELS = ("window", "light_curve")


@dataclass(frozen=True)
class FewShotTable:
    """The outcome of :func:`run_evaluation`: the content of ``results.json`` and the Markdown table."""

    results: dict[str, Any]
    markdown: str


def iter_splits(config: EvaluationConfig) -> Iterator[tuple[int, int, datasets.DatasetDict]]:
    """Yields ``(fold, spc, DatasetDict(train, validation, test))`` in table order."""
    if config.folds_dir is not None:
        for fold in range(config.folds):
            for spc in config.spc:
                yield fold, spc, load_light_curves(str(Path(config.folds_dir) / f"fold{fold}_spc{spc}"))
        return
    if config.synthetic is not None:
        table = load_light_curves(synthetic=config.synthetic, survey=config.survey, seed=config.seed,
                                  class_proportions=config.class_proportions)["train"]
    else:
        splits = load_light_curves(config.dataset)
        if config.split not in splits:
            raise DataSourceError(f"no split {config.split!r} in {config.dataset} (splits: {sorted(splits)})")
        table = splits[config.split]
    folds = make_fewshot_splits(table, n_folds=config.folds, test_per_class=config.test_per_class,
                                samples_per_class=tuple(config.spc), seed=config.seed)
    for fold in range(config.folds):
        for spc in config.spc:
            yield fold, spc, folds[(fold, spc)]


def _spread(values: np.ndarray) -> dict[str, Any]:
    return {"mean": float(values.mean()), "std": float(values.std()) if values.size > 1 else None,
            "n_folds": int(values.size), "values": values.tolist()}


def summarise(runs: list[dict[str, Any]], spcs: Sequence[int]) -> dict[str, dict[str, dict[str, float]]]:
    """``{str(spc): {level: {"mean", "std", "n_folds", "values"}}}`` for the levels ``window`` and
    ``light_curve`` (and ``baseline`` when the runs have it); std is the population std (``np.std``), ``None`` for
    a single fold."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for spc in spcs:
        summary[str(spc)] = {}
        chosen = [r for r in runs if r["spc"] == spc]
        for level in LEVELS:
            summary[str(spc)][level] = _spread(np.array([r[f"f1_macro_{level}"] for r in chosen], dtype=np.float64))
        if chosen and "baseline_f1_macro_light_curve" in chosen[0]:
            summary[str(spc)]["baseline"] = _spread(
                np.array([r["baseline_f1_macro_light_curve"] for r in chosen], dtype=np.float64))
    return summary


def format_spread(stats: dict[str, Any]) -> str:
    """``mean ± std`` over several folds; a single fold is its value alone (a spread over one fold means nothing)."""
    if stats["n_folds"] > 1 and stats.get("std") is not None:
        return f"{stats['mean']:.4f} ± {stats['std']:.4f}"
    return f"{stats['mean']:.4f}"


def describe_recipe(options: FinetuningOptions) -> str:
    """The classification recipe in words, for tables and reports."""
    ssl = "" if options.skip_ssl else f"continued pretraining (lr {options.ssl_learning_rate:g}), then "
    if options.classifier == "linear":
        return f"{ssl}logistic-regression probe on frozen {options.pooling} embeddings"
    encoder = "fine-tuned encoder" if options.train_encoder else "frozen encoder"
    weights = "best-validation" if options.best_on_validation else "final-epoch"
    return f"{ssl}MLP on the {encoder} ({options.pooling} embedding, lr {options.learning_rate:g}, {weights} weights)"


def markdown_table(dataset_name: str, summary: dict[str, dict[str, dict[str, float]]], model_name: str,
                   pooling: str, recipe: str | None = None, baseline_name: str | None = None) -> str:
    """The paper's layout: one row per (dataset, SPC), test macro-F1 as ``mean ± std`` over folds, and the
    baseline's per-light-curve macro-F1 in the same folds when it was run."""
    with_baseline = any("baseline" in levels for levels in summary.values())
    n_folds = {levels["window"]["n_folds"] for levels in summary.values()}
    spread = "mean ± std over folds" if max(n_folds) > 1 else "one fold"
    lines = [
        f"Test macro-F1, {spread} ({model_name} + {recipe or pooling + ' classifier'}).",
        "",
    ]
    header = "| dataset | SPC | Astromer macro-F1 (windows) | Astromer macro-F1 (light curves) |"
    rule = "|---|---|---|---|"
    if with_baseline:
        header += f" {baseline_name or 'baseline'} macro-F1 (light curves) |"
        rule += "---|"
    lines += [header + " folds |", rule + "---|"]
    for spc, levels in summary.items():
        row = f"| {dataset_name} | {spc} | {format_spread(levels['window'])} | {format_spread(levels['light_curve'])} |"
        if with_baseline:
            row += f" {format_spread(levels['baseline'])} |"
        lines.append(row + f" {levels['window']['n_folds']} |")
    return "\n".join(lines) + "\n"


def _run_record(fold: int, spc: int, metrics: dict[str, Any]) -> dict[str, Any]:
    test = metrics["test"]
    record = {
        "fold": fold,
        "spc": spc,
        "f1_macro_window": test["window"]["f1_macro"],
        "f1_macro_light_curve": test["light_curve"]["f1_macro"],
        "accuracy_window": test["window"]["accuracy"],
        "n_test_windows": test["window"]["n"],
        "n_test_light_curves": test["light_curve"]["n"],
        "n_train_light_curves": metrics["data"]["train"]["light_curves"],
        "n_validation_light_curves": metrics["data"]["validation"]["light_curves"],
    }
    if "validation" in metrics:
        record["validation_f1_macro_light_curve"] = metrics["validation"]["light_curve"]["f1_macro"]
    return record


def baseline_split(config: EvaluationConfig, splits: datasets.DatasetDict, features: Any) -> dict[str, Any]:
    """The feature baseline on one split, on the curves as the Astromer classifier sees them (same cleaning):
    per-light-curve metrics of the validation (when present) and test curves."""
    names = label_names(splits)
    fe = AstromerFeatureExtractor(window_size=AstromerConfig.from_pretrained(config.model).window_size)
    curves = {name: CleanedCurves.from_table(splits[name], fe, with_labels=True, name=f"split {name!r}")
              for name in ("train", "validation", "test") if name in splits and len(splits[name])}
    baseline = FeatureBaseline(seed=config.seed, features=features).fit(curves["train"])
    results = {}
    for name in ("validation", "test"):
        if name in curves:
            predictions = baseline.predict_proba(curves[name], len(names)).argmax(axis=1)
            results[name] = classification_metrics(curves[name].labels, predictions, names)
    return results


def run_evaluation(config: EvaluationConfig) -> FewShotTable:
    """Fine-tune on every fold and SPC of ``config`` (and score the baseline in the same folds); writes
    ``results.json``, ``results.md`` and the runs' folders to ``config.output_dir``."""
    output_dir = prepare_output_dir(config.output_dir, config.overwrite)
    if config.overwrite:
        clear_output_dir(output_dir)
    features = FeatureTable() if config.baseline == "features" else None
    runs = []
    for fold, spc, splits in iter_splits(config):
        logger.info("fold %d, SPC %d", fold, spc)
        metrics = finetune_split(config, splits, output_dir / f"fold{fold}_spc{spc}")
        record = _run_record(fold, spc, metrics)
        if features is not None:
            baseline = baseline_split(config, splits, features)
            record["baseline_f1_macro_light_curve"] = baseline["test"]["f1_macro"]
            if "validation" in baseline:
                record["baseline_validation_f1_macro_light_curve"] = baseline["validation"]["f1_macro"]
        runs.append(record)
    summary = summarise(runs, config.spc)
    name = config.dataset_name or (
        f"synthetic {config.survey}" if config.synthetic else Path(config.folds_dir or config.dataset).name
    )
    recipe = describe_recipe(config)
    results = {
        "dataset": name, "model": str(config.model), "pooling": config.pooling, "recipe": recipe,
        "metric": "test macro-F1", "std": "population (numpy.std, ddof=0); null for a single fold",
        "runs": runs, "summary": summary,
    }
    baseline_name = None
    if features is not None:
        baseline_name = "features + RF"
        results["baseline"] = {"name": describe_baseline(), "seed": config.seed}
    table = markdown_table(name, summary, Path(config.model).name, config.pooling, recipe, baseline_name)
    write_json_atomic(output_dir / "results.json", results)
    write_text_atomic(output_dir / "results.md", table)
    return FewShotTable(results, table)


__all__ = ["FewShotTable", "baseline_split", "describe_recipe", "format_spread", "iter_splits", "markdown_table",
           "run_evaluation", "summarise"]
