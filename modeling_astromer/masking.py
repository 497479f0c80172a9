# Copyright 2026 The astromer-hf developers. MIT licence.
"""The official Astromer pretraining probing procedure as a seedable PyTorch collator.

Per window with ``L`` real observations (the procedure works on the *unpadded* window, as the official
``mask_sample`` does before ``padded_batch``):

- ``n_p = ⌊L·p⌋`` distinct probed positions, uniformly among the real ones (``loss_mask = 1``);
- ``n_s = ⌈n_p·s⌉`` of them are "same": value kept, visible;
- ``n_r = ⌈(n_p − n_s)·r⌉`` of the rest are "random": the value becomes the one at the same index of a randomly
  shuffled copy of the window's *real* magnitudes (the official code shuffles the unpadded window), visible;
- the remaining ``n_p − n_s − n_r`` are "masked" (``mask_positions = 1``): hidden as attention keys, and replaced
  by the MSK token only when the model enables it. The data keeps the true value.

The counts are computed in float32, as the official TensorFlow code does (``cast(L, float32) * frac``), so they
are bit-compatible with it for every fraction; e.g. 100/64/20/16 (probed/masked/same/random) at L = 200,
73/46/15/12 at L = 147, 22/13/5/4 at L = 45.

The three classes are drawn from one uniform random permutation of the real positions: its first ``n_p`` entries
are a uniform ``n_p``-subset, and their order splits it uniformly into same/random/masked — the same
distribution as the official two-stage draw.

The collator probes ragged windows (the real observations of all windows laid back to back, see
:mod:`.feature_extraction_astromer`), then pads the result (:meth:`AstromerMaskingCollator.pad`) or hands the
real-observation fields to packing (:meth:`AstromerMaskingCollator.token_fields`), so a packed batch is never
padded first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .feature_extraction_astromer import pad_windows, padding_mask
from .modeling_astromer import compute_loss_weights

__all__ = ["AstromerMaskingCollator", "ProbedWindows", "RaggedWindows", "probing_counts", "window_loss_weights"]

_VALUE_KEYS = ("magnitudes", "times", "errors")


def probing_counts(
    n_real: np.ndarray, probed_fraction: float, same_fraction: float, random_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Official per-window counts ``(n_probed, n_same, n_random)`` for `(B,)` real lengths, float32 arithmetic."""
    n_real32 = np.asarray(n_real).astype(np.float32)
    n_probed = np.floor(n_real32 * np.float32(probed_fraction)).astype(np.int64)
    n_same = np.ceil(n_probed.astype(np.float32) * np.float32(same_fraction)).astype(np.int64)
    n_random = np.ceil((n_probed - n_same).astype(np.float32) * np.float32(random_fraction)).astype(np.int64)
    n_same = np.minimum(n_same, n_probed)
    n_random = np.minimum(n_random, n_probed - n_same)
    return n_probed, n_same, n_random


