"""Packed variable-length attention: Triton kernels, custom ops, references."""

from .ops import kernel_available, varlen_attention
from .reference import varlen_attention_padded_sdpa, varlen_attention_reference

__all__ = ["kernel_available", "varlen_attention", "varlen_attention_padded_sdpa", "varlen_attention_reference"]
