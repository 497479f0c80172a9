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
   ``.colnames`` plus column access).
2. **Validate**: a clear :class:`LightCurveValidationError` names the curve (index and id) and the field for a
   wrong shape, a non-numeric dtype, a non-finite *time*, an empty curve, or too few valid observations.
3. **Clean** (:func:`clean_light_curves`, the official filter): drop rows whose magnitude or error is not finite or
   whose error is outside ``(0, max_error)``; sort by time with a stable sort when needed; handle repeated times
   according to ``duplicate_times``. What was dropped is counted per curve (:meth:`AstromerFeatureExtractor.clean`,
   or ``return_cleaning_report=True``).
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
6. **Pad** (:func:`pad_windows`) on the right (or left, ``padding_side``) to ``window_size`` with ``padding_value``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin

from .errors import AstromerError, LightCurveValidationError

__all__ = [
    "AstromerError",
    "AstromerFeatureExtractor",
    "CleanedLightCurve",
    "CleanedLightCurves",
    "CleaningReport",
    "LightCurveValidationError",
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


def _resolve_columns(names: Sequence[str], label: str, index: int | None, curve_id: Any) -> dict[str, str]:
    """Map ``time``/``mag``/``err`` to the caller's column names (case-insensitive aliases)."""
    lowered: dict[str, list[str]] = {}
    for name in names:
        lowered.setdefault(str(name).lower(), []).append(name)
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


def _as_float64_column(values: Any, label: str, name: str, index: int | None, curve_id: Any) -> np.ndarray:
    """One numeric column as a float64 ndarray (masked / missing values become NaN)."""
    if _is_torch_tensor(values):
        values = values.detach().cpu().numpy()
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):  # pandas Series / extension arrays
        dtype = getattr(values, "dtype", None)
        if dtype is not None and getattr(dtype, "kind", "O") in "biuf":
            values = values.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values = values.to_numpy()
    if isinstance(values, np.ma.MaskedArray):  # astropy MaskedColumn and numpy masked arrays
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


