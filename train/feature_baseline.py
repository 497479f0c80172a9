"""The astronomer's usual alternative to learned embeddings: hand-crafted light-curve features + a random forest.

The features are computed with the ``light-curve`` package (Rust-backed; ``pip install 'astromer-hf[baselines]'``)
on the curves exactly as the Astromer classifier sees them (the feature extractor's cleaning: ``0 < err < 1``,
finite values, sorted times). :data:`FEATURE_NAMES` is the standard set, one value each per light curve:

- the distribution of magnitudes: amplitude (half the peak-to-peak), standard deviation, inter-quartile range,
  skew, kurtosis, fraction beyond 1 standard deviation;
- variability indices: Stetson K, von Neumann η, reduced χ² around the weighted mean, the maximum slope between
  consecutive points;
- the Lomb–Scargle periodogram: the period of its highest peak and that peak's signal-to-noise, searched from
  0.1 d up (frequencies 0–10 cycles per day on a fixed grid of 2¹⁷ + 1 points), and the curve folded at that
  period: its amplitude, skew and Stetson K.

:class:`FeatureBaseline` fits a ``RandomForestClassifier`` (500 trees, seeded) on the training curves' features
(a feature the package cannot compute for a curve, e.g. on too few points, is 0) and predicts light curves; with a
fixed ``seed`` the same folds give the same numbers in every run.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from astromer_train.data import CleanedCurves

#: Fixed angular-frequency grid of the periodogram (radians per day): 0 to 2π · 10 cycles per day.
PERIODOGRAM_FREQUENCIES = np.linspace(0.0, 2 * np.pi * 10.0, 2**17 + 1)
N_TREES = 500


def build_extractor() -> Any:
    """The ``light_curve.Extractor`` of the standard feature set (import of the optional package here)."""
    import light_curve as lc

    periodogram = lc.Periodogram(
        peaks=1,
        freqs=PERIODOGRAM_FREQUENCIES,
        fast=True,
        phase_features=[lc.Amplitude(), lc.Skew(), lc.StetsonK()],
    )
    return lc.Extractor(
        lc.Amplitude(), lc.StandardDeviation(), lc.InterPercentileRange(0.25), lc.Skew(), lc.Kurtosis(),
        lc.BeyondNStd(1.0), lc.StetsonK(), lc.Eta(), lc.ReducedChi2(), lc.MaximumSlope(), periodogram,
    )  # fmt: skip


FEATURE_NAMES: tuple[str, ...] = (
    "amplitude", "standard_deviation", "inter_percentile_range_25", "skew", "kurtosis", "beyond_1_std",
    "stetson_K", "eta", "chi2", "maximum_slope", "periodogram_period_0", "periodogram_period_s_to_n_0",
    "period_folded_amplitude", "period_folded_skew", "period_folded_stetson_K",
)  # fmt: skip


class FeatureTable:
    """Features of cleaned curves, computed once per distinct curve (folds share their curves).

    ``__call__(curves)`` returns a `(n_curves, n_features)` float64 array in the order of ``curves``.
    """

    def __init__(self) -> None:
        self.extractor = build_extractor()
        if tuple(self.extractor.names) != FEATURE_NAMES:
            raise RuntimeError(f"light-curve gave features {self.extractor.names}, expected {list(FEATURE_NAMES)}")
        self._cache: dict[bytes, np.ndarray] = {}

    def _one(self, time: np.ndarray, mag: np.ndarray, err: np.ndarray) -> np.ndarray:
        key = hashlib.blake2b(time.tobytes() + mag.tobytes() + err.tobytes(), digest_size=16).digest()
        if key not in self._cache:
            try:
                values = np.asarray(self.extractor(time, mag, err, sorted=True), dtype=np.float64)
            except ValueError:  # too few points for a feature: the whole row is left at 0
                values = np.zeros(len(FEATURE_NAMES))
            self._cache[key] = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        return self._cache[key]

    def __call__(self, curves: CleanedCurves) -> np.ndarray:
        rows = []
        for i in range(len(curves)):
            part = slice(int(curves.offsets[i]), int(curves.offsets[i + 1]))
            rows.append(self._one(curves.time[part], curves.mag[part], curves.err[part]))
        return np.stack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)))


class FeatureBaseline:
    """Light-curve features + a seeded random forest; ``fit`` on training curves, ``predict_proba`` per curve."""

    def __init__(self, seed: int = 0, features: FeatureTable | None = None) -> None:
        self.features = features or FeatureTable()
        self.forest = RandomForestClassifier(n_estimators=N_TREES, random_state=seed, n_jobs=1)

    def fit(self, curves: CleanedCurves) -> FeatureBaseline:
        if curves.labels is None:
            raise ValueError("the baseline is fitted on labelled curves")
        self.forest.fit(self.features(curves), curves.labels)
        return self

    def predict_proba(self, curves: CleanedCurves, n_classes: int) -> np.ndarray:
        """`(n_curves, n_classes)` class probabilities (a class absent from training gets 0)."""
        probabilities = np.zeros((len(curves), n_classes))
        probabilities[:, self.forest.classes_] = self.forest.predict_proba(self.features(curves))
        return probabilities


def feature_importances(baseline: FeatureBaseline) -> dict[str, float]:
    """The forest's impurity-based importance of each feature, by name."""
    return dict(zip(FEATURE_NAMES, map(float, baseline.forest.feature_importances_)))


def describe() -> str:
    """One line naming the baseline, for tables and reports."""
    return f"light-curve features ({len(FEATURE_NAMES)}) + random forest ({N_TREES} trees)"


__all__ = ["FEATURE_NAMES", "FeatureBaseline", "FeatureTable", "build_extractor", "describe", "feature_importances"]
