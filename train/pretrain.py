"""Astromer masked-magnitude pretraining with Hugging Face Accelerate (one CPU to many GPUs).

Run as ``accelerate launch train/pretrain.py --dataset DATA --output-dir OUT`` (any engine of ``train/configs/``),
``python train/pretrain.py ...``, ``python -m astromer_train.pretrain ...`` or ``astromer pretrain ...``. Two CPU
processes: ``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train/pretrain.py ...`` (``accelerate launch --cpu
--num_processes 2`` silently runs ONE process).

What it does (Astromer spec §2–§3):

* data: any ``datasets`` source (``--dataset``: ``save_to_disk`` folder, parquet, offline ``load_dataset`` name) or
  ``--synthetic N`` curves; the official cleaning; one **random 200-window per curve per epoch** (``--windows``);
  the official probing (50 % probed: 10 % same / 8 % random / 32 % masked of a full window) and uncertainty loss
  weights; validation on a ``validation`` split or a held-out ``--validation-fraction`` of the curves;
* model: a new Astromer 2 (``--num-layers`` … for smaller models) with the paper's trainable **MASK token on** by
  default, or ``--released-behaviour`` for the released model's behaviour (no token: masked magnitudes stay visible
  to their own query; spec §1.2); ``--init-from`` continues a pretrained folder (keeping its token setting unless
  ``--mask-token``/``--no-mask-token`` is given);
* optimisation: the official Adam (β 0.9/0.98, ε 1e-9, no weight decay), constant lr 1e-3, mixed precision
  (``--mixed-precision`` or the accelerate config), gradient accumulation, early stopping on the validation
  (weighted) RMSE with ``--patience`` evaluations, keeping the best-validation weights (as the official code);
* bookkeeping: ``save_state`` checkpoints in ``OUT/checkpoints/step-NNNNNNNN`` (written to a temporary folder, then
  renamed, so a killed run never leaves a half checkpoint), ``--resume`` from the latest one (mid-epoch included:
  the data loader skips the batches already seen, and windows, masks and shuffling are functions of
  ``(seed, epoch, index)``, so a resumed run continues exactly like an uninterrupted one), a JSONL tracker in
  ``OUT/logs/`` (plus TensorBoard when installed), a tqdm progress bar, and at the end ``save_pretrained`` of the
  best ``AstromerForMaskedReconstruction`` and the feature extractor into ``OUT``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("astromer_train.pretrain")

CHECKPOINT_PREFIX = "step-"
#: astromer_blocked is the fast CPU choice under bf16 (blocked GEMM attention); astromer_varlen is the Triton kernel.
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "astromer_varlen", "astromer_blocked")


# ------------------------------------------------------------------------------------------------------ arguments
def build_parser() -> argparse.ArgumentParser:
    from astromer_train.cli_utils import fraction, non_negative_int, positive_float, positive_int

    parser = argparse.ArgumentParser(
        prog="astromer pretrain",
        description="Pretrain Astromer (masked magnitude reconstruction) with Accelerate. "
        "Use `accelerate launch` (configs in train/configs/) for GPUs, DDP, FSDP2 or DeepSpeed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="save_to_disk folder, parquet file/folder, or load_dataset name (offline)")
    source.add_argument("--synthetic", type=positive_int, metavar="N", help="generate N synthetic light curves")
    data.add_argument("--survey", choices=("macho", "atlas"), default="macho", help="survey of --synthetic")
    data.add_argument("--train-split", default="train")
    data.add_argument("--validation-split", default="validation",
                      help="split used for validation; when absent, --validation-fraction of the curves is held out")
    data.add_argument("--validation-fraction", type=fraction, default=0.1)
    data.add_argument("--windows", choices=("random", "sequential"), default="random",
                      help="random: one random window per curve and epoch (official pretraining); sequential: all "
                      "official windows (the paper's fine-tuning)")
    data.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader worker processes")

    model = parser.add_argument_group("model")
    model.add_argument("--init-from", help="pretrained folder to continue from (AstromerForMaskedReconstruction or "
                       "AstromerModel weights); architecture flags are then not allowed")
    model.add_argument("--num-layers", type=positive_int, help="blocks (Astromer 2: 6)")
    model.add_argument("--hidden-size", type=positive_int, help="d_model (Astromer 2: 256)")
    model.add_argument("--num-heads", type=positive_int, help="attention heads (Astromer 2: 4)")
    model.add_argument("--intermediate-size", type=positive_int, help="feed-forward width (Astromer 2: 512)")
    model.add_argument("--window-size", type=positive_int, help="observations per window (Astromer 2: 200)")
    model.add_argument("--dropout", type=fraction, help="hidden dropout (Astromer 2 default 0.1)")
    token = model.add_mutually_exclusive_group()
    token.add_argument("--mask-token", dest="mask_token", action="store_const", const=True, default=None,
                       help="substitute the trainable MASK token at masked positions (default for new models)")
    token.add_argument("--no-mask-token", "--released-behaviour", dest="mask_token", action="store_const",
                       const=False, help="the released Astromer 2's behaviour: no MASK token (Keras dropped it), "
                       "masked magnitudes stay visible to their own query")
    model.add_argument("--no-loss-weights", action="store_true", help="unweighted masked RMSE")
    model.add_argument("--attn-implementation", choices=ATTENTION_IMPLEMENTATIONS, default="sdpa",
                       help="attention backend (default sdpa); on CPU with --mixed-precision bf16, astromer_blocked is "
                            "1.2-1.5x faster per step")
    model.add_argument("--onednn-linears", action="store_true",
                       help="CPU bf16: run the linear layers through oneDNN with the bias and tanh fused into the GEMM "
                            "(astromer_kernels.cpu_linear; same weights and saved files; no effect in fp32 or on GPU)")
    model.add_argument("--packing", action="store_true",
                       help="pack windows without padding (cu_seqlens); uses astromer_varlen unless "
                            "--attn-implementation astromer_blocked")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--learning-rate", type=positive_float, default=1e-3)
    optim.add_argument("--adam-beta1", type=fraction, default=0.9)
    optim.add_argument("--adam-beta2", type=fraction, default=0.98)
    optim.add_argument("--adam-epsilon", type=positive_float, default=1e-9)
    optim.add_argument("--weight-decay", type=float, default=0.0)
    optim.add_argument("--lr-scheduler", default="constant",
                       help="transformers scheduler name (constant, constant_with_warmup, linear, cosine, ...)")
    optim.add_argument("--warmup-steps", type=non_negative_int, default=0)
    optim.add_argument("--max-grad-norm", type=positive_float, default=None, help="clip gradients (official: off)")
    optim.add_argument("--batch-size", type=positive_int, default=256, help="windows per process and step")
    optim.add_argument("--gradient-accumulation-steps", type=positive_int, default=1)
    optim.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None,
                       help="default: the accelerate config / launcher setting")

    loop = parser.add_argument_group("loop")
    loop.add_argument("--epochs", type=positive_int, default=10000, help="maximum epochs (official: 10000)")
    loop.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimizer steps")
    loop.add_argument("--eval-every", type=positive_int, default=None,
                      help="validate every N optimizer steps (default: at the end of every epoch)")
    loop.add_argument("--patience", type=positive_int, default=20,
                      help="early stopping: evaluations without a better validation RMSE (official: 20 epochs)")
    loop.add_argument("--save-every", type=positive_int, default=None,
                      help="checkpoint every N optimizer steps (default: at the end of every epoch)")
    loop.add_argument("--save-total-limit", type=positive_int, default=2, help="checkpoints kept")
    loop.add_argument("--log-every", type=positive_int, default=10, help="log the training loss every N steps")
    loop.add_argument("--seed", type=int, default=0)
    loop.add_argument("--report-to", choices=("auto", "jsonl", "tensorboard", "all", "none"), default="auto",
                      help="auto: JSONL, plus TensorBoard when it is installed")
    loop.add_argument("--run-name", default="pretrain")

    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", required=True, help="run folder: final model, checkpoints/, logs/")
    out.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")
    out.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                     help="continue the run in --output-dir from its latest checkpoint (or the given one)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    # testing aid: SIGKILL this process right after the given optimizer step (simulates a crash)
    out.add_argument("--crash-after-step", type=positive_int, default=None, help=argparse.SUPPRESS)
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Cross-argument checks; raises ``UsageError`` with the offending flags named."""
    from astromer_train.cli_utils import UsageError

    if args.dataset is None and args.synthetic is None:
        raise UsageError("give a data source: --dataset PATH_OR_NAME or --synthetic N")
    if args.dataset is not None and not Path(args.dataset).exists() and os.sep in args.dataset:
        raise UsageError(f"--dataset {args.dataset}: no such file or folder")
    architecture = [f for f in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "window_size")
                    if getattr(args, f) is not None]
    if args.init_from is not None:
        if architecture:
            flags = ", ".join("--" + f.replace("_", "-") for f in architecture)
            raise UsageError(f"{flags} cannot be combined with --init-from: the architecture comes from the checkpoint")
        if not (Path(args.init_from) / "config.json").is_file():
            raise UsageError(f"--init-from {args.init_from}: no config.json there (expected a save_pretrained folder)")
    hidden = args.hidden_size or 256
    heads = args.num_heads or 4
    if args.init_from is None and hidden % heads:
        raise UsageError(f"--hidden-size {hidden} must be a multiple of --num-heads {heads}")
    if args.packing and args.attn_implementation == "eager":
        raise UsageError("--packing needs --attn-implementation astromer_varlen or astromer_blocked (sdpa is switched "
                         "to astromer_varlen)")
    if args.resume is not None and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if args.resume is not None and args.resume != "latest" and not Path(args.resume).is_dir():
        raise UsageError(f"--resume {args.resume}: no such checkpoint folder")
    if args.resume is not None and not Path(args.output_dir).is_dir():
        raise UsageError(f"--resume: output folder {args.output_dir} does not exist (nothing to resume)")
    if args.eval_every is not None and args.save_every is not None and args.save_every % args.eval_every:
        logger.info("--save-every is not a multiple of --eval-every: a resume may re-run an evaluation")


