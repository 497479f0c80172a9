"""GPU benchmark of packed varlen attention against PyTorch baselines, plus the full model step padded vs packed.

Run (GPU only): ``PYTHONUNBUFFERED=1 python kernels/benchmarks/attention.py --out $OUT/attn.json``.

Providers: eager padded, SDPA padded (default / EFFICIENT / CUDNN), SDPA on
jagged NJT, ``torch.nn.attention.varlen.varlen_attn`` (FA2 varlen), compiled FlexAttention with a document mask, ours.
Every provider passes a correctness gate (bf16 vs an fp32 reference on the valid rows, rel. L2 < 1e-2) on fresh
random inputs before it is timed. Times are medians of ``triton.testing.do_bench`` over 4 rotated input sets; each
provider is timed twice and the spread reported.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from length_mixes import MAX_LEN, window_lengths  # the file beside this script

from astromer_kernels import varlen_attention
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction, AstromerMaskingCollator
from modeling_astromer.packing import AstromerPackingCollator

HEADS, HEAD_DIM = 4, 64
BYTES_PER_S = 3.0e12  # measured device-to-device copy on the project's H100
FLOP_PER_S = 798e12  # measured bf16 GEMM on the project's H100
MODE_FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
MODE_BYTE_UNITS = {"fwd": 4, "bwd": 8, "fwd+bwd": 12}  # (T,H,D) tensors read+written at minimum
N_SETS = 4


@dataclass
class Case:
    mix: str
    n_windows: int
    mask: str  # "none" (boundaries/padding only) or "key" (32 % of each window's keys hidden, like A2 pretraining)
    lengths: list[int] = field(default_factory=list)


class Inputs:
    """One input set in packed and padded layouts (bf16), sharing values."""

    def __init__(self, case: Case, seed: int, device: torch.device, dtype=torch.bfloat16):
        gen = torch.Generator().manual_seed(seed)
        lengths = torch.tensor(case.lengths)
        self.n = len(case.lengths)
        self.total = int(lengths.sum())
        self.cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(torch.int32).to(device)
        self.max_len = int(lengths.max())
        qkv = torch.randn(self.total, 3, HEADS, HEAD_DIM, generator=gen).to(device, dtype)
        self.q, self.k, self.v = (t.contiguous() for t in qkv.unbind(1))
        self.do = torch.randn(self.total, HEADS, HEAD_DIM, generator=gen).to(device, dtype)
        seq = torch.repeat_interleave(torch.arange(self.n), lengths)
        pos = torch.arange(self.total) - torch.repeat_interleave(self.cu.cpu()[:-1].long(), lengths)
        self.seq, self.pos = seq.to(device), pos.to(device)
        visible = torch.ones(self.total, dtype=torch.bool)
        if case.mask == "key":
            visible = torch.rand(self.total, generator=gen) >= 0.32
            first = self.cu.cpu()[:-1].long()
            visible[first] = True  # every window keeps at least one visible key (real A2 windows do)
        self.visible = visible.to(device)
        self.key_bias = None if case.mask == "none" else torch.where(self.visible, 0.0, float("-inf")).float()
        # Padded (B, H, L, D) layout and key masks.
        width = MAX_LEN
        self.width = width

        def pad(x):
            out = x.new_zeros(self.n, width, HEADS, x.shape[-1])
            out[self.seq, self.pos] = x
            return out.transpose(1, 2).contiguous()

        self.qp, self.kp, self.vp, self.dop = pad(self.q), pad(self.k), pad(self.v), pad(self.do)
        key_ok = torch.zeros(self.n, width, dtype=torch.bool, device=device)
        key_ok[self.seq, self.pos] = self.visible
        self.key_ok = key_ok
        all_full = case.mix == "all200" and case.mask == "none"
        self.bool_mask = None if all_full else key_ok[:, None, None, :]
        self.float_mask = None if all_full else torch.zeros(self.n, 1, 1, width, device=device, dtype=dtype).masked_fill(
            ~key_ok[:, None, None, :], float("-inf"))

    def unpad(self, out_bhld: torch.Tensor) -> torch.Tensor:
        return out_bhld.transpose(1, 2)[self.seq, self.pos]


# --------------------------------------------------------------------------------------------------------- providers
def eager_padded(x: Inputs, grad: bool):
    q, k, v = (t.requires_grad_(grad) for t in (x.qp, x.kp, x.vp))
    s = torch.matmul(q, k.transpose(-1, -2)).float() * HEAD_DIM**-0.5
    if x.float_mask is not None:
        s = s + x.float_mask.float()
    p = torch.softmax(s, dim=-1).to(q.dtype)
    return torch.matmul(p, v), (q, k, v), x.dop


def make_sdpa(backend):
    def run(x: Inputs, grad: bool):
        q, k, v = (t.requires_grad_(grad) for t in (x.qp, x.kp, x.vp))
        if backend is None:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=x.bool_mask)
        else:
            from torch.nn.attention import sdpa_kernel

            mask = x.float_mask
            if mask is not None:
                mask = mask.expand(x.n, HEADS, x.width, x.width)
            with sdpa_kernel([backend]):
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return o, (q, k, v), x.dop

    return run


def sdpa_njt(x: Inputs, grad: bool):
    offsets = x.cu.long()
    q, k, v = (t.requires_grad_(grad) for t in (x.q, x.k, x.v))
    nq, nk, nv = (torch.nested.nested_tensor_from_jagged(t, offsets, max_seqlen=x.max_len).transpose(1, 2)
                  for t in (q, k, v))
    o = F.scaled_dot_product_attention(nq, nk, nv).transpose(1, 2).values()
    return o, (q, k, v), x.do


def fa2_varlen(x: Inputs, grad: bool):
    from torch.nn.attention.varlen import varlen_attn

    q, k, v = (t.requires_grad_(grad) for t in (x.q, x.k, x.v))
    o = varlen_attn(q, k, v, x.cu, x.cu, x.max_len, x.max_len)
    return o, (q, k, v), x.do


_flex_cache: dict = {}


def flex_doc(x: Inputs, grad: bool):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _flex_cache:
        _flex_cache["fn"] = torch.compile(flex_attention, dynamic=False)
    key = id(x)
    if key not in _flex_cache:
        seq, visible = x.seq, x.visible

        def mask_mod(b, h, qi, ki):
            return (seq[qi] == seq[ki]) & visible[ki]

        _flex_cache[key] = create_block_mask(mask_mod, None, None, x.total, x.total, device=x.q.device)
    q, k, v = (t.requires_grad_(grad) for t in (x.q, x.k, x.v))
    o = _flex_cache["fn"](*(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)), block_mask=_flex_cache[key])
    return o[0].transpose(0, 1), (q, k, v), x.do


def ours(x: Inputs, grad: bool):
    q, k, v = (t.requires_grad_(grad) for t in (x.q, x.k, x.v))
    o = varlen_attention(q, k, v, x.cu, MAX_LEN, key_bias=x.key_bias)
    return o, (q, k, v), x.do


def providers(mask: str, all_full: bool, flex: bool):
    from torch.nn.attention import SDPBackend

    table = {
        "eager_padded": eager_padded,
        "sdpa_padded": make_sdpa(None),
        "sdpa_efficient": make_sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa_cudnn": make_sdpa(SDPBackend.CUDNN_ATTENTION),
    }
    if all_full:
        table["sdpa_flash"] = make_sdpa(SDPBackend.FLASH_ATTENTION)
    if mask == "none":
        table["sdpa_njt"] = sdpa_njt
        table["fa2_varlen"] = fa2_varlen
    if flex:
        table["flex_doc"] = flex_doc  # compiled per shape: only on the main lognormal cases (compile time)
    table["ours"] = ours
    return table


# --------------------------------------------------------------------------------------------------------- helpers
def reference_fp32(x: Inputs):
    """fp32 padded eager attention on the valid tokens: output and (dq, dk, dv) for the packed upstream grad."""
    q, k, v = (t.float().requires_grad_(True) for t in (x.qp, x.kp, x.vp))
    s = torch.matmul(q, k.transpose(-1, -2)) * HEAD_DIM**-0.5
    s = s.masked_fill(~x.key_ok[:, None, None, :], float("-inf"))
    p = torch.softmax(s, -1)
    p = torch.nan_to_num(p, nan=0.0)
    o = x.unpad(torch.matmul(p, v))
    g = torch.autograd.grad(o, (q, k, v), x.do.float())
    return o.detach(), [x.unpad(t) for t in g]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def packed_view(x: Inputs, t: torch.Tensor) -> torch.Tensor:
    """Bring a provider's output/grad to packed (T, H, D)."""
    if t.shape[0] == x.total and t.dim() == 3:
        return t
    return x.unpad(t)


