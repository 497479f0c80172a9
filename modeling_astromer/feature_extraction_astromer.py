# Copyright 2026 The astromer-hf developers. MIT licence.
"""Feature extractor for Astromer: raw light curves -> centred, padded 200-observation windows.

Self-contained on purpose: this file is also shipped as Hub remote code, so it imports only numpy, the
standard library, ``transformers``, its sibling ``errors`` module and (optionally) torch.

It also holds the one implementation of every data-preparation step, which the training data, the collators and
the survey builders call as well: :func:`clean_light_curves` (with its per-curve :class:`CleaningReport`),
:func:`window_starts` and :func:`window_rows` (the windows of a curve), :func:`centre_windows` and
:func:`pad_windows` / :func:`padding_mask`. Windows in between steps are *ragged*: the real observations of all
windows laid back to back in one flat array, plus the ``(n_windows,)`` lengths.

Pipeline of :class:`AstromerFeatureExtractor`, per light curve:

1. **Parse** one ``(L, 3)`` array ``(time, mag, err)``, a structured array, a mapping / ``pandas.DataFrame``
   with time/mag/err columns (aliases below, case-insensitive) or an astropy-``Table``-like object (duck-typed:
   ``.colnames`` plus column access). Tables may carry a band column (:data:`BAND_ALIASES`, or ``band_column=``).
2. **Validate**: a clear :class:`LightCurveValidationError` names the curve (index and id) and the field for a
   wrong shape, a non-numeric dtype, a non-finite or float16 *time*, an empty curve, several bands when none was
   chosen, a missing requested band, or too few valid observations.
   **Bands**: ``bands="r"`` keeps one band; ``bands=["g", "r"]`` makes each (curve, band) pair a light curve.
3. **Clean** (:func:`clean_light_curves`, the official filter): drop rows whose magnitude or error is not finite or
   whose error is outside ``(0, max_error)``; sort by time with a stable sort when needed; handle repeated times
   according to ``duplicate_times``. What was dropped is counted per curve (:meth:`AstromerFeatureExtractor.clean`,
   or ``return_cleaning_report=True``). Then every kept magnitude must lie within ``±max_abs_magnitude`` and a
   curve's times must span at most ``max_time_span`` days; a curve outside is refused, naming the curve and field.
4. **Window** (:func:`window_starts`): "sequential" uses the official pivots ``0, W, …, ⌊L/W⌋·W`` clamped to
   ``max(0, min(p, L−W))``, i.e. ``⌊L/W⌋+1`` windows. The last window overlaps the previous one, and when ``L`` is a
   multiple of ``W`` it is an exact duplicate (``L = 200`` gives two identical windows). This is what the official
   TensorFlow code does and what the released embeddings were computed with, so it is kept. "random" takes one
   contiguous window per curve with the pivot drawn uniformly from ``0..L−W`` (the whole curve when ``L ≤ W``).
5. **Centre** (:func:`centre_windows`) time and magnitude per window over the real observations, in float64, then
   cast to float32. Times are *not* shifted to start at 0 (that is not Astromer's normalisation). Errors are
   returned un-centred: they feed the official loss weights, which the official code computes from the original
   uncertainties.

   Finding (reference data): the official TensorFlow pipeline casts to float32 *before* centring and takes a
   float32 mean, so its centred MJDs differ from float64 centring by up to ~0.078 d on the reference MACHO windows
   (a per-window constant from the float32 mean plus ≤ ~0.002 d per point). This extractor centres in float64,
   which matches TF to ~0.08 d in time and to float32 rounding in magnitude.
6. **Pad** (:func:`pad_windows`) on the right (or left, ``padding_side``) to ``window_size`` with ``padding_value``
   (or, with ``padding=False``, leave the windows back to back for packed models).

:meth:`AstromerFeatureExtractor.clean_batch` with ``on_error="collect"`` keeps going past refused curves and lists
them (:class:`RejectedLightCurve`), for callers that embed every good curve of a survey.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin

from .configuration_astromer import resolve_bundled_name
from .errors import AstromerError, LightCurveValidationError

__all__ = [
    "BAND_ALIASES",
    "MAX_ABS_MAGNITUDE",
    "MAX_TIME_SPAN",
    "AstromerError",
    "AstromerFeatureExtractor",
    "CleanedBatch",
    "CleanedLightCurve",
    "CleanedLightCurves",
    "CleaningReport",
    "LightCurveValidationError",
    "RejectedLightCurve",
    "centre_windows",
    "clean_light_curves",
    "pad_windows",
    "padding_mask",
    "pool_windows",
    "window_rows",
    "window_starts",
]

TIME_ALIASES: tuple[str, ...] = ("time", "times", "mjd", "t", "hjd", "jd", "bjd")
MAGNITUDE_ALIASES: tuple[str, ...] = ("mag", "mags", "magnitude", "magnitudes", "m")
ERROR_ALIASES: tuple[str, ...] = (
    "err",
    "errs",
    "error",
    "errors",
    "magerr",
    "errmag",
    "mag_err",
    "err_mag",
    "sigma",
)
_FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "time": TIME_ALIASES,
    "mag": MAGNITUDE_ALIASES,
    "err": ERROR_ALIASES,
}

#: Column names taken as the band (filter) of each observation, case-insensitive (ZTF calls it ``fid`` or
#: ``filtercode``, LSST ``band``, Gaia ``band``, ATLAS ``filter``).
BAND_ALIASES: tuple[str, ...] = ("band", "filter", "passband", "fid", "filtercode")

#: Largest accepted |magnitude| (after cleaning). Real magnitudes lie far inside it; values beyond it make the
#: model's float32 activations overflow (a single 1e30 gives an all-NaN embedding; 3.4e38 overflows float32 itself).
MAX_ABS_MAGNITUDE = 100.0
#: Largest accepted time span of one curve, in days (274 years): a larger span means times are not in days.
MAX_TIME_SPAN = 100_000.0

SAMPLING_MODES = ("sequential", "random")
DUPLICATE_TIME_MODES = ("keep", "drop", "raise")
UNSORTED_MODES = ("sort", "keep", "raise")
PADDING_SIDES = ("right", "left")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


# ------------------------------------------------------------------------------------------------------ cleaning
@dataclass
class CleaningReport:
    """What cleaning did to one light curve (all counts are rows of the input curve)."""

    n_input: int
    n_nonfinite_time: int = 0
    n_nonfinite_magnitude: int = 0  # rows with a finite time
    n_nonfinite_error: int = 0  # rows with a finite time and magnitude
    n_error_out_of_range: int = 0  # finite rows whose error is outside the allowed open interval
    n_duplicate_times_dropped: int = 0
    n_duplicate_times: int = 0  # repeated times present after cleaning (whatever the mode did with them)
    was_sorted: bool = False  # True when a stable sort had to reorder the rows
    n_kept: int = 0

    @property
    def n_dropped(self) -> int:
        return self.n_input - self.n_kept

    @property
    def n_nonfinite(self) -> int:
        """Rows dropped for a non-finite time, magnitude or error."""
        return self.n_nonfinite_time + self.n_nonfinite_magnitude + self.n_nonfinite_error

    def describe(self) -> str:
        reasons = [
            (self.n_nonfinite_time, "non-finite time"),
            (self.n_nonfinite_magnitude, "non-finite magnitude"),
            (self.n_nonfinite_error, "non-finite error"),
            (self.n_error_out_of_range, "error outside the allowed open interval"),
            (self.n_duplicate_times_dropped, "repeated time (duplicate_times='drop')"),
        ]
        parts = [f"{n} {why}" for n, why in reasons if n]
        return f"removed {self.n_dropped} of {self.n_input} rows" + (
            f" ({', '.join(parts)})" if parts else ""
        )


@dataclass
class CleanedLightCurve:
    """A cleaned light curve: float64 arrays of shape ``(n_kept,)``, time-sorted."""

    time: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    report: CleaningReport = field(default_factory=lambda: CleaningReport(0))


@dataclass
class CleanedLightCurves:
    """Cleaned light curves stored back to back: float64 ``time``/``mag``/``err`` of shape `(lengths.sum(),)`, and
    the per-curve `(n_curves,)` counts of :class:`CleaningReport`."""

    time: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    lengths: np.ndarray
    n_input: np.ndarray
    n_nonfinite_time: np.ndarray
    n_nonfinite_magnitude: np.ndarray
    n_nonfinite_error: np.ndarray
    n_error_out_of_range: np.ndarray
    n_duplicate_times_dropped: np.ndarray
    n_duplicate_times: np.ndarray
    was_sorted: np.ndarray

    @property
    def offsets(self) -> np.ndarray:
        """`(n_curves + 1,)` int64 first row of each curve in the flat arrays (and the total)."""
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.lengths.size)

    def report(self, i: int) -> CleaningReport:
        return CleaningReport(
            n_input=int(self.n_input[i]),
            n_nonfinite_time=int(self.n_nonfinite_time[i]),
            n_nonfinite_magnitude=int(self.n_nonfinite_magnitude[i]),
            n_nonfinite_error=int(self.n_nonfinite_error[i]),
            n_error_out_of_range=int(self.n_error_out_of_range[i]),
            n_duplicate_times_dropped=int(self.n_duplicate_times_dropped[i]),
            n_duplicate_times=int(self.n_duplicate_times[i]),
            was_sorted=bool(self.was_sorted[i]),
            n_kept=int(self.lengths[i]),
        )

    def curve(self, i: int) -> CleanedLightCurve:
        """Curve ``i`` (views of the flat arrays) with its report."""
        begin, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return CleanedLightCurve(self.time[begin:end], self.mag[begin:end], self.err[begin:end], self.report(i))

    def subset(self, curves: Any) -> CleanedLightCurves:
        """The curves at the `(k,)` positions ``curves`` (in that order), with their rows and counts."""
        curves = np.asarray(curves, dtype=np.int64)
        offsets = self.offsets
        rows = window_rows(offsets, curves, np.zeros_like(curves), int(self.lengths.max(initial=0)))[0]
        per_curve = {
            name: getattr(self, name)[curves]
            for name in (
                "lengths", "n_input", "n_nonfinite_time", "n_nonfinite_magnitude", "n_nonfinite_error",
                "n_error_out_of_range", "n_duplicate_times_dropped", "n_duplicate_times", "was_sorted",
            )
        }
        return CleanedLightCurves(time=self.time[rows], mag=self.mag[rows], err=self.err[rows], **per_curve)


def _curve_label(index: int | None, curve_id: Any) -> str:
    label = "light curve" if index is None else f"light curve {index}"
    return label if curve_id is None else f"{label} (id {curve_id!r})"


def clean_light_curves(
    curves: Sequence[tuple[Any, Any, Any]],
    *,
    max_error: float = 1.0,
    min_error: float = 0.0,
    unsorted: str = "sort",
    duplicate_times: str = "keep",
    ids: Sequence[Any] | None = None,
) -> CleanedLightCurves:
    """The official cleaning, vectorised over all curves at once.

    Per curve, in this order:

    1. rows with a non-finite time, magnitude or error are dropped (each counted under the first non-finite field
       of time, magnitude, error);
    2. rows whose error is outside the open interval ``(min_error, max_error)`` are dropped (the official filter is
       ``0 < err < 1``, which also removes the 9.999 / 99.999 "no measurement" sentinels);
    3. ``unsorted``: ``"sort"`` repairs an unsorted time axis with a stable sort (rows with equal times keep their
       input order), ``"keep"`` leaves the rows as stored, ``"raise"`` refuses the curve;
    4. ``duplicate_times`` (repeated times, after the sort): ``"keep"`` every row (the official behaviour),
       ``"drop"`` all but the first row (input order) of each repeated time, or ``"raise"``.

    No curve is dropped here, not even an empty one: what too few rows mean is the caller's decision.

    Args:
        curves: ``(time, mag, err)`` per curve, 1-D arrays of equal length (any real dtype; computed in float64).
        ids: one identifier per curve, for error messages.

    Returns:
        :class:`CleanedLightCurves` with the kept rows, curve after curve.

    Raises:
        LightCurveValidationError: columns of different lengths, or ``unsorted``/``duplicate_times="raise"``.
    """
    _check_choice("unsorted", unsorted, UNSORTED_MODES)
    _check_choice("duplicate_times", duplicate_times, DUPLICATE_TIME_MODES)
    n_curves = len(curves)
    ids = [None] * n_curves if ids is None else list(ids)
    columns: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for index, (time, mag, err) in enumerate(curves):
        arrays = tuple(np.asarray(a, dtype=np.float64).reshape(-1) for a in (time, mag, err))
        if not arrays[0].size == arrays[1].size == arrays[2].size:
            raise LightCurveValidationError(
                f"{_curve_label(index, ids[index])}: time/mag/err lengths differ "
                f"({arrays[0].size}, {arrays[1].size}, {arrays[2].size})",
                curve_index=index,
                curve_id=ids[index],
                field="shape",
            )
        columns.append(arrays)
    raw_lengths = np.fromiter((c[0].size for c in columns), dtype=np.int64, count=n_curves)
    empty = np.zeros(0, dtype=np.float64)
    time = np.concatenate([c[0] for c in columns]) if columns else empty
    mag = np.concatenate([c[1] for c in columns]) if columns else empty
    err = np.concatenate([c[2] for c in columns]) if columns else empty
    curve_of_row = np.repeat(np.arange(n_curves), raw_lengths)

    finite_time = np.isfinite(time)
    finite_mag = np.isfinite(mag)
    finite_err = np.isfinite(err)
    with np.errstate(invalid="ignore"):
        in_range = (err > min_error) & (err < max_error)
    finite = finite_time & finite_mag & finite_err
    keep = finite & in_range

    def per_curve(flags: np.ndarray) -> np.ndarray:
        return np.bincount(curve_of_row[flags], minlength=n_curves)

    n_nonfinite_time = per_curve(~finite_time)
    n_nonfinite_mag = per_curve(finite_time & ~finite_mag)
    n_nonfinite_err = per_curve(finite_time & finite_mag & ~finite_err)
    n_out_of_range = per_curve(finite & ~in_range)

    time, mag, err, curve_of_row = time[keep], mag[keep], err[keep], curve_of_row[keep]

    same_curve = curve_of_row[1:] == curve_of_row[:-1]
    step = np.diff(time)
    was_sorted = np.zeros(n_curves, dtype=bool)
    unsorted_rows = same_curve & (step < 0)
    if unsorted != "keep" and unsorted_rows.any():
        bad_curves = np.unique(curve_of_row[1:][unsorted_rows])
        if unsorted == "raise":
            first = int(bad_curves[0])
            raise LightCurveValidationError(
                f"{_curve_label(first, ids[first])}: times are not sorted and sorting is off "
                f"({len(bad_curves)} unsorted curve(s) in the input)",
                curve_index=first,
                curve_id=ids[first],
                field="time",
            )
        was_sorted[bad_curves] = True
        order = np.lexsort((time, curve_of_row))  # stable: equal times keep their input order
        time, mag, err, curve_of_row = time[order], mag[order], err[order], curve_of_row[order]
        step = np.diff(time)

    repeated = np.zeros(time.size, dtype=bool)  # row repeats the previous row's time
    repeated[1:] = same_curve & (step == 0)
    n_repeated = np.bincount(curve_of_row[repeated], minlength=n_curves)
    n_dup_dropped = np.zeros(n_curves, dtype=np.int64)
    if repeated.any():
        if duplicate_times == "raise":
            first_row = int(np.flatnonzero(repeated)[0])
            first = int(curve_of_row[first_row])
            raise LightCurveValidationError(
                f"{_curve_label(first, ids[first])}: {int(n_repeated[first])} repeated time value(s) "
                f"(first: {time[first_row]!r}) and duplicate_times='raise'",
                curve_index=first,
                curve_id=ids[first],
                field="time",
            )
        if duplicate_times == "drop":
            n_dup_dropped = n_repeated
            unique = ~repeated
            time, mag, err, curve_of_row = time[unique], mag[unique], err[unique], curve_of_row[unique]

    return CleanedLightCurves(
        time=time,
        mag=mag,
        err=err,
        lengths=np.bincount(curve_of_row, minlength=n_curves).astype(np.int64),
        n_input=raw_lengths,
        n_nonfinite_time=n_nonfinite_time,
        n_nonfinite_magnitude=n_nonfinite_mag,
        n_nonfinite_error=n_nonfinite_err,
        n_error_out_of_range=n_out_of_range,
        n_duplicate_times_dropped=n_dup_dropped,
        n_duplicate_times=n_repeated,
        was_sorted=was_sorted,
    )


# ------------------------------------------------------------------------------------------------------- windows
def _as_generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def window_starts(
    lengths: Any,
    window_size: int,
    sampling: str = "sequential",
    seed: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The windows of curves of the given (cleaned) lengths ``L``, for windows of ``W = window_size`` rows.

    ``"sequential"``: the official pivots ``0, W, …, ⌊L/W⌋·W``, each clamped to ``max(0, min(p, L−W))``, i.e.
    ``⌊L/W⌋+1`` windows per curve. ``"random"``: one window per curve, its pivot uniform on ``0..max(0, L−W)``,
    drawn for all curves by one ``Generator.integers`` call (a curve with ``L ≤ W`` draws nothing and starts at 0).

    Args:
        lengths: scalar or `(n_curves,)` integer array of lengths.
        window_size: ``W``.
        sampling: ``"sequential"`` or ``"random"``.
        seed: for ``"random"``: an int, a ``numpy.random.Generator`` (used as is, so a caller can derive the
            draw from its own generator) or ``None`` (fresh entropy).

    Returns:
        ``(curve_index, start)``, both `(n_windows,)` int64: the curve of each window and its first row.
    """
    _check_choice("sampling", sampling, SAMPLING_MODES)
    lengths = np.atleast_1d(np.asarray(lengths, dtype=np.int64))
    last_start = np.maximum(lengths - int(window_size), 0)
    if sampling == "sequential":
        counts = lengths // int(window_size) + 1
        curve_index = np.repeat(np.arange(lengths.size, dtype=np.int64), counts)
        first_window = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(curve_index.size, dtype=np.int64) - first_window[curve_index]
        start = np.minimum(rank * int(window_size), last_start[curve_index])
    else:
        curve_index = np.arange(lengths.size, dtype=np.int64)
        start = _as_generator(seed).integers(0, last_start + 1, dtype=np.int64)
    return curve_index, start.astype(np.int64)


