"""The real labelled sample bundled with the package: SDSS Stripe 82 RR Lyrae (Sesar et al. 2010), no network."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hub_datasets.samples import SDSS_BANDS, SDSS_RRLYRAE_DIR, load_sdss_rrlyrae


def test_bundled_sdss_sample_is_small_and_attributed() -> None:
    files = {p.name: p.stat().st_size for p in SDSS_RRLYRAE_DIR.iterdir()}
    assert set(files) == {"observations.parquet", "periods.csv", "README.md"}
    assert sum(files.values()) < 2_000_000
    readme = (SDSS_RRLYRAE_DIR / "README.md").read_text()
    assert "Sesar et al. (2010" in readme and "ApJ 708, 717" in readme and "SDSS" in readme


def test_bundled_r_band_sample() -> None:
    ds = load_sdss_rrlyrae()
    assert len(ds) == 483 and Counter(ds["label"]) == {0: 379, 1: 104}
    assert ds.features["label"].names == ["RRab", "RRc"] and set(ds["band"]) == {"r"}
    lengths = np.array([len(t) for t in ds["time"]])
    assert lengths.sum() == 27607 - 1  # one r row with magerr >= 1 is cleaned away
    assert 50 <= np.median(lengths) <= 60
    assert all(np.all(np.diff(t) >= 0) for t in ds["time"])
    periods, labels = np.asarray(ds["period"]), np.asarray(ds["label"])
    assert periods[labels == 0].min() > 0.43 and periods[labels == 1].max() < 0.44


def test_bands_are_separate_rows() -> None:
    ds = load_sdss_rrlyrae(band="all")
    assert len(ds) == 5 * 483 and ds["band"][:5] == list(SDSS_BANDS) and len(set(ds["id"][:5])) == 1
    two = load_sdss_rrlyrae(band=["g", "r"])
    assert two["band"][:2] == ["g", "r"] and two["time"][1] == load_sdss_rrlyrae()["time"][0]
    with pytest.raises(ValueError, match="band must be one or more of"):
        load_sdss_rrlyrae(band="V")


def test_bundled_sample_equals_the_published_files(shared_dir: Path) -> None:
    folder = shared_dir / "data" / "sdss_rrlyrae"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    bundled, published = load_sdss_rrlyrae(band="all", clean=False), load_sdss_rrlyrae(folder, band="all", clean=False)
    assert bundled["id"] == published["id"] and bundled["band"] == published["band"]
    for column in ("time", "mag", "err"):
        assert all(np.array_equal(a, b) for a, b in zip(bundled[column], published[column])), column
