"""Typed configurations of the three training runs, validated when they are built.

Each field is the command-line flag of the same name (``batch_size`` is ``--batch-size``; see ``astromer pretrain
--help`` for what it does); the scripts parse their flags straight into these classes, so a Python caller gets the
same checks, with the same ``UsageError`` messages, as the command line.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from astromer_kernels.registry import packed_attention_implementations
from modeling_astromer import bundled_models

from .cli_utils import (
    UsageError,
    ValueRule,
    any_int,
    check_fields,
    finite_float,
    flag,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
)
from .data import CleanedCurves

logger = logging.getLogger("astromer_train.configuration")

#: ``attn_implementation`` value that picks sdpa for padded batches and astromer_varlen for packed ones.
AUTOMATIC_ATTENTION = "auto"
#: Attention implementations a pretraining run may ask for (astromer_blocked is the fast CPU choice under bf16,
#: astromer_varlen the Triton kernel).
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "astromer_varlen", "astromer_blocked")
SURVEYS = ("macho", "atlas")
WINDOW_SAMPLING = ("random", "sequential")
MIXED_PRECISION = (None, "no", "fp16", "bf16")
#: ``compile_mode`` values: auto is reduce-overhead (CUDA graphs) on one CUDA device without gradient accumulation,
#: default elsewhere.
COMPILE_MODES = ("auto", "default", "reduce-overhead")
REPORT_TO = ("auto", "jsonl", "tensorboard", "all", "none")
CLASS_PROPORTIONS = ("published", "uniform")
#: Pretraining learning rates: the official one from scratch, and continued pretraining's (``init_from``).
FROM_SCRATCH_LEARNING_RATE = 1e-3
CONTINUED_LEARNING_RATE = 1e-4
POOLING = ("skip", "mean", "max")
CLASSIFIER_ATTENTION = ("sdpa", "eager")
#: ``mlp``: the paper's classification head trained with ``Trainer``; ``linear``: a logistic-regression probe on the
#: frozen encoder's window embeddings (scikit-learn).
CLASSIFIERS = ("mlp", "linear")
#: Baselines ``astromer evaluate`` can score in the same folds (``features``: light-curve features + random forest).
BASELINES = (None, "features")
#: ``TrainingArguments`` fields the fine-tuning stage sets from its own options: not accepted as pass-through flags.
RESERVED_TRAINER_ARGUMENTS = ("output_dir",)


@dataclass(frozen=True)
class PretrainingData:
    """Cleaned training and validation curves (:class:`astromer_train.data.CleanedCurves`)."""

    train: CleanedCurves
    validation: CleanedCurves


def _store_paths_as_text(config: Any, names: tuple[str, ...]) -> None:
    """Path-valued fields are kept as strings, so they read the same in logs and JSON summaries."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, os.PathLike):
            object.__setattr__(config, name, os.fspath(value))


def _has_model_config(folder: str) -> bool:
    return (Path(folder) / "config.json").is_file()


def _resolve_bundled(config: Any, name: str) -> None:
    """A bundled model name (``astromer1-macho``) in a model field becomes the folder of those weights."""
    value = getattr(config, name)
    bundled = bundled_models()
    if isinstance(value, str) and value in bundled and not Path(value).exists():
        object.__setattr__(config, name, str(bundled[value]))


