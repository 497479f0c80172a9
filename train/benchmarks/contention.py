"""How the CPU paths slow down when other processes share the cores, by OpenMP wait policy and thread count.

Each *setting* (an ``OMP_WAIT_POLICY`` value or none, and a thread count) runs in its own worker process, started
with that environment before it imports torch (libgomp reads the policy once, when it loads). The coordinator times
one step at a time, round-robin over settings and paths, and alternates, round by round, between no extra load and
``--competitors`` CPU-bound processes of its own (``while True: pass``) running beside the workers, so drift in the
machine's speed and the other users' jobs touch every cell alike. The load average is printed before and after.

Paths are ``attention:precision`` with an optional ``+onednn`` on the attention (the oneDNN linear layers of
:mod:`astromer_kernels.cpu_linear`), e.g. ``sdpa:fp32``, ``astromer_blocked+onednn:bf16``.

    python train/benchmarks/contention.py [--batch-size 128] [--rounds 3] [--phases embed train]
        [--paths sdpa:fp32 astromer_blocked+onednn:bf16] [--settings spin:2 passive:2 spin:1] [--competitors 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from throughput import Runner, make_batch  # the script beside this one (benchmark scripts are not a package)

from astromer_kernels.allocator import keep_freed_memory
from modeling_astromer import AstromerConfig

#: ``OMP_WAIT_POLICY`` of each setting name (``None``: unset, libgomp's default of spinning a while, then sleeping).
POLICIES = {"spin": None, "active": "ACTIVE", "passive": "PASSIVE"}


def _worker(paths: list[str], batch_size: int, threads: int) -> None:
    """Serve ``{"path", "phase"}`` requests on stdin with ``{"seconds"}`` lines on stdout."""
    keep_freed_memory()
    torch.set_num_threads(threads)
    config = AstromerConfig.astromer2(hidden_dropout_prob=0.0)
    batch = make_batch(batch_size)
    runners = {}
    for path in paths:
        implementation, precision = path.split(":")
        runners[path] = Runner(config, implementation, precision, batch, torch.device("cpu"))
        runners[path].train_step(), runners[path].embed()  # warm-up
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        runner = runners[request["path"]]
        seconds = runner.train_step() if request["phase"] == "train" else runner.embed()
        print(json.dumps({"seconds": seconds}), flush=True)


class _Worker:
    def __init__(self, setting: str, paths: list[str], batch_size: int):
        policy, threads = setting.split(":")
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        if POLICIES[policy] is not None:
            env["OMP_WAIT_POLICY"] = POLICIES[policy]
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--threads", threads, "--batch-size", str(batch_size),
             "--paths", *paths], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        assert json.loads(self.process.stdout.readline())["ready"]

    def time(self, path: str, phase: str) -> float:
        self.process.stdin.write(json.dumps({"path": path, "phase": phase}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def _competitors(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per load condition (median)")
    parser.add_argument("--phases", nargs="+", default=["embed", "train"], choices=("embed", "train"))
    parser.add_argument("--paths", nargs="+",
                        default=["sdpa:fp32", "sdpa:bf16", "astromer_blocked+onednn:fp32",
                                 "astromer_blocked+onednn:bf16"])
    parser.add_argument("--settings", nargs="+", default=["spin:2", "passive:2", "spin:1"],
                        help="POLICY:THREADS, POLICY one of " + ", ".join(POLICIES))
    parser.add_argument("--competitors", type=int, default=1, help="CPU-bound processes started in busy rounds")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.paths, args.batch_size, args.threads)
        return 0
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M")
    workers = {setting: _Worker(setting, args.paths, args.batch_size) for setting in args.settings}
    conditions = ("quiet", "busy") if args.competitors else ("quiet",)
    times: dict[tuple, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for condition in conditions:
                extra = _competitors(args.competitors if condition == "busy" else 0)
                try:
                    for phase in args.phases:
                        for path in args.paths:
                            for setting, worker in workers.items():
                                times.setdefault((condition, phase, path, setting), []).append(worker.time(path, phase))
                finally:
                    _stop(extra)
    finally:
        for worker in workers.values():
            worker.close()
    load_after = os.getloadavg()
    print(f"{started}, {os.cpu_count()} logical CPUs, batch {args.batch_size}x200, median of {args.rounds} rounds; "
          f"load average before {', '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{', '.join(f'{x:.2f}' for x in load_after)}; 'busy' rounds add {args.competitors} CPU-bound process(es) "
          "to the machine's own load. windows/s (range):")
    print("| phase | path | " + " | ".join(f"{c} {s}" for c in conditions for s in args.settings) + " |")
    print("|" + "---|" * (2 + len(conditions) * len(args.settings)))
    rows = []
    for phase in args.phases:
        for path in args.paths:
            cells = []
            for condition in conditions:
                for setting in args.settings:
                    rates = [args.batch_size / t for t in times[condition, phase, path, setting]]
                    rows.append({"phase": phase, "path": path, "condition": condition, "setting": setting,
                                 "windows_per_s": rates})
                    cells.append(f"{statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f})")
            print(f"| {phase} | {path} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"load_before": load_before, "load_after": load_after, "rows": rows},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
