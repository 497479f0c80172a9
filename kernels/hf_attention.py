"""Earlier home of the attention functions, kept so that existing imports keep working: the functions live in
:mod:`astromer_kernels.hf_functions` and their registration in :mod:`astromer_kernels.registry`
(``register_astromer_varlen`` is :func:`~astromer_kernels.registry.register_attention_implementations`)."""

from .hf_functions import astromer_blocked_attention_forward, astromer_varlen_attention_forward
from .registry import register_attention_implementations as register_astromer_varlen

__all__ = ["astromer_blocked_attention_forward", "astromer_varlen_attention_forward", "register_astromer_varlen"]
