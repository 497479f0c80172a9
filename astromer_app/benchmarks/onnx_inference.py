"""Embedding windows/s: ONNX Runtime (fp32) against this package's PyTorch paths, same weights, same batch.

Rows, timed round-robin in one process (one batch of each per round, after a warm-up round), each with
``--threads`` threads (2 by default):

* ``onnxruntime fp32``: the file ``astromer export onnx`` writes (light-curve convention, output ``mean``) in an
  ``onnxruntime.InferenceSession`` (CPU provider, all graph optimisations, ``--threads`` intra-op threads, sequential
  execution); the baseline of the ratios;
* ``torch sdpa fp32`` and ``torch sdpa bf16``: ``AstromerModel.embed(pooling="mean")`` under
  ``torch.inference_mode``, the latter under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* ``torch astromer_blocked + oneDNN linears bf16``: the fastest CPU configuration the package offers
  (``attn_implementation="astromer_blocked"`` + ``astromer_kernels.use_onednn_linears`` under bf16 autocast); not
  for Astromer 1, which needs ``sdpa`` or ``eager``.

Model: the released Astromer 2 architecture with seeded random weights (the timing does not depend on the values),
or ``--model`` (a bundled name or model folder). Batch: the first ``--batch-size`` windows of seeded synthetic
MACHO-like light curves, cut and centred by the feature extractor (the share of real observations is printed). The
output lists the host (name, CPU model, AMX / AVX-512 bf16 flags), the load average before and after, versions, the
windows/s of each row (median over ``--repeats`` rounds, with the range), its ratio to ONNX Runtime, and its max
|Δ| against ``torch sdpa fp32`` on the same batch.

On a machine busy with other processes, PyTorch's OpenMP threads spin while they wait for each other by default, and
a descheduled thread stalls the other: ``OMP_WAIT_POLICY=PASSIVE`` (set before Python starts) lets them sleep instead.
ONNX Runtime's own thread pool is not affected. The policy in force is printed.

    python astromer_app/benchmarks/onnx_inference.py [--batch-size 128] [--repeats 5] [--threads 2]
                                                     [--model astromer1-macho] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from astromer_app.embedding import quiet_transformers
from astromer_app.onnx_export import CONVENTIONS, export_onnx
from astromer_app.onnx_parity import synthetic_curves
from astromer_kernels.allocator import keep_freed_memory
from astromer_kernels.cpu_linear import use_onednn_linears
from astromer_kernels.host import host_info
from modeling_astromer import AstromerConfig, AstromerFeatureExtractor, AstromerModel, resolve_model

CPU_FLAGS = ("amx_tile", "amx_bf16", "avx512f", "avx512_bf16")


def host_description() -> dict:
    """Host name, CPU model, the bf16-relevant CPU flags present, logical CPUs."""
    info = host_info()
    return {
        "host": socket.gethostname(),
        "cpu": info.cpu_model,
        "flags": [flag for flag in CPU_FLAGS if flag in info.flags],
        "missing_flags": [flag for flag in CPU_FLAGS if flag not in info.flags],
        "logical_cpus": info.logical_cpus,
    }


def benchmark_windows(batch_size: int, window_size: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`batch_size` windows `(B, W)` of synthetic MACHO-like curves: float32 magnitudes, times, int64 mask."""
    extractor = AstromerFeatureExtractor(window_size=window_size)
    n_curves = 8
    while True:
        features = extractor(synthetic_curves(n_curves), return_tensors="np")
        if features["magnitudes"].shape[0] >= batch_size:
            break
        n_curves *= 2
    rows = slice(0, batch_size)
    return (
        np.asarray(features["magnitudes"][rows], dtype=np.float32),
        np.asarray(features["times"][rows], dtype=np.float32),
        np.asarray(features["attention_mask"][rows], dtype=np.int64),
    )


def _random_astromer2(folder: Path) -> str:
    config = AstromerConfig.astromer2()
    torch.manual_seed(0)
    AstromerModel(config).save_pretrained(folder)
    AstromerFeatureExtractor(window_size=config.window_size).save_pretrained(folder)
    return str(folder)


