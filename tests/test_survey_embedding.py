"""``astromer embed`` on real survey files: bands, long and nested tables, keep-going, bad values, kill and resume,
packed vs padded, two processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from astromer_app.cli import main
from astromer_app.embedding import WindowEmbedder, read_embeddings
from hub_datasets.samples import SDSS_RRLYRAE_DIR
from modeling_astromer import AstromerConfig, AstromerFeatureExtractor, AstromerModel, bundled_models
from modeling_astromer.bundled import DEFAULT_MODEL

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def _vectors(table):
    return np.stack(table["embedding"].to_numpy()).astype(np.float32)


def _curve(length, seed):
    rng = np.random.default_rng(seed)
    t = 49_000 + np.cumsum(rng.uniform(0.5, 4.0, size=length))
    mag = 15.0 + 0.3 * np.sin(t / 5.0) + rng.normal(0, 0.02, size=length)
    return pd.DataFrame({"time": t, "mag": mag, "err": rng.uniform(0.01, 0.1, size=length)})


@pytest.fixture(scope="module")
def bundled():
    if DEFAULT_MODEL not in bundled_models():
        pytest.skip(f"the bundled {DEFAULT_MODEL} weights are not installed")
    return bundled_models()[DEFAULT_MODEL]


@pytest.fixture(scope="module")
def astromer2(tmp_path_factory):
    """A small random Astromer 2 model folder (packed inference)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("astromer2")
    AstromerModel(AstromerConfig.astromer2(num_hidden_layers=2)).save_pretrained(folder)
    AstromerFeatureExtractor().save_pretrained(folder)
    return folder


@pytest.fixture
def curve_folder(tmp_path):
    """Seven one-curve CSV files of 12 to 450 observations."""
    folder = tmp_path / "curves"
    folder.mkdir()
    for i, length in enumerate((12, 450, 37, 201, 90, 64, 150)):
        _curve(length, seed=i).to_csv(folder / f"star_{i}.csv", index=False)
    return folder


def _sdss_files(shared_dir, n):
    folder = shared_dir / "data" / "sdss_rrlyrae" / "light-curves"
    files = sorted(folder.glob("*.csv"))[:n]
    if not files:
        pytest.skip(f"no SDSS light curves in {folder}")
    return files


