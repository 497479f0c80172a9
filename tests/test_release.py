"""The Hub release script: complete folder, model card, round trip through a fake offline cache, mocked upload."""

import json
import os
import re
import subprocess
import sys
import textwrap
from unittest import mock

import numpy as np
import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoModel, pipeline

from astromer_app.hub_layout import FEATURE_EXTRACTOR_AUTO_MAP, MODEL_AUTO_MAP
from astromer_app.model_card import evaluation_table, markdown_table
from astromer_app.release import (
    CUSTOM_PIPELINES,
    ReleaseError,
    build_release_folder,
    main,
)
from modeling_astromer import (
    AstromerConfig,
    AstromerFeatureExtractor,
    AstromerForMaskedReconstruction,
    AstromerModel,
    bundled_model_path,
)
from modeling_astromer.pipeline import LightCurveFeatureExtractionPipeline

REPO_ID = "astromer/astromer-2"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
RELEASE_FILES = {
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "configuration_astromer.py",
    "modeling_astromer.py",
    "feature_extraction_astromer.py",
    "errors.py",
    "pipeline_astromer.py",
    "README.md",
}
EVALUATION = [
    {"dataset": "alcock", "spc": 20, "macro_f1": 0.5123, "accuracy": 0.6},
    {"dataset": "alcock", "spc": 100, "macro_f1": 0.6789, "accuracy": 0.7},
]


def _curves(seed=0):
    rng = np.random.default_rng(seed)
    curves = []
    for length in (80, 260, 530):
        t = 50_000 + np.cumsum(rng.uniform(0.2, 3.0, size=length))
        curves.append(
            np.stack([t, -6 + 0.2 * np.cos(t / 9) + rng.normal(0, 0.02, length), np.full(length, 0.05)], 1)
        )
    return curves


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """What a pretraining run leaves: save_pretrained of the head model plus the feature extractor."""
    torch.manual_seed(3)
    model = AstromerForMaskedReconstruction(
        AstromerConfig.astromer2(num_hidden_layers=2, use_mask_token=True)
    )
    folder = tmp_path_factory.mktemp("run") / "model"
    model.save_pretrained(folder)
    AstromerFeatureExtractor(max_error=0.8).save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def evaluation_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "evaluation.json"
    path.write_text(json.dumps({"results": EVALUATION}))
    return path


@pytest.fixture(scope="module")
def release(trained_folder, evaluation_json, tmp_path_factory):
    source, _ = trained_folder
    cache = tmp_path_factory.mktemp("hf_cache")
    repo = cache / "models--astromer--astromer-2"
    folder = build_release_folder(
        source, repo / "snapshots" / COMMIT, REPO_ID, evaluation=evaluation_json, license="mit"
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache, folder


def test_release_folder_is_complete(release, trained_folder):
    _, folder = release
    _, model = trained_folder
    assert {p.name for p in folder.iterdir()} == RELEASE_FILES
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == MODEL_AUTO_MAP
    assert config["custom_pipelines"] == CUSTOM_PIPELINES
    assert config["use_mask_token"] is True and config["architectures"] == ["AstromerForMaskedReconstruction"]
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"] == FEATURE_EXTRACTOR_AUTO_MAP and preprocessor["max_error"] == 0.8
    released, original = load_file(folder / "model.safetensors"), model.state_dict()
    assert set(released) == set(original)
    assert all(torch.equal(released[k], original[k]) for k in original)
    for name in (
        "configuration_astromer.py",
        "modeling_astromer.py",
        "feature_extraction_astromer.py",
        "errors.py",
        "pipeline_astromer.py",
    ):
        imports = re.findall(
            r"^\s*(?:from|import)\s+([\w.]+)", (folder / name).read_text(), flags=re.MULTILINE
        )
        roots = {m.split(".")[0] for m in imports if not m.startswith(".")}
        third_party = roots - set(sys.stdlib_module_names)
        assert third_party <= {"numpy", "torch", "transformers", "huggingface_hub"}, (name, third_party)


def test_model_card(release):
    _, folder = release
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["license"] == "mit"
    assert data["pipeline_tag"] == "feature-extraction"
    assert {"astronomy", "light-curves", "astromer"} <= set(data["tags"])
    text = card.text
    assert f'pipeline("feature-extraction", model="{REPO_ID}", trust_remote_code=True)' in text
    assert "applies no MASK token" in text and "float32" in text
    assert "MASK token applied" in text  # this checkpoint was trained with the token
    assert "| dataset | spc | macro_f1 | accuracy |" in text and "| alcock | 100 | 0.6789 | 0.7 |" in text


def test_package_route_round_trip(release, trained_folder, monkeypatch):
    cache, _ = release
    _, model = trained_folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    loaded = AutoModel.from_pretrained(REPO_ID).eval()
    assert type(loaded) is AstromerModel
    assert all(torch.equal(p, model.astromer.state_dict()[k]) for k, p in loaded.state_dict().items())
    extractor = AutoFeatureExtractor.from_pretrained(REPO_ID)
    assert type(extractor) is AstromerFeatureExtractor and extractor.max_error == 0.8
    pipe = pipeline("feature-extraction", model=REPO_ID, pipeline_class=LightCurveFeatureExtractionPipeline)
    assert len(pipe(_curves())) == 3


def test_remote_code_round_trip(release, trained_folder, tmp_path):
    cache, _ = release
    _, model = trained_folder
    curves = _curves(seed=1)
    np.savez(tmp_path / "curves.npz", *curves)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoFeatureExtractor, AutoModel, pipeline
        model = AutoModel.from_pretrained({REPO_ID!r}, trust_remote_code=True).eval()
        extractor = AutoFeatureExtractor.from_pretrained({REPO_ID!r}, trust_remote_code=True)
        assert type(extractor).__module__.startswith("transformers_modules") and extractor.max_error == 0.8
        pipe = pipeline("feature-extraction", model={REPO_ID!r}, trust_remote_code=True)
        assert "modeling_astromer" not in sys.modules and "astromer_train" not in sys.modules
        data = np.load({str(tmp_path / "curves.npz")!r})
        curves = [data[k] for k in data.files]
        np.save({str(tmp_path / "pipe.npy")!r}, np.stack(pipe(curves, pooling="skip", batch_size=4)))
        features = extractor(curves, return_tensors="pt")
        with torch.no_grad():
            windows = model.embed(features["magnitudes"], features["times"], features["attention_mask"])
        np.save({str(tmp_path / "windows.npy")!r}, windows.numpy())
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_MODULES_CACHE": str(tmp_path / "m"),
    }
    env.pop("PYTHONPATH", None)
    result = subprocess.run(  # noqa: PLW1510 (the return code is asserted)
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    extractor = AstromerFeatureExtractor(max_error=0.8)
    features = extractor(curves, return_tensors="pt")
    with torch.no_grad():
        expected_windows = model.eval().astromer.embed(
            features["magnitudes"], features["times"], features["attention_mask"]
        )
    np.testing.assert_array_equal(np.load(tmp_path / "windows.npy"), expected_windows.numpy())
    per_curve = extractor.pool_windows(
        expected_windows.double(), features["light_curve_index"], len(curves)
    ).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "pipe.npy"), per_curve, atol=1e-6, rtol=0)