def window_rows(
    offsets: Any, curve_index: Any, start: Any, window_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the curves' flat arrays that make up each window.

    Args:
        offsets: `(n_curves + 1,)` first row of each curve in the flat arrays, then the total.
        curve_index, start: `(n_windows,)` curve and first row (within its curve) of each window.
        window_size: at most this many rows per window.

    Returns:
        ``(rows, lengths)``: `(lengths.sum(),)` int64 flat rows of every window, window after window, and the
        `(n_windows,)` int64 number of rows of each window, ``min(W, L − start)``.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    curve_index = np.atleast_1d(np.asarray(curve_index, dtype=np.int64))
    start = np.atleast_1d(np.asarray(start, dtype=np.int64))
    curve_length = offsets[curve_index + 1] - offsets[curve_index]
    lengths = np.minimum(curve_length - start, int(window_size))
    first_row = offsets[curve_index] + start
    window_offset = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    rows = np.repeat(first_row - window_offset, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    return rows, lengths


def centre_windows(values: Any, lengths: Any, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Subtract from each ragged window its mean, taken in float64 over its observations, then cast.

    The mean of a window of ``n`` values is numpy's float64 sum of exactly those ``n`` values divided by ``n``
    (``values[window].mean()``): the sum never sees padding, so a window's result does not depend on the width
    it is later padded to.

    Args:
        values: `(lengths.sum(),)` the windows' values, window after window.
        lengths: `(n_windows,)` positive number of values of each window.
        dtype: dtype of the centred values.

    Returns:
        ``(centred, means)``: `(lengths.sum(),)` centred values in ``dtype`` and the `(n_windows,)` float64 means.
    """
    values = np.asarray(values, dtype=np.float64)
    lengths = np.atleast_1d(np.asarray(lengths, dtype=np.int64))
    if lengths.size and lengths.min() < 1:
        raise ValueError("cannot centre an empty window")
    if int(lengths.sum()) != values.shape[0]:
        raise ValueError(f"{values.shape[0]} values for windows of {int(lengths.sum())} observations in all")
    # the windows of one length are the rows of a 2-D block: one vectorised sum per distinct length
    if lengths.size and lengths.min() == lengths.max():
        means = values.reshape(lengths.size, -1).sum(axis=1) / lengths[0]
    else:
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        means = np.empty(lengths.size, dtype=np.float64)
        for n in np.unique(lengths):
            which = np.flatnonzero(lengths == n)
            means[which] = values[first[which, None] + np.arange(n)].sum(axis=1) / n
    centred = (values - np.repeat(means, lengths)).astype(dtype)
    return centred, means


# ------------------------------------------------------------------------------------------------------- padding
def padding_mask(lengths: Any, width: int, side: str = "right") -> np.ndarray:
    """`(n_windows, width)` bool, True at the positions that :func:`pad_windows` fills with observations."""
    _check_choice("padding side", side, PADDING_SIDES)
    lengths = np.atleast_1d(np.asarray(lengths, dtype=np.int64))
    position = np.arange(int(width), dtype=np.int64)[None, :]
    if side == "right":
        return position < lengths[:, None]
    return position >= int(width) - lengths[:, None]


def pad_windows(values: Any, lengths: Any, width: int, side: str = "right", value: float = 0.0) -> np.ndarray:
    """Lay ragged windows into the rows of a padded array.

    Args:
        values: `(lengths.sum(), ...)` the windows' values, window after window (the dtype is kept).
        lengths: `(n_windows,)` number of values of each window, each at most ``width``.
        width: row width ``W``.
        side: ``"right"`` (observations first, then padding) or ``"left"``.
        value: padding value.

    Returns:
        `(n_windows, W, ...)`; :func:`padding_mask` gives the positions holding observations.
    """
    values = np.asarray(values)
    lengths = np.atleast_1d(np.asarray(lengths, dtype=np.int64))
    if lengths.size and (lengths.min() < 0 or lengths.max() > int(width)):
        raise ValueError(f"window lengths must lie in [0, {int(width)}], got [{lengths.min()}, {lengths.max()}]")
    if int(lengths.sum()) != values.shape[0]:
        raise ValueError(f"{values.shape[0]} values for windows of {int(lengths.sum())} observations in all")
    padded = np.full((lengths.size, int(width), *values.shape[1:]), value, dtype=values.dtype)
    padded[padding_mask(lengths, width, side)] = values  # row-major order of the real positions = window order
    return padded


# ---------------------------------------------------------------------------------------------------- parsing
def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _lowered(names: Sequence[str]) -> dict[str, list[str]]:
    lowered: dict[str, list[str]] = {}
    for name in names:
        lowered.setdefault(str(name).lower(), []).append(name)
    return lowered


def _resolve_columns(names: Sequence[str], label: str, index: int | None, curve_id: Any) -> dict[str, str]:
    """Map ``time``/``mag``/``err`` to the caller's column names (case-insensitive aliases)."""
    lowered = _lowered(names)
    resolved: dict[str, str] = {}
    for canonical, aliases in _FIELD_ALIASES.items():
        hits = [orig for alias in aliases for orig in lowered.get(alias, [])]
        if not hits:
            raise LightCurveValidationError(
                f"{label}: no {canonical!r} column; accepted names (case-insensitive) are {list(aliases)}, "
                f"found columns {list(map(str, names))}",
                curve_index=index,
                curve_id=curve_id,
                field=canonical,
            )
        if len(hits) > 1:
            raise LightCurveValidationError(
                f"{label}: ambiguous {canonical!r} column, several candidates {hits}; keep only one",
                curve_index=index,
                curve_id=curve_id,
                field=canonical,
            )
        resolved[canonical] = hits[0]
    return resolved


def _find_band_column(
    names: Sequence[str], band_column: str | None, label: str, index: int | None, curve_id: Any
) -> str | None:
    """The band column: ``band_column`` when given (it must exist), else the one alias of
    :data:`BAND_ALIASES` present (case-insensitive), else None."""
    if band_column is not None:
        if band_column in names:
            return band_column
        raise LightCurveValidationError(
            f"{label}: no band column {band_column!r}; found columns {list(map(str, names))}",
            curve_index=index,
            curve_id=curve_id,
            field="band",
        )
    lowered = _lowered(names)
    hits = [orig for alias in BAND_ALIASES for orig in lowered.get(alias, [])]
    if len(hits) > 1:
        raise LightCurveValidationError(
            f"{label}: several band columns {hits}; name the one to use with band_column=",
            curve_index=index,
            curve_id=curve_id,
            field="band",
        )
    return hits[0] if hits else None


def _refuse_half_precision_times(dtype: Any, label: str, index: int | None, curve_id: Any) -> None:
    if dtype == np.float16:
        raise LightCurveValidationError(
            f"{label}: the times are stored as float16, which rounds a date near MJD 50,000 to steps of 32 days; "
            "store times as float64",
            curve_index=index,
            curve_id=curve_id,
            field="time",
        )


def _as_float64_column(values: Any, label: str, name: str, index: int | None, curve_id: Any) -> np.ndarray:
    """One numeric column as a float64 ndarray (masked / missing values become NaN)."""
    if _is_torch_tensor(values):
        values = values.detach().cpu().numpy()
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):  # pandas Series / extension arrays
        dtype = getattr(values, "dtype", None)
        if name == "time" and dtype == np.float16:
            _refuse_half_precision_times(dtype, label, index, curve_id)
        if dtype is not None and getattr(dtype, "kind", "O") in "biuf":
            values = values.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values = values.to_numpy()
    if isinstance(values, np.ma.MaskedArray):  # astropy MaskedColumn and numpy masked arrays
        if name == "time":
            _refuse_half_precision_times(values.dtype, label, index, curve_id)
        if values.dtype.kind in "biuf":
            values = values.astype(np.float64).filled(np.nan)
        else:
            values = np.asarray(values)
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise LightCurveValidationError(
            f"{label}: field {name!r} is not an array of numbers ({exc})",
            curve_index=index,
            curve_id=curve_id,
            field=name,
        ) from exc
    if name == "time":
        _refuse_half_precision_times(array.dtype, label, index, curve_id)
    kind = array.dtype.kind
    if kind == "O":
        if any(isinstance(v, (str, bytes)) for v in array.flat):
            kind = "U"
        else:
            try:
                array = array.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise LightCurveValidationError(
                    f"{label}: field {name!r} holds non-numeric objects ({exc})",
                    curve_index=index,
                    curve_id=curve_id,
                    field=name,
                ) from exc
            kind = "f"
    if kind not in "iuf":
        what = {
            "U": "strings",
            "S": "bytes",
            "b": "booleans",
            "c": "complex numbers",
            "M": "datetimes",
            "m": "timedeltas",
            "V": "structured records",
        }.get(kind, f"dtype {array.dtype}")
        raise LightCurveValidationError(
            f"{label}: field {name!r} must hold real numbers, got {what} (dtype {array.dtype})",
            curve_index=index,
            curve_id=curve_id,
            field=name,
        )
    return array.astype(np.float64, copy=False)


def _band_text(value: Any) -> str | None:
    """One band value as text (``1`` and ``1.0`` both give ``"1"``); None when missing."""
    if value is None or type(value).__name__ == "NAType":
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (float, np.floating)):
        if value != value:  # NaN
            return None
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _band_labels(
    values: Any, n_rows: int, column: str, label: str, index: int | None, curve_id: Any
) -> np.ndarray:
    """`(n_rows,)` the band of every row as text; a scalar band applies to every row."""
    if _is_torch_tensor(values):
        values = values.detach().cpu().numpy()
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):
        values = values.to_numpy()
    if isinstance(values, np.ma.MaskedArray):
        values = values.astype(object).filled(None)
    array = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if array.ndim == 0:
        array = np.full(n_rows, array.item(), dtype=object)
    if array.ndim != 1 or array.shape[0] != n_rows:
        raise LightCurveValidationError(
            f"{label}: the band column {column!r} must hold one value per observation ({n_rows}), got shape "
            f"{array.shape}",
            curve_index=index,
            curve_id=curve_id,
            field="band",
        )
    if array.dtype.kind in "iuUS":
        return array.astype(str)
    texts = [_band_text(v) for v in array.tolist()]
    missing = sum(t is None for t in texts)
    if missing:
        raise LightCurveValidationError(
            f"{label}: {missing} observation(s) have no value in the band column {column!r}",
            curve_index=index,
            curve_id=curve_id,
            field="band",
        )
    return np.asarray(texts, dtype=str) if texts else np.zeros(0, dtype=str)


