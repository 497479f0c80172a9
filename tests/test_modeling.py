"""Model behaviour that does not need the TensorFlow references: attention back-ends, padding, masks, heads, I/O."""

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from modeling_astromer import (
    AstromerConfig,
    AstromerForMaskedReconstruction,
    AstromerForSequenceClassification,
    AstromerModel,
)
from modeling_astromer.modeling_astromer import compute_loss_weights, masked_rmse_loss

WINDOW = 200


def _batch(lengths, seed=0, window=WINDOW):
    """Centred random light-curve windows padded to `window`: magnitudes, times, attention_mask `(B, window)`."""
    generator = torch.Generator().manual_seed(seed)
    magnitudes = torch.zeros(len(lengths), window)
    times = torch.zeros(len(lengths), window)
    mask = torch.zeros(len(lengths), window, dtype=torch.long)
    for row, n in enumerate(lengths):
        t = torch.cumsum(torch.rand(n, generator=generator, dtype=torch.float64) * 5 + 0.1, 0)
        m = 0.3 * torch.sin(t / 3.7) + 0.05 * torch.randn(n, generator=generator, dtype=torch.float64)
        times[row, :n] = (t - t.mean()).float()
        magnitudes[row, :n] = (m - m.mean()).float()
        mask[row, :n] = 1
    return magnitudes, times, mask


@pytest.fixture(scope="module")
def small_config():
    return AstromerConfig.astromer2(num_hidden_layers=2, hidden_dropout_prob=0.1)


@pytest.fixture(scope="module")
def model(small_config):
    torch.manual_seed(0)
    return AstromerForMaskedReconstruction(small_config).eval()


def test_released_architecture_parameter_counts():
    assert AstromerModel(AstromerConfig.astromer2()).num_parameters() == 3_953_409 - 769  # minus LayerNorm(256) + Dense(256->1)
    assert AstromerForMaskedReconstruction(AstromerConfig.astromer2()).num_parameters() == 3_953_409
    assert AstromerForMaskedReconstruction(AstromerConfig.astromer2(use_mask_token=True)).num_parameters() == 3_953_410
    assert AstromerForMaskedReconstruction(AstromerConfig.astromer1()).num_parameters() == 661_505


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=250), "multiple of num_attention_heads"),
        (dict(attention_bias_mode="Q"), "attention_bias_mode"),
        (dict(attention_bias_mode="a1_query_key_bias", use_mask_token=True), "MASK token"),
        (dict(random_fraction=0.7, same_fraction=0.5), "random_fraction \\+ same_fraction"),
        (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
        (dict(classifier_pooling="cls"), "classifier_pooling"),
        (dict(mask_bias=5.0), "mask_bias must be negative"),
    ],
)
def test_config_rejects_impossible_combinations(overrides, message):
    with pytest.raises(Exception, match=message):
        AstromerConfig(**overrides)


def test_config_round_trip(tmp_path):
    config = AstromerConfig.astromer2(use_mask_token=True, num_labels=5)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, AstromerConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()


def test_eager_and_sdpa_agree_on_padded_batch(model):
    magnitudes, times, mask = _batch([200, 137, 5, 64])
    with torch.no_grad():
        sdpa = model(magnitudes, times, mask, output_hidden_states=True)
        model.set_attn_implementation("eager")
        try:
            eager = model(magnitudes, times, mask, output_hidden_states=True, output_attentions=True)
        finally:
            model.set_attn_implementation("sdpa")
    real = mask.bool()
    assert float((sdpa.reconstruction - eager.reconstruction)[real].abs().max()) < 1e-5
    for a, b in zip(sdpa.hidden_states, eager.hidden_states):
        assert float((a - b)[real].abs().max()) < 1e-4
    # padding keys get exactly zero attention
    probabilities = eager.attentions[0]
    assert float(probabilities[1, :, :, 137:].abs().max()) == 0.0


