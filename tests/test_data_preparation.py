"""The one implementation of cleaning, windowing, centring and padding
(``modeling_astromer.feature_extraction_astromer``) and its users: the feature extractor,
``astromer_train.data``, the masking and packing collators and ``hub_datasets``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import modeling_astromer.masking as masking_module
import modeling_astromer.packing as packing_module
from astromer_train.data import CleanedCurves, DeterministicMaskingCollator, PaddingCollator, WindowDataset
from hub_datasets.cleaning import CleaningOptions, SurveyCleaningCounts, clean_light_curve
from hub_datasets.raw_layouts import RawLightCurve
from hub_datasets.synthetic import generate_survey
from modeling_astromer import AstromerFeatureExtractor, AstromerMaskingCollator
from modeling_astromer.errors import LightCurveValidationError
from modeling_astromer.feature_extraction_astromer import (
    CleaningReport,
    centre_windows,
    clean_light_curves,
    pad_windows,
    padding_mask,
    window_rows,
    window_starts,
)
from modeling_astromer.masking import window_loss_weights
from modeling_astromer.modeling_astromer import compute_loss_weights
from modeling_astromer.packing import AstromerPackingCollator

REPO = Path(__file__).resolve().parents[1]
W = 200


def curve(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted float64 MJDs (full float64 precision), magnitudes, errors in (0, 1)."""
    return (
        48_800.0 + np.sort(rng.uniform(0.0, 2_800.0, length)),
        rng.normal(-5.0, 0.4, length),
        rng.uniform(0.01, 0.9, length),
    )


# -------------------------------------------------------------------------------------------------- windowing
def test_sequential_windows_are_the_official_pivots() -> None:
    curve_index, start = window_starts([45, 200, 400, 450, 5000], W)
    expected = {0: [0], 1: [0, 0], 2: [0, 200, 200], 3: [0, 200, 250], 4: [*range(0, 4801, 200), 4800]}
    for c, starts in expected.items():
        np.testing.assert_array_equal(start[curve_index == c], starts)
    assert curve_index.dtype == start.dtype == np.int64


def test_random_windows_reproduce_a_given_generator() -> None:
    """One window per curve; with a Generator the pivots are its `integers(0, max(0, L - W) + 1)` draw."""
    lengths = np.array([5, 199, 200, 201, 777, 1300])
    for seed in range(20):
        curve_index, start = window_starts(lengths, W, "random", np.random.default_rng([seed, 3]))
        np.testing.assert_array_equal(curve_index, np.arange(lengths.size))
        last_start = np.maximum(lengths - W, 0)
        expected = np.random.default_rng([seed, 3]).integers(0, last_start + 1, dtype=np.int64)
        np.testing.assert_array_equal(start, expected)
        assert np.all(start[lengths <= W] == 0) and np.all(start <= last_start)
        # an int seed is the generator default_rng(seed)
        from_int = window_starts(lengths, W, "random", seed)[1]
        from_generator = window_starts(lengths, W, "random", np.random.default_rng(seed))[1]
        np.testing.assert_array_equal(from_int, from_generator)


def test_random_window_of_one_curve_is_the_per_item_draw() -> None:
    """The WindowDataset rule: in epoch `e` curve `index` starts at
    default_rng([seed, e, index]).integers(0, L - W + 1), at 0 when L <= W."""
    for seed, epoch, index in [(0, 0, 0), (1, 2, 3), (7, 11, 999)]:
        for length in (1, 200, 201, 250, 1300):
            _, start = window_starts([length], W, "random", np.random.default_rng([seed, epoch, index]))
            rng = np.random.default_rng([seed, epoch, index])
            draw = rng.integers(0, length - W + 1) if length > W else 0
            assert int(start[0]) == int(draw)


def test_window_rows_gather_each_window() -> None:
    offsets = np.array([0, 5, 305, 555])  # curves of 5, 300 and 250 rows
    rows, lengths = window_rows(offsets, [0, 1, 1, 2], [0, 0, 100, 50], W)
    np.testing.assert_array_equal(lengths, [5, 200, 200, 200])
    np.testing.assert_array_equal(rows[:5], np.arange(5))
    np.testing.assert_array_equal(rows[5:205], 5 + np.arange(200))
    np.testing.assert_array_equal(rows[205:405], 105 + np.arange(200))
    np.testing.assert_array_equal(rows[405:], 355 + np.arange(200))