# ----------------------------------------------------------------------------------------------------------- bands
def test_real_sdss_files_need_a_band_choice_and_embed_per_band(bundled, shared_dir, tmp_path, capsys):
    folder = tmp_path / "sdss"
    folder.mkdir()
    for path in _sdss_files(shared_dir, 6):
        shutil.copy(path, folder / path.name)
    output = tmp_path / "out" / "embeddings.parquet"
    code, err = _run(["embed", folder, "-o", output, "-q"], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.startswith("astromer: error: ") and len(err.strip().splitlines()) == 1
    assert "holds 5 bands ['g', 'i', 'r', 'u', 'z']" in err and "--bands" in err
    assert not output.parent.exists()

    assert _run(["embed", folder, "-o", output, "-q", "--bands", "r"], capsys)[0] == 0
    table = pd.read_parquet(output)
    frames = {p.stem: pd.read_csv(p) for p in sorted(folder.glob("*.csv"))}
    assert list(table["id"]) == list(frames) and set(table["band"]) == {"r"}
    r_rows = [int(((f["band"] == "r") & (f["magerr"] > 0) & (f["magerr"] < 1)).sum()) for f in frames.values()]
    assert list(table["n_observations"]) == r_rows

    both = tmp_path / "both.parquet"
    assert _run(["embed", folder, "-o", both, "-q", "--bands", "g,r"], capsys)[0] == 0
    per_band = pd.read_parquet(both)
    assert list(per_band["id"]) == [i for i in frames for _ in range(2)]
    assert list(per_band["band"]) == ["g", "r"] * len(frames)
    r_only = per_band[per_band["band"] == "r"]
    np.testing.assert_allclose(_vectors(r_only), _vectors(table), atol=1e-6, rtol=0)
    assert np.abs(_vectors(per_band[per_band["band"] == "g"]) - _vectors(table)).max() > 1e-3


def test_long_table_and_datasets_folder_with_bands(bundled, tmp_path, capsys):
    """The bundled SDSS sample as a long-format Parquet table (id, time, mag, magerr, band) and as a datasets
    folder with one row per star and band: the same embeddings."""
    observations = pd.read_parquet(SDSS_RRLYRAE_DIR / "observations.parquet")
    ids = observations["id"].unique()[:5]
    subset = observations[observations["id"].isin(ids)]
    long_table = tmp_path / "long.parquet"
    subset.to_parquet(long_table, index=False)
    out_long = tmp_path / "long_embeddings.parquet"
    assert _run(["embed", long_table, "-o", out_long, "-q", "--bands", "g,r"], capsys)[0] == 0
    from_long = pd.read_parquet(out_long)
    loaded = datasets.load_dataset("parquet", data_files=str(out_long), split="train", cache_dir=str(tmp_path / "c"))
    assert loaded.features["embedding"].length == 256 and loaded.num_rows == 10
    assert list(from_long["id"]) == [str(i) for i in ids for _ in range(2)]
    valid = subset["band"].isin(["g", "r"]) & (subset["magerr"] > 0) & (subset["magerr"] < 1) & subset["mag"].notna()
    expected_rows = subset[valid].groupby(["id", "band"], sort=False).size()
    assert list(from_long["n_observations"]) == [int(expected_rows[(i, b)]) for i in ids for b in ("g", "r")]

    rows = [
        {"id": str(i), "band": b, "time": g["time"].tolist(), "mag": g["mag"].tolist(), "err": g["magerr"].tolist()}
        for i in ids
        for b, g in subset[subset["id"] == i].groupby("band", sort=True)
    ]
    folder = tmp_path / "dataset"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    out_folder = tmp_path / "dataset_embeddings.parquet"
    assert _run(["embed", folder, "-o", out_folder, "-q", "--bands", "g,r"], capsys)[0] == 0
    from_dataset = pd.read_parquet(out_folder)
    assert list(from_dataset["id"]) == list(from_long["id"]) and list(from_dataset["band"]) == list(from_long["band"])
    np.testing.assert_allclose(_vectors(from_dataset), _vectors(from_long), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------------ bad input
def _bad_files(folder):
    """One unreadable file, one curve with a 1e30 magnitude, one with 1e39, one whose errors are all NaN, one whose
    integer errors round to 0, and a Parquet file with float16 times."""
    (folder / "broken.parquet").write_text("this is not parquet")
    for name, magnitude in (("huge_1e30", 1e30), ("huge_1e39", 1e39)):
        curve = _curve(40, seed=len(name))
        curve.loc[7, "mag"] = magnitude
        curve.to_csv(folder / f"{name}.csv", index=False)
    no_errors = _curve(30, seed=3)
    no_errors["err"] = np.nan
    no_errors.to_csv(folder / "all_nan_errors.csv", index=False)
    rounded = _curve(30, seed=4)
    rounded["err"] = 0
    rounded.to_csv(folder / "integer_errors.csv", index=False)
    half = _curve(30, seed=5)
    pq.write_table(pa.table({"time": pa.array(half["time"].to_numpy(np.float16)), "mag": half["mag"],
                             "err": half["err"]}), folder / "float16_times.parquet")
    return {
        "broken": ("broken.parquet", None, "cannot read it as Parquet"),
        "huge_1e30": ("huge_1e30.csv", "mag", "magnitude 1e+30"),
        "huge_1e39": ("huge_1e39.csv", "mag", "magnitude 1e+39"),
        "all_nan_errors": ("all_nan_errors.csv", "observations", "only 0 valid observation"),
        "integer_errors": ("integer_errors.csv", "observations", "only 0 valid observation"),
        "float16_times": ("float16_times.parquet", "time", "float16"),
    }


def test_on_error_skip_embeds_every_good_curve_and_lists_the_bad_ones(bundled, curve_folder, tmp_path, capsys):
    bad = _bad_files(curve_folder)
    output = tmp_path / "out" / "embeddings.parquet"
    code, err = _run(["embed", curve_folder, "-o", output, "-q", "--on-error", "skip", "--chunk-size", "4"], capsys)
    assert code == 0, err
    assert "wrote 7 embeddings" in err and "skipped 6" in err and "Traceback" not in err
    table = pd.read_parquet(output)
    assert sorted(table["id"]) == [f"star_{i}" for i in range(7)]
    assert np.isfinite(_vectors(table)).all()
    errors = pd.read_csv(tmp_path / "out" / "embeddings.errors.csv")
    assert list(errors.columns) == ["path", "curve_id", "band", "field", "reason"]
    listed = {Path(p).name: (f, r) for p, f, r in zip(errors["path"], errors["field"], errors["reason"])}
    assert set(listed) == {name for name, _, _ in bad.values()}
    for name, field, reason in bad.values():
        assert reason in listed[name][1], (name, listed[name])
        assert (field or "") == ("" if pd.isna(listed[name][0]) else listed[name][0])
    assert not [p.name for p in output.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["huge_1e30", "huge_1e39", "all_nan_errors", "integer_errors", "float16_times",
                                  "broken"])
def test_on_error_fail_is_one_line_naming_the_file_and_writes_nothing(bundled, curve_folder, tmp_path, capsys, case):
    folder = tmp_path / "bad"
    folder.mkdir()
    name, _, reason = _bad_files(folder)[case]
    inputs = [curve_folder, folder / name]
    out_dir = tmp_path / "out"
    code, err = _run(["embed", *inputs, "-o", out_dir / "embeddings.parquet", "-q", "--chunk-size", "3"], capsys)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"astromer: error: {folder / name}") and reason in err, err
    assert not out_dir.exists()


def test_issue14_item3_every_row_invalid_is_a_named_error(bundled, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    bad = _bad_files(folder)
    for case in ("all_nan_errors", "integer_errors"):
        code, err = _run(["embed", folder / bad[case][0], "-o", tmp_path / f"{case}.parquet", "-q"], capsys)
        assert code == 1 and "Traceback" not in err and "IndexError" not in err
        assert f"light curve '{case}': only 0 valid observation(s) after cleaning" in err


def test_issue14_item4_huge_magnitudes_are_named_never_a_nan_row(bundled, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    bad = _bad_files(folder)
    for case in ("huge_1e30", "huge_1e39"):
        output = tmp_path / f"{case}.parquet"
        code, err = _run(["embed", folder / bad[case][0], "-o", output, "-q"], capsys)
        assert code == 1 and "Traceback" not in err and f"light curve '{case}': magnitude" in err
        assert not output.exists()


# ------------------------------------------------------------------------------------------ resume, packing, DDP
def test_kill_and_resume_equals_an_uninterrupted_run(bundled, curve_folder, tmp_path, capsys):
    reference = tmp_path / "reference.parquet"
    assert _run(["embed", curve_folder, "-o", reference, "-q", "--chunk-size", "2"], capsys)[0] == 0
    output = tmp_path / "out" / "embeddings.parquet"
    arguments = [str(curve_folder), "-o", str(output), "-q", "--chunk-size", "2"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "tests"))
    crashed = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "crash_embed.py"), "3", *arguments],
                             env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    work = output.parent / ".embeddings.parquet.partial"
    assert sorted(p.name for p in work.glob("part-*.parquet")) == ["part-00000-000000.parquet",
                                                                  "part-00000-000001.parquet"]
    assert [p for p in work.iterdir() if p.name.endswith(".tmp")] and not output.exists()

    code, err = _run(["embed", *arguments], capsys)
    assert code == 1 and "pass --resume to continue it or --overwrite" in err
    code, err = _run(["embed", *arguments, "--resume"], capsys)
    assert code == 0, err
    resumed, expected = pd.read_parquet(output), pd.read_parquet(reference)
    pd.testing.assert_frame_equal(resumed.drop(columns="embedding"), expected.drop(columns="embedding"))
    np.testing.assert_array_equal(_vectors(resumed), _vectors(expected))
    assert sorted(p.name for p in output.parent.iterdir()) == ["embeddings.parquet"]  # no temporary, no work folder


