"""The one place that maps an attention-implementation name to this project's code."""

from __future__ import annotations

from .hf_attention import BLOCKED_IMPLEMENTATION_NAME, IMPLEMENTATION_NAME, register_astromer_varlen

__all__ = ["packed_attention_implementations", "register_attention_implementations"]


def register_attention_implementations() -> None:
    """Register ``"astromer_varlen"`` and ``"astromer_blocked"`` with transformers' attention and mask interfaces."""
    register_astromer_varlen()


def packed_attention_implementations() -> tuple[str, ...]:
    """The implementations that attend within packed sequences (``cu_seqlens``) without building a dense mask."""
    return (IMPLEMENTATION_NAME, BLOCKED_IMPLEMENTATION_NAME)
