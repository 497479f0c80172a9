"""Seeded synthetic inputs shared by the tests (imported by test modules; pytest puts this folder on the path)."""

from __future__ import annotations

import numpy as np
import torch


def light_curves(lengths=(37, 200, 455, 1013), seed=0) -> list[np.ndarray]:
    """``(L, 3)`` MACHO-like light curves ``(time [MJD], magnitude, error)`` of the given lengths."""
    rng = np.random.default_rng(seed)
    curves = []
    for length in lengths:
        t = 48_800 + np.cumsum(rng.uniform(0.3, 5.0, size=length))
        mag = -6.5 + 0.4 * np.sin(2 * np.pi * t / rng.uniform(0.4, 40)) + rng.normal(0, 0.03, size=length)
        err = rng.uniform(0.01, 0.2, size=length)
        curves.append(np.stack([t, mag, err], axis=1))
    return curves


def synthetic_windows(lengths, seed=0) -> list[dict[str, torch.Tensor]]:
    """Centred, unpadded windows (``magnitudes``, ``times``, ``errors``) of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    windows = []
    for length in lengths:
        t = torch.sort(torch.rand(length, generator=gen, dtype=torch.float64) * 900).values
        m = 0.3 * torch.sin(t / 7.0) + 0.05 * torch.randn(length, generator=gen, dtype=torch.float64)
        windows.append({"magnitudes": (m - m.mean()).float(), "times": (t - t.mean()).float(),
                        "errors": (0.01 + 0.05 * torch.rand(length, generator=gen)).float()})
    return windows
