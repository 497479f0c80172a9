"""Atomic output: a file or folder appears complete under its final name, or not at all.

Everything this project writes for a user goes through here: a temporary sibling is written first (on the same file
system, so the final rename is atomic), given the permissions a plain ``open()`` or ``mkdir()`` would have given
(``mkstemp``/``mkdtemp`` create owner-only entries), and renamed into place only once it is complete. A failure
removes the temporary sibling and the folders created for it, and leaves whatever was there before untouched.

Temporary siblings are named ``.<name>.<pid>.<random>``: a process killed with SIGKILL cannot clean up after itself,
so the next successful write of the same name removes the temporaries whose process no longer runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_file",
    "default_mode",
    "publish_folder",
    "staging_folder",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def default_mode(is_dir: bool = False) -> int:
    """The mode a new file (``0o666``) or folder (``0o777``) gets from ``open()``/``mkdir()`` under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if is_dir else 0o666) & ~umask


def _apply_default_modes(folder: Path) -> None:
    os.chmod(folder, default_mode(is_dir=True))
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, default_mode(is_dir=path.is_dir()))


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    return False


def _remove_stale_temporaries(target: Path) -> None:
    """Remove the temporary siblings of ``target`` left by processes that no longer run."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:old-)?(\d+)\.")
    for sibling in target.parent.iterdir():
        found = pattern.match(sibling.name)
        if not found or int(found.group(1)) == os.getpid() or not _process_is_gone(int(found.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)


@contextmanager
def _parent_folder(target: Path) -> Iterator[None]:
    """Create the missing parents of ``target``; remove the ones created here if the block fails and they are
    still empty."""
    missing = []
    folder = target.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in missing:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        raise


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` when the block ends without error.

    The temporary name is ``.<name>.<pid>.<random><suffix>`` in the same folder (created if needed); give
    ``suffix`` when the writer infers the format from the extension (e.g. ``".png"``).
    """
    target = Path(path)
    with _parent_folder(target):
        handle, name = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=suffix, dir=target.parent)
        os.close(handle)
        temporary = Path(name)
        try:
            yield temporary
            os.chmod(temporary, default_mode())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    _remove_stale_temporaries(target)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented, key-sorted JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def publish_folder(staging: Path, destination: Path) -> None:
    """Move the finished ``staging`` folder to ``destination``.

    An existing ``destination`` is replaced only now that the new folder is complete, and is restored if the final
    move fails. Both folders must be on the same file system (make ``staging`` a sibling of ``destination``).
    """
    _apply_default_modes(staging)
    if not destination.exists():
        os.replace(staging, destination)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-{os.getpid()}.", dir=destination.parent))
    os.replace(destination, backup / "previous")
    try:
        os.replace(staging, destination)
    except BaseException:
        os.replace(backup / "previous", destination)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def staging_folder(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder of ``destination``; it is published there (:func:`publish_folder`)
    when the block ends without error, and removed otherwise."""
    target = Path(destination)
    with _parent_folder(target):
        staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), dir=target.parent))
        try:
            yield staging
            publish_folder(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _remove_stale_temporaries(target)
