"""oneDNN linear layers for CPU bf16: the bias and the tanh are applied inside the GEMM.

Under CPU autocast, ``nn.Linear`` with a bias runs as ``addmm``: PyTorch first writes the broadcast bias into the
output and then accumulates the GEMM onto it, and the feed-forward tanh is another full pass over a bf16 tensor.
oneDNN's linear primitive adds the bias and applies the activation to the fp32 accumulator before the one bf16
store. :func:`use_onednn_linears` swaps a model's ``nn.Linear`` modules for :class:`OneDnnLinear` (same parameters,
same state dict) and moves the feed-forward tanh into ``fc_in``.

The numerics are autocast's: inputs, weights and bias rounded to bf16, fp32 accumulation, bf16 output. The tanh is
taken before the bf16 rounding instead of after it, one rounding fewer than eager autocast. The backward uses plain
bf16 GEMMs, like autocast's. In fp32, or off the CPU, :class:`OneDnnLinear` is ``nn.Linear``.

Measured with ``python train/benchmarks/throughput.py`` (rows ``astromer_blocked`` and ``astromer_blocked+onednn``,
bf16, 2-core AMD EPYC Zen 4): see ``train/benchmarks/results/cpu_throughput.log``.
"""

from __future__ import annotations

import torch
from torch import nn

#: Activations fused into the GEMM, with the backward written here; others stay a separate module.
FUSED_ACTIVATIONS = ("none", "tanh")


def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's fused linear operator (x86 and aarch64 CPU wheels do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _blocked_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` ``(N, K)`` reordered into the oneDNN layout chosen for ``rows`` input rows (an opaque oneDNN tensor),
    or ``weight`` itself where this PyTorch cannot reorder. The GEMM's result is bitwise the same; on a 2-core Zen 4
    the (51200 x 256) GEMMs of Astromer 2 ran 2-4 % faster with it, reordering included (round-robin, 15 rounds)."""
    reorder = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    return weight if reorder is None else reorder(weight, rows)


class _OneDnnLinearFunction(torch.autograd.Function):
    """bf16 ``x`` ``(..., K)``, ``weight`` ``(N, K)``, ``bias`` ``(N,)`` -> ``activation(x @ weight.T + bias)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation: str):
        output = torch.ops.mkldnn._linear_pointwise(x, _blocked_weight(weight, x.numel() // weight.shape[1]), bias,
                                                    activation, [], "")
        ctx.activation = activation
        ctx.save_for_backward(x, weight, output if activation == "tanh" else None)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, output = ctx.saved_tensors
        if ctx.activation == "tanh":
            grad_output = torch.ops.aten.tanh_backward(grad_output, output)
        grad_rows = grad_output.reshape(-1, weight.shape[0])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad_rows, weight).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(grad_rows.t(), x.reshape(-1, weight.shape[1]))
        if ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias, None


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """``activation(x @ weight.T + bias)`` in bf16 on the CPU through oneDNN, differentiable in all three tensors.

    Args:
        x: ``(..., K)`` floating point; rounded to bf16.
        weight: ``(N, K)``; bias: ``(N,)``; rounded to bf16 (gradients flow back to their own dtype).
        activation: one of :data:`FUSED_ACTIVATIONS`.

    Returns:
        ``(..., N)`` bf16.
    """
    if activation not in FUSED_ACTIVATIONS:
        raise ValueError(f"activation must be one of {FUSED_ACTIVATIONS}, got {activation!r}")
    if x.device.type != "cpu":
        raise ValueError(f"onednn_linear runs on the CPU; x is on {x.device}")
    if x.shape[-1] != weight.shape[1] or bias.shape != (weight.shape[0],):
        raise ValueError(f"x (..., {weight.shape[1]}), weight (N, K) and bias (N,) expected; got x "
                         f"{tuple(x.shape)}, weight {tuple(weight.shape)}, bias {tuple(bias.shape)}")
    bf16 = torch.bfloat16
    with torch.autocast("cpu", enabled=False):
        return _OneDnnLinearFunction.apply(x.to(bf16).contiguous(), weight.to(bf16), bias.to(bf16), activation)


class OneDnnLinear(nn.Linear):
    """``nn.Linear`` (plus an optional fused activation) whose CPU bf16 forward runs through :func:`onednn_linear`.

    The oneDNN path is taken on the CPU when bf16 autocast is on or the input is bf16; otherwise this is
    ``activation(nn.Linear.forward(x))``.
    """

    activation: str = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(..., in_features)` -> `(..., out_features)`."""
        if self.bias is not None and x.device.type == "cpu" and (
            x.dtype == torch.bfloat16
            or (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        ):
            return onednn_linear(x, self.weight, self.bias, self.activation)
        output = super().forward(x)
        return torch.tanh(output) if self.activation == "tanh" else output

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", activation={self.activation}" if self.activation != "none" else "")


def use_onednn_linears(model: nn.Module) -> int:
    """Turn ``model``'s ``nn.Linear`` modules (with a bias, more than one input and output feature) into
    :class:`OneDnnLinear`, in place, and move the tanh of each ``AstromerFeedForward`` (``fc_out(tanh(fc_in(h)))``)
    into its ``fc_in``; other modules keep their activations. Parameters, buffers and the state dict are unchanged, so an optimizer made before
    or after works, and ``save_pretrained`` writes the same files.

    Returns:
        The number of linear layers swapped (0 when :func:`onednn_linear_available` is false).
    """
    if not onednn_linear_available():
        return 0
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.bias is not None and min(module.in_features, module.out_features) > 1:
            module.__class__ = OneDnnLinear
            swapped += 1
    for module in model.modules():
        # by name: a model loaded with trust_remote_code has its own copy of the class
        if type(module).__name__ != "AstromerFeedForward":
            continue
        if isinstance(module.fc_in, OneDnnLinear) and module.fc_in.activation == "none" and isinstance(
            module.activation, nn.Tanh
        ):
            module.fc_in.activation = "tanh"
            module.activation = nn.Identity()
    return swapped
