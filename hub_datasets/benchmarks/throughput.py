"""Throughput of the data path on one CPU core (a script, not a test).

Measures:
1. building a dataset from each raw layout (``AlcockBuilder.download_and_prepare``): curves/s and observations/s;
2. windows/s from a light-curve dataset to padded batches: the feature extractor (cleaning, windowing, centring,
   padding) over batches of dataset rows;
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

from hub_datasets.builders import AlcockBuilder
from hub_datasets.raw_layouts import (
    StoredCurve,
    write_parquet_layout,
    write_raw_layout,
    write_tfrecord_layout,
)
from hub_datasets.schema import ALCOCK_CLASSES
from hub_datasets.synthetic import generate_survey
from modeling_astromer.feature_extraction_astromer import AstromerFeatureExtractor

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

    fe = AstromerFeatureExtractor()

    def feature_extractor_batches() -> int:
        n_windows = 0
        for rows in survey.with_format("numpy").iter(batch_size=args.batch_size):
            curves = [{"time": t, "mag": m, "err": e} for t, m, e in zip(rows["time"], rows["mag"], rows["err"])]
            n_windows += fe(curves, return_tensors="pt")["magnitudes"].shape[0]
        return n_windows

    n, seconds = _timed(feature_extractor_batches)
    print(f"feature extractor (rows → padded (B, 200) windows): {n / seconds:9.0f} windows/s ({n} windows)")
    print(f"target ≥ {TARGET_WINDOWS_PER_S} windows/s (20 × 42 windows/s A2 CPU step)")

    _, seconds = _timed(lambda: generate_survey(args.synthetic_curves, "macho", seed=1))
    print(
        f"synthetic generator      : {args.synthetic_curves / seconds:9.0f} curves/s ({args.synthetic_curves} in {seconds:.1f} s)"
    )


if __name__ == "__main__":
    main()