# --------------------------------------------------------------------------------------------------- centring
def test_centring_is_the_float64_mean_of_the_real_observations_then_cast() -> None:
    rng = np.random.default_rng(1)
    lengths = np.array([1, 7, 8, 129, 200, 57, 200])
    windows = [48_800.0 + rng.uniform(0, 2_800, n) for n in lengths]
    centred, means = centre_windows(np.concatenate(windows), lengths)
    assert centred.dtype == np.float32 and means.dtype == np.float64
    for i, values in enumerate(np.split(centred, np.cumsum(lengths)[:-1])):
        assert means[i] == windows[i].mean()  # bit for bit: numpy's float64 sum of exactly these values
        np.testing.assert_array_equal(values, (windows[i] - windows[i].mean()).astype(np.float32))
    # float64 matters: a float32 mean of MJDs is off by far more than float64 rounding
    float32_means = np.array([w.astype(np.float32).mean(dtype=np.float32) for w in windows])
    assert np.abs(float32_means - means).max() > 1e-4
    centred64, _ = centre_windows(np.concatenate(windows), lengths, dtype=np.float64)
    assert centred64.dtype == np.float64
    with pytest.raises(ValueError, match="empty window"):
        centre_windows(np.zeros(3), [3, 0])


def test_feature_extractor_offsets_do_not_depend_on_padding() -> None:
    rng = np.random.default_rng(2)
    curves = [np.stack(curve(rng, n), 1) for n in (5, 37, 150, 199, 450)]
    out = AstromerFeatureExtractor()(curves)
    n_real = out["attention_mask"].sum(1)
    for w in range(len(n_real)):
        raw = curves[out["light_curve_index"][w]][out["window_start"][w] : out["window_start"][w] + n_real[w]]
        assert out["time_offset"][w] == raw[:, 0].mean() and out["magnitude_offset"][w] == raw[:, 1].mean()


# ---------------------------------------------------------------------------------------------------- padding
def test_padding_right_and_left() -> None:
    values = np.arange(1, 7, dtype=np.float32)  # windows [1, 2, 3], [4] and [5, 6]
    lengths = np.array([3, 1, 2])
    right = pad_windows(values, lengths, 4)
    np.testing.assert_array_equal(right, [[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 0, 0]])
    assert right.dtype == np.float32
    left = pad_windows(values, lengths, 4, side="left", value=-1.5)
    np.testing.assert_array_equal(left, [[-1.5, 1, 2, 3], [-1.5, -1.5, -1.5, 4], [-1.5, -1.5, 5, 6]])
    np.testing.assert_array_equal(padding_mask(lengths, 4), right != 0)
    np.testing.assert_array_equal(padding_mask(lengths, 4, "left"), left != -1.5)
    assert pad_windows(np.arange(4, dtype=np.int64), [4], 4).dtype == np.int64
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 2\]"):
        pad_windows(values, lengths, 2)
    with pytest.raises(ValueError, match="6 values for windows of 5"):
        pad_windows(values, [3, 2], 4)
    with pytest.raises(ValueError, match="padding side"):
        padding_mask(lengths, 4, "top")


def test_feature_extractor_is_the_composition_of_the_shared_steps() -> None:
    rng = np.random.default_rng(3)
    curves = [curve(rng, n) for n in (8, 200, 333, 1000)]
    fe = AstromerFeatureExtractor(window_size=64, padding_side="left", padding_value=-2.0)
    out = fe([dict(zip(("time", "mag", "err"), c)) for c in curves], sampling="random", seed=11)
    cleaned = clean_light_curves(curves)
    curve_index, start = window_starts(cleaned.lengths, 64, "random", 11)
    rows, lengths = window_rows(cleaned.offsets, curve_index, start, 64)
    mags, mag_offset = centre_windows(cleaned.mag[rows], lengths)
    np.testing.assert_array_equal(out["magnitudes"], pad_windows(mags, lengths, 64, "left", -2.0))
    np.testing.assert_array_equal(out["magnitude_offset"], mag_offset)
    np.testing.assert_array_equal(out["attention_mask"], padding_mask(lengths, 64, "left"))
    np.testing.assert_array_equal(out["window_start"], start)


