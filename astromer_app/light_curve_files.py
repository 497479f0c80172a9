"""Light curves read from CSV and Parquet files, folders of them and ``datasets`` folders, one record per curve.

A file holds either one light curve (columns time/mag/err under any alias the feature extractor accepts; its id is
the file name without suffix) or many in long format, one row per observation, grouped by an id column. A Parquet
file whose time column holds lists, or a folder written by ``datasets.Dataset.save_to_disk``, holds one light curve
(or one band of one) per row; consecutive rows with the same id are one light curve. Columns other than the id and
label columns (a band column, say) are passed on with the curve.

:func:`iter_curve_slots` reads lazily: a one-curve file is read only when its slot is loaded, and long or nested
tables are streamed in batches of rows, so memory does not grow with the number of curves. Rows of one id must be
contiguous for that; a table whose ids are interleaved is read whole (and grouped) with a warning.
:func:`read_light_curve_files` reads everything at once, for small inputs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from modeling_astromer.errors import InputError, LightCurveValidationError

__all__ = [
    "ID_COLUMN_ALIASES",
    "LIGHT_CURVE_SUFFIXES",
    "ColumnNames",
    "CurveSlot",
    "LightCurveRecord",
    "expand_inputs",
    "invalid_record_error",
    "is_dataset_folder",
    "iter_curve_slots",
    "read_light_curve_files",
    "read_table",
]

LIGHT_CURVE_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".parquet", ".pq")
ID_COLUMN_ALIASES: tuple[str, ...] = (
    "id",
    "object_id",
    "objid",
    "oid",
    "newid",
    "source_id",
    "name",
    "star_id",
)
#: Rows read at a time from a long or nested table.
ROWS_PER_BATCH = 65_536
_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class LightCurveRecord:
    """One light curve read from a file: its id, the file it came from and its columns."""

    curve_id: str
    source: str
    table: Any  # a pandas DataFrame or a mapping of columns (time/mag/err, optionally a band column)
    label: Any = None


@dataclass
class CurveSlot:
    """One light curve of an input stream, read when :meth:`load` is called.

    ``curve_id`` is ``None`` when a whole file cannot be read; then :meth:`load` raises the reason.
    """

    curve_id: str | None
    source: str
    loader: Callable[[], LightCurveRecord]

    def load(self) -> LightCurveRecord:
        """The record. Raises :class:`InputError` naming the file (and curve) when it cannot be read."""
        return self.loader()


@dataclass(frozen=True)
class ColumnNames:
    """Column names chosen by the user (``None``: detected from aliases; the label column is never guessed)."""

    id_column: str | None = None
    time_column: str | None = None
    mag_column: str | None = None
    err_column: str | None = None
    label_column: str | None = None

    @property
    def renames(self) -> dict[str, str]:
        """The user's time/mag/err column names mapped to the names the feature extractor looks for."""
        chosen = {"time": self.time_column, "mag": self.mag_column, "err": self.err_column}
        return {column: name for name, column in chosen.items() if column is not None}


def is_dataset_folder(path: Path) -> bool:
    """A folder written by ``datasets`` ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``)."""
    return path.is_dir() and any((path / marker).is_file() for marker in _DATASET_MARKERS)


def _is_light_curve_file(path: Path) -> bool:
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(LIGHT_CURVE_SUFFIXES)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, ``datasets`` folders as given, other folders expanded (recursively, sorted) to their
    CSV/Parquet files."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if is_dataset_folder(path):
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_light_curve_file(p))
            if not found:
                raise InputError(f"{path}: the folder holds no {'/'.join(LIGHT_CURVE_SUFFIXES)} files")
            files.extend(found)
        elif _is_light_curve_file(path):
            files.append(path)
        else:
            raise InputError(
                f"{path}: unsupported file type; expected one of {', '.join(LIGHT_CURVE_SUFFIXES)} or a datasets "
                "folder"
            )
    return files


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith((".parquet", ".pq"))


def _unreadable(path: Path, exc: Exception) -> InputError:
    kind = "Parquet" if _is_parquet(path) else "CSV"
    return InputError(f"{path}: cannot read it as {kind} ({type(exc).__name__}: {exc})")


def read_table(path: Path, columns: Sequence[str] | None = None) -> Any:
    """A CSV or Parquet file as a DataFrame (optionally only some columns); :class:`InputError` if unreadable."""
    try:
        if _is_parquet(path):
            return pd.read_parquet(path, columns=None if columns is None else list(columns))
        return pd.read_csv(path, usecols=None if columns is None else list(columns))
    except Exception as exc:  # pandas and pyarrow raise many types for corrupt or foreign files
        raise _unreadable(path, exc) from exc


