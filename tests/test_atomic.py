"""Atomic output (hub_datasets.atomic): complete or absent, usual permissions, nothing left behind on failure,
stale temporaries of killed runs removed, and one-line errors for outputs that cannot be written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from astromer_app.cli import main as cli_main
from astromer_app.cli import os_error_message
from hub_datasets.atomic import (
    atomic_file,
    default_mode,
    staging_folder,
    write_json_atomic,
    write_text_atomic,
)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_issue14_item5_written_files_and_folders_get_the_usual_permissions(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "summary.json", {"a": 1})
    assert _mode(tmp_path / "summary.json") == default_mode() == 0o666 & ~_umask()
    with staging_folder(tmp_path / "model") as staging:
        (staging / "config.json").write_text("{}")
        (staging / "sub").mkdir()
    assert _mode(tmp_path / "model") == default_mode(is_dir=True)
    assert _mode(tmp_path / "model" / "config.json") == default_mode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "summary.json"]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_failure_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_issue14_item5_a_failure_removes_the_parent_folders_it_created(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "kept" / "new" / "deeper" / "out.parquet"):
        raise RuntimeError("writer failed")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())
    with pytest.raises(RuntimeError), staging_folder(tmp_path / "a" / "b" / "run"):
        raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_the_next_write_removes_temporaries_of_killed_runs(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getppid()
    stale_file = tmp_path / f".out.parquet.{dead}.abc123.tmp"
    stale_folder = tmp_path / f".run.{dead}.xyz"
    running = tmp_path / f".out.parquet.{alive}.def456.tmp"
    other = tmp_path / f".other.parquet.{dead}.abc.tmp"
    for path in (stale_file, running, other):
        path.write_text("partial")
    stale_folder.mkdir()
    (stale_folder / "model.safetensors").write_text("partial")
    write_text_atomic(tmp_path / "out.parquet", "complete")
    assert not stale_file.exists() and running.exists() and other.exists()
    with staging_folder(tmp_path / "run") as staging:
        (staging / "x").write_text("1")
    assert not stale_folder.exists()


def test_issue14_item5_killed_writer_leaves_a_temporary_that_the_next_run_removes(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys\n"
        "from hub_datasets.atomic import atomic_file\n"
        "with atomic_file(sys.argv[1]) as t:\n"
        "    t.write_text('partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    target = tmp_path / "embeddings.parquet"
    result = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True)
    assert result.returncode == -9
    assert not target.exists() and len(list(tmp_path.glob(".embeddings.parquet.*"))) == 1
    write_text_atomic(target, "complete")
    assert [p.name for p in tmp_path.iterdir()] == ["embeddings.parquet"]


def test_issue14_item5_an_output_that_cannot_be_written_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    curve = tmp_path / "star.csv"
    curve.write_text("time,mag,err\n" + "\n".join(f"{t},{15 + 0.1 * (t % 3)},0.05" for t in range(30)))
    assert cli_main(["embed", str(curve), "-o", str(blocker / "out.parquet"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("astromer: error:") and "Traceback" not in err[0]
    assert str(blocker) in err[0]


def test_permission_errors_name_the_folder_not_the_temporary(tmp_path: Path) -> None:
    temporary = tmp_path / "out" / ".embeddings.parquet.123.abc.tmp"
    message = os_error_message(PermissionError(13, "Permission denied", str(temporary)))
    assert message == f"cannot write in {tmp_path / 'out'}: Permission denied"
    assert os_error_message(PermissionError(13, "Permission denied", "/data/x.parquet")) == (
        "/data/x.parquet: Permission denied"
    )