def test_packed_equals_padded_for_astromer2(astromer2, curve_folder, tmp_path, capsys):
    packed, padded = tmp_path / "packed.parquet", tmp_path / "padded.parquet"
    assert _run(["embed", curve_folder, "-o", packed, "-q", "--model", astromer2, "--batch-size", "4"], capsys)[0] == 0
    assert _run(["embed", curve_folder, "-o", padded, "-q", "--model", astromer2, "--padded"], capsys)[0] == 0
    a, b = pd.read_parquet(packed), pd.read_parquet(padded)
    assert list(a["id"]) == list(b["id"]) and list(a["n_windows"]) == list(b["n_windows"])
    np.testing.assert_allclose(_vectors(a), _vectors(b), atol=1e-5, rtol=0)
    assert '"batch_layout": "packed"' in pq.read_schema(packed).metadata[b"astromer"].decode()


def test_two_processes_equal_one(astromer2, curve_folder, tmp_path, capsys):
    single = tmp_path / "single.parquet"
    assert _run(["embed", curve_folder, "-o", single, "-q", "--model", astromer2, "--chunk-size", "2"], capsys)[0] == 0
    output = tmp_path / "sharded"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         "-m", "astromer_app", "embed", str(curve_folder), "-o", str(output), "-q", "--model", str(astromer2),
         "--chunk-size", "2"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shards = sorted(p.name for p in output.iterdir())
    assert {name[:10] for name in shards} == {"part-00000", "part-00001"} and all(n.endswith(".parquet") for n in shards)
    loaded = datasets.load_dataset("parquet", data_dir=str(output), split="train", cache_dir=str(tmp_path / "cache"))
    union = loaded.to_pandas().sort_values("id").reset_index(drop=True)
    expected = pd.read_parquet(single).sort_values("id").reset_index(drop=True)
    assert list(union["id"]) == list(expected["id"])
    assert list(union["n_observations"]) == list(expected["n_observations"])
    np.testing.assert_allclose(_vectors(union), _vectors(expected), atol=1e-6, rtol=0)
    meta, vectors = read_embeddings(output)
    assert sorted(meta["id"]) == sorted(expected["id"]) and vectors.shape == (7, 256)


