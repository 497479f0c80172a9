"""Blocked softmax attention built from batched GEMMs: the fast CPU path for bf16/fp16 training.

On CPUs, PyTorch's SDPA (flash) kernel runs bf16 no faster than fp32, while bf16 GEMMs run about 4x faster than fp32
ones. This path computes attention a few windows at a time, so the ``(block, H, L, L)`` score tensor stays in cache,
with one GEMM for the scores (scale and per-key bias fused through ``baddbmm``), one softmax (fp32 accumulation
inside, output in the input dtype) and one GEMM for the values. The backward recomputes the probabilities block by
block instead of storing them, so memory matches a fused kernel: O(B·L) besides the inputs.

Numerics: scores and probabilities are rounded to the input dtype between the GEMMs, as in eager attention under
autocast; in fp32/fp64 the result equals SDPA to rounding.

Entry points:

* :func:`blocked_attention` -- padded ``(B, H, L, D)`` windows with a per-key additive bias ``(B, L)``;
* :func:`blocked_varlen_attention` -- packed ``(T, H, D)`` tokens with ``cu_seqlens``: windows are sorted by length
  and grouped, and each group is padded only to its own longest window.
"""

from __future__ import annotations

import math

import torch

#: Score elements per head held at once: 8 windows of 200 observations (2.5 MB of bf16 scores for 4 heads).
SCORE_BUDGET_PER_HEAD = 8 * 200 * 200


