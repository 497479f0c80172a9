"""ONNX export: parity with PyTorch in ONNX Runtime, the light-curve drop-in, the command and its errors.

Skipped without the ``onnx`` extra (``pip install 'astromer-hf[onnx]'``); the drop-in test also needs the
``light-curve`` package, and the Astromer 2 and real-curve tests the project's ``../shared`` folder.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from astromer_app.cli import main
from astromer_app.convert import convert_tf_checkpoint
from astromer_app.onnx_export import (
    CONVENTIONS,
    OnnxExportError,
    WindowEmbeddingGraph,
    export_onnx,
    load_encoder,
)
from astromer_app.onnx_parity import FLOAT32_ERROR_FACTOR, check_windows, pytorch_outputs
from modeling_astromer import (
    AstromerConfig,
    AstromerFeatureExtractor,
    AstromerForSequenceClassification,
    AstromerModel,
    bundled_models,
    load_pipeline,
    resolve_model,
)
from modeling_astromer.errors import InputError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
ALL_OUTPUTS = ("mean", "max", "sequence", "skip")
A1 = "astromer1-macho"
N_SDSS_CURVES = 24


def _session(path: Path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ort_outputs(path: Path, convention: str, names, windows) -> dict[str, np.ndarray]:
    results = _session(path).run(list(names), CONVENTIONS[convention].feeds(*windows))
    return {name: value.astype(np.float64) for name, value in zip(names, results)}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def _sdss_r_band(shared_dir: Path, n: int = N_SDSS_CURVES) -> list[np.ndarray]:
    """Cleaned r-band SDSS Stripe 82 RR Lyrae curves (50-75 points over 3-9 years), `(L, 3)` time/mag/err."""
    files = sorted((shared_dir / "data" / "sdss_rrlyrae" / "light-curves").glob("*.csv"))[:n]
    if not files:
        pytest.skip("SDSS RR Lyrae light curves not found in the shared folder")
    extractor = AstromerFeatureExtractor()
    curves = []
    for file in files:
        table = pd.read_csv(file)
        table = table[table["band"] == "r"]
        cleaned = extractor.clean(table[["time", "mag", "magerr"]].to_numpy())
        curves.append(np.column_stack([cleaned.time, cleaned.mag, cleaned.err]))
    return curves


def _tiny_folder(path: Path, classifier: bool = False) -> Path:
    """A seeded 1-block Astromer 2 (d = 32) saved with its feature extractor; the classifier has a non-uniform gamma."""
    config = AstromerConfig.astromer2(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64)
    torch.manual_seed(0)
    model = AstromerForSequenceClassification(config) if classifier else AstromerModel(config)
    if classifier:
        with torch.no_grad():
            model.layer_logits.copy_(torch.tensor([2.0, -1.0]))
    model.save_pretrained(path)
    AstromerFeatureExtractor(window_size=config.window_size).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def a1_export(tmp_path_factory):
    if A1 not in bundled_models():
        pytest.skip(f"the bundled {A1} weights are not installed")
    output = tmp_path_factory.mktemp("a1") / "astromer1.onnx"
    return export_onnx(A1, output, outputs=ALL_OUTPUTS)


@pytest.fixture(scope="module")
def a2_folder(reference_dir, tmp_path_factory):
    return convert_tf_checkpoint(reference_dir / "astromer2_tf_random", tmp_path_factory.mktemp("a2") / "hf")


@pytest.fixture(scope="module")
def a2_export(a2_folder, shared_dir, tmp_path_factory):
    """Checked by the export itself on real SDSS curves (baselines of up to 9 years) and random windows."""
    output = tmp_path_factory.mktemp("a2_onnx") / "astromer2.onnx"
    return export_onnx(str(a2_folder), output, outputs=ALL_OUTPUTS, check_curves=_sdss_r_band(shared_dir))


def _parity_by_batch(exported, model: str, convention: str = "light-curve"):
    """max |ONNX Runtime - PyTorch| and PyTorch float32's own error per output, over batches of 1 and 7 windows."""
    loaded = load_encoder(model)
    exact_encoder = copy.deepcopy(loaded.encoder).double()
    windows = check_windows(loaded.extractor, None, loaded.encoder.config.window_size)
    n_curve_windows = next(iter(windows.origin.values()))
    names = [o["name"] for o in exported.metadata["outputs"]]
    diffs = dict.fromkeys(names, 0.0)
    errors = dict.fromkeys(names, 0.0)
    # 7 synthetic-curve windows, 7 random windows (1 to 80 observations), one full and one 1-observation window
    batches = [slice(0, 7), slice(n_curve_windows, n_curve_windows + 7), slice(-1, None), slice(n_curve_windows, n_curve_windows + 1)]
    for rows in batches:
        batch = windows.take(rows)
        ours = pytorch_outputs(loaded.encoder, names, batch, loaded.layer_logits)
        exact = pytorch_outputs(exact_encoder, names, batch, loaded.layer_logits, torch.float64)
        onnx = _ort_outputs(exported.path, convention, names, batch)
        assert all(onnx[n].shape == ours[n].shape for n in names)
        for name in names:
            diffs[name] = max(diffs[name], _max_diff(onnx[name], ours[name]))
            errors[name] = max(errors[name], _max_diff(ours[name], exact[name]))
    return diffs, errors


