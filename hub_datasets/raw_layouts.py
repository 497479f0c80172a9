"""The on-disk layouts in which the Astromer authors distribute survey light curves: read and write.

=============  ===============================================================================================
layout         files under one root folder
=============  ===============================================================================================
``raw``        ``metadata.csv`` (ID column ``ID``/``objID``/``Unnamed: 0``, ``Class``, optional ``Path_R``/``Path``,
               ``Band``) plus one file per object, ``LCs/<ID>.dat``: CSV with a header row (Alcock), whitespace with
               one header row (ATLAS) or ``#`` comment lines (MACHO/OGLE); the first three columns are
               ``time, mag, err`` whatever the header says.
``parquet``    ``metadata.parquet`` (``newID, ID, Class, Label, Band, shard, N, Path, subset_<k>``) plus
               ``light_curves/shard_NNN.parquet`` in long format ``newID, mjd, mag, errmag``.
``tfrecord``   ``**/*.record`` files of ``SequenceExample`` (see :mod:`hub_datasets.tfrecord`); the split is the
               nearest parent folder named ``train``, ``validation``/``val`` or ``test`` (else ``train``).
=============  ===============================================================================================

Readers yield :class:`RawLightCurve` objects *as stored* (no cleaning, no label mapping): that is the builders'
job (:mod:`hub_datasets.cleaning`). Every reader error names the file and the row or record.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hub_datasets.atomic import staging_folder
from hub_datasets.tfrecord import (
    decode_sequence_example,
    encode_sequence_example,
    iter_tfrecord,
    write_tfrecord,
)
from modeling_astromer.errors import AstromerError

LAYOUTS: tuple[str, ...] = ("raw", "parquet", "tfrecord")
_ID_COLUMNS = ("ID", "objID", "id", "Unnamed: 0")
_PATH_COLUMNS = ("Path_R", "Path", "path")
_SPLIT_FOLDERS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


class LayoutError(AstromerError, ValueError):
    """A survey folder does not match any supported layout, or a file in it is malformed."""


@dataclass
class RawLightCurve:
    """One stored light curve before cleaning.

    ``time`` is float64 (L,), ``mag``/``err`` float64 or float32 (L,); ``origin`` names the file and row/record
    it came from, for error messages.
    """

    id: str
    raw_class: str | None
    time: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    band: str | None
    origin: str
    split: str = "train"
    raw_label: int | None = None
    #: Set instead of raising when the curve's own file/record is unreadable, so builders may skip it.
    error: str | None = None


# ------------------------------------------------------------------------------------------------ detection
def detect_layout(root: str | Path) -> str:
    """Return ``"raw"``, ``"parquet"`` or ``"tfrecord"`` for a survey folder, or raise :class:`LayoutError`."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder")
    if (root / "metadata.parquet").is_file():
        return "parquet"
    if (root / "metadata.csv").is_file():
        return "raw"
    if any(root.rglob("*.record")):
        return "tfrecord"
    raise LayoutError(
        f"{root}: no metadata.parquet (parquet layout), metadata.csv (raw layout) or *.record files (tfrecord layout)"
    )


