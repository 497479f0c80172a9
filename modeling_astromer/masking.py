# Copyright 2026 The astromer-hf developers. MIT licence.
"""The official Astromer pretraining probing procedure (spec §2.4) as a seedable PyTorch collator.

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .modeling_astromer import compute_loss_weights

__all__ = ["AstromerMaskingCollator", "probing_counts"]

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
    def _stack(self, features: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Padded float64 `(B, W)` value arrays with real obs first, and `(B,)` real lengths."""
        W = self.window_size
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
            windows = [{k: arrays[k][b][real[b]] for k in _VALUE_KEYS} for b in range(B)]
        elif isinstance(features, Sequence) and not isinstance(features, (str, bytes)):
            windows = []
            for i, feature in enumerate(features):
                if not isinstance(feature, Mapping):
                    raise TypeError(f"window {i}: expected a mapping, got {type(feature).__name__}")
                values = {}
                for key in _VALUE_KEYS:
                    if key not in feature:
                        raise ValueError(f"window {i}: missing {key!r} (has {sorted(feature)})")
                    values[key] = as_numeric_array(feature[key], key, f"window {i}").astype(np.float64)
                    if values[key].ndim != 1:
                        raise ValueError(f"window {i}: {key!r} must be 1-D, got shape {values[key].shape}")
                lengths = {k: v.shape[0] for k, v in values.items()}
                if len(set(lengths.values())) != 1:
                    raise ValueError(f"window {i}: magnitudes/times/errors lengths differ: {lengths}")
                if feature.get("attention_mask") is not None:
                    mask = as_numeric_array(feature["attention_mask"], "attention_mask", f"window {i}").astype(bool)
                    if mask.shape != values["magnitudes"].shape:
                        raise ValueError(
                            f"window {i}: attention_mask shape {mask.shape} differs from "
                            f"magnitudes shape {values['magnitudes'].shape}"
                        )
                    values = {k: v[mask] for k, v in values.items()}
                windows.append(values)
        else:
            raise TypeError(
                f"features must be a list of per-window mappings or a mapping of padded arrays, "
                f"got {type(features).__name__}"
            )
        if not windows:
            raise ValueError("no windows to collate")

        n_real = np.array([w["magnitudes"].shape[0] for w in windows], dtype=np.int64)
        too_long = np.flatnonzero(n_real > W)
        if too_long.size:
            raise ValueError(
                f"window {int(too_long[0])} has {int(n_real[too_long[0]])} observations, "
                f"more than window_size={W}"
            )
        empty = np.flatnonzero(n_real == 0)
        if empty.size:
            raise ValueError(f"window {int(empty[0])} has no observed positions")
        out = {k: np.zeros((len(windows), W), dtype=np.float64) for k in _VALUE_KEYS}
        for b, window in enumerate(windows):
            for key in _VALUE_KEYS:
                out[key][b, : n_real[b]] = window[key]
        real = np.arange(W)[None, :] < n_real[:, None]
        for key in _VALUE_KEYS:
            bad = real & ~np.isfinite(out[key])
            if bad.any():
                b = int(np.flatnonzero(bad.any(axis=1))[0])
                raise ValueError(f"window {b}: {key!r} has non-finite values at observed positions")
        return out, n_real

    # -------------------------------------------------------------------------------------------------- call
    def __call__(self, features: Any) -> dict[str, torch.Tensor]:
        values, n_real = self._stack(features)
        B, W = values["magnitudes"].shape
        rng = self._generator()
        real = np.arange(W)[None, :] < n_real[:, None]

        # rank[b, j]: position of j in a uniform random permutation of the real positions of window b
        keys = np.where(real, rng.random((B, W)), np.inf)
        order = np.argsort(keys, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(W), (B, W)), axis=1)

        n_probed, n_same, n_random = probing_counts(
            n_real, self.probed_fraction, self.same_fraction, self.random_fraction
        )
        probed = real & (rank < n_probed[:, None])
        random_positions = probed & (rank >= n_same[:, None]) & (rank < (n_same + n_random)[:, None])
        masked = probed & (rank >= (n_same + n_random)[:, None])

        # the shuffled copy of the real magnitudes: shuffled[b, i] = mags[b, perm[b, i]] for i < L
        shuffle_keys = np.where(real, rng.random((B, W)), np.inf)
        permutation = np.argsort(shuffle_keys, axis=1, kind="stable")
        shuffled = np.take_along_axis(values["magnitudes"], permutation, axis=1)
        labels = values["magnitudes"]
        inputs = np.where(random_positions, shuffled, labels)

        attention_mask = torch.from_numpy(real.astype(np.int64))
        errors64 = torch.from_numpy(values["errors"])
        return {
            "magnitudes": torch.from_numpy(inputs.astype(np.float32)),
            "labels": torch.from_numpy(labels.astype(np.float32)),
            "times": torch.from_numpy(values["times"].astype(np.float32)),
            "errors": errors64.to(torch.float32),
            "attention_mask": attention_mask,
            "mask_positions": torch.from_numpy(masked.astype(np.int64)),
            "loss_mask": torch.from_numpy(probed.astype(np.float32)),
            "loss_weights": compute_loss_weights(errors64, attention_mask).to(torch.float32),
        }
