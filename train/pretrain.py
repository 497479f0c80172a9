"""``astromer pretrain``: masked-magnitude pretraining of Astromer from the command line.

Run as ``accelerate launch train/pretrain.py --dataset DATA --output-dir OUT`` (any engine of ``train/configs/``),
``python train/pretrain.py ...``, ``python -m astromer_train.pretrain ...`` or ``astromer pretrain ...``. Two CPU
processes: ``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train/pretrain.py ...`` (``accelerate launch --cpu
--num_processes 2`` silently runs ONE process).

The flags are the fields of :class:`astromer_train.PretrainingConfig`; the run is
:func:`astromer_train.run_pretraining` (see :mod:`astromer_train.pretraining` for what it does).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from astromer_train.cli_utils import (
    add_output_arguments,
    entry_point_parser,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    run_entry_point,
)
from astromer_train.configuration import (
    ATTENTION_IMPLEMENTATIONS,
    AUTOMATIC_ATTENTION,
    COMPILE_MODES,
    MIXED_PRECISION,
    REPORT_TO,
    SURVEYS,
    WINDOW_SAMPLING,
    PretrainingConfig,
)
from astromer_train.pretraining import run_pretraining

logger = logging.getLogger("astromer_train.pretrain")


def build_parser() -> argparse.ArgumentParser:
    parser, data, source = entry_point_parser(
        "astromer pretrain",
        "Pretrain Astromer (masked magnitude reconstruction) with Accelerate. "
        "Use `accelerate launch` (configs in train/configs/) for GPUs, DDP, FSDP2 or DeepSpeed.",
    )
    source.add_argument("--dataset", help="save_to_disk folder, parquet file/folder, or load_dataset name (offline)")
    source.add_argument("--synthetic", type=positive_int, metavar="N", help="generate N synthetic light curves")
    data.add_argument("--survey", choices=SURVEYS, default="macho", help="survey of --synthetic")
    data.add_argument("--train-split", default="train")
    data.add_argument("--validation-split", default="validation",
                      help="split used for validation; when absent, --validation-fraction of the curves is held out")
    data.add_argument("--validation-fraction", type=fraction, default=0.1)
    data.add_argument("--windows", choices=WINDOW_SAMPLING, default="random",
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
    model.add_argument("--attn-implementation", choices=(AUTOMATIC_ATTENTION, *ATTENTION_IMPLEMENTATIONS),
                       default=AUTOMATIC_ATTENTION,
                       help="attention backend; auto: sdpa for padded batches, astromer_varlen for packed ones "
                            "(--packing). On CPU with --mixed-precision bf16, astromer_blocked is 1.2-1.5x faster "
                            "per step")
    model.add_argument("--onednn-linears", action="store_true",
                       help="CPU bf16: run the linear layers through oneDNN with the bias and tanh fused into the GEMM "
                            "(astromer_kernels.cpu_linear; same weights and saved files; no effect in fp32 or on GPU)")
    model.add_argument("--packing", action="store_true",
                       help="pack windows without padding (cu_seqlens); needs an attention implementation that "
                            "attends within packed sequences (astromer_varlen, the automatic choice, or "
                            "astromer_blocked)")

    compiled = parser.add_argument_group("compilation")
    compiled.add_argument("--compile", action="store_true",
                          help="run the training loss (forward and backward) as one torch.compile graph; with "
                               "--packing every training batch is padded to a fixed token budget (static shapes)")
    compiled.add_argument("--compile-mode", choices=COMPILE_MODES, default="auto",
                          help="auto: reduce-overhead (CUDA graphs) on one CUDA device without gradient accumulation, "
                               "default elsewhere (CUDA graphs have not yet been run on a GPU: use default if they "
                               "fail)")
    compiled.add_argument("--max-tokens", type=positive_int, default=None,
                          help="packed batches: tokens per training batch (default with --compile: the mean tokens "
                               "of a batch plus 4 standard deviations; a batch with more is padded to a fallback "
                               "budget that holds the --batch-size longest windows)")
    compiled.add_argument("--max-sequences", type=positive_int, default=None,
                          help="packed batches: sequences per training batch, windows plus budget padding (default: "
                               "the most a batch of the data can need)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--learning-rate", type=positive_float, default=None,
                       help="default 1e-3 from scratch, 1e-4 with --init-from (continued pretraining)")
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
    optim.add_argument("--mixed-precision", choices=[m for m in MIXED_PRECISION if m], default=None,
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
    loop.add_argument("--report-to", choices=REPORT_TO, default="auto",
                      help="auto: JSONL, plus TensorBoard when it is installed")
    loop.add_argument("--run-name", default="pretrain")

    out = add_output_arguments(parser, "run folder: final model, checkpoints/, logs/")
    out.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                     help="continue the run in --output-dir from its latest checkpoint (or the given one)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``astromer pretrain``); returns the exit status."""
    status, _, summary = run_entry_point(build_parser(), PretrainingConfig, run_pretraining, argv)
    if summary is not None and os.environ.get("RANK", "0") == "0":
        logger.info("done: %s", json.dumps(summary))
    return status


if __name__ == "__main__":
    sys.exit(main())