def as_numeric_array(value: Any, name: str, where: str = "batch") -> np.ndarray:
    """`value` (array, list or tensor) as a numpy array of real numbers, or a ValueError naming `where` and `name`."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: field {name!r} is not an array of numbers ({exc})") from exc
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{where}: field {name!r} must hold real numbers, got dtype {array.dtype}")
    return array


def window_loss_weights(errors: np.ndarray, lengths: np.ndarray, window_size: int) -> np.ndarray:
    """The official loss weights (:func:`compute_loss_weights`) of ragged windows, computed without padding them.

    :func:`compute_loss_weights` works on windows padded to ``window_size`` and gives the padding of a shorter
    window ``σ`` = the window's mean error. That mean lies strictly between the window's smallest and largest error
    whenever the errors are positive and not all equal (relative spread above ``4·L²·eps``, more than the rounding
    of any float64 sum of ``L`` terms), so it changes neither the minimum nor the maximum of ``1/σ`` and the weights
    of the real observations follow from those alone. The remaining windows (shorter than ``window_size`` with a
    zero or negative error, or with errors equal up to that rounding) are passed to :func:`compute_loss_weights`
    on their padded row, so the result equals it bit for bit in every case.

    Args:
        errors: `(lengths.sum(),)` uncertainties of the windows, window after window.
        lengths: `(n_windows,)` positive number of observations of each window, each at most ``window_size``.
        window_size: width the official weights are defined on.

    Returns:
        `(lengths.sum(),)` float64 weights.
    """
    sigma = np.asarray(errors, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    window = np.repeat(np.arange(lengths.size), lengths)
    inverse = np.where(sigma != 0, 1.0 / np.where(sigma != 0, sigma, 1.0), 0.0)
    low = np.minimum.reduceat(inverse, first)
    span = np.maximum.reduceat(inverse, first) - low
    safe_span = np.where(span > 0, span, 1.0)
    weights = np.where((span > 0)[window], (inverse - low[window]) / safe_span[window], 0.0) + 1e-3

    smallest = np.minimum.reduceat(sigma, first)
    largest = np.maximum.reduceat(sigma, first)
    spread_is_safe = (smallest > 0) & (largest - smallest > 4.0 * lengths**2 * np.finfo(np.float64).eps * largest)
    exact = np.flatnonzero((lengths < window_size) & ~spread_is_safe)
    if exact.size:
        rows = np.concatenate([np.arange(first[i], first[i] + lengths[i]) for i in exact])
        real = padding_mask(lengths[exact], window_size)
        padded = compute_loss_weights(
            torch.from_numpy(pad_windows(sigma[rows], lengths[exact], window_size)), torch.from_numpy(real)
        )
        weights[rows] = padded.numpy()[real]
    return weights


@dataclass
class RaggedWindows:
    """Windows laid back to back: float64 `(T,)` ``magnitudes``, ``times``, ``errors`` of the real observations
    (``T = lengths.sum()``) and the `(B,)` int64 ``lengths``."""

    magnitudes: np.ndarray
    times: np.ndarray
    errors: np.ndarray
    lengths: np.ndarray


@dataclass
class ProbedWindows:
    """The probing of :class:`RaggedWindows`, per real observation `(T,)`: ``inputs`` float64 (the magnitudes with
    the "random" replacements), ``mask_positions`` and ``loss_mask`` bool."""

    windows: RaggedWindows
    inputs: np.ndarray
    mask_positions: np.ndarray
    loss_mask: np.ndarray


class AstromerMaskingCollator:
    """Collate Astromer windows into a pretraining batch with the official probing/masking.

    Args:
        probed_fraction: fraction ``p`` of real observations that are probed (enter the loss).
        random_fraction: fraction ``r`` of the non-"same" probed positions that get a random value.
        same_fraction: fraction ``s`` of the probed positions that keep their value and stay visible.
        window_size: width every output is padded to (windows longer than this raise).
        seed: seed of the numpy generator. ``None``: each call derives its generator from torch's global RNG,
            so ``torch.manual_seed`` and DataLoader worker seeding control it. With a seed, each DataLoader worker
            re-seeds from ``(seed, worker_id)`` so that workers do not repeat each other's masks.

    ``__call__(features)`` accepts a list of per-window mappings (``magnitudes``, ``times``, ``errors``, optional
    ``attention_mask``; 1-D arrays, lists or tensors, unpadded or padded) or one mapping / ``BatchFeature`` of
    already padded `(B, T)` arrays. Real observations are compacted to the left, in order. It returns, all
    `(B, window_size)`:

    - ``magnitudes`` float32: input magnitudes with the "random" replacements;
    - ``labels`` float32: the true (centred) magnitudes, 0 at padding;
    - ``times``, ``errors`` float32 (padding 0);
    - ``attention_mask`` int64: 1 = real observation;
    - ``mask_positions`` int64: 1 = "masked" (hidden key / MASK token);
    - ``loss_mask`` float32: 1 = probed (masked + random + same);
    - ``loss_weights`` float32: official uncertainty weights (``compute_loss_weights``).

    The steps are public for collators that seed each batch themselves or pack instead of padding:
    :meth:`ragged_windows` (parse and check), :meth:`probe` (with a given generator), then :meth:`pad` or
    :meth:`token_fields`.
    """

    def __init__(
        self,
        probed_fraction: float = 0.5,
        random_fraction: float = 0.2,
        same_fraction: float = 0.2,
        window_size: int = 200,
        seed: int | None = None,
    ) -> None:
        for name, value in (
            ("probed_fraction", probed_fraction),
            ("random_fraction", random_fraction),
            ("same_fraction", same_fraction),
        ):
            if not (0.0 <= float(value) <= 1.0):
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
        if int(window_size) < 1:
            raise ValueError(f"window_size must be a positive integer, got {window_size!r}")
        self.probed_fraction = float(probed_fraction)
        self.random_fraction = float(random_fraction)
        self.same_fraction = float(same_fraction)
        self.window_size = int(window_size)
        self.seed = seed
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self._rng_worker: int | None = None

    # --------------------------------------------------------------------------------------------- generator
    def _generator(self) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        info = torch.utils.data.get_worker_info()
        worker = None if info is None else info.id
        if worker != self._rng_worker:
            entropy = [int(self.seed)] if worker is None else [int(self.seed), int(worker)]
            self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
            self._rng_worker = worker
        assert self._rng is not None
        return self._rng

    # ------------------------------------------------------------------------------------------------ inputs
    def ragged_windows(self, features: Any) -> RaggedWindows:
        """The real observations of every window, back to back in float64, checked (no padding is added)."""
        if isinstance(features, Mapping):
            arrays = {}
            for key in _VALUE_KEYS:
                if key not in features:
                    raise ValueError(f"batch is missing {key!r} (has {sorted(features)})")
                arrays[key] = as_numeric_array(features[key], key).astype(np.float64)
                if arrays[key].ndim != 2:
                    raise ValueError(f"{key!r} must be a padded (B, T) array, got shape {arrays[key].shape}")
            shapes = {k: a.shape for k, a in arrays.items()}
            if len(set(shapes.values())) != 1:
                raise ValueError(f"magnitudes/times/errors shapes differ: {shapes}")
            B, T = arrays["magnitudes"].shape
            if features.get("attention_mask") is not None:
                mask = as_numeric_array(features["attention_mask"], "attention_mask")
                if mask.shape != (B, T):
                    raise ValueError(
                        f"attention_mask shape {mask.shape} differs from magnitudes shape {(B, T)}"
                    )
                real = mask.astype(bool)
            else:
                real = np.ones((B, T), dtype=bool)
            values = {key: arrays[key][real] for key in _VALUE_KEYS}  # row-major: window after window, in order
            lengths = real.sum(axis=1).astype(np.int64)
        elif isinstance(features, Sequence) and not isinstance(features, (str, bytes)):
            windows = []
            for i, feature in enumerate(features):
                if not isinstance(feature, Mapping):
                    raise TypeError(f"window {i}: expected a mapping, got {type(feature).__name__}")
                window = {}
                for key in _VALUE_KEYS:
                    if key not in feature:
                        raise ValueError(f"window {i}: missing {key!r} (has {sorted(feature)})")
                    window[key] = as_numeric_array(feature[key], key, f"window {i}").astype(np.float64)
                    if window[key].ndim != 1:
                        raise ValueError(f"window {i}: {key!r} must be 1-D, got shape {window[key].shape}")
                sizes = {k: v.shape[0] for k, v in window.items()}
                if len(set(sizes.values())) != 1:
                    raise ValueError(f"window {i}: magnitudes/times/errors lengths differ: {sizes}")
                if feature.get("attention_mask") is not None:
                    mask = as_numeric_array(feature["attention_mask"], "attention_mask", f"window {i}").astype(bool)
                    if mask.shape != window["magnitudes"].shape:
                        raise ValueError(
                            f"window {i}: attention_mask shape {mask.shape} differs from "
                            f"magnitudes shape {window['magnitudes'].shape}"
                        )
                    window = {k: v[mask] for k, v in window.items()}
                windows.append(window)
            lengths = np.array([w["magnitudes"].shape[0] for w in windows], dtype=np.int64)
            values = {
                key: np.concatenate([w[key] for w in windows]) if windows else np.zeros(0) for key in _VALUE_KEYS
            }
        else:
            raise TypeError(
                f"features must be a list of per-window mappings or a mapping of padded arrays, "
                f"got {type(features).__name__}"
            )
        if lengths.size == 0:
            raise ValueError("no windows to collate")
        too_long = np.flatnonzero(lengths > self.window_size)
        if too_long.size:
            raise ValueError(
                f"window {int(too_long[0])} has {int(lengths[too_long[0]])} observations, "
                f"more than window_size={self.window_size}"
            )
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            raise ValueError(f"window {int(empty[0])} has no observed positions")
        window_of = np.repeat(np.arange(lengths.size), lengths)
        for key in _VALUE_KEYS:
            bad = ~np.isfinite(values[key])
            if bad.any():
                raise ValueError(f"window {int(window_of[np.argmax(bad)])}: {key!r} has non-finite values at "
                                 "observed positions")
        return RaggedWindows(values["magnitudes"], values["times"], values["errors"], lengths)

    # ------------------------------------------------------------------------------------------------ probing
    def probe(self, windows: RaggedWindows, rng: np.random.Generator) -> ProbedWindows:
        """Draw the probed, "same", "random" and "masked" observations of every window from ``rng``.

        ``rng`` gives two `(B, window_size)` blocks of uniforms, whatever the window lengths: row ``b`` of the first
        ranks the real positions of window ``b`` (its first ``L`` entries), row ``b`` of the second shuffles them.
        """
        lengths = windows.lengths
        B, W = lengths.size, self.window_size
        window = np.repeat(np.arange(B), lengths)
        position = np.arange(window.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)

        # rank of each observation in a uniform random permutation of its window's observations
        rank_keys = rng.random((B, W))[window, position]
        order = np.lexsort((rank_keys, window))  # stable, by window then key
        rank = np.empty_like(position)
        rank[order] = position

        n_probed, n_same, n_random = probing_counts(
            lengths, self.probed_fraction, self.same_fraction, self.random_fraction
        )
        probed = rank < n_probed[window]
        random_positions = probed & (rank >= n_same[window]) & (rank < (n_same + n_random)[window])
        masked = probed & (rank >= (n_same + n_random)[window])

        # the shuffled copy of each window's magnitudes: its values in the order of a second set of keys
        shuffle_keys = rng.random((B, W))[window, position]
        shuffled = windows.magnitudes[np.lexsort((shuffle_keys, window))]
        inputs = np.where(random_positions, shuffled, windows.magnitudes)
        return ProbedWindows(windows, inputs, masked, probed)

    # ----------------------------------------------------------------------------------------------- outputs
    def pad(self, probed: ProbedWindows) -> dict[str, torch.Tensor]:
        """The padded `(B, window_size)` batch described in the class docstring."""
        lengths, W = probed.windows.lengths, self.window_size

        def pad(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(pad_windows(values, lengths, W))

        attention_mask = torch.from_numpy(padding_mask(lengths, W).astype(np.int64))
        errors64 = pad(probed.windows.errors)
        return {
            "magnitudes": pad(probed.inputs.astype(np.float32)),
            "labels": pad(probed.windows.magnitudes.astype(np.float32)),
            "times": pad(probed.windows.times.astype(np.float32)),
            "errors": errors64.to(torch.float32),
            "attention_mask": attention_mask,
            "mask_positions": pad(probed.mask_positions.astype(np.int64)),
            "loss_mask": pad(probed.loss_mask.astype(np.float32)),
            "loss_weights": compute_loss_weights(errors64, attention_mask).to(torch.float32),
        }

    def token_fields(self, probed: ProbedWindows) -> dict[str, np.ndarray]:
        """The batch's fields at the real observations only, `(T,)` each, in the dtypes of :meth:`pad` (the input
        of packing: ``AstromerPackingCollator.pack``)."""
        windows = probed.windows
        return {
            "magnitudes": probed.inputs.astype(np.float32),
            "labels": windows.magnitudes.astype(np.float32),
            "times": windows.times.astype(np.float32),
            "errors": windows.errors.astype(np.float32),
            "mask_positions": probed.mask_positions.astype(np.int64),
            "loss_mask": probed.loss_mask.astype(np.float32),
            "loss_weights": window_loss_weights(windows.errors, windows.lengths, self.window_size).astype(
                np.float32
            ),
        }

    # -------------------------------------------------------------------------------------------------- call
    def __call__(self, features: Any) -> dict[str, torch.Tensor]:
        return self.pad(self.probe(self.ragged_windows(features), self._generator()))