# --------------------------------------------------------------------------------------------------- cleaning
def test_cleaning_report_counts_every_dropped_row() -> None:
    time = np.arange(12.0)
    mag = np.ones(12)
    err = np.full(12, 0.1)
    time[0] = np.nan  # non-finite time (also a NaN magnitude: counted once, under time)
    mag[0] = np.nan
    mag[1] = np.inf
    err[2] = np.nan
    err[3] = 0.0
    err[4] = 1.0
    err[5] = -0.5
    time[6], time[7] = time[7], time[6]  # unsorted
    time[9] = time[8]  # repeated time
    cleaned = clean_light_curves([(time, mag, err)], ids=["x"])
    report = cleaned.report(0)
    assert report == CleaningReport(
        n_input=12, n_nonfinite_time=1, n_nonfinite_magnitude=1, n_nonfinite_error=1, n_error_out_of_range=3,
        n_duplicate_times=1, was_sorted=True, n_kept=6,
    )
    assert report.n_dropped == 6 and report.n_nonfinite == 3
    assert "1 non-finite time" in report.describe() and "3 error outside" in report.describe()
    np.testing.assert_array_equal(cleaned.time, [6.0, 7.0, 8.0, 8.0, 10.0, 11.0])
    assert cleaned.curve(0).report == report

    dropped = clean_light_curves([(time, mag, err)], duplicate_times="drop", min_error=0.05, max_error=0.2)
    assert dropped.report(0).n_duplicate_times_dropped == 1 and dropped.report(0).n_kept == 5
    kept = clean_light_curves([(time, mag, err)], unsorted="keep")
    np.testing.assert_array_equal(kept.time[:2], [7.0, 6.0])
    assert not kept.report(0).was_sorted
    unsorted = r"light curve 0 \(id 'x'\): times are not sorted"
    with pytest.raises(LightCurveValidationError, match=unsorted) as info:
        clean_light_curves([(time, mag, err)], unsorted="raise", ids=["x"])
    assert info.value.field == "time" and info.value.curve_id == "x"
    with pytest.raises(LightCurveValidationError, match="repeated time"):
        clean_light_curves([(time, mag, err)], duplicate_times="raise")
    with pytest.raises(LightCurveValidationError, match="lengths differ") as info:
        clean_light_curves([(time, mag, err), (time, mag[:3], err)])
    assert info.value.curve_index == 1 and info.value.field == "shape"


def test_cleaning_keeps_empty_and_short_curves_for_the_caller() -> None:
    empty = (np.zeros(0), np.zeros(0), np.zeros(0))
    cleaned = clean_light_curves([empty, (np.arange(3.0), np.ones(3), np.full(3, 2.0))])
    np.testing.assert_array_equal(cleaned.lengths, [0, 0])
    assert cleaned.report(1).n_error_out_of_range == 3
    np.testing.assert_array_equal(cleaned.offsets, [0, 0, 0])


def test_survey_counts_aggregate_the_per_curve_reports() -> None:
    rng = np.random.default_rng(4)
    time, mag, err = curve(rng, 40)
    time[3] = np.nan
    mag[4] = np.nan
    err[5:8] = 1.5
    raw = RawLightCurve("a", "RRab", time[::-1].copy(), mag[::-1].copy(), err[::-1].copy(), "R", "f row 2")
    counts = SurveyCleaningCounts()
    cleaned = clean_light_curve(raw, CleaningOptions(clip_quantiles=(0.1, 0.9)), counts)
    report = clean_light_curves([(raw.time, raw.mag, raw.err)]).report(0)
    assert counts.rows_read == 40 and counts.rows_dropped_nonfinite == report.n_nonfinite == 2
    assert counts.rows_dropped_err_range == report.n_error_out_of_range == 3
    assert counts.rows_kept == len(cleaned[0]) == report.n_kept - counts.rows_dropped_clip
    assert np.all(np.diff(cleaned[0]) > 0) and cleaned[1].dtype == np.float32
    # the builders keep the rows the feature extractor keeps (which refuses non-finite times up front)
    rows = np.delete(np.arange(40), 3)[::-1]
    fe_clean = AstromerFeatureExtractor().clean({"time": time[rows], "mag": mag[rows], "err": err[rows]})
    unclipped = clean_light_curve(raw, CleaningOptions(), SurveyCleaningCounts())
    np.testing.assert_array_equal(unclipped[0], fe_clean.time)
    np.testing.assert_array_equal(unclipped[1], fe_clean.mag.astype(np.float32))


def test_strict_survey_mode_names_the_origin() -> None:
    raw = RawLightCurve("a", None, np.array([2.0, 1.0]), np.ones(2), np.full(2, 0.1), None, "f.dat row 7")
    with pytest.raises(LightCurveValidationError, match="f.dat row 7: times not sorted at data row 1") as exc:
        clean_light_curve(raw, CleaningOptions(clean=False), SurveyCleaningCounts())
    assert exc.value.source == "f.dat row 7" and exc.value.field == "time" and exc.value.curve_id == "a"
    raw.time = np.array([1.0, np.nan])
    with pytest.raises(LightCurveValidationError, match="data row 1 has a non-finite value") as info:
        clean_light_curve(raw, CleaningOptions(clean=False), SurveyCleaningCounts())
    assert info.value.field == "time"


