"""Loading from the Hub layout, offline: a fake `astromer/astromer-2` snapshot in a private HF cache.

Two routes are checked: the package route (classes registered at `import modeling_astromer`) and the remote-code
route (`trust_remote_code=True`, in a subprocess that never imports this package).
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from curve_factories import light_curves
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForSequenceClassification

from astromer_app.hub_layout import MODEL_AUTO_MAP, write_hub_folder
from modeling_astromer import (
    AstromerConfig,
    AstromerFeatureExtractor,
    AstromerForMaskedReconstruction,
    AstromerModel,
)

REPO_ID = "astromer/astromer-2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A fake HF cache holding `astromer/astromer-2` at one commit, written by our release layout."""
    torch.manual_seed(0)
    model = AstromerForMaskedReconstruction(AstromerConfig.astromer2(num_hidden_layers=2)).eval()
    cache = tmp_path_factory.mktemp("hf_cache")
    repo = cache / "models--astromer--astromer-2"
    write_hub_folder(model, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache, model


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    cache, model = hub_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache, model


def test_hub_folder_layout(hub_cache):
    cache, _ = hub_cache
    snapshot = cache / "models--astromer--astromer-2" / "snapshots" / COMMIT
    names = {p.name for p in snapshot.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "configuration_astromer.py",
            "modeling_astromer.py", "feature_extraction_astromer.py"} <= names
    config = json.loads((snapshot / "config.json").read_text())
    assert config["auto_map"] == MODEL_AUTO_MAP
    assert config["model_type"] == "astromer"
    preprocessor = json.loads((snapshot / "preprocessor_config.json").read_text())
    assert preprocessor["feature_extractor_type"] == "AstromerFeatureExtractor"
    assert preprocessor["auto_map"]["AutoFeatureExtractor"].endswith("AstromerFeatureExtractor")
    # remote code must not import this package
    for name in ("configuration_astromer.py", "modeling_astromer.py", "feature_extraction_astromer.py"):
        imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", (snapshot / name).read_text(), flags=re.MULTILINE)
        assert not [m for m in imports if m.split(".")[0] in {"modeling_astromer", "astromer_kernels", "hub_datasets"}]


def test_package_route_from_fake_hub(offline_cache):
    _, reference = offline_cache
    config = AutoConfig.from_pretrained(REPO_ID)
    assert isinstance(config, AstromerConfig)
    model = AutoModel.from_pretrained(REPO_ID).eval()
    assert type(model) is AstromerModel
    extractor = AutoFeatureExtractor.from_pretrained(REPO_ID)
    assert type(extractor) is AstromerFeatureExtractor
    features = extractor(light_curves(), return_tensors="pt")
    with torch.no_grad():
        ours = model(features["magnitudes"], features["times"], features["attention_mask"]).last_hidden_state
        expected = reference.astromer(features["magnitudes"], features["times"], features["attention_mask"])
    assert torch.equal(ours, expected.last_hidden_state)
    classifier = AutoModelForSequenceClassification.from_pretrained(REPO_ID, num_labels=3)
    assert torch.equal(classifier.astromer.layers[0].attention.o_proj.weight, model.layers[0].attention.o_proj.weight)


def test_remote_code_route_without_the_package(offline_cache, tmp_path):
    cache, reference = offline_cache
    curves = light_curves(seed=4)
    np.savez(tmp_path / "curves.npz", *curves)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoModel, AutoFeatureExtractor
        model = AutoModel.from_pretrained({REPO_ID!r}, trust_remote_code=True).eval()
        extractor = AutoFeatureExtractor.from_pretrained({REPO_ID!r}, trust_remote_code=True)
        assert "modeling_astromer" not in sys.modules, "the package must not be imported on this route"
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        data = np.load({str(tmp_path / "curves.npz")!r})
        features = extractor([data[k] for k in data.files], return_tensors="pt")
        with torch.no_grad():
            out = model(features["magnitudes"], features["times"], features["attention_mask"]).last_hidden_state
        np.save({str(tmp_path / "remote.npy")!r}, out.numpy())
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.from_numpy(np.load(tmp_path / "remote.npy"))
    features = AstromerFeatureExtractor()(curves, return_tensors="pt")
    with torch.no_grad():
        expected = reference.astromer(features["magnitudes"], features["times"], features["attention_mask"])
    assert torch.equal(remote, expected.last_hidden_state)


def test_remote_code_requires_trust(offline_cache, tmp_path):
    cache, _ = offline_cache
    script = f"from transformers import AutoModel; AutoModel.from_pretrained({REPO_ID!r})"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(tmp_path / "m")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert "trust_remote_code" in result.stderr


def test_write_hub_folder_refuses_to_clobber(tmp_path):
    model = AstromerModel(AstromerConfig.astromer2(num_hidden_layers=1))
    target = tmp_path / "release"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_hub_folder(model, target)
    assert (target / "notes.txt").read_text() == "keep me"
    write_hub_folder(model, target, overwrite=True)
    assert (target / "model.safetensors").is_file() and not (target / "notes.txt").exists()
    assert not any(p.name.startswith(".release") for p in tmp_path.iterdir())
