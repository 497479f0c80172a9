"""Parity with the official TensorFlow Astromer (`../shared/reference/`, see its README for conventions).

The checkpoints are converted with our TF-free converter and fed the stored inputs exactly as stored (times were
centred in float32 by TensorFlow; recomputing them would move them by up to 0.078 d). Tolerances are the reference
README's §7 table: they sit at least 2x above the measured TF-vs-TF noise floor and are never loosened here.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from astromer_app.convert import tf_state_dict
from astromer_app.tf_checkpoint import read_tf_checkpoint
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction
from modeling_astromer.modeling_astromer import compute_loss_weights, masked_mean

# (array, absolute tolerance) from the reference README §7
TOL_LAYER_FULL = 1e-3
TOL_A1_BLOCKS = 3e-3
TOL_A1_RECONSTRUCTION = 5e-4
TOL_A1_POOLED = 5e-4
TOL_A2_RECONSTRUCTION = 1e-4
TOL_A2_POOLED = 1e-4
TOL_SKIP = 5e-6
TOL_LOSS_REL = 1e-5
TOL_W_ERROR = 1e-6
TOL_ADAM_GRAD_REL = 1e-4
TOL_ADAM_POST = 1e-7

# checkpoint key of the watched Adam tensors -> (our parameter name, stored transposed?)
ADAM_WATCH = {
    "layer_with_weights-0/inp_transform/kernel": ("astromer.embeddings.magnitude_proj.weight", True),
    "layer_with_weights-0/enc_layers/0/mha/wq/bias": ("astromer.layers.0.attention.q_proj.bias", False),
    "layer_with_weights-0/enc_layers/5/layernorm2/gamma": ("astromer.layers.5.output_norm.weight", False),
    "layer_with_weights-1/bn_0/gamma": ("reconstruction_head.norm.weight", False),
    "layer_with_weights-1/reg_layer/kernel": ("reconstruction_head.proj.weight", True),
    "layer_with_weights-1/reg_layer/bias": ("reconstruction_head.proj.bias", False),
}


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _load(checkpoint_dir: Path, **config_overrides) -> AstromerForMaskedReconstruction:
    config, state = tf_state_dict(read_tf_checkpoint(checkpoint_dir))
    if config_overrides:
        config = AstromerConfig(**{**config.to_diff_dict(), **config_overrides})
    model = AstromerForMaskedReconstruction(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    assert set(missing) <= {"astromer.embeddings.mask_token"}
    return model.eval()


def _max_abs(actual: torch.Tensor, expected: np.ndarray, where: torch.Tensor | None = None) -> float:
    diff = (actual.detach().double() - _tensor(expected).double()).abs()
    if where is not None:
        diff = diff[where]
    return float(diff.max())


@pytest.fixture(scope="module")
def a2(reference_dir):
    data = dict(np.load(reference_dir / "astromer2_tf_random.npz"))
    return _load(reference_dir / "astromer2_tf_random"), data


@pytest.fixture(scope="module")
def a1(reference_dir):
    data = dict(np.load(reference_dir / "astromer1_macho_a0.npz"))
    return _load(reference_dir / "astromer1_macho_a0"), data


def _observed(data) -> torch.Tensor:
    return _tensor(1 - data["inf_mask_in"] if "inf_mask_in" in data else 1 - data["mask_in"]).long()


# ----------------------------------------------------------------------------------------------- Astromer 1
def test_a1_converted_weights_reproduce_every_layer(a1):
    model, data = a1
    assert model.config.attention_bias_mode == "a1_query_key_bias"
    assert sum(p.numel() for p in model.parameters()) == 661_505
    observed = _observed(data)
    with torch.no_grad():
        out = model(_tensor(data["input"]), _tensor(data["times"]), observed, output_hidden_states=True)
        z0 = model.astromer.embeddings(_tensor(data["input"]), _tensor(data["times"]))
    real = observed.bool()
    assert _max_abs(out.reconstruction, data["reconstruction"], real) < TOL_A1_RECONSTRUCTION

    layers = [z0, *out.hidden_states[1:]]
    pooled = torch.stack([masked_mean(z, observed) for z in layers], dim=1)
    assert _max_abs(pooled, data["pooled_layers"]) < TOL_A1_POOLED

    rows = torch.as_tensor(data["full_rows"]).long()
    assert _max_abs(z0[rows], data["full_input_embedding"]) < TOL_LAYER_FULL
    pe = model.astromer.embeddings.time_encoding(_tensor(data["times"])[rows])
    assert _max_abs(pe, data["pe"]) < TOL_LAYER_FULL
    blocks = torch.stack([h[rows] for h in out.hidden_states[1:]], dim=1)
    assert _max_abs(blocks, data["full_block_outputs"]) < TOL_A1_BLOCKS


def test_a1_depends_on_padding_and_refuses_packing(a1):
    """A1's +1 term attends to padding keys: the same window without its padding gives different outputs."""
    model, data = a1
    row, n_obs = 41, int(data["n_obs"][41])
    magnitudes, times = _tensor(data["input"][row : row + 1]), _tensor(data["times"][row : row + 1])
    with torch.no_grad():
        padded = model(magnitudes, times, _observed(data)[row : row + 1]).reconstruction[0, :n_obs]
        unpadded = model(magnitudes[:, :n_obs], times[:, :n_obs]).reconstruction[0]
    assert float((padded - unpadded).abs().max()) > 1e-3
    cu_seqlens = torch.tensor([0, n_obs], dtype=torch.int32)
    with pytest.raises(ValueError, match="Astromer 1"):
        model(magnitudes[:, :n_obs], times[:, :n_obs], cu_seqlens=cu_seqlens)