# ------------------------------------------------------------------------------------------------------- state
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


def build_model(args: argparse.Namespace):
    """A new (or ``--init-from``) ``AstromerForMaskedReconstruction`` configured from the arguments."""
    from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction

    overrides: dict[str, Any] = {}
    if args.dropout is not None:
        overrides["hidden_dropout_prob"] = args.dropout
    if args.no_loss_weights:
        overrides["use_loss_weights"] = False
    if args.init_from is not None:
        if args.mask_token is not None:
            overrides["use_mask_token"] = args.mask_token
        model = AstromerForMaskedReconstruction.from_pretrained(args.init_from, **overrides)
    else:
        sizes = {
            "num_hidden_layers": args.num_layers,
            "hidden_size": args.hidden_size,
            "num_attention_heads": args.num_heads,
            "intermediate_size": args.intermediate_size,
            "window_size": args.window_size,
        }
        config = AstromerConfig.astromer2(
            use_mask_token=True if args.mask_token is None else args.mask_token,
            **{k: v for k, v in sizes.items() if v is not None},
            **overrides,
        )
        model = AstromerForMaskedReconstruction(config)
    implementation = args.attn_implementation
    if args.packing and implementation != "astromer_blocked":
        implementation = "astromer_varlen"
    if implementation.startswith("astromer_"):
        from astromer_kernels.hf_attention import register_astromer_varlen

        register_astromer_varlen()
    model.set_attn_implementation(implementation)
    if args.onednn_linears:
        from astromer_kernels.cpu_linear import use_onednn_linears
        from astromer_train.cli_utils import UsageError

        if not use_onednn_linears(model):
            raise UsageError("--onednn-linears: this PyTorch build has no oneDNN linear operator "
                             "(torch.ops.mkldnn._linear_pointwise)")
    return model


