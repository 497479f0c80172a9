"""The loop position of a pretraining run and the callbacks that observe it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass
class TrainingProgress:
    """Loop position and early-stopping state; saved in every checkpoint (``register_for_checkpointing``)."""

    epoch: int = 0
    batch_in_epoch: int = 0  # batches of the current epoch already consumed (per process)
    global_step: int = 0  # optimizer steps
    best_metric: float = math.inf
    best_step: int = -1
    evaluations_without_improvement: int = 0
    last_evaluated_step: int = -1
    stopped_early: bool = False
    finished: bool = False

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@runtime_checkable
class TrainingCallback(Protocol):
    """Observes a pretraining run: ``on_step_end`` runs on every process after each optimizer step, once that
    step's logging, evaluation and checkpoint are done. It must not change ``progress``."""

    def on_step_end(self, progress: TrainingProgress) -> None: ...


__all__ = ["TrainingCallback", "TrainingProgress"]
