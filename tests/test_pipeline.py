"""The light-curve feature-extraction pipeline: package route, remote-code route, batching, pooling, input forms."""

import os
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from curve_factories import light_curves
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY, FeatureExtractionPipeline

from astromer_app.hub_layout import PACKAGE_DIR, write_hub_folder
from astromer_kernels.registry import packed_attention_implementations
from modeling_astromer import (
    AstromerConfig,
    AstromerFeatureExtractor,
    AstromerForMaskedReconstruction,
    AstromerForSequenceClassification,
)
from modeling_astromer.feature_extraction_astromer import LightCurveValidationError
from modeling_astromer.pipeline import PIPELINE_TASK, LightCurveFeatureExtractionPipeline, load_pipeline
from modeling_astromer.pipeline_astromer import PACKED_ATTENTION_IMPLEMENTATIONS

REPO_ID = "astromer/astromer-2"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
CUSTOM_PIPELINES = {
    "feature-extraction": {
        "impl": "pipeline_astromer.LightCurveFeatureExtractionPipeline",
        "pt": ["AutoModel"],
        "type": "multimodal",
    }
}
# float32 model vs float64 reference, |embedding| ~ 1: a few float32 ulps through 2 blocks
TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny pretraining model and its Hub layout (with the pipeline file and custom_pipelines) in a fake cache."""
    torch.manual_seed(0)
    model = AstromerForMaskedReconstruction(AstromerConfig.astromer2(num_hidden_layers=2)).eval()
    cache = tmp_path_factory.mktemp("hf_cache")
    repo = cache / "models--astromer--astromer-2"
    folder = write_hub_folder(
        model,
        repo / "snapshots" / COMMIT,
        extra_code_files={"pipeline_astromer.py": PACKAGE_DIR / "pipeline_astromer.py"},
        config_updates={"custom_pipelines": CUSTOM_PIPELINES},
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache, folder, model


@pytest.fixture
def offline(released, monkeypatch):
    cache = released[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return released


@pytest.fixture(scope="module")
def pipe(released):
    _, folder, _ = released
    return pipeline(
        "feature-extraction", model=str(folder), pipeline_class=LightCurveFeatureExtractionPipeline
    )


def _reference(encoder, curves, pooling, layer_logits=None):
    """float64 reference: windows from the feature extractor, the encoder in float64, mean of windows per curve."""
    features = AstromerFeatureExtractor()(curves, return_tensors="pt")
    encoder64 = encoder.to(torch.float64)
    try:
        with torch.no_grad():
            windows = encoder64.embed(
                features["magnitudes"].double(),
                features["times"].double(),
                features["attention_mask"],
                pooling=pooling,
                layer_logits=None if layer_logits is None else layer_logits.double(),
            )
    finally:
        encoder.to(torch.float32)
    index = features["light_curve_index"].numpy()
    return np.stack([windows[index == i].mean(dim=0).numpy() for i in range(len(curves))])


@pytest.mark.parametrize("pooling", ["skip", "mean", "max"])
def test_one_embedding_per_curve_matches_float64_reference(released, pipe, pooling):
    _, _, model = released
    curves = light_curves()
    out = pipe(curves, pooling=pooling)
    assert isinstance(out, list) and len(out) == len(curves)
    assert all(v.shape == (model.config.hidden_size,) and v.dtype == np.float32 for v in out)
    expected = _reference(model.astromer, curves, pooling)
    np.testing.assert_allclose(np.stack(out), expected, atol=TOLERANCE, rtol=0)


def test_bfloat16_model_and_autocast_give_float32_numpy(released, pipe):
    """NumPy has no bfloat16: a bf16 model (or bf16 autocast) still returns float32 vectors, close to fp32's."""
    _, folder, model = released
    curves = light_curves(seed=3)[:3]
    expected = np.stack(pipe(curves))
    scale = np.abs(expected).max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = pipe(curves)
    bf16_pipe = pipeline("feature-extraction", model=str(folder), pipeline_class=LightCurveFeatureExtractionPipeline,
                         dtype=torch.bfloat16)
    assert bf16_pipe.model.dtype == torch.bfloat16
    for out in (autocast, bf16_pipe(curves)):
        assert all(v.dtype == np.float32 and v.shape == (model.config.hidden_size,) for v in out)
        assert 0 < np.abs(np.stack(out) - expected).max() < 0.05 * scale
    assert bf16_pipe(curves[0], return_tensors="pt").dtype == torch.bfloat16