def gate(name: str, fn, x: Inputs) -> tuple[bool, str]:
    ref_o, ref_g = reference_fp32(x)
    o, ins, do = fn(x, True)
    o_p = packed_view(x, o)
    if not torch.isfinite(o_p.float()).all():
        return False, "non-finite output"
    e = rel_err(o_p, ref_o)
    grads = torch.autograd.grad(o, ins, do)
    eg = max(rel_err(packed_view(x, g), r) for g, r in zip(grads, ref_g))
    ok = e < 1e-2 and eg < 2e-2
    return ok, f"fwd {e:.1e} bwd {eg:.1e}"


def bench(fn, sets: list[Inputs], mode: str) -> float:
    from triton.testing import do_bench

    if mode == "fwd":
        def run(i=[0]):
            with torch.no_grad():
                fn(sets[i[0] % N_SETS], False)
            i[0] += 1
        return do_bench(run, warmup=25, rep=100, return_mode="median")
    if mode == "fwd+bwd":
        def run(i=[0]):
            o, ins, do = fn(sets[i[0] % N_SETS], True)
            torch.autograd.grad(o, ins, do)
            i[0] += 1
        return do_bench(run, warmup=25, rep=100, return_mode="median")
    graphs = []
    for x in sets:
        graphs.append(fn(x, True))

    def run(i=[0]):
        o, ins, do = graphs[i[0] % N_SETS]
        torch.autograd.grad(o, ins, do, retain_graph=True)
        i[0] += 1
    return do_bench(run, warmup=25, rep=100, return_mode="median")


