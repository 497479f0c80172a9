"""Fused kernels for Astromer (imported as ``astromer_kernels``)."""

from .attention import blocked_attention, varlen_attention

__all__ = ["blocked_attention", "varlen_attention"]
