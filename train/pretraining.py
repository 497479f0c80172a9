"""Astromer masked-magnitude pretraining with Hugging Face Accelerate (one CPU to many GPUs).

:func:`run_pretraining` runs one :class:`~astromer_train.configuration.PretrainingConfig` in five stages:

1. **output folder and Accelerator**: the run folder is checked (and cleared with ``overwrite``, or its latest
   checkpoint found with ``resume``), the Accelerator made, the seed set;
2. **data and loaders**: the cleaned curves (official cleaning), one random window per curve and epoch (or every
   sequential window), the official probing (50 % of a full window probed: 10 % kept, 8 % replaced by random
   magnitudes, 32 % masked) with its uncertainty loss weights, and validation on a ``validation`` split or a
   held-out fraction of the curves. Windows, masks and shuffling are functions of ``(seed, epoch, index)``, so a
   resumed run continues exactly like an uninterrupted one;
3. **model and optimiser**: a new Astromer 2 (smaller sizes on request) with the trainable MASK token on by default,
   or the model of ``init_from``; Adam with the official β 0.9/0.98, ε 1e-9, no weight decay and a constant
   learning rate of 1e-3 by default;
4. **the loop**: gradient accumulation, mixed precision, validation every epoch (or ``eval_every`` steps) with
   early stopping on the (weighted) validation RMSE and the best weights kept, ``save_state`` checkpoints (every
   epoch or ``save_every`` steps) that ``resume`` continues from mid-epoch, a JSONL log (plus TensorBoard);
5. **the final model and summary**: the best-validation ``AstromerForMaskedReconstruction`` and the feature
   extractor at the top of the run folder, and ``training_summary.json``.

With ``compile`` the training loss runs as one compiled graph (:mod:`astromer_train.compiled_loss`; CUDA graphs
on one CUDA device unless ``compile_mode="default"``), and packed training batches are padded to a fixed token
budget (:mod:`astromer_train.token_budgets`) so that batches share their shapes. Validation stays eager, on unpadded
batches.

The masked magnitudes stay visible to their own query in the released Astromer 2 (no MASK token); ``mask_token=
False`` reproduces that behaviour.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import accelerate.state
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.utils import logging as hf_logging

from astromer_kernels.cpu_linear import use_onednn_linears
from astromer_train.callbacks import TrainingCallback, TrainingProgress
from astromer_train.checkpoints import (
    BEST_MODEL,
    latest_checkpoint,
    publish_final_model,
    save_checkpoint,
    save_model,
)
from astromer_train.cli_utils import UsageError, clear_output_dir, prepare_output_dir
from astromer_train.compiled_loss import CompiledTrainingLoss, eager_training_loss
from astromer_train.configuration import PretrainingConfig, PretrainingData
from astromer_train.data import (
    CleanedCurves,
    DeterministicMaskingCollator,
    EpochShuffleSampler,
    WindowDataset,
    load_light_curves,
    split_train_validation,
)
from astromer_train.reconstruction_metrics import evaluate_reconstruction
from astromer_train.token_budgets import TokenBudget, choose_token_budgets, window_lengths
from astromer_train.tracking import build_trackers
from hub_datasets.atomic import write_json_atomic
from modeling_astromer import AstromerConfig, AstromerFeatureExtractor, AstromerForMaskedReconstruction

logger = logging.getLogger("astromer_train.pretraining")


# ----------------------------------------------------------------------------------- 1. output folder, Accelerator
def _check_mixed_precision_is_free(requested: str | None) -> None:
    """Accelerate keeps one mixed-precision setting per process (``AcceleratorState``): once an ``Accelerator``
    exists, a later one may repeat that setting or leave it unset, not change it."""
    if requested is None or not accelerate.state.is_initialized():
        return
    state = AcceleratorState()
    if state.distributed_type != DistributedType.DEEPSPEED and state.mixed_precision != requested:
        raise UsageError(f"--mixed-precision {requested}: this process already trains with mixed precision "
                         f"{state.mixed_precision!r}, which Accelerate cannot change; use the same setting or a new "
                         "process")


def prepare_run_folder(config: PretrainingConfig) -> tuple[Path, Path | None]:
    """The run folder (checked: it must be empty unless ``overwrite`` or ``resume``) and the checkpoint to
    resume from."""
    output_dir = prepare_output_dir(config.output_dir, config.overwrite, resume=config.resume is not None)
    if config.resume is None:
        return output_dir, None
    resume_from = latest_checkpoint(output_dir) if config.resume == "latest" else Path(config.resume)
    if resume_from is None:
        raise UsageError(f"--resume: no checkpoint in {output_dir / 'checkpoints'}")
    return output_dir, resume_from


def launched_on_cpu() -> bool:
    """Whether this is one of several processes launched on a machine without an accelerator device.

    ``accelerate launch`` starts every process with ``WORLD_SIZE`` set, but on a CPU an ``Accelerator`` joins them
    into one (gloo) process group only when told to run on the CPU; otherwise each process trains alone and they
    race in one output folder. Single processes keep Accelerate's own device choice.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def start_accelerator(config: PretrainingConfig, output_dir: Path) -> Accelerator:
    """The run's ``Accelerator`` with its trackers; clears the run folder for ``overwrite`` and seeds every RNG."""
    accelerator = Accelerator(
        cpu=launched_on_cpu(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=build_trackers(config.report_to, config.run_name, output_dir / "logs") or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:  # DeepSpeed clips inside its engine (clip_grad_norm_ is a no-op there): 0 = none
        deepspeed.deepspeed_config["gradient_clipping"] = float(config.max_grad_norm or 0.0)
    if config.overwrite and accelerator.is_main_process:
        clear_output_dir(output_dir)
    accelerator.wait_for_everyone()
    set_seed(config.seed)
    if config.quiet:
        hf_logging.disable_progress_bar()
    return accelerator


# --------------------------------------------------------------------------------------------- 2. data and loaders
def load_pretraining_data(config: PretrainingConfig, window_size: int) -> PretrainingData:
    """The cleaned training and validation curves of ``config.dataset`` or ``config.synthetic``."""
    splits = load_light_curves(config.dataset, synthetic=config.synthetic, survey=config.survey, seed=config.seed)
    train_table, val_table = split_train_validation(
        splits, config.train_split, config.validation_split, config.validation_fraction, config.seed
    )
    fe = AstromerFeatureExtractor(window_size=window_size)
    return PretrainingData(
        train=CleanedCurves.from_table(train_table, fe, name=f"split {config.train_split!r}"),
        validation=CleanedCurves.from_table(val_table, fe, name="validation curves"),
    )


def build_masking_collators(model_config: AstromerConfig, seed: int, packed: bool,
                            train_budgets: Sequence[TokenBudget] = ()) -> tuple[Any, Any]:
    """The training and validation collators: the official probing of ``model_config`` drawn from ``(seed, keys
    of the batch)`` for training and ``(seed + 1, keys)`` for validation, so the masks never depend on global RNG
    state or on the DataLoader worker. ``packed`` batches concatenate the windows without padding
    (``cu_seqlens``), the training ones padded to the first of ``train_budgets`` they fit when given; otherwise
    every window is padded to the window size."""
    fractions = (model_config.probed_fraction, model_config.random_fraction, model_config.same_fraction)

    def collator(collator_seed: int, budgets: Sequence[TokenBudget] = ()) -> DeterministicMaskingCollator:
        return DeterministicMaskingCollator(
            *fractions, window_size=model_config.window_size, seed=collator_seed, packed=packed,
            token_budgets=[(budget.max_tokens, budget.max_sequences) for budget in budgets],
        )

    return collator(seed, train_budgets), collator(seed + 1)


@dataclass
class DataLoaders:
    """The training loader (its sampler sets the epoch) and the validation loader (the same windows every time)."""

    train: torch.utils.data.DataLoader
    validation: torch.utils.data.DataLoader
    train_sampler: EpochShuffleSampler
    n_train_windows: int
    token_budgets: tuple[TokenBudget, ...] = ()


def build_data_loaders(
    config: PretrainingConfig, data: PretrainingData, model_config: AstromerConfig, accelerator: Accelerator
) -> DataLoaders:
    window_size = model_config.window_size
    train_windows = WindowDataset(data.train, config.windows, window_size, seed=config.seed)
    val_windows = WindowDataset(data.validation, config.windows, window_size, seed=config.seed + 1)
    budgets = (choose_token_budgets(window_lengths(train_windows), window_size, config.batch_size, config.max_tokens,
                                    config.max_sequences) if config.token_budget_applies else ())
    if budgets:
        logger.info("packed training batches padded to %s", ", or ".join(
            f"{b.max_tokens} tokens in {b.max_sequences} sequences" for b in budgets))
    train_collator, val_collator = build_masking_collators(model_config, config.seed, config.packing, budgets)
    train_sampler = EpochShuffleSampler(len(train_windows), seed=config.seed, shuffle=True)
    loader_options = {"num_workers": config.num_workers, "pin_memory": accelerator.device.type == "cuda"}
    train = torch.utils.data.DataLoader(
        train_windows, batch_size=config.batch_size, sampler=train_sampler, collate_fn=train_collator,
        generator=torch.Generator().manual_seed(config.seed), **loader_options,
    )
    validation = torch.utils.data.DataLoader(
        val_windows, batch_size=config.batch_size,
        sampler=EpochShuffleSampler(len(val_windows), shuffle=False, fixed_epoch=0), collate_fn=val_collator,
        generator=torch.Generator().manual_seed(config.seed + 1), **loader_options,
    )
    return DataLoaders(train, validation, train_sampler, len(train_windows), budgets)


# ------------------------------------------------------------------------------------------ 3. model and optimiser
def build_model(config: PretrainingConfig) -> AstromerForMaskedReconstruction:
    """A new (or ``init_from``) ``AstromerForMaskedReconstruction`` configured from ``config``."""
    overrides: dict[str, Any] = {}
    if config.dropout is not None:
        overrides["hidden_dropout_prob"] = config.dropout
    if config.no_loss_weights:
        overrides["use_loss_weights"] = False
    if config.init_from is not None:
        if config.mask_token is not None:
            overrides["use_mask_token"] = config.mask_token
        model = AstromerForMaskedReconstruction.from_pretrained(config.init_from, **overrides)
    else:
        sizes = {
            "num_hidden_layers": config.num_layers,
            "hidden_size": config.hidden_size,
            "num_attention_heads": config.num_heads,
            "intermediate_size": config.intermediate_size,
            "window_size": config.window_size,
        }
        model_config = AstromerConfig.astromer2(
            use_mask_token=True if config.mask_token is None else config.mask_token,
            **{k: v for k, v in sizes.items() if v is not None},
            **overrides,
        )
        model = AstromerForMaskedReconstruction(model_config)
    model.set_attn_implementation(config.effective_attn_implementation)
    if config.onednn_linears and not use_onednn_linears(model):
        raise UsageError("--onednn-linears: this PyTorch build has no oneDNN linear operator "
                         "(torch.ops.mkldnn._linear_pointwise)")
    return model


def build_optimiser(
    config: PretrainingConfig, model: torch.nn.Module, n_train_windows: int, num_processes: int
) -> tuple[torch.optim.Optimizer, Any, int]:
    """Adam, the learning-rate schedule and the number of optimizer steps of the run."""
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon, weight_decay=config.weight_decay,
    )
    batches_per_epoch = math.ceil(n_train_windows / (config.batch_size * num_processes))
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=total_steps)
    return optimizer, scheduler, total_steps


