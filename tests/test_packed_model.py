"""The packed (varlen) model path: packing collator, and the whole Astromer 2 model packed vs padded.

Packed runs use ``attn_implementation="astromer_varlen"`` (the Triton kernel, under the interpreter on CPU); padded
runs use ``sdpa``. Outputs at real positions, the loss and every parameter gradient must agree within fp32 tolerance.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from curve_factories import synthetic_windows

import modeling_astromer  # noqa: F401  (registers astromer_varlen)
from astromer_kernels.attention import ops
from modeling_astromer import (
    AstromerConfig,
    AstromerForMaskedReconstruction,
    AstromerForSequenceClassification,
    AstromerMaskingCollator,
    AstromerModel,
)
from modeling_astromer.packing import AstromerPackingCollator, token_budget_batches
from modeling_astromer.pipeline_astromer import packed_inference_inputs, packed_token_bucket

needs_kernel = pytest.mark.skipif(not ops.kernel_available(torch.device("cpu"), torch.float32)
                                  and not torch.cuda.is_available(), reason="Triton kernel backend not available")


def sdss_windows(shared_dir, n_curves=4, band="r"):
    """Real SDSS Stripe 82 RR Lyrae curves: first window of up to 200 clean points, centred in float64."""
    files = sorted((shared_dir / "data" / "sdss_rrlyrae" / "light-curves").glob("*.csv"))[:n_curves]
    if not files:
        pytest.skip("no SDSS light curves in the shared folder")
    windows = []
    for path in files:
        frame = pd.read_csv(path)
        frame = frame[(frame["band"] == band) & (frame["magerr"] > 0) & (frame["magerr"] < 1)].sort_values("time")
        frame = frame.iloc[:200]
        t, m = frame["time"].to_numpy(np.float64), frame["mag"].to_numpy(np.float64)
        windows.append({"magnitudes": torch.from_numpy(m - m.mean()).float(),
                        "times": torch.from_numpy(t - t.mean()).float(),
                        "errors": torch.tensor(frame["magerr"].to_numpy(np.float64), dtype=torch.float32)})
    return windows


def small_a2_config(**overrides):
    return AstromerConfig.astromer2(hidden_dropout_prob=0.0, **overrides)


def run_reconstruction(config, batch, implementation):
    config._attn_implementation = implementation
    torch.manual_seed(0)
    model = AstromerForMaskedReconstruction(config).eval()
    inputs = {k: v for k, v in batch.items() if k not in ("sequence_index", "errors")}
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def unpack_to_padded(packed_values, cu_seqlens, width):
    """(1, T) -> (n, width) with zeros after each window."""
    cu = cu_seqlens.tolist()
    out = torch.zeros(len(cu) - 1, width, *packed_values.shape[2:], dtype=packed_values.dtype)
    for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        out[i, : b - a] = packed_values[0, a:b]
    return out


def assert_packed_equals_padded(windows, num_layers=6, packed_implementation="astromer_varlen"):
    padded = AstromerMaskingCollator(seed=3)(windows)
    packed = AstromerPackingCollator(max_seqlen=200)(padded)
    config = small_a2_config(num_hidden_layers=num_layers)
    out_pad, grads_pad = run_reconstruction(config, padded, "sdpa")
    out_pack, grads_pack = run_reconstruction(small_a2_config(num_hidden_layers=num_layers), packed,
                                              packed_implementation)
    real = padded["attention_mask"].bool()
    recon = unpack_to_padded(out_pack.reconstruction, packed["cu_seqlens"], real.shape[1])
    torch.testing.assert_close(recon[real], out_pad.reconstruction[real], atol=2e-5, rtol=1e-4)
    hidden = unpack_to_padded(out_pack.last_hidden_state, packed["cu_seqlens"], real.shape[1])
    torch.testing.assert_close(hidden[real], out_pad.last_hidden_state[real], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out_pack.loss, out_pad.loss, atol=1e-6, rtol=1e-5)
    assert grads_pad.keys() == grads_pack.keys() and len(grads_pad) > 0
    for name in grads_pad:
        torch.testing.assert_close(grads_pack[name], grads_pad[name], atol=1e-6, rtol=2e-4, msg=lambda m, n=name: f"{n}: {m}")


# ------------------------------------------------------------------------------------------------- collator
def test_collator_list_and_padded_inputs_agree():
    windows = synthetic_windows([5, 200, 37])
    from_list = AstromerPackingCollator(max_seqlen=200)(windows)
    padded = AstromerMaskingCollator(probed_fraction=0.0, seed=0)(windows)
    from_padded = AstromerPackingCollator(max_seqlen=200)(padded)
    assert from_list["cu_seqlens"].tolist() == [0, 5, 205, 242]
    assert from_list["cu_seqlens"].dtype == torch.int32
    assert from_list["magnitudes"].shape == (1, 242)
    assert from_list["sequence_index"].tolist() == [0, 1, 2]
    for key in ("magnitudes", "times", "errors"):
        torch.testing.assert_close(from_list[key], from_padded[key])
    assert from_padded["attention_mask"].sum() == 242


def test_collator_budget_padding_gives_static_shapes():
    collator = AstromerPackingCollator(max_tokens=1000, max_seqlen=200, pad_to_budget=True, max_sequences=12)
    for lengths in ([5, 200, 37], [200, 200, 199, 3]):
        batch = collator(synthetic_windows(lengths))
        assert batch["magnitudes"].shape == (1, 1000)
        assert batch["cu_seqlens"].shape == (13,)
        cu = batch["cu_seqlens"]
        assert int(cu[-1]) == 1000 and int((cu[1:] - cu[:-1]).max()) <= 200
        n = len(lengths)
        assert batch["sequence_index"][:n].tolist() == list(range(n))
        assert (batch["sequence_index"][n:] == -1).all()
        assert batch["attention_mask"][0, : sum(lengths)].all() and not batch["attention_mask"][0, sum(lengths):].any()


def test_collator_keeps_per_window_labels_and_fills_fillers():
    windows = synthetic_windows([10, 20])
    for i, w in enumerate(windows):
        w["labels"] = i + 3
    batch = AstromerPackingCollator(max_tokens=64, max_seqlen=32, pad_to_budget=True, max_sequences=5)(windows)
    assert batch["labels"].tolist() == [3, 4, -100, -100, -100]
    assert batch["cu_seqlens"].tolist() == [0, 10, 30, 62, 64, 64]


@pytest.mark.parametrize(
    "lengths, kwargs, message",
    [
        ([300], {}, "more than max_seqlen"),
        ([100, 100], dict(max_tokens=150), "more than max_tokens"),
        ([0, 10], {}, "window 0 has no observations"),
        ([100, 100, 100], dict(max_tokens=300, pad_to_budget=True, max_sequences=2), "max_sequences=2"),
    ],
)
def test_collator_errors_are_specific(lengths, kwargs, message):
    with pytest.raises(ValueError, match=message):
        AstromerPackingCollator(max_seqlen=200, **kwargs)(synthetic_windows(lengths))


def test_collator_rejects_mismatched_token_field():
    windows = synthetic_windows([10, 12])
    windows[1]["times"] = windows[1]["times"][:-1]
    with pytest.raises(ValueError, match="window 1: field 'times' has 11 entries"):
        AstromerPackingCollator()(windows)


def test_token_budget_batches():
    assert token_budget_batches([100, 100, 50, 200, 10], 250) == [[0, 1, 2], [3, 4]]
    assert token_budget_batches([10, 10, 10], 100, max_sequences=2) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="window 1 has 300"):
        token_budget_batches([10, 300], 250)


# ------------------------------------------------------------------------------------------------- model
@needs_kernel
@pytest.mark.slow
def test_a2_packed_equals_padded_random_windows():
    assert_packed_equals_padded(synthetic_windows([200, 37, 90, 5], seed=1))


@needs_kernel
@pytest.mark.slow
def test_a2_packed_equals_padded_real_sdss_curves(shared_dir):
    assert_packed_equals_padded(sdss_windows(shared_dir), num_layers=2)


def test_a2_packed_blocked_equals_padded_sdpa():
    """``astromer_blocked`` on packed tokens needs no Triton: length-sorted groups of GEMM attention."""
    assert_packed_equals_padded(synthetic_windows([200, 37, 90, 5, 1, 64], seed=4), num_layers=2,
                                packed_implementation="astromer_blocked")


@pytest.mark.parametrize("implementation", [
    pytest.param("astromer_varlen", marks=needs_kernel),
    "astromer_blocked",
])
def test_implementation_equals_sdpa_on_padded_batch(implementation):
    padded = AstromerMaskingCollator(seed=1)(synthetic_windows([60, 17, 33], seed=2))
    inputs = {k: v for k, v in padded.items() if k != "errors"}
    results = {}
    for name in ("sdpa", implementation):
        results[name] = run_reconstruction(small_a2_config(num_hidden_layers=2), inputs, name)
    (out_sdpa, grads_sdpa), (out, grads) = results["sdpa"], results[implementation]
    real = padded["attention_mask"].bool()
    # every position (padding included) gets the same output as sdpa, as in TF
    torch.testing.assert_close(out.last_hidden_state, out_sdpa.last_hidden_state, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.loss, out_sdpa.loss, atol=1e-6, rtol=1e-5)
    assert grads.keys() == grads_sdpa.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(grads[name], grads_sdpa[name], atol=1e-6, rtol=2e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert real.sum() < real.numel()  # the batch really was padded


def test_blocked_bf16_autocast_error_is_no_worse_than_sdpa():
    """Under bf16 autocast the blocked path rounds scores and probabilities to bf16 (as eager does); its error
    against fp32 must stay within twice that of sdpa's bf16 run on the same batch."""
    padded = AstromerMaskingCollator(seed=2)(synthetic_windows([200, 120, 200, 45], seed=6))
    inputs = {k: v for k, v in padded.items() if k != "errors"}
    real = padded["attention_mask"].bool()
    config = small_a2_config(num_hidden_layers=6)
    torch.manual_seed(0)
    model = AstromerForMaskedReconstruction(config).eval()
    with torch.no_grad():
        reference = model(**inputs)
        errors = {}
        for implementation in ("sdpa", "astromer_blocked"):
            model.set_attn_implementation(implementation)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(**inputs)
            errors[implementation] = (
                float((out.reconstruction.float() - reference.reconstruction)[real].abs().max()),
                abs(float(out.loss) - float(reference.loss)),
            )
    recon_sdpa, loss_sdpa = errors["sdpa"]
    recon_blocked, loss_blocked = errors["astromer_blocked"]
    assert 0 < recon_blocked <= max(2 * recon_sdpa, 1e-2), errors
    assert loss_blocked <= max(2 * loss_sdpa, 2e-3), errors


