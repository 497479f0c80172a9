"""The dataset card written by `astromer publish-dataset`: a default config, the real repo id in its usage line, and
a stated licence."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import datasets
import pytest
from huggingface_hub import DatasetCard

from astromer_app.dataset_commands import publish_main
from hub_datasets.schema import ALCOCK_CLASSES

SMALL = ["--n-curves", "120", "--folds", "1", "--spc", "3", "--test-per-class", "5"]


@pytest.fixture()
def equal_classes():
    with mock.patch("hub_datasets.synthetic.PUBLISHED_COUNTS", {"macho": dict.fromkeys(ALCOCK_CLASSES, 1)}):
        yield


def test_issue14_item9_dataset_card_has_a_default_config_the_repo_id_and_a_licence(tmp_path: Path, equal_classes) -> None:
    out = tmp_path / "pub"
    assert publish_main(["--synthetic", "macho", *SMALL, "--out", str(out), "--repo-id", "me/lc", "--dry-run"]) == 0
    card = DatasetCard.load(out / "README.md")
    configs = {c["config_name"]: c for c in card.data.to_dict()["configs"]}
    assert configs["full"].get("default") is True and not configs["fold0_spc3"].get("default")
    assert card.data.to_dict()["license"] == "mit"
    assert 'load_dataset("me/lc", "fold0_spc3")' in card.text and "<repo_id>" not in card.text
    assert len(datasets.load_dataset(str(out))["train"]) == 120  # no config name: the default one


def test_real_surveys_need_their_licence_stated(tmp_path: Path, equal_classes, capsys) -> None:
    source = tmp_path / "survey"
    from hub_datasets.synthetic import generate_survey

    generate_survey(120, "macho", seed=0).save_to_disk(str(source))
    base = ["--from-disk", str(source), *SMALL, "--dry-run"]
    assert publish_main([*base, "--out", str(tmp_path / "a")]) == 2
    assert "state the licence" in capsys.readouterr().err
    assert publish_main([*base, "--out", str(tmp_path / "b"), "--license", "other"]) == 2
    assert "--license-name" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    out = tmp_path / "c"
    terms = ["--license", "other", "--license-name", "macho-data-terms", "--license-link", "https://example.org/t"]
    assert publish_main([*base, "--out", str(out), *terms]) == 0
    data = DatasetCard.load(out / "README.md").data.to_dict()
    assert (data["license"], data["license_name"], data["license_link"]) == (
        "other", "macho-data-terms", "https://example.org/t"
    )
    assert 'load_dataset("c", "fold0_spc3")' in (out / "README.md").read_text()  # dry run without a repo id
