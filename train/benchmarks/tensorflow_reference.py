"""Windows/s of the official TensorFlow Astromer 2 (its released configuration) on this machine, for same-run ratios.

Runs in a separate environment with ``tensorflow-cpu==2.21.0`` and ``tf-keras==2.21.0`` and the official sources
(``github:astromer-science/main-code``) importable, under ``TF_USE_LEGACY_KERAS=1``. It does not import this
project. :mod:`throughput` (``--tf-python``, ``--tf-code``) starts it before and after its own models; standalone:

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=/path/to/main-code /path/to/tf-env/bin/python \\
        train/benchmarks/tensorflow_reference.py [--batch-size 256] [--repeats 3] [--phases train infer]

The model is the official ``src.models.astromer_1.get_ASTROMER`` with the Astromer 2 release's settings (6 blocks,
4 heads of 64, FFN ("mixer") 512, positional dimension 256, no dropout, key masking with ``m_alpha=-1e9``, leaky
input, error-weighted RMSE), randomly initialised. Timed: ``train``, the model's own ``train_step`` (forward,
backward, Adam(1e-5, 0.9, 0.98, 1e-9)) in a ``tf.function``; ``infer``, ``model(x, training=False)`` in a
``tf.function`` (graph mode, as Keras ``predict`` runs it). Batch: ``--batch-size`` windows of 200 observations, a
third of the keys masked and half of the observations scored. Median of ``--repeats`` calls after two warm-ups;
TensorFlow's default threading. Prints one JSON line: ``{"train": windows/s, "infer": windows/s, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import tensorflow as tf
from src.models.astromer_1 import get_ASTROMER

WINDOW = 200
RELEASED = {"num_layers": 6, "num_heads": 4, "head_dim": 64, "mixer_size": 512, "dropout": 0.0, "pe_dim": 256,
            "pe_base": 1000, "window_size": WINDOW, "m_alpha": -1e9, "mask_format": "K", "use_leak": True,
            "correct_loss": True, "loss_format": "rmse", "temperature": 0.0}


def _batch(batch_size: int, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.random((batch_size, WINDOW, 1)) * 3, axis=1)
    times -= times.mean(axis=1, keepdims=True)
    magnitudes = 0.3 * np.sin(times / 7) + 0.05 * rng.standard_normal((batch_size, WINDOW, 1))
    scored = (rng.random((batch_size, WINDOW, 1)) < 0.5).astype(np.float32)
    hidden = scored * (rng.random((batch_size, WINDOW, 1)) < 0.64)
    x = {"input": magnitudes.astype(np.float32), "times": times.astype(np.float32),
         "mask_in": hidden.astype(np.float32)}
    y = {"target": magnitudes.astype(np.float32), "mask_out": scored,
         "w_error": np.ones((batch_size, WINDOW, 1), np.float32)}
    return ({k: tf.constant(v) for k, v in x.items()}, {k: tf.constant(v) for k, v in y.items()})


def _median_seconds(call, repeats: int) -> tuple[float, list[float]]:
    for _ in range(2):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phases", nargs="+", default=["train", "infer"], choices=("train", "infer"))
    args = parser.parse_args(argv)
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        print("tensorflow_reference.py: set TF_USE_LEGACY_KERAS=1 (the official code is written for Keras 2)",
              file=sys.stderr)
        return 2
    tf.keras.utils.set_random_seed(0)
    model = get_ASTROMER(**RELEASED)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-5, beta_1=0.9, beta_2=0.98, epsilon=1e-9))
    x, y = _batch(args.batch_size)
    result = {"tensorflow": tf.__version__, "batch_size": args.batch_size,
              "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables))}
    if "train" in args.phases:
        train_step = tf.function(model.train_step)
        seconds, times = _median_seconds(lambda: train_step((x, y))["loss"].numpy(), args.repeats)
        result.update(train=args.batch_size / seconds, train_seconds=times)
    if "infer" in args.phases:
        infer = tf.function(lambda inputs: model(inputs, training=False))
        seconds, times = _median_seconds(lambda: infer(x).numpy(), args.repeats)
        result.update(infer=args.batch_size / seconds, infer_seconds=times)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