@needs_kernel
def test_classification_packed_equals_padded_in_input_order():
    windows = synthetic_windows([40, 9, 25], seed=5)
    labels = [2, 0, 1]
    for w, y in zip(windows, labels):
        w["labels"] = y
    packed = AstromerPackingCollator(max_tokens=128, max_seqlen=64, pad_to_budget=True, max_sequences=6)(windows)
    padded_batch = AstromerMaskingCollator(probed_fraction=0.0, seed=0)(
        [{k: v for k, v in w.items() if k != "labels"} for w in windows])
    outputs = {}
    for implementation, batch in (("sdpa", None), ("astromer_varlen", packed)):
        config = small_a2_config(num_hidden_layers=2, num_labels=3)
        config._attn_implementation = implementation
        torch.manual_seed(0)
        model = AstromerForSequenceClassification(config).eval()
        if batch is None:
            out = model(magnitudes=padded_batch["magnitudes"], times=padded_batch["times"],
                        attention_mask=padded_batch["attention_mask"])
            outputs[implementation] = out.logits
        else:
            out = model(magnitudes=packed["magnitudes"], times=packed["times"],
                        attention_mask=packed["attention_mask"], cu_seqlens=packed["cu_seqlens"],
                        max_seqlen=packed["max_seqlen"])
            order = packed["sequence_index"]
            logits = torch.empty(len(windows), out.logits.shape[-1])
            logits[order[order >= 0]] = out.logits[order >= 0]
            outputs[implementation] = logits
    torch.testing.assert_close(outputs["astromer_varlen"], outputs["sdpa"], atol=2e-5, rtol=1e-4)


