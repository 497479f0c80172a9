"""Fused kernels for Astromer (imported as ``astromer_kernels``)."""

from .attention import varlen_attention

__all__ = ["varlen_attention"]
