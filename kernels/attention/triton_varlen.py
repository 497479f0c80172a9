"""Triton kernels for block-diagonal (packed, variable-length) attention with an optional per-key bias.

Layout conventions (all kernels):

* ``q, k, v, o, do, dq, dk, dv``: ``(T, H, D)`` with unit stride on ``D`` (row strides are passed, so strided views of
  one fused QKV projection work without copies).
* ``cu_seqlens``: int32 ``(n + 1,)``; sequence ``b`` owns tokens ``cu[b] <= t < cu[b+1]`` (zero-length allowed).
* ``key_bias``: fp32 ``(T,)``, added to every score whose *key* is token ``t`` (``-inf`` hides the key).
* ``lse``: fp32 (fp64 with fp64 inputs) ``(H, T)``, the natural-log softmax normaliser of each query row; ``+inf`` for rows that see no key.
* ``delta``: fp32 ``(H, T)``, ``rowsum(o * do)`` (backward pre-processing).

Scores are computed in the log2 domain (``exp2``), accumulation is fp32 (``ACC`` = fp64 only for the fp64
interpreter path used by ``gradcheck``). Rows with no visible key produce ``o = 0`` and zero gradients.

Triton is an optional dependency, so importing this module does not import it: the kernels are plain functions that
:func:`load` compiles with ``triton.jit`` the first time a Triton kernel is needed (it also binds ``tl``, the
``triton.language`` module their bodies use). Nothing touches the driver before that; configurations are tuned
(``ops._pick_config``) only when a CUDA device is present and the interpreter is off (``triton.autotune`` under the
interpreter raises "0 active drivers").
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

INTERPRETING: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

LOG2E = 1.4426950408889634

#: ``triton.language``, bound by :func:`load`; the kernel bodies below look it up when Triton compiles them.
tl: Any = None


def varlen_fwd_kernel_entry(
    Q, K, V, O, LSE, KEY_BIAS, CU_SEQLENS,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_lse_h,
    num_heads, head_dim, qk_scale_log2,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    seq = pid_bh // num_heads
    head = pid_bh % num_heads
    seq_start = tl.load(CU_SEQLENS + seq)
    seq_len = tl.load(CU_SEQLENS + seq + 1) - seq_start
    if pid_m * BLOCK_M >= seq_len:
        return

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < seq_len
    mask_d = offs_d < head_dim

    tok_m = (seq_start + offs_m).to(tl.int64)
    q = tl.load(Q + tok_m[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)

    for start_n in range(0, seq_len, BLOCK_N):
        offs_n = start_n + offs_n0
        mask_n = offs_n < seq_len
        tok_n = (seq_start + offs_n).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + tok_n[:, None] * stride_kt + head * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + tok_n[:, None] * stride_vt + head * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION, out_dtype=ACC) * qk_scale_log2
        if HAS_BIAS:
            kb = tl.load(KEY_BIAS + tok_n, mask=mask_n, other=0.0).to(ACC)
            s = s + kb[None, :] * 1.4426950408889634
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row that has seen only hidden keys keeps m = -inf; use 0 so that exp2 gives exact zeros, not NaN.
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION, out_dtype=ACC)
        m_i = m_new

    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    out = tl.where(has_key[:, None], acc / l_safe[:, None], 0.0)
    m_fin = tl.where(m_i == float("-inf"), 0.0, m_i)
    lse = tl.where(has_key, (m_fin + tl.math.log2(l_safe)) * 0.6931471805599453, float("inf"))
    tl.store(O + tok_m[:, None] * stride_ot + head * stride_oh + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])
    tl.store(LSE + head * stride_lse_h + seq_start + offs_m, lse.to(LSE.dtype.element_ty), mask=mask_m)


def varlen_bwd_preprocess_kernel(
    O, DO, DELTA, stride_ot, stride_oh, stride_dot, stride_doh, stride_delta_h,
    total_tokens, head_dim,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """``delta[h, t] = sum_d o[t, h, d] * do[t, h, d]`` in ``ACC`` precision."""
    pid_t = tl.program_id(0)
    head = tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_t < total_tokens)[:, None] & (offs_d < head_dim)[None, :]
    tok = offs_t.to(tl.int64)
    o = tl.load(O + tok[:, None] * stride_ot + head * stride_oh + offs_d[None, :], mask=mask, other=0.0).to(ACC)
    do = tl.load(DO + tok[:, None] * stride_dot + head * stride_doh + offs_d[None, :], mask=mask, other=0.0).to(ACC)
    tl.store(DELTA + head * stride_delta_h + offs_t, tl.sum(o * do, axis=1).to(DELTA.dtype.element_ty),
             mask=offs_t < total_tokens)


def varlen_bwd_kernel_entry(
    Q, K, V, DO, LSE, DELTA, KEY_BIAS, CU_SEQLENS, DQ, DK, DV,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lse_h,
    num_heads, head_dim, sm_scale, qk_scale_log2,
    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Program ``j`` computes dK, dV of key block ``j`` (looping over all query blocks of its sequence), then dQ of
    query block ``j`` (looping over all key blocks). Every output element is written by exactly one program, so the
    result is deterministic without atomics; the price is one extra ``QK^T`` recomputation (<= 4 blocks at L <= 200).
    """
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    seq = pid_bh // num_heads
    head = pid_bh % num_heads
    seq_start = tl.load(CU_SEQLENS + seq)
    seq_len = tl.load(CU_SEQLENS + seq + 1) - seq_start
    if pid * BLOCK >= seq_len:
        return

    offs_b = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    offs_j = pid * BLOCK + offs_b
    mask_j = offs_j < seq_len
    tok_j = (seq_start + offs_j).to(tl.int64)
    tile_mask_j = mask_j[:, None] & mask_d[None, :]

    # ---- dK, dV for key block j ----
    k = tl.load(K + tok_j[:, None] * stride_kt + head * stride_kh + offs_d[None, :], mask=tile_mask_j, other=0.0)
    v = tl.load(V + tok_j[:, None] * stride_vt + head * stride_vh + offs_d[None, :], mask=tile_mask_j, other=0.0)
    if HAS_BIAS:
        kb_j = tl.load(KEY_BIAS + tok_j, mask=mask_j, other=0.0).to(ACC) * 1.4426950408889634
    dk = tl.zeros([BLOCK, BLOCK_D], dtype=ACC)
    dv = tl.zeros([BLOCK, BLOCK_D], dtype=ACC)
    for start_m in range(0, seq_len, BLOCK):
        offs_m = start_m + offs_b
        mask_m = offs_m < seq_len
        tok_m = (seq_start + offs_m).to(tl.int64)
        tile_mask_m = mask_m[:, None] & mask_d[None, :]
        q = tl.load(Q + tok_m[:, None] * stride_qt + head * stride_qh + offs_d[None, :], mask=tile_mask_m, other=0.0)
        do = tl.load(DO + tok_m[:, None] * stride_dot + head * stride_doh + offs_d[None, :],
                     mask=tile_mask_m, other=0.0)
        lse2 = tl.load(LSE + head * stride_lse_h + seq_start + offs_m, mask=mask_m, other=float("inf")).to(ACC)
        lse2 = lse2 * 1.4426950408889634
        delta = tl.load(DELTA + head * stride_lse_h + seq_start + offs_m, mask=mask_m, other=0.0).to(ACC)
        s_t = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION, out_dtype=ACC) * qk_scale_log2
        if HAS_BIAS:
            s_t = s_t + kb_j[:, None]
        p_t = tl.math.exp2(s_t - lse2[None, :])
        p_t = tl.where(mask_j[:, None] & mask_m[None, :], p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=INPUT_PRECISION, out_dtype=ACC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION, out_dtype=ACC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=INPUT_PRECISION, out_dtype=ACC)
    dk = dk * sm_scale
    tl.store(DK + tok_j[:, None] * stride_dkt + head * stride_dkh + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=tile_mask_j)
    tl.store(DV + tok_j[:, None] * stride_dvt + head * stride_dvh + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=tile_mask_j)

    # ---- dQ for query block j ----
    q = tl.load(Q + tok_j[:, None] * stride_qt + head * stride_qh + offs_d[None, :], mask=tile_mask_j, other=0.0)
    do = tl.load(DO + tok_j[:, None] * stride_dot + head * stride_doh + offs_d[None, :], mask=tile_mask_j, other=0.0)
    lse2 = tl.load(LSE + head * stride_lse_h + seq_start + offs_j, mask=mask_j, other=float("inf")).to(ACC)
    lse2 = lse2 * 1.4426950408889634
    delta = tl.load(DELTA + head * stride_lse_h + seq_start + offs_j, mask=mask_j, other=0.0).to(ACC)
    dq = tl.zeros([BLOCK, BLOCK_D], dtype=ACC)
    for start_n in range(0, seq_len, BLOCK):
        offs_n = start_n + offs_b
        mask_n = offs_n < seq_len
        tok_n = (seq_start + offs_n).to(tl.int64)
        tile_mask_n = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + tok_n[:, None] * stride_kt + head * stride_kh + offs_d[None, :], mask=tile_mask_n, other=0.0)
        v = tl.load(V + tok_n[:, None] * stride_vt + head * stride_vh + offs_d[None, :], mask=tile_mask_n, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION, out_dtype=ACC) * qk_scale_log2
        if HAS_BIAS:
            kb = tl.load(KEY_BIAS + tok_n, mask=mask_n, other=0.0).to(ACC)
            s = s + kb[None, :] * 1.4426950408889634
        p = tl.math.exp2(s - lse2[:, None])
        p = tl.where(mask_j[:, None] & mask_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION, out_dtype=ACC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=INPUT_PRECISION, out_dtype=ACC)
    dq = dq * sm_scale
    tl.store(DQ + tok_j[:, None] * stride_dqt + head * stride_dqh + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=tile_mask_j)