def test_astromer1_refuses_packed_inputs():
    config = AstromerConfig.astromer1()
    model = AstromerForMaskedReconstruction(config).eval()
    batch = AstromerPackingCollator(max_seqlen=200)(synthetic_windows([12, 7]))
    with pytest.raises(ValueError, match="Astromer 1 .*cannot run on packed sequences"):
        model(magnitudes=batch["magnitudes"], times=batch["times"], cu_seqlens=batch["cu_seqlens"],
              max_seqlen=batch["max_seqlen"])


@needs_kernel
def test_token_budget_fillers_do_not_change_loss_or_r2():
    """Filler sequences of a fixed token budget (static shapes) are not windows: loss and R² equal the padded ones."""
    windows = synthetic_windows([150, 37, 90, 5], seed=3)
    padded = AstromerMaskingCollator(seed=1)(windows)
    packed = AstromerPackingCollator(max_tokens=400, max_seqlen=200, pad_to_budget=True, max_sequences=8)(padded)
    assert int((packed["sequence_index"] < 0).sum()) > 0  # the budget really added filler sequences
    torch.manual_seed(0)
    model = AstromerForMaskedReconstruction(small_a2_config(num_hidden_layers=2)).eval()
    with torch.no_grad():
        reference = model(**{k: v for k, v in padded.items() if k != "errors"})
        model.set_attn_implementation("astromer_varlen")
        result = model(**{k: v for k, v in packed.items() if k not in ("errors", "sequence_index")})
    assert float(result.loss) == pytest.approx(float(reference.loss), rel=1e-5)
    assert float(result.r2) == pytest.approx(float(reference.r2), rel=1e-5)