def attention_suite(device, cases: list[Case], modes: list[str], deadline: float) -> list[dict]:
    rows = []
    for case in cases:
        sets = [Inputs(case, 1000 * s + 7, device) for s in range(N_SETS)]
        useful_flop = sum(4 * L * L * HEADS * HEAD_DIM for L in case.lengths)
        valid = sum(case.lengths)
        all_full = case.mix == "all200" and case.mask == "none"
        with_flex = case.mix == "lognormal80" and case.n_windows == 256
        for name, fn in providers(case.mask, all_full, with_flex).items():
            if time.time() > deadline:
                print(f"  [deadline] skipping {name} {case.mix} {case.mask} B={case.n_windows}")
                continue
            try:
                fresh = Inputs(case, 99991, device)
                ok, msg = gate(name, fn, fresh)
            except Exception as exc:  # noqa: BLE001 - report unsupported providers and go on
                print(f"  {name:15s} {case.mix:11s} {case.mask:4s} B={case.n_windows:5d}: unsupported "
                      f"({type(exc).__name__}: {str(exc)[:120]})")
                continue
            if not ok:
                print(f"  {name:15s} {case.mix:11s} {case.mask:4s} B={case.n_windows:5d}: FAILED gate ({msg})")
                rows.append(dict(provider=name, mix=case.mix, mask=case.mask, B=case.n_windows, gate=msg, ok=False))
                continue
            for mode in modes:
                try:
                    t1 = bench(fn, sets, mode)
                    t2 = bench(fn, sets, mode)
                except Exception as exc:  # noqa: BLE001
                    print(f"  {name} {mode}: failed to time ({type(exc).__name__}: {str(exc)[:100]})")
                    continue
                t = min(t1, t2)
                floor_bytes = MODE_BYTE_UNITS[mode] * valid * HEADS * HEAD_DIM * 2
                rows.append(dict(
                    provider=name, mix=case.mix, mask=case.mask, B=case.n_windows, mode=mode, ok=True, gate=msg,
                    ms=t, spread=abs(t1 - t2) / t, tokens_per_s=valid / (t * 1e-3),
                    useful_tflops=useful_flop * MODE_FLOP_FACTOR[mode] / (t * 1e-3) / 1e12,
                    bytes_floor_frac=floor_bytes / BYTES_PER_S / (t * 1e-3),
                    flop_floor_frac=useful_flop * MODE_FLOP_FACTOR[mode] / FLOP_PER_S / (t * 1e-3),
                    useful_token_frac=valid / (case.n_windows * MAX_LEN),
                ))
        _flex_cache.clear()
        torch.cuda.empty_cache()
    # ratios within each (mix, mask, B, mode)
    for r in rows:
        if not r.get("ok") or "ms" not in r:
            continue
        peers = [p for p in rows if p.get("ms") and all(p[k] == r[k] for k in ("mix", "mask", "B", "mode"))]
        fa2 = [p["ms"] for p in peers if p["provider"] == "fa2_varlen"]
        sdpa = [p["ms"] for p in peers if p["provider"] in ("sdpa_padded", "sdpa_efficient", "sdpa_cudnn")]
        r["x_vs_fa2"] = fa2[0] / r["ms"] if fa2 else None
        r["x_vs_best_sdpa_padded"] = min(sdpa) / r["ms"] if sdpa else None
    return rows


