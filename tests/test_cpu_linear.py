"""oneDNN linear layers (astromer_kernels.cpu_linear): autocast numerics, gradients, and a model swap that changes
nothing but speed."""

import pytest
import torch
from torch import nn

from astromer_kernels.cpu_linear import (
    OneDnnLinear,
    _blocked_weight,
    onednn_linear,
    onednn_linear_available,
    use_onednn_linears,
)
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction, AstromerMaskingCollator

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="this PyTorch build has no oneDNN (mkldnn)")
BF16 = torch.bfloat16


def _bf16_rounded(*shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator).to(BF16).to(torch.float64) for shape in shapes]


def _reference(x, weight, bias, activation):
    output = x @ weight.T + bias
    return torch.tanh(output) if activation == "tanh" else output


def _autocast_linear(x, weight, bias, activation):
    with torch.autocast("cpu", dtype=BF16):
        output = nn.functional.linear(x, weight, bias)
        return torch.tanh(output) if activation == "tanh" else output


@pytest.mark.parametrize("activation", ["none", "tanh"])
def test_forward_and_gradients_match_float64_as_well_as_autocast(activation):
    """On bf16-exact inputs the reference is exact in fp64; ours must be as close to it as autocast's F.linear."""
    x64, w64, b64, grad64 = _bf16_rounded((3, 70, 96), (48, 96), (48,), (3, 70, 48))
    expected = _reference(x64.requires_grad_(), w64.requires_grad_(), b64.requires_grad_(), activation)
    expected.backward(grad64)
    results = {}
    for name, fn in (("onednn", onednn_linear), ("autocast", _autocast_linear)):
        x, w, b = (t.detach().float().requires_grad_() for t in (x64, w64, b64))
        out = fn(x, w, b, activation)
        out.backward(grad64.to(out.dtype))
        assert out.dtype == BF16 and out.shape == (3, 70, 48)
        assert w.grad.dtype == torch.float32 and b.grad.shape == (48,)
        results[name] = [(mine.double() - ref).abs().max().item() / ref.abs().max().item()
                         for mine, ref in ((out, expected), (x.grad, x64.grad), (w.grad, w64.grad), (b.grad, b64.grad))]
    for ours, autocast in zip(results["onednn"], results["autocast"]):
        assert ours <= 1.5 * autocast + 1e-3, results
        assert ours < 2e-2, results


def test_bf16_inputs_without_autocast_take_the_onednn_path_and_fp32_stays_exact():
    torch.manual_seed(0)
    layer = nn.Linear(32, 16)
    reference = nn.Linear(32, 16)
    reference.load_state_dict(layer.state_dict())
    assert use_onednn_linears(nn.Sequential(layer)) == 1 and isinstance(layer, OneDnnLinear)
    x = torch.randn(5, 32)
    assert torch.equal(layer(x), reference(x))  # fp32: plain nn.Linear
    x16 = x.to(BF16)
    ours, eager = layer.to(BF16)(x16), reference.to(BF16)(x16)
    assert ours.dtype == BF16
    torch.testing.assert_close(ours, eager, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("rows", [1, 77, 51200])
def test_reordered_weight_gives_bitwise_the_plain_weight_s_output(rows):
    generator = torch.Generator().manual_seed(rows)
    x, weight, bias = (torch.randn(*shape, generator=generator).to(BF16) for shape in ((rows, 256), (512, 256), (512,)))
    for activation in ("none", "tanh"):
        plain = torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "")
        reordered = torch.ops.mkldnn._linear_pointwise(x, _blocked_weight(weight, rows), bias, activation, [], "")
        assert torch.equal(plain, reordered), activation


def test_invalid_arguments_are_named():
    x, w, b = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6)
    with pytest.raises(ValueError, match="activation must be one of"):
        onednn_linear(x, w, b, "gelu")
    with pytest.raises(ValueError, match=r"x \(\.\.\., 8\).*got x \(4, 7\)"):
        onednn_linear(torch.randn(4, 7), w, b)
    with pytest.raises(ValueError, match="bias"):
        onednn_linear(x, w, torch.randn(5))
    with pytest.raises(ValueError, match="runs on the CPU"):
        onednn_linear(x.to("meta"), w, b)