@dataclass
class _ParsedLightCurve:
    """``time``/``mag``/``err`` float64 `(L,)` (not yet cleaned) and, when the input has a band column, the
    `(L,)` band of each row as text."""

    time: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    band: np.ndarray | None = None
    band_column: str | None = None


def _parse_light_curve(
    curve: Any, index: int | None, curve_id: Any, band_column: str | None = None
) -> _ParsedLightCurve:
    """Read one light curve in any accepted form (see the module docstring)."""
    label = _curve_label(index, curve_id)
    if _is_torch_tensor(curve):
        curve = curve.detach().cpu().numpy()

    columns: dict[str, Any] | None = None
    names: list[str] | None = None
    if isinstance(curve, np.ndarray) and curve.dtype.names:  # structured / record array
        names = list(curve.dtype.names)
    elif isinstance(curve, Mapping):
        names = list(curve.keys())
    elif hasattr(curve, "colnames"):  # astropy Table (duck-typed)
        names = list(curve.colnames)
    elif (
        hasattr(curve, "columns") and hasattr(curve, "to_numpy") and hasattr(curve, "__getitem__")
    ):  # DataFrame
        names = list(curve.columns)
    if names is not None:
        resolved = _resolve_columns(names, label, index, curve_id)
        columns = {k: curve[v] for k, v in resolved.items()}
    elif band_column is not None:
        raise LightCurveValidationError(
            f"{label}: band_column={band_column!r} needs a table with named columns, got {type(curve).__name__}",
            curve_index=index,
            curve_id=curve_id,
            field="band",
        )

    band = found_band_column = None
    if columns is not None:
        arrays = [_as_float64_column(columns[k], label, k, index, curve_id) for k in ("time", "mag", "err")]
        for name, array in zip(("time", "mag", "err"), arrays):
            if array.ndim != 1:
                raise LightCurveValidationError(
                    f"{label}: column {name!r} must be 1-D, got shape {array.shape}",
                    curve_index=index,
                    curve_id=curve_id,
                    field=name,
                )
        lengths = {name: a.shape[0] for name, a in zip(("time", "mag", "err"), arrays)}
        if len(set(lengths.values())) != 1:
            raise LightCurveValidationError(
                f"{label}: columns have different lengths {lengths}",
                curve_index=index,
                curve_id=curve_id,
                field="shape",
            )
        time, mag, err = arrays
        found_band_column = _find_band_column(names, band_column, label, index, curve_id)
        if found_band_column is not None:
            band = _band_labels(curve[found_band_column], time.shape[0], found_band_column, label, index, curve_id)
    else:
        if isinstance(curve, (str, bytes)) or np.isscalar(curve) or curve is None:
            raise LightCurveValidationError(
                f"{label}: expected an (L, 3) array or a mapping with time/mag/err columns, got {type(curve).__name__}",
                curve_index=index,
                curve_id=curve_id,
                field="shape",
            )
        array = _as_float64_column(curve, label, "values", index, curve_id)
        if array.ndim == 1:
            raise LightCurveValidationError(
                f"{label}: got a bare 1-D array of length {array.shape[0]}; a light curve is an (L, 3) array with "
                "columns (time, mag, err) or a mapping of three columns (to pass one curve as nested lists, wrap "
                "it in np.asarray)",
                curve_index=index,
                curve_id=curve_id,
                field="shape",
            )
        if array.ndim != 2 or array.shape[1] != 3:
            raise LightCurveValidationError(
                f"{label}: expected shape (L, 3) with columns (time, mag, err), got {array.shape}",
                curve_index=index,
                curve_id=curve_id,
                field="shape",
            )
        _refuse_half_precision_times(getattr(curve, "dtype", None), label, index, curve_id)
        time, mag, err = array[:, 0], array[:, 1], array[:, 2]

    if time.shape[0] == 0:
        raise LightCurveValidationError(
            f"{label}: the light curve is empty", curve_index=index, curve_id=curve_id, field="observations"
        )
    bad_time = ~np.isfinite(time)
    if bad_time.any():
        first = int(np.flatnonzero(bad_time)[0])
        raise LightCurveValidationError(
            f"{label}: {int(bad_time.sum())} non-finite time value(s) (first at row {first}: {time[first]}); "
            "times cannot be repaired, remove those rows",
            curve_index=index,
            curve_id=curve_id,
            field="time",
        )
    return _ParsedLightCurve(time, mag, err, band, found_band_column)


