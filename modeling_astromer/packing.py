"""Pack Astromer windows into one token stream with ``cu_seqlens`` (the packed / varlen model path).

Packing removes padding from every layer (projections, layer norms, feed-forward and attention alike): the windows of
a batch are laid back to back as ``(1, T)`` tensors, and ``cu_seqlens`` int32 ``(n + 1,)`` marks their boundaries.
Use it with ``attn_implementation="astromer_varlen"`` (the fused block-diagonal kernel).

Per-token fields are packed; per-window fields (e.g. classification ``labels`` of shape ``(B,)``) are kept as
``(n,)`` in packed-sequence order. ``sequence_index`` ``(n,)`` says which input window each packed sequence is
(``-1`` for budget padding and zero-length fillers), so results can be returned in input order.

With ``pad_to_budget=True`` every batch has exactly ``max_tokens`` tokens and, with ``max_sequences``, exactly
``max_sequences`` sequences: the leftover tokens form padding sequences of at most ``max_seqlen`` tokens
(``attention_mask = 0``, ``loss_mask = 0``, values 0) and zero-length sequences fill ``cu_seqlens`` to its capacity.
All shapes are then static (no recompilation under ``torch.compile``, CUDA-graph friendly).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .feature_extraction_astromer import pad_windows, padding_mask
from .masking import as_numeric_array

__all__ = ["AstromerPackingCollator", "token_budget_batches"]

#: Fields that live on tokens and are packed. Any other array field must be per window (scalar per window).
TOKEN_FIELDS = ("magnitudes", "times", "errors", "labels", "mask_positions", "loss_mask", "loss_weights",
                "attention_mask")
_INT_TOKEN_FIELDS = ("mask_positions", "attention_mask")


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_sequences: int | None = None) -> list[list[int]]:
    """Greedy, order-preserving grouping of windows into batches of at most ``max_tokens`` tokens.

    Args:
        lengths: number of real observations of each window.
        max_tokens: token budget per batch.
        max_sequences: optional cap on windows per batch.

    Returns:
        Lists of window indices (use as a ``batch_sampler``).
    """
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, length in enumerate(lengths):
        if length > max_tokens:
            raise ValueError(f"window {index} has {length} observations, more than max_tokens={max_tokens}")
        full = max_sequences is not None and len(current) >= max_sequences
        if current and (used + length > max_tokens or full):
            batches.append(current)
            current, used = [], 0
        current.append(index)
        used += length
    if current:
        batches.append(current)
    return batches


class AstromerPackingCollator:
    """Collate windows into a packed batch.

    Args:
        max_tokens: token budget of a batch; a batch with more real tokens raises (group windows with
            :func:`token_budget_batches`). ``None``: no budget.
        max_seqlen: static bound on window length passed to the kernel (the window size, 200).
        pad_to_budget: pad every batch to exactly ``max_tokens`` tokens (static shapes).
        max_sequences: with ``pad_to_budget``, pad ``cu_seqlens`` to ``max_sequences + 1`` entries with zero-length
            sequences (static ``n``); must leave room for the padding sequences.
        base_collator: optional collator applied first that returns a padded ``(B, L)`` batch with
            ``attention_mask``; its output is then packed. To pack probed windows without padding them first,
            call :meth:`pack` with ``AstromerMaskingCollator.token_fields`` instead (as
            ``astromer_train.data.DeterministicMaskingCollator(packed=True)`` does).
        filler_label: value of integer per-window fields (classification labels) for filler sequences; -100 is
            ignored by ``cross_entropy``.

    ``__call__(features)`` takes either a list of per-window mappings (1-D unpadded arrays ``magnitudes``, ``times``,
    optional ``errors``, ``labels``, ``mask_positions``, ``loss_mask``, ``loss_weights``; padded ones with an
    ``attention_mask`` are fine too) or one mapping of padded ``(B, L)`` arrays with ``attention_mask`` (real points
    first in each row). It returns torch tensors: every token field as ``(1, T)`` (float32, int64 for
    ``mask_positions``/``attention_mask``), per-window fields as ``(n,)``, ``cu_seqlens`` int32 ``(n+1,)``,
    ``max_seqlen`` (int) and ``sequence_index`` int64 ``(n,)``. :meth:`pack` does the same for windows that are
    already laid back to back.
    """

    def __init__(self, max_tokens: int | None = None, max_seqlen: int = 200, pad_to_budget: bool = False,
                 max_sequences: int | None = None, base_collator: Callable[[Any], Mapping[str, Any]] | None = None,
                 filler_label: int = -100) -> None:
        if max_tokens is not None and int(max_tokens) < 1:
            raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
        if int(max_seqlen) < 1:
            raise ValueError(f"max_seqlen must be a positive integer, got {max_seqlen!r}")
        if pad_to_budget and max_tokens is None:
            raise ValueError("pad_to_budget=True needs max_tokens")
        if max_sequences is not None and not pad_to_budget:
            raise ValueError("max_sequences only applies with pad_to_budget=True")
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.max_seqlen = int(max_seqlen)
        self.pad_to_budget = bool(pad_to_budget)
        self.max_sequences = None if max_sequences is None else int(max_sequences)
        self.base_collator = base_collator
        self.filler_label = int(filler_label)

    # ------------------------------------------------------------------------------------------------ input
    def _windows(self, features: Any) -> tuple[list[dict[str, np.ndarray]], dict[str, list[np.ndarray]]]:
        """Split the input into per-window token arrays (real points only) and per-window values."""
        if self.base_collator is not None:
            features = self.base_collator(features)
        if isinstance(features, Mapping):
            return self._from_padded(features)
        if isinstance(features, Sequence) and not isinstance(features, (str, bytes)):
            return self._from_list(features)
        raise TypeError(f"expected a list of window mappings or a mapping of padded arrays, got {type(features)}")

    def _from_padded(self, batch: Mapping[str, Any]):
        if "magnitudes" not in batch:
            raise ValueError("padded batch has no 'magnitudes' field")
        magnitudes = as_numeric_array(batch["magnitudes"], "magnitudes", "padded batch")
        if magnitudes.ndim == 3 and magnitudes.shape[-1] == 1:
            magnitudes = magnitudes[..., 0]
        if magnitudes.ndim != 2:
            raise ValueError(f"padded batch: 'magnitudes' must be (B, L), got shape {magnitudes.shape}")
        n_windows, width = magnitudes.shape
        mask = (as_numeric_array(batch["attention_mask"], "attention_mask", "padded batch")
                if "attention_mask" in batch else np.ones_like(magnitudes, dtype=np.int64))
        mask = mask.reshape(n_windows, width).astype(bool)
        lengths = mask.sum(axis=1)
        prefix = np.arange(width)[None, :] < lengths[:, None]
        bad = np.nonzero((mask != prefix).any(axis=1))[0]
        if bad.size:
            raise ValueError(f"padded batch: windows {bad[:10].tolist()} have padding before real observations; "
                             "real points must come first in each row")
        windows: list[dict[str, np.ndarray]] = [{} for _ in range(n_windows)]
        per_window: dict[str, list[np.ndarray]] = {}
        for name, value in batch.items():
            if name == "attention_mask":
                continue
            array = as_numeric_array(value, name, "padded batch")
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.shape == (n_windows, width):
                for i in range(n_windows):
                    windows[i][name] = array[i, : lengths[i]]
            elif array.shape[:1] == (n_windows,) and array.ndim <= 2:
                per_window[name] = [array[i] for i in range(n_windows)]
            else:
                raise ValueError(f"padded batch: field {name!r} has shape {array.shape}; expected ({n_windows}, "
                                 f"{width}) per token or ({n_windows},) per window")
        return windows, per_window

    def _from_list(self, features: Sequence[Mapping[str, Any]]):
        windows: list[dict[str, np.ndarray]] = []
        per_window: dict[str, list[np.ndarray]] = {}
        for index, feature in enumerate(features):
            where = f"window {index}"
            if not isinstance(feature, Mapping) or "magnitudes" not in feature:
                raise ValueError(f"{where}: expected a mapping with a 'magnitudes' field")
            magnitudes = as_numeric_array(feature["magnitudes"], "magnitudes", where).reshape(-1)
            length = magnitudes.shape[0]
            keep = np.ones(length, dtype=bool)
            if "attention_mask" in feature:
                keep = as_numeric_array(feature["attention_mask"], "attention_mask", where).reshape(-1).astype(bool)
                if keep.shape[0] != length:
                    raise ValueError(f"{where}: attention_mask has {keep.shape[0]} entries, magnitudes {length}")
            window: dict[str, np.ndarray] = {}
            for name, value in feature.items():
                if name == "attention_mask":
                    continue
                array = as_numeric_array(value, name, where)
                if name in TOKEN_FIELDS and array.ndim > 0:
                    array = array.reshape(-1)
                    if array.shape[0] != length:
                        raise ValueError(f"{where}: field {name!r} has {array.shape[0]} entries but 'magnitudes' "
                                         f"has {length}")
                    window[name] = array[keep]
                elif array.ndim == 0 or (name not in TOKEN_FIELDS and array.size == 1):
                    per_window.setdefault(name, [None] * len(features))[index] = array.reshape(())
                else:
                    raise ValueError(f"{where}: field {name!r} is neither a per-token array of length {length} "
                                     "nor a scalar per window")
            windows.append(window)
        for name, values in per_window.items():
            missing = [i for i, v in enumerate(values) if v is None]
            if missing:
                raise ValueError(f"windows {missing[:10]} lack the per-window field {name!r}")
        return windows, per_window

    # ------------------------------------------------------------------------------------------------ packing
    def __call__(self, features: Any) -> dict[str, Any]:
        windows, per_window = self._windows(features)
        if not windows:
            raise ValueError("cannot pack an empty batch")
        fields = sorted({name for w in windows for name in w})
        for name in fields:
            missing = [i for i, w in enumerate(windows) if name not in w]
            if missing:
                raise ValueError(f"windows {missing[:10]} lack the field {name!r} that other windows have")
        lengths = np.array([len(w["magnitudes"]) for w in windows], dtype=np.int64)
        token_fields = {name: np.concatenate([w[name] for w in windows]) for name in fields}
        return self.pack(token_fields, lengths, {name: np.stack(values) for name, values in per_window.items()})

    def pack(
        self,
        token_fields: Mapping[str, Any],
        lengths: Sequence[int] | np.ndarray,
        per_window: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Pack windows that are already laid back to back.

        Args:
            token_fields: `(T,)` arrays of the windows' real observations, window after window
                (``T = sum(lengths)``); ``magnitudes`` is required.
            lengths: `(n,)` number of observations of each window.
            per_window: `(n, ...)` arrays with one value per window.

        Returns:
            The packed batch described in the class docstring.
        """
        lengths = [int(n) for n in np.asarray(lengths, dtype=np.int64).reshape(-1)]
        if not lengths:
            raise ValueError("cannot pack an empty batch")
        if "magnitudes" not in token_fields:
            raise ValueError(f"token fields {sorted(token_fields)} lack 'magnitudes'")
        for index, length in enumerate(lengths):
            if length == 0:
                raise ValueError(f"window {index} has no observations; drop it before packing")
            if length > self.max_seqlen:
                raise ValueError(f"window {index} has {length} observations, more than max_seqlen={self.max_seqlen}")
        total = int(sum(lengths))
        for name, values in token_fields.items():
            if np.shape(values)[:1] != (total,):
                raise ValueError(f"token field {name!r} has shape {np.shape(values)}, expected ({total},)")
        if self.max_tokens is not None and total > self.max_tokens:
            raise ValueError(f"the batch has {total} observations, more than max_tokens={self.max_tokens}; group "
                             "windows with modeling_astromer.packing.token_budget_batches (as a batch_sampler)")

        seq_lengths = list(lengths)
        sequence_index = list(range(len(lengths)))
        width = total
        if self.pad_to_budget:
            width = self.max_tokens
            while width > sum(seq_lengths):
                seq_lengths.append(min(self.max_seqlen, width - sum(seq_lengths)))
                sequence_index.append(-1)
            if self.max_sequences is not None:
                if len(seq_lengths) > self.max_sequences:
                    raise ValueError(f"max_sequences={self.max_sequences} is too small: this batch needs "
                                     f"{len(seq_lengths)} sequences ({len(lengths)} windows + padding sequences)")
                fillers = self.max_sequences - len(seq_lengths)
                seq_lengths.extend([0] * fillers)
                sequence_index.extend([-1] * fillers)

        # the stream is one sequence of `total` real tokens; budget padding pads it to `width`
        out: dict[str, Any] = {}
        for name in sorted(token_fields):
            dtype = np.int64 if name in _INT_TOKEN_FIELDS else np.float32
            values = np.asarray(token_fields[name]).astype(dtype)
            out[name] = torch.from_numpy(pad_windows(values, [total], width))
        out["attention_mask"] = torch.from_numpy(padding_mask([total], width).astype(np.int64))
        n_fill = len(seq_lengths) - len(lengths)
        for name, values in (per_window or {}).items():
            stacked = np.asarray(values)
            is_int = stacked.dtype.kind in "biu"
            fill = np.full((n_fill, *stacked.shape[1:]), self.filler_label if is_int else 0, dtype=stacked.dtype)
            out[name] = torch.from_numpy(np.concatenate([stacked, fill]))
        cu = np.concatenate([[0], np.cumsum(seq_lengths)]).astype(np.int32)
        out["cu_seqlens"] = torch.from_numpy(cu)
        out["max_seqlen"] = self.max_seqlen
        out["sequence_index"] = torch.tensor(sequence_index, dtype=torch.int64)
        return out