# ----------------------------------------------------------------------------------------------- Astromer 2
def test_a2_inference_outputs(a2):
    model, data = a2
    assert sum(p.numel() for p in model.parameters()) == 3_953_409
    assert not model.config.use_mask_token
    observed = _observed(data)
    with torch.no_grad():
        out = model(
            _tensor(data["inf_input"]),
            _tensor(data["times"]),
            observed,
            labels=_tensor(data["target"]),
            loss_mask=_tensor(data["inf_mask_out"]),
            loss_weights=_tensor(data["w_error"]),
            output_hidden_states=True,
        )
        z0 = model.astromer.embeddings(_tensor(data["inf_input"]), _tensor(data["times"]))
    assert _max_abs(out.reconstruction, data["inf_reconstruction"], observed.bool()) < TOL_A2_RECONSTRUCTION
    assert len(out.hidden_states) == 7
    layers = [z0, *out.hidden_states[1:]]
    pooled = torch.stack([masked_mean(z, observed) for z in layers], dim=1)
    assert _max_abs(pooled, data["inf_pooled_layers"]) < TOL_A2_POOLED
    # row 41 (147 observations) in full, padding included: our padded layout equals TF's
    row = int(data["full_row"])
    assert _max_abs(torch.stack([z[row] for z in layers]), data["inf_full_layers"]) < TOL_LAYER_FULL
    assert float(out.loss) == pytest.approx(float(data["inf_loss_weighted"]), rel=TOL_LOSS_REL)
    assert float(out.r2) == pytest.approx(float(data["inf_r2"]), rel=TOL_LOSS_REL)
    with torch.no_grad():
        unweighted = model(
            _tensor(data["inf_input"]), _tensor(data["times"]), observed, labels=_tensor(data["target"]),
            loss_mask=_tensor(data["inf_mask_out"]),
        ).loss
    assert float(unweighted) == pytest.approx(float(data["inf_loss_unweighted"]), rel=TOL_LOSS_REL)


def test_a2_pretraining_forward_and_official_loss(a2):
    model, data = a2
    observed = _observed(data)
    masked = _tensor(data["pt_mask_in"]).long() * observed
    with torch.no_grad():
        out = model(
            _tensor(data["pt_input"]),
            _tensor(data["times"]),
            observed,
            mask_positions=masked,
            labels=_tensor(data["target"]),
            loss_mask=_tensor(data["pt_mask_out"]),
            loss_weights=_tensor(data["w_error"]),
            output_hidden_states=True,
        )
    assert _max_abs(out.reconstruction, data["pt_reconstruction"], observed.bool()) < TOL_A2_RECONSTRUCTION
    assert _max_abs(out.last_hidden_state[int(data["full_row"])], data["pt_last_block_row"]) < TOL_LAYER_FULL
    z0 = model.astromer.embeddings(_tensor(data["pt_input"]), _tensor(data["times"]))
    pooled = torch.stack([masked_mean(z, observed) for z in [z0, *out.hidden_states[1:]]], dim=1)
    assert _max_abs(pooled, data["pt_pooled_layers"]) < TOL_A2_POOLED
    assert float(out.loss) == pytest.approx(float(data["pt_loss_weighted"]), rel=TOL_LOSS_REL)
    assert float(out.r2) == pytest.approx(float(data["pt_r2"]), rel=TOL_LOSS_REL)


def test_a2_loss_weights_from_errors(a2, reference_dir):
    """`w_error` was computed from the A1 file's `raw_err` (padding sigma = window-mean error)."""
    _, data = a2
    raw = np.load(reference_dir / "astromer1_macho_a0.npz")
    observed = _observed(data)
    weights = compute_loss_weights(_tensor(raw["raw_err"]), observed)
    assert _max_abs(weights, data["w_error"]) < TOL_W_ERROR