# ------------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("model", ["tiny-classifier", A1])
def test_graph_and_reference_are_what_embed_computes(model, tmp_path):
    """The exported module and the check's PyTorch side both equal ``AstromerModel.embed`` / ``last_hidden_state``."""
    if model == A1 and A1 not in bundled_models():
        pytest.skip(f"the bundled {A1} weights are not installed")
    source = str(_tiny_folder(tmp_path / "clf", classifier=True)) if model == "tiny-classifier" else model
    loaded = load_encoder(source)
    windows = check_windows(loaded.extractor, None, 200).take(slice(14, 23))
    reference = pytorch_outputs(loaded.encoder, ALL_OUTPUTS, windows, loaded.layer_logits)
    magnitudes, times, mask = (torch.from_numpy(w) for w in windows)
    graph = WindowEmbeddingGraph(loaded.encoder, ALL_OUTPUTS, loaded.layer_logits, channel_axis=True)
    with torch.no_grad():
        traced_inputs = graph(magnitudes[..., None], times[..., None], mask.float()[..., None])
        expected = {
            pooling: loaded.encoder.embed(
                magnitudes, times, mask, pooling=pooling, layer_logits=loaded.layer_logits
            ).numpy()
            for pooling in ("mean", "max", "skip")
        }
        expected["sequence"] = loaded.encoder(magnitudes, times, mask).last_hidden_state.numpy()
    for name, graph_value in zip(ALL_OUTPUTS, traced_inputs):
        assert _max_diff(reference[name], expected[name]) < 1e-6, name
        assert _max_diff(graph_value.numpy(), expected[name]) < 1e-6, name


def test_astromer1_export_matches_pytorch_batches_1_and_7(a1_export):
    assert a1_export.parity.passed, a1_export.parity.lines()
    diffs, errors = _parity_by_batch(a1_export, A1)
    for name in ALL_OUTPUTS:
        # Astromer 1's own float32 error is ~1e-4 to 1e-3 (see astromer_app.onnx_parity); a wrong export is off by ~1
        assert diffs[name] <= max(1e-5, FLOAT32_ERROR_FACTOR * errors[name]), (name, diffs[name], errors[name])
        assert diffs[name] < 5e-3, (name, diffs[name])
    assert diffs["mean"] < 2e-4 and diffs["skip"] < 2e-4


def test_astromer2_export_matches_pytorch_to_1e_5_within_1000_days(a2_export, a2_folder):
    diffs, _ = _parity_by_batch(a2_export, str(a2_folder))
    assert all(diffs[name] <= 1e-5 for name in ALL_OUTPUTS), diffs


def test_astromer2_export_on_real_long_baseline_curves(a2_export):
    parity = a2_export.parity
    assert parity.passed and parity.max_abs_time > 1000
    assert "light-curve windows" in parity.origin and parity.origin["light-curve windows"] == N_SDSS_CURVES
    for output in parity.outputs:
        assert output.max_abs_diff <= 1e-4, output


def test_astromer2_reference_windows(a2_export, reference_dir):
    """The official windows (centred by TensorFlow, times up to 1,768 d) as stored, batch sizes 1 and 7."""
    data = np.load(reference_dir / "astromer2_tf_random.npz")
    model = AstromerModel.from_pretrained(a2_export.metadata["model"]["source"], attn_implementation="sdpa").eval()
    for rows in (slice(41, 42), slice(34, 41)):
        batch = (data["inf_input"][rows], data["times"][rows], (1 - data["inf_mask_in"][rows]).astype(np.int64))
        ours = pytorch_outputs(model, ALL_OUTPUTS, batch)
        onnx = _ort_outputs(a2_export.path, "light-curve", ALL_OUTPUTS, batch)
        for name in ALL_OUTPUTS:
            assert _max_diff(onnx[name], ours[name]) <= 1e-4, name


