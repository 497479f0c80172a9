"""Issue: the survey builders shared one cache folder for the same data_dir (the dataset name came from the module
name, and the config hash ignored the class), so after building Alcock, AtlasBuilder returned the Alcock table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hub_datasets.builders import AlcockBuilder, AtlasBuilder, MachoBuilder
from hub_datasets.raw_layouts import StoredCurve, write_raw_layout
from hub_datasets.schema import ALCOCK_CLASSES, ATLAS_CLASSES


def _curves(names: list[str]) -> list[StoredCurve]:
    rng = np.random.default_rng(0)
    curves = []
    for i, name in enumerate(names):
        t = 50_000 + np.cumsum(rng.uniform(0.5, 3.0, size=30))
        curves.append(StoredCurve(f"{i}", t, -6 + 0.1 * np.sin(t), np.full(30, 0.05), name))
    return curves


def test_issue14_item6_builders_share_no_cache(tmp_path: Path) -> None:
    root = write_raw_layout(tmp_path / "raw", _curves(["RRab", "EC", "LPV WoodB"]))
    cache = tmp_path / "cache"
    builders = [cls(data_dir=str(root), cache_dir=str(cache)) for cls in (AlcockBuilder, AtlasBuilder, MachoBuilder)]
    assert len({b.cache_dir for b in builders}) == 3
    assert [b.dataset_name for b in builders] == ["astromer_alcock", "astromer_atlas", "astromer_macho"]
    assert all(str(b.config.version) == "1.0.0" for b in builders)

    alcock = builders[0]
    alcock.download_and_prepare()
    assert alcock.as_dataset("train").features["label"].names == list(ALCOCK_CLASSES)
    atlas_root = write_raw_layout(tmp_path / "atlas", _curves(["CBF", "MIRA", "PULSE"]))
    atlas = AtlasBuilder(data_dir=str(atlas_root), cache_dir=str(cache))
    atlas.download_and_prepare()
    table = atlas.as_dataset("train")
    assert table.features["label"].names == list(ATLAS_CLASSES)
    assert sorted(ATLAS_CLASSES[label] for label in table["label"]) == ["CB", "Mira", "Pulse"]