def _torch_row(model_path: str, implementation: str, bf16: bool, onednn: bool, batch) -> Callable[[], np.ndarray]:
    model = AstromerModel.from_pretrained(model_path, attn_implementation=implementation, dtype=torch.float32).eval()
    if onednn:
        use_onednn_linears(model)
    magnitudes, times, mask = (torch.from_numpy(a) for a in batch)

    def run() -> np.ndarray:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return model.embed(magnitudes, times, mask, pooling="mean").float().numpy()

    return run


def _onnxruntime_row(onnx_path: Path, threads: int, batch) -> Callable[[], np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feeds = CONVENTIONS["light-curve"].feeds(*batch)
    return lambda: session.run(["mean"], feeds)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128, help="windows per batch (default 128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every row (default 2)")
    parser.add_argument("--model", help="bundled model name or model folder (default: random-weight Astromer 2)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the interpreter is for tests, not timing")
    import onnxruntime

    allocator = keep_freed_memory()
    quiet_transformers()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    host = host_description()
    with tempfile.TemporaryDirectory(prefix="onnx-bench-") as work:
        work_dir = Path(work)
        model_path = resolve_model(args.model) if args.model else _random_astromer2(work_dir / "astromer2-random")
        model_name = args.model or "Astromer 2 architecture, seeded random weights"
        onnx_path = work_dir / "model.onnx"
        export_onnx(model_path, onnx_path, outputs=("mean",), check=False)
        config = AstromerConfig.from_pretrained(model_path)
        batch = benchmark_windows(args.batch_size, config.window_size)
        is_astromer1 = config.attention_bias_mode == "a1_query_key_bias"

        rows: dict[str, Callable[[], np.ndarray]] = {
            "onnxruntime fp32": _onnxruntime_row(onnx_path, args.threads, batch),
            "torch sdpa fp32": _torch_row(model_path, "sdpa", False, False, batch),
            "torch sdpa bf16": _torch_row(model_path, "sdpa", True, False, batch),
        }
        if not is_astromer1:
            rows["torch astromer_blocked + oneDNN linears bf16"] = _torch_row(
                model_path, "astromer_blocked", True, True, batch
            )
        outputs = {name: run() for name, run in rows.items()}  # warm-up round
        seconds: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.repeats):
            for name, run in rows.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
    load_after = os.getloadavg()

    reference = outputs["torch sdpa fp32"]
    baseline = args.batch_size / statistics.median(seconds["onnxruntime fp32"])
    results = []
    for name in rows:
        rates = [args.batch_size / s for s in seconds[name]]
        rate = args.batch_size / statistics.median(seconds[name])
        results.append({
            "row": name,
            "windows_per_s": rate,
            "min_windows_per_s": min(rates),
            "max_windows_per_s": max(rates),
            "ratio_to_onnxruntime": rate / baseline,
            "max_abs_diff_vs_torch_sdpa_fp32": float(np.abs(outputs[name] - reference).max()),
        })

    fill = float(batch[2].mean())
    print(f"host {host['host']}: {host['cpu']}, {host['logical_cpus']} logical CPUs; flags present: "
          f"{', '.join(host['flags']) or 'none'}; absent: {', '.join(host['missing_flags']) or 'none'}")
    print(f"load average (1, 5, 15 min) before {', '.join(f'{x:.2f}' for x in load_before)}; after "
          f"{', '.join(f'{x:.2f}' for x in load_after)}")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads per row, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, {allocator}")
    print(f"model: {model_name}; batch {args.batch_size} windows x {config.window_size} ({fill:.1%} real "
          f"observations); output: masked mean of the last block; median of {args.repeats} round-robin rounds")
    print("| path | windows/s | range | x ONNX Runtime | max abs diff vs torch sdpa fp32 |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['windows_per_s']:.1f} | {r['min_windows_per_s']:.1f}-{r['max_windows_per_s']:.1f} "
              f"| {r['ratio_to_onnxruntime']:.2f} | {r['max_abs_diff_vs_torch_sdpa_fp32']:.1e} |")
    if args.json:
        report = {"host": host, "load_before": load_before, "load_after": load_after, "model": model_name,
                  "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                  "batch_size": args.batch_size, "threads": args.threads, "repeats": args.repeats,
                  "real_observation_share": fill, "torch": torch.__version__,
                  "onnxruntime": onnxruntime.__version__, "rows": results}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