# ------------------------------------------------------------------------------------------- file and interface
def test_light_curve_interface_and_description(a1_export):
    session = _session(a1_export.path)
    inputs = {i.name: (i.shape, i.type) for i in session.get_inputs()}
    assert inputs == {name: (["batch", 200, 1], "tensor(float)") for name in ("input", "times", "mask_in")}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert outputs == {"mean": ["batch", 256], "max": ["batch", 256], "sequence": ["batch", 200, 256],
                       "skip": ["batch", 256]}
    assert a1_export.external_data_path is None
    assert a1_export.path.stat().st_size > 2_000_000  # the 661,505 float32 weights are inside the file

    description = json.loads(a1_export.metadata_path.read_text())
    assert a1_export.metadata_path.name == "astromer1.onnx.json"
    assert description["convention"] == "light-curve" and description["window_size"] == 200
    assert description["model"]["variant"] == "astromer1" and description["model"]["source"] == A1
    assert [o["name"] for o in description["outputs"]] == list(ALL_OUTPUTS)
    assert "float64" in description["preprocessing"]["centring"]
    assert description["preprocessing"]["astromer1_padding"]
    assert description["parity"]["passed"] is True
    assert set(description["parity"]["outputs"]) == set(ALL_OUTPUTS)
    stored = json.loads(onnx.load(str(a1_export.path)).metadata_props[0].value)
    assert stored["model"] == description["model"]


def test_hf_convention_and_fine_tuned_gamma(tmp_path):
    folder = _tiny_folder(tmp_path / "classifier", classifier=True)
    exported = export_onnx(str(folder), tmp_path / "tiny.onnx", outputs="skip,sequence", convention="hf")
    assert exported.parity.passed and exported.metadata["model"]["fine_tuned_gamma"]
    session = _session(exported.path)
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("magnitudes", "tensor(float)"), ("times", "tensor(float)"), ("attention_mask", "tensor(int64)")
    ]
    assert session.get_inputs()[0].shape == ["batch", 200]
    classifier = AstromerForSequenceClassification.from_pretrained(folder).eval()
    windows = check_windows(AstromerFeatureExtractor(), None, 200).take(slice(0, 7))
    tensors = [torch.from_numpy(w) for w in windows]
    with torch.no_grad():
        expected = classifier(*tensors).embeddings.numpy()
    skip = _ort_outputs(exported.path, "hf", ["skip"], windows)["skip"]
    assert _max_diff(skip, expected) < 1e-5
    uniform = pytorch_outputs(classifier.astromer, ["skip"], windows)["skip"]
    assert _max_diff(skip, uniform) > 1e-3  # the fine-tuned gamma is not the default one


def test_external_data_file(tmp_path):
    folder = _tiny_folder(tmp_path / "tiny")
    exported = export_onnx(str(folder), tmp_path / "out" / "tiny.onnx", outputs="mean", external_data=True)
    assert exported.external_data_path == tmp_path / "out" / "tiny.onnx.data"
    weights = [t for t in onnx.load(str(exported.path), load_external_data=False).graph.initializer
               if np.prod(t.dims) >= 1024]
    assert weights and all(t.data_location == onnx.TensorProto.EXTERNAL for t in weights)
    assert exported.metadata["external_data"] == "tiny.onnx.data"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny.onnx", "tiny.onnx.data", "tiny.onnx.json"]
    windows = check_windows(AstromerFeatureExtractor(), None, 200).take(slice(0, 3))
    loaded = load_encoder(str(folder))
    expected = pytorch_outputs(loaded.encoder, ["mean"], windows)["mean"]
    assert _max_diff(_ort_outputs(exported.path, "light-curve", ["mean"], windows)["mean"], expected) < 1e-5


def test_failed_parity_writes_nothing(tmp_path, monkeypatch):
    """An export whose graph pools padding too is caught by the check, and no file is left."""
    folder = _tiny_folder(tmp_path / "tiny")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr("astromer_app.onnx_export.masked_mean", lambda hidden, weights: hidden.mean(dim=1))
    with pytest.raises(OnnxExportError, match=r"parity check failed: mean: max \|ONNX Runtime - PyTorch\| = "):
        export_onnx(str(folder), out / "broken.onnx", outputs="mean,max")
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------------------------------- light-curve
def test_drop_in_for_light_curve_astromer1(a1_export, shared_dir):
    """light_curve.embed.Astromer1 on the exported file embeds real curves (< 200 points) like our "mean" pipeline."""
    light_curve_embed = pytest.importorskip("light_curve.embed")
    curves = _sdss_r_band(shared_dir)
    assert all(len(c) < 200 for c in curves)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # light_curve.embed announces itself as experimental
        embedder = light_curve_embed.Astromer1(_session(a1_export.path), output="mean")
    pipe = load_pipeline(resolve_model(A1), batch_size=64)
    ours = np.stack(pipe([{"time": c[:, 0], "mag": c[:, 1], "err": c[:, 2]} for c in curves], pooling="mean"))
    theirs = np.stack([embedder(c[:, 0], c[:, 1]).reshape(-1) for c in curves])
    assert theirs.shape == ours.shape == (len(curves), 256)
    assert _max_diff(theirs, ours) <= 1e-4


