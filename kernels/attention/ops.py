"""``torch.library`` custom ops around the Triton varlen-attention kernels, plus dispatch and its fallbacks.

Public entry point: :func:`varlen_attention`. Dispatch:

* CUDA tensors (fp16/bf16/fp32) and a working Triton -> the compiled kernels (autotuned);
* ``TRITON_INTERPRET=1`` and CPU tensors (fp16/bf16/fp32/fp64) -> the same kernels under Triton's interpreter (tests,
  fp64 for gradcheck);
* where the kernel cannot run, a fallback that computes the same attention, announced by an
  :class:`AttentionFallbackWarning` (once per process for each device type and dtype) that names the kernel asked
  for, why it cannot run, and the code that runs instead:

  - other CPU tensors -> :func:`~astromer_kernels.attention.blocked.blocked_varlen_attention`, the blocked GEMM
    attention that ``attn_implementation="astromer_blocked"`` runs (length-sorted groups, each padded to its own
    longest sequence); on a CPU it is the faster choice anyway, so ask for ``astromer_blocked`` to silence the warning;
  - anything else (CUDA without Triton, fp64 on CUDA, CUDA tensors under the interpreter, other devices) ->
    :func:`~astromer_kernels.attention.reference.varlen_attention_padded_sdpa` (windows padded to ``max_seqlen``,
    then ``scaled_dot_product_attention``).

Triton is imported when a kernel is first needed (:func:`~astromer_kernels.attention.triton_varlen.load`), never by
importing this module.

Ops: ``astromer::varlen_attn_fwd(q, k, v, cu_seqlens, max_seqlen, key_bias, softmax_scale) -> (o, lse)`` and
``astromer::varlen_attn_bwd(do, q, k, v, o, lse, cu_seqlens, max_seqlen, key_bias, softmax_scale) -> (dq, dk, dv)``,
each with a fake (meta) implementation; the forward op has an autograd formula that calls the backward op, so both
work under ``torch.compile(fullgraph=True)``. Eager calls use an equivalent ``autograd.Function`` on the same
launchers, which saves the dispatcher's host overhead.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

from . import triton_varlen
from .blocked import blocked_varlen_attention
from .reference import varlen_attention_padded_sdpa

INTERPRETING: bool = triton_varlen.INTERPRETING

#: Block sizes used when the kernels are not autotuned (interpreter). Tests may shrink them to exercise
#: multi-block paths on short sequences; 64 balances interpreter speed and coverage.
UNTUNED_CONFIG: dict[str, int] = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK": 64}

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INTERPRETER_DTYPES = (*_KERNEL_DTYPES, torch.float64)


class AttentionFallbackWarning(UserWarning):
    """The Triton varlen kernel cannot run on these tensors; another implementation of the same attention runs."""


@torch.compiler.assume_constant_result
def _triton_loaded() -> bool:
    """Whether Triton imports (a constant of the process: a compiled graph takes the answer as traced)."""
    return triton_varlen.load() is not None


def kernel_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`varlen_attention` runs the Triton kernels (compiled or interpreted) for this device/dtype.

    Imports Triton the first time it is asked about a device/dtype the kernels support."""
    if INTERPRETING:
        supported = device.type == "cpu" and dtype in _INTERPRETER_DTYPES
    else:
        supported = device.type == "cuda" and dtype in _KERNEL_DTYPES
    return supported and _triton_loaded()


def _why_no_kernel(device: torch.device, dtype: torch.dtype) -> str:
    if (device.type == "cuda" or INTERPRETING) and triton_varlen.load() is None:
        return "Triton is not installed (pip install 'astromer-hf[triton]')"
    if device.type == "cpu":
        return "on a CPU it runs only under TRITON_INTERPRET=1, for tests"
    if INTERPRETING:
        return "TRITON_INTERPRET=1 runs it on CPU tensors only"
    if device.type == "cuda":
        return f"it supports fp16, bf16 and fp32, not {dtype}"
    return f"it needs a CUDA device, not {device.type}"


#: (device type, dtype) pairs whose fallback has been announced.
_ANNOUNCED_FALLBACKS: set[tuple[str, torch.dtype]] = set()


def _announce_fallback(device: torch.device, dtype: torch.dtype) -> None:
    """Warn once per process and (device type, dtype) that the Triton kernel was asked for and what runs instead
    (in eager mode: a compiled graph runs the fallback without a warning of its own)."""
    if torch.compiler.is_compiling():
        return
    key = (device.type, dtype)
    if key in _ANNOUNCED_FALLBACKS:
        return
    _ANNOUNCED_FALLBACKS.add(key)
    if device.type == "cpu":
        instead = "blocked GEMM attention instead, what attn_implementation='astromer_blocked' runs (ask for it to " \
                  "silence this warning)"
    else:
        instead = "padded SDPA attention instead (windows padded to max_seqlen)"
    warnings.warn(
        f"astromer_varlen: the Triton varlen kernel cannot run on {device.type} {dtype} tensors "
        f"({_why_no_kernel(device, dtype)}); running {instead}",
        AttentionFallbackWarning,
        stacklevel=3,
    )


