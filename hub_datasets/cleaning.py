"""The official light-curve cleaning (astromer_spec §2.1, data.md §1) as explicit options, with a count of every
row and curve it removes.

With ``clean=True`` (the default, as upstream): rows with a NaN/inf in time, mag or err are dropped ("drop nulls"),
rows outside ``err_min < err < err_max`` (default ``0 < err < 1``, which also removes the 9.999/99.999 sentinels)
are dropped, times are sorted (stable), and curves with fewer than ``min_observations`` (5) rows are dropped;
optionally magnitudes outside the per-curve ``clip_quantiles`` (MACHO pretraining used 1–99 %) are dropped.
With ``clean=False`` nothing is repaired: a NaN, an unsorted time axis or an empty curve raises
:class:`BadLightCurveError` naming the file and row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from hub_datasets.raw_layouts import RawLightCurve


class BadLightCurveError(ValueError):
    """A light curve that cannot be stored as is (NaN, empty, unsorted, length mismatch); names file and row."""


@dataclass(frozen=True)
class CleaningOptions:
    """Options of :func:`clean_light_curve`; defaults reproduce the official pipeline."""

    clean: bool = True
    err_min: float = 0.0
    err_max: float = 1.0
    min_observations: int = 5
    sort_times: bool = True
    clip_quantiles: tuple[float, float] | None = None


@dataclass
class CleaningReport:
    """Counts of what cleaning and label mapping removed; ``skipped`` lists ``(origin, reason)`` of skipped curves."""

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


def clean_light_curve(
    curve: RawLightCurve, options: CleaningOptions, report: CleaningReport
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Return cleaned ``(time float64, mag float32, err float32)`` arrays of shape (L',) or ``None`` if dropped.

    Raises :class:`BadLightCurveError` (naming ``curve.origin`` and the row) when ``options.clean`` is off and the
    curve has a NaN, is empty or unsorted, or whenever the three columns differ in length.
    """
    time = np.asarray(curve.time, dtype=np.float64)
    mag = np.asarray(curve.mag, dtype=np.float64)
    err = np.asarray(curve.err, dtype=np.float64)
    if not len(time) == len(mag) == len(err):
        raise BadLightCurveError(
            f"{curve.origin}: time/mag/err lengths differ ({len(time)}, {len(mag)}, {len(err)})"
        )
    report.rows_read += len(time)
    finite = np.isfinite(time) & np.isfinite(mag) & np.isfinite(err)
    if not options.clean:
        if len(time) == 0:
            raise BadLightCurveError(f"{curve.origin}: empty light curve (0 observations)")
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise BadLightCurveError(
                f"{curve.origin}: data row {row} has a non-finite value "
                f"(time={time[row]}, mag={mag[row]}, err={err[row]}); use clean=True to drop such rows"
            )
        if len(time) > 1 and np.any(np.diff(time) < 0):
            row = int(np.flatnonzero(np.diff(time) < 0)[0]) + 1
            raise BadLightCurveError(
                f"{curve.origin}: times not sorted at data row {row}; use clean=True to sort"
            )
        report.rows_kept += len(time)
        return time, mag.astype(np.float32), err.astype(np.float32)

    report.rows_dropped_nonfinite += int((~finite).sum())
    in_range = finite & (err > options.err_min) & (err < options.err_max)
    report.rows_dropped_err_range += int((finite & ~in_range).sum())
    time, mag, err = time[in_range], mag[in_range], err[in_range]
    if options.clip_quantiles is not None and len(mag):
        low, high = np.quantile(mag, options.clip_quantiles)
        keep = (mag >= low) & (mag <= high)
        report.rows_dropped_clip += int((~keep).sum())
        time, mag, err = time[keep], mag[keep], err[keep]
    if len(time) < options.min_observations:
        report.curves_dropped_short += 1
        return None
    if options.sort_times:
        order = np.argsort(time, kind="stable")
        time, mag, err = time[order], mag[order], err[order]
    report.rows_kept += len(time)
    return time, mag.astype(np.float32), err.astype(np.float32)
