"""GPU: the 6-layer A2 training step with CUDA graphs (`torch.compile(mode="reduce-overhead")`), padded sdpa vs
packed `astromer_varlen` with a fixed token budget (static shapes), on a log-normal mix of window lengths.

The uncompiled step is host-bound at d=256 (see results/h100_model_step_profile.log); CUDA graphs remove the launch
overhead so the packed step's smaller device time shows. `python kernels/benchmarks/cudagraph_model_step.py`.
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
os.environ.setdefault("ASTROMER_KERNELS_AUTOTUNE", "0")  # no tuning launches inside graph capture
import modeling_astromer  # noqa: E402,F401
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction, AstromerMaskingCollator  # noqa: E402
from modeling_astromer.packing import AstromerPackingCollator  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from profile_model_step import make_windows  # noqa: E402


def time_step(implementation: str, batch: dict, device: torch.device, steps: int = 30) -> float:
    torch.manual_seed(0)
    config = AstromerConfig.astromer2(hidden_dropout_prob=0.0)
    config._attn_implementation = implementation
    model = AstromerForMaskedReconstruction(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-9, fused=True)
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
              if k not in ("sequence_index", "errors")}
    compiled = torch.compile(model, mode="reduce-overhead")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    start = time.perf_counter()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    print(f"  {implementation}: compile + 3 warm-up steps {time.perf_counter() - start:.1f} s", flush=True)
    best = float("inf")
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / steps * 1e3)
    return best


def main() -> None:
    device = torch.device("cuda")
    windows = make_windows(256)
    useful = sum(len(w["magnitudes"]) for w in windows) / (256 * 200)
    padded = AstromerMaskingCollator(seed=0)(windows)
    budget = 256 * 200 // 2
    packed = AstromerPackingCollator(max_tokens=budget, max_seqlen=200, pad_to_budget=True, max_sequences=512)(padded)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; useful-token fraction {useful:.1%}, "
          f"packed tokens {packed['magnitudes'].shape[-1]}", flush=True)
    padded_ms = time_step("sdpa", padded, device)
    print(f"padded sdpa, CUDA graphs: {padded_ms:.2f} ms/step", flush=True)
    packed_ms = time_step("astromer_varlen", packed, device)
    print(f"packed astromer_varlen, CUDA graphs: {packed_ms:.2f} ms/step", flush=True)
    print(f"speed-up {padded_ms / packed_ms:.2f}x (target 0.8/useful = {0.8 / useful:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