# --------------------------------------------------------------------------------------------------------- model step
def model_step_suite(device, mixes: list[str], n_windows: int, deadline: float) -> list[dict]:
    """Full 6-layer A2 training step (fwd + bwd + AdamW): sdpa padded vs astromer_varlen packed."""
    from triton.testing import do_bench

    rows = []
    for mix in mixes:
        if time.time() > deadline:
            print(f"  [deadline] skipping model step {mix}")
            continue
        gen = torch.Generator().manual_seed(5)
        lengths = window_lengths(mix, n_windows, gen)
        windows = []
        for L in lengths:
            t = torch.sort(torch.rand(L, generator=gen) * 1000).values.double()
            m = torch.randn(L, generator=gen).double()
            windows.append({"magnitudes": (m - m.mean()).float(), "times": (t - t.mean()).float(),
                            "errors": (0.01 + 0.1 * torch.rand(L, generator=gen)).float()})
        padded = AstromerMaskingCollator(seed=0)(windows)
        packed = AstromerPackingCollator(max_seqlen=MAX_LEN)(padded)
        results = {}
        for impl, batch in (("sdpa_padded", padded), ("astromer_varlen_packed", packed)):
            for compiled in (False, True) if mix == "lognormal80" else (False,):
                if time.time() > deadline:
                    continue
                torch.manual_seed(0)
                config = AstromerConfig.astromer2(hidden_dropout_prob=0.0)
                config._attn_implementation = "sdpa" if impl == "sdpa_padded" else "astromer_varlen"
                model = AstromerForMaskedReconstruction(config).to(device)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
                inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
                          if k not in ("sequence_index", "errors")}
                fwd = torch.compile(model) if compiled else model

                def step():
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        out = fwd(**inputs)
                    out.loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

                try:
                    for _ in range(3):
                        step()
                    t1 = do_bench(step, warmup=25, rep=200, return_mode="median")
                    t2 = do_bench(step, warmup=25, rep=200, return_mode="median")
                except Exception as exc:  # noqa: BLE001
                    print(f"  model step {impl} compiled={compiled} {mix}: failed ({type(exc).__name__}: "
                          f"{str(exc)[:200]})")
                    continue
                t = min(t1, t2)
                results[(impl, compiled)] = t
                valid = sum(lengths)
                rows.append(dict(kind="model_step", mix=mix, B=n_windows, impl=impl, compiled=compiled, ms=t,
                                 spread=abs(t1 - t2) / t, tokens_per_s=valid / (t * 1e-3),
                                 useful_token_frac=valid / (n_windows * MAX_LEN)))
                print(f"  model step {mix:11s} B={n_windows} {impl:24s} compiled={compiled!s:5s} {t:8.3f} ms "
                      f"(spread {abs(t1 - t2) / t:.1%})", flush=True)
        for compiled in (False, True):
            a, b = results.get(("sdpa_padded", compiled)), results.get(("astromer_varlen_packed", compiled))
            if a and b:
                frac = sum(lengths) / (n_windows * MAX_LEN)
                print(f"  => {mix} compiled={compiled}: packed speed-up {a / b:.2f}x; target 0.8/useful = "
                      f"{0.8 / frac:.2f}x")
    return rows


