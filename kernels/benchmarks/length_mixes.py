"""Window-length mixes the benchmarks draw from (imported by the benchmark scripts beside this file)."""

from __future__ import annotations

import math

import torch

MAX_LEN = 200
MIXES = ("all200", "60/40", "uniform", "lognormal80")


def window_lengths(mix: str, n: int, gen: torch.Generator) -> list[int]:
    """``n`` window lengths of a mix: all 200; 60 % full windows and 40 % short ones (log-normal around 60); uniform
    in [20, 200]; or log-normal around 80 (clamped to [5, 200]; 49 % of the tokens of full windows)."""
    if mix == "all200":
        return [MAX_LEN] * n
    if mix == "60/40":
        full = torch.rand(n, generator=gen) < 0.6
        short = torch.exp(math.log(60) + 0.8 * torch.randn(n, generator=gen)).round().clamp(5, MAX_LEN)
        return [MAX_LEN if f else int(s) for f, s in zip(full, short)]
    if mix == "uniform":
        return torch.randint(20, MAX_LEN + 1, (n,), generator=gen).tolist()
    if mix == "lognormal80":
        return torch.exp(math.log(80) + 0.8 * torch.randn(n, generator=gen)).round().clamp(5, MAX_LEN).int().tolist()
    raise ValueError(f"unknown length mix {mix!r}; known: {MIXES}")


def windows_for(lengths: list[int], gen: torch.Generator) -> list[dict]:
    """Synthetic centred windows of the given lengths (float32 magnitudes, times in days, errors), as the collators
    take them."""
    out = []
    for length in lengths:
        t = torch.sort(torch.rand(length, generator=gen, dtype=torch.float64) * 1000).values
        m = torch.randn(length, generator=gen, dtype=torch.float64)
        out.append({"magnitudes": (m - m.mean()).float(), "times": (t - t.mean()).float(),
                    "errors": (0.01 + 0.1 * torch.rand(length, generator=gen)).float()})
    return out
