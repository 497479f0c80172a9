"""This project's attention code behind transformers' interfaces: two attention functions (the signature of
``AttentionInterface``) and one mask builder (the signature of ``AttentionMaskInterface``). The names they are
registered under live in :mod:`astromer_kernels.registry`, the one table of names.

* :func:`astromer_varlen_attention_forward` runs :func:`~astromer_kernels.attention.ops.varlen_attention`: the Triton
  kernel on CUDA (or on CPU under ``TRITON_INTERPRET=1``); elsewhere its documented fallback, announced once by an
  :class:`~astromer_kernels.attention.ops.AttentionFallbackWarning` (blocked GEMM attention on a CPU).
* :func:`astromer_blocked_attention_forward` runs blocked GEMM attention
  (:mod:`astromer_kernels.attention.blocked`), the fast CPU path in bf16, on any device.
* :func:`key_only_mask` gives both their mask: the compact ``(B, 1, 1, L)`` bool key mask, never an ``(L, L)`` one.

Two calling modes (query/key/value arrive as ``(B, H, L, D)``, the HF convention; the result is ``(B, L, H, D)``):

* **Packed** (``cu_seq_lens_q`` given, ``B == 1``, ``L == T``): the tokens of all windows back to back; the model
  passes ``cu_seq_lens_q`` int32 ``(n+1,)``, ``max_length_q`` and an optional ``key_bias`` float ``(T,)``. Attention
  stays within each window. ``key_bias``, when given, is the whole key mask (Astromer 2 gives hidden keys a finite
  -1e9, so a window whose keys are all hidden still gets finite outputs); otherwise the key mask hides keys with
  ``-inf``.
* **Padded** (no ``cu_seq_lens_q``): ``attention_mask`` is the key mask of :func:`key_only_mask`, a 4-D key-only mask
  ``(B, 1, Lq|1, L)`` (bool, or additive float of 0 and very negative values) or ``None``. Every position, padding
  included, becomes a token of its row's sequence and hidden keys get ``-inf``, so padded query rows still receive
  outputs (as in TensorFlow) and the result equals SDPA.

Masks that do more than hide keys (a bias that depends on the query, as Astromer 1's) are refused with an error that
names the implementations that take them (eager, sdpa).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .attention.blocked import blocked_attention, blocked_varlen_attention
from .attention.ops import varlen_attention

#: The names the registry gives these functions, for error messages.
_VARLEN = "astromer_varlen"
_BLOCKED = "astromer_blocked"


def key_only_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """The mask builder of this project's implementations: ``(B, 1, 1, kv_length)`` bool (True = attend) from the
    2-D padding mask ``attention_mask`` ``(B, <= kv_length)`` (missing positions at the end are hidden), or ``None``
    without one.

    ``mask_function`` is not evaluated (that would cost ``q_length x kv_length`` per window, tens of thousands of
    tokens squared for a packed batch): these implementations attend bidirectionally within a window, or within each
    packed sequence given by ``cu_seq_lens_q``, which is all the mask functions of a bidirectional encoder over packed
    windows express.
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size:
        raise ValueError(
            f"expected a 2-D padding mask (batch, keys) with batch={batch_size}; got {tuple(attention_mask.shape)}"
        )
    visible = attention_mask.to(torch.bool)
    missing = kv_offset + kv_length - visible.shape[-1]
    if missing > 0:
        visible = nn.functional.pad(visible, (0, missing), value=False)
    return visible[:, None, None, kv_offset:kv_offset + kv_length]