# -------------------------------------------------------------------------------- training data and collators
@pytest.fixture(scope="module")
def window_items() -> list[dict]:
    """WindowDataset items (random and sequential windows, many shorter than W) of a synthetic survey."""
    table = generate_survey(60, "macho", seed=5, bad_row_fraction=0.02)
    curves = CleanedCurves.from_table(table, AstromerFeatureExtractor(window_size=W), with_labels=True)
    random = WindowDataset(curves, "random", W, seed=5)
    sequential = WindowDataset(curves, "sequential", W, seed=5)
    items = [random[k] for k in range(0, 2 * len(random), 3)]
    return items + [sequential[k] for k in range(0, len(sequential), 2)]


def test_window_dataset_windows_are_the_feature_extractor_windows() -> None:
    table = generate_survey(20, "atlas", seed=6)
    fe = AstromerFeatureExtractor(window_size=64)
    curves = CleanedCurves.from_table(table, fe)
    windows = WindowDataset(curves, "sequential", 64)
    rows = table.with_format("numpy")
    out = fe([{"time": r["time"], "mag": r["mag"], "err": r["err"]} for r in rows])
    n_real = out["attention_mask"].sum(1)
    assert len(windows) == len(n_real)
    for i in range(len(windows)):
        item = windows[i]
        for key in ("magnitudes", "times", "errors"):
            np.testing.assert_array_equal(item[key], out[key][i, : n_real[i]])


def test_padding_collator_pads_with_the_shared_padder(window_items: list[dict]) -> None:
    batch = PaddingCollator(W)(window_items[:9])
    lengths = np.array([len(item["magnitudes"]) for item in window_items[:9]])
    np.testing.assert_array_equal(batch["attention_mask"].numpy(), padding_mask(lengths, W))
    times = np.concatenate([item["times"] for item in window_items[:9]])
    np.testing.assert_array_equal(batch["times"].numpy(), pad_windows(times, lengths, W))


def assert_batches_equal(left: dict, right: dict) -> None:
    assert list(left) == list(right)
    for key, value in left.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == right[key].dtype and value.shape == right[key].shape, key
            assert torch.equal(value, right[key]), key
        else:
            assert value == right[key], key


def test_packed_masking_equals_packing_the_padded_batch(window_items: list[dict]) -> None:
    padded_collate = DeterministicMaskingCollator(0.5, 0.2, 0.2, window_size=W, seed=9)
    packed_collate = DeterministicMaskingCollator(0.5, 0.2, 0.2, window_size=W, seed=9, packed=True)
    packer = AstromerPackingCollator(max_seqlen=W)
    degenerate = [dict(item) for item in window_items[:4]]
    degenerate[0]["errors"] = np.full_like(degenerate[0]["errors"], 0.07)  # constant σ
    degenerate[1]["errors"] = degenerate[1]["errors"].copy()
    degenerate[1]["errors"][:3] = 0.0  # zero σ
    lengths = [len(item["magnitudes"]) for item in window_items]
    assert min(lengths) < W and max(lengths) == W
    for batch in [window_items[i : i + 16] for i in range(0, len(window_items), 16)] + [degenerate]:
        packed = packed_collate(batch)
        assert_batches_equal(packed, packer(padded_collate(batch)))
        assert packed["magnitudes"].shape == (1, sum(len(item["magnitudes"]) for item in batch))
        assert packed["max_seqlen"] == W and packed["cu_seqlens"].dtype == torch.int32
        # and the same probing as the padded batch, position for position
        padded = padded_collate(batch)
        real = padded["attention_mask"].bool()
        for key in ("magnitudes", "labels", "mask_positions", "loss_mask", "loss_weights"):
            assert torch.equal(packed[key][0], padded[key][real]), key


