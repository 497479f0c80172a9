"""The one place that maps an attention-implementation name to this project's code.

Each name gets an attention function (``AttentionInterface``) and a mask builder (``AttentionMaskInterface``). The
mask entry is required: for a name it does not know, ``create_bidirectional_mask`` returns ``None`` and padding would
be attended silently. Importing this module registers nothing and does not import Triton (the varlen kernel imports
it when it first runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .hf_functions import astromer_blocked_attention_forward, astromer_varlen_attention_forward, key_only_mask

__all__ = ["ATTENTION_IMPLEMENTATIONS", "AttentionImplementation", "packed_attention_implementations",
           "register_attention_implementations"]


@dataclass(frozen=True)
class AttentionImplementation:
    """A name for ``attn_implementation``, its attention function and its mask builder."""

    name: str
    attention: Callable
    mask: Callable


#: Every implementation this project provides. All of them take packed inputs (``cu_seq_lens_q``, ``max_length_q``,
#: ``key_bias``) and a compact ``(B, 1, 1, L)`` key mask, never a dense ``(L, L)`` one.
ATTENTION_IMPLEMENTATIONS: tuple[AttentionImplementation, ...] = (
    # The Triton varlen kernel; where it cannot run, an announced fallback (blocked attention on a CPU).
    AttentionImplementation("astromer_varlen", astromer_varlen_attention_forward, key_only_mask),
    # Blocked GEMM attention, on any device: the fast CPU path (bf16 autocast especially).
    AttentionImplementation("astromer_blocked", astromer_blocked_attention_forward, key_only_mask),
)


def register_attention_implementations() -> None:
    """Register every name of :data:`ATTENTION_IMPLEMENTATIONS` with transformers' attention and mask interfaces
    (idempotent)."""
    for implementation in ATTENTION_IMPLEMENTATIONS:
        AttentionInterface.register(implementation.name, implementation.attention)
        AttentionMaskInterface.register(implementation.name, implementation.mask)


def packed_attention_implementations() -> tuple[str, ...]:
    """The implementations that attend within packed sequences (``cu_seqlens``) without building a dense mask."""
    return tuple(implementation.name for implementation in ATTENTION_IMPLEMENTATIONS)