def test_packed_token_bucket_is_a_short_ladder_that_never_cuts():
    """Inference batches on a CPU are padded to few token counts (bounded per-shape state), never truncated, and
    by at most 15 % once a batch holds 1,000 tokens."""
    counts = np.arange(1, 40_001)
    buckets = np.array([packed_token_bucket(int(n)) for n in counts])
    assert (buckets >= counts).all() and (buckets % 64 == 0).all()
    assert (buckets[999:] / counts[999:]).max() <= 1.15
    assert len(set(buckets.tolist())) <= 70


@pytest.mark.parametrize("implementation", ["astromer_blocked", "eager"])
def test_filler_windows_do_not_change_the_real_windows_embeddings(implementation):
    """The all-zero filler windows that bring a packed batch to its bucket attend only among themselves: the real
    windows' embeddings equal those of the unpadded packed batch."""
    torch.manual_seed(0)
    model = AstromerModel(AstromerConfig.astromer2(num_hidden_layers=2, attn_implementation=implementation)).eval()
    lengths = torch.tensor([200, 37, 5, 120, 61])
    magnitudes, times = torch.randn(int(lengths.sum())), torch.randn(int(lengths.sum())).cumsum(0) / 10
    results = []
    for bucket in (False, True):
        inputs = packed_inference_inputs(magnitudes, times, lengths, bucket=bucket)
        assert inputs["magnitudes"].shape[1] == (packed_token_bucket(423) if bucket else 423)
        assert int(inputs["cu_seqlens"][-1]) == inputs["magnitudes"].shape[1] and inputs["max_seqlen"] == 200
        with torch.no_grad():
            results.append(model.embed(pooling="skip", **inputs)[: len(lengths)])
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)
