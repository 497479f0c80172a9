"""Fused kernels for Astromer (imported as ``astromer_kernels``)."""

from .attention import blocked_attention, varlen_attention
from .cpu_linear import use_onednn_linears

__all__ = ["blocked_attention", "use_onednn_linears", "varlen_attention"]
