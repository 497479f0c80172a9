"""Throughput of the data path on one CPU core (a script, not a test).

Measures:
1. building a dataset from each raw layout (``AlcockBuilder.download_and_prepare``): curves/s and observations/s;
2. windows/s from a light-curve dataset to padded batches: ``windows_dataset`` (``Dataset.map``), a
   ``DataLoader`` over the torch-formatted windows (``collate_windows``), and ``LightCurveCollator`` on raw rows;
3. synthetic generation (curves/s).

Target: the padded-batch path must be ≥ 20× what A2 CPU training consumes (≈ 42 windows/s) → ≥ 840 windows/s.

    OMP_NUM_THREADS=1 python hub_datasets/benchmarks/throughput.py --curves 3000
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch

from hub_datasets.bridge import LightCurveCollator, collate_windows, windows_dataset
from hub_datasets.builders import AlcockBuilder
from hub_datasets.raw_layouts import (
    StoredCurve,
    write_parquet_layout,
    write_raw_layout,
    write_tfrecord_layout,
)
from hub_datasets.schema import ALCOCK_CLASSES
from hub_datasets.synthetic import generate_survey

TARGET_WINDOWS_PER_S = 20 * 42


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--curves", type=int, default=3000, help="light curves in the test survey")
    parser.add_argument(
        "--synthetic-curves", type=int, default=20_000, help="curves for the generator timing"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    datasets.disable_progress_bars()

    survey = generate_survey(args.curves, "macho", seed=0)
    n_obs = sum(len(t) for t in survey["time"])
    print(
        f"survey: {args.curves} MACHO-like curves, {n_obs:,} observations (torch threads: {torch.get_num_threads()})"
    )

    with tempfile.TemporaryDirectory() as tmp:
        curves = [
            StoredCurve(
                r["id"],
                np.asarray(r["time"]),
                np.asarray(r["mag"], np.float64),
                np.asarray(r["err"], np.float64),
                ALCOCK_CLASSES[r["label"]],
            )
            for r in survey
        ]
        for layout, writer in (
            ("raw", write_raw_layout),
            ("parquet", write_parquet_layout),
            ("tfrecord", write_tfrecord_layout),
        ):
            root = writer(Path(tmp) / layout, curves)
            builder = AlcockBuilder(data_dir=root.as_uri(), cache_dir=str(Path(tmp) / f"cache_{layout}"))
            _, seconds = _timed(builder.download_and_prepare)
            print(
                f"build from {layout:8s}: {args.curves / seconds:9.0f} curves/s  {n_obs / seconds:12,.0f} obs/s  ({seconds:.2f} s)"
            )

    from modeling_astromer.feature_extraction_astromer import AstromerFeatureExtractor

    fe = AstromerFeatureExtractor()
    windows, seconds = _timed(lambda: windows_dataset(survey, fe))
    print(f"windows_dataset (map)   : {len(windows) / seconds:9.0f} windows/s ({len(windows)} windows)")

    torch_windows = windows.with_format("torch")
    loader = torch.utils.data.DataLoader(
        torch_windows, batch_size=args.batch_size, collate_fn=collate_windows
    )
    n, seconds = _timed(lambda: sum(b["magnitudes"].shape[0] for b in loader))
    print(f"DataLoader+collate_windows: {n / seconds:7.0f} windows/s (padded (B, 200) batches)")

    def sliced() -> int:
        return sum(
            torch_windows[i : i + args.batch_size]["magnitudes"].shape[0]
            for i in range(0, len(windows), args.batch_size)
        )

    n, seconds = _timed(sliced)
    print(f"batched slicing (torch)  : {n / seconds:9.0f} windows/s")

    collator = LightCurveCollator(fe)
    raw_loader = torch.utils.data.DataLoader(survey.with_format("numpy"), batch_size=32, collate_fn=collator)
    n, seconds = _timed(lambda: sum(b["magnitudes"].shape[0] for b in raw_loader))
    print(f"LightCurveCollator (raw) : {n / seconds:9.0f} windows/s")
    print(f"target ≥ {TARGET_WINDOWS_PER_S} windows/s (20 × 42 windows/s A2 CPU step)")

    _, seconds = _timed(lambda: generate_survey(args.synthetic_curves, "macho", seed=1))
    print(
        f"synthetic generator      : {args.synthetic_curves / seconds:9.0f} curves/s ({args.synthetic_curves} in {seconds:.1f} s)"
    )


if __name__ == "__main__":
    main()
