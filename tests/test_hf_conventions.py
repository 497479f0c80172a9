"""Hugging Face habits users expect of the model classes (regression tests of issue 14, named after its items)."""

import json
import shutil

import pytest
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

import modeling_astromer
from modeling_astromer import (
    AstromerConfig,
    AstromerFeatureExtractor,
    AstromerForMaskedReconstruction,
    AstromerForSequenceClassification,
    AstromerModel,
    bundled_model_path,
)
from modeling_astromer.configuration_astromer import resolve_bundled_name


def test_issue14_item8_auto_model_for_pretraining_is_registered_without_remote_code(tmp_path):
    """`auto_map` advertises AutoModelForPreTraining; after `import modeling_astromer` it loads the package's class
    with no `trust_remote_code`, even from a folder whose config carries an `auto_map`."""
    folder = tmp_path / "a2"
    AstromerForMaskedReconstruction(AstromerConfig.astromer2(num_hidden_layers=1)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForPreTraining": "modeling_astromer.AstromerForMaskedReconstruction"}
    (folder / "config.json").write_text(json.dumps(config))

    model = AutoModelForPreTraining.from_pretrained(folder)
    assert type(model) is modeling_astromer.AstromerForMaskedReconstruction
    assert type(AutoModel.from_pretrained(folder)) is modeling_astromer.AstromerModel


@pytest.mark.parametrize("model_class", [AstromerModel, AstromerForMaskedReconstruction])
def test_issue14_item12_dummy_inputs_run_through_the_model(model_class):
    """The inherited `dummy_inputs` were `input_ids`, which an Astromer model cannot take."""
    config = AstromerConfig.astromer2(num_hidden_layers=1, window_size=32)
    model = model_class(config).eval()
    inputs = model.dummy_inputs
    assert set(inputs) == {"magnitudes", "times", "attention_mask"}
    assert all(t.shape == (2, 32) for t in inputs.values())
    assert abs(float(inputs["magnitudes"].mean(dim=1).abs().max())) < 1e-6  # centred per window, as the model expects
    with torch.no_grad():
        output = model(**inputs)
    tensor = output.last_hidden_state if model_class is AstromerModel else output.reconstruction
    assert torch.isfinite(tensor).all() and tensor.shape[:2] == (2, 32)


def test_issue14_item12_bundled_model_name_loads_in_python_without_the_network(monkeypatch):
    """`from_pretrained("astromer1-macho")` retried the Hub for 23 s and failed; the model, head, config and feature
    extractor classes now load the installed folder, and the Auto classes take `bundled_model_path(name)`."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = bundled_model_path("astromer1-macho")
    assert resolve_bundled_name("astromer1-macho") == str(folder)
    assert resolve_bundled_name("astromer/astromer-2") == "astromer/astromer-2"  # Hub ids are left alone
    assert resolve_bundled_name("no-such-model") == "no-such-model"

    model = AstromerModel.from_pretrained("astromer1-macho")
    reference = AstromerModel.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert AstromerConfig.from_pretrained("astromer1-macho").num_hidden_layers == 2
    assert AstromerFeatureExtractor.from_pretrained("astromer1-macho").to_dict() == \
        AstromerFeatureExtractor.from_pretrained(folder).to_dict()
    classifier = AstromerForSequenceClassification.from_pretrained("astromer1-macho", num_labels=2)
    assert classifier.config.num_labels == 2
    assert type(AutoModel.from_pretrained(folder)) is AstromerModel
    assert AutoConfig.from_pretrained(folder).model_type == "astromer"


def test_issue14_item12_a_local_folder_named_like_a_bundled_model_wins(tmp_path, monkeypatch):
    """A user's own folder called `astromer1-macho` in the working directory is loaded, not the bundled weights."""
    mine = tmp_path / "astromer1-macho"
    shutil.copytree(bundled_model_path("astromer1-macho"), mine)
    config = json.loads((mine / "config.json").read_text())
    config["hidden_dropout_prob"] = 0.25
    (mine / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert AstromerModel.from_pretrained("astromer1-macho").config.hidden_dropout_prob == 0.25
    assert resolve_bundled_name("astromer1-macho") == "astromer1-macho"
    assert AutoFeatureExtractor.from_pretrained(mine) is not None