def _next_pow2(x: int, minimum: int) -> int:
    return max(minimum, 1 << max(int(x) - 1, 0).bit_length())


def _input_precision(dtype: torch.dtype) -> str:
    """fp32 dots honour ``torch.set_float32_matmul_precision`` (``"highest"`` -> IEEE fp32, else TF32)."""
    if dtype == torch.float32 and not INTERPRETING and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _acc_dtype(kernels: triton_varlen.TritonKernels, dtype: torch.dtype):
    return kernels.float64 if dtype == torch.float64 else kernels.float32


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Row statistics (lse, delta) are fp32, fp64 for fp64 inputs (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _interpreter_upcast(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The interpreter computes bf16 on raw bits (triton#4972); run it on fp32 copies instead."""
    if INTERPRETING:
        return [t.float() if t is not None and t.dtype == torch.bfloat16 else t for t in tensors]
    return list(tensors)


_TUNED: dict[tuple, dict] = {}


def _pick_config(kind: str, key: tuple, configs: list[dict], launch, autotune: bool) -> dict:
    """Benchmark ``configs`` once per ``key`` on the real arguments (CUDA only) and cache the fastest.

    A hand-rolled cache instead of ``triton.autotune``: after the first call a launch is a plain ``kernel[grid]``
    (the autotuner's per-call bookkeeping costs tens of microseconds, comparable to the kernel at L <= 200).
    """
    cache_key = (kind, *key)
    best = _TUNED.get(cache_key)
    if best is not None:
        return best
    if not autotune or len(configs) == 1 or os.environ.get("ASTROMER_KERNELS_AUTOTUNE", "1") == "0":
        best = configs[0]  # tuning off (e.g. in tests: every new shape bucket would cost 8 compilations)
    else:
        from triton.testing import do_bench

        timings = []
        for cfg in configs:
            try:
                timings.append((do_bench(lambda c=cfg: launch(c), warmup=5, rep=20, return_mode="median"), cfg))
            except Exception:  # noqa: BLE001 - a config the compiler rejects (e.g. out of shared memory) is skipped
                continue
        if not timings:
            raise RuntimeError(f"no {kind} kernel configuration compiled for {key}")
        best = min(timings, key=lambda t: t[0])[1]
    _TUNED[cache_key] = best
    return best


def _launch_fwd(q, k, v, cu_seqlens, max_seqlen, key_bias, scale):
    kernels = triton_varlen.load()
    total, heads, head_dim = q.shape
    num_seq = cu_seqlens.numel() - 1
    o = torch.empty((total, heads, v.shape[-1]), dtype=q.dtype, device=q.device)
    lse = torch.empty((heads, total), dtype=_stats_dtype(q.dtype), device=q.device)
    if total == 0 or num_seq == 0 or max_seqlen <= 0:
        lse.fill_(float("inf"))
        return o.zero_(), lse
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    bias = key_bias if key_bias is not None else lse  # dummy pointer, never read when HAS_BIAS is False
    bucket = _next_pow2(max_seqlen, 16)
    meta = dict(
        HAS_BIAS=key_bias is not None,
        BLOCK_D=_next_pow2(head_dim, 16),
        ACC=_acc_dtype(kernels, q.dtype),
        INPUT_PRECISION=_input_precision(q.dtype),
    )

    def launch(cfg):
        grid = (_cdiv(max_seqlen, cfg["BLOCK_M"]), num_seq * heads)
        kernels.fwd[grid](
            q, k, v, o, lse, bias, cu_seqlens,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1),
            lse.stride(0), heads, head_dim, scale * triton_varlen.LOG2E,
            **meta, **cfg,
        )

    configs = triton_varlen.FWD_CONFIGS if kernels.autotune else [dict(BLOCK_M=UNTUNED_CONFIG["BLOCK_M"],
                                                                       BLOCK_N=UNTUNED_CONFIG["BLOCK_N"])]
    launch(_pick_config("fwd", (q.dtype, head_dim, bucket, *meta.values()), configs, launch, kernels.autotune))
    return o, lse


def _launch_bwd(do, q, k, v, o, lse, cu_seqlens, max_seqlen, key_bias, scale):
    kernels = triton_varlen.load()
    total, heads, head_dim = q.shape
    num_seq = cu_seqlens.numel() - 1
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if total == 0 or num_seq == 0 or max_seqlen <= 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    do, q, k, v, o = (_unit_last_stride(t) for t in (do, q, k, v, o))
    block_d = _next_pow2(head_dim, 16)
    acc = _acc_dtype(kernels, q.dtype)
    delta = torch.empty((heads, total), dtype=_stats_dtype(q.dtype), device=q.device)
    block_t = 64
    kernels.bwd_preprocess[(_cdiv(total, block_t), heads)](
        o, do, delta, o.stride(0), o.stride(1), do.stride(0), do.stride(1), delta.stride(0),
        total, head_dim, BLOCK_T=block_t, BLOCK_D=block_d, ACC=acc,
    )
    bias = key_bias if key_bias is not None else lse
    bucket = _next_pow2(max_seqlen, 16)
    meta = dict(
        HAS_BIAS=key_bias is not None,
        BLOCK_D=block_d,
        ACC=acc,
        INPUT_PRECISION=_input_precision(q.dtype),
    )

    def launch(cfg):
        grid = (_cdiv(max_seqlen, cfg["BLOCK"]), num_seq * heads)
        kernels.bwd[grid](
            q, k, v, do, lse, delta, bias, cu_seqlens, dq, dk, dv,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0),
            do.stride(1), dq.stride(0), dq.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
            lse.stride(0), heads, head_dim, scale, scale * triton_varlen.LOG2E,
            **meta, **cfg,
        )

    configs = triton_varlen.BWD_CONFIGS if kernels.autotune else [dict(BLOCK=UNTUNED_CONFIG["BLOCK"])]
    launch(_pick_config("bwd", (q.dtype, head_dim, bucket, *meta.values()), configs, launch, kernels.autotune))
    return dq, dk, dv


def _require_kernel(q: torch.Tensor) -> None:
    if not kernel_available(q.device, q.dtype):
        raise RuntimeError(
            f"astromer::varlen_attn ops need Triton with a CUDA tensor (fp16/bf16/fp32) or TRITON_INTERPRET=1 with a "
            f"CPU tensor; got device={q.device}, dtype={q.dtype}: {_why_no_kernel(q.device, q.dtype)}. "
            "Use astromer_kernels.varlen_attention, which falls back to blocked attention (CPU) or padded SDPA."
        )


@torch.library.custom_op("astromer::varlen_attn_fwd", mutates_args=())
def varlen_attn_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    key_bias: torch.Tensor | None,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kernel: returns ``o`` ``(T, H, D)`` (contiguous, dtype of q) and ``lse`` ``(H, T)`` (fp32; fp64 for fp64 inputs)."""
    _require_kernel(q)
    out_dtype = q.dtype
    q, k, v, key_bias = _interpreter_upcast(q, k, v, key_bias)
    o, lse = _launch_fwd(q, k, v, cu_seqlens, max_seqlen, key_bias, softmax_scale)
    return o.to(out_dtype), lse


@varlen_attn_fwd.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, key_bias, softmax_scale):
    o = q.new_empty((q.shape[0], q.shape[1], v.shape[-1]))
    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=_stats_dtype(q.dtype))
    return o, lse


@torch.library.custom_op("astromer::varlen_attn_bwd", mutates_args=())
def varlen_attn_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    key_bias: torch.Tensor | None,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward kernel: ``(dq, dk, dv)`` with the shapes and dtypes of ``q, k, v`` (contiguous)."""
    _require_kernel(q)
    dtypes = (q.dtype, k.dtype, v.dtype)
    do, q, k, v, o, key_bias = _interpreter_upcast(do, q, k, v, o, key_bias)
    grads = _launch_bwd(do, q, k, v, o, lse, cu_seqlens, max_seqlen, key_bias, softmax_scale)
    return tuple(g.to(dt) for g, dt in zip(grads, dtypes))  # type: ignore[return-value]


@varlen_attn_bwd.register_fake
def _(do, q, k, v, o, lse, cu_seqlens, max_seqlen, key_bias, softmax_scale):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, key_bias, softmax_scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, cu_seqlens, key_bias)
    ctx.max_seqlen = max_seqlen
    ctx.softmax_scale = softmax_scale