def _split_batch(light_curves: Any) -> tuple[list[Any], bool]:
    """Return ``(curves, is_batch)``: one light curve is wrapped in a list."""
    if _is_torch_tensor(light_curves):
        light_curves = light_curves.detach().cpu().numpy()
    if isinstance(light_curves, np.ndarray):
        if light_curves.dtype.names:
            return [light_curves], False
        if light_curves.dtype.kind == "O" and light_curves.ndim == 1:
            return list(light_curves), True
        if light_curves.ndim == 3:
            return list(light_curves), True
        return [light_curves], False
    if (
        isinstance(light_curves, Mapping)
        or hasattr(light_curves, "colnames")
        or hasattr(light_curves, "columns")
    ):
        return [light_curves], False
    if isinstance(light_curves, (list, tuple)):
        if len(light_curves) == 0:
            raise LightCurveValidationError("no light curves given (empty list)", field="observations")
        return list(light_curves), True
    raise LightCurveValidationError(
        f"expected a light curve or a list of light curves, got {type(light_curves).__name__}", field="shape"
    )


def _id_list(ids: Any, n_curves: int, is_batch: bool) -> list[Any]:
    if ids is None:
        return [None] * n_curves
    one = not is_batch and (isinstance(ids, (str, bytes)) or np.isscalar(ids))
    id_list = [ids] if one else list(ids)
    if len(id_list) != n_curves:
        raise ValueError(f"got {len(id_list)} ids for {n_curves} light curves")
    return id_list