def test_a_non_finite_embedding_is_never_written(bundled, curve_folder, tmp_path, capsys, monkeypatch):
    real = WindowEmbedder.embed_windows

    def one_nan_window(self, magnitudes, times, lengths):
        windows = real(self, magnitudes, times, lengths)
        windows[lengths == 12] = np.nan  # the window of star_0, the only curve of 12 observations
        return windows

    monkeypatch.setattr(WindowEmbedder, "embed_windows", one_nan_window)
    output = tmp_path / "embeddings.parquet"
    assert _run(["embed", curve_folder, "-o", output, "-q", "--on-error", "skip"], capsys)[0] == 0
    table = pd.read_parquet(output)
    assert "star_0" not in set(table["id"]) and len(table) == 6 and np.isfinite(_vectors(table)).all()
    errors = pd.read_csv(tmp_path / "embeddings.errors.csv")
    assert errors[["curve_id", "field"]].values.tolist() == [["star_0", "embedding"]]
    code, err = _run(["embed", curve_folder, "-o", tmp_path / "fail.parquet", "-q"], capsys)
    assert code == 1 and "light curve 'star_0': the embedding is not finite" in err
    assert not (tmp_path / "fail.parquet").exists()


def test_resume_refuses_other_options(bundled, curve_folder, tmp_path, capsys):
    output = tmp_path / "embeddings.parquet"
    work = tmp_path / ".embeddings.parquet.partial"
    work.mkdir()
    (work / ".astromer-run.json").write_text('{"pooling": "mean"}')
    code, err = _run(["embed", curve_folder, "-o", output, "-q", "--resume"], capsys)
    assert code == 1 and "--resume: the interrupted run" in err and "pooling: 'mean' then, 'skip' now" in err
    assert work.is_dir() and not output.exists()
