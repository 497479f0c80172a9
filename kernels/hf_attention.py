"""``attn_implementation="astromer_varlen"`` (the varlen kernel) and ``"astromer_blocked"`` (blocked GEMM attention,
the fast CPU path in bf16) behind transformers' attention interface.

Two calling modes (query/key/value arrive as ``(B, H, L, D)``, the HF convention; the result is ``(B, L, H, D)``):

* **Packed** (``cu_seq_lens_q`` given, ``B == 1``, ``L == T``): the tokens of all windows back to back; the model
  passes ``cu_seq_lens_q`` int32 ``(n+1,)``, ``max_length_q`` and an optional ``key_bias`` float ``(T,)``.
* **Padded** (no ``cu_seq_lens_q``): ``attention_mask`` is the 4-D bool mask built by ``sdpa_mask`` (True =
  attend; key-only masks) or ``None``. Every position, padding included, becomes a token of its row's sequence and
  hidden keys get ``-inf``, so padded query rows still receive outputs (as in TensorFlow) and the result equals SDPA.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention.blocked import blocked_attention, blocked_varlen_attention
from .attention.ops import varlen_attention

IMPLEMENTATION_NAME = "astromer_varlen"
BLOCKED_IMPLEMENTATION_NAME = "astromer_blocked"


def _key_visibility(
    attention_mask: torch.Tensor, batch: int, length: int, name: str = IMPLEMENTATION_NAME
) -> torch.Tensor:
    """``(B, L)`` bool key visibility from a 4-D key-only mask ``(B, 1|H, Lq|1, L)`` (bool, or additive float)."""
    if attention_mask.dim() != 4 or attention_mask.shape[-1] != length:
        raise ValueError(
            f"{name}: expected a 4-D attention mask (B, 1, L, L) for L={length}; got "
            f"{tuple(attention_mask.shape)}"
        )
    allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask > torch.finfo(
        attention_mask.dtype).min / 2
    if not torch.compiler.is_compiling() and not bool((allowed == allowed[:, :1, :1, :]).all()):
        raise ValueError(
            f"{name} supports key-only masks (every query row sees the same keys), like Astromer 2's "
            "key mask; this mask differs between query rows (Astromer 1's query-key bias needs eager or sdpa)"
        )
    if attention_mask.dtype != torch.bool and not torch.compiler.is_compiling():
        finite = attention_mask[allowed]
        if finite.numel() and bool((finite != 0).any()):
            raise ValueError(f"{name}: additive masks must be 0 (attend) or very negative (hide)")
    return allowed[:, 0, 0, :].expand(batch, length)


def _check_arguments(name: str, batch: int, dropout: float, attention_mask, cu_seq_lens_q, key_bias) -> None:
    """The argument rules both implementations share (packed: B == 1 and ``key_bias``; padded: a dense mask)."""
    if dropout:
        raise ValueError(f"{name} has no attention-probability dropout; got dropout={dropout}")
    if cu_seq_lens_q is not None:
        if batch != 1:
            raise ValueError(f"{name}: packed inputs need batch size 1, got {batch}")
        if attention_mask is not None:
            raise ValueError(f"{name}: packed inputs take `key_bias`, not a dense attention_mask")
    elif key_bias is not None:
        raise ValueError(f"{name}: `key_bias` is only used with packed inputs (`cu_seq_lens_q`)")


def _padded_key_bias(name: str, attention_mask: torch.Tensor | None, batch: int, length: int,
                     device: torch.device) -> torch.Tensor | None:
    """``(B, L)`` float32 key bias (0 visible, -inf hidden) from a key-only 4-D mask, or None without a mask."""
    if attention_mask is None:
        return None
    visible = _key_visibility(attention_mask, batch, length, name)
    return torch.zeros((batch, length), dtype=torch.float32, device=device).masked_fill(~visible, float("-inf"))


def astromer_varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    key_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention for ``AstromerAttention`` through ``ALL_ATTENTION_FUNCTIONS``.

    Args:
        module: the calling attention module (unused beyond the HF signature).
        query, key, value: ``(B, H, L, D)``; packed mode requires ``B == 1``.
        attention_mask: padded mode only: 4-D bool ``(B, 1, L, L)`` key-only mask or ``None``.
        dropout: must be 0 (Astromer applies dropout to the attention output, not to the probabilities).
        scaling: softmax scale, default ``D ** -0.5``.
        cu_seq_lens_q: packed mode: int32 ``(n+1,)`` window boundaries.
        max_length_q: packed mode: longest window (a static bound such as 200 avoids recompiles).
        key_bias: packed mode: float ``(T,)`` added to scores of each key (0 visible, -1e9 or -inf hidden).

    Returns:
        ``(attn_output (B, L, H, D), None)``; attention weights are never materialised.
    """
    batch, heads, length, _ = query.shape
    _check_arguments(IMPLEMENTATION_NAME, batch, dropout, attention_mask, cu_seq_lens_q, key_bias)
    if cu_seq_lens_q is not None:
        cu = cu_seq_lens_q.to(torch.int32)
        max_len = int(max_length_q) if max_length_q is not None else int((cu[1:] - cu[:-1]).max())
        out = varlen_attention(
            *(t.squeeze(0).transpose(0, 1) for t in (query, key, value)), cu, max_len,
            key_bias=key_bias, softmax_scale=scaling,
        )
        return out.unsqueeze(0), None

    tokens = batch * length
    cu = torch.arange(0, tokens + 1, length, dtype=torch.int32, device=query.device)
    bias = _padded_key_bias(IMPLEMENTATION_NAME, attention_mask, batch, length, query.device)
    if bias is not None:
        bias = bias.reshape(tokens)
    q, k, v = (t.transpose(1, 2).reshape(tokens, heads, t.shape[-1]) for t in (query, key, value))
    out = varlen_attention(q, k, v, cu, length, key_bias=bias, softmax_scale=scaling)
    return out.view(batch, length, heads, value.shape[-1]), None