def test_pooling_modes_differ_and_default_is_skip(pipe):
    curves = light_curves(seed=1)[:2]
    skip, mean, maximum = (np.stack(pipe(curves, pooling=p)) for p in ("skip", "mean", "max"))
    np.testing.assert_array_equal(np.stack(pipe(curves)), skip)
    assert np.abs(skip - mean).max() > 1e-3 and np.abs(mean - maximum).max() > 1e-3
    assert (maximum >= mean - 1e-6).all()  # a window max is >= its mean, and so is their average
    with pytest.raises(ValueError, match="pooling must be one of"):
        pipe(curves, pooling="cls")


@pytest.mark.parametrize("batch_size", [2, 3, 16])
def test_batched_equals_unbatched(pipe, batch_size):
    curves = light_curves(lengths=(12, 450, 199, 201, 90, 640), seed=2)
    unbatched = np.stack(pipe(curves, batch_size=1))
    batched = np.stack(pipe(curves, batch_size=batch_size))
    np.testing.assert_allclose(batched, unbatched, atol=1e-6, rtol=0)


def test_order_single_input_and_any_length(pipe):
    curves = light_curves(lengths=(5, 200, 401, 2500), seed=3)
    forward = pipe(curves, batch_size=4)
    backward = pipe(curves[::-1], batch_size=4)
    for a, b in zip(forward, backward[::-1]):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    single = pipe(curves[2])
    assert isinstance(single, np.ndarray) and single.shape == forward[2].shape
    np.testing.assert_allclose(single, forward[2], atol=1e-6, rtol=0)
    details = pipe(curves, return_details=True)
    assert [d["n_windows"] for d in details] == [len(c) // 200 + 1 for c in curves]
    assert [d["n_observations"] for d in details] == [len(c) for c in curves]
    tensor = pipe(curves[0], return_tensors="pt")
    assert isinstance(tensor, torch.Tensor) and torch.equal(tensor, torch.from_numpy(pipe(curves[0])))
    np.testing.assert_allclose(tensor.numpy(), forward[0], atol=1e-6, rtol=0)


class _TableLike:
    """The parts of astropy.table.Table the feature extractor uses (astropy is not a dependency)."""

    def __init__(self, columns):
        self._columns = columns
        self.colnames = list(columns)

    def __getitem__(self, name):
        return self._columns[name]


def test_every_input_form_gives_the_same_embedding(pipe):
    curve = light_curves(lengths=(333,), seed=4)[0]
    expected = pipe(curve)
    t, m, e = curve.T
    structured = np.zeros(len(curve), dtype=[("mjd", "f8"), ("mag", "f8"), ("errmag", "f8")])
    structured["mjd"], structured["mag"], structured["errmag"] = t, m, e
    forms = {
        "dict": {"time": t, "mag": m, "err": e},
        "dict-aliases": {"MJD": t.tolist(), "Magnitude": m.tolist(), "sigma": e.tolist()},
        "dataframe": pd.DataFrame({"hjd": t, "mag": m, "mag_err": e}),
        "table": _TableLike({"time": t, "mag": m, "err": e}),
        "structured": structured,
        "tensor": torch.from_numpy(curve),
    }
    for name, form in forms.items():
        np.testing.assert_allclose(pipe(form), expected, atol=1e-6, rtol=0, err_msg=name)
    rows = [{"id": "a", "time": t.tolist(), "mag": m.tolist(), "err": e.tolist(), "band": "R"}] * 2
    for name, collection in {
        "generator": (c for c in [curve, curve]),
        "dataset": datasets.Dataset.from_list(rows),
    }.items():
        streamed = pipe(collection)
        assert not isinstance(streamed, list), name  # an iterator, read as its results are consumed
        out = list(streamed)
        assert len(out) == 2, name
        np.testing.assert_allclose(
            np.stack(out), np.stack([expected, expected]), atol=1e-6, rtol=0, err_msg=name
        )
    stacked = np.stack([curve, curve[::-1].copy()])  # (N, L, 3): a batch of equal-length curves
    out = pipe(stacked)
    assert len(out) == 2
    np.testing.assert_allclose(out[0], expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out[1], expected, atol=1e-6, rtol=0)  # unsorted input is repaired by sorting


def test_invalid_curve_is_named_by_position_and_id(pipe):
    curves = light_curves(lengths=(50, 60, 70), seed=5)
    curves[2] = curves[2][:3]
    with pytest.raises(
        LightCurveValidationError, match=r"light curve 2 \(id 'star-c'\).*only 3 valid"
    ) as info:
        pipe(curves, ids=["star-a", "star-b", "star-c"])
    assert (
        info.value.curve_index == 2 and info.value.curve_id == "star-c" and info.value.field == "observations"
    )
    bad = {"time": np.arange(10.0), "mag": np.zeros(10)}
    with pytest.raises(LightCurveValidationError, match="no 'err' column"):
        pipe([curves[0], bad])
    with pytest.raises(ValueError, match="got 1 ids for 2 light curves"):
        pipe(curves[:2], ids=["x"])
    with pytest.raises(LightCurveValidationError, match="empty list"):
        pipe([])


def test_package_route_from_fake_hub(offline):
    _, _, model = offline
    curves = light_curves(seed=6)
    registered = pipeline(PIPELINE_TASK, model=REPO_ID)
    assert type(registered) is LightCurveFeatureExtractionPipeline
    np.testing.assert_allclose(
        np.stack(registered(curves, batch_size=8)),
        _reference(model.astromer, curves, "skip"),
        atol=TOLERANCE,
        rtol=0,
    )
    helper = load_pipeline(REPO_ID)  # Astromer 2 on a CPU: astromer_blocked attention, equal to sdpa to rounding
    np.testing.assert_allclose(np.stack(helper(curves)), np.stack(registered(curves)), atol=1e-6, rtol=0)
    # the text pipeline keeps the global task; only our own task name is registered
    text_impl = PIPELINE_REGISTRY.supported_tasks["feature-extraction"][
        "impl"
    ]  # a class or a dotted path in v5
    assert (
        text_impl is FeatureExtractionPipeline
        or text_impl == "transformers.pipelines.feature_extraction.FeatureExtractionPipeline"
    )
    assert PIPELINE_REGISTRY.supported_tasks[PIPELINE_TASK]["impl"] is LightCurveFeatureExtractionPipeline


def test_remote_code_route_without_the_package(offline, tmp_path):
    cache, _, model = offline
    curves = light_curves(seed=7)
    np.savez(tmp_path / "curves.npz", *curves)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        from transformers import pipeline
        extractor = pipeline("feature-extraction", model={REPO_ID!r}, trust_remote_code=True)
        assert "modeling_astromer" not in sys.modules, "the package must not be imported on this route"
        assert type(extractor).__module__.startswith("transformers_modules"), type(extractor).__module__
        assert type(extractor).__name__ == "LightCurveFeatureExtractionPipeline"
        data = np.load({str(tmp_path / "curves.npz")!r})
        curves = [data[k] for k in data.files]
        out = np.stack(extractor(curves, batch_size=5, pooling="mean"))
        np.save({str(tmp_path / "remote.npy")!r}, out)
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_MODULES_CACHE": str(tmp_path / "m"),
    }
    env.pop("PYTHONPATH", None)  # the remote route must work without this repository on the path
    result = subprocess.run(  # noqa: PLW1510 (the return code is asserted)
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = np.load(tmp_path / "remote.npy")
    np.testing.assert_allclose(remote, _reference(model.astromer, curves, "mean"), atol=TOLERANCE, rtol=0)


def test_classifier_uses_its_fine_tuned_layer_weights():
    torch.manual_seed(1)
    config = AstromerConfig.astromer2(num_hidden_layers=2, num_labels=3)
    classifier = AstromerForSequenceClassification(config).eval()
    with torch.no_grad():
        classifier.layer_logits.copy_(torch.tensor([2.0, -1.0, 0.5]))
    pipe = LightCurveFeatureExtractionPipeline(model=classifier, feature_extractor=AstromerFeatureExtractor())
    curves = light_curves(lengths=(150, 420), seed=8)
    tuned = np.stack(pipe(curves))
    expected = _reference(classifier.astromer, curves, "skip", layer_logits=classifier.layer_logits.detach())
    np.testing.assert_allclose(tuned, expected, atol=TOLERANCE, rtol=0)
    uniform = _reference(classifier.astromer, curves, "skip")
    assert np.abs(tuned - uniform).max() > 1e-3


def test_pipeline_without_feature_extractor_is_refused():
    model = AstromerForMaskedReconstruction(AstromerConfig.astromer2(num_hidden_layers=1)).astromer
    with pytest.raises(ValueError, match="needs the Astromer feature extractor"):
        LightCurveFeatureExtractionPipeline(model=model)


# ------------------------------------------------------------------------------------------- bands, outputs, input
SDSS_FOLDER = ("data", "sdss_rrlyrae", "light-curves")


def _sdss_file(shared_dir):
    path = shared_dir.joinpath(*SDSS_FOLDER) / "1013184.csv"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


def test_real_sdss_bands_are_refused_mixed_and_embedded_per_band(pipe, shared_dir):
    frame = pd.read_csv(_sdss_file(shared_dir))
    with pytest.raises(LightCurveValidationError, match=r"holds 5 bands \['g', 'i', 'r', 'u', 'z'\]") as info:
        pipe(frame, ids="1013184")
    assert info.value.field == "band" and info.value.curve_id == "1013184"
    r_rows = frame[frame["band"] == "r"]
    only_r = pipe(frame, bands="r", return_details=True)
    assert only_r["n_observations"] == len(r_rows)
    np.testing.assert_allclose(only_r["embedding"], pipe(r_rows.drop(columns="band")), atol=1e-6, rtol=0)
    per_band = pipe([frame, frame], bands=["g", "r"], return_details=True)
    assert len(per_band) == 2 and all(list(d) == ["g", "r"] for d in per_band)
    assert per_band[0]["g"]["n_observations"] == int((frame["band"] == "g").sum())
    np.testing.assert_allclose(per_band[1]["r"]["embedding"], only_r["embedding"], atol=1e-6, rtol=0)
    g_rows = frame[frame["band"] == "g"].drop(columns="band")
    np.testing.assert_allclose(per_band[0]["g"]["embedding"], pipe(g_rows), atol=1e-6, rtol=0)
    with pytest.raises(LightCurveValidationError, match=r"light curve 1, band 'y': no observation in band 'y'"):
        pipe([frame.assign(band="y"), frame], bands=["y"])


def test_issue14_item3_every_row_invalid_is_a_named_error(pipe):
    t = 50_000 + np.arange(12.0)
    for errors in (np.full(12, np.nan), np.zeros(12, dtype=np.int64)):
        with pytest.raises(LightCurveValidationError, match=r"light curve 1 \(id 'bad'\): only 0 valid") as info:
            pipe([light_curves(lengths=(30,))[0], {"time": t, "mag": np.full(12, 15.0), "err": errors}],
                 ids=["good", "bad"])
        assert info.value.field == "observations" and info.value.curve_index == 1


@pytest.mark.parametrize("magnitude", [1e30, 1e39])
def test_issue14_item4_huge_magnitude_is_a_named_error_not_nan(pipe, magnitude):
    curve = light_curves(lengths=(40,), seed=11)[0]
    curve[7, 1] = magnitude
    with pytest.raises(LightCurveValidationError, match=r"light curve 1 \(id 'huge'\): magnitude .* outside") as info:
        pipe([light_curves(lengths=(30,))[0], curve], ids=["fine", "huge"])
    assert info.value.field == "mag"


def test_issue14_item12_return_tensors_true_gives_tensors(pipe):
    curves = light_curves(lengths=(30, 250), seed=12)
    tensors = pipe(curves, return_tensors=True)
    assert all(isinstance(t, torch.Tensor) for t in tensors)
    np.testing.assert_array_equal(torch.stack(tensors).numpy(), np.stack(pipe(curves, return_tensors=False)))


def test_issue14_item12_pooling_none_gives_per_window_hidden_states(released, pipe):
    _, _, model = released
    curves = light_curves(lengths=(37, 455), seed=13)
    out = pipe(curves, pooling=None, return_details=True, batch_size=3)
    features = AstromerFeatureExtractor()(curves, return_tensors="pt")
    with torch.no_grad():
        hidden = model.astromer(features["magnitudes"], features["times"], features["attention_mask"]).last_hidden_state
    mask = features["attention_mask"].bool()
    hidden[~mask] = 0
    index = features["light_curve_index"]
    for i, details in enumerate(out):
        assert details["hidden_states"].shape == (int((index == i).sum()), 200, model.config.hidden_size)
        np.testing.assert_array_equal(details["attention_mask"], features["attention_mask"][index == i].numpy())
        np.testing.assert_array_equal(details["window_start"], features["window_start"][index == i].numpy())
        np.testing.assert_allclose(details["hidden_states"], hidden[index == i].numpy(), atol=1e-5, rtol=0)
    bare = pipe(curves[0], pooling=None)
    assert isinstance(bare, np.ndarray) and bare.shape == (1, 200, model.config.hidden_size)


def test_issue14_item12_generator_input_is_streamed(pipe):
    curves = light_curves(lengths=(30, 40, 50, 60, 70, 80), seed=14)
    pulled = []

    def generate():
        for curve in curves:
            pulled.append(len(pulled))
            yield curve

    results = pipe(generate(), batch_size=2, ids=(f"star-{i}" for i in range(len(curves))))
    assert len(pulled) <= 1  # transformers peeks at the first item of a generator; nothing more is read yet
    first = next(iter(results))
    assert 0 < len(pulled) < len(curves)
    np.testing.assert_allclose(first, pipe(curves[0]), atol=1e-6, rtol=0)
    assert len(list(results)) == len(curves) - 1 and len(pulled) == len(curves)


def test_packed_pipeline_equals_padded(released, pipe):
    """Astromer 2 packed back to back (astromer_blocked, chosen by load_pipeline on a CPU) equals the padded path."""
    _, folder, _ = released
    packed = load_pipeline(folder, batch_size=8)
    assert packed.model.config._attn_implementation == "astromer_blocked"
    curves = light_curves(lengths=(12, 450, 199, 201, 90, 640, 33, 57), seed=15)
    np.testing.assert_allclose(np.stack(packed(curves)), np.stack(pipe(curves, batch_size=8)), atol=1e-5, rtol=0)
    for a, b in zip(packed(curves[:3], pooling=None), pipe(curves[:3], pooling=None, batch_size=8)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)  # per-observation states unpacked to their windows
    assert load_pipeline(folder, attn_implementation=None).model.config._attn_implementation == "sdpa"


def test_pipeline_knows_every_packing_attention_implementation():
    assert set(PACKED_ATTENTION_IMPLEMENTATIONS) == set(packed_attention_implementations())