def test_drop_in_for_light_curve_astromer2(a2_export, a2_folder, shared_dir):
    light_curve_embed = pytest.importorskip("light_curve.embed")
    curves = _sdss_r_band(shared_dir, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embedder = light_curve_embed.Astromer2(_session(a2_export.path), output="max")
    pipe = load_pipeline(str(a2_folder), batch_size=64)
    ours = np.stack(pipe([{"time": c[:, 0], "mag": c[:, 1], "err": c[:, 2]} for c in curves], pooling="max"))
    theirs = np.stack([embedder(c[:, 0], c[:, 1]).reshape(-1) for c in curves])
    assert _max_diff(theirs, ours) <= 1e-4


# ------------------------------------------------------------------------------------------------- command line
def test_export_command(tmp_path, capsys):
    folder = _tiny_folder(tmp_path / "tiny")
    output = tmp_path / "tiny.onnx"
    assert main(["export", "onnx", str(folder), str(output), "--outputs", "max,mean"]) == 0
    err = capsys.readouterr().err
    assert "max: max |ONNX Runtime - PyTorch|" in err and f"wrote {output}" in err
    assert [o.name for o in _session(output).get_outputs()] == ["max", "mean"]
    assert main(["export", "onnx", str(folder), str(output), "--no-check", "--overwrite"]) == 0
    assert "parity" not in json.loads(Path(f"{output}.json").read_text())


def test_help():
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "onnx", "--help"])
    assert exit_info.value.code == 0


def _not_astromer(tmp_path: Path) -> str:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return str(folder)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not-astromer", "not an Astromer model (model_type 'bert')"),
        ("no-config", "not a model folder"),
        ("parent-is-a-file", "cannot write there"),
        ("exists", "exists; pass --overwrite"),
        ("suffix", "must end in .onnx"),
        ("unknown-output", "unknown output 'pooled'; choose from mean, max, sequence, skip"),
        ("repeated-output", "output 'mean' is named more than once"),
    ],
)
def test_bad_input_is_one_line(case, message, tmp_path, capsys):
    model, output, extra = A1, tmp_path / "out" / "model.onnx", []
    (tmp_path / "out").mkdir()
    if case == "not-astromer":
        model = _not_astromer(tmp_path)
    elif case == "no-config":
        model = str(tmp_path / "out")
    elif case == "parent-is-a-file":
        (tmp_path / "out" / "file").write_text("x")
        output = tmp_path / "out" / "file" / "model.onnx"
    elif case == "exists":
        output.write_text("keep me")
    elif case == "suffix":
        output = output.with_suffix(".pt")
    elif case == "unknown-output":
        extra = ["--outputs", "mean,pooled"]
    elif case == "repeated-output":
        extra = ["--outputs", "mean,max,mean"]
    before = sorted((tmp_path / "out").rglob("*"))
    assert main(["export", "onnx", model, str(output), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("astromer: error: ") and message in err and err.count("\n") == 1, err
    assert sorted((tmp_path / "out").rglob("*")) == before


def test_python_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown convention"):
        export_onnx(A1, tmp_path / "x.onnx", convention="keras")
    with pytest.raises(InputError, match="--tolerance must be a positive number"):
        export_onnx(A1, tmp_path / "x.onnx", tolerance=0.0)
    with pytest.raises(InputError, match="cannot be exported"):
        export_onnx(A1, tmp_path / "x.onnx", attn_implementation="astromer_blocked")


def test_benchmark_script_reports_every_row(tmp_path):
    folder = _tiny_folder(tmp_path / "tiny")
    report_path = tmp_path / "bench.json"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(  # noqa: PLW1510 (the return code is asserted)
        [sys.executable, str(REPO / "astromer_app" / "benchmarks" / "onnx_inference.py"), "--batch-size", "3",
         "--repeats", "1", "--model", str(folder), "--json", str(report_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    rows = {row["row"]: row for row in report["rows"]}
    assert list(rows) == ["onnxruntime fp32", "torch sdpa fp32", "torch sdpa bf16",
                          "torch astromer_blocked + oneDNN linears bf16"]
    assert rows["onnxruntime fp32"]["ratio_to_onnxruntime"] == 1.0
    assert all(row["windows_per_s"] > 0 for row in rows.values())
    assert rows["onnxruntime fp32"]["max_abs_diff_vs_torch_sdpa_fp32"] < 1e-5
    assert 0 < rows["torch sdpa bf16"]["max_abs_diff_vs_torch_sdpa_fp32"] < 0.1
    assert "load average" in result.stdout and "| onnxruntime fp32 |" in result.stdout
