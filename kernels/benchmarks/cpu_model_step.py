"""CPU benchmark: one full Astromer 2 training step (forward + backward + AdamW), padded vs packed.

Run: ``PYTHONPATH=. python kernels/benchmarks/cpu_model_step.py [--precision bf16]`` (with ``astromer_kernels``
importable). Four runs per length mix, all in the same process:

* padded ``(B, 200)`` batches with ``attn_implementation="sdpa"`` (the baseline of the ratios) and ``"astromer_blocked"``;
* packed ``(1, T)`` tokens with ``"astromer_varlen"`` (on a CPU without ``TRITON_INTERPRET`` the Triton kernel cannot
  run: its documented fallback, the blocked attention of ``"astromer_blocked"``, runs after one
  ``AttentionFallbackWarning``) and ``"astromer_blocked"``.

``--precision bf16`` runs the step under bf16 autocast. Like the CLI, it first lets glibc keep freed memory
(:mod:`astromer_kernels.allocator`); ``--default-allocator`` measures without that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: the interpreter is for tests, not timing")

from length_mixes import MAX_LEN, window_lengths, windows_for  # noqa: E402  (the file beside this script)

from astromer_kernels.allocator import keep_freed_memory  # noqa: E402
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction, AstromerMaskingCollator  # noqa: E402
from modeling_astromer.packing import AstromerPackingCollator  # noqa: E402


def time_steps(implementation: str, batch: dict, repeats: int, precision: str = "fp32") -> list[float]:
    config = AstromerConfig.astromer2(hidden_dropout_prob=0.0)
    config._attn_implementation = implementation
    torch.manual_seed(0)
    model = AstromerForMaskedReconstruction(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    inputs = {k: v for k, v in batch.items() if k not in ("sequence_index", "errors")}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocators and caches
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mixes", default="lognormal80,60/40,all200")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--default-allocator", action="store_true", help="leave glibc malloc at its defaults")
    args = parser.parse_args()
    allocator = "allocator unchanged (--default-allocator)" if args.default_allocator else keep_freed_memory()
    torch.set_num_threads(args.threads)
    runs = (("padded", "sdpa"), ("padded", "astromer_blocked"), ("packed", "astromer_varlen"),
            ("packed", "astromer_blocked"))
    print(f"torch {torch.__version__}, {args.threads} threads, B={args.windows} windows, A2 (6 layers, d=256), "
          f"{args.precision}, {allocator}; ms per step (median of {args.repeats}) and speed-up over padded sdpa")
    print(f"| mix | useful | 1/useful | " + " | ".join(f"{layout} {impl}" for layout, impl in runs) + " |")
    print("|" + "---|" * (3 + len(runs)))
    for mix in args.mixes.split(","):
        gen = torch.Generator().manual_seed(0)
        lengths = window_lengths(mix, args.windows, gen)
        padded = AstromerMaskingCollator(seed=0)(windows_for(lengths, gen))
        packed = AstromerPackingCollator(max_seqlen=MAX_LEN)(padded)
        inputs = {"padded": padded, "packed": packed}
        times = [statistics.median(time_steps(impl, inputs[layout], args.repeats, args.precision)) * 1e3
                 for layout, impl in runs]
        useful = sum(lengths) / (len(lengths) * MAX_LEN)
        cells = " | ".join(f"{t:.0f} ({times[0] / t:.2f}x)" for t in times)
        print(f"| {mix} | {useful:.1%} | {1 / useful:.2f}x | {cells} |", flush=True)


if __name__ == "__main__":
    main()