def _column_names(path: Path) -> tuple[list[str], bool]:
    """``(columns, nested)`` of a file without reading its rows; ``nested``: its time-like columns hold lists."""
    try:
        if _is_parquet(path):
            schema = pq.read_schema(path)
            nested = any(pa.types.is_list(f.type) or pa.types.is_large_list(f.type) for f in schema)
            return list(schema.names), nested
        return [str(c) for c in pd.read_csv(path, nrows=0).columns], False
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _file_batches(path: Path, columns: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
    """The rows of a CSV or Parquet file, :data:`ROWS_PER_BATCH` at a time."""
    try:
        if _is_parquet(path):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
                yield batch.to_pandas()
        else:
            with pd.read_csv(path, chunksize=ROWS_PER_BATCH, usecols=columns) as reader:
                yield from reader
    except InputError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _find_column(
    columns: Sequence[str], wanted: str | None, aliases: Sequence[str], path: Path, what: str
) -> str | None:
    """The column named ``wanted`` (exact), else the first alias present (case-insensitive), else None."""
    if wanted is not None:
        if wanted not in columns:
            raise InputError(
                f"{path}: no {what} column {wanted!r}; the file has columns {list(map(str, columns))}"
            )
        return wanted
    lowered = {str(c).lower(): c for c in columns}
    return next((lowered[a] for a in aliases if a in lowered), None)


def _stem(path: Path) -> str:
    suffix = next((s for s in LIGHT_CURVE_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _failing_slot(source: Path, error: InputError, curve_id: str | None = None) -> CurveSlot:
    def fail() -> LightCurveRecord:
        raise error

    return CurveSlot(curve_id, str(source), fail)


def _one_label(values: np.ndarray, path: Path, curve_id: Any, column: str) -> Any:
    distinct = pd.unique(values)
    if len(distinct) != 1:
        raise InputError(
            f"{path}: light curve {curve_id!r} has {len(distinct)} different values in the label column {column!r}"
        )
    value = distinct[0]
    return value.item() if hasattr(value, "item") else value


def _check_overrides(names: Sequence[str], columns: ColumnNames, path: Path) -> None:
    for name, column in (("time", columns.time_column), ("mag", columns.mag_column), ("err", columns.err_column)):
        if column is not None and column not in names:
            raise InputError(f"{path}: no {name} column {column!r}; the file has columns {list(map(str, names))}")


def _id_and_label_columns(
    names: list[str], columns: ColumnNames, path: Path, empty: str
) -> tuple[str | None, str | None]:
    """The id column (named or detected; None when absent) and the label column of a table with ``names``.

    Raises:
        InputError: ``"{path}: {empty}"`` for a table without columns, or a named column that is missing.
    """
    if not names:
        raise InputError(f"{path}: {empty}")
    _check_overrides(names, columns, path)
    id_name = _find_column(names, columns.id_column, ID_COLUMN_ALIASES, path, "id")
    label_name = _find_column(names, columns.label_column, (), path, "label") if columns.label_column else None
    return id_name, label_name


def iter_curve_slots(inputs: Sequence[str | os.PathLike], columns: ColumnNames = ColumnNames()) -> Iterator[CurveSlot]:
    """Every light curve of ``inputs`` (files, folders, ``datasets`` folders), in order, read lazily.

    A problem with a path as a whole (missing, unsupported type, empty folder) raises :class:`InputError` at once;
    a file that cannot be read or lacks a needed column becomes one slot whose :meth:`CurveSlot.load` raises, so a
    caller can skip it and go on.
    """
    for path in expand_inputs(inputs):
        if path.is_dir():
            yield from _dataset_slots(path, columns)
            continue
        try:
            names, nested = _column_names(path)
            id_name, label_name = _id_and_label_columns(names, columns, path, "the file holds no observations")
        except InputError as error:
            yield _failing_slot(path, error)
            continue
        if nested:
            yield from _nested_slots(path, _parquet_row_batches(path), id_name, label_name, columns)
        elif id_name is None:
            yield CurveSlot(_stem(path), str(path), _single_curve_loader(path, label_name, columns))
        else:
            yield from _long_slots(path, names, id_name, label_name, columns)


def _single_curve_loader(path: Path, label_name: str | None, columns: ColumnNames) -> Callable[[], LightCurveRecord]:
    def load() -> LightCurveRecord:
        table = read_table(path)
        if len(table.columns) == 0 or len(table) == 0:
            raise InputError(f"{path}: the file holds no observations")
        label = None
        if label_name is not None:
            label = _one_label(table[label_name].to_numpy(), path, _stem(path), label_name)
            table = table.drop(columns=[label_name])
        return LightCurveRecord(_stem(path), str(path), table.rename(columns=columns.renames), label)

    return load


# ---------------------------------------------------------------------------------------------- long tables
def _ids_are_contiguous(path: Path, id_name: str) -> bool:
    """Whether the rows of every id are together (read from the id column alone)."""
    finished: set[Any] = set()
    current: Any = None
    for frame in _file_batches(path, [id_name]):
        ids = frame[id_name].to_numpy()
        if ids.size == 0:
            continue
        starts = np.concatenate([[0], np.flatnonzero(ids[1:] != ids[:-1]) + 1])
        for value in ids[starts].tolist():
            if value == current or (isinstance(value, float) and value != value):
                continue
            if value in finished:
                return False
            if current is not None:
                finished.add(current)
            current = value
    return True


def _record_from_rows(
    path: Path, curve_id: Any, frame: pd.DataFrame, id_name: str, label_name: str | None, columns: ColumnNames
) -> CurveSlot:
    """A slot for the rows of one id (already in memory)."""
    if (isinstance(curve_id, float) and np.isnan(curve_id)) or curve_id is pd.NA or curve_id is None:
        return _failing_slot(
            path, InputError(f"{path}: {len(frame)} row(s) have no value in the id column {id_name!r}")
        )
    curve_id = str(curve_id)

    def load() -> LightCurveRecord:
        label = None
        if label_name is not None:
            label = _one_label(frame[label_name].to_numpy(), path, curve_id, label_name)
        kept = [c for c in frame.columns if c not in (id_name, label_name)]
        table = {columns.renames.get(c, c): frame[c].to_numpy() for c in kept}
        return LightCurveRecord(curve_id, str(path), table, label)

    return CurveSlot(curve_id, str(path), load)


def _long_slots(
    path: Path, names: list[str], id_name: str, label_name: str | None, columns: ColumnNames
) -> Iterator[CurveSlot]:
    try:
        contiguous = _ids_are_contiguous(path, id_name)
    except InputError as error:
        yield _failing_slot(path, error)
        return
    if not contiguous:
        print(
            f"astromer: warning: {path}: the rows of some ids are not together, so the whole file is read into "
            f"memory; sort it by {id_name!r} to stream it",
            file=sys.stderr,
        )
        try:
            table = read_table(path)
        except InputError as error:
            yield _failing_slot(path, error)
            return
        for curve_id, group in table.groupby(id_name, sort=False, dropna=False):
            yield _record_from_rows(path, curve_id, group, id_name, label_name, columns)
        return
    carry: pd.DataFrame | None = None
    try:
        for frame in _file_batches(path):
            if carry is not None:
                frame = pd.concat([carry, frame], ignore_index=True)
            ids = frame[id_name].to_numpy()
            if ids.size == 0:
                continue
            starts = np.concatenate([[0], np.flatnonzero(_differs(ids[1:], ids[:-1])) + 1])
            ends = np.append(starts[1:], ids.size)
            for begin, end in zip(starts[:-1], ends[:-1]):  # the last run may go on in the next batch
                rows = frame.iloc[begin:end]
                yield _record_from_rows(path, ids[begin], rows, id_name, label_name, columns)
            carry = frame.iloc[starts[-1]:]
    except InputError as error:
        yield _failing_slot(path, error)
        return
    if carry is not None and len(carry):
        yield _record_from_rows(path, carry[id_name].to_numpy()[0], carry, id_name, label_name, columns)


def _differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise ``a != b`` where two missing values are equal."""
    different = np.asarray(a != b, dtype=bool)
    if a.dtype.kind in "fO":
        missing = pd.isna(a) & pd.isna(b)
        different &= ~missing
    return different


# -------------------------------------------------------------------------------------------- nested tables
def _parquet_row_batches(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        yield from pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BATCH)
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _dataset_row_batches(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise InputError(f"{path}: cannot read it as a datasets folder ({type(exc).__name__}: {exc})") from exc
    splits = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    for split in splits:
        for table in split.with_format("arrow").iter(batch_size=ROWS_PER_BATCH):
            yield from table.to_batches()


def _dataset_slots(path: Path, columns: ColumnNames) -> Iterator[CurveSlot]:
    try:
        first = next(_dataset_row_batches(path), None)
    except InputError as error:
        yield _failing_slot(path, error)
        return
    names = [] if first is None else first.schema.names
    try:
        id_name, label_name = _id_and_label_columns(names, columns, path, "the datasets folder holds no rows")
    except InputError as error:
        yield _failing_slot(path, error)
        return
    yield from _nested_slots(path, _dataset_row_batches(path), id_name, label_name, columns)


def _row_columns(batch: pa.RecordBatch) -> dict[str, Any]:
    """Per column of a batch: ``("list", offsets, values)`` for list columns, ``("scalar", values)`` otherwise."""
    out: dict[str, Any] = {}
    for name, column in zip(batch.schema.names, batch.columns):
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            out[name] = ("list", offsets, pc.list_flatten(column).to_numpy(zero_copy_only=False))
        else:
            out[name] = ("scalar", column.to_numpy(zero_copy_only=False))
    return out


def _nested_slots(
    path: Path,
    batches: Iterator[pa.RecordBatch],
    id_name: str | None,
    label_name: str | None,
    columns: ColumnNames,
) -> Iterator[CurveSlot]:
    """One slot per row, or per run of consecutive rows with the same id (e.g. one row per band)."""
    pending: list[tuple[dict[str, Any], int]] = []  # (columns of a batch, row) of the current id
    pending_id: Any = None
    row_number = 0

    def flush() -> CurveSlot:
        rows = list(pending)
        curve_id = str(pending_id)

        def load() -> LightCurveRecord:
            table: dict[str, list[np.ndarray]] = {}
            labels = []
            for batch_columns, row in rows:
                n = None
                for name, spec in batch_columns.items():
                    if spec[0] == "list":
                        offsets, values = spec[1], spec[2]
                        table.setdefault(name, []).append(values[offsets[row]:offsets[row + 1]])
                        n = offsets[row + 1] - offsets[row]
                for name, spec in batch_columns.items():
                    if name == label_name:
                        labels.append(spec[1][row])
                    elif spec[0] == "scalar" and name != id_name:
                        table.setdefault(name, []).append(np.full(int(n or 0), spec[1][row], dtype=object))
            merged = {columns.renames.get(k, k): np.concatenate(v) for k, v in table.items()}
            label = _one_label(np.asarray(labels, dtype=object), path, curve_id, label_name) if label_name else None
            return LightCurveRecord(curve_id, str(path), merged, label)

        return CurveSlot(curve_id, str(path), load)

    try:
        for batch in batches:
            batch_columns = _row_columns(batch)
            ids = batch_columns[id_name][1] if id_name is not None else None
            for row in range(batch.num_rows):
                curve_id = ids[row] if ids is not None else f"{_stem(path)}:{row_number}"
                row_number += 1
                if pending and curve_id != pending_id:
                    yield flush()
                    pending.clear()
                pending_id = curve_id
                pending.append((batch_columns, row))
    except InputError as error:
        yield _failing_slot(path, error)
        return
    if pending:
        yield flush()


# ------------------------------------------------------------------------------------------------- eagerly
def read_light_curve_files(
    inputs: Sequence[str | os.PathLike],
    id_column: str | None = None,
    time_column: str | None = None,
    mag_column: str | None = None,
    err_column: str | None = None,
    label_column: str | None = None,
) -> list[LightCurveRecord]:
    """Read every light curve of ``inputs`` (see :func:`iter_curve_slots`) into memory.

    Raises:
        InputError: naming the file for a missing path, an unreadable file or an unknown column.
    """
    columns = ColumnNames(id_column, time_column, mag_column, err_column, label_column)
    return [slot.load() for slot in iter_curve_slots(inputs, columns)]


def invalid_record_error(records: Sequence[LightCurveRecord], error: LightCurveValidationError) -> InputError:
    """The feature extractor's complaint about ``records[error.curve_index]``, restated with its file and id."""
    record = records[error.curve_index] if error.curve_index is not None else None
    return record_error(record, error)


def record_error(record: LightCurveRecord | None, error: LightCurveValidationError) -> InputError:
    """The feature extractor's complaint about ``record``, restated with its file and id (and band, if any)."""
    where = f"{record.source}: light curve {record.curve_id!r}" if record else "input"
    message = str(error)
    if message.startswith("light curve") and ": " in message:  # the extractor's own "light curve i (id ...)" label
        label, message = message.split(": ", 1)
        if ", band " in label:
            where += ", band " + label.split(", band ", 1)[1]
    return InputError(f"{where}: {message}")