def _band_selection(bands: Any) -> tuple[tuple[str, ...] | None, bool]:
    """``(bands as text, has_band_axis)``: a string selects one band (no band axis), a sequence gives a band axis."""
    if bands is None:
        return None, False
    if isinstance(bands, (str, bytes, numbers.Number)):
        return (_band_text(bands),), False
    selected = tuple(_band_text(b) for b in bands)
    if not selected or any(b is None or b == "" for b in selected):
        raise ValueError(f"bands must be a band name or a non-empty sequence of band names, got {bands!r}")
    if len(set(selected)) != len(selected):
        raise ValueError(f"bands lists a band twice: {list(selected)}")
    return selected, True


@dataclass
class RejectedLightCurve:
    """A light curve (or one band of it) that :meth:`AstromerFeatureExtractor.clean_batch` refused, and why."""

    curve_index: int
    band: str | None
    error: LightCurveValidationError


@dataclass
class CleanedBatch:
    """What :meth:`AstromerFeatureExtractor.clean_batch` made of its input.

    The *units* are the input light curves or, when bands are selected, the (light curve, band) pairs: curve after
    curve, bands in the order requested.

    Attributes:
        cleaned: the accepted units' cleaned rows, back to back (:class:`CleanedLightCurves`).
        curve_index: `(n_accepted,)` int64 input position of each accepted unit's light curve.
        band_index: `(n_accepted,)` int64 position of each accepted unit's band in ``bands`` (0 without bands).
        bands: the selected bands as text, or ``None``.
        n_curves: number of input light curves.
        rejected: the refused units, in input order.
    """

    cleaned: CleanedLightCurves
    curve_index: np.ndarray
    band_index: np.ndarray
    bands: tuple[str, ...] | None
    n_curves: int
    rejected: list[RejectedLightCurve]

    @property
    def n_bands(self) -> int:
        return 1 if self.bands is None else len(self.bands)

    @property
    def unit_index(self) -> np.ndarray:
        """`(n_accepted,)` int64 ``curve_index * n_bands + band_index``."""
        return self.curve_index * self.n_bands + self.band_index


def _unit_label(index: int, curve_id: Any, band: str | None) -> str:
    label = _curve_label(index, curve_id)
    return label if band is None else f"{label}, band {band!r}"


def _relabel(error: LightCurveValidationError, old: str, new: str, index: int, curve_id: Any
             ) -> LightCurveValidationError:
    """``error`` with its leading label ``old`` replaced by ``new`` and the curve's own position and id."""
    message = str(error)
    if message.startswith(old):
        message = new + message[len(old):]
    return LightCurveValidationError(message, curve_index=index, curve_id=curve_id, field=error.field,
                                     source=error.source)