def _windows_per_block(length: int) -> int:
    return max(1, SCORE_BUDGET_PER_HEAD // max(1, length * length))


class _BlockedSoftmaxAttention(torch.autograd.Function):
    """q, k, v ``(B, H, L, D)`` (any strides), bias ``(B, 1, L)`` in q's dtype -> output ``(B, L, H, D)``."""

    @staticmethod
    def forward(ctx, query, key, value, bias, scale: float, block: int):
        batch, heads, length, head_dim = query.shape
        out = query.new_empty(batch, length, heads, value.shape[-1])
        for start in range(0, batch, block):
            rows = slice(start, min(start + block, batch))
            q, k, v = (_flat(t[rows]) for t in (query, key, value))
            probabilities = torch.softmax(
                torch.baddbmm(_per_head(bias[rows], heads), q, k.transpose(1, 2), alpha=scale), -1
            )
            attended = torch.bmm(probabilities, v)
            out[rows] = attended.view(-1, heads, length, v.shape[-1]).transpose(1, 2)
        ctx.save_for_backward(query, key, value, bias)
        ctx.scale, ctx.block = scale, block
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, bias = ctx.saved_tensors
        scale, block = ctx.scale, ctx.block
        batch, heads, length, head_dim = query.shape
        # Gradients are written in (B, L, H, D) memory order, which is what the projections' backward wants.
        grads = [torch.empty(batch, length, heads, t.shape[-1], dtype=t.dtype, device=t.device)
                 for t in (query, key, value)]
        for start in range(0, batch, block):
            rows = slice(start, min(start + block, batch))
            q, k, v = (_flat(t[rows]) for t in (query, key, value))
            grad_o = _flat(grad_out[rows].transpose(1, 2))
            probabilities = torch.softmax(
                torch.baddbmm(_per_head(bias[rows], heads), q, k.transpose(1, 2), alpha=scale), -1
            )
            grad_v = torch.bmm(probabilities.transpose(1, 2), grad_o)
            grad_p = torch.bmm(grad_o, v.transpose(1, 2))
            grad_s = torch._softmax_backward_data(grad_p, probabilities, -1, probabilities.dtype)
            grad_q = torch.bmm(grad_s, k).mul_(scale)
            grad_k = torch.bmm(grad_s.transpose(1, 2), q).mul_(scale)
            for grad, part in zip(grads, (grad_q, grad_k, grad_v)):
                grad[rows] = part.view(-1, heads, length, part.shape[-1]).transpose(1, 2)
        return (*(g.transpose(1, 2) for g in grads), None, None, None)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``(b, H, L, D)`` -> contiguous ``(b*H, L, D)``."""
    return x.reshape(-1, x.shape[-2], x.shape[-1])


def _per_head(bias: torch.Tensor, heads: int) -> torch.Tensor:
    """``(b, 1, L)`` -> ``(b*H, 1, L)`` broadcastable over query rows (a view where possible)."""
    return bias.unsqueeze(1).expand(-1, heads, -1, -1).reshape(-1, 1, bias.shape[-1])


def _bias_in(dtype: torch.dtype, key_bias: torch.Tensor) -> torch.Tensor:
    """Finite biases are clamped to half the dtype's range (-1e9 overflows fp16); -inf stays -inf."""
    key_bias = key_bias.to(torch.promote_types(key_bias.dtype, dtype))
    floor = torch.finfo(dtype).min / 2
    finite = torch.isfinite(key_bias)
    return torch.where(finite, key_bias.clamp(min=floor), key_bias).to(dtype)


def blocked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    windows_per_block: int | None = None,
) -> torch.Tensor:
    """Softmax attention over padded windows, computed a block of windows at a time.

    Args:
        query, key, value: ``(B, H, L, D)`` (any strides, e.g. transposed views of a projection output).
        key_bias: optional float ``(B, L)`` added to every score whose key is that position: ``-inf`` hides the key,
            finite values (Astromer 2 uses -1e9) bias it. Receives no gradient.
        softmax_scale: defaults to ``D ** -0.5``.
        windows_per_block: windows per block; by default as many as keep ``block·L²`` scores per head within
            :data:`SCORE_BUDGET_PER_HEAD`.

    Returns:
        ``(B, L, H, D)`` (the layout attention modules reshape to ``(B, L, H·D)``). A window whose keys are all
        ``-inf`` yields 0 and passes no gradient.
    """
    if query.dim() != 4 or key.shape != query.shape or value.shape[:-1] != query.shape[:-1]:
        raise ValueError(
            f"blocked_attention expects query/key/value (B, H, L, D) with equal B, H, L (and D for query/key); got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    batch, _, length, head_dim = query.shape
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    block = int(windows_per_block) if windows_per_block else _windows_per_block(length)
    if key_bias is None:
        bias = query.new_zeros(batch, 1, length)
        return _BlockedSoftmaxAttention.apply(query, key, value, bias, scale, block)
    if key_bias.shape != (batch, length):
        raise ValueError(f"key_bias must be (B, L) = {(batch, length)}, got {tuple(key_bias.shape)}")
    visible = torch.isfinite(key_bias).any(dim=1)
    all_visible = bool(visible.all())
    if not all_visible:  # no finite key: attend uniformly (no NaN), then zero the output and its gradient
        key_bias = torch.where(visible[:, None], key_bias, torch.zeros_like(key_bias))
    bias = _bias_in(query.dtype, key_bias).unsqueeze(1)
    out = _BlockedSoftmaxAttention.apply(query, key, value, bias, scale, block)
    return out if all_visible else out * visible[:, None, None, None].to(out.dtype)


def blocked_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    key_bias: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Block-diagonal attention over packed sequences; same arguments and result as
    :func:`~astromer_kernels.varlen_attention` (``(T, H, D)`` in, ``(T, H, D)`` out, tokens after
    ``cu_seqlens[-1]`` get 0, sequences without a visible key get 0).

    Sequences are sorted by length and grouped so each group's padded scores fit the per-block budget; a group is
    padded only to its own longest sequence, so short windows cost little.
    """
    del max_seqlen  # the groups' own lengths are used
    total, heads, _ = q.shape
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long().cpu()
    starts = cu_seqlens[:-1].long().cpu()
    order = torch.argsort(lengths, descending=True, stable=True)
    order = order[lengths[order] > 0]
    bias_all = key_bias if key_bias is not None else torch.zeros(total, dtype=torch.float32, device=q.device)
    pieces, token_index = [], []
    position = 0
    while position < order.numel():
        width = int(lengths[order[position]])
        count = min(_windows_per_block(width), order.numel() - position)
        members = order[position:position + count]
        position += count
        offsets = torch.arange(width)
        index = starts[members, None] + offsets  # (n, width); positions past a sequence's end are padding
        real = offsets[None, :] < lengths[members, None]
        index = torch.where(real, index, starts[members, None]).to(q.device)  # any in-range token; hidden below
        flat = index.reshape(-1)
        gathered = [t.index_select(0, flat).view(count, width, heads, -1).transpose(1, 2) for t in (q, k, v)]
        bias = bias_all.index_select(0, flat).view(count, width)
        bias = bias.masked_fill(~real.to(q.device), float("-inf"))
        out = blocked_attention(*gathered, key_bias=bias, softmax_scale=softmax_scale, windows_per_block=count)
        real_flat = real.reshape(-1).to(q.device)
        pieces.append(out.reshape(-1, heads, out.shape[-1])[real_flat])
        token_index.append(flat[real_flat])
    used = int(cu_seqlens[-1])
    if not pieces:
        return q.new_zeros(total, heads, v.shape[-1])
    packed = torch.cat(pieces)
    inverse = torch.empty(used, dtype=torch.long, device=q.device)
    inverse[torch.cat(token_index)] = torch.arange(used, device=q.device)
    out = packed.index_select(0, inverse)
    if used < total:
        out = torch.cat([out, out.new_zeros(total - used, heads, v.shape[-1])])
    return out
