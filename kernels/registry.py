"""The one place that maps an attention-implementation name to this project's code."""

from __future__ import annotations

from .hf_attention import register_astromer_varlen

__all__ = ["register_attention_implementations"]


def register_attention_implementations() -> None:
    """Register ``"astromer_varlen"`` and ``"astromer_blocked"`` with transformers' attention and mask interfaces."""
    register_astromer_varlen()