def print_table(rows: list[dict]) -> None:
    hdr = (f"{'mix':11s} {'mask':4s} {'B':>5s} {'mode':8s} {'provider':15s} {'ms':>8s} {'spr':>5s} "
           f"{'Mtok/s':>8s} {'TFLOP/s':>8s} {'%bytes':>7s} {'xFA2':>6s} {'xSDPA':>6s}")
    print(hdr)
    for r in rows:
        if "ms" not in r or r.get("kind") == "model_step":
            continue
        fa2 = f"{r['x_vs_fa2']:.2f}" if r.get("x_vs_fa2") else "-"
        sd = f"{r['x_vs_best_sdpa_padded']:.2f}" if r.get("x_vs_best_sdpa_padded") else "-"
        print(f"{r['mix']:11s} {r['mask']:4s} {r['B']:5d} {r['mode']:8s} {r['provider']:15s} {r['ms']:8.3f} "
              f"{r['spread']:5.1%} {r['tokens_per_s'] / 1e6:8.1f} {r['useful_tflops']:8.1f} "
              f"{r['bytes_floor_frac']:7.1%} {fa2:>6s} {sd:>6s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="attn.json")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    parser.add_argument("--sizes", default="256", help="comma-separated window counts for the full matrix")
    parser.add_argument("--sweep", default="8,64,1024", help="extra window counts (lognormal80, key mask only)")
    parser.add_argument("--modes", default="fwd,bwd,fwd+bwd")
    parser.add_argument("--model-step", action="store_true")
    parser.add_argument("--model-windows", type=int, default=256)
    args = parser.parse_args()
    start = time.time()
    deadline = start + args.budget_s
    device = torch.device("cuda")
    import triton

    has_varlen = False
    try:
        import torch.nn.attention.varlen as _v

        has_varlen = True
        print("varlen_attn signature:", inspect.signature(_v.varlen_attn))
    except ImportError:
        pass
    print(f"torch {torch.__version__} triton {triton.__version__} cudnn {torch.backends.cudnn.version()} "
          f"device {torch.cuda.get_device_name()} varlen_attn available: {has_varlen}", flush=True)
    gen = torch.Generator().manual_seed(1234)
    cases = []
    for B in [int(s) for s in args.sizes.split(",") if s]:
        for mix in ("all200", "60/40", "uniform", "lognormal80"):
            lengths = window_lengths(mix, B, gen)
            for mask in ("none", "key"):
                cases.append(Case(mix, B, mask, lengths))
    for B in [int(s) for s in args.sweep.split(",") if s]:
        lengths = window_lengths("lognormal80", B, gen)
        for mask in ("none", "key"):
            cases.append(Case("lognormal80", B, mask, lengths))
    rows = attention_suite(device, cases, args.modes.split(","), deadline - (120 if args.model_step else 0))
    print_table(rows)
    if args.model_step:
        rows += model_step_suite(device, ["all200", "60/40", "lognormal80"], args.model_windows, deadline + 110)
    meta = dict(torch=torch.__version__, triton=triton.__version__, cudnn=torch.backends.cudnn.version(),
                device=torch.cuda.get_device_name(), varlen_attn=has_varlen, wall_s=time.time() - start)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(dict(meta=meta, rows=rows), fh, indent=1, default=str)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
