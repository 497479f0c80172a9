"""Fused kernels for Astromer (imported as ``astromer_kernels``)."""

from .attention import AttentionFallbackWarning, blocked_attention, varlen_attention
from .cpu_linear import use_onednn_linears

__all__ = ["AttentionFallbackWarning", "blocked_attention", "use_onednn_linears", "varlen_attention"]
