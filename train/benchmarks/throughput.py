"""Throughput of the released Astromer 2 configuration (6 blocks, d=256, F=512), batch 256 windows of 200.

Measures, on the current device (CPU by default, 2 threads unless ``--threads``):

* training windows/s: forward + backward + Adam step of ``AstromerForMaskedReconstruction`` on a masked batch;
* embedding windows/s: ``AstromerModel.embed(pooling="skip")`` under ``torch.inference_mode``;

for the attention implementations below, in fp32 and bf16 autocast; bf16's accuracy loss is the max |Δ| of the
reconstruction and of the loss against fp32 on the same batch. It also measures the matmul rate in the same run (a
GEMM mix with the model's shapes: tokens × 256 × 256/512, before and after the models) and reports the model-FLOP
utilisation = model FLOP/s ÷ the mean rate. The models are timed round-robin (one step of each per round), so a drift
in the machine's speed affects all rows alike. Ratios are against the official TensorFlow numbers measured on a
2-core AMD EPYC Zen 4 (27.9 windows/s training, 81.7 windows/s inference).

Implementations: ``eager``, ``sdpa``, ``astromer_blocked`` (blocked GEMM attention, the CPU bf16 path) and
``packed``; a ``+onednn`` suffix (e.g. ``astromer_blocked+onednn``) also swaps in the oneDNN linear layers of
:mod:`astromer_kernels.cpu_linear` (bias and tanh fused into the bf16 GEMMs; in fp32 they are ``nn.Linear``). Like the
``astromer`` CLI and the training scripts, the benchmark first lets glibc keep freed memory
(:mod:`astromer_kernels.allocator`); ``--default-allocator`` measures without that.

    python train/benchmarks/throughput.py [--repeats 5] [--threads 2] [--json out.json] [--default-allocator]
                                         [--implementations eager astromer_blocked+onednn ...] [--matmul-tokens N]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from astromer_kernels.allocator import keep_freed_memory
from astromer_kernels.cpu_linear import use_onednn_linears
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction, AstromerMaskingCollator
from modeling_astromer.packing import AstromerPackingCollator

TF_TRAIN, TF_INFER = 27.9, 81.7


def attention_flops_per_window(config, length: int = 200) -> float:
    """Forward matmul FLOPs of the attention itself (QK^T and PV over every key) in one window, all layers."""
    return float(length * config.num_hidden_layers * 2 * 2 * length * config.hidden_size)


def model_flops_per_window(config, length: int = 200, training: bool = True) -> float:
    """Matmul FLOPs of one window (2·m·n·k per GEMM); training = 3× forward (forward + 2 backward GEMMs)."""
    d, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token_linear = 2 * (4 * d * d + 2 * d * f + (2 * d * d if config.use_residual_projection else 0))
    forward = length * (n * per_token_linear + 2 * d) + attention_flops_per_window(config, length)
    return 3.0 * forward if training else float(forward)


def _hidden_keys_line(config, batch: dict) -> str:
    """How much of the training step's attention is over keys the masking task hides: MFU counts attention over all
    keys, while ``astromer_blocked`` leaves hidden keys out of its GEMMs."""
    hidden = float(batch["mask_positions"].float().mean())
    share = hidden * attention_flops_per_window(config) / model_flops_per_window(config, training=False)
    return (f"training batch: {100 * hidden:.0f} % of the keys are hidden by the masking task; MFU counts attention over "
            f"every key, so astromer_blocked, which skips hidden keys, gets credit for {100 * share:.1f} % of the "
            "model FLOPs that it does not run")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(dtype: torch.dtype, tokens: int = 51200, repeats: int = 5, device: str = "cpu",
                backward: bool = False) -> float:
    """GFLOP/s of the model's GEMM mix: (tokens×256)@(256×256) ×4 and (tokens×256)@(256×512), (tokens×512)@(512×256).

    With ``backward``, the same GEMMs as the backward pass runs them instead: input gradients ``grad @ W`` and weight
    gradients ``grad.T @ x`` (a reduction over all tokens). This is a ceiling for the training step, not the rate
    that MFU is measured against.

    Results go to preallocated buffers, so the rate is the GEMMs' own and does not depend on how the allocator
    serves fresh 25-50 MB outputs (with glibc's defaults, page faults cut it by about a quarter).
    """
    device = torch.device(device)
    activations = {width: torch.randn(tokens, width, dtype=dtype, device=device) for width in (256, 512)}
    shapes = [(256, 256)] * 4 + [(256, 512), (512, 256)]  # (in, out) of each linear layer
    weights = [torch.randn(k, n, dtype=dtype, device=device) for k, n in shapes]
    outputs = {width: torch.empty(tokens, width, dtype=dtype, device=device) for width in (256, 512)}
    weight_grads = [torch.empty(k, n, dtype=dtype, device=device) for k, n in shapes]
    flops = sum(2 * tokens * k * n for k, n in shapes) * (2 if backward else 1)

    def forward_mix():
        for (k, n), w in zip(shapes, weights):
            torch.matmul(activations[k], w, out=outputs[n])

    def backward_mix():
        for (k, n), w, grad_w in zip(shapes, weights, weight_grads):
            torch.matmul(activations[n], w.t(), out=outputs[k])  # input gradient: grad (tokens×n) @ W^T
            torch.matmul(activations[k].t(), activations[n], out=grad_w)  # weight gradient: x^T @ grad

    run = backward_mix if backward else forward_mix
    times = []
    for _ in range(repeats + 1):
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times[1:]) / 1e9


def make_batch(batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    windows = []
    for _ in range(batch_size):
        t = torch.cumsum(torch.rand(200, generator=g, dtype=torch.float64) * 3, 0)
        m = 0.3 * torch.sin(t / 7.0) + 0.05 * torch.randn(200, generator=g, dtype=torch.float64)
        windows.append({"magnitudes": (m - m.mean()).numpy(), "times": (t - t.mean()).numpy(),
                        "errors": (0.02 + 0.05 * torch.rand(200, generator=g)).numpy()})
    return AstromerMaskingCollator(seed=seed)(windows)


class Runner:
    """One model (attention implementation × precision) with its batch and optimizer, timed step by step."""

    def __init__(self, config, implementation: str, precision: str, batch: dict, device: torch.device):
        torch.manual_seed(0)
        self.device, self.windows = device, batch["magnitudes"].shape[0]
        # each model needs its own config: set_attn_implementation writes the implementation into it
        self.model = AstromerForMaskedReconstruction(copy.deepcopy(config)).to(device)
        inputs = dict(batch)
        attention, _, linears = implementation.partition("+")
        if linears == "onednn":
            if not use_onednn_linears(self.model):
                raise RuntimeError("this PyTorch build has no oneDNN linear operator")
        elif linears:
            raise ValueError(f"unknown linear layers {linears!r} (only +onednn)")
        if attention == "packed":
            self.model.set_attn_implementation("astromer_varlen")
            inputs = AstromerPackingCollator(max_seqlen=200)(dict(batch))
            inputs.pop("sequence_index")
        else:
            self.model.set_attn_implementation(attention)
        self.inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        self.embed_inputs = {k: self.inputs[k] for k in ("magnitudes", "times", "attention_mask", "cu_seqlens",
                                                         "max_seqlen") if k in self.inputs}
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
        self.train_times: list[float] = []
        self.embed_times: list[float] = []

    def _timed(self, step) -> float:
        _synchronize(self.device)
        start = time.perf_counter()
        step()
        _synchronize(self.device)
        return time.perf_counter() - start

    def train_step(self) -> float:
        def step():
            with self.autocast:
                loss = self.model(**self.inputs).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

        self.model.train()
        return self._timed(step)

    def embed(self) -> float:
        def step():
            with torch.inference_mode(), self.autocast:
                self.model.astromer.embed(**self.embed_inputs, pooling="skip")

        self.model.eval()
        return self._timed(step)

    def result(self) -> dict:
        """Median windows/s (the first, warm-up call of each kind left out) and the model's outputs now."""
        self.model.eval()
        with torch.inference_mode(), self.autocast:
            out = self.model(**self.inputs)
        return {"train": self.windows / statistics.median(self.train_times[1:]),
                "infer": self.windows / statistics.median(self.embed_times[1:]),
                "reconstruction": out.reconstruction.float().cpu(), "loss": float(out.loss)}


def measure_interleaved(runners: dict, repeats: int) -> dict:
    """Time every runner's training step, then embedding, round-robin (one call each per round), so that a machine
    whose speed drifts during the run affects every row alike. Returns results or the exception per runner."""
    results: dict = {}
    for phase in ("train_step", "embed"):
        for _ in range(repeats + 1):
            for key, runner in runners.items():
                if key in results:
                    continue
                try:
                    elapsed = getattr(runner, phase)()
                except Exception as exc:  # noqa: BLE001 - a path that cannot run here is reported, not fatal
                    results[key] = exc
                    continue
                (runner.train_times if phase == "train_step" else runner.embed_times).append(elapsed)
    for key, runner in runners.items():
        if key not in results:
            results[key] = runner.result()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median), after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--implementations", nargs="+",
                        default=["eager", "sdpa", "astromer_blocked", "astromer_blocked+onednn", "packed"],
                        help="attention implementations; a '+onednn' suffix also swaps in the oneDNN linear layers")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--matmul-tokens", type=int, default=256 * 200,
                        help="rows of the GEMMs that measure the matmul rate (default: one batch of 256 windows of 200)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda; TensorFlow ratios refer to the CPU")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc malloc at its defaults (freed activations go back to the kernel)")
    args = parser.parse_args(argv)
    allocator = "allocator unchanged (--default-allocator)" if args.default_allocator else keep_freed_memory()
    torch.set_num_threads(args.threads)
    config = AstromerConfig.astromer2(hidden_dropout_prob=0.0)
    batch = make_batch(args.batch_size)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rates = {name: matmul_rate(dtype, args.matmul_tokens, device=args.device) for name, dtype in dtypes.items()}
    backward_rates = {name: matmul_rate(dtype, args.matmul_tokens, device=args.device, backward=True)
                      for name, dtype in dtypes.items()}
    print(f"# matmul GFLOP/s: {rates}", flush=True)
    device = torch.device(args.device)
    runners, results = {}, {}
    for implementation in args.implementations:
        for precision in args.precisions:
            try:
                runners[implementation, precision] = Runner(config, implementation, precision, batch, device)
            except Exception as exc:  # noqa: BLE001 - reported as a row
                results[implementation, precision] = exc
    results.update(measure_interleaved(runners, args.repeats))
    # the machine's speed can drift over a long run: MFU uses the mean of the rates measured before and after
    rates_after = {name: matmul_rate(dtype, args.matmul_tokens, device=args.device) for name, dtype in dtypes.items()}
    rates_before, rates = rates, {name: (rates[name] + rates_after[name]) / 2 for name in rates}
    rows, reference = [], {}
    for implementation in args.implementations:
        for precision in args.precisions:
            result = results[implementation, precision]
            if isinstance(result, Exception):
                rows.append({"implementation": implementation, "precision": precision, "error": repr(result)[:200]})
                continue
            print(f"# {implementation} {precision}: train {result['train']:.1f} win/s, embed {result['infer']:.1f} "
                  f"win/s, loss {result['loss']:.6f}", flush=True)
            if precision == "fp32":
                reference[implementation] = result
            row = {"implementation": implementation, "precision": precision,
                   "train_windows_per_s": result["train"], "embed_windows_per_s": result["infer"],
                   "train_vs_tf": result["train"] / TF_TRAIN, "embed_vs_tf": result["infer"] / TF_INFER,
                   "train_mfu": result["train"] * model_flops_per_window(config, training=True) / 1e9 / rates[precision],
                   "embed_mfu": result["infer"] * model_flops_per_window(config, training=False) / 1e9 / rates[precision]}
            if precision != "fp32" and implementation in reference:
                base = reference[implementation]
                mask = batch["attention_mask"].bool() if not implementation.startswith("packed") else None
                a, b = base["reconstruction"], result["reconstruction"]
                diff = (a - b).abs() if mask is None else (a - b).abs()[mask]
                row["max_abs_diff_reconstruction"] = float(diff.max())
                row["abs_diff_loss"] = abs(base["loss"] - result["loss"])
            rows.append(row)
    header = ("| attention | precision | train win/s | × TF | embed win/s | × TF | train MFU | embed MFU | "
              "bf16 max|Δ| recon / |Δ| loss |")
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    lines = [f"torch {torch.__version__}, {where}, batch {args.batch_size}×200, Astromer 2 "
             f"({sum(p.numel() for p in AstromerForMaskedReconstruction(config).parameters()):,} params)",
             "matmul rate (same run, model GEMM mix; mean of before / after the models): "
             + ", ".join(f"{p} {rates[p]:.1f} GFLOP/s ({rates_before[p]:.1f} / {rates_after[p]:.1f})"
                         for p in ("fp32", "bf16")),
             "the same GEMMs as the backward runs them (input and weight gradients): "
             + ", ".join(f"{p} {backward_rates[p]:.1f} GFLOP/s ({100 * backward_rates[p] / rates[p]:.0f} %)"
                         for p in ("fp32", "bf16")),
             allocator,
             _hidden_keys_line(config, batch),
             "", header, "|" + "---|" * 9]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['implementation']} | {r['precision']} | not run: {r['error']} |||||||")
            continue
        acc = (f"{r['max_abs_diff_reconstruction']:.2e} / {r['abs_diff_loss']:.2e}"
               if "abs_diff_loss" in r else "reference")
        lines.append(f"| {r['implementation']} | {r['precision']} | {r['train_windows_per_s']:.1f} | "
                     f"{r['train_vs_tf']:.2f} | {r['embed_windows_per_s']:.1f} | {r['embed_vs_tf']:.2f} | "
                     f"{100 * r['train_mfu']:.0f} % | {100 * r['embed_mfu']:.0f} % | {acc} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_gflops": rates, "matmul_gflops_before": rates_before,
                                               "matmul_gflops_after": rates_after,
                                               "backward_matmul_gflops": backward_rates,
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
