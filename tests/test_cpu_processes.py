"""Issue: `accelerate launch --config_file train/configs/cpu_two_processes.yaml train/pretrain.py` without
ACCELERATE_USE_CPU=1 started two uncoordinated "main" processes that raced in one output folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate launcher is not on PATH")
def test_issue14_item7_two_process_cpu_config_works_as_written(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"} | {"OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "train/configs/cpu_two_processes.yaml",
        "--main_process_port", "29531", "train/pretrain.py", "--synthetic", "24", "--num-layers", "1",
        "--hidden-size", "16", "--num-heads", "2", "--intermediate-size", "16", "--batch-size", "4",
        "--max-steps", "2", "--quiet", "--report-to", "none", "--output-dir", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["arguments"]["distributed_type"] == "DistributedType.MULTI_CPU"
