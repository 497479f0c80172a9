"""Does an exported ONNX file compute what the PyTorch model computes? Compared in ONNX Runtime, output by output.

The check windows are the model's own windows of light curves (the caller's, or seeded synthetic MACHO-like curves
with multi-year baselines) plus seeded random windows of every fill (1 to W observations, centred times within
±1,000 d). ONNX Runtime runs them as one batch and the first one alone (the batch axis is dynamic); PyTorch runs the encoder
in float32 and pools as ``AstromerModel.embed`` does (``last_hidden_state`` for ``sequence``).

Bound. An output passes when ``max |ONNX Runtime - PyTorch| <= max(tolerance, 10 x e32)``, where ``e32`` is PyTorch
float32's own error on the same windows: ``max |PyTorch float32 - PyTorch float64|``. Two float32 runtimes round
differently (GEMM summation order, fused kernels), so they cannot agree more closely than each agrees with exact
arithmetic, and that varies by model: Astromer 2's outputs are accurate to a few 1e-6, but the released Astromer 1's
are not (its attention outputs reach ~2,000 before a LayerNorm removes their common part, so float32 leaves ~1e-3 on
its last block). A wrong export (mask polarity, pooling, weights) differs by the scale of the outputs, ~1.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hub_datasets.synthetic import generate_arrays
from modeling_astromer import AstromerFeatureExtractor, AstromerModel
from modeling_astromer.modeling_astromer import masked_max, masked_mean, skip_embedding

__all__ = [
    "FLOAT32_ERROR_FACTOR",
    "CheckWindows",
    "OutputParity",
    "ParityReport",
    "check_parity",
    "check_windows",
    "pytorch_outputs",
    "random_windows",
    "synthetic_curves",
]

#: How many times PyTorch float32's own error an export may differ from PyTorch by.
FLOAT32_ERROR_FACTOR = 10.0
CHECK_SEED = 0
N_SYNTHETIC_CURVES = 4
N_RANDOM_WINDOWS = 16
MAX_LIGHT_CURVE_WINDOWS = 64
RANDOM_TIME_HALF_SPAN_DAYS = 1000.0

Feeds = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class CheckWindows:
    """Model inputs `(n, W)`: float32 centred ``magnitudes`` and ``times``, int64 ``attention_mask``."""

    magnitudes: np.ndarray
    times: np.ndarray
    attention_mask: np.ndarray
    origin: dict[str, int]  # how many windows came from where

    def __len__(self) -> int:
        return int(self.magnitudes.shape[0])

    def take(self, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.magnitudes[rows], self.times[rows], self.attention_mask[rows]


def random_windows(n: int, window_size: int, seed: int = CHECK_SEED) -> CheckWindows:
    """`n` windows with 1 to `window_size` observations (both ends included), sorted times spread over ±1,000 d and
    magnitudes of a few tenths, centred over the observations as the feature extractor does; 0 at padding."""
    rng = np.random.default_rng(seed)
    counts = np.linspace(1, window_size, n).round().astype(np.int64) if n > 1 else np.array([window_size])
    observed = np.arange(window_size)[None, :] < counts[:, None]
    times = np.sort(rng.uniform(-RANDOM_TIME_HALF_SPAN_DAYS, RANDOM_TIME_HALF_SPAN_DAYS, (n, window_size)), axis=1)
    magnitudes = rng.normal(0.0, 0.3, (n, window_size))
    outputs = []
    for values in (magnitudes, times):
        values = np.where(observed, values, 0.0)
        centre = values.sum(axis=1, keepdims=True) / counts[:, None]
        outputs.append(np.where(observed, values - centre, 0.0).astype(np.float32))
    return CheckWindows(outputs[0], outputs[1], observed.astype(np.int64), {"random windows": n})


def synthetic_curves(n: int, seed: int = CHECK_SEED) -> list[np.ndarray]:
    """`n` seeded synthetic MACHO-like light curves, `(L, 3)` time/mag/err each."""
    table = generate_arrays(n, "macho", seed).to_pydict()
    return [np.column_stack([t, m, e]) for t, m, e in zip(table["time"], table["mag"], table["err"])]


def check_windows(
    extractor: AstromerFeatureExtractor, curves: Sequence[Any] | None, window_size: int
) -> CheckWindows:
    """The windows of `curves` (default: synthetic MACHO-like curves), at most 64, then the random windows."""
    if curves is None:
        curves, origin = synthetic_curves(N_SYNTHETIC_CURVES), "synthetic MACHO-like light-curve windows"
    else:
        origin = "light-curve windows"
    features = extractor(list(curves), return_tensors="np")
    limit = slice(0, MAX_LIGHT_CURVE_WINDOWS)
    real = CheckWindows(
        np.asarray(features["magnitudes"][limit], dtype=np.float32),
        np.asarray(features["times"][limit], dtype=np.float32),
        np.asarray(features["attention_mask"][limit], dtype=np.int64),
        {},
    )
    synthetic = random_windows(N_RANDOM_WINDOWS, window_size)
    return CheckWindows(
        np.concatenate([real.magnitudes, synthetic.magnitudes]),
        np.concatenate([real.times, synthetic.times]),
        np.concatenate([real.attention_mask, synthetic.attention_mask]),
        {origin: len(real), **synthetic.origin},
    )


def pytorch_outputs(
    encoder: AstromerModel,
    names: Sequence[str],
    windows: tuple[np.ndarray, np.ndarray, np.ndarray],
    layer_logits: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, np.ndarray]:
    """Each named output of the PyTorch model on `(magnitudes, times, attention_mask)`, as float64 arrays.

    One forward pass of `encoder`, pooled as ``AstromerModel.embed`` pools (``sequence`` is ``last_hidden_state``).
    """
    magnitudes, times, mask = (torch.from_numpy(np.ascontiguousarray(a)) for a in windows)
    magnitudes, times, mask = magnitudes.to(dtype), times.to(dtype), mask.long()
    with torch.inference_mode():
        encoded = encoder(
            magnitudes=magnitudes, times=times, attention_mask=mask, output_hidden_states="skip" in names
        )
        last = encoded.last_hidden_state
        results = {}
        for name in names:
            if name == "sequence":
                value = last
            elif name == "mean":
                value = masked_mean(last, mask)
            elif name == "max":
                value = masked_max(last, mask)
            else:
                means = encoder.layer_means(
                    encoded.hidden_states, magnitudes, times, mask, inputs_had_mask_positions=False
                )
                logits = means.new_full((means.shape[1],), 1.0 / means.shape[1])
                value = skip_embedding(means, logits if layer_logits is None else layer_logits.to(dtype))
            results[name] = value.double().numpy()
    return results


@dataclass(frozen=True)
class OutputParity:
    """One output: its largest difference from PyTorch, PyTorch float32's own error, and the bound applied."""

    name: str
    max_abs_diff: float
    pytorch_float32_error: float
    bound: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.bound


