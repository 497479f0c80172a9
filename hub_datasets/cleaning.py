"""Survey-level cleaning of stored light curves: the model's official cleaning plus the survey-only options, with
a count of every row and curve removed.

The cleaning itself is :func:`modeling_astromer.feature_extraction_astromer.clean_light_curves`, the one
implementation the model and the training data use too. With ``clean=True`` (the default, as upstream) it drops
rows with a NaN/inf in time, mag or err and rows outside ``err_min < err < err_max`` (default ``0 < err < 1``, which
also removes the 9.999/99.999 sentinels), and sorts the times (stable). On top of it, this module optionally drops
magnitudes outside the per-curve ``clip_quantiles`` (MACHO pretraining used 1–99 %), then drops curves with fewer
than ``min_observations`` (5) rows. With ``clean=False`` nothing is repaired: a NaN, an unsorted time axis or an
empty curve raises :class:`~modeling_astromer.errors.LightCurveValidationError` naming the file and row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from hub_datasets.raw_layouts import RawLightCurve
from modeling_astromer.errors import LightCurveValidationError
from modeling_astromer.feature_extraction_astromer import CleaningReport, clean_light_curves


@dataclass
class CleaningOptions:
    """Options of :func:`clean_light_curve`; defaults reproduce the official pipeline. The survey builders' config
    inherits them."""

    clean: bool = True
    err_min: float = 0.0
    err_max: float = 1.0
    min_observations: int = 5
    sort_times: bool = True
    clip_quantiles: tuple[float, float] | None = None


@dataclass
class SurveyCleaningCounts:
    """Counts of what cleaning and label mapping removed from one split of a survey; ``skipped`` lists
    ``(origin, reason)`` of skipped curves."""

    curves_read: int = 0
    curves_kept: int = 0
    rows_read: int = 0
    rows_kept: int = 0
    rows_dropped_nonfinite: int = 0
    rows_dropped_err_range: int = 0
    rows_dropped_clip: int = 0
    curves_dropped_short: int = 0
    curves_removed_by_class: Counter = field(default_factory=Counter)
    curves_relabelled: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add_cleaning(self, report: CleaningReport) -> None:
        """Add the rows one curve's cleaning dropped (its per-curve :class:`CleaningReport`)."""
        self.rows_dropped_nonfinite += report.n_nonfinite
        self.rows_dropped_err_range += report.n_error_out_of_range

    def summary(self) -> str:
        """One line per non-zero count, for logs."""
        parts = [
            f"curves read {self.curves_read}, kept {self.curves_kept}",
            f"rows read {self.rows_read}, kept {self.rows_kept}",
        ]
        for name in (
            "rows_dropped_nonfinite",
            "rows_dropped_err_range",
            "rows_dropped_clip",
            "curves_dropped_short",
        ):
            if getattr(self, name):
                parts.append(f"{name} {getattr(self, name)}")
        if self.curves_removed_by_class:
            parts.append(f"removed classes {dict(self.curves_removed_by_class)}")
        if self.curves_relabelled:
            parts.append(f"merged classes {dict(self.curves_relabelled)}")
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} curves with errors (first: {self.skipped[0]})")
        return "; ".join(parts)


def _refuse_unclean(curve: RawLightCurve, time: np.ndarray, mag: np.ndarray, err: np.ndarray) -> None:
    """``clean=False``: raise for an empty curve, a non-finite value or an unsorted time axis."""

    def refuse(message: str, field: str) -> None:
        raise LightCurveValidationError(
            f"{curve.origin}: {message}", curve_id=curve.id, field=field, source=curve.origin
        )

    if len(time) == 0:
        refuse("empty light curve (0 observations)", "observations")
    finite = {"time": np.isfinite(time), "mag": np.isfinite(mag), "err": np.isfinite(err)}
    all_finite = finite["time"] & finite["mag"] & finite["err"]
    if not all_finite.all():
        row = int(np.flatnonzero(~all_finite)[0])
        refuse(
            f"data row {row} has a non-finite value (time={time[row]}, mag={mag[row]}, err={err[row]}); "
            "use clean=True to drop such rows",
            next(name for name, ok in finite.items() if not ok[row]),
        )
    if len(time) > 1 and np.any(np.diff(time) < 0):
        refuse(f"times not sorted at data row {int(np.flatnonzero(np.diff(time) < 0)[0]) + 1}; use clean=True to sort",
               "time")


def clean_light_curve(
    curve: RawLightCurve, options: CleaningOptions, counts: SurveyCleaningCounts
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Return cleaned ``(time float64, mag float32, err float32)`` arrays of shape (L',) or ``None`` if dropped.

    Raises :class:`~modeling_astromer.errors.LightCurveValidationError` (naming ``curve.origin`` and the row) when
    ``options.clean`` is off and the curve has a NaN, is empty or unsorted, or whenever the three columns differ in
    length.
    """
    time = np.asarray(curve.time, dtype=np.float64)
    mag = np.asarray(curve.mag, dtype=np.float64)
    err = np.asarray(curve.err, dtype=np.float64)
    if not len(time) == len(mag) == len(err):
        raise LightCurveValidationError(
            f"{curve.origin}: time/mag/err lengths differ ({len(time)}, {len(mag)}, {len(err)})",
            curve_id=curve.id,
            field="shape",
            source=curve.origin,
        )
    counts.rows_read += len(time)
    if not options.clean:
        _refuse_unclean(curve, time, mag, err)
        counts.rows_kept += len(time)
        return time, mag.astype(np.float32), err.astype(np.float32)

    cleaned = clean_light_curves(
        [(time, mag, err)],
        min_error=options.err_min,
        max_error=options.err_max,
        unsorted="sort" if options.sort_times else "keep",
        ids=[curve.id],
    )
    counts.add_cleaning(cleaned.report(0))
    time, mag, err = cleaned.time, cleaned.mag, cleaned.err
    if options.clip_quantiles is not None and len(mag):
        low, high = np.quantile(mag, options.clip_quantiles)
        keep = (mag >= low) & (mag <= high)
        counts.rows_dropped_clip += int((~keep).sum())
        time, mag, err = time[keep], mag[keep], err[keep]
    if len(time) < options.min_observations:
        counts.curves_dropped_short += 1
        return None
    counts.rows_kept += len(time)
    return time, mag.astype(np.float32), err.astype(np.float32)