def _backward(ctx, grad_o, grad_lse):
    q, k, v, o, lse, cu_seqlens, key_bias = ctx.saved_tensors
    if grad_o is None:
        return None, None, None, None, None, None, None
    dq, dk, dv = varlen_attn_bwd(grad_o, q, k, v, o, lse, cu_seqlens, ctx.max_seqlen, key_bias, ctx.softmax_scale)
    return dq, dk, dv, None, None, None, None


varlen_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


class _VarlenAttention(torch.autograd.Function):
    """Eager-mode autograd wrapper: the same launchers as the custom ops, without the dispatcher round trips
    (about 100 us of host time per forward+backward, as much as the kernels themselves at small sizes)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, key_bias, scale):
        out_dtype = q.dtype
        q32, k32, v32, kb = _interpreter_upcast(q, k, v, key_bias)
        o, lse = _launch_fwd(q32, k32, v32, cu_seqlens, max_seqlen, kb, scale)
        o = o.to(out_dtype)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens, key_bias)
        ctx.max_seqlen, ctx.scale = max_seqlen, scale
        return o

    @staticmethod
    def backward(ctx, grad_o):
        q, k, v, o, lse, cu_seqlens, key_bias = ctx.saved_tensors
        dtypes = (q.dtype, k.dtype, v.dtype)
        args = _interpreter_upcast(grad_o, q, k, v, o, key_bias)
        grads = _launch_bwd(*args[:5], lse, cu_seqlens, ctx.max_seqlen, args[5], ctx.scale)
        dq, dk, dv = (g.to(dt) for g, dt in zip(grads, dtypes))
        return dq, dk, dv, None, None, None, None


def _validate(q, k, v, cu_seqlens, max_seqlen, key_bias) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be (total_tokens, heads, head_dim); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape != k.shape or q.shape[:2] != v.shape[:2]:
        raise ValueError(f"q and k must have equal shapes and v the same (tokens, heads); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be a 1-D int32 tensor of length n+1 >= 1; got dtype {cu_seqlens.dtype}, "
                         f"shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {q.device}")
    if key_bias is not None:
        if key_bias.shape != (q.shape[0],) or not key_bias.is_floating_point():
            raise ValueError(f"key_bias must be a float tensor of shape (total_tokens,) = ({q.shape[0]},); got "
                             f"{key_bias.dtype} {tuple(key_bias.shape)}")
        if key_bias.device != q.device:
            raise ValueError(f"key_bias is on {key_bias.device} but q is on {q.device}")
    if not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"max_seqlen must be a non-negative int; got {max_seqlen!r}")
    # Value checks need the data on the host: only done for CPU tensors (no device sync) outside compilation.
    if cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():
        cu = cu_seqlens.long()
        lengths = cu[1:] - cu[:-1]
        if int(cu[0]) != 0 or bool((lengths < 0).any()) or int(cu[-1]) != q.shape[0]:
            raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end at total_tokens={q.shape[0]}; "
                             f"got {cu_seqlens.tolist()[:8]}{'...' if cu.numel() > 8 else ''} ending at {int(cu[-1])}")
        longest = int(lengths.max()) if lengths.numel() else 0
        if longest > max_seqlen:
            raise ValueError(f"max_seqlen={max_seqlen} is smaller than the longest sequence ({longest} tokens)")


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    key_bias: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Block-diagonal attention over packed variable-length sequences.

    Args:
        q, k, v: ``(T, H, D)`` packed tokens of all sequences (strided views, e.g. of one fused QKV projection
            output, are accepted as long as the last dimension has unit stride).
        cu_seqlens: int32 ``(n + 1,)``; sequence ``b`` is tokens ``cu_seqlens[b]:cu_seqlens[b+1]``. Zero-length
            sequences are allowed; ``cu_seqlens[0] == 0`` and ``cu_seqlens[-1] == T`` are required (checked for CPU
            tensors; on GPU tokens beyond ``cu_seqlens[-1]`` would be left unwritten).
        max_seqlen: an upper bound of the sequence lengths (a static value such as the window size 200 avoids
            recompilation).
        key_bias: optional float ``(T,)`` added to every score whose key is that token: ``-inf`` hides the key,
            finite values (Astromer 2 uses -1e9) bias it. Receives no gradient.
        softmax_scale: defaults to ``D ** -0.5``.

    Returns:
        ``(T, H, D)`` in the dtype of ``q``. A query row whose sequence has no visible key (every key ``-inf``)
        yields 0 and zero gradients. Differentiable in q, k, v; the backward is deterministic (no atomics).

    Runs the Triton kernel where it can (see :func:`kernel_available`); elsewhere a fallback computes the same
    attention after one :class:`AttentionFallbackWarning` per process and (device type, dtype): blocked GEMM
    attention on a CPU, padded SDPA on other devices (the module docstring lists the cases). The raw custom ops
    (``torch.ops.astromer.varlen_attn_fwd``/``_bwd``) have no fallback: they raise a ``RuntimeError`` that says why.
    """
    _validate(q, k, v, cu_seqlens, max_seqlen, key_bias)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if kernel_available(q.device, q.dtype):
        if torch.compiler.is_compiling():
            o, _ = varlen_attn_fwd(q, k, v, cu_seqlens, max_seqlen, key_bias, scale)
            return o
        return _VarlenAttention.apply(q, k, v, cu_seqlens, max_seqlen, key_bias, scale)
    _announce_fallback(q.device, q.dtype)
    if q.device.type == "cpu":
        return blocked_varlen_attention(q, k, v, cu_seqlens, max_seqlen, key_bias, scale)
    return varlen_attention_padded_sdpa(q, k, v, cu_seqlens, max_seqlen, key_bias, scale)