def astromer_blocked_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    key_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Blocked GEMM attention (:mod:`astromer_kernels.attention.blocked`); arguments and modes as
    :func:`astromer_varlen_attention_forward` (padded with a key-only mask, or packed with ``cu_seq_lens_q``).

    Returns:
        ``(attn_output (B, L, H, D), None)``.
    """
    name = BLOCKED_IMPLEMENTATION_NAME
    batch, _, length, _ = query.shape
    _check_arguments(name, batch, dropout, attention_mask, cu_seq_lens_q, key_bias)
    if cu_seq_lens_q is not None:
        out = blocked_varlen_attention(
            *(t.squeeze(0).transpose(0, 1) for t in (query, key, value)), cu_seq_lens_q,
            int(max_length_q or length), key_bias=key_bias, softmax_scale=scaling,
        )
        return out.unsqueeze(0), None
    bias = _padded_key_bias(name, attention_mask, batch, length, query.device)
    return blocked_attention(query, key, value, key_bias=bias, softmax_scale=scaling), None


def register_astromer_varlen() -> None:
    """Register ``"astromer_varlen"`` and ``"astromer_blocked"`` with transformers' attention AND mask interfaces.

    The mask entry matters: without it ``create_bidirectional_mask`` returns ``None`` for unknown implementations and
    padding would be silently attended (hf_integration.md, pitfall 1). ``sdpa_mask`` gives the 4-D bool mask that the
    padded mode above consumes.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION_NAME, astromer_varlen_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION_NAME, sdpa_mask)
    AttentionInterface.register(BLOCKED_IMPLEMENTATION_NAME, astromer_blocked_attention_forward)
    AttentionMaskInterface.register(BLOCKED_IMPLEMENTATION_NAME, sdpa_mask)
