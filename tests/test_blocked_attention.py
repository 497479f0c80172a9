"""Blocked GEMM attention (``astromer_blocked``, and the CPU fallback of ``varlen_attention``) vs float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, bidirectional_mask_function, sdpa_mask

import astromer_kernels.attention.blocked as blocked
from astromer_kernels.attention.blocked import blocked_attention, blocked_varlen_attention
from astromer_kernels.attention.reference import varlen_attention_reference
from astromer_kernels.hf_functions import astromer_blocked_attention_forward, key_only_mask
from astromer_kernels.registry import register_attention_implementations

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5),
       torch.float16: dict(atol=1e-2, rtol=1e-2), torch.bfloat16: dict(atol=6e-2, rtol=6e-2)}


def padded_problem(batch=5, heads=2, length=37, head_dim=16, mask="key", seed=0):
    gen = torch.Generator().manual_seed(seed)
    # (B, L, H, D) memory viewed as (B, H, L, D), the layout attention modules pass
    q, k, v = (torch.randn(batch, length, heads, head_dim, generator=gen, dtype=torch.float64).transpose(1, 2)
               for _ in range(3))
    hidden = torch.rand(batch, length, generator=gen) < 0.4
    hidden[:, 0] = False
    bias = None
    if mask == "key":
        bias = torch.zeros(batch, length, dtype=torch.float64).masked_fill(hidden, float("-inf"))
    elif mask == "finite":
        bias = torch.zeros(batch, length, dtype=torch.float64).masked_fill(hidden, -1e9)
    grad_out = torch.randn(batch, length, heads, head_dim, generator=gen, dtype=torch.float64)
    return q, k, v, bias, grad_out


def sdpa_fp64(q, k, v, bias, grad_out, scale=None):
    ins = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    mask = None if bias is None else bias.double()[:, None, None, :]
    out = F.scaled_dot_product_attention(*ins, attn_mask=mask, scale=scale).transpose(1, 2)
    return out.detach(), torch.autograd.grad(out, ins, grad_out.double())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mask", ["none", "key", "finite"])
def test_padded_forward_and_grads_match_fp64(dtype, mask):
    q, k, v, bias, grad_out = padded_problem(mask=mask)
    ins = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
    out = blocked_attention(*ins, key_bias=None if bias is None else bias.float(), windows_per_block=2)
    assert out.shape == (5, 37, 2, 16) and out.dtype == dtype
    grads = torch.autograd.grad(out, ins, grad_out.to(dtype))
    expected, expected_grads = sdpa_fp64(*(t.to(dtype) for t in (q, k, v)), bias, grad_out.to(dtype))
    torch.testing.assert_close(out.double(), expected, **TOL[dtype])
    for name, got, ref in zip("qkv", grads, expected_grads):
        torch.testing.assert_close(got.double(), ref, **TOL[dtype], msg=lambda m, n=name: f"d{n}: {m}")


def test_block_size_does_not_change_results():
    q, k, v, bias, grad_out = padded_problem(batch=7, mask="key", seed=3)
    ins = [t.float().requires_grad_(True) for t in (q, k, v)]
    results = []
    for block in (1, 3, 7, 100):
        out = blocked_attention(*ins, key_bias=bias.float(), softmax_scale=0.3, windows_per_block=block)
        results.append((out, *torch.autograd.grad(out, ins, grad_out.float())))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_hidden_keys_are_left_out_of_the_gemms_without_changing_the_result(dtype):
    """-inf keys are dropped per block (each window padded to the block's most visible keys); a block holding a
    window that sees every key runs in full. Outputs and gradients still match fp64 SDPA, hidden keys get exactly
    zero gradient."""
    q, k, v, bias, grad_out = padded_problem(batch=6, length=41, mask="key", seed=11)
    bias[2] = 0.0  # window 2 (block 1 with 2 windows a block) sees every key
    bias[4, 1:] = float("-inf")  # window 4 sees one key: the other window of its block sets the width
    plans = blocked._plan_key_blocks(bias.to(dtype).unsqueeze(1), 2, heads=2)
    visible = torch.isfinite(bias)
    assert plans[1] is None
    for plan, rows in ((plans[0], [0, 1]), (plans[2], [4, 5])):
        assert plan.index.shape == (2, int(visible[rows].sum(1).max()))
    ins = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
    out = blocked_attention(*ins, key_bias=bias.float(), windows_per_block=2)
    grads = torch.autograd.grad(out, ins, grad_out.to(dtype))
    expected, expected_grads = sdpa_fp64(*(t.to(dtype) for t in (q, k, v)), bias, grad_out.to(dtype))
    torch.testing.assert_close(out.double(), expected, **TOL[dtype])
    for got, ref in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), ref, **TOL[dtype])
    hidden = ~visible[:, None, :, None].expand_as(grads[1])
    assert grads[1][hidden].abs().max() == 0 and grads[2][hidden].abs().max() == 0


def test_window_without_visible_key_gives_zero_output_and_grads():
    q, k, v, bias, grad_out = padded_problem(batch=3, mask="key", seed=5)
    bias[1] = float("-inf")
    ins = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = blocked_attention(*ins, key_bias=bias)
    grads = torch.autograd.grad(out, ins, grad_out)
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0
    for grad in grads:
        assert torch.isfinite(grad).all() and grad[1].abs().max() == 0
    expected, expected_grads = sdpa_fp64(q[[0, 2]], k[[0, 2]], v[[0, 2]], bias[[0, 2]], grad_out[[0, 2]])
    torch.testing.assert_close(out[[0, 2]], expected, **TOL[torch.float64])
    torch.testing.assert_close(grads[0][[0, 2]], expected_grads[0], **TOL[torch.float64])


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_kept_and_recomputed_probabilities_give_the_same_gradients(monkeypatch, packed, dtype):
    """Within the budget the forward keeps the probabilities; past it the backward recomputes them. Both must give
    bitwise the same gradients, and only the kept path may hold (B, H, L, L) tensors for the backward."""
    if packed:
        q, k, v, cu, bias = packed_problem([40, 7, 0, 33], seed=5)
        run = lambda *ins: blocked_varlen_attention(*ins, cu, 40, key_bias=bias.float())  # noqa: E731
    else:
        q, k, v, bias, _ = padded_problem(mask="key", seed=4)
        run = lambda *ins: blocked_attention(*ins, key_bias=bias.float(), windows_per_block=2)  # noqa: E731
    results = {}
    for budget in (blocked.KEPT_PROBABILITIES_BUDGET_BYTES, 0):
        monkeypatch.setattr(blocked, "KEPT_PROBABILITIES_BUDGET_BYTES", budget)
        ins = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
        out = run(*ins)
        kept_probabilities = len(out.grad_fn.saved_tensors) - (3 if packed else 4)  # after q, k, v (and bias)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        results[budget] = (out, *torch.autograd.grad(out, ins, grad_out.to(dtype)), kept_probabilities)
    kept, recomputed = results.values()
    assert kept[-1] > 0 and recomputed[-1] == 0
    for a, b in zip(kept[:-1], recomputed[:-1]):
        assert torch.equal(a, b)


def test_no_probabilities_kept_without_gradients():
    q, k, v, bias, _ = padded_problem(mask="key")
    assert blocked._keep_probabilities(10, torch.float32, q.requires_grad_(True))
    with torch.no_grad():
        assert not blocked._keep_probabilities(10, torch.float32, q)
    assert not blocked._keep_probabilities(10, torch.float32, q.detach())
    assert not blocked._keep_probabilities(blocked.KEPT_PROBABILITIES_BUDGET_BYTES, torch.float32, q)


def test_gradcheck_fp64():
    q, k, v, bias, _ = padded_problem(batch=2, heads=1, length=5, head_dim=3, mask="finite", seed=7)
    ins = [t.contiguous().requires_grad_(True) for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: blocked_attention(a, b, c, key_bias=bias, windows_per_block=1),
                                    ins, fast_mode=True)


def test_padded_errors_are_specific():
    q = torch.randn(2, 2, 5, 4)
    with pytest.raises(ValueError, match=r"\(B, H, L, D\)"):
        blocked_attention(q, q[:, :, :4], q)
    with pytest.raises(ValueError, match=r"key_bias must be \(B, L\) = \(2, 5\)"):
        blocked_attention(q, q, q, key_bias=torch.zeros(2, 4))


# --------------------------------------------------------------------------------------------- packed (varlen)
def packed_problem(lengths, heads=2, head_dim=16, mask="key", seed=0, tail=0):
    gen = torch.Generator().manual_seed(seed)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    total = int(cu[-1]) + tail
    q, k, v = torch.randn(3, total, heads, head_dim, generator=gen, dtype=torch.float64).unbind(0)
    hidden = torch.rand(total, generator=gen) < 0.4
    hidden[cu[:-1].long().clamp(max=max(total - 1, 0))] = False  # one visible key per sequence
    fill = float("-inf") if mask == "key" else -1e9
    bias = torch.zeros(total, dtype=torch.float64).masked_fill(hidden, fill)
    return q, k, v, cu, bias


@pytest.mark.parametrize("lengths", [[1], [17, 200], [200, 37, 0, 129, 1, 64, 65, 63, 17, 0], [3] * 40],
                         ids=lambda x: "-".join(map(str, x[:6])))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_varlen_matches_reference(lengths, dtype):
    q, k, v, cu, bias = packed_problem(lengths, seed=len(lengths))
    ins = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
    out = blocked_varlen_attention(*ins, cu, max(lengths), key_bias=bias.float())
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, ins, grad_out)
    refs = [t.to(dtype).double().requires_grad_(True) for t in (q, k, v)]
    expected = varlen_attention_reference(*refs, cu, bias.float().double())
    expected_grads = torch.autograd.grad(expected, refs, grad_out.double())
    torch.testing.assert_close(out.double(), expected.detach(), **TOL[dtype])
    for got, ref in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), ref, **TOL[dtype])


def test_varlen_finite_bias_hidden_sequence_and_tail_tokens():
    q, k, v, cu, bias = packed_problem([30, 0, 12, 5], mask="finite", seed=2, tail=4)
    bias[30:42] = -1e9  # every key of the 12-token sequence carries the same finite bias: it cancels
    bias[42:47] = float("-inf")  # the 5-token sequence sees nothing: zero output
    ins = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = blocked_varlen_attention(*ins, cu, 30, key_bias=bias)
    expected = varlen_attention_reference(*ins, cu, bias)
    tol = dict(atol=1e-6, rtol=1e-6)  # scores of order 1e9 keep ~1e-7 absolute precision in fp64
    torch.testing.assert_close(out, expected, **tol)
    assert out[42:].abs().max() == 0  # the hidden sequence and the 4 tokens after cu_seqlens[-1]
    grads = torch.autograd.grad(out.square().sum(), ins)
    expected_grads = torch.autograd.grad(expected.square().sum(), ins)
    for got, ref in zip(grads, expected_grads):
        torch.testing.assert_close(got, ref, **tol)


# --------------------------------------------------------------------------------------------- torch.compile
def _compiled_and_eager(run, inputs, grad_seed=3):
    """Output and q/k/v gradients of ``run`` compiled (fullgraph, aot_eager) and eager."""
    torch._dynamo.reset()
    results = []
    for function in (torch.compile(run, fullgraph=True, backend="aot_eager"), run):
        ins = [t.clone().requires_grad_(True) for t in inputs]
        out = function(*ins)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=out.dtype)
        results.append((out.detach(), *torch.autograd.grad(out, ins, grad_out)))
    torch._dynamo.reset()
    return results


@pytest.mark.compile_in_fresh_process
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("budget", ["kept", "recomputed"])
def test_compiled_graph_runs_the_custom_ops_with_the_eager_results(monkeypatch, packed, budget):
    """Under torch.compile both entry points run as opaque custom ops in one graph (fullgraph), with every window
    kind: hidden keys, a window (sequence) without any visible key, empty sequences and tokens after the last."""
    if budget == "recomputed":
        monkeypatch.setattr(blocked, "KEPT_PROBABILITIES_BUDGET_BYTES", 0)
    if packed:
        q, k, v, cu, bias = packed_problem([40, 7, 0, 33, 5], seed=6, tail=3)
        bias[47:80] = float("-inf")  # the 33-token sequence sees no key
        run = lambda *ins: blocked_varlen_attention(*ins, cu, 40, key_bias=bias.float())  # noqa: E731
    else:
        q, k, v, bias, _ = padded_problem(mask="key", seed=8)
        bias[2] = float("-inf")  # window 2 sees no key
        run = lambda *ins: blocked_attention(*ins, key_bias=bias.float(), windows_per_block=2)  # noqa: E731
    compiled, eager = _compiled_and_eager(run, [t.float() for t in (q, k, v)])
    for got, expected in zip(compiled, eager):
        assert torch.equal(got, expected)


@pytest.mark.compile_in_fresh_process
def test_custom_ops_pass_opcheck():
    q, k, v, bias, _ = padded_problem(batch=3, length=11, mask="key", seed=1)
    ins = [t.requires_grad_(True) for t in (q, k, v)]
    for keep in (True, False):
        torch.library.opcheck(torch.ops.astromer.blocked_attn_fwd, (*ins, bias.unsqueeze(1), 0.3, 2, keep))
    q, k, v, cu, bias = packed_problem([5, 7, 0, 8], seed=2)
    ins = [t.requires_grad_(True) for t in (q, k, v)]
    for keep in (True, False):
        for key_bias in (bias, None):
            torch.library.opcheck(torch.ops.astromer.blocked_varlen_attn_fwd, (*ins, cu, key_bias, 0.3, keep))


# --------------------------------------------------------------------------------------------- HF interface
def test_hf_padded_mode_equals_sdpa_and_refuses_query_dependent_masks():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, 2, 70, 16, generator=gen) for _ in range(3))
    visible = torch.rand(3, 70, generator=gen) > 0.3
    visible[:, 0] = True
    visible[1, 40:] = False
    mask = sdpa_mask(batch_size=3, q_length=70, kv_length=70, attention_mask=visible,
                     mask_function=bidirectional_mask_function, allow_is_bidirectional_skip=True)
    module = torch.nn.Module()
    module.is_causal = False
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.25, is_causal=False)
    got, weights = astromer_blocked_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.25)
    assert weights is None and got.shape == (3, 70, 2, 16)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
    compact = key_only_mask(batch_size=3, q_length=70, kv_length=70, attention_mask=visible)
    assert torch.equal(astromer_blocked_attention_forward(module, q, k, v, compact, scaling=0.25)[0], got)
    query_dependent = mask.clone()
    query_dependent[0, 0, 1, 2] = ~query_dependent[0, 0, 1, 2]
    with pytest.raises(ValueError, match="astromer_blocked supports key-only"):
        astromer_blocked_attention_forward(module, q, k, v, query_dependent)


def test_register_adds_blocked_to_both_interfaces():
    register_attention_implementations()
    assert AttentionInterface._global_mapping["astromer_blocked"] is astromer_blocked_attention_forward
    assert AttentionMaskInterface._global_mapping["astromer_blocked"] is key_only_mask
