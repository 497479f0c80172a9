"""Pure-PyTorch references for packed variable-length attention (same semantics as the Triton kernels).

Two implementations, both differentiable through ordinary autograd:

* :func:`varlen_attention_reference` loops over sequences in any dtype (use float64 as the test oracle).
* :func:`varlen_attention_padded_sdpa` scatters the packed tokens into a padded ``(n, L_max)`` batch, runs
  ``scaled_dot_product_attention`` with an additive mask and gathers the result back. It is the runtime fallback
  when Triton or a GPU is unavailable.

Semantics (shared with the kernels): for a query ``i`` of sequence ``b``,
``o_i = softmax_j(scale * q_i . k_j + key_bias_j) v_j`` over the keys ``j`` of the same sequence; a query whose every
key has bias ``-inf`` (no visible key) gets ``o_i = 0`` and receives/propagates zero gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sequence_ids(cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """Map each packed token to its sequence: ``(T,)`` int64 ids from ``cu_seqlens`` ``(n+1,)``."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths,
                                  output_size=total_tokens)
    return ids


def _masked_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Attention of ``(H, Lq, D)`` queries over ``(H, Lk, D)`` keys with an additive key bias ``(Lk,)``.

    Rows whose keys are all ``-inf`` return 0 with zero gradient (no NaN).
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    row_max = scores.amax(dim=-1, keepdim=True)
    visible = torch.isfinite(row_max)
    safe_scores = torch.where(visible, scores, torch.zeros_like(scores))
    safe_max = torch.where(visible, row_max, torch.zeros_like(row_max)).detach()
    weights = torch.exp(safe_scores - safe_max)
    weights = torch.where(visible & (scores > float("-inf")), weights, torch.zeros_like(weights))
    norm = weights.sum(dim=-1, keepdim=True)
    weights = weights / torch.where(visible, norm, torch.ones_like(norm))
    return torch.matmul(weights, v)


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    key_bias: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Loop-over-sequences attention in the dtype of the inputs.

    Args:
        q, k, v: ``(T, H, D)``.
        cu_seqlens: int ``(n + 1,)`` cumulative sequence lengths (``cu[0] == 0``, ``cu[-1] <= T``).
        key_bias: ``(T,)`` additive bias per key token, or ``None``.
        softmax_scale: defaults to ``D ** -0.5``.

    Returns:
        ``(T, H, D)``; tokens beyond ``cu[-1]`` (belonging to no sequence) are 0.
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    bounds = [int(x) for x in cu_seqlens.tolist()]
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        bias = key_bias[start:end] if key_bias is not None else None
        pieces.append(_masked_softmax_attention(qs, ks, vs, bias, scale).transpose(0, 1))
    tail = q.shape[0] - bounds[-1]
    pieces.append(q.new_zeros((tail, q.shape[1], v.shape[-1])))
    return torch.cat(pieces, dim=0)


def key_bias_in_dtype(key_bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``key_bias`` cast to ``dtype`` with finite values clamped to half its range (Astromer's -1e9 would overflow
    fp16 to -inf); -inf stays -inf."""
    key_bias = key_bias.to(torch.promote_types(key_bias.dtype, dtype))
    floor = torch.finfo(dtype).min / 2
    return torch.where(torch.isfinite(key_bias), key_bias.clamp(min=floor), key_bias).to(dtype)


def varlen_attention_padded_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    key_bias: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Fallback: scatter to a padded batch, SDPA with an additive mask, gather back. Shapes as the reference.

    The padded keys get ``-inf``; rows with no visible key are forced to 0 (SDPA backends disagree on them).
    """
    total, heads, head_dim = q.shape
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    num_seq = cu_seqlens.numel() - 1
    cu = cu_seqlens.long()
    used = int(cu[-1])
    seq_id = sequence_ids(cu_seqlens, used)
    pos = torch.arange(used, device=q.device) - cu[seq_id]
    width = max(int(max_seqlen), 1)

    def to_padded(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((num_seq, width, heads, x.shape[-1]))
        out[seq_id, pos] = x[:used]
        return out.transpose(1, 2)  # (n, H, L, D)

    bias_dtype = torch.promote_types(q.dtype, torch.float32)
    key_add = torch.full((num_seq, width), float("-inf"), dtype=bias_dtype, device=q.device)
    key_add[seq_id, pos] = key_bias[:used].to(bias_dtype) if key_bias is not None else 0.0
    visible = torch.isfinite(key_add).any(dim=1)  # (n,) sequence has at least one visible key
    # Sequences without any visible key: attend uniformly (finite) and zero the result afterwards.
    key_add = torch.where(visible[:, None], key_add, torch.zeros_like(key_add))
    mask = key_bias_in_dtype(key_add, q.dtype)[:, None, None, :]
    out = F.scaled_dot_product_attention(to_padded(q), to_padded(k), to_padded(v), attn_mask=mask, scale=scale)
    out = out.transpose(1, 2)[seq_id, pos]  # (used, H, D)
    out = torch.where(visible[seq_id][:, None, None], out, torch.zeros_like(out))
    if used < total:
        out = torch.cat([out, out.new_zeros((total - used, heads, v.shape[-1]))], dim=0)
    return out
