"""Atomic publication of output folders: build in a private sibling, then swap it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def apply_umask_permissions(folder: Path) -> None:
    """`mkdtemp` and temporary-file writers create owner-only entries; give `folder` the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def publish_folder(staging: Path, destination: Path) -> None:
    """Move the finished `staging` folder to `destination`.

    An existing `destination` is replaced only now that the new folder is complete, and is restored if the final
    move fails. Both folders must be on the same file system (make `staging` a sibling of `destination`).
    """
    apply_umask_permissions(staging)
    if not destination.exists():
        os.replace(staging, destination)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
    os.replace(destination, backup / "previous")
    try:
        os.replace(staging, destination)
    except BaseException:
        os.replace(backup / "previous", destination)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)