def _trackers(args: argparse.Namespace, logging_dir: Path) -> list:
    from astromer_train.tracking import JSONLTracker

    has_tensorboard = True
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        has_tensorboard = False
    if args.report_to == "none":
        return []
    trackers: list = []
    if args.report_to in ("auto", "jsonl", "all"):
        trackers.append(JSONLTracker(args.run_name, logging_dir))
    if args.report_to in ("tensorboard", "all") and not has_tensorboard:
        from astromer_train.cli_utils import UsageError

        raise UsageError("--report-to tensorboard needs the tensorboard package (pip install tensorboard)")
    if args.report_to in ("auto", "tensorboard", "all") and has_tensorboard:
        trackers.append("tensorboard")
    return trackers


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoints/step-*`` folder of a run (temporary ``.tmp-*`` folders are ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = sorted(
        (int(p.name[len(CHECKPOINT_PREFIX):]), p)
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()
    )
    return steps[-1][1] if steps else None


# --------------------------------------------------------------------------------------------------- the run
@dataclass
class PretrainingData:
    """Cleaned training and validation curves (see ``astromer_train.data``)."""

    train: Any
    validation: Any


def load_pretraining_data(args: argparse.Namespace, window_size: int):
    from astromer_train.data import CleanedCurves, load_light_curves, split_train_validation
    from modeling_astromer import AstromerFeatureExtractor

    splits = load_light_curves(args.dataset, synthetic=args.synthetic, survey=args.survey, seed=args.seed)
    train_table, val_table = split_train_validation(
        splits, args.train_split, args.validation_split, args.validation_fraction, args.seed
    )
    fe = AstromerFeatureExtractor(window_size=window_size)
    return PretrainingData(
        train=CleanedCurves.from_table(train_table, fe, name=f"split {args.train_split!r}"),
        validation=CleanedCurves.from_table(val_table, fe, name="validation curves"),
    )


@torch.no_grad()
def evaluate_reconstruction(model, dataloader, accelerator, use_weights: bool) -> dict[str, float]:
    """Validation metrics over the whole split (all processes): the official (weighted) masked RMSE
    ``sqrt(mean_windows(sum m w e² / sum m))``, the unweighted RMSE over probed points, and R²."""
    from modeling_astromer.modeling_astromer import per_window_sum

    model.eval()
    rows = []
    for batch in dataloader:
        output = model(**batch)
        recon = output.reconstruction.float()
        labels = batch["labels"].float()
        cu_seqlens = batch.get("cu_seqlens")  # packed batches: sums per packed window; fillers dropped below
        mask = batch["loss_mask"].float()
        weights = batch["loss_weights"].float() if use_weights else torch.ones_like(mask)
        squared = (labels - recon).pow(2) * mask
        sums = [squared * weights, mask, squared, labels * mask, labels.pow(2) * mask]
        stats = torch.stack([per_window_sum(x, cu_seqlens) for x in sums], -1)
        rows.append(stats if cu_seqlens is None else stats[batch["sequence_index"] >= 0])
    stats = accelerator.gather_for_metrics(torch.cat(rows)).double()
    model.train()
    weighted, count, squared, label_sum, label_sq = stats.unbind(-1)
    per_window = torch.where(count > 0, weighted / count.clamp_min(1), 0.0)
    total = (label_sq - label_sum.pow(2) / count.clamp_min(1)).sum()  # sum of (y - ybar_window)^2
    return {
        "rmse": float(per_window.mean().sqrt()),
        "rmse_unweighted": float((squared.sum() / count.sum().clamp_min(1)).sqrt()),
        "r2": float(1.0 - squared.sum() / total) if total > 0 else float("nan"),
        "n_windows": int(count.numel()),
    }


def _save_checkpoint(accelerator, output_dir: Path, step: int, keep: int) -> None:
    root = output_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        complete = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_model(accelerator, model, folder: Path, extra_files: dict[str, Any] | None = None) -> None:
    """``save_pretrained`` of the unwrapped model (collective: works under FSDP/DeepSpeed), atomically."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        from astromer_train.cli_utils import write_json_atomic

        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict)
        for name, payload in (extra_files or {}).items():
            write_json_atomic(tmp / name, payload)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    accelerator.wait_for_everyone()


def run_pretraining(
    args: argparse.Namespace, data: PretrainingData | None = None, end_training: bool = True
) -> dict[str, Any]:
    """The training loop; returns the summary also written to ``OUT/training_summary.json``.

    ``data`` lets callers (fine-tuning) pass their own cleaned curves instead of ``--dataset``/``--synthetic``;
    ``end_training=False`` keeps the process group alive for a following stage (``Trainer``).
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from astromer_train.cli_utils import UsageError, clear_output_dir, prepare_output_dir, write_json_atomic
    from astromer_train.data import DeterministicMaskingCollator, EpochShuffleSampler, WindowDataset
    from modeling_astromer import AstromerFeatureExtractor

    output_dir = prepare_output_dir(args.output_dir, args.overwrite, resume=args.resume is not None)
    resume_from: Path | None = None
    if args.resume is not None:
        resume_from = latest_checkpoint(output_dir) if args.resume == "latest" else Path(args.resume)
        if resume_from is None:
            raise UsageError(f"--resume: no checkpoint in {output_dir / 'checkpoints'}")

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=_trackers(args, output_dir / "logs") or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    if args.overwrite and accelerator.is_main_process:
        clear_output_dir(output_dir)
    accelerator.wait_for_everyone()
    set_seed(args.seed)
    if args.quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()

    model = build_model(args)
    if args.onednn_linears and (accelerator.mixed_precision != "bf16" or accelerator.device.type != "cpu"):
        logger.warning("--onednn-linears changes nothing here: it acts on the CPU under bf16 mixed precision "
                       "(this run: %s on %s)", accelerator.mixed_precision, accelerator.device.type)
    config = model.config
    window_size = config.window_size
    if data is None:
        data = load_pretraining_data(args, window_size)

    train_windows = WindowDataset(data.train, args.windows, window_size, seed=args.seed)
    val_windows = WindowDataset(data.validation, args.windows, window_size, seed=args.seed + 1)
    fractions = (config.probed_fraction, config.random_fraction, config.same_fraction)
    collate: Any = DeterministicMaskingCollator(*fractions, window_size=window_size, seed=args.seed)
    val_collate: Any = DeterministicMaskingCollator(*fractions, window_size=window_size, seed=args.seed + 1)
    if args.packing:
        from modeling_astromer.packing import AstromerPackingCollator

        collate = AstromerPackingCollator(max_seqlen=window_size, base_collator=collate)
        val_collate = AstromerPackingCollator(max_seqlen=window_size, base_collator=val_collate)

    train_sampler = EpochShuffleSampler(len(train_windows), seed=args.seed, shuffle=True)
    loader_kwargs = dict(num_workers=args.num_workers, pin_memory=accelerator.device.type == "cuda")
    train_loader = torch.utils.data.DataLoader(
        train_windows, batch_size=args.batch_size, sampler=train_sampler, collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed), **loader_kwargs,
    )
    val_loader = torch.utils.data.DataLoader(
        val_windows, batch_size=args.batch_size, sampler=EpochShuffleSampler(len(val_windows), shuffle=False, fixed_epoch=0),
        collate_fn=val_collate, generator=torch.Generator().manual_seed(args.seed + 1), **loader_kwargs,
    )

    optimizer = torch.optim.Adam(
        model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon, weight_decay=args.weight_decay,
    )
    batches_per_epoch = math.ceil(len(train_windows) / (args.batch_size * accelerator.num_processes))
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    total_steps = args.max_steps or steps_per_epoch * args.epochs
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps,
                              num_training_steps=total_steps)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)

    run_config = {
        **{k: v for k, v in vars(args).items() if k != "crash_after_step"},
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision_effective": accelerator.mixed_precision,
        "n_train_curves": len(data.train),
        "n_validation_curves": len(data.validation),
        "n_parameters": sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
        "use_mask_token": config.use_mask_token,
        "onednn_linear_layers": sum(type(m).__name__ == "OneDnnLinear" for m in model.modules()),
    }
    accelerator.init_trackers(args.run_name, config={k: v for k, v in run_config.items()
                                                     if isinstance(v, (int, float, str, bool)) or v is None})
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        logger.info("resumed from %s at optimizer step %d (epoch %d, batch %d)", resume_from,
                    progress.global_step, progress.epoch, progress.batch_in_epoch)
        if progress.finished:
            logger.warning("the run in %s had already finished; nothing to do", output_dir)

    use_weights = bool(config.use_loss_weights)
    fe = AstromerFeatureExtractor(window_size=window_size)
    bar = tqdm(total=total_steps, initial=progress.global_step, disable=args.quiet or not accelerator.is_local_main_process,
               desc="pretrain", dynamic_ncols=True)
    running_loss = torch.zeros((), device=accelerator.device)
    running_count = 0

    def evaluate_and_track() -> None:
        metrics = evaluate_reconstruction(model, val_loader, accelerator, use_weights)
        progress.last_evaluated_step = progress.global_step
        improved = metrics["rmse"] < progress.best_metric
        if improved:
            progress.best_metric = metrics["rmse"]
            progress.best_step = progress.global_step
            progress.evaluations_without_improvement = 0
            _save_model(accelerator, model, output_dir / "best_model",
                        {"best_metrics.json": {**metrics, "step": progress.global_step}})
        else:
            progress.evaluations_without_improvement += 1
            if progress.evaluations_without_improvement >= args.patience:
                progress.stopped_early = True
        accelerator.log({f"val/{k}": v for k, v in metrics.items()} | {"val/best_rmse": progress.best_metric,
                        "epoch": progress.epoch}, step=progress.global_step)

    def at_step_end(epoch_complete: bool) -> bool:
        """Bookkeeping after an optimizer step; returns True when training must stop."""
        nonlocal running_loss, running_count
        bar.update(1)
        if progress.global_step % args.log_every == 0 and running_count:
            mean_loss = accelerator.reduce(running_loss / running_count, reduction="mean")
            accelerator.log({"train/loss": float(mean_loss), "train/lr": scheduler.get_last_lr()[0],
                             "epoch": progress.epoch}, step=progress.global_step)
            bar.set_postfix(loss=f"{float(mean_loss):.4f}", best_val=f"{progress.best_metric:.4f}")
            running_loss = torch.zeros((), device=accelerator.device)
            running_count = 0
        if (progress.global_step % args.eval_every == 0) if args.eval_every else epoch_complete:
            evaluate_and_track()
        done = (progress.stopped_early or progress.global_step >= total_steps
                or progress.epoch >= args.epochs)
        if ((progress.global_step % args.save_every == 0) if args.save_every else epoch_complete) and not done:
            _save_checkpoint(accelerator, output_dir, progress.global_step, args.save_total_limit)
        if args.crash_after_step is not None and progress.global_step == args.crash_after_step:
            accelerator.wait_for_everyone()
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    model.train()
    batches_per_epoch = len(train_loader)
    done = progress.finished or progress.stopped_early or progress.global_step >= total_steps
    while not done and progress.epoch < args.epochs:
        train_sampler.set_epoch(progress.epoch)
        train_loader.set_epoch(progress.epoch)
        loader = (accelerator.skip_first_batches(train_loader, progress.batch_in_epoch)
                  if progress.batch_in_epoch else train_loader)
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            progress.batch_in_epoch += 1
            running_loss += loss.detach().float()
            running_count += 1
            if accelerator.sync_gradients:
                progress.global_step += 1
                epoch_complete = progress.batch_in_epoch >= batches_per_epoch
                if epoch_complete:
                    progress.epoch += 1
                    progress.batch_in_epoch = 0
                done = at_step_end(epoch_complete)
                if done:
                    break
    bar.close()

    if progress.last_evaluated_step != progress.global_step:
        evaluate_and_track()  # the last weights were never validated
    progress.finished = True
    _save_checkpoint(accelerator, output_dir, progress.global_step, args.save_total_limit)

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
        best = output_dir / "best_model"
        for name in ("config.json", "model.safetensors"):
            tmp = output_dir / f".{name}.tmp"
            shutil.copyfile(best / name, tmp)
            os.replace(tmp, output_dir / name)
        fe.save_pretrained(output_dir)
        write_json_atomic(output_dir / "training_summary.json", {**summary, "arguments": run_config})
    accelerator.log({"final/best_rmse": progress.best_metric}, step=progress.global_step)
    accelerator.wait_for_everyone()
    if end_training:
        accelerator.end_training()  # also destroys the process group: nothing collective after this
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``astromer pretrain``); returns the exit status."""
    from astromer_train.cli_utils import UsageError, configure_process, usage_error
    from astromer_train.data import DataSourceError

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_process()
    try:
        validate_args(args)
        summary = run_pretraining(args)
    except (UsageError, DataSourceError) as exc:
        return usage_error(parser, exc)
    if os.environ.get("RANK", "0") == "0":
        logger.info("done: %s", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
