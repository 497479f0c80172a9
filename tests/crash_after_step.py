"""Test helper: ``python tests/crash_after_step.py --crash-after-step N <astromer pretrain flags>`` runs the
pretraining of those flags and SIGKILLs its own process right after optimizer step N, a crash that leaves no chance
to clean up (for the kill-and-resume test)."""

from __future__ import annotations

import os
import signal
import sys

from accelerate.state import PartialState

from astromer_train import PretrainingConfig, TrainingProgress, run_pretraining
from astromer_train.cli_utils import positive_int
from astromer_train.pretrain import build_parser


class KillAfterStep:
    """A ``TrainingCallback`` that kills the process (every process, after they all reach it) after ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, progress: TrainingProgress) -> None:
        if progress.global_step == self.step:
            PartialState().wait_for_everyone()
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    parser = build_parser()
    parser.add_argument("--crash-after-step", type=positive_int, required=True)
    args = parser.parse_args()
    step = args.crash_after_step
    del args.crash_after_step
    run_pretraining(PretrainingConfig(**vars(args)), callbacks=[KillAfterStep(step)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