def test_packed_masking_never_builds_a_padded_batch(
    window_items: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    shapes = []

    def recording(module):
        original = module.pad_windows

        def pad(*args, **kwargs):
            out = original(*args, **kwargs)
            shapes.append(out.shape)
            return out

        return pad

    for module in (masking_module, packing_module):
        monkeypatch.setattr(module, "pad_windows", recording(module))

    def refuse(*args, **kwargs):
        raise AssertionError("the packed path padded the batch")

    monkeypatch.setattr(AstromerMaskingCollator, "pad", refuse)
    monkeypatch.setattr(packing_module, "compute_loss_weights", refuse, raising=False)
    monkeypatch.setattr(masking_module, "compute_loss_weights", refuse)
    batch = window_items[:16]
    packed = DeterministicMaskingCollator(0.5, 0.2, 0.2, window_size=W, seed=1, packed=True)(batch)
    total = sum(len(item["magnitudes"]) for item in batch)
    assert packed["magnitudes"].shape == (1, total)
    assert shapes and all(shape == (1, total) for shape in shapes)  # only the packed stream itself


def test_window_loss_weights_equal_the_padded_official_weights() -> None:
    rng = np.random.default_rng(8)
    lengths = [200, 1, 2, 5, 57, 199, 200, 33, 33, 33, 33, 80]
    errors = [rng.uniform(0.01, 0.9, n) for n in lengths]
    errors[7][:] = 0.1  # constant: the padding mean decides the weights
    errors[8][:] = np.float32(0.07)
    errors[9][:5] = 0.0
    errors[10] = np.r_[-0.2, errors[10][1:]]
    errors[11] = 0.3 * (1 + rng.integers(0, 2, 80) * 1e-15)  # equal up to rounding
    flat = np.concatenate(errors)
    real = padding_mask(lengths, W)
    expected = compute_loss_weights(torch.from_numpy(pad_windows(flat, lengths, W)), torch.from_numpy(real))
    np.testing.assert_array_equal(window_loss_weights(flat, np.array(lengths), W), expected.numpy()[real])


# ------------------------------------------------------------------------------------ one implementation each
SOURCE_DIRS = ("modeling_astromer", "hub_datasets", "train", "astromer_app", "kernels")


def package_sources() -> dict[str, str]:
    return {
        str(path.relative_to(REPO)): path.read_text(encoding="utf-8")
        for folder in SOURCE_DIRS
        for path in sorted((REPO / folder).rglob("*.py"))
    }


def test_one_implementation_each() -> None:
    sources = package_sources()

    def defining(pattern: str) -> list[str]:
        return [name for name, text in sources.items() if re.search(pattern, text, flags=re.MULTILINE)]

    shared = "modeling_astromer/feature_extraction_astromer.py"
    for definition in (
        r"^def clean_light_curves\(",
        r"^class CleaningReport\b",
        r"^def window_starts\(",
        r"^def window_rows\(",
        r"^def centre_windows\(",
        r"^def pad_windows\(",
        r"^def padding_mask\(",
    ):
        assert defining(definition) == [shared], definition
    # the random pivot draw, the official sequential pivots and the float64 window mean live only there
    assert defining(r"\.integers\(0, last_start") == [shared]
    assert defining(r"lengths // int\(window_size\) \+ 1") == [shared]
    # an error filter written out, "(err > a) & (err < b)"
    error_filter = r"\(\s*[\w\[\]:, \"']*err\w*\]?\s*>\s*[\w.]+\s*\)\s*&\s*\(\s*[\w\[\]:, \"']*err"
    assert defining(error_filter) == [shared]
    # the old duplicates are gone
    assert not (REPO / "hub_datasets" / "bridge.py").exists()
    for old in (
        r"Bad" r"LightCurveError",  # hub_datasets' own error: LightCurveValidationError is the one
        r"class \w*CleaningReport\b(?<!class CleaningReport)",
        r"\bdef _stack\(",  # the masking collator's padder
        r"_BatchSeededMasking",
        r"def collate_windows\(",
        r"def window_starts\(\s*self",  # the feature extractor's own windowing method
        r"\(mag - mag\.mean\(\)\)",  # WindowDataset's own centring
        r"\(\s*[\w\[\]:, ]+\s*>\s*0\s*\)\s*&\s*\(\s*[\w\[\]:, ]+\s*<\s*1\s*\)",  # (x > 0) & (x < 1)
        r"default_rng\(\[self\.seed, epoch, index\]\)\.integers",  # WindowDataset's own pivot draw
        r"np\.zeros\(\(B, W\)",  # hand-made padded arrays
        r"np\.zeros\(\(len\(windows\), W\)",
    ):
        assert defining(old) == [], old
    tests = "\n".join(path.read_text(encoding="utf-8") for path in (REPO / "tests").glob("*.py"))
    assert "Bad" + "LightCurveError" not in tests
