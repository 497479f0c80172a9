"""Throughput of the released Astromer 2 configuration (6 blocks, d=256, F=512), batch 256 windows of 200.

Measures, on the current device (CPU by default, 2 threads unless ``--threads``):

* training windows/s: forward + backward + Adam step of ``AstromerForMaskedReconstruction`` on a masked batch;
* embedding windows/s: ``AstromerModel.embed(pooling="skip")`` under ``torch.inference_mode``;

for the attention implementations below, in fp32 and bf16 autocast; bf16's accuracy loss is the max |Δ| of the
reconstruction and of the loss against fp32 on the same batch. It also measures the matmul rate in the same run (a
GEMM mix with the model's shapes: tokens × 256 × 256/512, before and after the models) and reports the model-FLOP
utilisation = model FLOP/s ÷ the mean rate. The models are timed round-robin (one step of each per round), so a drift
in the machine's speed affects all rows alike.

Every ratio is to a baseline measured in the same run: ``× sdpa fp32`` (always measured), and ``× TF``, the official
TensorFlow code run beside it (:mod:`tensorflow_reference`, started before and after the models; the mean is used)
when ``--tf-python`` (a Python with ``tensorflow-cpu==2.21.0`` and ``tf-keras``) and ``--tf-code`` (a checkout of
``astromer-science/main-code``) are given; without them the TF columns are left out. The header and the log record
the host: CPU model, the AMX / AVX-512 bf16 flags, load average before and after, OpenMP wait policy, torch version.

Implementations: ``eager``, ``sdpa``, ``astromer_blocked`` (blocked GEMM attention, the CPU bf16 path), ``packed``
and ``auto`` (what the ``astromer`` command and ``load_pipeline`` pick on this host:
:func:`modeling_astromer.host_defaults.choose_attn_implementation`, with the oneDNN linear layers under bf16 as
``astromer embed --precision bf16`` uses them); a ``+onednn`` suffix (e.g. ``astromer_blocked+onednn``) also swaps
in the oneDNN linear layers of :mod:`astromer_kernels.cpu_linear` (bias and tanh fused into the bf16 GEMMs; in fp32
they are ``nn.Linear``). Like the ``astromer`` CLI and the training scripts, the benchmark lets idle OpenMP threads
sleep (:mod:`astromer_train.openmp`) and lets glibc keep freed memory (:mod:`astromer_kernels.allocator`);
``--default-allocator`` measures without the latter.

    python train/benchmarks/throughput.py [--repeats 5] [--threads 2] [--json out.json] [--default-allocator]
        [--implementations auto sdpa astromer_blocked+onednn ...] [--matmul-tokens N]
        [--tf-python /path/to/tf-env/bin/python --tf-code /path/to/main-code]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from astromer_train.openmp import openmp_wait_policy  # isort: skip  (first: sets the OpenMP wait policy before torch loads, as the CLI does)
import torch

from astromer_kernels.allocator import keep_freed_memory
from astromer_kernels.cpu_linear import use_onednn_linears
from astromer_kernels.host import host_info, load_average
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction, AstromerMaskingCollator
from modeling_astromer.host_defaults import choose_attn_implementation
from modeling_astromer.packing import AstromerPackingCollator

BASELINE = ("sdpa", "fp32")
TF_SCRIPT = Path(__file__).with_name("tensorflow_reference.py")


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
        self.selection = None
        if attention == "auto" and precision == "bf16" and device.type == "cpu":
            linears = linears or "onednn"  # as ``astromer embed --precision bf16`` runs on a CPU
        if linears == "onednn":
            if not use_onednn_linears(self.model):
                raise RuntimeError("this PyTorch build has no oneDNN linear operator")
        elif linears:
            raise ValueError(f"unknown linear layers {linears!r} (only +onednn)")
        if attention == "packed":
            self.model.set_attn_implementation("astromer_varlen")
            inputs = AstromerPackingCollator(max_seqlen=200)(dict(batch))
            inputs.pop("sequence_index")
        elif attention == "auto":
            self.selection = choose_attn_implementation(self.model, precision=precision)
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


def tensorflow_rates(python: str, code: str, batch_size: int, repeats: int) -> dict:
    """Windows/s of the official TensorFlow model, measured by :mod:`tensorflow_reference` in ``python`` with the
    sources in ``code`` importable; ``{"error": ...}`` when it cannot run."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=str(Path(code).resolve()), TF_CPP_MIN_LOG_LEVEL="2")
    command = [python, str(TF_SCRIPT), "--batch-size", str(batch_size), "--repeats", str(repeats)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=code, check=False)
    except OSError as exc:
        return {"error": f"{python}: {exc}"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def host_lines(load_before, load_after, threads: int) -> list[str]:
    """The host of the numbers: CPU model and bf16 flags, threads, load average, OpenMP wait policy."""
    def load(values) -> str:
        return "n/a" if values is None else ", ".join(f"{v:.2f}" for v in values)

    return [(f"host: {host_info().describe()}; {threads} threads; load average (1, 5, 15 min) before "
             f"{load(load_before)}, after {load(load_after)}"), f"OpenMP: {openmp_wait_policy()}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median), after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--implementations", nargs="+",
                        default=["auto", "eager", "sdpa", "astromer_blocked", "astromer_blocked+onednn", "packed"],
                        help="attention implementations; a '+onednn' suffix also swaps in the oneDNN linear layers; "
                             "sdpa fp32, the baseline of the ratios, is always measured")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--matmul-tokens", type=int, default=256 * 200,
                        help="rows of the GEMMs that measure the matmul rate (default: one batch of 256 windows of 200)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc malloc at its defaults (freed activations go back to the kernel)")
    parser.add_argument("--tf-python", help="a Python with tensorflow-cpu 2.21 and tf-keras: adds the × TF columns")
    parser.add_argument("--tf-code", help="a checkout of astromer-science/main-code (with --tf-python)")
    parser.add_argument("--tf-repeats", type=int, default=3, help="timed calls of each TensorFlow measurement")
    args = parser.parse_args(argv)
    if bool(args.tf_python) != bool(args.tf_code):
        parser.error("--tf-python and --tf-code go together")
    load_before = load_average()
    allocator = "allocator unchanged (--default-allocator)" if args.default_allocator else keep_freed_memory()
    torch.set_num_threads(args.threads)
    config = AstromerConfig.astromer2(hidden_dropout_prob=0.0)
    batch = make_batch(args.batch_size)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    tf_before = tensorflow_rates(args.tf_python, args.tf_code, args.batch_size, args.tf_repeats) if args.tf_python else None
    rates = {name: matmul_rate(dtype, args.matmul_tokens, device=args.device) for name, dtype in dtypes.items()}
    backward_rates = {name: matmul_rate(dtype, args.matmul_tokens, device=args.device, backward=True)
                      for name, dtype in dtypes.items()}
    print(f"# matmul GFLOP/s: {rates}", flush=True)
    device = torch.device(args.device)
    cells = [(i, p) for i in args.implementations for p in args.precisions]
    if BASELINE not in cells:
        cells.insert(0, BASELINE)
    runners, results = {}, {}
    for implementation, precision in cells:
        try:
            runners[implementation, precision] = Runner(config, implementation, precision, batch, device)
        except Exception as exc:  # noqa: BLE001 - reported as a row
            results[implementation, precision] = exc
    results.update(measure_interleaved(runners, args.repeats))
    # the machine's speed can drift over a long run: MFU uses the mean of the rates measured before and after
    rates_after = {name: matmul_rate(dtype, args.matmul_tokens, device=args.device) for name, dtype in dtypes.items()}
    tf_after = tensorflow_rates(args.tf_python, args.tf_code, args.batch_size, args.tf_repeats) if args.tf_python else None
    load_after = load_average()
    rates_before, rates = rates, {name: (rates[name] + rates_after[name]) / 2 for name in rates}
    tf = None
    if tf_before is not None:
        failed = [r["error"] for r in (tf_before, tf_after) if "error" in r]
        tf = {"error": failed[0]} if failed else {
            phase: (tf_before[phase] + tf_after[phase]) / 2 for phase in ("train", "infer")}
    baseline = results.get(BASELINE)
    if isinstance(baseline, Exception) or baseline is None:
        raise SystemExit(f"the baseline sdpa fp32 did not run: {baseline!r}")
    rows, reference = [], {}
    for implementation, precision in cells:
        result = results[implementation, precision]
        label = implementation
        runner = runners.get((implementation, precision))
        if runner is not None and runner.selection is not None:
            label = f"{implementation} ({runner.selection.choice})"
        if isinstance(result, Exception):
            rows.append({"implementation": label, "precision": precision, "error": repr(result)[:200]})
            continue
        print(f"# {label} {precision}: train {result['train']:.1f} win/s, embed {result['infer']:.1f} "
              f"win/s, loss {result['loss']:.6f}", flush=True)
        if precision == "fp32":
            reference[implementation] = result
        row = {"implementation": label, "precision": precision,
               "train_windows_per_s": result["train"], "embed_windows_per_s": result["infer"],
               "train_vs_sdpa_fp32": result["train"] / baseline["train"],
               "embed_vs_sdpa_fp32": result["infer"] / baseline["infer"],
               "train_mfu": result["train"] * model_flops_per_window(config, training=True) / 1e9 / rates[precision],
               "embed_mfu": result["infer"] * model_flops_per_window(config, training=False) / 1e9 / rates[precision]}
        if runner is not None and runner.selection is not None:
            row["selection"] = runner.selection.reason
        if tf is not None and "error" not in tf:
            row["train_vs_tf"], row["embed_vs_tf"] = result["train"] / tf["train"], result["infer"] / tf["infer"]
        if precision != "fp32" and implementation in reference:
            base = reference[implementation]
            mask = batch["attention_mask"].bool() if not implementation.startswith("packed") else None
            a, b = base["reconstruction"], result["reconstruction"]
            diff = (a - b).abs() if mask is None else (a - b).abs()[mask]
            row["max_abs_diff_reconstruction"] = float(diff.max())
            row["abs_diff_loss"] = abs(base["loss"] - result["loss"])
        rows.append(row)
    with_tf = tf is not None and "error" not in tf
    columns = ["attention", "precision", "train win/s", "× sdpa fp32", *(["× TF"] if with_tf else []),
               "embed win/s", "× sdpa fp32", *(["× TF"] if with_tf else []), "train MFU", "embed MFU",
               "bf16 max|Δ| recon / |Δ| loss"]
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    parameters = sum(p.numel() for p in AstromerForMaskedReconstruction(config).parameters())
    lines = [(f"{time.strftime('%Y-%m-%d %H:%M %Z')}: torch {torch.__version__}, {where}, "
              f"batch {args.batch_size}×200, Astromer 2 ({parameters:,} params)"),
             *host_lines(load_before, load_after, args.threads),
             ("matmul rate (same run, model GEMM mix; mean of before / after the models): "
              + ", ".join(f"{p} {rates[p]:.1f} GFLOP/s ({rates_before[p]:.1f} / {rates_after[p]:.1f})"
                          for p in ("fp32", "bf16"))),
             ("the same GEMMs as the backward runs them (input and weight gradients): "
              + ", ".join(f"{p} {backward_rates[p]:.1f} GFLOP/s ({100 * backward_rates[p] / rates[p]:.0f} %)"
                          for p in ("fp32", "bf16"))),
             allocator,
             _hidden_keys_line(config, batch)]
    if tf is None:
        lines.append("official TensorFlow code: not run (give --tf-python and --tf-code for the × TF columns)")
    elif not with_tf:
        lines.append(f"official TensorFlow code: failed ({tf['error']})")
    else:
        lines.append(f"official TensorFlow {tf_before.get('tensorflow')} (same run, mean of before / after the models):"
                     f" train {tf['train']:.1f} win/s ({tf_before['train']:.1f} / {tf_after['train']:.1f}), "
                     f"inference {tf['infer']:.1f} win/s ({tf_before['infer']:.1f} / {tf_after['infer']:.1f})")
    lines += [f"{r['implementation']}: {r['selection']}" for r in rows if "selection" in r]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['implementation']} | {r['precision']} | not run: {r['error']} |"
                         + "|" * (len(columns) - 3))
            continue
        acc = (f"{r['max_abs_diff_reconstruction']:.2e} / {r['abs_diff_loss']:.2e}"
               if "abs_diff_loss" in r else "reference")
        train = [f"{r['train_windows_per_s']:.1f}", f"{r['train_vs_sdpa_fp32']:.2f}",
                 *([f"{r['train_vs_tf']:.2f}"] if with_tf else [])]
        embed = [f"{r['embed_windows_per_s']:.1f}", f"{r['embed_vs_sdpa_fp32']:.2f}",
                 *([f"{r['embed_vs_tf']:.2f}"] if with_tf else [])]
        lines.append("| " + " | ".join([r["implementation"], r["precision"], *train, *embed,
                                        f"{100 * r['train_mfu']:.0f} %", f"{100 * r['embed_mfu']:.0f} %", acc]) + " |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "host": host_info().describe(), "host_flags": host_info().flags, "torch": torch.__version__,
            "threads": args.threads, "load_before": load_before, "load_after": load_after,
            "openmp": openmp_wait_policy(), "matmul_gflops": rates, "matmul_gflops_before": rates_before,
            "matmul_gflops_after": rates_after, "backward_matmul_gflops": backward_rates,
            "tensorflow": {"before": tf_before, "after": tf_after, "mean": tf}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
