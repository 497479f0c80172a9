"""Profile one A2 training step (forward + backward + AdamW) on GPU: padded sdpa vs packed astromer_varlen.

Prints the top operators by self device time and by host time, and the number of host-device synchronisations,
so host-bound steps can be diagnosed. GPU only: `python kernels/benchmarks/profile_model_step.py`.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import modeling_astromer  # noqa: E402,F401  registers astromer_varlen
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction, AstromerMaskingCollator  # noqa: E402
from modeling_astromer.packing import AstromerPackingCollator  # noqa: E402


def make_windows(n_windows: int, seed: int = 5) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(n_windows, generator=generator) * 0.8 + torch.log(torch.tensor(80.0)))
    windows = []
    for length in lengths.clamp(5, 200).long().tolist():
        t = torch.sort(torch.rand(length, generator=generator) * 1000).values.double()
        m = torch.randn(length, generator=generator).double()
        windows.append({"magnitudes": (m - m.mean()).float(), "times": (t - t.mean()).float(),
                        "errors": (0.01 + 0.1 * torch.rand(length, generator=generator)).float()})
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=256)
    args = parser.parse_args()
    device = torch.device("cuda")
    padded = AstromerMaskingCollator(seed=0)(make_windows(args.windows))
    packed = AstromerPackingCollator(max_seqlen=200)(padded)
    for name, implementation, batch in (("padded sdpa", "sdpa", padded), ("packed varlen", "astromer_varlen", packed)):
        torch.manual_seed(0)
        config = AstromerConfig.astromer2(hidden_dropout_prob=0.0)
        config._attn_implementation = implementation
        model = AstromerForMaskedReconstruction(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
                  if k not in ("sequence_index", "errors")}

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(5):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        events = prof.key_averages()
        print(f"\n===== {name}: top by self device time (3 steps) =====")
        print(events.table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=60))
        print(f"===== {name}: top by host total time =====")
        print(events.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60))
        syncs = [e for e in events if "Synchronize" in e.key or "Memcpy" in e.key or "item" in e.key]
        for e in syncs:
            print(f"  sync-like: {e.key} x{e.count}")


if __name__ == "__main__":
    main()