# ---------------------------------------------------------------------------------------------------- pretraining
@dataclass(frozen=True, kw_only=True)
class PretrainingConfig:
    """One masked-reconstruction pretraining run (``astromer pretrain``).

    The data come from ``dataset`` (a ``save_to_disk`` folder, parquet files or an offline ``load_dataset`` name),
    ``synthetic`` (that many generated curves) or ``curves`` (cleaned curves given directly, e.g. by a fine-tuning
    stage); exactly one of them. Architecture fields left ``None`` take the Astromer 2 values; with ``init_from``
    the architecture comes from the checkpoint. ``learning_rate`` left ``None`` is the official 1e-3 from scratch
    and :data:`CONTINUED_LEARNING_RATE` with ``init_from`` (continued pretraining: 1e-3 quickly overfits a small
    survey, the paper's fine-tuning rate 1e-5 barely moves the weights). ``attn_implementation="auto"`` is sdpa for
    padded batches and astromer_varlen for packed ones (``packing``). ``resume`` is ``"latest"`` or a checkpoint folder.

    ``compile`` runs the training loss (forward and backward) as one ``torch.compile`` graph; with ``packing`` every
    training batch is then padded to a fixed token budget, ``max_tokens`` tokens in ``max_sequences`` sequences, so
    batches share one graph (by default a batch's mean number of tokens plus four standard deviations; the rare batch
    with more is padded to a fallback budget that every batch fits, see
    :func:`astromer_train.token_budgets.choose_token_budgets`). ``max_tokens`` also turns the budget on without
    ``compile``.
    """

    output_dir: str
    # data
    dataset: str | None = None
    synthetic: int | None = None
    curves: PretrainingData | None = field(default=None, repr=False, compare=False)
    survey: str = "macho"
    train_split: str = "train"
    validation_split: str = "validation"
    validation_fraction: float = 0.1
    windows: str = "random"
    num_workers: int = 0
    # model
    init_from: str | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None
    window_size: int | None = None
    dropout: float | None = None
    mask_token: bool | None = None
    no_loss_weights: bool = False
    attn_implementation: str = AUTOMATIC_ATTENTION
    onednn_linears: bool = False
    packing: bool = False
    # compilation
    compile: bool = False
    compile_mode: str = "auto"
    max_tokens: int | None = None
    max_sequences: int | None = None
    # optimisation
    learning_rate: float | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-9
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = None
    batch_size: int = 256
    gradient_accumulation_steps: int = 1
    mixed_precision: str | None = None
    # loop
    epochs: int = 10000
    max_steps: int | None = None
    eval_every: int | None = None
    patience: int = 20
    save_every: int | None = None
    save_total_limit: int = 2
    log_every: int = 10
    seed: int = 0
    report_to: str = "auto"
    run_name: str = "pretrain"
    # output
    overwrite: bool = False
    resume: str | None = None
    quiet: bool = False

    ARCHITECTURE_FIELDS: ClassVar[tuple[str, ...]] = (
        "num_layers", "hidden_size", "num_heads", "intermediate_size", "window_size",
    )
    RULES: ClassVar[dict[str, ValueRule]] = {
        "synthetic": positive_int, "validation_fraction": fraction, "num_workers": non_negative_int,
        "num_layers": positive_int, "hidden_size": positive_int, "num_heads": positive_int,
        "intermediate_size": positive_int, "window_size": positive_int, "dropout": fraction,
        "learning_rate": positive_float, "adam_beta1": fraction, "adam_beta2": fraction,
        "adam_epsilon": positive_float, "weight_decay": finite_float, "warmup_steps": non_negative_int,
        "max_grad_norm": positive_float, "batch_size": positive_int, "gradient_accumulation_steps": positive_int,
        "epochs": positive_int, "max_steps": positive_int, "eval_every": positive_int, "patience": positive_int,
        "save_every": positive_int, "save_total_limit": positive_int, "log_every": positive_int, "seed": any_int,
        "max_tokens": positive_int, "max_sequences": positive_int,
    }  # fmt: skip
    CHOICES: ClassVar[dict[str, tuple]] = {
        "survey": SURVEYS, "windows": WINDOW_SAMPLING, "mixed_precision": MIXED_PRECISION, "report_to": REPORT_TO,
        "attn_implementation": (AUTOMATIC_ATTENTION, *ATTENTION_IMPLEMENTATIONS),
        "mask_token": (None, True, False), "compile_mode": COMPILE_MODES,
    }  # fmt: skip

    def __post_init__(self) -> None:
        _store_paths_as_text(self, ("output_dir", "dataset", "init_from", "resume"))
        _resolve_bundled(self, "init_from")
        if self.learning_rate is None:
            rate = CONTINUED_LEARNING_RATE if self.init_from is not None else FROM_SCRATCH_LEARNING_RATE
            object.__setattr__(self, "learning_rate", rate)
        check_fields(self, self.RULES, self.CHOICES)
        self._check_data_source()
        self._check_model()
        self._check_compilation()
        self._check_output()
        if self.report_to in ("tensorboard", "all") and importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--report-to tensorboard needs the tensorboard package (pip install tensorboard)")

    def _check_data_source(self) -> None:
        given = [name for name in ("dataset", "synthetic", "curves") if getattr(self, name) is not None]
        if not given:
            raise UsageError("give a data source: --dataset PATH_OR_NAME or --synthetic N")
        if len(given) > 1:
            raise UsageError(f"give one data source, not {' and '.join(given)}")
        if self.curves is not None and not isinstance(self.curves, PretrainingData):
            raise UsageError(f"curves must be a PretrainingData (cleaned training and validation curves), got "
                             f"{type(self.curves).__name__}")
        if self.dataset is not None and not Path(self.dataset).exists() and os.sep in self.dataset:
            raise UsageError(f"--dataset {self.dataset}: no such file or folder")

    def _check_model(self) -> None:
        architecture = [name for name in self.ARCHITECTURE_FIELDS if getattr(self, name) is not None]
        if self.init_from is not None:
            if architecture:
                flags = ", ".join(flag(name) for name in architecture)
                raise UsageError(f"{flags} cannot be combined with --init-from: the architecture comes from the "
                                 "checkpoint")
            if not _has_model_config(self.init_from):
                raise UsageError(f"--init-from {self.init_from}: no config.json there (expected a save_pretrained "
                                 "folder)")
        hidden = self.hidden_size or 256
        heads = self.num_heads or 4
        if self.init_from is None and hidden % heads:
            raise UsageError(f"--hidden-size {hidden} must be a multiple of --num-heads {heads}")
        packed = packed_attention_implementations()
        if self.packing and self.attn_implementation not in (AUTOMATIC_ATTENTION, *packed):
            raise UsageError(f"--attn-implementation {self.attn_implementation} cannot attend within packed "
                             f"sequences; with --packing use {' or '.join(packed)} (or leave the automatic default)")

    def _check_compilation(self) -> None:
        if self.compile_mode != "auto" and not self.compile:
            raise UsageError(f"--compile-mode {self.compile_mode} needs --compile")
        if self.compile_mode == "reduce-overhead" and self.gradient_accumulation_steps > 1:
            raise UsageError("--compile-mode reduce-overhead cannot accumulate gradients: each CUDA-graph replay "
                             "overwrites the gradients of the one before; use --compile-mode default")
        budget = [name for name in ("max_tokens", "max_sequences") if getattr(self, name) is not None]
        if budget and not self.packing:
            raise UsageError(f"{' and '.join(flag(name) for name in budget)}: the token budget applies to packed "
                             "batches (--packing)")
        if self.max_sequences is not None and self.max_tokens is None and not self.compile:
            raise UsageError("--max-sequences needs --max-tokens (or --compile, which chooses the budget)")
        if self.onednn_linears and self.compile:
            raise UsageError("--onednn-linears and --compile exclude each other: the compiled graph makes its own "
                             "linear layers")

    def _check_output(self) -> None:
        if self.resume is not None:
            if self.overwrite:
                raise UsageError("--resume and --overwrite exclude each other")
            if self.resume != "latest" and not Path(self.resume).is_dir():
                raise UsageError(f"--resume {self.resume}: no such checkpoint folder")
            if not Path(self.output_dir).is_dir():
                raise UsageError(f"--resume: output folder {self.output_dir} does not exist (nothing to resume)")
        if self.eval_every is not None and self.save_every is not None and self.save_every % self.eval_every:
            logger.info("--save-every is not a multiple of --eval-every: a resume may re-run an evaluation")

    @property
    def token_budget_applies(self) -> bool:
        """Whether training batches are packed to a fixed token budget (``packing`` with ``compile`` or
        ``max_tokens``)."""
        return self.packing and (self.compile or self.max_tokens is not None)

    @property
    def effective_attn_implementation(self) -> str:
        """The attention implementation the model runs: the automatic choice resolved for padded or packed
        batches, or the one asked for."""
        if self.attn_implementation != AUTOMATIC_ATTENTION:
            return self.attn_implementation
        return "astromer_varlen" if self.packing else "sdpa"

    def arguments(self) -> dict[str, Any]:
        """The settings as plain values (the curves given directly are left out), for logs and summaries."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "curves"}


# ------------------------------------------------------------------------------------------------- fine-tuning
@dataclass(frozen=True, kw_only=True)
class FinetuningOptions:
    """The fine-tuning protocol shared by ``astromer finetune`` and ``astromer evaluate``: optional continued
    self-supervised training of the ``model`` encoder (the ``ssl_*`` fields; ``skip_ssl`` leaves it out), then a
    classifier: the paper's MLP head with ``Trainer`` (``classifier="mlp"``; frozen encoder unless
    ``train_encoder``) or a logistic-regression probe on the frozen window embeddings (``classifier="linear"``).

    ``model`` is a ``save_pretrained`` folder or a bundled model name (``astromer1-macho``). The MLP defaults (Adam
    lr 1e-4, batch 16, at most 300 epochs, early stopping after 30 without a lower validation loss, the weights of
    the epoch with the lowest validation loss: ``best_on_validation``) scored best on validation among the MLP
    settings tried on the bundled RR Lyrae sample. The paper's settings (lr 1e-5, batch 256, patience 40,
    final-epoch weights) take one optimizer step per epoch on a few-shot split and had not converged after 141
    epochs.
    ``trainer_arguments`` are ``TrainingArguments`` fields (``report_to``, ``bf16``, ``gradient_checkpointing``,
    ``push_to_hub``...) that override the values derived from the other options.
    """

    model: str
    attn_implementation: str = "sdpa"
    pooling: str = "skip"
    classifier: str = "mlp"
    train_encoder: bool = False
    mixed_precision: str | None = None
    skip_ssl: bool = False
    ssl_epochs: int = 10000
    ssl_max_steps: int | None = None
    ssl_learning_rate: float = 1e-5
    ssl_batch_size: int = 256
    ssl_patience: int = 20
    mask_token: bool | None = None
    epochs: int = 300
    learning_rate: float = 1e-4
    batch_size: int = 16
    patience: int = 30
    best_on_validation: bool = True
    seed: int = 0
    dataloader_workers: int = 0
    quiet: bool = False
    trainer_arguments: Mapping[str, Any] = field(default_factory=dict)

    RULES: ClassVar[dict[str, ValueRule]] = {
        "ssl_epochs": positive_int, "ssl_max_steps": positive_int, "ssl_learning_rate": positive_float,
        "ssl_batch_size": positive_int, "ssl_patience": positive_int, "epochs": positive_int,
        "learning_rate": positive_float, "batch_size": positive_int, "patience": positive_int, "seed": any_int,
        "dataloader_workers": non_negative_int,
    }  # fmt: skip
    CHOICES: ClassVar[dict[str, tuple]] = {
        "attn_implementation": CLASSIFIER_ATTENTION, "pooling": POOLING, "mixed_precision": MIXED_PRECISION,
        "mask_token": (None, True, False), "classifier": CLASSIFIERS,
    }  # fmt: skip

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("model",)

    def __post_init__(self) -> None:
        self._check_fields()
        self._check_model()

    def _check_fields(self) -> None:
        _store_paths_as_text(self, self.PATH_FIELDS)
        _resolve_bundled(self, "model")
        check_fields(self, self.RULES, self.CHOICES)
        self._check_trainer_arguments()
        if self.classifier == "linear" and self.train_encoder:
            raise UsageError("--train-encoder needs --classifier mlp (the linear probe reads frozen embeddings)")

    def _check_trainer_arguments(self) -> None:
        arguments = dict(self.trainer_arguments)
        object.__setattr__(self, "trainer_arguments", arguments)
        reserved = sorted(set(arguments) & set(RESERVED_TRAINER_ARGUMENTS))
        if reserved:
            raise UsageError(f"--{reserved[0]} is set by the fine-tuning run (use --output-dir)")
        for precision in ("bf16", "fp16"):
            if arguments.get(precision):
                if self.mixed_precision not in (None, precision):
                    raise UsageError(f"--{precision} contradicts --mixed-precision {self.mixed_precision}")
                # both stages of a run share one precision: the continued pretraining gets it too
                object.__setattr__(self, "mixed_precision", precision)

    def _check_model(self) -> None:
        if not _has_model_config(self.model):
            bundled = ", ".join(bundled_models()) or "none installed"
            raise UsageError(f"--model {self.model}: no config.json there (expected a save_pretrained folder or a "
                             f"bundled model name: {bundled})")


@dataclass(frozen=True, kw_only=True)
class FinetuningConfig(FinetuningOptions):
    """The fine-tuning protocol on one few-shot split (``astromer finetune``): ``dataset`` is a folder with
    train, validation and test splits; ``synthetic`` draws the (``fold``, ``spc``) split from that many labelled
    synthetic curves."""

    output_dir: str
    overwrite: bool = False
    dataset: str | None = None
    synthetic: int | None = None
    survey: str = "macho"
    class_proportions: str = "published"
    fold: int = 0
    spc: int = 20
    test_per_class: int = 100

    RULES: ClassVar[dict[str, ValueRule]] = {
        **FinetuningOptions.RULES, "synthetic": positive_int, "fold": any_int, "spc": positive_int,
        "test_per_class": positive_int,
    }  # fmt: skip
    CHOICES: ClassVar[dict[str, tuple]] = {
        **FinetuningOptions.CHOICES, "survey": SURVEYS, "class_proportions": CLASS_PROPORTIONS,
    }  # fmt: skip

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("model", "output_dir", "dataset")

    def __post_init__(self) -> None:
        self._check_fields()
        if self.dataset is None and self.synthetic is None:
            raise UsageError("give a data source: --dataset PATH or --synthetic N")
        if self.dataset is not None and self.synthetic is not None:
            raise UsageError("give one data source, not dataset and synthetic")
        if self.dataset is not None and not Path(self.dataset).exists():
            raise UsageError(f"--dataset {self.dataset}: no such file or folder")
        self._check_model()
        if self.fold < 0:
            raise UsageError(f"--fold must be >= 0, got {self.fold}")


# -------------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True, kw_only=True)
class EvaluationConfig(FinetuningOptions):
    """The few-shot table (``astromer evaluate``): the fine-tuning protocol for every fold and samples-per-class
    (``spc``) value. The folds come from ``folds_dir`` (``fold{k}_spc{n}/`` folders) or are drawn from a labelled
    ``dataset`` (its ``split``) or from ``synthetic`` curves. ``baseline="features"`` also scores light-curve
    features + a random forest in the same folds (needs the ``light-curve`` package: the ``baselines`` extra)."""

    output_dir: str
    overwrite: bool = False
    folds_dir: str | None = None
    dataset: str | None = None
    synthetic: int | None = None
    survey: str = "macho"
    class_proportions: str = "published"
    dataset_name: str | None = None
    folds: int = 3
    spc: tuple[int, ...] = (20, 100, 500)
    test_per_class: int = 100
    split: str = "train"
    baseline: str | None = None

    RULES: ClassVar[dict[str, ValueRule]] = {
        **FinetuningOptions.RULES, "synthetic": positive_int, "folds": positive_int, "test_per_class": positive_int,
    }  # fmt: skip
    CHOICES: ClassVar[dict[str, tuple]] = {
        **FinetuningOptions.CHOICES, "survey": SURVEYS, "class_proportions": CLASS_PROPORTIONS, "baseline": BASELINES,
    }  # fmt: skip

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("model", "output_dir", "folds_dir", "dataset")

    def __post_init__(self) -> None:
        object.__setattr__(self, "spc", tuple(self.spc))
        self._check_fields()
        for value in self.spc:
            positive_int.check("spc", value)
        given = [name for name in ("folds_dir", "dataset", "synthetic") if getattr(self, name) is not None]
        if not given:
            raise UsageError("give a data source: --folds-dir, --dataset or --synthetic")
        if len(given) > 1:
            raise UsageError(f"give one data source, not {' and '.join(given)}")
        for name in ("folds_dir", "dataset"):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise UsageError(f"{flag(name)} {value}: no such file or folder")
        self._check_model()
        if self.baseline == "features" and importlib.util.find_spec("light_curve") is None:
            raise UsageError("--baseline features needs the light-curve package: pip install 'astromer-hf[baselines]' "
                             "(or pip install light-curve)")
        if not self.spc:
            raise UsageError("--spc needs at least one value")
        if len(set(self.spc)) != len(self.spc):
            raise UsageError(f"--spc values must be distinct, got {list(self.spc)}")
        if self.folds_dir is not None:
            missing = [f"fold{k}_spc{n}" for k in range(self.folds) for n in self.spc
                       if not (Path(self.folds_dir) / f"fold{k}_spc{n}").is_dir()]
            if missing:
                raise UsageError(f"--folds-dir {self.folds_dir} lacks {missing[:6]} (for --folds {self.folds} "
                                 f"--spc {' '.join(map(str, self.spc))})")


__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "AUTOMATIC_ATTENTION",
    "BASELINES",
    "CLASSIFIERS",
    "COMPILE_MODES",
    "EvaluationConfig",
    "FinetuningConfig",
    "FinetuningOptions",
    "PretrainingConfig",
    "PretrainingData",
]