def _parse_light_curve(
    curve: Any, index: int | None, curve_id: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(time, mag, err)`` float64 1-D arrays of equal length (not yet cleaned)."""
    label = _curve_label(index, curve_id)
    if _is_torch_tensor(curve):
        curve = curve.detach().cpu().numpy()

    columns: dict[str, Any] | None = None
    if isinstance(curve, np.ndarray) and curve.dtype.names:  # structured / record array
        names = _resolve_columns(curve.dtype.names, label, index, curve_id)
        columns = {k: curve[v] for k, v in names.items()}
    elif isinstance(curve, Mapping):
        names = _resolve_columns(list(curve.keys()), label, index, curve_id)
        columns = {k: curve[v] for k, v in names.items()}
    elif hasattr(curve, "colnames"):  # astropy Table (duck-typed)
        names = _resolve_columns(list(curve.colnames), label, index, curve_id)
        columns = {k: curve[v] for k, v in names.items()}
    elif (
        hasattr(curve, "columns") and hasattr(curve, "to_numpy") and hasattr(curve, "__getitem__")
    ):  # DataFrame
        names = _resolve_columns(list(curve.columns), label, index, curve_id)
        columns = {k: curve[v] for k, v in names.items()}

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
    return time, mag, err


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

    Calling it returns a [`BatchFeature`] with, for ``n_windows`` windows of width ``W = window_size``:

    - ``magnitudes`` `(n_windows, W)` float32: magnitudes minus the window mean (float64 mean over real obs);
    - ``times`` `(n_windows, W)` float32: times (days) minus the window mean;
    - ``errors`` `(n_windows, W)` float32: the original, un-centred uncertainties;
    - ``attention_mask`` `(n_windows, W)` int64: 1 = real observation, 0 = padding;
    - ``light_curve_index`` `(n_windows,)` int64: input curve of each window (see :func:`pool_windows`);
    - ``window_start`` `(n_windows,)` int64: index of the window's first point in the cleaned curve;
    - ``time_offset``, ``magnitude_offset`` `(n_windows,)` float64: the subtracted window means;
    - with ``return_cleaning_report=True`` also ``n_dropped`` `(n_curves,)` int64 (rows removed per curve) and
      ``n_observations`` `(n_curves,)` int64 (rows kept).
    """

    model_input_names: ClassVar[list[str]] = ["magnitudes", "times", "attention_mask"]

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
        **kwargs: Any,
    ) -> None:
        if not isinstance(window_size, numbers.Integral) or window_size < 1:
            raise ValueError(f"window_size must be a positive integer, got {window_size!r}")
        if not isinstance(min_observations, numbers.Integral) or min_observations < 1:
            raise ValueError(f"min_observations must be a positive integer, got {min_observations!r}")
        if not isinstance(max_error, numbers.Real) or not (max_error > 0):
            raise ValueError(f"max_error must be a positive number, got {max_error!r}")
        _check_choice("sampling", sampling, SAMPLING_MODES)
        _check_choice("padding_side", padding_side, PADDING_SIDES)
        _check_choice("duplicate_times", duplicate_times, DUPLICATE_TIME_MODES)
        if not isinstance(padding_value, numbers.Real):
            raise TypeError(f"padding_value must be a number, got {padding_value!r}")
        super().__init__(**kwargs)
        self.window_size = int(window_size)
        self.min_observations = int(min_observations)
        self.max_error = float(max_error)
        self.sampling = sampling
        self.padding_value = float(padding_value)
        self.padding_side = padding_side
        self.duplicate_times = duplicate_times
        self.sort_times = bool(sort_times)

    # ------------------------------------------------------------------------------------------------ cleaning
    def clean(self, light_curve: Any, curve_id: Any = None) -> CleanedLightCurve:
        """Validate and clean ONE light curve.

        Returns:
            :class:`CleanedLightCurve` with float64 `(n_kept,)` arrays and a :class:`CleaningReport`.
        """
        return self._clean_many([light_curve], [curve_id]).curve(0)

    def _clean_many(self, curves: list[Any], ids: list[Any]) -> CleanedLightCurves:
        """Parse, validate and clean all curves at once; a curve left with too few rows raises."""
        cleaned = clean_light_curves(
            [_parse_light_curve(c, i, ids[i]) for i, c in enumerate(curves)],
            max_error=self.max_error,
            unsorted="sort" if self.sort_times else "raise",
            duplicate_times=self.duplicate_times,
            ids=ids,
        )
        short = np.flatnonzero(cleaned.lengths < self.min_observations)
        if short.size:
            first = int(short[0])
            more = f"; {short.size - 1} other curve(s) are too short as well" if short.size > 1 else ""
            raise LightCurveValidationError(
                f"{_curve_label(first, ids[first])}: only {int(cleaned.lengths[first])} valid observation(s) after "
                f"cleaning, need at least min_observations={self.min_observations}; "
                f"{cleaned.report(first).describe()} "
                f"(kept rows need finite magnitude and error with 0 < err < {self.max_error}){more}",
                curve_index=first,
                curve_id=ids[first],
                field="observations",
            )
        return cleaned

    # ------------------------------------------------------------------------------------------------- call
    def __call__(
        self,
        light_curves: Any,
        return_tensors: str | None = None,
        sampling: str | None = None,
        seed: int | np.random.Generator | None = None,
        ids: Sequence[Any] | None = None,
        return_cleaning_report: bool = False,
        **kwargs: Any,
    ) -> BatchFeature:
        """Convert one light curve or a list of them into padded, centred windows.

        Args:
            light_curves: one light curve or a list (see the module docstring for accepted formats).
            return_tensors: ``None``/``"np"`` for numpy, ``"pt"`` for torch tensors.
            sampling: overrides ``self.sampling`` for this call.
            seed: seed (or a ``numpy.random.Generator``) for ``sampling="random"``.
            ids: one identifier per light curve, used in error messages.
            return_cleaning_report: add ``n_dropped`` and ``n_observations`` per light curve.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        sampling = self.sampling if sampling is None else sampling
        _check_choice("sampling", sampling, SAMPLING_MODES)
        curves, is_batch = _split_batch(light_curves)
        if ids is None:
            id_list: list[Any] = [None] * len(curves)
        else:
            id_list = (
                [ids] if (not is_batch and (isinstance(ids, (str, bytes)) or np.isscalar(ids))) else list(ids)
            )
            if len(id_list) != len(curves):
                raise ValueError(f"got {len(id_list)} ids for {len(curves)} light curves")
        cleaned = self._clean_many(curves, id_list)
        curve_index, start = window_starts(cleaned.lengths, self.window_size, sampling, seed)
        rows, n_real = window_rows(cleaned.offsets, curve_index, start, self.window_size)
        times, time_offset = centre_windows(cleaned.time[rows], n_real)
        magnitudes, magnitude_offset = centre_windows(cleaned.mag[rows], n_real)
        errors = cleaned.err[rows].astype(np.float32)

        def pad(values: np.ndarray) -> np.ndarray:
            return pad_windows(values, n_real, self.window_size, self.padding_side, self.padding_value)

        data: dict[str, np.ndarray] = {
            "magnitudes": pad(magnitudes),
            "times": pad(times),
            "errors": pad(errors),
            "attention_mask": padding_mask(n_real, self.window_size, self.padding_side).astype(np.int64),
            "light_curve_index": curve_index,
            "window_start": start,
            "time_offset": time_offset,
            "magnitude_offset": magnitude_offset,
        }
        if return_cleaning_report:
            data["n_dropped"] = cleaned.n_input - cleaned.lengths
            data["n_observations"] = cleaned.lengths.copy()
        return BatchFeature(data, tensor_type=return_tensors)

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
