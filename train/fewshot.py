"""The few-shot evaluation table of the Astromer papers: folds × samples per class.

For every fold ``k`` and SPC ``n``, :func:`run_evaluation` runs the fine-tuning protocol of
:mod:`astromer_train.finetuning` (continued self-supervised training, then the frozen-encoder skip/γ classifier with
``Trainer``) and collects the test macro-F1, then reports **mean ± population std** (``np.std``, as the paper) over
the folds, per window (the paper's metric) and per light curve, in the layout of the paper's table (one row per
dataset and SPC).

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
from astromer_train.configuration import EvaluationConfig
from astromer_train.data import DataSourceError, load_light_curves
from astromer_train.finetuning import finetune_split
from hub_datasets import make_fewshot_splits
from hub_datasets.atomic import write_json_atomic, write_text_atomic

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


def markdown_table(dataset_name: str, summary: dict[str, dict[str, dict[str, float]]], model_name: str,
                   pooling: str) -> str:
    """The paper's layout: one row per (dataset, SPC), test macro-F1 as ``mean ± std`` over folds."""
    lines = [
        f"Test macro-F1, mean ± std over folds ({model_name} + {pooling} classifier).",
        "",
        "| dataset | SPC | macro-F1 (windows) | macro-F1 (light curves) | folds |",
        "|---|---|---|---|---|",
    ]
    for spc, levels in summary.items():
        w, c = levels["window"], levels["light_curve"]
        lines.append(f"| {dataset_name} | {spc} | {w['mean']:.4f} ± {w['std']:.4f} | "
                     f"{c['mean']:.4f} ± {c['std']:.4f} | {w['n_folds']} |")
    return "\n".join(lines) + "\n"


def _run_record(fold: int, spc: int, metrics: dict[str, Any]) -> dict[str, Any]:
    test = metrics["test"]
    return {
        "fold": fold,
        "spc": spc,
        "f1_macro_window": test["window"]["f1_macro"],
        "f1_macro_light_curve": test["light_curve"]["f1_macro"],
        "accuracy_window": test["window"]["accuracy"],
        "n_test_windows": test["window"]["n"],
        "n_test_light_curves": test["light_curve"]["n"],
    }


def run_evaluation(config: EvaluationConfig) -> FewShotTable:
    """Fine-tune on every fold and SPC of ``config``; writes ``results.json``, ``results.md`` and the runs'
    folders to ``config.output_dir``."""
    output_dir = prepare_output_dir(config.output_dir, config.overwrite)
    if config.overwrite:
        clear_output_dir(output_dir)
    runs = []
    for fold, spc, splits in iter_splits(config):
        logger.info("fold %d, SPC %d", fold, spc)
        metrics = finetune_split(config, splits, output_dir / f"fold{fold}_spc{spc}")
        runs.append(_run_record(fold, spc, metrics))
    summary = summarise(runs, config.spc)
    name = config.dataset_name or (
        f"synthetic {config.survey}" if config.synthetic else Path(config.folds_dir or config.dataset).name
    )
    results = {
        "dataset": name, "model": str(config.model), "pooling": config.pooling, "metric": "test macro-F1",
        "std": "population (numpy.std, ddof=0)", "runs": runs, "summary": summary,
    }
    table = markdown_table(name, summary, Path(config.model).name, config.pooling)
    write_json_atomic(output_dir / "results.json", results)
    write_text_atomic(output_dir / "results.md", table)
    return FewShotTable(results, table)


__all__ = ["FewShotTable", "iter_splits", "markdown_table", "run_evaluation", "summarise"]
