"""Fixed token budgets for packed training batches, so that a compiled training step sees static shapes.

A packed batch of ``batch_size`` windows has as many tokens as its windows have observations, which changes from
batch to batch. ``AstromerPackingCollator(pad_to_budget=True, max_tokens=..., max_sequences=...)`` pads it to a
fixed number of tokens in a fixed number of sequences; :func:`choose_token_budgets` picks those numbers from the
lengths of the training windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from astromer_train.cli_utils import UsageError
from astromer_train.data import WindowDataset

__all__ = ["BUDGET_STANDARD_DEVIATIONS", "TokenBudget", "choose_token_budgets", "window_lengths"]

#: The default token budget holds a batch's mean number of tokens plus this many standard deviations: batches
#: that exceed it (about 3 in 100,000 when batch sums are near-normal) take the fallback budget instead.
BUDGET_STANDARD_DEVIATIONS = 4.0


@dataclass(frozen=True)
class TokenBudget:
    """A packed training batch padded to ``max_tokens`` tokens in ``max_sequences`` sequences."""

    max_tokens: int
    max_sequences: int


def window_lengths(windows: WindowDataset) -> np.ndarray:
    """Observations in each window of ``windows``: the same in every epoch (a random window of a curve of ``L``
    observations has ``min(L, W)``)."""
    curve_lengths = windows.curves.lengths[windows.window_curve].astype(np.int64)
    starts = 0 if windows.window_start is None else windows.window_start
    return np.minimum(curve_lengths - starts, windows.window_size)


def _round_up(tokens: float, multiple: int = 64) -> int:
    return int(-(-int(np.ceil(tokens)) // multiple) * multiple)


def choose_token_budgets(lengths: np.ndarray, window_size: int, batch_size: int, max_tokens: int | None = None,
                         max_sequences: int | None = None) -> tuple[TokenBudget, ...]:
    """The token budgets of packed training batches of ``batch_size`` windows with these ``lengths``, smallest
    first; each batch is padded to the first it fits, so a compiled step sees one shape (two for the rare batch that
    needs the fallback).

    * the main budget: ``max_tokens``, or the mean number of tokens of ``batch_size`` windows drawn without
      replacement plus :data:`BUDGET_STANDARD_DEVIATIONS` standard deviations (rounded up to 64);
    * the fallback: the ``batch_size`` longest windows, which every batch fits (rounded up to 64); left out when the
      main budget already holds them.

    The budget padding forms sequences of at most ``window_size`` tokens, so a batch of ``j`` windows with ``t``
    tokens needs ``j + ceil((max_tokens - t) / window_size)`` sequences; each budget gets the most that any batch
    can need (``max_sequences`` for the main budget, when it is enough).
    """
    ordered = np.sort(np.asarray(lengths, dtype=np.int64))
    per_batch = min(batch_size, ordered.size)
    every_batch = _round_up(ordered[ordered.size - per_batch:].sum())
    if max_tokens is not None:
        main = max_tokens
    else:
        population = ordered.size
        spread = ordered.std() * np.sqrt(per_batch * (population - per_batch) / max(population - 1, 1))
        main = min(_round_up(per_batch * ordered.mean() + BUDGET_STANDARD_DEVIATIONS * spread), every_batch)
    windows = np.arange(1, per_batch + 1)
    fewest_tokens = np.cumsum(ordered[:per_batch])  # the j shortest windows, j = 1..per_batch

    def sequences_needed(max_tokens: int) -> int:
        return int((windows - (fewest_tokens - max_tokens) // window_size).max())

    needed = sequences_needed(main)
    if max_sequences is not None and max_sequences < needed:
        raise UsageError(f"--max-sequences {max_sequences} is too small: with {main} tokens a batch of this data can "
                         f"need {needed} sequences (its windows plus the padding sequences of at most {window_size} "
                         "tokens)")
    budgets = [TokenBudget(main, needed if max_sequences is None else max_sequences)]
    if main < every_batch:
        budgets.append(TokenBudget(every_batch, sequences_needed(every_batch)))
    return tuple(budgets)
