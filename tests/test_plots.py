"""Plots: correct data behind them, PNGs of the expected pixel size, no clobbering."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from astromer_app.plots import (
    masked_reconstruction_examples,
    pca_2d,
    plot_embedding_map,
    plot_learning_curves,
    plot_reconstruction,
    read_tracker_log,
)
from modeling_astromer import AstromerConfig, AstromerFeatureExtractor, AstromerForMaskedReconstruction
from modeling_astromer.masking import probing_counts


def _png(path):
    image = Image.open(path)
    image.load()
    return image


def _assert_drawn(path, size):
    image = _png(path)
    assert image.format == "PNG" and image.size == size
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert pixels.std() > 5  # not a blank canvas


def _curves(lengths=(150, 420, 60), seed=0):
    rng = np.random.default_rng(seed)
    curves = []
    for length in lengths:
        t = 50_100 + np.cumsum(rng.uniform(0.5, 3.0, size=length))
        mag = -5.5 + 0.5 * np.sin(t / 3.0) + rng.normal(0, 0.02, size=length)
        curves.append(np.stack([t, mag, rng.uniform(0.01, 0.1, size=length)], axis=1))
    return curves


def test_reconstruction_examples_hold_the_real_points_and_the_model_output(tmp_path):
    torch.manual_seed(0)
    model = AstromerForMaskedReconstruction(AstromerConfig.astromer2(num_hidden_layers=1)).eval()
    extractor = AstromerFeatureExtractor()
    curves = _curves()
    examples = masked_reconstruction_examples(model, extractor, curves, titles=["a", "b", "c"], seed=3)
    assert [e.title for e in examples] == ["a", "b", "c"]
    for example, curve in zip(examples, curves):
        n = min(len(curve), 200)
        # back in the curve's own units: the first window, to float32 rounding of the centred values
        np.testing.assert_allclose(example.time, curve[:n, 0], atol=1e-4, rtol=0)
        np.testing.assert_allclose(example.magnitude, curve[:n, 1], atol=1e-6, rtol=0)
        np.testing.assert_allclose(example.error, curve[:n, 2], atol=1e-7, rtol=0)
        n_probed, _, _ = probing_counts(np.array([n]), 0.5, 0.0, 0.0)
        assert example.hidden.sum() == n_probed[0]  # every probed point is hidden
        # the reconstruction is the model's output for this window with those points hidden: centred on the
        # visible points, the hidden ones shown at that centre, so a model without a MASK token cannot read them
        features = extractor(
            [curve[:n]], return_tensors="pt"
        )  # 200 points give 2 identical windows: use the first
        hidden = torch.zeros(1, 200, dtype=torch.long)
        hidden[0, :n] = torch.from_numpy(example.hidden.astype(np.int64))
        with torch.no_grad():
            visible = features["attention_mask"][:1].bool() & ~hidden.bool()
            visible_mean = features["magnitudes"][:1][visible].mean()
            inputs = (features["magnitudes"][:1] - visible_mean).masked_fill(~visible, 0.0)
            direct = (
                visible_mean.double().item()
                + model(
                    inputs,
                    features["times"][:1],
                    features["attention_mask"][:1],
                    mask_positions=hidden,
                )
                .reconstruction[0, :n]
                .double()
                .numpy()
            )
        offset = float(features["magnitude_offset"][0])
        np.testing.assert_allclose(example.reconstruction, direct + offset, atol=1e-5, rtol=0)
        residual = example.reconstruction[example.hidden] - example.magnitude[example.hidden]
        assert example.rmse == pytest.approx(np.sqrt(np.mean(residual**2)), rel=1e-12)
    path = plot_reconstruction(examples, tmp_path / "reconstruction.png")
    _assert_drawn(path, (1000, 780))
    small = plot_reconstruction(examples[:1], tmp_path / "small.png", figsize=(4, 2), dpi=50)
    _assert_drawn(small, (200, 100))
    with pytest.raises(TypeError, match="reconstruction head"):
        masked_reconstruction_examples(model.astromer, extractor, curves)


def test_pca_matches_float64_svd():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(40, 6)) @ np.diag([5.0, 2.0, 1.0, 0.5, 0.1, 0.1])
    coordinates, ratio = pca_2d(data.astype(np.float32))
    centred = data - data.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    signs = np.sign(np.sum(coordinates * expected, axis=0))  # PCA components are defined up to sign
    np.testing.assert_allclose(coordinates * signs, expected, atol=1e-5)
    np.testing.assert_allclose(ratio, singular[:2] ** 2 / np.sum(singular**2), atol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        pca_2d(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="N >= 2"):
        pca_2d(np.ones((1, 4)))


def test_embedding_map(tmp_path):
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=5, size=(3, 16))
    labels = np.repeat(["RRab", "EC", "LPV"], 20)
    embeddings = np.concatenate([c + rng.normal(size=(20, 16)) for c in centres]).astype(np.float32)
    path = plot_embedding_map(embeddings, labels.tolist(), tmp_path / "map.png")
    _assert_drawn(path, (700, 600))
    unlabelled = plot_embedding_map(embeddings, None, tmp_path / "plain.png", figsize=(3, 3), dpi=80)
    _assert_drawn(unlabelled, (240, 240))
    with pytest.raises(ValueError, match="got 2 labels for 60"):
        plot_embedding_map(embeddings, ["a", "b"], tmp_path / "x.png")


def test_learning_curves_from_tracker_log(tmp_path):
    log = tmp_path / "run.jsonl"
    records = [{"event": "config", "time": 1.0, "batch_size": 64, "learning_rate": 1e-3}]
    records += [
        {"event": "log", "epoch": s // 10, "step": s, "time": 2.0 + s, "train/loss": 1 / s}
        for s in range(1, 41)
    ]
    records += [
        {"event": "log", "step": s, "time": 50.0, "val/rmse": 0.9 / s, "val/r2": 0.02 * s} for s in (20, 40)
    ]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert len(read_tracker_log(log)) == len(records)
    path = plot_learning_curves(log, tmp_path / "curves.png")
    _assert_drawn(
        path, (1500, 340)
    )  # three panels (loss, rmse, r2); config values and timestamps are not plotted
    only = plot_learning_curves(records, tmp_path / "loss.png", metrics=["train/loss"], dpi=50)
    _assert_drawn(only, (250, 170))
    with pytest.raises(ValueError, match="not in the log"):
        plot_learning_curves(records, tmp_path / "none.png", metrics=["val/accuracy"])


def test_bad_logs_and_targets(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 1.0}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"line 2: expected a JSON object"):
        read_tracker_log(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_tracker_log(empty)
    with pytest.raises(ValueError, match="no numeric metric"):
        plot_learning_curves([{"event": "log", "step": 1, "note": "text"}], tmp_path / "x.png")
    target = tmp_path / "keep.png"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        plot_embedding_map(np.eye(3), None, target)
    assert target.read_bytes() == b"mine"
    plot_embedding_map(np.eye(3), None, target, overwrite=True)
    assert _png(target).size == (700, 600)
    with pytest.raises(ValueError, match="must end in .png"):
        plot_embedding_map(np.eye(3), None, tmp_path / "map.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "empty.jsonl", "keep.png"]


def test_reconstruction_never_reads_the_hidden_magnitudes():
    """With the released Astromer 1 (no MASK token), changing the magnitudes of the hidden points leaves their
    reconstruction unchanged: they are predicted from the other points only."""
    from modeling_astromer import bundled_model_path

    folder = bundled_model_path("astromer1-macho")
    model = AstromerForMaskedReconstruction.from_pretrained(folder).eval()
    assert not model.config.use_mask_token
    extractor = AstromerFeatureExtractor.from_pretrained(folder)
    curve = _curves()[0][:150]
    (example,) = masked_reconstruction_examples(model, extractor, [curve], seed=1)
    shifted = curve.copy()
    shifted[example.hidden, 1] += np.random.default_rng(0).normal(0, 0.3, int(example.hidden.sum()))
    (again,) = masked_reconstruction_examples(model, extractor, [shifted], seed=1)
    np.testing.assert_array_equal(again.hidden, example.hidden)
    np.testing.assert_allclose(again.reconstruction, example.reconstruction, atol=1e-5, rtol=0)
    assert not np.allclose(again.magnitude, example.magnitude)