def _mock_hub():
    commit = CommitInfo(
        commit_url=f"https://huggingface.co/{REPO_ID}/commit/{COMMIT}",
        commit_message="Release Astromer weights",
        commit_description="",
        oid=COMMIT,
    )
    return (
        mock.patch("huggingface_hub.hf_api.is_xet_available", return_value=False),
        mock.patch.object(HfApi, "create_repo", autospec=True),
        mock.patch.object(HfApi, "create_commit", autospec=True, return_value=commit),
        # hub 2.4 posts README.md to /api/validate-yaml before hashing the files
        mock.patch.object(HfApi, "_validate_yaml", autospec=True),
    )


def test_upload_goes_through_create_repo_and_one_commit(trained_folder, evaluation_json, tmp_path, capsys):
    source, _ = trained_folder
    xet, create_repo, create_commit, validate_yaml = _mock_hub()
    with xet, create_repo as repo_mock, create_commit as commit_mock, validate_yaml as yaml_mock:
        code = main(
            [
                str(source),
                "--repo-id",
                REPO_ID,
                "--evaluation",
                str(evaluation_json),
                "--private",
                "--commit-message",
                "v1",
                "--license",
                "mit",
            ]
        )
    assert code == 0, capsys.readouterr().err
    repo_mock.assert_called_once()
    assert repo_mock.call_args.kwargs["repo_id"] == REPO_ID
    assert repo_mock.call_args.kwargs["exist_ok"] is True and repo_mock.call_args.kwargs["private"] is True
    commit_mock.assert_called_once()
    kwargs = commit_mock.call_args.kwargs
    assert kwargs["repo_id"] == REPO_ID and kwargs["commit_message"] == "v1"
    assert {op.path_in_repo for op in kwargs["operations"]} == RELEASE_FILES
    card = yaml_mock.call_args.kwargs["content"]
    assert card.startswith("---\n") and "pipeline_tag: feature-extraction" in card
    assert "uploaded: https://huggingface.co/" in capsys.readouterr().err


def test_dry_run_writes_the_folder_only(trained_folder, tmp_path, capsys):
    source, _ = trained_folder
    out = tmp_path / "release"
    xet, create_repo, create_commit, validate_yaml = _mock_hub()
    with xet, create_repo as repo_mock, create_commit as commit_mock, validate_yaml:
        assert main([str(source), "--repo-id", REPO_ID, "--license", "mit", "--dry-run", "--output", str(out)]) == 0
        assert (
            main([str(source), "--repo-id", REPO_ID, "--license", "mit", "--dry-run", "--output", str(out)]) == 1
        )  # no overwrite
        assert "--overwrite" in capsys.readouterr().err
        assert (
            main([str(source), "--repo-id", REPO_ID, "--license", "mit", "--dry-run", "--output", str(out), "--overwrite"]) == 0
        )
    repo_mock.assert_not_called()
    commit_mock.assert_not_called()
    assert {p.name for p in out.iterdir()} == RELEASE_FILES
    assert "## Evaluation" not in (out / "README.md").read_text()
    assert main([str(source), "--repo-id", REPO_ID, "--dry-run"]) == 2  # needs --output