def _key_visibility(name: str, attention_mask: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """``(B, L)`` bool key visibility from a 4-D key-only mask ``(B, 1|H, Lq|1, L)`` (bool, or additive float)."""
    if attention_mask.dim() != 4 or attention_mask.shape[-1] != length:
        raise ValueError(
            f"{name}: expected a 4-D attention mask (B, 1, 1 or L, L) for L={length}; got "
            f"{tuple(attention_mask.shape)}"
        )
    allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask > torch.finfo(
        attention_mask.dtype).min / 2
    checking = not torch.compiler.is_compiling()
    if checking and allowed.shape[1:3] != (1, 1) and not bool((allowed == allowed[:, :1, :1, :]).all()):
        raise ValueError(
            f"{name} supports key-only masks (every query row sees the same keys), like Astromer 2's key mask; this "
            "mask differs between query rows (Astromer 1's query-key bias): use attn_implementation='eager' or 'sdpa'"
        )
    if checking and attention_mask.dtype != torch.bool:
        finite = attention_mask[allowed]
        if finite.numel() and bool((finite != 0).any()):
            raise ValueError(
                f"{name}: additive masks must be 0 (attend) or very negative (hide); this one adds other values to "
                "the scores (Astromer 1's query-key bias): use attn_implementation='eager' or 'sdpa'"
            )
    return allowed[:, 0, 0, :].expand(batch, length)


def _hiding_bias(visible: torch.Tensor) -> torch.Tensor:
    """float32 bias of the same shape as ``visible``: 0 for visible keys, ``-inf`` for hidden ones."""
    return torch.zeros(visible.shape, dtype=torch.float32, device=visible.device).masked_fill(~visible, float("-inf"))


def _padded_key_bias(name: str, attention_mask: torch.Tensor | None, key_bias: torch.Tensor | None, dropout: float,
                     batch: int, length: int) -> torch.Tensor | None:
    """Padded mode: ``(B, L)`` float32 key bias (0 visible, -inf hidden), or None without a mask."""
    _check_dropout(name, dropout)
    if key_bias is not None:
        raise ValueError(f"{name}: `key_bias` is only used with packed inputs (`cu_seq_lens_q`)")
    if attention_mask is None:
        return None
    return _hiding_bias(_key_visibility(name, attention_mask, batch, length))


def _packed_key_bias(name: str, attention_mask: torch.Tensor | None, key_bias: torch.Tensor | None, dropout: float,
                     batch: int, length: int) -> torch.Tensor | None:
    """Packed mode: ``(T,)`` key bias: ``key_bias`` when given, else 0/-inf from the key mask, else None."""
    _check_dropout(name, dropout)
    if batch != 1:
        raise ValueError(f"{name}: packed inputs need batch size 1, got {batch}")
    if attention_mask is not None and (attention_mask.dim() != 4 or attention_mask.shape[-2] != 1):
        raise ValueError(
            f"{name}: packed inputs take a key mask (1, 1, 1, T) or `key_bias`, not a dense attention mask of shape "
            f"{tuple(attention_mask.shape)}"
        )
    if key_bias is not None or attention_mask is None:
        return key_bias
    return _hiding_bias(_key_visibility(name, attention_mask, batch, length)[0])


def _check_dropout(name: str, dropout: float) -> None:
    if dropout:
        raise ValueError(f"{name} has no attention-probability dropout; got dropout={dropout}")


def _packed_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(1, H, T, D)`` -> ``(T, H, D)`` (a view)."""
    return x.squeeze(0).transpose(0, 1)


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
    """Attention for ``AstromerAttention`` through ``ALL_ATTENTION_FUNCTIONS``: the Triton varlen kernel, or its
    announced fallback where it cannot run (see :func:`~astromer_kernels.attention.ops.varlen_attention`).

    Args:
        module: the calling attention module (unused beyond the HF signature).
        query, key, value: ``(B, H, L, D)``; packed mode requires ``B == 1``.
        attention_mask: the key mask of :func:`key_only_mask` ``(B, 1, 1, L)``, a 4-D key-only mask or ``None``.
        dropout: must be 0 (Astromer applies dropout to the attention output, not to the probabilities).
        scaling: softmax scale, default ``D ** -0.5``.
        cu_seq_lens_q: packed mode: int32 ``(n+1,)`` window boundaries.
        max_length_q: packed mode: longest window (a static bound such as 200 avoids recompiles).
        key_bias: packed mode: float ``(T,)`` added to scores of each key (0 visible, -1e9 or -inf hidden).

    Returns:
        ``(attn_output (B, L, H, D), None)``; attention weights are never materialised.
    """
    batch, heads, length, _ = query.shape
    if cu_seq_lens_q is not None:
        bias = _packed_key_bias(_VARLEN, attention_mask, key_bias, dropout, batch, length)
        cu = cu_seq_lens_q.to(torch.int32)
        if max_length_q is not None:
            max_len = int(max_length_q)
        elif torch.compiler.is_compiling():
            max_len = length  # a valid bound that does not read the data
        else:
            max_len = int((cu[1:] - cu[:-1]).max())
        out = varlen_attention(*(_packed_tokens(t) for t in (query, key, value)), cu, max_len, key_bias=bias,
                               softmax_scale=scaling)
        return out.unsqueeze(0), None

    bias = _padded_key_bias(_VARLEN, attention_mask, key_bias, dropout, batch, length)
    tokens = batch * length
    cu = torch.arange(0, tokens + 1, length, dtype=torch.int32, device=query.device)
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
    """Blocked GEMM attention (:mod:`astromer_kernels.attention.blocked`) on any device; arguments and modes as
    :func:`astromer_varlen_attention_forward`. Padded mode leaves keys hidden with ``-inf`` out of its GEMMs.

    Returns:
        ``(attn_output (B, L, H, D), None)``.
    """
    batch, _, length, _ = query.shape
    if cu_seq_lens_q is not None:
        bias = _packed_key_bias(_BLOCKED, attention_mask, key_bias, dropout, batch, length)
        out = blocked_varlen_attention(*(_packed_tokens(t) for t in (query, key, value)), cu_seq_lens_q,
                                       int(max_length_q or length), key_bias=bias, softmax_scale=scaling)
        return out.unsqueeze(0), None
    bias = _padded_key_bias(_BLOCKED, attention_mask, key_bias, dropout, batch, length)
    return blocked_attention(query, key, value, key_bias=bias, softmax_scale=scaling), None