@dataclass
class ParityReport:
    """The parity check of one ONNX file against PyTorch."""

    outputs: list[OutputParity]
    n_windows: int
    batch_sizes: tuple[int, ...]
    origin: dict[str, int]
    max_abs_time: float
    tolerance: float
    onnxruntime_version: str

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs)

    def failure_summary(self) -> str:
        failed = [o for o in self.outputs if not o.passed]
        return "; ".join(
            f"{o.name}: max |ONNX Runtime - PyTorch| = {o.max_abs_diff:.3g} > {o.bound:.3g}" for o in failed
        )

    def lines(self) -> list[str]:
        windows = ", ".join(f"{n} {what}" for what, n in self.origin.items())
        batch_sizes = ", ".join(map(str, self.batch_sizes))
        header = (
            f"parity in ONNX Runtime {self.onnxruntime_version} ({windows}; batch sizes {batch_sizes}; "
            f"centred times up to {self.max_abs_time:,.0f} d):"
        )
        lines = [header]
        for o in self.outputs:
            lines.append(
                f"  {o.name}: max |ONNX Runtime - PyTorch| = {o.max_abs_diff:.2e} (bound {o.bound:.1e}; PyTorch "
                f"float32 vs float64: {o.pytorch_float32_error:.2e}) {'ok' if o.passed else 'FAILED'}"
            )
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "onnxruntime": self.onnxruntime_version,
            "windows": self.origin,
            "batch_sizes": list(self.batch_sizes),
            "max_abs_centred_time_days": self.max_abs_time,
            "tolerance": self.tolerance,
            "float32_error_factor": FLOAT32_ERROR_FACTOR,
            "bound_rule": "max(tolerance, float32_error_factor * max|PyTorch float32 - PyTorch float64|)",
            "outputs": {
                o.name: {
                    "max_abs_diff": o.max_abs_diff,
                    "pytorch_float32_vs_float64": o.pytorch_float32_error,
                    "bound": o.bound,
                    "passed": o.passed,
                }
                for o in self.outputs
            },
        }


def check_parity(
    onnx_path: str | os.PathLike,
    encoder: AstromerModel,
    names: Sequence[str],
    feeds: Feeds,
    windows: CheckWindows,
    layer_logits: torch.Tensor | None = None,
    tolerance: float = 1e-5,
) -> ParityReport:
    """Run `onnx_path` in ONNX Runtime on `windows` and compare each output in `names` with PyTorch.

    Args:
        onnx_path: the exported file (its outputs are named `names`).
        encoder: the float32 PyTorch encoder it was exported from (left unchanged).
        names: the outputs to compare.
        feeds: builds the ONNX Runtime inputs from `(magnitudes, times, attention_mask)` arrays.
        windows: the check windows.
        layer_logits: the gamma the ``skip`` output was exported with.
        tolerance: the bound for outputs whose PyTorch float32 error is below ``tolerance / 10``.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    everything = windows.take(slice(None))
    reference = pytorch_outputs(encoder, names, everything, layer_logits)
    exact = pytorch_outputs(copy.deepcopy(encoder).double(), names, everything, layer_logits, torch.float64)
    batches = {len(windows): slice(None), 1: slice(0, 1)}
    differences = dict.fromkeys(names, 0.0)
    for rows in batches.values():
        results = session.run(list(names), feeds(*windows.take(rows)))
        for name, value in zip(names, results):
            diff = np.abs(value.astype(np.float64) - reference[name][rows])
            differences[name] = max(differences[name], float(diff.max()) if np.isfinite(diff).all() else np.inf)
    outputs = []
    for name in names:
        float32_error = float(np.abs(reference[name] - exact[name]).max())
        bound = max(tolerance, FLOAT32_ERROR_FACTOR * float32_error)
        outputs.append(OutputParity(name, differences[name], float32_error, bound))
    observed = windows.attention_mask.astype(bool)
    return ParityReport(
        outputs=outputs,
        n_windows=len(windows),
        batch_sizes=tuple(batches),
        origin=windows.origin,
        max_abs_time=float(np.abs(np.where(observed, windows.times, 0.0)).max()),
        tolerance=tolerance,
        onnxruntime_version=onnxruntime.__version__,
    )
