"""Tests of `AstromerMaskingCollator`: the official probing counts, class invariants, reference masks and weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_astromer.feature_extraction_astromer import AstromerFeatureExtractor
from modeling_astromer.masking import AstromerMaskingCollator, probing_counts
from modeling_astromer.modeling_astromer import compute_loss_weights

W = 200


def random_windows(rng: np.random.Generator, lengths: list[int]) -> list[dict[str, np.ndarray]]:
    """Unpadded per-window features: distinct magnitudes (so a replaced value is always detectable)."""
    windows = []
    for n in lengths:
        mags = rng.permutation(np.linspace(-1.0, 1.0, n)).astype(np.float32) + np.float32(rng.normal())
        windows.append(
            {
                "magnitudes": mags,
                "times": np.sort(rng.uniform(-500, 500, n)).astype(np.float32),
                "errors": rng.uniform(0.01, 0.9, n).astype(np.float32),
            }
        )
    return windows


def classes(batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boolean `(B, W)` (real, masked, random, same) recovered from a collated batch."""
    real = batch["attention_mask"].numpy().astype(bool)
    probed = batch["loss_mask"].numpy().astype(bool)
    masked = batch["mask_positions"].numpy().astype(bool)
    changed = batch["magnitudes"].numpy() != batch["labels"].numpy()
    random = probed & ~masked & changed
    same = probed & ~masked & ~changed
    return real, masked, random, same


@pytest.mark.parametrize(
    "n, expected", [(200, (100, 64, 20, 16)), (147, (73, 46, 15, 12)), (45, (22, 13, 5, 4))]
)
def test_official_counts(n: int, expected: tuple[int, int, int, int]) -> None:
    n_p, n_s, n_r = (int(v[0]) for v in probing_counts(np.array([n]), 0.5, 0.2, 0.2))
    # the closed form n_p = ⌊L·p⌋, n_s = ⌈n_p·s⌉, n_r = ⌈(n_p − n_s)·r⌉, in exact arithmetic
    assert n_p == math.floor(n * 0.5) and n_s == math.ceil(n_p * 0.2) and n_r == math.ceil((n_p - n_s) * 0.2)
    assert (n_p, n_p - n_s - n_r, n_s, n_r) == expected
    batch = AstromerMaskingCollator(seed=0)(random_windows(np.random.default_rng(n), [n] * 8))
    _, masked, random, same = classes(batch)
    # magnitudes are distinct, but a shuffle may map a position onto itself: then "random" looks like "same"
    assert np.all(batch["loss_mask"].numpy().sum(1) == expected[0])
    assert np.all(masked.sum(1) == expected[1])
    assert np.all(random.sum(1) + same.sum(1) == expected[2] + expected[3])
    assert np.all(random.sum(1) <= expected[3]) and np.all(random.sum(1) >= expected[3] - 3)


def test_counts_match_reference_masks(reference_dir: Path) -> None:
    ref = np.load(reference_dir / "astromer2_tf_random.npz")
    raw = np.load(reference_dir / "astromer1_macho_a0.npz")
    real = np.arange(W)[None, :] < ref["n_obs"][:, None]
    batch = AstromerMaskingCollator(seed=1)(
        {"magnitudes": ref["target"], "times": ref["times"], "errors": raw["raw_err"], "attention_mask": real}
    )
    np.testing.assert_array_equal(batch["attention_mask"].numpy().astype(bool), real)
    ref_probed = (ref["pt_mask_out"] * real).sum(1)
    ref_masked = (ref["pt_mask_in"] * real).sum(1)
    np.testing.assert_array_equal(batch["loss_mask"].numpy().sum(1), ref_probed)
    np.testing.assert_array_equal(batch["mask_positions"].numpy().sum(1), ref_masked)
    assert ref["pt_mask_out"][~real].sum() == 0 and batch["loss_mask"].numpy()[~real].sum() == 0
    # random + same per window equal the reference's visible probed positions
    ref_visible_probed = (ref["pt_mask_out"] * (1 - ref["pt_mask_in"]) * real).sum(1)
    _, _, random, same = classes(batch)
    np.testing.assert_array_equal(random.sum(1) + same.sum(1), ref_visible_probed)
    np.testing.assert_array_equal(
        batch["labels"].numpy(), np.where(real, ref["target"], 0.0).astype(np.float32)
    )


