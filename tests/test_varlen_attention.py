"""Packed varlen attention (Triton kernels under the interpreter on CPU, compiled on CUDA) vs a float64 reference.

``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before this module imports the kernels when there is no GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, bidirectional_mask_function, sdpa_mask

from astromer_kernels import varlen_attention
from astromer_kernels.attention import ops
from astromer_kernels.attention.reference import varlen_attention_padded_sdpa, varlen_attention_reference
from astromer_kernels.hf_functions import astromer_varlen_attention_forward, key_only_mask
from astromer_kernels.registry import register_attention_implementations

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
needs_kernel = pytest.mark.skipif(not ops.kernel_available(DEVICE, torch.float32),
                                  reason="Triton (GPU or TRITON_INTERPRET=1) not available")
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5),
       torch.float16: dict(atol=5e-3, rtol=5e-3), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def make_problem(lengths, heads=2, head_dim=32, mask="none", seed=0, fused=False):
    """Random packed problem in float64 (CPU): q, k, v ``(T, H, D)``, cu_seqlens int32, key_bias ``(T,)``|None."""
    gen = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = lengths_t.cumsum(0).to(torch.int32)
    total = int(cu[-1])
    qkv = torch.randn(total, 3, heads, head_dim, generator=gen, dtype=torch.float64)
    bias = None
    hidden = torch.rand(total, generator=gen) < 0.4
    if mask == "key":
        bias = torch.where(hidden, float("-inf"), 0.0).double()
    elif mask == "finite":  # Astromer 2's m_alpha = -1e9 on hidden keys
        bias = torch.where(hidden, -1e9, 0.0).double()
    elif mask == "plus_one":  # a soft positive bias (A1-like magnitude)
        bias = torch.where(hidden, 1.0, 0.0).double()
    if bias is not None and mask != "plus_one":
        # keep one visible key per sequence for finite biases (all-hidden rows differ from -inf semantics)
        for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
            if end > start and mask == "finite":
                bias[start] = 0.0
    return qkv, cu, bias


def reference_with_grads(q, k, v, cu, bias, do):
    ins = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out = varlen_attention_reference(*ins, cu, None if bias is None else bias.double())
    grads = torch.autograd.grad(out, ins, do.double())
    return out.detach(), grads


def run_and_compare(lengths, dtype, mask, heads=2, head_dim=32, seed=0, max_seqlen=None):
    qkv, cu, bias = make_problem(lengths, heads, head_dim, mask, seed)
    q, k, v = (t.to(DEVICE, dtype).requires_grad_(True) for t in qkv.unbind(1))
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    kb = None if bias is None else bias.float().to(DEVICE)
    out = varlen_attention(q, k, v, cu.to(DEVICE), max_seqlen or max(max(lengths), 1), key_bias=kb)
    grads = torch.autograd.grad(out, (q, k, v), do.to(DEVICE, dtype))
    ref_out, ref_grads = reference_with_grads(q.cpu(), k.cpu(), v.cpu(), cu, kb.cpu() if kb is not None else None,
                                              do.to(dtype))
    tol = TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), ref_out, **tol)
    for name, g, r in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(g.cpu().double(), r, **tol, msg=lambda m, n=name: f"d{n}: {m}")
    return out, grads


LENGTH_SETS = [[1], [17], [63], [64], [65], [129], [200], [200, 37, 0, 129, 1, 64, 65, 63, 17, 0]]


@needs_kernel
@pytest.mark.parametrize("lengths", LENGTH_SETS, ids=lambda x: "-".join(map(str, x)))
def test_lengths_fp32_key_mask(lengths):
    run_and_compare(lengths, torch.float32, "key", heads=2, head_dim=32)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("mask", ["none", "key", "finite", "plus_one"])
def test_dtypes_and_masks(dtype, mask):
    lengths = [65, 0, 17, 1] if dtype == torch.float16 else [129, 0, 17, 1, 64]
    run_and_compare(lengths, dtype, mask, heads=2, head_dim=16 if dtype == torch.float16 else 32)


@needs_kernel
def test_head_dim_64_mixed_lengths():
    run_and_compare([200, 37, 129, 1, 0, 65], torch.float32, "key", heads=2, head_dim=64)


@needs_kernel
def test_head_dim_not_power_of_two():
    run_and_compare([40, 9], torch.float32, "key", heads=1, head_dim=24)


@needs_kernel
def test_bf16_runs_and_matches_reference():
    run_and_compare([65, 3], torch.bfloat16, "key", heads=1, head_dim=16)


@needs_kernel
def test_fully_hidden_sequence_gives_zero_output_and_grads():
    lengths = [20, 7, 1]
    qkv, cu, _ = make_problem(lengths, heads=2, head_dim=16)
    bias = torch.zeros(int(cu[-1]))
    bias[20:27] = float("-inf")  # the whole second sequence is hidden
    bias[27] = float("-inf")  # and the length-1 sequence's only key
    q, k, v = (t.float().to(DEVICE).requires_grad_(True) for t in qkv.unbind(1))
    out = varlen_attention(q, k, v, cu.to(DEVICE), 20, key_bias=bias.to(DEVICE))
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad(out, (q, k, v), do)
    assert torch.equal(out[20:].cpu(), torch.zeros_like(out[20:].cpu()))
    assert out[:20].abs().sum() > 0
    for g in grads:
        assert torch.isfinite(g).all()
        assert torch.equal(g[20:].cpu(), torch.zeros_like(g[20:].cpu()))
    ref_out, ref_grads = reference_with_grads(q.cpu(), k.cpu(), v.cpu(), cu, bias, do.cpu())
    torch.testing.assert_close(out.cpu().double(), ref_out, **TOL[torch.float32])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.cpu().double(), r, **TOL[torch.float32])


@needs_kernel
def test_strided_views_of_fused_qkv():
    lengths = [70, 0, 33]
    qkv, cu, bias = make_problem(lengths, heads=2, head_dim=32, mask="key")
    fused = qkv.float().to(DEVICE).requires_grad_(True)  # (T, 3, H, D): q, k, v are non-contiguous views
    q, k, v = fused.unbind(1)
    assert not q.is_contiguous()
    out = varlen_attention(q, k, v, cu.to(DEVICE), 70, key_bias=bias.float().to(DEVICE))
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(out.device)
    (grad_fused,) = torch.autograd.grad(out, fused, do)
    ref_out, ref_grads = reference_with_grads(*qkv.unbind(1), cu, bias, do.cpu().double())
    torch.testing.assert_close(out.cpu().double(), ref_out, **TOL[torch.float32])
    torch.testing.assert_close(grad_fused.cpu().double(), torch.stack(ref_grads, dim=1), **TOL[torch.float32])


@needs_kernel
def test_backward_is_deterministic():
    qkv, cu, bias = make_problem([129, 64, 5], heads=2, head_dim=32, mask="key")
    q, k, v = (t.float().to(DEVICE).requires_grad_(True) for t in qkv.unbind(1))
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float32).to(DEVICE)
    runs = []
    for _ in range(2):
        out = varlen_attention(q, k, v, cu.to(DEVICE), 129, key_bias=bias.float().to(DEVICE))
        runs.append(torch.autograd.grad(out, (q, k, v), do))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@needs_kernel
@pytest.mark.skipif(CUDA, reason="fp64 gradcheck runs through the interpreter (CPU)")
def test_gradcheck_fp64_fast_mode():
    qkv, cu, bias = make_problem([5, 0, 3], heads=1, head_dim=16, mask="key", seed=3)
    q, k, v = (t.clone().requires_grad_(True) for t in qkv.unbind(1))
    bias[0] = 0.0

    def fn(q, k, v):
        return varlen_attention(q, k, v, cu, 5, key_bias=bias)

    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=True, eps=1e-6, atol=1e-6, rtol=1e-5)


@needs_kernel
def test_opcheck_forward_and_backward_ops():
    dtype = torch.float64 if not CUDA else torch.float32
    qkv, cu, bias = make_problem([9, 0, 4], heads=1, head_dim=16, mask="key", seed=5)
    q, k, v = (t.to(DEVICE, dtype).requires_grad_(True) for t in qkv.unbind(1))
    cu, bias = cu.to(DEVICE), bias.to(DEVICE, dtype)
    torch.library.opcheck(torch.ops.astromer.varlen_attn_fwd.default, (q, k, v, cu, 9, bias, 0.25))
    torch.library.opcheck(torch.ops.astromer.varlen_attn_fwd.default, (q, k, v, cu, 9, None, 0.25))
    o, lse = torch.ops.astromer.varlen_attn_fwd(q, k, v, cu, 9, bias, 0.25)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=o.dtype).to(o.device)
    torch.library.opcheck(torch.ops.astromer.varlen_attn_bwd.default,
                          (do, q.detach(), k.detach(), v.detach(), o.detach(), lse.detach(), cu, 9, bias, 0.25),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.compile_in_fresh_process
@needs_kernel
@pytest.mark.slow
def test_torch_compile_fullgraph_forward_backward():
    qkv, cu, bias = make_problem([40, 0, 23], heads=2, head_dim=16, mask="key", seed=7)
    dtype = torch.float32
    q, k, v = (t.to(DEVICE, dtype).requires_grad_(True) for t in qkv.unbind(1))
    cu, kb = cu.to(DEVICE), bias.to(DEVICE, torch.float32)

    def step(q, k, v):
        out = varlen_attention(q, k, v, cu, 40, key_bias=kb)
        return (out * out).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if not CUDA else "inductor")
    loss_c = compiled(q, k, v)
    grads_c = torch.autograd.grad(loss_c, (q, k, v))
    loss_e = step(q, k, v)
    grads_e = torch.autograd.grad(loss_e, (q, k, v))
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


def test_padded_sdpa_fallback_matches_reference():
    qkv, cu, bias = make_problem([30, 0, 1, 12], heads=2, head_dim=16, mask="key", seed=11)
    bias[30] = float("-inf")  # the length-1 sequence sees nothing
    q, k, v = (t.clone().requires_grad_(True) for t in qkv.unbind(1))
    out = varlen_attention_padded_sdpa(q, k, v, cu, 30, bias)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_out, ref_grads = reference_with_grads(q, k, v, cu, bias, do)
    torch.testing.assert_close(out, ref_out, **TOL[torch.float64])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **TOL[torch.float64])


def test_dispatch_falls_back_without_interpreter():
    """With TRITON_INTERPRET unset and no GPU, varlen_attention uses the CPU fallback and says so once (fresh
    interpreter)."""
    if CUDA:
        pytest.skip("on a GPU machine the compiled kernel is used")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    code = textwrap.dedent(
        """
        import warnings
        import torch
        from astromer_kernels import AttentionFallbackWarning, varlen_attention
        from astromer_kernels.attention import ops
        from astromer_kernels.attention.reference import varlen_attention_reference
        assert not ops.INTERPRETING
        assert not ops.kernel_available(torch.device("cpu"), torch.float32)
        torch.manual_seed(0)
        cu = torch.tensor([0, 50, 50, 53], dtype=torch.int32)
        q, k, v = (torch.randn(53, 2, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
        bias = torch.where(torch.rand(53) < 0.3, float("-inf"), 0.0).double()
        bias[50:] = float("-inf")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = varlen_attention(q, k, v, cu, 50, key_bias=bias)
            varlen_attention(q, k, v, cu, 50, key_bias=bias)
        assert [w.category for w in caught] == [AttentionFallbackWarning], caught
        assert "running blocked GEMM attention" in str(caught[0].message)
        ref = varlen_attention_reference(q, k, v, cu, bias)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
        g = torch.autograd.grad(out.square().sum(), (q, k, v))
        r = torch.autograd.grad(ref.square().sum(), (q, k, v))
        for a, b in zip(g, r):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
        try:
            torch.ops.astromer.varlen_attn_fwd(q, k, v, cu, 50, bias, 0.25)
        except RuntimeError as exc:
            assert "TRITON_INTERPRET" in str(exc)
        else:
            raise AssertionError("the raw op must refuse to run without a kernel backend")
        print("FALLBACK_OK")
        """
    )
    pythonpath = os.pathsep.join(p for p in [str(root), env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": pythonpath}, cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FALLBACK_OK" in proc.stdout


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cu=torch.tensor([0, 5, 9], dtype=torch.int64)), "int32"),
        (dict(cu=torch.tensor([0, 5, 8], dtype=torch.int32)), "end at total_tokens"),
        (dict(cu=torch.tensor([0, 6, 4, 9], dtype=torch.int32)), "non-decreasing"),
        (dict(max_seqlen=3), "max_seqlen=3"),
        (dict(bias=torch.zeros(8)), "key_bias"),
    ],
)
def test_invalid_inputs_raise_clear_errors(kwargs, message):
    q = k = v = torch.randn(9, 2, 16)
    cu = kwargs.get("cu", torch.tensor([0, 5, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match=message):
        varlen_attention(q, k, v, cu, kwargs.get("max_seqlen", 5), key_bias=kwargs.get("bias"))


# --------------------------------------------------------------------------------------------- HF interface
@needs_kernel
def test_hf_padded_mode_equals_sdpa():
    gen = torch.Generator().manual_seed(2)
    batch, heads, length, head_dim = 3, 2, 70, 16
    q, k, v = (torch.randn(batch, heads, length, head_dim, generator=gen).to(DEVICE) for _ in range(3))
    visible = torch.rand(batch, length, generator=gen) > 0.3
    visible[:, 0] = True
    visible[1, 40:] = False  # padding
    mask = sdpa_mask(batch_size=batch, q_length=length, kv_length=length, attention_mask=visible.to(DEVICE),
                     mask_function=bidirectional_mask_function, allow_is_bidirectional_skip=True, device=DEVICE)
    assert mask is not None and mask.dtype == torch.bool and mask.shape == (batch, 1, length, length)
    module = torch.nn.Module()
    module.is_causal = False
    module.training = False
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.25, is_causal=False)
    got, weights = astromer_varlen_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.25)
    assert weights is None
    assert got.shape == (batch, length, heads, head_dim)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
    compact = key_only_mask(batch_size=batch, q_length=length, kv_length=length, attention_mask=visible.to(DEVICE))
    assert compact.shape == (batch, 1, 1, length)
    got_compact, _ = astromer_varlen_attention_forward(module, q, k, v, compact, dropout=0.0, scaling=0.25)
    assert torch.equal(got_compact, got)
    got_none, _ = astromer_varlen_attention_forward(module, q, k, v, None, scaling=0.25)
    exp_none, _ = sdpa_attention_forward(module, q, k, v, None, dropout=0.0, scaling=0.25, is_causal=False)
    torch.testing.assert_close(got_none, exp_none, atol=2e-5, rtol=2e-5)


@needs_kernel
def test_hf_packed_mode_matches_reference():
    qkv, cu, bias = make_problem([33, 0, 12], heads=2, head_dim=16, mask="finite", seed=4)
    q, k, v = (t.float().transpose(0, 1).unsqueeze(0).to(DEVICE) for t in qkv.unbind(1))  # (1, H, T, D)
    out, _ = astromer_varlen_attention_forward(torch.nn.Module(), q, k, v, None, scaling=0.25,
                                               cu_seq_lens_q=cu.to(DEVICE), max_length_q=33,
                                               key_bias=bias.float().to(DEVICE))
    ref = varlen_attention_reference(*qkv.unbind(1), cu, bias, softmax_scale=0.25)
    torch.testing.assert_close(out[0].cpu().double(), ref, **TOL[torch.float32])
    # without key_bias, the compact key mask hides keys with -inf
    visible = torch.isfinite(bias) & (bias == 0)
    mask = key_only_mask(batch_size=1, q_length=45, kv_length=45, attention_mask=visible[None].to(DEVICE))
    out_mask, _ = astromer_varlen_attention_forward(torch.nn.Module(), q, k, v, mask, scaling=0.25,
                                                    cu_seq_lens_q=cu.to(DEVICE), max_length_q=33)
    ref_mask = varlen_attention_reference(*qkv.unbind(1), cu, torch.zeros(45).masked_fill(~visible, float("-inf"))
                                          .double(), softmax_scale=0.25)
    torch.testing.assert_close(out_mask[0].cpu().double(), ref_mask, **TOL[torch.float32])


def test_hf_rejects_query_dependent_masks():
    q = torch.randn(1, 1, 4, 16)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, 1, 2] = False
    with pytest.raises(ValueError, match="key-only.*attn_implementation='eager' or 'sdpa'"):
        astromer_varlen_attention_forward(torch.nn.Module(), q, q, q, mask)
    additive = torch.zeros(1, 1, 4, 4)
    additive[..., 2] = 1.0  # a bias that is neither 0 nor very negative
    with pytest.raises(ValueError, match="additive masks must be 0.*attn_implementation='eager' or 'sdpa'"):
        astromer_varlen_attention_forward(torch.nn.Module(), q, q, q, additive)


def test_hf_packed_mode_rejects_dense_masks():
    q = torch.randn(1, 1, 6, 16)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="packed inputs take a key mask"):
        astromer_varlen_attention_forward(torch.nn.Module(), q, q, q, torch.ones(1, 1, 6, 6, dtype=torch.bool),
                                          cu_seq_lens_q=cu, max_length_q=4)


def test_register_adds_attention_and_mask_interfaces():
    register_attention_implementations()
    assert AttentionInterface._global_mapping["astromer_varlen"] is astromer_varlen_attention_forward
    assert AttentionMaskInterface._global_mapping["astromer_varlen"] is key_only_mask


# --------------------------------------------------------------------------------------------- GPU only
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("mask", ["none", "key", "finite"])
def test_gpu_real_sizes_against_fp64(dtype, mask):
    gen = torch.Generator().manual_seed(21)
    lengths = torch.exp(4.38 + 0.8 * torch.randn(64, generator=gen)).round().clamp(5, 200).int().tolist()
    lengths[:3] = [200, 0, 1]
    qkv, cu, bias = make_problem(lengths, heads=4, head_dim=64, mask=mask, seed=21)
    q, k, v = (t.to(DEVICE, dtype).requires_grad_(True) for t in qkv.unbind(1))
    out = torch.full((1,), float("nan"))  # poisoned until overwritten
    kb = None if bias is None else bias.float().to(DEVICE)
    out = varlen_attention(q, k, v, cu.to(DEVICE), 200, key_bias=kb)
    do = torch.randn(q.shape, generator=gen).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_out, ref_grads = reference_with_grads(q.detach().cpu(), k.detach().cpu(), v.detach().cpu(), cu,
                                              None if kb is None else kb.cpu(), do.cpu())

    def rel(a, b):
        return float((a.cpu().double() - b).norm() / b.norm())

    limit = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}[dtype]
    assert torch.isfinite(out).all()
    assert rel(out, ref_out) < limit
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all()
        assert rel(g, r) < 2 * limit