# ------------------------------------------------------------------------------------------------ raw layout
def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_light_curve_file(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse one per-object file into float64 ``(time, mag, err)`` arrays of shape (L,).

    Accepts CSV or whitespace columns, ``#`` comment lines, and one header row (detected: first token not a
    number); extra columns are ignored; missing fields and ``nan`` become NaN (the builders' cleaning drops them).
    Raises ``LayoutError`` naming the file and 1-based line for text that is not a number.
    """
    path = Path(path)
    text = path.read_text()
    lines = text.splitlines()
    first = next(
        (i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")), None
    )
    if first is None:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    separator = "," if "," in lines[first] else None
    tokens = lines[first].split(separator)
    header_lines = first + (0 if _is_number(tokens[0].strip()) else 1)
    body = "\n".join(lines[header_lines:])
    if not any(line.strip() and not line.lstrip().startswith("#") for line in lines[header_lines:]):
        return np.zeros(0), np.zeros(0), np.zeros(0)  # header only: an empty light curve
    try:
        frame = pd.read_csv(
            io.StringIO(body),
            sep="," if separator else r"\s+",
            header=None,
            comment="#",
            usecols=[0, 1, 2],
            dtype="float64",
            engine="c",
            skip_blank_lines=True,
        )
    except (ValueError, pd.errors.ParserError) as exc:
        _raise_first_bad_line(path, lines, header_lines, separator, exc)
    values = frame.to_numpy(dtype=np.float64)
    return values[:, 0].copy(), values[:, 1].copy(), values[:, 2].copy()


def _raise_first_bad_line(
    path: Path, lines: list[str], start: int, separator: str | None, exc: Exception
) -> None:
    for number, line in enumerate(lines[start:], start=start + 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split(separator)]
        if len(fields) < 3 or not all(_is_number(f) or f == "" for f in fields[:3]):
            raise LayoutError(
                f"{path}: line {number}: cannot parse {line.strip()!r} as 'time, mag, err'"
            ) from exc
    raise LayoutError(f"{path}: cannot parse light curve: {exc}") from exc


def _pick_column(frame: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    return next((name for name in candidates if name in frame.columns), None)


def iter_raw_layout(
    root: str | Path, lc_folder: str = "LCs", suffix: str = ".dat"
) -> Iterator[RawLightCurve]:
    """Yield the light curves of a ``metadata.csv`` + ``LCs/`` folder in metadata order.

    The file of row ``i`` is its ``Path_R``/``Path`` entry (relative to the root or to ``LCs/``) when that column
    exists, else ``LCs/<ID><suffix>``. A missing or unparsable file gives a curve whose ``error`` names the
    metadata row (and the file and line); a missing metadata table raises ``FileNotFoundError``.
    """
    root = Path(root)
    meta_path = root / "metadata.csv"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: metadata table not found (raw layout)")
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    id_col = _pick_column(meta, _ID_COLUMNS) or str(meta.columns[0])
    path_col = _pick_column(meta, _PATH_COLUMNS)
    class_col = "Class" if "Class" in meta.columns else None
    band_col = "Band" if "Band" in meta.columns else None
    for row_number, row in enumerate(meta.itertuples(index=False), start=2):  # line 1 is the header
        values = dict(zip(meta.columns, row))
        object_id = str(values[id_col]).strip()
        candidates = []
        if path_col and values[path_col]:
            rel = str(values[path_col]).strip()
            candidates += [root / rel, root / lc_folder / rel, root / lc_folder / Path(rel).name]
        candidates.append(root / lc_folder / f"{object_id}{suffix}")
        candidates = list(dict.fromkeys(candidates))
        lc_path = next((c for c in candidates if c.is_file()), None)
        origin = f"{meta_path} row {row_number} (ID {object_id})"
        error = None
        time = mag = err = np.zeros(0)
        if lc_path is None:
            error = f"{origin}: light-curve file not found (tried {', '.join(map(str, candidates))})"
        else:
            try:
                time, mag, err = read_light_curve_file(lc_path)
            except (LayoutError, UnicodeDecodeError) as exc:
                error = f"{origin}: {exc}"
        yield RawLightCurve(
            id=object_id,
            raw_class=values[class_col] if class_col else None,
            time=time,
            mag=mag,
            err=err,
            band=(values[band_col] or None) if band_col else None,
            origin=f"{origin} → {lc_path}" if lc_path else origin,
            error=error,
        )


# -------------------------------------------------------------------------------------------- parquet layout
def iter_parquet_layout(root: str | Path, fold: int | None = None) -> Iterator[RawLightCurve]:
    """Yield the light curves of a ``metadata.parquet`` + ``light_curves/shard_*.parquet`` folder.

    Shards are read one at a time (memory ∝ one shard); objects come out in ``newID`` order within each shard.
    With ``fold`` set, ``RawLightCurve.split`` is the metadata's ``subset_<fold>`` value (``val`` → validation).
    """
    root = Path(root)
    meta_path = root / "metadata.parquet"
    meta = pd.read_parquet(meta_path)
    for column in ("newID", "ID"):
        if column not in meta.columns:
            raise LayoutError(f"{meta_path}: required column {column!r} missing (have {list(meta.columns)})")
    subset_col = None
    if fold is not None:
        subset_col = f"subset_{fold}"
        if subset_col not in meta.columns:
            raise LayoutError(f"{meta_path}: fold {fold} requested but column {subset_col!r} is missing")
    meta = meta.set_index("newID", drop=False)
    if not meta.index.is_unique:
        duplicated = meta.index[meta.index.duplicated()][0]
        raise LayoutError(f"{meta_path}: newID {duplicated} appears more than once")
    shard_paths = sorted((root / "light_curves").glob("shard_*.parquet"))
    if not shard_paths:
        raise FileNotFoundError(f"{root / 'light_curves'}: no shard_*.parquet files (parquet layout)")
    seen: set[int] = set()
    for shard_path in shard_paths:
        table = pq.read_table(shard_path, columns=["newID", "mjd", "mag", "errmag"])
        new_ids = table.column("newID").to_numpy()
        order = np.argsort(new_ids, kind="stable")  # keep the stored row order inside each object
        new_ids = new_ids[order]
        columns = [
            table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)[order]
            for c in ("mjd", "mag", "errmag")
        ]
        starts = (
            np.flatnonzero(np.r_[True, new_ids[1:] != new_ids[:-1]]) if len(new_ids) else np.zeros(0, int)
        )
        ends = np.r_[starts[1:], len(new_ids)]
        for start, end in zip(starts, ends):
            new_id = int(new_ids[start])
            if new_id not in meta.index:
                raise LayoutError(
                    f"{shard_path}: rows {start}..{end - 1} have newID {new_id}, absent from {meta_path}"
                )
            seen.add(new_id)
            row = meta.loc[new_id]
            split = "train"
            if subset_col is not None:
                split = _SPLIT_FOLDERS.get(str(row[subset_col]).lower(), None) or _bad_split(
                    meta_path, new_id, row[subset_col]
                )
            yield RawLightCurve(
                id=str(row["ID"]),
                raw_class=str(row["Class"]) if "Class" in meta.columns else None,
                time=columns[0][start:end],
                mag=columns[1][start:end],
                err=columns[2][start:end],
                band=str(row["Band"]) if "Band" in meta.columns else None,
                origin=f"{shard_path} (newID {new_id}, ID {row['ID']})",
                split=split,
            )
    missing = [int(i) for i in meta.index if int(i) not in seen]
    for new_id in missing:  # objects listed in the metadata but with no rows: an empty light curve
        row = meta.loc[new_id]
        yield RawLightCurve(
            id=str(row["ID"]),
            raw_class=str(row["Class"]) if "Class" in meta.columns else None,
            time=np.zeros(0),
            mag=np.zeros(0),
            err=np.zeros(0),
            band=str(row["Band"]) if "Band" in meta.columns else None,
            origin=f"{meta_path} (newID {new_id}, ID {row['ID']}: no rows in any shard)",
            split="train"
            if subset_col is None
            else _SPLIT_FOLDERS.get(str(row[subset_col]).lower(), "train"),
        )


def _bad_split(meta_path: Path, new_id: int, value: object) -> str:
    raise LayoutError(f"{meta_path}: newID {new_id}: subset value {value!r} is not train/validation/val/test")


# ------------------------------------------------------------------------------------------- tfrecord layout
def split_of_path(path: Path, root: Path) -> str:
    for part in reversed(path.relative_to(root).parts[:-1]):
        if part.lower() in _SPLIT_FOLDERS:
            return _SPLIT_FOLDERS[part.lower()]
    return "train"


def _first_string(value: object) -> str | None:
    if isinstance(value, list) and value:
        return value[0].decode()
    return None


def _sequence(example_lists: dict, names: Sequence[str]) -> np.ndarray | None:
    for name in names:
        if name in example_lists:
            parts = [np.asarray(p, dtype=np.float64) for p in example_lists[name] if not isinstance(p, list)]
            return np.concatenate(parts) if parts else np.zeros(0)
    return None


def iter_tfrecord_layout(root: str | Path) -> Iterator[RawLightCurve]:
    """Yield the light curves of every ``*.record`` file under ``root`` (sorted paths; current and v0 schemas)."""
    root = Path(root)
    paths = sorted(root.rglob("*.record"))
    if not paths:
        raise FileNotFoundError(f"{root}: no *.record files (tfrecord layout)")
    for path in paths:
        split = split_of_path(path, root)
        for index, payload in iter_tfrecord(path):
            origin = f"{path} record {index}"
            try:
                example = decode_sequence_example(payload)
            except (ValueError, UnicodeDecodeError) as exc:
                yield RawLightCurve(
                    "",
                    None,
                    np.zeros(0),
                    np.zeros(0),
                    np.zeros(0),
                    None,
                    origin,
                    split,
                    error=f"{origin}: not a valid SequenceExample: {exc}",
                )
                continue
            ctx = example.context
            object_id = _first_string(ctx.get("ID")) or _first_string(ctx.get("id"))
            if object_id is None and "id" in ctx and len(ctx["id"]):
                object_id = str(int(ctx["id"][0]))
            time = _sequence(example.feature_lists, ("mjd", "dim_0"))
            mag = _sequence(example.feature_lists, ("mag", "dim_1"))
            err = _sequence(example.feature_lists, ("errmag", "dim_2"))
            if object_id is None or time is None or mag is None or err is None:
                raise LayoutError(f"{origin}: missing ID or one of the mjd/mag/errmag feature lists")
            if not len(time) == len(mag) == len(err):
                raise LayoutError(
                    f"{origin}: mjd/mag/errmag lengths differ ({len(time)}, {len(mag)}, {len(err)})"
                )
            raw_label = None
            for key in ("Label", "label"):
                if key in ctx and not isinstance(ctx[key], list) and len(ctx[key]):
                    raw_label = int(ctx[key][0])
            yield RawLightCurve(
                id=object_id,
                raw_class=_first_string(ctx.get("Class")),
                time=time,
                mag=mag,
                err=err,
                band=_first_string(ctx.get("Band")),
                origin=origin,
                split=split,
                raw_label=raw_label,
            )


def iter_layout(root: str | Path, layout: str = "auto", fold: int | None = None) -> Iterator[RawLightCurve]:
    """Dispatch to the reader of ``layout`` (``"auto"`` = :func:`detect_layout`)."""
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "raw":
        return iter_raw_layout(root)
    if layout == "parquet":
        return iter_parquet_layout(root, fold=fold)
    if layout == "tfrecord":
        return iter_tfrecord_layout(root)
    raise LayoutError(f"unknown layout {layout!r}; expected one of {LAYOUTS} or 'auto'")


# ------------------------------------------------------------------------------------------------- writers
@dataclass
class StoredCurve:
    """A light curve to write: float64 (L,) arrays plus its class string (raw, e.g. ``LPV WoodB``) and band."""

    id: str
    time: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    raw_class: str
    band: str = "R"


def _refuse_non_empty(root: Path, overwrite: bool) -> None:
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} exists and is not empty; pass overwrite=True to replace it")


def _format_float(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def write_raw_layout(
    root: str | Path, curves: Iterable[StoredCurve], style: str = "csv", overwrite: bool = False
) -> Path:
    """Write ``metadata.csv`` + ``LCs/<ID>.dat``; ``style`` ``"csv"`` (Alcock: header ``mjd,mag,errmag``) or
    ``"whitespace"`` (ATLAS-like: one header row). Values are written with ``repr`` (exact float64 round trip)."""
    root = Path(root)
    _refuse_non_empty(root, overwrite)
    with staging_folder(root) as tmp:
        (tmp / "LCs").mkdir()
        rows = []
        sep = "," if style == "csv" else " "
        for curve in curves:
            lines = [sep.join(("mjd", "mag", "errmag"))]
            lines += [
                sep.join(map(_format_float, triple))
                for triple in zip(curve.time.tolist(), curve.mag.tolist(), curve.err.tolist())
            ]
            (tmp / "LCs" / f"{curve.id}.dat").write_text("\n".join(lines) + "\n")
            rows.append(
                {"ID": curve.id, "Class": curve.raw_class, "Band": curve.band, "Path_R": f"{curve.id}.dat"}
            )
        pd.DataFrame(rows, columns=["ID", "Class", "Band", "Path_R"]).to_csv(tmp / "metadata.csv", index=False)
    return root


def write_parquet_layout(
    root: str | Path,
    curves: Iterable[StoredCurve],
    objects_per_shard: int = 20_000,
    subsets: dict[int, Sequence[str]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``metadata.parquet`` + ``light_curves/shard_NNN.parquet`` as ``presentation/scripts/to_parquet.py``
    does (long format, ``objects_per_shard`` objects per shard; ``Label`` = alphabetical code of ``Class``)."""
    root = Path(root)
    curves = list(curves)
    _refuse_non_empty(root, overwrite)
    with staging_folder(root) as tmp:
        (tmp / "light_curves").mkdir()
        classes = sorted({c.raw_class for c in curves})
        meta = pd.DataFrame(
            {
                "newID": np.arange(len(curves), dtype=np.int64),
                "ID": [c.id for c in curves],
                "Class": [c.raw_class for c in curves],
                "Label": [classes.index(c.raw_class) for c in curves],
                "Band": [c.band for c in curves],
                "shard": np.arange(len(curves)) // objects_per_shard,
                "N": [len(c.time) for c in curves],
                "Path": [f"LCs/{c.id}.dat" for c in curves],
            }
        )
        for fold, values in (subsets or {}).items():
            meta[f"subset_{fold}"] = list(values)
        meta.to_parquet(tmp / "metadata.parquet", index=False)
        for shard in range(int(meta["shard"].max()) + 1 if len(curves) else 0):
            members = range(shard * objects_per_shard, min((shard + 1) * objects_per_shard, len(curves)))
            lengths = [len(curves[i].time) for i in members]
            table = pa.table(
                {
                    "newID": np.repeat(np.asarray(list(members), dtype=np.int64), lengths),
                    "mjd": np.concatenate([curves[i].time for i in members]).astype(np.float64),
                    "mag": np.concatenate([curves[i].mag for i in members]).astype(np.float64),
                    "errmag": np.concatenate([curves[i].err for i in members]).astype(np.float64),
                }
            )
            pq.write_table(table, tmp / "light_curves" / f"shard_{shard:03d}.parquet")
    return root


def write_tfrecord_layout(
    root: str | Path,
    curves: Iterable[StoredCurve],
    split: str | None = None,
    records_per_file: int = 20_000,
    overwrite: bool = False,
) -> Path:
    """Write ``[<split>/]chunk_NNN.record`` SequenceExamples in the Astromer layout (float32 sequences, one
    Feature per sequence; context ``ID, Class, Label, Band, shard``)."""
    root = Path(root)
    curves = list(curves)
    _refuse_non_empty(root, overwrite)
    with staging_folder(root) as tmp:
        folder = tmp / split if split else tmp
        folder.mkdir(parents=True, exist_ok=True)
        classes = sorted({c.raw_class for c in curves})
        for shard, start in enumerate(range(0, len(curves), records_per_file)):
            payloads = [
                encode_sequence_example(
                    {
                        "ID": c.id,
                        "Class": c.raw_class,
                        "Label": np.int64(classes.index(c.raw_class)),
                        "Band": c.band,
                        "shard": np.int64(shard),
                    },
                    {
                        "mjd": [np.asarray(c.time, np.float32)],
                        "mag": [np.asarray(c.mag, np.float32)],
                        "errmag": [np.asarray(c.err, np.float32)],
                    },
                )
                for c in curves[start : start + records_per_file]
            ]
            write_tfrecord(folder / f"chunk_{shard:03d}.record", payloads)
    return root