def test_loss_weights_match_reference(reference_dir: Path) -> None:
    """`compute_loss_weights` and the collator against the official `w_error` (from `raw_err`)."""
    ref = np.load(reference_dir / "astromer2_tf_random.npz")
    raw = np.load(reference_dir / "astromer1_macho_a0.npz")
    real = (np.arange(W)[None, :] < ref["n_obs"][:, None]).astype(np.int64)
    weights = compute_loss_weights(torch.from_numpy(raw["raw_err"]), torch.from_numpy(real))
    np.testing.assert_allclose(weights.numpy(), ref["w_error"], rtol=0, atol=1e-6)
    batch = AstromerMaskingCollator(seed=2)(
        {"magnitudes": ref["target"], "times": ref["times"], "errors": raw["raw_err"], "attention_mask": real}
    )
    assert batch["loss_weights"].dtype == torch.float32
    np.testing.assert_allclose(batch["loss_weights"].numpy(), ref["w_error"], rtol=0, atol=1e-6)


def test_loss_weights_float64_formula() -> None:
    """Independent float64 evaluation of the official weights w = (u − min u) / (max u − min u) + 1e-3 with u = 1/σ
    over the window padded to W, padding σ = the window mean, incl. the constant-σ case (w = 1e-3)."""
    rng = np.random.default_rng(3)
    windows = random_windows(rng, [200, 57, 5])
    windows[2]["errors"] = np.full(5, 0.2, dtype=np.float32)
    batch = AstromerMaskingCollator(seed=3)(windows)
    for b, window in enumerate(windows):
        sigma = np.full(W, window["errors"].astype(np.float64).mean())
        sigma[: len(window["errors"])] = window["errors"]
        u = 1.0 / sigma
        span = u.max() - u.min()
        expected = ((u - u.min()) / span if span > 0 else np.zeros(W)) + 1e-3
        np.testing.assert_allclose(batch["loss_weights"][b].numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(batch["loss_weights"][2].numpy(), 1e-3, rtol=1e-6)


def test_invariants_and_random_values_from_same_window() -> None:
    rng = np.random.default_rng(4)
    lengths = [int(n) for n in rng.integers(5, 201, size=64)]
    windows = random_windows(rng, lengths)
    batch = AstromerMaskingCollator(seed=4)(windows)
    assert set(batch) == {
        "magnitudes",
        "labels",
        "times",
        "errors",
        "attention_mask",
        "mask_positions",
        "loss_mask",
        "loss_weights",
    }
    for key in ("magnitudes", "labels", "times", "errors", "loss_mask", "loss_weights"):
        assert batch[key].dtype == torch.float32 and batch[key].shape == (64, W), key
    for key in ("attention_mask", "mask_positions"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (64, W), key
    real, masked, random, same = classes(batch)
    probed = batch["loss_mask"].numpy().astype(bool)
    assert not np.any(probed & ~real), "probed ⊆ real"
    assert not np.any(masked & random) and not np.any(masked & same) and not np.any(random & same)
    np.testing.assert_array_equal(masked | random | same, probed)
    for b, window in enumerate(windows):
        n = lengths[b]
        np.testing.assert_array_equal(batch["labels"][b, :n].numpy(), window["magnitudes"])
        np.testing.assert_array_equal(batch["times"][b, :n].numpy(), window["times"])
        np.testing.assert_array_equal(batch["errors"][b, :n].numpy(), window["errors"])
        inputs = batch["magnitudes"][b].numpy()
        assert np.all(np.isin(inputs[random[b]], window["magnitudes"])), "random values come from this window"
        np.testing.assert_array_equal(
            inputs[~random[b]][: n - random[b].sum()], window["magnitudes"][~random[b, :n]]
        )
        for key in ("magnitudes", "labels", "times", "errors"):
            assert np.all(batch[key][b, n:].numpy() == 0.0)
        n_p, n_s, n_r = (int(v[0]) for v in probing_counts(np.array([n]), 0.5, 0.2, 0.2))
        assert probed[b].sum() == n_p and masked[b].sum() == n_p - n_s - n_r


def test_probed_positions_are_uniform() -> None:
    """Each real position is probed with probability n_p / L (chi-square-free check on 4,000 draws)."""
    rng = np.random.default_rng(5)
    windows = random_windows(rng, [40]) * 4000
    batch = AstromerMaskingCollator(seed=5)(windows)
    frequency = batch["loss_mask"].numpy()[:, :40].mean(0)
    np.testing.assert_allclose(frequency, 0.5, atol=0.04)  # 5 sigma of a binomial(4000, 0.5)
    masked_frequency = batch["mask_positions"].numpy()[:, :40].mean(0)
    n_p, n_s, n_r = (int(v[0]) for v in probing_counts(np.array([40]), 0.5, 0.2, 0.2))
    assert (n_p, n_s, n_r) == (20, 4, 4)
    np.testing.assert_allclose(masked_frequency, (n_p - n_s - n_r) / 40, atol=0.04)


def test_seeded_reproducibility() -> None:
    windows = random_windows(np.random.default_rng(6), [200, 120, 33])
    first = AstromerMaskingCollator(seed=11)(windows)
    second = AstromerMaskingCollator(seed=11)(windows)
    other = AstromerMaskingCollator(seed=12)(windows)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    assert not torch.equal(first["mask_positions"], other["mask_positions"])
    torch.manual_seed(0)
    unseeded_a = AstromerMaskingCollator()(windows)
    torch.manual_seed(0)
    unseeded_b = AstromerMaskingCollator()(windows)
    torch.testing.assert_close(unseeded_a["mask_positions"], unseeded_b["mask_positions"], rtol=0, atol=0)


def test_input_forms_agree() -> None:
    """Unpadded lists, padded per-window dicts with attention_mask, tensors, and a BatchFeature give one batch."""
    rng = np.random.default_rng(7)
    curves = [
        np.stack([np.sort(rng.uniform(0, 900, n)), rng.normal(size=n), rng.uniform(0.05, 0.5, n)], 1)
        for n in (260, 90)
    ]
    features = AstromerFeatureExtractor()(curves)
    n_real = features["attention_mask"].sum(1)
    unpadded = [{k: features[k][i, : n_real[i]] for k in ("magnitudes", "times", "errors")} for i in range(3)]
    padded = [
        {k: features[k][i] for k in ("magnitudes", "times", "errors", "attention_mask")} for i in range(3)
    ]
    tensors = [{k: torch.from_numpy(v) for k, v in d.items()} for d in padded]
    reference = AstromerMaskingCollator(seed=8)(unpadded)
    features_pt = AstromerFeatureExtractor()(curves, return_tensors="pt")
    assert isinstance(features["magnitudes"], np.ndarray) and isinstance(
        features_pt["magnitudes"], torch.Tensor
    )
    for variant in (padded, tensors, features, features_pt):
        batch = AstromerMaskingCollator(seed=8)(variant)
        for key in reference:
            torch.testing.assert_close(batch[key], reference[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    "features, match",
    [
        ([{"magnitudes": [1.0, 2.0], "times": [0.0, 1.0]}], "missing 'errors'"),
        ([{"magnitudes": [1.0, 2.0], "times": [0.0], "errors": [0.1, 0.1]}], "lengths differ"),
        (
            [{"magnitudes": np.zeros(201), "times": np.zeros(201), "errors": np.ones(201)}],
            "more than window_size",
        ),
        ([{"magnitudes": [], "times": [], "errors": []}], "no observed positions"),
        ([{"magnitudes": [1.0, np.nan], "times": [0.0, 1.0], "errors": [0.1, 0.1]}], "non-finite"),
        ([{"magnitudes": ["a", "b"], "times": [0.0, 1.0], "errors": [0.1, 0.1]}], "real numbers"),
        ([], "no windows"),
        ({"magnitudes": np.zeros(5), "times": np.zeros(5), "errors": np.ones(5)}, r"padded \(B, T\)"),
    ],
)
def test_bad_features_raise(features: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AstromerMaskingCollator(seed=0)(features)


def test_wrong_container_types_raise_type_error() -> None:
    with pytest.raises(TypeError, match="list of per-window mappings"):
        AstromerMaskingCollator(seed=0)("magnitudes")
    with pytest.raises(TypeError, match="expected a mapping"):
        AstromerMaskingCollator(seed=0)([np.zeros(5)])


def test_bad_fractions_raise() -> None:
    with pytest.raises(ValueError, match="probed_fraction"):
        AstromerMaskingCollator(probed_fraction=1.5)


def test_dataloader_workers_get_distinct_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a seed, each DataLoader worker re-seeds from (seed, worker_id): copies do not repeat each other."""
    windows = random_windows(np.random.default_rng(9), [200] * 4)

    class WorkerInfo:
        def __init__(self, worker_id: int) -> None:
            self.id = worker_id

    def masks_in_worker(worker_id: int) -> torch.Tensor:
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: WorkerInfo(worker_id))
        return AstromerMaskingCollator(seed=21)(windows)["mask_positions"]

    worker0, worker1, worker0_again = masks_in_worker(0), masks_in_worker(1), masks_in_worker(0)
    assert not torch.equal(worker0, worker1)
    assert torch.equal(worker0, worker0_again)
