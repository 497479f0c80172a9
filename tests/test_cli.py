"""The ``astromer`` command line end to end on small data, and its error handling."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from astromer_app.cli import PASS_THROUGH_COMMANDS, main
from modeling_astromer import InputError, bundled_models, resolve_model
from modeling_astromer.bundled import DEFAULT_MODEL
from modeling_astromer.pipeline import load_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]


def _curve(length, seed):
    rng = np.random.default_rng(seed)
    t = 49_000 + np.cumsum(rng.uniform(0.5, 4.0, size=length))
    mag = -6.0 + 0.3 * np.sin(t / 5.0) + rng.normal(0, 0.02, size=length)
    err = rng.uniform(0.01, 0.1, size=length)
    return t, mag, err


@pytest.fixture(scope="module")
def bundled():
    if DEFAULT_MODEL not in bundled_models():
        pytest.skip(f"the bundled {DEFAULT_MODEL} weights are not installed")
    return bundled_models()[DEFAULT_MODEL]


@pytest.fixture
def curve_folder(tmp_path):
    """Three one-curve CSV files (different column spellings) and a long-format Parquet file with two curves."""
    folder = tmp_path / "curves"
    (folder / "nested").mkdir(parents=True)
    spellings = [("time", "mag", "err"), ("MJD", "Magnitude", "errmag"), ("hjd", "m", "sigma")]
    lengths = {"a": 150, "b": 420, "c": 37}
    for (name, length), cols in zip(lengths.items(), spellings):
        t, m, e = _curve(length, seed=ord(name))
        target = folder / ("nested" if name == "c" else "") / f"star_{name}.csv"
        pd.DataFrame(dict(zip(cols, (t, m, e)))).to_csv(target, index=False)
    frames = []
    for name, length in (("x1", 610), ("x2", 90)):
        t, m, e = _curve(length, seed=len(name) + length)
        frames.append(
            pd.DataFrame({"object_id": name, "mjd": t, "mag": m, "errmag": e, "class": f"class-{name}"})
        )
    pd.concat(frames).to_parquet(folder / "survey.parquet", index=False)
    (folder / "notes.txt").write_text("ignored: not a light-curve file")
    return folder


def _vectors(table):
    """The `(n, D)` float32 embeddings of an 'astromer embed' table (one fixed-size list column)."""
    return np.stack(table["embedding"].to_numpy()).astype(np.float32)


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_embed_folder_end_to_end(bundled, curve_folder, tmp_path, capsys):
    output = tmp_path / "out" / "embeddings.parquet"
    code, _, err = _run(["embed", curve_folder, "-o", output, "--batch-size", "7", "-q"], capsys)
    assert code == 0, err
    table = pd.read_parquet(output)
    # files sorted by path (nested/star_c.csv first), rows of a long-format file in file order
    assert list(table["id"]) == ["star_c", "star_a", "star_b", "x1", "x2"]
    assert list(table["n_observations"]) == [37, 150, 420, 610, 90]
    assert list(table["n_windows"]) == [n // 200 + 1 for n in (37, 150, 420, 610, 90)]
    assert pq.read_schema(output).field("embedding").type == pa.list_(pa.float32(), 256)
    # the numbers are the pipeline's, curve by curve
    pipe = load_pipeline(bundled)
    t, m, e = _curve(420, seed=ord("b"))
    expected = pipe({"time": t, "mag": m, "err": e})
    np.testing.assert_allclose(_vectors(table)[2], expected, atol=1e-6, rtol=0)
    info = json.loads(pq.read_schema(output).metadata[b"astromer"])
    assert info["pooling"] == "skip" and info["hidden_size"] == 256 and info["model"] == DEFAULT_MODEL
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_embed_pooling_and_label_column(bundled, curve_folder, tmp_path, capsys):
    parquet = curve_folder / "survey.parquet"
    skip, mean = tmp_path / "skip.parquet", tmp_path / "mean.parquet"
    assert _run(["embed", parquet, "-o", skip, "-q", "--label-column", "class"], capsys)[0] == 0
    assert _run(["embed", parquet, "-o", mean, "-q", "--pooling", "mean"], capsys)[0] == 0
    a, b = pd.read_parquet(skip), pd.read_parquet(mean)
    assert list(a["label"]) == ["class-x1", "class-x2"] and "label" not in b.columns
    assert np.abs(_vectors(a) - _vectors(b)).max() > 1e-3


def test_embed_in_bf16_is_close_to_fp32_and_recorded(bundled, curve_folder, tmp_path, capsys):
    fp32, bf16 = tmp_path / "fp32.parquet", tmp_path / "bf16.parquet"
    assert _run(["embed", curve_folder, "-o", fp32, "-q"], capsys)[0] == 0
    code, _, err = _run(["embed", curve_folder, "-o", bf16, "-q", "--precision", "bf16"], capsys)
    assert code == 0, err
    a, b = pd.read_parquet(fp32), pd.read_parquet(bf16)
    assert list(a["id"]) == list(b["id"]) and pq.read_schema(bf16).field("embedding").type.value_type == pa.float32()
    difference = np.abs(_vectors(a) - _vectors(b)).max()
    assert 0 < difference < 0.05 * np.abs(_vectors(a)).max()
    assert json.loads(pq.read_schema(bf16).metadata[b"astromer"])["precision"] == "bf16"


def test_embed_refuses_to_overwrite(bundled, curve_folder, tmp_path, capsys):
    output = tmp_path / "embeddings.parquet"
    output.write_bytes(b"precious")
    code, _, err = _run(["embed", curve_folder, "-o", output, "-q"], capsys)
    assert code == 1 and "exists; pass --overwrite" in err
    assert output.read_bytes() == b"precious"
    code, _, err = _run(["embed", curve_folder, "-o", output, "-q", "--overwrite"], capsys)
    assert code == 0, err
    assert len(pd.read_parquet(output)) == 5


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-path", "no such file or folder"),
        ("unreadable", "cannot read it as Parquet"),
        ("missing-column", "no 'err' column"),
        ("unknown-override", "no time column 'when'"),
        ("too-short", "light curve 'tiny': only 3 valid observation"),
        ("bad-values", "non-finite time"),
        ("unsupported-type", "unsupported file type"),
        ("empty-folder", "holds no"),
        ("bad-suffix", "must end in .parquet"),
        ("bad-model", "no such folder"),
    ],
)
def test_embed_errors_are_clear_and_leave_nothing(bundled, curve_folder, tmp_path, capsys, case, message):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "embeddings.parquet"
    inputs = [curve_folder]
    extra = []
    bad = tmp_path / "bad"
    bad.mkdir()
    if case == "missing-path":
        inputs = [tmp_path / "nowhere"]
    elif case == "unreadable":
        (bad / "broken.parquet").write_text("this is not parquet")
        inputs = [bad]
    elif case == "missing-column":
        pd.DataFrame({"time": [1.0, 2.0], "mag": [3.0, 4.0]}).to_csv(bad / "two_columns.csv", index=False)
        inputs = [curve_folder, bad]
    elif case == "unknown-override":
        extra = ["--time-column", "when"]
    elif case == "too-short":
        t, m, e = _curve(3, seed=9)
        pd.DataFrame({"time": t, "mag": m, "err": e}).to_csv(bad / "tiny.csv", index=False)
        inputs = [curve_folder, bad]
    elif case == "bad-values":
        t, m, e = _curve(30, seed=10)
        t[4] = np.nan
        pd.DataFrame({"time": t, "mag": m, "err": e}).to_csv(bad / "nan_time.csv", index=False)
        inputs = [bad]
    elif case == "unsupported-type":
        (bad / "curve.txt").write_text("1 2 3\n")
        inputs = [bad / "curve.txt"]
    elif case == "empty-folder":
        inputs = [bad]
    elif case == "bad-suffix":
        output = out_dir / "embeddings.csv"
    elif case == "bad-model":
        extra = ["--model", str(tmp_path / "no_model_here")]
    code, _, err = _run(["embed", *inputs, "-o", output, "-q", *extra], capsys)
    assert code == 1
    assert err.startswith("astromer: error:") and message in err, err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []  # no output, no temporary file


def test_help_everywhere(capsys):
    commands = [
        [],
        ["embed"],
        ["convert"],
        ["plot"],
        ["plot", "reconstruction"],
        ["plot", "learning-curves"],
        ["plot", "embeddings"],
        ["demo"],
    ]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage:") and ("astromer " + " ".join(command)).strip() in out
    for command in PASS_THROUGH_COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: astromer {command}" in capsys.readouterr().out, command


def _run_module(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: PLW1510 (the return code is asserted)
        [sys.executable, "-m", "astromer_app", *arguments], capture_output=True, text=True, timeout=120
    )


def test_console_entry_point_runs_as_module():
    result = _run_module("--help")
    assert result.returncode == 0, result.stderr
    for command in ("embed", "pretrain", "finetune", "evaluate", "convert", "plot", "demo"):
        assert command in result.stdout
    result = _run_module("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_resolve_model(bundled, tmp_path):
    assert Path(resolve_model(DEFAULT_MODEL)) == bundled
    assert resolve_model("astromer/astromer-2") == "astromer/astromer-2"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a model folder"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="bundled models: .*astromer1-macho"):
        resolve_model("astromer1-ogle")


def test_convert_command(reference_dir, tmp_path, capsys):
    source = reference_dir / "astromer1_macho_a0"
    target = tmp_path / "converted"
    code, _, err = _run(["convert", source, target], capsys)
    assert code == 0, err
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in target.iterdir()
    }
    code, _, err = _run(["convert", source, target], capsys)
    assert code == 1 and "overwrite" in err
    code, _, err = _run(["convert", tmp_path / "no_checkpoint", tmp_path / "other"], capsys)
    assert code == 1 and err.startswith("astromer: error:") and not (tmp_path / "other").exists()


def test_convert_bad_checkpoint(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "weights.index").write_bytes(b"\x00" * 64)
    (broken / "weights.data-00000-of-00001").write_bytes(b"")
    code, _, err = _run(["convert", broken, tmp_path / "out"], capsys)
    assert code == 1 and err.startswith("astromer: error:") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_plot_commands(bundled, curve_folder, tmp_path, capsys):
    reconstruction = tmp_path / "reconstruction.png"
    code, _, err = _run(
        ["plot", "reconstruction", curve_folder, "-o", reconstruction, "--n-curves", "3", "--seed", "1"],
        capsys,
    )
    assert code == 0, err
    assert Image.open(reconstruction).size == (1000, 780)  # 10 x (2.6 x 3) inches at 100 dpi

    log = tmp_path / "pretrain.jsonl"
    records = [{"event": "config", "time": 0.0, "learning_rate": 0.001}]
    records += [{"event": "log", "time": float(s), "step": s, "train/loss": 1.0 / s} for s in range(1, 30)]
    records += [
        {"event": "log", "time": 30.0, "step": s, "eval/loss": 1.2 / s, "eval/r2": 0.1 * s} for s in (10, 20)
    ]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    curves_png = tmp_path / "learning.png"
    code, _, err = _run(["plot", "learning-curves", log, "-o", curves_png], capsys)
    assert code == 0, err
    assert Image.open(curves_png).size == (1000, 340)  # two panels: loss, r2

    embeddings = tmp_path / "embeddings.parquet"
    assert _run(["embed", curve_folder, "-o", embeddings, "-q"], capsys)[0] == 0
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"id": ["star_a", "star_b", "star_c", "x1", "x2"], "label": list("ABABA")}).to_csv(
        labels, index=False
    )
    map_png = tmp_path / "map.png"
    code, _, err = _run(["plot", "embeddings", embeddings, "-o", map_png, "--labels", labels], capsys)
    assert code == 0, err
    assert Image.open(map_png).size == (700, 600)
    code, _, err = _run(["plot", "embeddings", embeddings, "-o", map_png, "--labels", labels], capsys)
    assert code == 1 and "exists" in err  # not overwritten without --overwrite
    bad_log = tmp_path / "bad.jsonl"
    bad_log.write_text('{"step": 1, "loss": 0.5}\nnot json\n')
    code, _, err = _run(["plot", "learning-curves", bad_log, "-o", tmp_path / "bad.png"], capsys)
    assert code == 1 and "line 2: not valid JSON" in err and not (tmp_path / "bad.png").exists()