def test_padded_light_curve_equals_it_alone(model):
    magnitudes, times, mask = _batch([200, 90, 33])
    with torch.no_grad():
        batched = model(magnitudes, times, mask).reconstruction
        for row, n in enumerate([200, 90, 33]):
            alone = model(magnitudes[row : row + 1, :n], times[row : row + 1, :n]).reconstruction[0]
            assert float((alone - batched[row, :n]).abs().max()) < 1e-5


def test_hidden_states_and_tf_layout(model):
    magnitudes, times, mask = _batch([120, 200])
    with torch.no_grad():
        out = model(magnitudes, times, mask, output_hidden_states=True)
        tf_layout = model(magnitudes[..., None], times[..., None], mask[..., None]).reconstruction
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert torch.equal(tf_layout, out.reconstruction)
    assert out.reconstruction.shape == (2, WINDOW)


def test_masked_positions_are_hidden_keys_but_leak_to_their_own_query(small_config):
    """The released A2 (no token): a masked value reaches only its own output; with the token it reaches nothing."""
    torch.manual_seed(1)
    magnitudes, times, mask = _batch([150])
    masked = torch.zeros_like(mask)
    masked[0, 10] = 1
    changed = magnitudes.clone()
    changed[0, 10] += 3.0
    for use_token in (False, True):
        config = AstromerConfig(**{**small_config.to_diff_dict(), "use_mask_token": use_token})
        net = AstromerForMaskedReconstruction(config).eval()
        with torch.no_grad():
            if use_token:
                net.astromer.embeddings.mask_token.fill_(0.25)
            before = net(magnitudes, times, mask, mask_positions=masked).reconstruction
            after = net(changed, times, mask, mask_positions=masked).reconstruction
        others = torch.ones(WINDOW, dtype=torch.bool)
        others[10] = False
        assert float((before - after)[0, others].abs().max()) < 1e-6
        own_change = float((before - after)[0, 10].abs())
        assert (own_change == 0.0) if use_token else (own_change > 1e-3)


def test_loss_matches_definition_in_float64(model):
    """Weighted masked RMSE, against a direct float64 evaluation of the spec formula (empty window included)."""
    magnitudes, times, mask = _batch([200, 80, 40])
    labels = magnitudes + 0.1
    errors = torch.rand(3, WINDOW, generator=torch.Generator().manual_seed(3)) * 0.2 + 0.01
    loss_mask = (torch.rand(3, WINDOW, generator=torch.Generator().manual_seed(4)) < 0.5).float() * mask
    loss_mask[2] = 0.0  # a window without probed positions contributes 0 but still counts in the mean
    with torch.no_grad():
        out = model(magnitudes, times, mask, labels=labels, loss_mask=loss_mask, errors=errors)
    weights = compute_loss_weights(errors, mask).double()
    y, y_hat, m = labels.double(), out.reconstruction.double(), loss_mask.double()
    per_window = [
        float((m[b] * weights[b] * (y[b] - y_hat[b]) ** 2).sum() / m[b].sum()) if m[b].sum() > 0 else 0.0
        for b in range(3)
    ]
    assert float(out.loss) == pytest.approx(np.sqrt(np.mean(per_window)), rel=1e-5)
    residual = float((m * (y - y_hat) ** 2).sum())
    means = (m * y).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
    total = float((m * (y - means) ** 2).sum())
    assert float(out.r2) == pytest.approx(1 - residual / total, rel=1e-5)
    assert float(masked_rmse_loss(y_hat, y, m)) == pytest.approx(
        np.sqrt(np.mean([float((m[b] * (y[b] - y_hat[b]) ** 2).sum() / m[b].sum()) if m[b].sum() else 0.0 for b in range(3)])),
        rel=1e-9,
    )


def test_loss_under_bf16_autocast_is_float32_against_unrounded_targets(model):
    """Under bf16 autocast the reconstruction is bf16, but the loss and R² use fp32 targets and fp32 arithmetic."""
    magnitudes, times, mask = _batch([200, 120], seed=5)
    labels = magnitudes + 0.1234567  # not representable in bf16
    loss_mask = mask.float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(magnitudes, times, mask, labels=labels, loss_mask=loss_mask)
    assert out.reconstruction.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and out.r2.dtype == torch.float32
    expected = masked_rmse_loss(out.reconstruction.double(), labels.double(), loss_mask.double(),
                                attention_mask=mask)
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-6)


