"""One full Astromer 2 training step (forward, backward, Adam), eager vs ``torch.compile``, padded vs packed.

Run: ``python kernels/benchmarks/compiled_model_step.py [--precision bf16] [--windows 128] [--rounds 6]``. Rows, per
length mix (:mod:`length_mixes`), all in one process and timed round-robin (one step of every row per round, so a
change in the machine's speed affects all rows alike):

* ``padded eager`` / ``padded compiled``: ``(B, 200)`` batches, ``attn_implementation="sdpa"``;
* ``packed eager``: ``(1, T)`` tokens without budget padding (T changes from batch to batch);
* ``budget eager`` / ``budget compiled``: the same tokens padded to the token budget that ``pretrain --compile
  --packing`` chooses for data of this mix (:func:`astromer_train.token_budgets.choose_token_budgets`, from a
  population of ``--population`` windows), compiled with :class:`astromer_train.compiled_loss.CompiledTrainingLoss`;
* CUDA only (``--device cuda``, not yet run on a GPU): ``budget captured``, the compiled step replayed as CUDA graphs
  (``mode="reduce-overhead"``).

Packed rows use ``astromer_blocked`` on a CPU and ``astromer_varlen`` on CUDA. Each row trains its own copy of the
same initial model on the same batches; the last round's losses of the eager and compiled budget rows are printed as a
check that they train alike. Reported per row: the median time per step over the rounds (the wall time, and the
process's CPU time summed over its threads, which other processes on a shared machine disturb less; on CUDA also the
host time until the step returns and the device time between CUDA events) and the time of the first steps
(compilation), taken once for every batch shape before the timed rounds. Like the CLI, it first lets
glibc keep freed memory (:mod:`astromer_kernels.allocator`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: the interpreter is for tests, not timing")

from length_mixes import MAX_LEN, window_lengths, windows_for  # noqa: E402  (the file beside this script)

from astromer_kernels.allocator import keep_freed_memory  # noqa: E402
from astromer_kernels.host import host_info  # noqa: E402
from astromer_train.compiled_loss import CompiledTrainingLoss, eager_training_loss  # noqa: E402
from astromer_train.token_budgets import choose_token_budgets  # noqa: E402
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction, AstromerMaskingCollator  # noqa: E402
from modeling_astromer.packing import AstromerPackingCollator  # noqa: E402


def host_description() -> str:
    """CPU model, the bf16 matrix flags the kernels could use, and the load averages."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"host: {host_info().describe()}; load average {load}"


@dataclass
class Row:
    name: str
    layout: str  # "padded", "packed" or "budget"
    implementation: str
    compiled: bool = False
    captured: bool = False
    batches: list[dict] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    host_times: list[float] = field(default_factory=list)
    device_times: list[float] = field(default_factory=list)
    first_steps: float = 0.0
    last_loss: float = float("nan")


