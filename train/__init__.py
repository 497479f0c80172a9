"""Astromer training as a library: pretraining, fine-tuning and the few-shot evaluation table.

Each run takes one typed configuration, validated when it is built (``UsageError`` with the same messages as the
command line)::

    from astromer_train import PretrainingConfig, run_pretraining

    summary = run_pretraining(PretrainingConfig(synthetic=2000, num_layers=2, hidden_size=64, max_steps=200,
                                                output_dir="runs/tiny"))

The scripts ``train/pretrain.py``, ``train/finetune.py`` and ``train/evaluate_fewshot.py`` (``astromer pretrain /
finetune / evaluate``) parse their flags into these configurations and call these functions.

Importing this package first sets ``OMP_WAIT_POLICY=PASSIVE`` when neither the user nor an earlier ``import torch``
decided the OpenMP wait policy (see :mod:`astromer_train.openmp`): libgomp reads it once, when torch loads.
"""

from astromer_train.openmp import prefer_passive_openmp_wait

prefer_passive_openmp_wait()  # before torch is imported below

from astromer_train.callbacks import TrainingCallback, TrainingProgress
from astromer_train.cli_utils import UsageError
from astromer_train.configuration import (
    EvaluationConfig,
    FinetuningConfig,
    FinetuningOptions,
    PretrainingConfig,
    PretrainingData,
)
from astromer_train.fewshot import FewShotTable, run_evaluation
from astromer_train.finetuning import run_finetuning
from astromer_train.pretraining import run_pretraining

__all__ = [
    "EvaluationConfig",
    "FewShotTable",
    "FinetuningConfig",
    "FinetuningOptions",
    "PretrainingConfig",
    "PretrainingData",
    "TrainingCallback",
    "TrainingProgress",
    "UsageError",
    "run_evaluation",
    "run_finetuning",
    "run_pretraining",
]
