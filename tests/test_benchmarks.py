"""The benchmark scripts run end to end on a tiny batch and report what their docstrings promise (no timing is
asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_reports_rates_rows_and_accuracy(tmp_path):
    out = tmp_path / "throughput.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "train" / "benchmarks" / "throughput.py"), "--batch-size", "2", "--repeats", "1",
         "--matmul-tokens", "2048",
         "--implementations", "sdpa", "astromer_blocked", "astromer_blocked+onednn", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for rates in (report["matmul_gflops"], report["backward_matmul_gflops"]):
        assert set(rates) == {"fp32", "bf16"} and all(rate > 0 for rate in rates.values())
    rows = {(row["implementation"], row["precision"]): row for row in report["rows"]}
    implementations = ("sdpa", "astromer_blocked", "astromer_blocked+onednn")
    assert set(rows) == {(i, p) for i in implementations for p in ("fp32", "bf16")}
    for row in rows.values():
        assert "error" not in row, row
        assert row["train_windows_per_s"] > 0 and row["embed_windows_per_s"] > 0 and 0 < row["train_mfu"]
    # the rows are timed round-robin: each must keep its own attention implementation
    assert rows[("sdpa", "bf16")]["abs_diff_loss"] != rows[("astromer_blocked", "bf16")]["abs_diff_loss"]
    bf16 = rows[("astromer_blocked+onednn", "bf16")]
    assert 0 < bf16["max_abs_diff_reconstruction"] < 0.1 and bf16["abs_diff_loss"] < 0.05
    assert "| astromer_blocked+onednn | bf16 |" in result.stdout
    assert "the same GEMMs as the backward runs them" in result.stdout


def test_throughput_benchmark_rejects_an_unknown_linear_suffix(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "train" / "benchmarks" / "throughput.py"), "--batch-size", "2", "--repeats", "1",
         "--matmul-tokens", "2048",
         "--implementations", "sdpa+fancy", "--precisions", "fp32"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]  # a row that cannot run is reported, not fatal
    assert "not run: ValueError(\"unknown linear layers 'fancy'" in result.stdout


def test_throughput_ratios_come_from_the_same_run(tmp_path):
    """× sdpa fp32 and × TF divide by baselines measured in this run (here a stand-in for the TensorFlow side script
    that reports fixed rates), and the header names the host."""
    fake_tf = tmp_path / "fake_tf_python"
    fake_tf.write_text("#!/bin/sh\necho '{\"tensorflow\": \"stand-in\", \"train\": 2.0, \"infer\": 4.0}'\n")
    fake_tf.chmod(0o755)
    out = tmp_path / "throughput.json"
    command = [sys.executable, str(REPO / "train" / "benchmarks" / "throughput.py"), "--batch-size", "2",
               "--repeats", "1", "--matmul-tokens", "2048", "--implementations", "astromer_blocked",
               "--precisions", "fp32", "--json", str(out)]
    result = subprocess.run([*command, "--tf-python", str(fake_tf), "--tf-code", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row["implementation"]: row for row in report["rows"]}
    assert set(rows) == {"sdpa", "astromer_blocked"}  # the baseline is added when not asked for
    assert rows["sdpa"]["train_vs_sdpa_fp32"] == 1.0
    blocked = rows["astromer_blocked"]
    assert blocked["embed_vs_sdpa_fp32"] == blocked["embed_windows_per_s"] / rows["sdpa"]["embed_windows_per_s"]
    assert blocked["train_vs_tf"] == blocked["train_windows_per_s"] / 2.0
    assert blocked["embed_vs_tf"] == blocked["embed_windows_per_s"] / 4.0
    assert "amx_bf16" in report["host"] and report["load_before"] is not None
    assert "host: " in result.stdout and "OpenMP: " in result.stdout and "| × TF |" in result.stdout
    without_tf = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert without_tf.returncode == 0, without_tf.stderr[-3000:]
    assert "| × TF |" not in without_tf.stdout and "official TensorFlow code: not run" in without_tf.stdout
