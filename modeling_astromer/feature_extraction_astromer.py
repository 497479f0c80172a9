# Copyright 2026 The astromer-hf developers. MIT licence.
"""Feature extractor for Astromer: raw light curves -> centred, padded 200-observation windows.

Self-contained on purpose: this file is also shipped as Hub remote code, so it imports only numpy, the
standard library, ``transformers`` and (optionally) torch.

Pipeline (Astromer spec §2), per light curve:

1. **Parse** one ``(L, 3)`` array ``(time, mag, err)``, a structured array, a mapping / ``pandas.DataFrame``
   with time/mag/err columns (aliases below, case-insensitive) or an astropy-``Table``-like object (duck-typed:
   ``.colnames`` plus column access).
2. **Validate**: a clear :class:`LightCurveValidationError` names the curve (index and id) and the field for a
   wrong shape, a non-numeric dtype, a non-finite *time*, an empty curve, or too few valid observations.
3. **Clean** (documented repair, the official filter): drop rows whose magnitude or error is not finite or whose
   error is outside ``(0, max_error)``; sort by time with a stable sort when needed; handle repeated times
   according to ``duplicate_times``. What was dropped is counted per curve (:meth:`AstromerFeatureExtractor.clean`,
   or ``return_cleaning_report=True``).
4. **Window**: "sequential" uses the official pivots ``0, W, …, ⌊L/W⌋·W`` clamped to ``max(0, min(p, L−W))``, i.e.
   ``⌊L/W⌋+1`` windows. The last window overlaps the previous one, and when ``L`` is a multiple of ``W`` it is an
   exact duplicate (``L = 200`` gives two identical windows). This is what the official TensorFlow code does and
   what the released embeddings were computed with, so it is kept. "random" takes one contiguous window per curve
   with the pivot drawn uniformly from ``0..L−W`` (the whole curve when ``L ≤ W``).
5. **Centre** time and magnitude per window over the real observations, in float64, then cast to float32. Times are
   *not* shifted to start at 0 (that is not Astromer's normalisation). Errors are returned un-centred: they feed the
   official loss weights, which the official code computes from the original uncertainties.

   Finding (reference data): the official TensorFlow pipeline casts to float32 *before* centring and takes a
   float32 mean, so its centred MJDs differ from float64 centring by up to ~0.078 d on the reference MACHO windows
   (a per-window constant from the float32 mean plus ≤ ~0.002 d per point). This extractor centres in float64,
   which matches TF to ~0.08 d in time and to float32 rounding in magnitude.
6. **Pad** on the right (or left, ``padding_side``) to ``window_size`` with ``padding_value``.
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
    "CleaningReport",
    "LightCurveValidationError",
    "pool_windows",
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
PADDING_SIDES = ("right", "left")


@dataclass
class CleaningReport:
    """What cleaning did to one light curve (all counts are rows of the input curve)."""

    n_input: int
    n_nonfinite_magnitude: int = 0
    n_nonfinite_error: int = 0
    n_error_out_of_range: int = 0
    n_duplicate_times_dropped: int = 0
    n_duplicate_times: int = 0  # repeated times present after cleaning (whatever the mode did with them)
    was_sorted: bool = False  # True when a stable sort had to reorder the rows
    n_kept: int = 0

    @property
    def n_dropped(self) -> int:
        return self.n_input - self.n_kept

    def describe(self) -> str:
        reasons = [
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
class _CleanedBatch:
    """Cleaned curves, concatenated: float64 ``time``/``mag``/``err`` of shape `(sum(lengths),)`, and
    per-curve `(n_curves,)` counts."""

    time: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    lengths: np.ndarray
    n_input: np.ndarray
    n_nonfinite_magnitude: np.ndarray
    n_nonfinite_error: np.ndarray
    n_error_out_of_range: np.ndarray
    n_duplicate_times_dropped: np.ndarray
    n_duplicate_times: np.ndarray
    was_sorted: np.ndarray

    def report(self, i: int) -> CleaningReport:
        return CleaningReport(
            n_input=int(self.n_input[i]),
            n_nonfinite_magnitude=int(self.n_nonfinite_magnitude[i]),
            n_nonfinite_error=int(self.n_nonfinite_error[i]),
            n_error_out_of_range=int(self.n_error_out_of_range[i]),
            n_duplicate_times_dropped=int(self.n_duplicate_times_dropped[i]),
            n_duplicate_times=int(self.n_duplicate_times[i]),
            was_sorted=bool(self.was_sorted[i]),
            n_kept=int(self.lengths[i]),
        )


def _curve_label(index: int | None, curve_id: Any) -> str:
    label = "light curve" if index is None else f"light curve {index}"
    return label if curve_id is None else f"{label} (id {curve_id!r})"


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
        self._check_choice("sampling", sampling, SAMPLING_MODES)
        self._check_choice("padding_side", padding_side, PADDING_SIDES)
        self._check_choice("duplicate_times", duplicate_times, DUPLICATE_TIME_MODES)
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

    @staticmethod
    def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")

    # ------------------------------------------------------------------------------------------------ cleaning
    def clean(self, light_curve: Any, curve_id: Any = None) -> CleanedLightCurve:
        """Validate and clean ONE light curve.

        Returns:
            :class:`CleanedLightCurve` with float64 `(n_kept,)` arrays and a :class:`CleaningReport`.
        """
        batch = self._clean_many([light_curve], [curve_id])
        return CleanedLightCurve(batch.time, batch.mag, batch.err, batch.report(0))

    def _clean_many(self, curves: list[Any], ids: list[Any]) -> _CleanedBatch:
        """Validate and clean all curves at once (vectorised over their concatenation)."""
        parsed = [_parse_light_curve(c, i, ids[i]) for i, c in enumerate(curves)]
        n_curves = len(parsed)
        raw_lengths = np.fromiter((p[0].shape[0] for p in parsed), dtype=np.int64, count=n_curves)
        time = np.concatenate([p[0] for p in parsed])
        mag = np.concatenate([p[1] for p in parsed])
        err = np.concatenate([p[2] for p in parsed])
        curve_of_row = np.repeat(np.arange(n_curves), raw_lengths)

        finite_mag = np.isfinite(mag)
        finite_err = np.isfinite(err)
        with np.errstate(invalid="ignore"):
            in_range = (err > 0) & (err < self.max_error)
        keep = finite_mag & finite_err & in_range

        def per_curve(flags: np.ndarray) -> np.ndarray:
            return np.bincount(curve_of_row[flags], minlength=n_curves)

        n_nonfinite_mag = per_curve(~finite_mag)
        n_nonfinite_err = per_curve(finite_mag & ~finite_err)
        n_out_of_range = per_curve(finite_mag & finite_err & ~in_range)

        time, mag, err, curve_of_row = time[keep], mag[keep], err[keep], curve_of_row[keep]

        same_curve = curve_of_row[1:] == curve_of_row[:-1]
        step = np.diff(time)
        unsorted = same_curve & (step < 0)
        was_sorted = np.zeros(n_curves, dtype=bool)
        if unsorted.any():
            bad_curves = np.unique(curve_of_row[1:][unsorted])
            if not self.sort_times:
                first = int(bad_curves[0])
                raise LightCurveValidationError(
                    f"{_curve_label(first, ids[first])}: times are not sorted and sort_times=False "
                    f"({len(bad_curves)} unsorted curve(s) in the input)",
                    curve_index=first,
                    curve_id=ids[first],
                    field="time",
                )
            was_sorted[bad_curves] = True
            order = np.lexsort((time, curve_of_row))  # stable: equal times keep their input order
            time, mag, err, curve_of_row = time[order], mag[order], err[order], curve_of_row[order]
            step = np.diff(time)

        repeated = np.concatenate([[False], same_curve & (step == 0)])  # row repeats the previous row's time
        n_repeated = np.bincount(curve_of_row[repeated], minlength=n_curves)
        n_dup_dropped = np.zeros(n_curves, dtype=np.int64)
        if repeated.any():
            if self.duplicate_times == "raise":
                first_row = int(np.flatnonzero(repeated)[0])
                first = int(curve_of_row[first_row])
                raise LightCurveValidationError(
                    f"{_curve_label(first, ids[first])}: {int(n_repeated[first])} repeated time value(s) "
                    f"(first: {time[first_row]!r}) and duplicate_times='raise'",
                    curve_index=first,
                    curve_id=ids[first],
                    field="time",
                )
            if self.duplicate_times == "drop":
                n_dup_dropped = n_repeated
                unique = ~repeated
                time, mag, err, curve_of_row = time[unique], mag[unique], err[unique], curve_of_row[unique]

        lengths = np.bincount(curve_of_row, minlength=n_curves).astype(np.int64)
        batch = _CleanedBatch(
            time=time,
            mag=mag,
            err=err,
            lengths=lengths,
            n_input=raw_lengths,
            n_nonfinite_magnitude=n_nonfinite_mag,
            n_nonfinite_error=n_nonfinite_err,
            n_error_out_of_range=n_out_of_range,
            n_duplicate_times_dropped=n_dup_dropped,
            n_duplicate_times=n_repeated,
            was_sorted=was_sorted,
        )
        short = np.flatnonzero(lengths < self.min_observations)
        if short.size:
            first = int(short[0])
            more = f"; {short.size - 1} other curve(s) are too short as well" if short.size > 1 else ""
            raise LightCurveValidationError(
                f"{_curve_label(first, ids[first])}: only {int(lengths[first])} valid observation(s) after cleaning, "
                f"need at least min_observations={self.min_observations}; {batch.report(first).describe()} "
                f"(kept rows need finite magnitude and error with 0 < err < {self.max_error}){more}",
                curve_index=first,
                curve_id=ids[first],
                field="observations",
            )
        return batch

    # ----------------------------------------------------------------------------------------------- windows
    def window_starts(
        self, length: int | np.ndarray, sampling: str | None = None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Window pivots for curves of the given cleaned lengths.

        Args:
            length: scalar or `(n_curves,)` integer array of cleaned lengths ``L``.
            sampling: ``"sequential"`` or ``"random"`` (default: ``self.sampling``).
            rng: generator for ``"random"``.

        Returns:
            ``(curve_index, start)``, both `(n_windows,)` int64: the curve of each window and its first row.
        """
        sampling = self.sampling if sampling is None else sampling
        self._check_choice("sampling", sampling, SAMPLING_MODES)
        lengths = np.atleast_1d(np.asarray(length, dtype=np.int64))
        W = self.window_size
        last_start = np.maximum(lengths - W, 0)
        if sampling == "sequential":
            counts = lengths // W + 1
            curve_index = np.repeat(np.arange(lengths.size, dtype=np.int64), counts)
            first_window = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rank = np.arange(curve_index.size, dtype=np.int64) - first_window[curve_index]
            start = np.minimum(rank * W, last_start[curve_index])
        else:
            rng = np.random.default_rng() if rng is None else rng
            curve_index = np.arange(lengths.size, dtype=np.int64)
            start = rng.integers(0, last_start + 1, dtype=np.int64)  # U{0..L-W}, 0 when L <= W
        return curve_index, start.astype(np.int64)

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
        time, mag, err, lengths = cleaned.time, cleaned.mag, cleaned.err, cleaned.lengths
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        curve_index, start = self.window_starts(lengths, sampling, rng)

        W = self.window_size
        curve_offset = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        n_real = np.minimum(lengths[curve_index], W)  # (n_windows,)
        position = np.arange(W, dtype=np.int64)
        real = position[None, :] < n_real[:, None]  # (n_windows, W), real obs first
        rows = np.where(real, curve_offset[curve_index, None] + start[:, None] + position[None, :], 0)

        window_time = time[rows]
        window_mag = mag[rows]
        time_offset = np.where(real, window_time, 0.0).sum(axis=1) / n_real
        magnitude_offset = np.where(real, window_mag, 0.0).sum(axis=1) / n_real
        pad = self.padding_value
        times_out = np.where(real, window_time - time_offset[:, None], pad).astype(np.float32)
        mags_out = np.where(real, window_mag - magnitude_offset[:, None], pad).astype(np.float32)
        errors_out = np.where(real, err[rows], pad).astype(np.float32)
        attention_mask = real.astype(np.int64)
        if self.padding_side == "left":
            gather = (position[None, :] + n_real[:, None]) % W  # rotate real obs to the end of the row
            take = np.take_along_axis
            times_out, mags_out, errors_out, attention_mask = (
                take(a, gather, axis=1) for a in (times_out, mags_out, errors_out, attention_mask)
            )

        data: dict[str, np.ndarray] = {
            "magnitudes": mags_out,
            "times": times_out,
            "errors": errors_out,
            "attention_mask": attention_mask,
            "light_curve_index": curve_index,
            "window_start": start,
            "time_offset": time_offset.astype(np.float64),
            "magnitude_offset": magnitude_offset.astype(np.float64),
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