def test_loss_weights_edge_cases():
    errors = torch.tensor([[0.1, 0.1, 0.1, 0.0], [0.1, 0.2, 0.4, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    weights = compute_loss_weights(errors, mask)
    assert torch.allclose(weights[0], torch.full((4,), 1e-3))  # constant sigma: 0/0 -> 0, plus 1e-3
    u = 1 / torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64)
    expected = (u - u.min()) / (u.max() - u.min()) + 1e-3
    assert torch.allclose(weights[1, :3].double(), expected, atol=1e-7)
    padding_u = 1 / (0.7 / 3)
    expected_padding = float((padding_u - u.min()) / (u.max() - u.min())) + 1e-3
    assert float(weights[1, 3]) == pytest.approx(expected_padding, rel=1e-6)


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda m, t, a: (m[:, :100], t, a), ValueError, "same shape"),
        (lambda m, t, a: (m.masked_fill(torch.arange(WINDOW) == 3, float("nan")), t, a), ValueError, "finite"),
        (lambda m, t, a: (m, t, torch.zeros_like(a)), ValueError, "no visible observation"),
        (lambda m, t, a: (m.long(), t, a), TypeError, "floating-point"),
        (lambda m, t, a: (m[None], t[None], a[None]), ValueError, "shape"),
    ],
)
def test_bad_model_inputs_raise_clear_errors(model, mutate, error, message):
    magnitudes, times, mask = _batch([150, 200])
    with pytest.raises(error, match=message):
        model(*mutate(magnitudes, times, mask))


def test_packed_dense_fallback_equals_padded(model):
    lengths = [200, 37, 129, 5]
    magnitudes, times, mask = _batch(lengths)
    real = mask.bool()
    cu_seqlens = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    with torch.no_grad():
        padded = model(magnitudes, times, mask, labels=magnitudes + 0.05).reconstruction
        packed = model(magnitudes[real][None], times[real][None], cu_seqlens=cu_seqlens, labels=magnitudes[real][None] + 0.05)
        padded_loss = model(magnitudes, times, mask, labels=magnitudes + 0.05).loss
    assert float((packed.reconstruction[0] - padded[real]).abs().max()) < 1e-5
    assert float(packed.loss) == pytest.approx(float(padded_loss), rel=1e-5)
    with torch.no_grad():
        for pooling in ("skip", "mean", "max"):
            a = model.astromer.embed(magnitudes, times, mask, pooling=pooling)
            b = model.astromer.embed(magnitudes[real][None], times[real][None], pooling=pooling, cu_seqlens=cu_seqlens)
            assert float((a - b).abs().max()) < 1e-5, pooling


