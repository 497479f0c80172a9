"""Light curves read from CSV and Parquet files or folders, one record per curve.

A file holds either one light curve (columns time/mag/err under any alias the feature extractor accepts; its id is
the file name without suffix) or many in long format, one row per observation, grouped by an id column.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modeling_astromer.errors import InputError, LightCurveValidationError

__all__ = [
    "ID_COLUMN_ALIASES",
    "LIGHT_CURVE_SUFFIXES",
    "LightCurveRecord",
    "invalid_record_error",
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


@dataclass
class LightCurveRecord:
    """One light curve read from a file: its id, the file it came from and its columns."""

    curve_id: str
    source: str
    table: Any  # a pandas DataFrame (or a mapping of time/mag/err columns)
    label: Any = None


def _is_light_curve_file(path: Path) -> bool:
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(LIGHT_CURVE_SUFFIXES)


def _expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) to their CSV/Parquet files."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_light_curve_file(p))
            if not found:
                raise InputError(f"{path}: the folder holds no {'/'.join(LIGHT_CURVE_SUFFIXES)} files")
            files.extend(found)
        elif _is_light_curve_file(path):
            files.append(path)
        else:
            raise InputError(
                f"{path}: unsupported file type; expected one of {', '.join(LIGHT_CURVE_SUFFIXES)}"
            )
    return files


def read_table(path: Path) -> Any:
    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        kind = "Parquet" if path.suffix.lower() in (".parquet", ".pq") else "CSV"
        raise InputError(f"{path}: cannot read it as {kind} ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise InputError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from exc


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


def read_light_curve_files(
    inputs: Sequence[str | os.PathLike],
    id_column: str | None = None,
    time_column: str | None = None,
    mag_column: str | None = None,
    err_column: str | None = None,
    label_column: str | None = None,
) -> list[LightCurveRecord]:
    """Read light curves from CSV/Parquet files and folders.

    A file holds either one light curve (columns time/mag/err, aliases such as ``mjd``/``magnitude``/``errmag``
    detected case-insensitively; its id is the file name without suffix) or many in long format, one row per
    observation, grouped by an id column (``--id-column``, or one of ``id``, ``object_id``, ``newID``, ...).

    Raises:
        InputError: naming the file for a missing path, an unreadable file or an unknown column.
    """
    records: list[LightCurveRecord] = []
    overrides = {"time": time_column, "mag": mag_column, "err": err_column}
    for path in _expand_inputs(inputs):
        table = read_table(path)
        if len(table.columns) == 0 or len(table) == 0:
            raise InputError(f"{path}: the file holds no observations")
        for name, column in overrides.items():
            if column is not None and column not in table.columns:
                raise InputError(
                    f"{path}: no {name} column {column!r}; the file has columns {list(map(str, table.columns))}"
                )
        rename = {column: name for name, column in overrides.items() if column is not None}
        id_name = _find_column(list(table.columns), id_column, ID_COLUMN_ALIASES, path, "id")
        label_name = (
            _find_column(list(table.columns), label_column, (), path, "label") if label_column else None
        )
        stem = path.name[: -len(next(s for s in LIGHT_CURVE_SUFFIXES if path.name.lower().endswith(s)))]
        groups = (
            [(stem, table)] if id_name is None else list(table.groupby(id_name, sort=False, dropna=False))
        )
        for curve_id, group in groups:
            if isinstance(curve_id, float) and np.isnan(curve_id) or curve_id is pd.NA:
                raise InputError(
                    f"{path}: {int(group.shape[0])} row(s) have no value in the id column {id_name!r}"
                )
            label = None
            if label_name is not None:
                values = group[label_name].unique()
                if len(values) != 1:
                    raise InputError(
                        f"{path}: light curve {curve_id!r} has {len(values)} different values in the label column "
                        f"{label_name!r}"
                    )
                label = values[0].item() if hasattr(values[0], "item") else values[0]
            columns = group.drop(columns=[c for c in (id_name, label_name) if c is not None]).rename(
                columns=rename
            )
            records.append(LightCurveRecord(str(curve_id), str(path), columns.reset_index(drop=True), label))
    return records


def invalid_record_error(records: Sequence[LightCurveRecord], error: LightCurveValidationError) -> InputError:
    """The feature extractor's complaint about ``records[error.curve_index]``, restated with its file and id."""
    record = records[error.curve_index] if error.curve_index is not None else None
    where = f"{record.source}: light curve {record.curve_id!r}" if record else "input"
    message = str(error)
    if message.startswith("light curve") and ": " in message:  # the extractor's own "light curve i (id ...)" label
        message = message.split(": ", 1)[1]
    return InputError(f"{where}: {message}")