class AstromerFeatureExtractor(FeatureExtractionMixin):
    r"""Turns raw light curves into Astromer model inputs (centred, padded windows).

    Args:
        window_size (`int`, defaults to 200): observations per window.
        min_observations (`int`, defaults to 5): minimum valid observations a curve must keep after cleaning.
        max_error (`float`, defaults to 1.0): rows are kept when ``0 < err < max_error`` (official filter).
        sampling (`str`, defaults to `"sequential"`): ``"sequential"`` (all official windows; embeddings,
            classification) or ``"random"`` (one random contiguous window per curve; pretraining).
        padding_value (`float`, defaults to 0.0): value of magnitudes, times and errors at padding positions.
        padding_side (`str`, defaults to `"right"`): ``"right"`` (Astromer) or ``"left"``.
        duplicate_times (`str`, defaults to `"keep"`): what to do with repeated times within a curve.
            ``"keep"``: keep every row (the official behaviour); ``"drop"``: keep the first row (input order) of
            each repeated time; ``"raise"``: raise :class:`LightCurveValidationError`.
        sort_times (`bool`, defaults to `True`): repair unsorted input with a stable sort by time; when False an
            unsorted curve raises.
        band_column (`str`, *optional*): the column holding each observation's band or filter; by default one of
            :data:`BAND_ALIASES` (``band``, ``filter``, ``passband``, ``fid``, ``filtercode``; case-insensitive)
            is used when present.
        max_abs_magnitude (`float`, defaults to 100.0): a kept magnitude must lie in ``[-max_abs_magnitude,
            max_abs_magnitude]``; a curve with one outside is refused (magnitudes of 1e30 make the model's float32
            activations overflow to NaN, and 3.4e38 overflows float32 itself).
        max_time_span (`float`, defaults to 100000.0): the kept observations of a curve must span at most this many
            days (274 years); a larger span means the times are not in days (e.g. seconds).

    **Bands.** Astromer embeds one band at a time. A curve with a band column holding more than one band is refused
    unless ``bands`` is given at call time: ``bands="r"`` keeps the ``r`` rows of every curve, ``bands=["g", "r"]``
    makes each (curve, band) pair a light curve of its own, curve after curve, bands in the order given (a band
    axis). A curve without a requested band is refused, naming the curve and the band.

    Calling it returns a [`BatchFeature`] with, for ``n_windows`` windows of width ``W = window_size``:

    - ``magnitudes`` `(n_windows, W)` float32: magnitudes minus the window mean (float64 mean over real obs);
    - ``times`` `(n_windows, W)` float32: times (days) minus the window mean;
    - ``errors`` `(n_windows, W)` float32: the original, un-centred uncertainties;
    - ``attention_mask`` `(n_windows, W)` int64: 1 = real observation, 0 = padding;
    - ``light_curve_index`` `(n_windows,)` int64: input curve of each window (see :func:`pool_windows`); with a
      band list of ``k`` bands, the (curve, band) pair ``k * curve + band position``;
    - ``band_index`` `(n_windows,)` int64 (with a band list only): position of the window's band in ``bands``;
    - ``window_start`` `(n_windows,)` int64: index of the window's first point in the cleaned curve;
    - ``time_offset``, ``magnitude_offset`` `(n_windows,)` float64: the subtracted window means;
    - with ``return_cleaning_report=True`` also ``n_dropped`` `(n_units,)` int64 (rows removed per curve, or per
      (curve, band)) and ``n_observations`` `(n_units,)` int64 (rows kept).

    With ``padding=False`` the windows are not padded: ``magnitudes``, ``times`` and ``errors`` are the real
    observations of every window laid back to back, `(total_observations,)`, ``window_length`` `(n_windows,)` gives
    the number of each window, and there is no ``attention_mask`` (the layout that packed models take, see
    ``modeling_astromer.packing``).
    """

    model_input_names: ClassVar[list[str]] = ["magnitudes", "times", "attention_mask"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "AstromerFeatureExtractor":
        """As [`FeatureExtractionMixin.from_pretrained`]; a bundled model name (`"astromer1-macho"`) loads its folder."""
        return super().from_pretrained(resolve_bundled_name(pretrained_model_name_or_path), *args, **kwargs)

    def __init__(
        self,
        window_size: int = 200,
        min_observations: int = 5,
        max_error: float = 1.0,
        sampling: str = "sequential",
        padding_value: float = 0.0,
        padding_side: str = "right",
        duplicate_times: str = "keep",
        sort_times: bool = True,
        band_column: str | None = None,
        max_abs_magnitude: float = MAX_ABS_MAGNITUDE,
        max_time_span: float = MAX_TIME_SPAN,
        **kwargs: Any,
    ) -> None:
        if not isinstance(window_size, numbers.Integral) or window_size < 1:
            raise ValueError(f"window_size must be a positive integer, got {window_size!r}")
        if not isinstance(min_observations, numbers.Integral) or min_observations < 1:
            raise ValueError(f"min_observations must be a positive integer, got {min_observations!r}")
        if not isinstance(max_error, numbers.Real) or not (max_error > 0):
            raise ValueError(f"max_error must be a positive number, got {max_error!r}")
        for name, bound in (("max_abs_magnitude", max_abs_magnitude), ("max_time_span", max_time_span)):
            if not isinstance(bound, numbers.Real) or not (0 < bound < np.finfo(np.float32).max):
                raise ValueError(f"{name} must be a positive number below float32's maximum, got {bound!r}")
        _check_choice("sampling", sampling, SAMPLING_MODES)
        _check_choice("padding_side", padding_side, PADDING_SIDES)
        _check_choice("duplicate_times", duplicate_times, DUPLICATE_TIME_MODES)
        if not isinstance(padding_value, numbers.Real):
            raise TypeError(f"padding_value must be a number, got {padding_value!r}")
        if band_column is not None and not isinstance(band_column, str):
            raise TypeError(f"band_column must be a column name, got {band_column!r}")
        super().__init__(**kwargs)
        self.window_size = int(window_size)
        self.min_observations = int(min_observations)
        self.max_error = float(max_error)
        self.sampling = sampling
        self.padding_value = float(padding_value)
        self.padding_side = padding_side
        self.duplicate_times = duplicate_times
        self.sort_times = bool(sort_times)
        self.band_column = band_column
        self.max_abs_magnitude = float(max_abs_magnitude)
        self.max_time_span = float(max_time_span)

    # ------------------------------------------------------------------------------------------------ cleaning
    def clean(self, light_curve: Any, curve_id: Any = None) -> CleanedLightCurve:
        """Validate and clean ONE light curve.

        Returns:
            :class:`CleanedLightCurve` with float64 `(n_kept,)` arrays and a :class:`CleaningReport`.
        """
        return self.clean_batch([light_curve], ids=[curve_id]).cleaned.curve(0)

    def clean_batch(
        self,
        light_curves: Any,
        ids: Sequence[Any] | None = None,
        bands: Any = None,
        band_column: str | None = None,
        on_error: str = "raise",
    ) -> CleanedBatch:
        """Parse, validate, select bands and clean all curves at once.

        Every unit (curve, or (curve, band) pair with ``bands``) must parse, hold its band, keep at least
        ``min_observations`` rows after cleaning, and keep magnitudes and a time span within the bounds
        (``max_abs_magnitude``, ``max_time_span``).

        Args:
            light_curves: one light curve or a list (see the module docstring for accepted formats).
            ids: one identifier per light curve, used in error messages.
            bands: ``None``, one band name, or a sequence of band names (see the class docstring).
            band_column: overrides ``self.band_column`` for this call.
            on_error: ``"raise"`` raises :class:`LightCurveValidationError` for the first refused unit;
                ``"collect"`` keeps going and lists the refused units in ``rejected``.

        Returns:
            :class:`CleanedBatch`.
        """
        _check_choice("on_error", on_error, ("raise", "collect"))
        curves, is_batch = _split_batch(light_curves)
        id_list = _id_list(ids, len(curves), is_batch)
        selected, _ = _band_selection(bands)
        band_column = self.band_column if band_column is None else band_column
        raising = on_error == "raise"
        rejected: list[RejectedLightCurve] = []

        def refuse(curve: int, band: str | None, error: LightCurveValidationError) -> None:
            if raising:
                raise error
            rejected.append(RejectedLightCurve(curve, band, error))

        columns: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        unit_curve: list[int] = []
        unit_band: list[int] = []
        for index, curve in enumerate(curves):
            curve_id = id_list[index]
            try:
                parsed = _parse_light_curve(curve, index, curve_id, band_column)
                selection = self._band_rows(parsed, selected, index, curve_id)
            except LightCurveValidationError as error:
                refuse(index, None, error)
                continue
            for band_position, rows in enumerate(selection):
                if isinstance(rows, LightCurveValidationError):
                    refuse(index, selected[band_position], rows)
                    continue
                columns.append((parsed.time[rows], parsed.mag[rows], parsed.err[rows]))
                unit_curve.append(index)
                unit_band.append(band_position)

        cleaned = self._clean_units(columns, unit_curve, unit_band, selected, id_list, refuse)
        unit_curve_array = np.asarray(unit_curve, dtype=np.int64)
        unit_band_array = np.asarray(unit_band, dtype=np.int64)
        keep = np.ones(len(cleaned), dtype=bool)
        problems = self._unit_problems(cleaned, unit_curve_array, unit_band_array, selected, id_list)
        for unit, error in problems:
            keep[unit] = False
            refuse(int(unit_curve_array[unit]), None if selected is None else selected[unit_band_array[unit]], error)
        if not keep.all():
            cleaned = cleaned.subset(np.flatnonzero(keep))
            unit_curve_array, unit_band_array = unit_curve_array[keep], unit_band_array[keep]
        rejected.sort(key=lambda r: (r.curve_index, -1 if r.band is None else selected.index(r.band)))
        return CleanedBatch(cleaned, unit_curve_array, unit_band_array, selected, len(curves), rejected)

    def _band_rows(
        self, parsed: _ParsedLightCurve, selected: tuple[str, ...] | None, index: int, curve_id: Any
    ) -> list[Any]:
        """Per selected band, the rows of ``parsed`` in it (a slice for all rows) or the error of a missing band."""
        label = _curve_label(index, curve_id)
        if parsed.band is None:
            if selected is None:
                return [slice(None)]
            raise LightCurveValidationError(
                f"{label}: bands {list(selected)} were requested but the light curve has no band column (accepted "
                f"names, case-insensitive: {list(BAND_ALIASES)}; or name it with band_column=)",
                curve_index=index,
                curve_id=curve_id,
                field="band",
            )
        present = np.unique(parsed.band)
        if selected is None:
            if present.size > 1:
                raise LightCurveValidationError(
                    f"{label}: holds {present.size} bands {present.tolist()} (column {parsed.band_column!r}); "
                    "Astromer embeds one band at a time: choose them with bands=[...] (command line: --bands)",
                    curve_index=index,
                    curve_id=curve_id,
                    field="band",
                )
            return [slice(None)]
        rows: list[Any] = []
        for band in selected:
            in_band = np.flatnonzero(parsed.band == band)
            if in_band.size:
                rows.append(in_band)
            else:
                rows.append(LightCurveValidationError(
                    f"{_unit_label(index, curve_id, band)}: no observation in band {band!r}; the light curve has "
                    f"bands {present.tolist()}",
                    curve_index=index,
                    curve_id=curve_id,
                    field="band",
                ))
        return rows

    def _clean_units(self, columns, unit_curve, unit_band, selected, id_list, refuse) -> CleanedLightCurves:
        """:func:`clean_light_curves` over the units; a unit it refuses (``sort_times=False`` or
        ``duplicate_times="raise"``) is named by its curve and band, and left out when collecting."""
        while True:
            try:
                return clean_light_curves(
                    columns,
                    max_error=self.max_error,
                    unsorted="sort" if self.sort_times else "raise",
                    duplicate_times=self.duplicate_times,
                    ids=[id_list[c] for c in unit_curve],
                )
            except LightCurveValidationError as error:
                unit = error.curve_index
                curve, curve_id = unit_curve[unit], id_list[unit_curve[unit]]
                band = None if selected is None else selected[unit_band[unit]]
                refuse(curve, band, _relabel(error, _curve_label(unit, curve_id), _unit_label(curve, curve_id, band),
                                             curve, curve_id))
                for values in (columns, unit_curve, unit_band):
                    del values[unit]

    def _unit_problems(
        self,
        cleaned: CleanedLightCurves,
        unit_curve: np.ndarray,
        unit_band: np.ndarray,
        selected: tuple[str, ...] | None,
        id_list: list[Any],
    ) -> list[tuple[int, LightCurveValidationError]]:
        """The units with too few rows after cleaning, or with values outside the accepted ranges, with their
        errors, in unit order."""

        def label(unit: int) -> str:
            band = None if selected is None else selected[int(unit_band[unit])]
            return _unit_label(int(unit_curve[unit]), id_list[int(unit_curve[unit])], band)

        def error(unit: int, message: str, field: str) -> LightCurveValidationError:
            curve = int(unit_curve[unit])
            return LightCurveValidationError(message, curve_index=curve, curve_id=id_list[curve], field=field)

        problems: dict[int, LightCurveValidationError] = {}
        short = np.flatnonzero(cleaned.lengths < self.min_observations)
        for rank, unit in enumerate(short.tolist()):
            more = ""
            if rank == 0 and short.size > 1:
                more = f"; {short.size - 1} other curve(s) are too short as well"
            problems[unit] = error(
                unit,
                f"{label(unit)}: only {int(cleaned.lengths[unit])} valid observation(s) after cleaning, need at "
                f"least min_observations={self.min_observations}; {cleaned.report(unit).describe()} "
                f"(kept rows need finite magnitude and error with 0 < err < {self.max_error}){more}",
                "observations",
            )

        offsets = cleaned.offsets
        filled = np.flatnonzero(cleaned.lengths > 0)
        if filled.size:
            starts = offsets[filled]
            largest = np.maximum.reduceat(np.abs(cleaned.mag), starts)
            span = np.maximum.reduceat(cleaned.time, starts) - np.minimum.reduceat(cleaned.time, starts)
            for unit in filled[largest > self.max_abs_magnitude].tolist():
                if unit in problems:
                    continue
                rows = slice(int(offsets[unit]), int(offsets[unit + 1]))
                worst = int(np.argmax(np.abs(cleaned.mag[rows])))
                problems[unit] = error(
                    unit,
                    f"{label(unit)}: magnitude {cleaned.mag[rows][worst]:.6g} (at time {float(cleaned.time[rows][worst])!r}) "
                    f"is outside [-{self.max_abs_magnitude:g}, {self.max_abs_magnitude:g}]; magnitudes that large "
                    "overflow the model's float32 arithmetic (the bound is max_abs_magnitude)",
                    "mag",
                )
            for unit in filled[span > self.max_time_span].tolist():
                if unit in problems:
                    continue
                problems[unit] = error(
                    unit,
                    f"{label(unit)}: the observations span {float(span[filled == unit][0]):.6g} days, more than "
                    f"max_time_span={self.max_time_span:g}; times must be in days (MJD, JD), not seconds",
                    "time",
                )
        return sorted(problems.items())

    # ------------------------------------------------------------------------------------------------- call
    def __call__(
        self,
        light_curves: Any,
        return_tensors: str | None = None,
        sampling: str | None = None,
        seed: int | np.random.Generator | None = None,
        ids: Sequence[Any] | None = None,
        return_cleaning_report: bool = False,
        bands: Any = None,
        band_column: str | None = None,
        padding: bool | str = True,
        **kwargs: Any,
    ) -> BatchFeature:
        """Convert one light curve or a list of them into padded, centred windows.

        Args:
            light_curves: one light curve or a list (see the module docstring for accepted formats).
            return_tensors: ``None``/``"np"`` for numpy, ``"pt"`` for torch tensors.
            sampling: overrides ``self.sampling`` for this call.
            seed: seed (or a ``numpy.random.Generator``) for ``sampling="random"``.
            ids: one identifier per light curve, used in error messages.
            return_cleaning_report: add ``n_dropped`` and ``n_observations`` per light curve (or (curve, band)).
            bands: ``None``, a band name, or a list of band names (see the class docstring).
            band_column: overrides ``self.band_column`` for this call.
            padding: ``True``/``"max_length"`` pads every window to ``window_size``; ``False``/``"do_not_pad"``
                returns the windows back to back with ``window_length`` (see the class docstring).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if padding not in (True, False, "max_length", "do_not_pad"):
            raise ValueError(f"padding must be True, False, 'max_length' or 'do_not_pad', got {padding!r}")
        sampling = self.sampling if sampling is None else sampling
        _check_choice("sampling", sampling, SAMPLING_MODES)
        _, band_axis = _band_selection(bands)
        batch = self.clean_batch(light_curves, ids=ids, bands=bands, band_column=band_column)
        data = self.window_features(batch, sampling=sampling, seed=seed, padding=padding in (True, "max_length"))
        if not band_axis:
            data.pop("band_index")
        if return_cleaning_report:
            data["n_dropped"] = batch.cleaned.n_input - batch.cleaned.lengths
            data["n_observations"] = batch.cleaned.lengths.copy()
        return BatchFeature(data, tensor_type=return_tensors)

    def window_features(
        self,
        batch: CleanedBatch,
        sampling: str | None = None,
        seed: int | np.random.Generator | None = None,
        padding: bool = True,
    ) -> dict[str, np.ndarray]:
        """Window, centre and (with ``padding``) pad the accepted units of ``batch``.

        Returns:
            The arrays of :meth:`__call__` as NumPy arrays (with ``band_index`` always), where
            ``light_curve_index`` is the unit index ``curve * n_bands + band`` of :class:`CleanedBatch`.
        """
        sampling = self.sampling if sampling is None else sampling
        cleaned = batch.cleaned
        accepted, start = window_starts(cleaned.lengths, self.window_size, sampling, seed)
        rows, n_real = window_rows(cleaned.offsets, accepted, start, self.window_size)
        times, time_offset = centre_windows(cleaned.time[rows], n_real)
        magnitudes, magnitude_offset = centre_windows(cleaned.mag[rows], n_real)
        errors = cleaned.err[rows].astype(np.float32)
        data: dict[str, np.ndarray] = {}
        if padding:
            def pad(values: np.ndarray) -> np.ndarray:
                return pad_windows(values, n_real, self.window_size, self.padding_side, self.padding_value)

            data.update(
                magnitudes=pad(magnitudes),
                times=pad(times),
                errors=pad(errors),
                attention_mask=padding_mask(n_real, self.window_size, self.padding_side).astype(np.int64),
            )
        else:
            data.update(magnitudes=magnitudes, times=times, errors=errors, window_length=n_real)
        data.update(
            light_curve_index=batch.unit_index[accepted],
            band_index=batch.band_index[accepted],
            window_start=start,
            time_offset=time_offset,
            magnitude_offset=magnitude_offset,
        )
        return data

    # ------------------------------------------------------------------------------------------------ pooling
    @staticmethod
    def pool_windows(
        window_embeddings: Any, light_curve_index: Any, n_curves: int, reduce: str = "mean"
    ) -> Any:
        """See :func:`pool_windows`."""
        return pool_windows(window_embeddings, light_curve_index, n_curves, reduce)


def pool_windows(window_embeddings: Any, light_curve_index: Any, n_curves: int, reduce: str = "mean") -> Any:
    """Pool per-window vectors back to one vector per light curve, in input order.

    Args:
        window_embeddings: `(n_windows, D)` numpy array or torch tensor.
        light_curve_index: `(n_windows,)` integer curve index of each window (the feature extractor's
            ``light_curve_index``).
        n_curves: number of light curves; every curve must own at least one window.
        reduce: ``"mean"`` (default, the recommended per-object embedding) or ``"max"``.

    Returns:
        `(n_curves, D)`, same array type and dtype as ``window_embeddings``.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    if _is_torch_tensor(window_embeddings):
        import torch

        emb = window_embeddings
        index = torch.as_tensor(light_curve_index, device=emb.device).long()
        _check_pool_index(index.cpu().numpy(), emb.shape, n_curves)
        out_shape = (n_curves,) + tuple(emb.shape[1:])
        expanded = index.view(-1, *([1] * (emb.dim() - 1))).expand_as(emb)
        if reduce == "mean":
            total = torch.zeros(out_shape, dtype=emb.dtype, device=emb.device).scatter_add(0, expanded, emb)
            counts = torch.bincount(index, minlength=n_curves).to(emb.dtype)
            return total / counts.view(-1, *([1] * (emb.dim() - 1)))
        init = torch.full(out_shape, float("-inf"), dtype=emb.dtype, device=emb.device)
        return init.scatter_reduce(0, expanded, emb, reduce="amax", include_self=True)

    emb = np.asarray(window_embeddings)
    index = np.asarray(light_curve_index).astype(np.int64)
    _check_pool_index(index, emb.shape, n_curves)
    if reduce == "mean":
        total = np.zeros((n_curves,) + emb.shape[1:], dtype=np.result_type(emb.dtype, np.float32))
        np.add.at(total, index, emb)
        counts = np.bincount(index, minlength=n_curves).reshape((-1,) + (1,) * (emb.ndim - 1))
        return (total / counts).astype(emb.dtype, copy=False)
    out = np.full((n_curves,) + emb.shape[1:], -np.inf, dtype=np.result_type(emb.dtype, np.float32))
    np.maximum.at(out, index, emb)
    return out.astype(emb.dtype, copy=False)


def _check_pool_index(index: np.ndarray, emb_shape: tuple[int, ...], n_curves: int) -> None:
    if len(emb_shape) < 1 or index.ndim != 1 or index.shape[0] != emb_shape[0]:
        raise ValueError(
            f"light_curve_index must have shape (n_windows,) = ({emb_shape[0] if emb_shape else '?'},), "
            f"got {index.shape}"
        )
    if index.size and (index.min() < 0 or index.max() >= n_curves):
        raise ValueError(
            f"light_curve_index values must lie in [0, {n_curves}), got [{index.min()}, {index.max()}]"
        )
    missing = np.setdiff1d(np.arange(n_curves), index)
    if missing.size:
        raise ValueError(f"light curve(s) {missing[:10].tolist()} have no window to pool")