def _batch(n=6, length=40, seed=1):
    generator = torch.Generator().manual_seed(seed)
    windows = []
    for _ in range(n):
        t = torch.cumsum(torch.rand(length, generator=generator, dtype=torch.float64) * 2, 0)
        m = 0.3 * torch.sin(t / 5) + 0.05 * torch.randn(length, generator=generator, dtype=torch.float64)
        windows.append({"magnitudes": (m - m.mean()).numpy(), "times": (t - t.mean()).numpy(),
                        "errors": (0.02 + 0.05 * torch.rand(length, generator=generator)).numpy()})
    return AstromerMaskingCollator(seed=seed)(windows)


def _model(swap: bool):
    torch.manual_seed(0)
    config = AstromerConfig.astromer2(num_hidden_layers=2, hidden_dropout_prob=0.0)
    model = AstromerForMaskedReconstruction(config)
    model.set_attn_implementation("sdpa")
    return model, (use_onednn_linears(model) if swap else 0)


def test_model_swap_keeps_parameters_and_state_dict():
    model, _ = _model(False)
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    swapped = use_onednn_linears(model)
    assert swapped == 2 * 8  # q, k, v, o, two residual projections, fc_in, fc_out per block
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, (pointer, value) in before.items():
        assert after[key].data_ptr() == pointer and torch.equal(after[key], value), key
    for layer in model.astromer.layers:
        assert layer.ffn.fc_in.activation == "tanh" and isinstance(layer.ffn.activation, nn.Identity)
        assert layer.ffn.fc_out.activation == "none"
    assert use_onednn_linears(model) == 0  # idempotent: nothing left to swap, tanh not fused twice


def test_only_the_astromer_feed_forward_tanh_is_fused():
    class Other(nn.Module):  # same attribute names, different computation: must keep its tanh
        def __init__(self):
            super().__init__()
            self.fc_in, self.activation = nn.Linear(8, 8), nn.Tanh()

        def forward(self, x):
            return self.activation(x) + self.fc_in(x)

    other = Other()
    x = torch.randn(3, 8)
    expected = other(x)
    assert use_onednn_linears(other) == 1
    assert isinstance(other.activation, nn.Tanh) and other.fc_in.activation == "none"
    assert torch.equal(other(x), expected)


def test_swapped_model_fp32_is_bitwise_the_model_and_bf16_is_as_accurate_as_autocast():
    batch = _batch()
    plain, _ = _model(False)
    swapped, count = _model(True)
    assert count == 16
    with torch.no_grad():
        fp32 = plain(**batch)
        assert torch.equal(swapped(**batch).reconstruction, fp32.reconstruction)
    outputs, grads = {}, {}
    for name, model, precision in (("fp32", plain, None), ("autocast", plain, BF16), ("onednn", swapped, BF16)):
        model.zero_grad()
        with torch.autocast("cpu", dtype=BF16, enabled=precision is not None):
            out = model(**batch)
        out.loss.backward()
        outputs[name] = out
        grads[name] = [p.grad.clone() for p in model.parameters()]
    mask = batch["attention_mask"].bool()

    def error(name):
        return (outputs[name].reconstruction.float() - fp32.reconstruction)[mask].abs().max().item()

    assert error("onednn") <= 2 * error("autocast") + 1e-3
    assert abs(outputs["onednn"].loss.item() - fp32.loss.item()) < 1e-2
    scale = max(g.abs().max().item() for g in grads["fp32"])
    names = [name for name, _ in plain.named_parameters()]
    for name, exact, autocast, ours in zip(names, grads["fp32"], grads["autocast"], grads["onednn"]):
        autocast_error = (autocast - exact).abs().max().item()
        assert (ours - exact).abs().max().item() <= 2 * autocast_error + 1e-3 * scale, name


def test_swapped_model_saves_plain_files(tmp_path):
    swapped, _ = _model(True)
    swapped.save_pretrained(tmp_path)
    reloaded = AstromerForMaskedReconstruction.from_pretrained(tmp_path)
    assert not any(isinstance(m, OneDnnLinear) for m in reloaded.modules())
    for key, value in swapped.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