def test_embedding_poolings(model):
    magnitudes, times, mask = _batch([200, 60])
    with torch.no_grad():
        out = model.astromer(magnitudes, times, mask, output_hidden_states=True)
        mean = model.astromer.embed(magnitudes, times, mask, pooling="mean")
        maximum = model.astromer.embed(magnitudes, times, mask, pooling="max")
        skip = model.astromer.embed(magnitudes, times, mask, pooling="skip")
    last = out.last_hidden_state
    assert torch.allclose(mean[1], last[1, :60].mean(0), atol=1e-6)
    assert torch.allclose(maximum[1], last[1, :60].amax(0))
    z0 = model.astromer.embeddings(magnitudes, times)
    layers = [z0, *out.hidden_states[1:]]
    expected = sum(z[1, :60].mean(0) for z in layers) / len(layers) ** 2  # uniform gamma, then the mean
    assert torch.allclose(skip[1], expected, atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        model.astromer.embed(magnitudes, times, mask, pooling="cls")


def test_skip_embedding_reuses_z0_only_when_it_is_clean(model):
    """`embed` takes Z_0 from hidden_states[0] (no MASK token, no dropout in eval): the same bits as recomputing it.
    With dropout active, the dropped-out hidden_states[0] must not be used: Z_0 is recomputed clean."""
    magnitudes, times, mask = _batch([200, 60, 7], seed=3)
    encoder = model.astromer
    with torch.no_grad():
        out = encoder(magnitudes, times, mask, output_hidden_states=True)
        reused = encoder.layer_means(out.hidden_states, magnitudes, times, mask, inputs_had_mask_positions=False)
        recomputed = encoder.layer_means(out.hidden_states, magnitudes, times, mask)
    assert torch.equal(reused, recomputed)
    clean_z0 = recomputed[:, 0]
    encoder.train()
    try:
        with torch.no_grad():
            torch.manual_seed(0)
            dropped = encoder(magnitudes, times, mask, output_hidden_states=True)
            means = encoder.layer_means(dropped.hidden_states, magnitudes, times, mask, inputs_had_mask_positions=False)
    finally:
        encoder.eval()
    assert not torch.equal(dropped.hidden_states[0], encoder.embeddings(magnitudes, times))  # dropout acted
    assert torch.equal(means[:, 0], clean_z0)


def test_classifier_frozen_encoder_and_loss(small_config):
    torch.manual_seed(2)
    config = AstromerConfig(**{**small_config.to_diff_dict(), "num_labels": 3})
    classifier = AstromerForSequenceClassification(config).train()
    assert not classifier.astromer.training  # frozen encoder runs without dropout
    assert all(not p.requires_grad for p in classifier.astromer.parameters())
    magnitudes, times, mask = _batch([200, 100, 50])
    labels = torch.tensor([0, 2, 1])
    out = classifier(magnitudes, times, mask, labels=labels)
    out.loss.backward()
    assert classifier.layer_logits.grad is not None and classifier.classifier.out_proj.weight.grad is not None
    assert out.logits.shape == (3, 3)
    expected = torch.nn.functional.cross_entropy(out.logits.detach(), labels)
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    with torch.no_grad():
        skip = classifier.astromer.embed(magnitudes, times, mask, pooling="skip", layer_logits=classifier.layer_logits)
    assert torch.allclose(skip, out.embeddings.detach(), atol=1e-6)
    classifier.freeze_encoder(False)
    assert classifier.astromer.training and all(p.requires_grad for p in classifier.astromer.parameters())


def test_save_load_round_trip_is_bit_exact(tmp_path, model):
    model.save_pretrained(tmp_path / "pt")
    loaded = AstromerForMaskedReconstruction.from_pretrained(tmp_path / "pt").eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    magnitudes, times, mask = _batch([200, 20])
    with torch.no_grad():
        assert torch.equal(model(magnitudes, times, mask).reconstruction, loaded(magnitudes, times, mask).reconstruction)
    base = AutoModel.from_pretrained(tmp_path / "pt")
    assert isinstance(base, AstromerModel)
    assert torch.equal(base.layers[0].attention.q_proj.weight, model.astromer.layers[0].attention.q_proj.weight)
    head = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pt", num_labels=4)
    assert isinstance(head, AstromerForSequenceClassification)
    assert torch.equal(head.astromer.layers[1].ffn.fc_out.bias, model.astromer.layers[1].ffn.fc_out.bias)
    assert torch.allclose(head.layer_logits, torch.full((3,), 1 / 3))


def test_gradient_checkpointing_gives_same_gradients(small_config):
    torch.manual_seed(5)
    config = AstromerConfig(**{**small_config.to_diff_dict(), "hidden_dropout_prob": 0.0})
    net = AstromerForMaskedReconstruction(config).train()
    magnitudes, times, mask = _batch([200, 70])
    net(magnitudes, times, mask, labels=magnitudes + 0.1).loss.backward()
    reference = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    net.activation_checkpointing_enable()
    net(magnitudes, times, mask, labels=magnitudes + 0.1).loss.backward()
    for name, param in net.named_parameters():
        assert torch.allclose(param.grad, reference[name], atol=1e-6), name