def test_release_errors_leave_nothing(trained_folder, tmp_path):
    source, _ = trained_folder
    with pytest.raises(ReleaseError, match="no such model folder"):
        build_release_folder(tmp_path / "missing", tmp_path / "a", REPO_ID)
    bad = tmp_path / "eval.json"
    bad.write_text("{not json")
    with pytest.raises(ReleaseError, match="not valid JSON"):
        build_release_folder(source, tmp_path / "b", REPO_ID, evaluation=bad, license="mit")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("x")
    with pytest.raises(ReleaseError, match="overwrite"):
        build_release_folder(source, keep, REPO_ID, license="mit")
    assert [p.name for p in keep.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "keep"]


def test_release_from_tensorflow_checkpoint(reference_dir, tmp_path):
    with pytest.raises(ReleaseError, match="licence is unknown"):  # a raw checkpoint records no licence
        build_release_folder(reference_dir / "astromer1_macho_a0", tmp_path / "a0", "astromer/astromer-1")
    out = build_release_folder(
        reference_dir / "astromer1_macho_a0", tmp_path / "a1", "astromer/astromer-1", license="mit"
    )
    assert {p.name for p in out.iterdir()} == RELEASE_FILES | {"LICENSE"}
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["attention_bias_mode"] == "a1_query_key_bias"
    assert "Converted from the official TensorFlow checkpoint" in (out / "README.md").read_text()


def test_evaluation_table_formats(tmp_path):
    assert markdown_table([{"a": 1, "b": 0.123456}, {"a": 2, "c": "x|y"}]).splitlines() == [
        "| a | b | c |",
        "|---|---|---|",
        "| 1 | 0.1235 |  |",
        "| 2 |  | x\\|y |",
    ]
    assert evaluation_table({"spc20": {"f1": 0.5}}) == "| setting | f1 |\n|---|---|\n| spc20 | 0.5 |"
    markdown = tmp_path / "table.md"
    markdown.write_text("| x |\n|---|\n| 1 |\n")
    assert evaluation_table(markdown) == "| x |\n|---|\n| 1 |"
    with pytest.raises(ValueError, match="unsupported evaluation JSON"):
        evaluation_table({"a": [1, 2]})


def test_issue14_item9_model_card_of_the_bundled_weights_carries_their_provenance(tmp_path):
    """The card keeps where the bundled Astromer 1 weights came from, and its notes are Astromer 1's."""
    out = build_release_folder(bundled_model_path("astromer1-macho"), tmp_path / "a1", "astromer/astromer-1")
    card = ModelCard.load(out / "README.md")
    assert card.data.to_dict()["license"] == "mit"
    text = card.text
    for fact in (
        "https://github.com/astromer-science/weights",
        "649eda472b94aa69b1d9b2ea771a5da71bcd335c",
        "76a204a37a0d47bfd722477f55231624c0c56cf9eea3369b5f22ff445d95158b",
        "MACHO LMC R-band",
        "`weights.index` 09c628f4",
    ):
        assert fact in text, fact
    assert "always runs on windows padded to 200" in text and "applies no MASK token" not in text
    assert "A54" in text and (out / "LICENSE").is_file()


def test_issue14_item9_model_card_licence_base_model_and_datasets(trained_folder, tmp_path):
    source, _ = trained_folder
    with pytest.raises(ReleaseError, match="licence is unknown"):
        build_release_folder(source, tmp_path / "none", REPO_ID)
    assert not (tmp_path / "none").exists()
    out = build_release_folder(
        source, tmp_path / "ok", REPO_ID, license="apache-2.0", base_model="astromer/astromer-2",
        datasets=["astromer/alcock"],
    )
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert data["license"] == "apache-2.0" and data["base_model"] == "astromer/astromer-2"
    assert data["datasets"] == ["astromer/alcock"]
    assert "applies no MASK token" in ModelCard.load(out / "README.md").text  # Astromer 2 notes


@pytest.mark.parametrize("repo_id", ["astromer/astromer 2", 'a/b")\nimport os', "owner/na--me"])
def test_repo_id_is_validated(trained_folder, tmp_path, capsys, repo_id):
    source, _ = trained_folder
    with pytest.raises(ReleaseError, match="is not a Hub repository id"):
        build_release_folder(source, tmp_path / "x", repo_id, license="mit")
    assert main([str(source), "--repo-id", repo_id, "--license", "mit", "--dry-run", "--output", str(tmp_path / "y")]) == 1
    assert "is not a Hub repository id" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