def test_a2_skip_embedding(a2):
    model, data = a2
    with torch.no_grad():
        embedding = model.astromer.embed(
            _tensor(data["inf_input"]), _tensor(data["times"]), _observed(data), pooling="skip",
            layer_logits=_tensor(data["gamma_raw"]),
        )
    assert _max_abs(embedding, data["skip_embedding"]) < TOL_SKIP


def test_a2_intended_mask_token_variant(a2, reference_dir):
    """With `use_mask_token=True` and the stored token value, the model reproduces TF's AddMSKToken by hand."""
    _, data = a2
    model = _load(reference_dir / "astromer2_tf_random", use_mask_token=True)
    with torch.no_grad():
        model.astromer.embeddings.mask_token.fill_(float(data["msk_token_value"]))
    observed = _observed(data)
    masked = _tensor(data["pt_mask_in"]).long() * observed
    with torch.no_grad():
        out = model(
            _tensor(data["pt_input"]), _tensor(data["times"]), observed, mask_positions=masked,
            labels=_tensor(data["target"]), loss_mask=_tensor(data["pt_mask_out"]),
            loss_weights=_tensor(data["w_error"]),
        )
        # inference batch with the token: only padding is replaced, so real positions equal the token-free model
        inference = model(
            _tensor(data["inf_input"]), _tensor(data["times"]), observed,
            mask_positions=torch.zeros_like(observed),
        )
    real = observed.bool()
    assert _max_abs(out.reconstruction, data["pttok_reconstruction"], real) < TOL_A2_RECONSTRUCTION
    assert _max_abs(masked_mean(out.last_hidden_state, observed), data["pttok_pooled_last_block"]) < TOL_A2_POOLED
    assert float(out.loss) == pytest.approx(float(data["pttok_loss_weighted"]), rel=TOL_LOSS_REL)
    assert _max_abs(inference.reconstruction, data["inftok_reconstruction"]) < TOL_A2_RECONSTRUCTION
    # the substituted input: the token at masked and padded positions
    hidden = ~observed.bool() | masked.bool()
    substituted = torch.where(hidden, model.astromer.embeddings.mask_token.detach(), _tensor(data["pt_input"]))
    assert _max_abs(substituted, data["pttok_input_after_token"]) < 1e-7


def test_a2_one_adam_step(a2, reference_dir):
    """One official `disttrain.train_step`: weighted loss, gradients and the Adam(1e-5, 0.9, 0.98, 1e-9) update."""
    model = _load(reference_dir / "astromer2_tf_random")
    _, data = a2
    model.train()  # dropout is 0.0 in this config, as in the reference
    observed = _observed(data)
    batch = dict(
        magnitudes=_tensor(data["pt_input"]),
        times=_tensor(data["times"]),
        attention_mask=observed,
        mask_positions=_tensor(data["pt_mask_in"]).long() * observed,
        labels=_tensor(data["target"]),
        loss_mask=_tensor(data["pt_mask_out"]),
        loss_weights=_tensor(data["w_error"]),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=float(data["adam_lr"]), betas=(0.9, 0.98), eps=1e-9)
    loss = model(**batch).loss
    assert float(loss.detach()) == pytest.approx(float(data["adam_loss_before"]), rel=TOL_LOSS_REL)
    loss.backward()
    params = dict(model.named_parameters())
    keys = [str(k) for k in data["adam_watch_ckpt_keys"]]
    for i, key in enumerate(keys):
        name, transposed = ADAM_WATCH[key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")]
        param = params[name]
        as_tf = (lambda t: t.T) if transposed else (lambda t: t)
        assert _max_abs(as_tf(param.detach()), data[f"adam_pre_{i}"]) == 0.0
        grad = as_tf(param.grad).reshape(data[f"adam_grad_{i}"].shape)
        scale = float(np.abs(data[f"adam_grad_{i}"]).max())
        assert _max_abs(grad, data[f"adam_grad_{i}"]) / scale < TOL_ADAM_GRAD_REL, key
    optimizer.step()
    for i, key in enumerate(keys):
        name, transposed = ADAM_WATCH[key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")]
        value = params[name].detach().T if transposed else params[name].detach()
        assert _max_abs(value.reshape(data[f"adam_post_{i}"].shape), data[f"adam_post_{i}"]) < TOL_ADAM_POST, key
    with torch.no_grad():
        after = model(**batch).loss
    assert float(after) == pytest.approx(float(data["adam_loss_after"]), rel=TOL_LOSS_REL)


def test_a2_sdpa_and_eager_agree_on_reference(a2):
    model, data = a2
    observed = _observed(data)
    inputs = (_tensor(data["inf_input"]), _tensor(data["times"]), observed)
    with torch.no_grad():
        sdpa = model(*inputs).reconstruction
        model.set_attn_implementation("eager")
        try:
            eager = model(*inputs).reconstruction
        finally:
            model.set_attn_implementation("sdpa")
    assert float((sdpa - eager)[observed.bool()].abs().max()) < 1e-5
