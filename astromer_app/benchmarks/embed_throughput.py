"""``astromer embed`` throughput and memory on synthetic surveys: end to end against the model alone, packed against
padded, and peak memory as the number of curves grows.

Three parts, all on seeded synthetic light curves (a sinusoid plus noise; times in MJD, errors in (0.01, 0.1)):

1. **Full-length curves** (every window full: 200 to 1,000 observations each), one CSV file per curve, as a user
   would pass a folder. For each model (``--full-models``: the bundled Astromer 1, and the released Astromer 2
   architecture with seeded random weights, ``astromer2``): ``run_embed`` in this process (model loading, reading,
   cleaning, windowing, the model, writing and publishing the Parquet file) and the model alone (the same windows,
   already cut and centred, through the same batch layout), timed round-robin ``--repeats`` times. The ratio is
   end-to-end windows/s over model-only windows/s of the same round; the median ratio is reported.
2. **Short curves** (a survey mix: log-normal lengths around a median of 60 observations, 5 to 1,000), a long-format
   Parquet table, Astromer 2 packed (``astromer_blocked``) against padded to 200 (``--padded``), end to end and
   model alone, round-robin, per precision.
3. **Scaling**: the short-curve mix at ``--sizes`` curves (a long-format Parquet table each), one fresh
   ``astromer embed`` process per size, reporting curves/s, windows/s and the process's peak RSS
   (``ru_maxrss``), and the ratio of the largest size's peak RSS to the one before it. ``--ladder-model`` picks
   the model (``astromer2`` by default; ``tiny``: a 1-layer, 64-wide Astromer 2, when time is short).

The host (CPU model, AMX / AVX-512 bf16 flags), the load average before and after each part and the versions are
printed; on a shared machine, compare ratios within one run, not rates across runs.

    python astromer_app/benchmarks/embed_throughput.py [--full-curves 1000] [--short-curves 4000]
        [--sizes 1000 10000 100000] [--repeats 3] [--precisions fp32 bf16] [--ladder-model astromer2]
        [--ladder-precision bf16] [--parts full short ladder] [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

import modeling_astromer
from astromer_app.embedding import bf16_autocast
from astromer_app.light_curve_files import iter_curve_slots
from astromer_app.survey_embedding import EmbedOptions, load_embedder, run_embed
from astromer_kernels.allocator import keep_freed_memory
from astromer_kernels.host import host_info
from modeling_astromer import AstromerConfig, AstromerFeatureExtractor, AstromerModel

CPU_FLAGS = ("amx_tile", "amx_bf16", "avx512f", "avx512_bf16")  # all among BF16_FLAGS
CHILD = """
import json, resource, sys, time
from astromer_app.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def host() -> dict:
    info = host_info()
    return {"host": socket.gethostname(), "cpu": info.cpu_model, "logical_cpus": info.logical_cpus,
            "flags": {flag: flag in info.flags for flag in CPU_FLAGS}, "torch": info.torch_version,
            "package": modeling_astromer.__version__, "threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)")}


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------------- synthetic data
def lengths_of(mix: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if mix == "full":
        return rng.integers(200, 1001, size=n)
    if mix == "short":
        return np.clip(np.round(np.exp(np.log(60) + 0.6 * rng.standard_normal(n))), 5, 1000).astype(np.int64)
    raise ValueError(mix)


def observations(lengths: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    total = int(lengths.sum())
    start = np.repeat(50_000 + rng.uniform(0, 3000, lengths.size), lengths)
    first = np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    gaps = rng.uniform(0.05, 3.0, total)
    cumulative = np.cumsum(gaps)
    time_ = start + cumulative - cumulative[first] + gaps[first]
    period = np.repeat(rng.uniform(0.3, 30, lengths.size), lengths)
    mag = 15 + 0.4 * np.sin(2 * np.pi * time_ / period) + rng.normal(0, 0.03, total)
    return {"time": time_, "mag": mag, "err": rng.uniform(0.01, 0.1, total)}


def write_csv_folder(folder: Path, lengths: np.ndarray, seed: int) -> None:
    folder.mkdir(parents=True)
    data = observations(lengths, np.random.default_rng(seed))
    ends = np.cumsum(lengths)
    for k, (begin, end) in enumerate(zip(ends - lengths, ends)):
        pd.DataFrame({name: values[begin:end] for name, values in data.items()}).to_csv(
            folder / f"obj{k:07d}.csv", index=False
        )


def write_long_table(path: Path, lengths: np.ndarray, seed: int) -> None:
    data = observations(lengths, np.random.default_rng(seed))
    ids = np.repeat(np.array([f"obj{k:07d}" for k in range(lengths.size)]), lengths)
    pq.write_table(pa.table({"id": ids, **data}), path, row_group_size=1_000_000)


def random_astromer2(folder: Path, **overrides) -> str:
    torch.manual_seed(0)
    AstromerModel(AstromerConfig.astromer2(**overrides)).save_pretrained(folder)
    AstromerFeatureExtractor().save_pretrained(folder)
    return str(folder)


# ------------------------------------------------------------------------------------------------------- timing
def model_only(options: EmbedOptions):
    """A function timing the model alone on every window of ``options.inputs`` (same batch layout as the run)."""
    pipe, embedder = load_embedder(options, torch.device("cpu"))
    records = [slot.load() for slot in iter_curve_slots(options.inputs, options.columns)]
    batch = embedder.extractor.clean_batch([r.table for r in records])
    features = embedder.extractor.window_features(batch, sampling="sequential", padding=False)
    bf16 = options.precision == "bf16"
    if bf16:
        bf16_autocast(pipe)  # the oneDNN linear layers, as the run uses them

    def run() -> tuple[int, float]:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            start = time.perf_counter()
            embedder.embed_windows(features["magnitudes"], features["times"], features["window_length"])
            return len(features["window_length"]), time.perf_counter() - start

    return run, embedder.layout


def end_to_end(options: EmbedOptions) -> tuple[int, int, float]:
    """``(curves, windows, seconds)`` of one in-process ``run_embed``."""
    start = time.perf_counter()
    summary = run_embed(options)
    seconds = time.perf_counter() - start
    table = pq.read_table(options.output, columns=["n_windows"])
    return summary.n_embedded, int(pc.sum(table["n_windows"]).as_py()), seconds


def compare(rows: dict, repeats: int) -> dict:
    """Time ``rows`` (name -> callable returning (windows, seconds)) round-robin; median windows/s per row."""
    rates = {name: [] for name in rows}
    for _ in range(repeats):
        for name, run in rows.items():
            windows, seconds = run()
            rates[name].append(windows / seconds)
    return rates


# -------------------------------------------------------------------------------------------------------- parts
def part_full(args, work: Path, report: dict) -> None:
    lengths = lengths_of("full", args.full_curves, np.random.default_rng(1))
    folder = work / "full_csv"
    write_csv_folder(folder, lengths, seed=1)
    print(f"\n## 1. Full-length curves: {lengths.size} CSV files, {int(lengths.sum())} observations, "
          f"lengths {lengths.min()}-{lengths.max()}")
    for model_name in args.full_models:
        model = random_astromer2(work / "astromer2") if model_name == "astromer2" else model_name
        for precision in args.precisions:
            options = EmbedOptions(inputs=[str(folder)], output=work / "full.parquet", model=model, overwrite=True,
                                   progress=False, precision=precision, batch_size=args.batch_size)
            model_run, layout = model_only(options)
            print(f"{model_name} {precision} ({layout}), {load()} before")
            e2e_rates, model_rates, ratios = [], [], []
            for _ in range(args.repeats):
                windows, seconds = model_run()
                model_rates.append(windows / seconds)
                curves, windows, seconds = end_to_end(options)
                e2e_rates.append(windows / seconds)
                ratios.append(e2e_rates[-1] / model_rates[-1])
                print(f"  round: model-only {model_rates[-1]:.1f} windows/s, end-to-end {e2e_rates[-1]:.1f} windows/s "
                      f"({curves / seconds:.1f} curves/s), ratio {ratios[-1]:.2f}", flush=True)
            row = {"model": model_name, "precision": precision, "layout": layout, "curves": int(lengths.size),
                   "windows": windows, "model_only_windows_per_s": statistics.median(model_rates),
                   "end_to_end_windows_per_s": statistics.median(e2e_rates),
                   "end_to_end_curves_per_s": statistics.median(e2e_rates) * lengths.size / windows,
                   "ratio_median": statistics.median(ratios), "ratios": ratios, "load_after": load()}
            report["full"].append(row)
            print(f"  median: model-only {row['model_only_windows_per_s']:.1f}, end-to-end "
                  f"{row['end_to_end_windows_per_s']:.1f} windows/s, ratio {row['ratio_median']:.2f}; "
                  f"{row['load_after']} after")


def part_short(args, work: Path, report: dict) -> None:
    lengths = lengths_of("short", args.short_curves, np.random.default_rng(2))
    table = work / "short.parquet"
    write_long_table(table, lengths, seed=2)
    windows = int((lengths // 200 + 1).sum())
    useful = lengths.sum() / (windows * 200)
    print(f"\n## 2. Short curves: {lengths.size} curves (median {int(np.median(lengths))} observations), {windows} "
          f"windows, {useful:.0%} of the padded tokens are observations")
    model = random_astromer2(work / "astromer2_short")
    for precision in args.precisions:
        runs, layouts = {}, {}
        for padded in (False, True):
            name = "padded" if padded else "packed"
            options = EmbedOptions(inputs=[str(table)], output=work / f"short_{name}.parquet", model=model,
                                   overwrite=True, progress=False, precision=precision, padded=padded,
                                   batch_size=args.batch_size)
            run, layouts[name] = model_only(options)
            runs[f"{name} model-only"] = run
            runs[f"{name} end-to-end"] = (lambda o=options: end_to_end(o)[1:])
        print(f"Astromer 2 {precision}, {load()} before")
        rates = compare(runs, args.repeats)
        medians = {name: statistics.median(values) for name, values in rates.items()}
        for name, values in rates.items():
            print(f"  {name}: {medians[name]:.1f} windows/s (rounds: {', '.join(f'{v:.1f}' for v in values)})")
        speedup_e2e = medians["packed end-to-end"] / medians["padded end-to-end"]
        speedup_model = medians["packed model-only"] / medians["padded model-only"]
        print(f"  packed / padded: {speedup_e2e:.2f}x end to end, {speedup_model:.2f}x model only; {load()} after")
        report["short"].append({"precision": precision, "layouts": layouts, "curves": int(lengths.size),
                                "windows": windows, "useful_token_share": float(useful), "rates": rates,
                                "medians": medians, "speedup_end_to_end": speedup_e2e,
                                "speedup_model_only": speedup_model, "load_after": load()})


def part_ladder(args, work: Path, report: dict) -> None:
    if args.ladder_model == "tiny":
        model = random_astromer2(work / "tiny", num_hidden_layers=1, hidden_size=64, num_attention_heads=2,
                                 intermediate_size=128)
    elif args.ladder_model == "astromer2":
        model = random_astromer2(work / "astromer2_ladder")
    else:
        model = args.ladder_model
    print(f"\n## 3. Scaling: short-curve mix, {args.ladder_model}, {args.ladder_precision}, one process per size")
    for size in args.sizes:
        lengths = lengths_of("short", size, np.random.default_rng(3))
        table = work / f"ladder_{size}.parquet"
        write_long_table(table, lengths, seed=3)
        output = work / f"ladder_{size}_embeddings.parquet"
        before = load()
        result = subprocess.run(
            [sys.executable, "-c", CHILD, "embed", str(table), "-o", str(output), "-q", "--model", model,
             "--precision", args.ladder_precision, "--overwrite", "--batch-size", str(args.batch_size)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        child = json.loads(result.stdout.strip().splitlines()[-1])
        windows = int(pc.sum(pq.read_table(output, columns=["n_windows"])["n_windows"]).as_py())
        row = {"curves": size, "windows": windows, "seconds": child["seconds"],
               "curves_per_s": size / child["seconds"], "windows_per_s": windows / child["seconds"],
               "max_rss_mib": child["max_rss_mib"], "load_before": before, "load_after": load()}
        report["ladder"].append(row)
        print(f"  {size} curves, {windows} windows: {child['seconds']:.1f} s, {row['curves_per_s']:.1f} curves/s, "
              f"{row['windows_per_s']:.1f} windows/s, peak RSS {row['max_rss_mib']:.0f} MiB ({before} before, "
              f"{row['load_after']} after)", flush=True)
        table.unlink()
        output.unlink()
    if len(report["ladder"]) >= 2:
        last, previous = report["ladder"][-1], report["ladder"][-2]
        ratio = last["max_rss_mib"] / previous["max_rss_mib"]
        report["rss_ratio"] = ratio
        print(f"  peak RSS at {last['curves']} curves / at {previous['curves']}: {ratio:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=("full", "short", "ladder"), default=["full", "short", "ladder"])
    parser.add_argument("--full-curves", type=int, default=1000)
    parser.add_argument("--full-models", nargs="+", default=["astromer1-macho", "astromer2"])
    parser.add_argument("--short-curves", type=int, default=4000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ladder-model", default="astromer2", help="astromer2, tiny, or a model name/folder")
    parser.add_argument("--ladder-precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--workdir", help="folder for the synthetic inputs (default: a temporary folder)")
    parser.add_argument("--json", help="write the report as JSON here")
    args = parser.parse_args(argv)
    keep_freed_memory()
    with contextlib.ExitStack() as stack:
        work = Path(args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="embed_throughput_")))
        work.mkdir(parents=True, exist_ok=True)
        report = {"host": host(), "argv": sys.argv[1:], "full": [], "short": [], "ladder": []}
        print("# astromer embed throughput")
        print(json.dumps(report["host"]))
        print(load())
        if "full" in args.parts:
            part_full(args, work, report)
        if "short" in args.parts:
            part_short(args, work, report)
        if "ladder" in args.parts:
            part_ladder(args, work, report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