def build_training_loss(config: PretrainingConfig, accelerator: Accelerator, model) -> Any:
    """``batch -> loss`` of the prepared model: compiled with ``config.compile`` (one graph in a single process;
    CUDA graphs with ``compile_mode`` reduce-overhead, or auto on one CUDA device without gradient accumulation),
    else the plain forward."""
    if not config.compile:
        return eager_training_loss(model)
    logger.warning("--compile is experimental: with torch 2.13, tracing the astromer:: attention ops has crashed "
                   "the process (segmentation fault) intermittently; checkpoints let --resume continue such a run")
    single_process = accelerator.distributed_type == DistributedType.NO
    on_cuda = accelerator.device.type == "cuda"
    if config.compile_mode == "reduce-overhead" and not on_cuda:
        raise UsageError(f"--compile-mode reduce-overhead replays CUDA graphs: it needs a CUDA device, not "
                         f"{accelerator.device.type}")
    cuda_graphs = config.compile_mode == "reduce-overhead" or (
        config.compile_mode == "auto" and on_cuda and single_process and config.gradient_accumulation_steps == 1)
    return CompiledTrainingLoss(model, fullgraph=single_process, cuda_graphs=cuda_graphs)


# ------------------------------------------------------------------------------------------------------ 4. the loop
class PretrainingLoop:
    """Optimizer steps over the prepared model and loaders, with validation, early stopping, the best model,
    checkpoints, tracker logs and the callbacks; :attr:`progress` is the loop position (checkpointed)."""

    def __init__(self, config: PretrainingConfig, accelerator: Accelerator, model, optimizer, scheduler,
                 loaders: DataLoaders, output_dir: Path, total_steps: int,
                 callbacks: Sequence[TrainingCallback] = (), training_loss: Any = None) -> None:
        self.config = config
        self.accelerator = accelerator
        self.model = model
        self.training_loss = training_loss if training_loss is not None else eager_training_loss(model)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loaders = loaders
        self.output_dir = output_dir
        self.total_steps = total_steps
        self.callbacks = list(callbacks)
        self.use_weights = bool(accelerator.unwrap_model(model).config.use_loss_weights)
        self.progress = TrainingProgress()
        accelerator.register_for_checkpointing(self.progress)
        self._running_loss = torch.zeros((), device=accelerator.device)
        self._running_count = 0
        self._bar: Any = None

    def resume(self, checkpoint: Path) -> None:
        self.accelerator.load_state(str(checkpoint))
        progress = self.progress
        logger.info("resumed from %s at optimizer step %d (epoch %d, batch %d)", checkpoint,
                    progress.global_step, progress.epoch, progress.batch_in_epoch)
        if progress.finished:
            logger.warning("the run in %s had already finished; nothing to do", self.output_dir)

    def _is_done(self) -> bool:
        progress = self.progress
        return progress.stopped_early or progress.global_step >= self.total_steps or progress.epoch >= self.config.epochs

    def run(self) -> None:
        """Train until ``max_steps``, ``epochs`` or early stopping; then validate the last weights (if they were
        not yet) and write the final checkpoint."""
        self._bar = tqdm(total=self.total_steps, initial=self.progress.global_step, desc="pretrain",
                         disable=self.config.quiet or not self.accelerator.is_local_main_process, dynamic_ncols=True)
        self.model.train()
        done = self.progress.finished or self._is_done()
        while not done:
            done = self._train_epoch()
        self._bar.close()
        if self.progress.last_evaluated_step != self.progress.global_step:
            self._evaluate_and_track()  # the last weights were never validated
        self.progress.finished = True
        save_checkpoint(self.accelerator, self.output_dir, self.progress.global_step, self.config.save_total_limit)

    def _train_epoch(self) -> bool:
        """The rest of the current epoch (all of it unless resuming mid-epoch); returns True when training is
        over."""
        progress, accelerator, train_loader = self.progress, self.accelerator, self.loaders.train
        self.loaders.train_sampler.set_epoch(progress.epoch)
        train_loader.set_epoch(progress.epoch)
        batches_per_epoch = len(train_loader)
        loader = (accelerator.skip_first_batches(train_loader, progress.batch_in_epoch)
                  if progress.batch_in_epoch else train_loader)
        for batch in loader:
            self._train_batch(batch)
            if accelerator.sync_gradients:
                progress.global_step += 1
                epoch_complete = progress.batch_in_epoch >= batches_per_epoch
                if epoch_complete:
                    progress.epoch += 1
                    progress.batch_in_epoch = 0
                if self._after_step(epoch_complete):
                    return True
        return progress.epoch >= self.config.epochs

    def _train_batch(self, batch: dict[str, torch.Tensor]) -> None:
        accelerator, config = self.accelerator, self.config
        with accelerator.accumulate(self.model):
            loss = self.training_loss(batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm:
                accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        self.progress.batch_in_epoch += 1
        self._running_loss += loss.detach().float()
        self._running_count += 1

    def _after_step(self, epoch_complete: bool) -> bool:
        """Logging, validation and checkpointing after an optimizer step, then the callbacks; returns True when
        training must stop."""
        config, step = self.config, self.progress.global_step
        self._bar.update(1)
        if step % config.log_every == 0 and self._running_count:
            self._log_training_loss()
        if (step % config.eval_every == 0) if config.eval_every else epoch_complete:
            self._evaluate_and_track()
        done = self._is_done()
        if ((step % config.save_every == 0) if config.save_every else epoch_complete) and not done:
            save_checkpoint(self.accelerator, self.output_dir, step, config.save_total_limit)
        for callback in self.callbacks:
            callback.on_step_end(self.progress)
        return done

    def _log_training_loss(self) -> None:
        accelerator, progress = self.accelerator, self.progress
        mean_loss = accelerator.reduce(self._running_loss / self._running_count, reduction="mean")
        accelerator.log({"train/loss": float(mean_loss), "train/lr": self.scheduler.get_last_lr()[0],
                         "epoch": progress.epoch}, step=progress.global_step)
        self._bar.set_postfix(loss=f"{float(mean_loss):.4f}", best_val=f"{progress.best_metric:.4f}")
        self._running_loss = torch.zeros((), device=accelerator.device)
        self._running_count = 0

    def _evaluate_and_track(self) -> None:
        """Validate; keep the weights when they are the best so far, else count towards early stopping."""
        accelerator, progress = self.accelerator, self.progress
        metrics = evaluate_reconstruction(self.model, self.loaders.validation, accelerator, self.use_weights)
        progress.last_evaluated_step = progress.global_step
        if metrics["rmse"] < progress.best_metric:
            progress.best_metric = metrics["rmse"]
            progress.best_step = progress.global_step
            progress.evaluations_without_improvement = 0
            save_model(accelerator, self.model, self.output_dir / BEST_MODEL,
                       {"best_metrics.json": {**metrics, "step": progress.global_step}})
        else:
            progress.evaluations_without_improvement += 1
            if progress.evaluations_without_improvement >= self.config.patience:
                progress.stopped_early = True
        accelerator.log({f"val/{k}": v for k, v in metrics.items()} | {"val/best_rmse": progress.best_metric,
                        "epoch": progress.epoch}, step=progress.global_step)


# ------------------------------------------------------------------------------------- 5. final model and summary
def finish_run(loop: PretrainingLoop, run_config: dict[str, Any], resume_from: Path | None,
               window_size: int) -> dict[str, Any]:
    """Publish the best model as the run's final model and write ``training_summary.json``; returns the
    summary."""
    accelerator, progress, output_dir = loop.accelerator, loop.progress, loop.output_dir
    summary = {
        "global_step": progress.global_step,
        "epochs_completed": progress.epoch,
        "best_validation_rmse": progress.best_metric,
        "best_step": progress.best_step,
        "stopped_early": progress.stopped_early,
        "num_processes": accelerator.num_processes,
        "resumed_from": str(resume_from) if resume_from else None,
        "model": str(output_dir),
    }
    if accelerator.is_main_process:
        publish_final_model(output_dir, AstromerFeatureExtractor(window_size=window_size))
        write_json_atomic(output_dir / "training_summary.json", {**summary, "arguments": run_config})
    accelerator.log({"final/best_rmse": progress.best_metric}, step=progress.global_step)
    accelerator.wait_for_everyone()
    return summary


def _run_config(config: PretrainingConfig, accelerator: Accelerator, model, data: PretrainingData,
                loaders: DataLoaders) -> dict[str, Any]:
    """The settings and facts of the run, for the tracker's config record and the summary."""
    unwrapped = accelerator.unwrap_model(model)
    return {
        **config.arguments(),
        "attn_implementation_effective": config.effective_attn_implementation,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision_effective": accelerator.mixed_precision,
        "n_train_curves": len(data.train),
        "n_validation_curves": len(data.validation),
        "n_parameters": sum(p.numel() for p in unwrapped.parameters()),
        "use_mask_token": unwrapped.config.use_mask_token,
        "onednn_linear_layers": sum(type(m).__name__ == "OneDnnLinear" for m in model.modules()),
        "compiled": config.compile,
        "token_budgets": [[budget.max_tokens, budget.max_sequences] for budget in loaders.token_budgets],
    }


def run_pretraining(
    config: PretrainingConfig, callbacks: Sequence[TrainingCallback] = (), *, end_training: bool = True
) -> dict[str, Any]:
    """Run one pretraining (see the module docstring); returns the summary also written to
    ``<output_dir>/training_summary.json``.

    ``callbacks`` observe the loop (:class:`~astromer_train.callbacks.TrainingCallback`). ``end_training=False``
    keeps the process group alive for a following stage in the same process (e.g. ``Trainer``); the trackers are
    closed either way.
    """
    _check_mixed_precision_is_free(config.mixed_precision)
    output_dir, resume_from = prepare_run_folder(config)
    accelerator = start_accelerator(config, output_dir)

    model = build_model(config)
    if config.onednn_linears and (accelerator.mixed_precision != "bf16" or accelerator.device.type != "cpu"):
        logger.warning("--onednn-linears changes nothing here: it acts on the CPU under bf16 mixed precision "
                       "(this run: %s on %s)", accelerator.mixed_precision, accelerator.device.type)
    window_size = model.config.window_size
    data = config.curves if config.curves is not None else load_pretraining_data(config, window_size)
    loaders = build_data_loaders(config, data, model.config, accelerator)
    optimizer, scheduler, total_steps = build_optimiser(config, model, loaders.n_train_windows,
                                                        accelerator.num_processes)
    model, optimizer, loaders.train, loaders.validation, scheduler = accelerator.prepare(
        model, optimizer, loaders.train, loaders.validation, scheduler
    )

    loop = PretrainingLoop(config, accelerator, model, optimizer, scheduler, loaders, output_dir, total_steps,
                           callbacks, build_training_loss(config, accelerator, model))
    run_config = _run_config(config, accelerator, model, data, loaders)
    accelerator.init_trackers(config.run_name, config={k: v for k, v in run_config.items()
                                                       if isinstance(v, (int, float, str, bool)) or v is None})
    if resume_from is not None:
        loop.resume(resume_from)
    loop.run()
    summary = finish_run(loop, run_config, resume_from, window_size)
    if end_training:
        accelerator.end_training()  # also destroys the process group: nothing collective after this
    else:
        for tracker in accelerator.trackers:
            tracker.finish()
    return summary


__all__ = [
    "DataLoaders",
    "PretrainingLoop",
    "build_data_loaders",
    "build_masking_collators",
    "build_model",
    "build_optimiser",
    "build_training_loss",
    "load_pretraining_data",
    "run_pretraining",
]