def build_step(row: Row, config: AstromerConfig, device: torch.device, precision: str):
    config = AstromerConfig.from_dict(config.to_dict())
    config._attn_implementation = row.implementation
    torch.manual_seed(0)
    model = AstromerForMaskedReconstruction(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    loss_fn = CompiledTrainingLoss(model, cuda_graphs=row.captured) if row.compiled else eager_training_loss(model)
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None

    def step(batch: dict) -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def timed(step, batch: dict, device: torch.device) -> tuple[float, float, float, float, float]:
    """(wall, process CPU, host, device seconds, loss) of one step; host and device only on CUDA (else NaN)."""
    if device.type != "cuda":
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = float(step(batch))
        return time.perf_counter() - start, time.process_time() - cpu_start, float("nan"), float("nan"), loss
    torch.cuda.synchronize(device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    begin.record()
    loss_tensor = step(batch)
    end.record()
    host = time.perf_counter() - start
    torch.cuda.synchronize(device)
    cpu = time.process_time() - cpu_start
    return time.perf_counter() - start, cpu, host, begin.elapsed_time(end) / 1e3, float(loss_tensor)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            if k not in ("sequence_index", "errors")}


def run_mix(mix: str, args, config: AstromerConfig, device: torch.device) -> tuple[list[Row], dict]:
    torch._dynamo.reset()  # the models of earlier mixes would count towards Dynamo's recompilation limit
    gen = torch.Generator().manual_seed(0)
    population = window_lengths(mix, args.population, gen)
    budgets = choose_token_budgets(np.asarray(population), MAX_LEN, args.windows)
    budget_collators = [AstromerPackingCollator(max_tokens=b.max_tokens, max_seqlen=MAX_LEN, pad_to_budget=True,
                                                max_sequences=b.max_sequences) for b in budgets]
    packed_implementation = "astromer_varlen" if device.type == "cuda" else "astromer_blocked"
    rows = [Row("padded eager", "padded", "sdpa"), Row("padded compiled", "padded", "sdpa", compiled=True),
            Row("packed eager", "packed", packed_implementation),
            Row("budget eager", "budget", packed_implementation),
            Row("budget compiled", "budget", packed_implementation, compiled=True)]
    if device.type == "cuda":
        rows.append(Row("budget captured", "budget", packed_implementation, compiled=True, captured=True))
    useful, fallbacks = [], 0
    for index in range(args.batches):
        lengths = population[index * args.windows:(index + 1) * args.windows]
        useful.append(sum(lengths) / (len(lengths) * MAX_LEN))
        padded = AstromerMaskingCollator(seed=index)(windows_for(lengths, gen))
        budget = next(c for c in budget_collators if sum(lengths) <= c.max_tokens)
        fallbacks += budget is not budget_collators[0]
        layouts = {"padded": padded, "packed": AstromerPackingCollator(max_seqlen=MAX_LEN)(padded),
                   "budget": budget(padded)}
        for row in rows:
            row.batches.append(to_device(layouts[row.layout], device))
    steps = {row.name: build_step(row, config, device, args.precision) for row in rows}
    for row in rows:  # first steps: compilation of every batch shape, allocator and cache warm-up
        start = time.perf_counter()
        for batch in row.batches:
            timed(steps[row.name], batch, device)
        row.first_steps = time.perf_counter() - start
    for _ in range(args.rounds):
        for batch_index in range(args.batches):
            for row in rows:
                wall, cpu, host, device_time, row.last_loss = timed(steps[row.name], row.batches[batch_index],
                                                                     device)
                row.step_times.append(wall)
                row.cpu_times.append(cpu)
                row.host_times.append(host)
                row.device_times.append(device_time)
    facts = {"useful": statistics.mean(useful), "budgets": budgets, "fallbacks": fallbacks}
    return rows, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=128, help="windows per batch")
    parser.add_argument("--batches", type=int, default=3, help="different batches of each mix, cycled")
    parser.add_argument("--rounds", type=int, default=4, help="timed passes over the batches")
    parser.add_argument("--population", type=int, default=4096, help="windows the token budget is chosen from")
    parser.add_argument("--mixes", default="lognormal80,60/40,all200")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--layers", type=int, default=6, help="blocks (Astromer 2: 6; fewer for a quick run)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    allocator = keep_freed_memory()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = AstromerConfig.astromer2(num_hidden_layers=args.layers, hidden_dropout_prob=0.0, use_mask_token=True)
    print(f"torch {torch.__version__}, {device.type}, {args.threads} threads (OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}), B={args.windows} windows, A2 ({args.layers} layers, "
          f"d=256), {args.precision}, MASK token, no dropout, Adam; {allocator}")
    print(host_description())
    timing = "median ms per step over rounds x batches: wall (host / device ms on CUDA) and process CPU ms"
    print(f"{timing}; ratios = padded eager / row; first steps = every batch shape once, compilation included")
    for mix in args.mixes.split(","):
        rows, facts = run_mix(mix, args, config, device)
        budget_text = ", fallback ".join(f"{b.max_tokens} tokens / {b.max_sequences} sequences"
                                         for b in facts["budgets"])
        print(f"\n### {mix}: {facts['useful']:.1%} useful tokens in a padded batch; budget {budget_text} "
              f"({facts['fallbacks']} of {args.batches} batches used the fallback)")
        print("| row | attention | wall ms per step | × padded eager | CPU ms per step | × padded eager | "
              "first steps (s) |")
        print("|---|---|---|---|---|---|---|")
        baseline, cpu_baseline = statistics.median(rows[0].step_times), statistics.median(rows[0].cpu_times)
        for row in rows:
            median, cpu = statistics.median(row.step_times), statistics.median(row.cpu_times)
            cell = f"{median * 1e3:.0f}"
            if device.type == "cuda":
                cell += (f" ({statistics.median(row.host_times) * 1e3:.1f} / "
                         f"{statistics.median(row.device_times) * 1e3:.1f})")
            print(f"| {row.name} | {row.implementation} | {cell} | {baseline / median:.2f}x | {cpu * 1e3:.0f} | "
                  f"{cpu_baseline / cpu:.2f}x | {row.first_steps:.1f} |")
        by_name = {row.name: row for row in rows}
        compiled = by_name["budget compiled"]
        for reference in (by_name["budget eager"], by_name["packed eager"]):
            for measure in ("step_times", "cpu_times"):
                paired = [c / e for c, e in zip(getattr(compiled, measure), getattr(reference, measure))]
                print(f"budget compiled / {reference.name}, {'wall' if measure == 'step_times' else 'CPU'} time: "
                      f"{statistics.median(paired):.2f} (median of the {len(paired)} step-by-step ratios in the same "
                      f"rounds; min {min(paired):.2f}, max {max(paired):.2f})")
        print(f"last loss: budget eager {by_name['budget eager'].last_loss:.6f}, budget compiled "
              f"{compiled.last_loss:.6f}", flush=True)
    print(f"\n{host_description()}")


if __name__ == "__main__":
    main()
