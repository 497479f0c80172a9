"""Packed variable-length attention: Triton kernels, custom ops, references; blocked GEMM attention for CPUs."""

from .blocked import blocked_attention, blocked_varlen_attention
from .ops import AttentionFallbackWarning, kernel_available, varlen_attention
from .reference import varlen_attention_padded_sdpa, varlen_attention_reference

__all__ = [
    "AttentionFallbackWarning",
    "blocked_attention",
    "blocked_varlen_attention",
    "kernel_available",
    "varlen_attention",
    "varlen_attention_padded_sdpa",
    "varlen_attention_reference",
]