#: Candidate launch configurations, benchmarked once per problem key by ``ops._pick_config`` on CUDA (few on
#: purpose: each one is a compilation).
FWD_CONFIGS: list[dict] = [
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2),
    dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=2),
]
BWD_CONFIGS: list[dict] = [
    dict(BLOCK=64, num_warps=4, num_stages=2),
    dict(BLOCK=32, num_warps=4, num_stages=2),
    dict(BLOCK=64, num_warps=8, num_stages=1),
    dict(BLOCK=128, num_warps=8, num_stages=1),
]

class TritonKernels(NamedTuple):
    """The compiled (``triton.jit``) kernels and what launching them needs."""

    fwd: Any
    bwd_preprocess: Any
    bwd: Any
    float32: Any  # tl.float32 and tl.float64, the ACC argument of the kernels
    float64: Any
    #: whether launch configurations are benchmarked (a CUDA device and no interpreter)
    autotune: bool


_kernels: TritonKernels | None = None
_import_error: ImportError | None = None


def load() -> TritonKernels | None:
    """The kernels compiled with ``triton.jit``, importing Triton on the first call; ``None`` without Triton."""
    global tl, _kernels, _import_error
    if _kernels is None and _import_error is None:
        try:
            import triton
            import triton.language as tl
        except ImportError as error:  # triton is optional (the `triton` extra)
            _import_error = error
            return None
        _kernels = TritonKernels(
            fwd=triton.jit(varlen_fwd_kernel_entry),
            bwd_preprocess=triton.jit(varlen_bwd_preprocess_kernel),
            bwd=triton.jit(varlen_bwd_kernel_entry),
            float32=tl.float32,
            float64=tl.float64,
            autotune=(not INTERPRETING) and torch.cuda.is_available(),
        )
    return _kernels
