"""Model folders shipped inside the package (converted released weights), and resolving a model reference.

``from_pretrained`` only knows folders and Hub repository ids, so a bundled model is loaded by its folder::

    from modeling_astromer import AstromerModel, bundled_model_path
    model = AstromerModel.from_pretrained(bundled_model_path("astromer1-macho"))

Command lines accept the bare name wherever they take a model (:func:`resolve_model`).
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputError

__all__ = ["BUNDLED_WEIGHTS_DIR", "DEFAULT_MODEL", "bundled_model_path", "bundled_models", "resolve_model"]

BUNDLED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: The model command lines use when none is named: the released Astromer 1 (MACHO) weights.
DEFAULT_MODEL = "astromer1-macho"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def bundled_models() -> dict[str, Path]:
    """Model folders shipped inside the package, by name (e.g. ``astromer1-macho``)."""
    if not BUNDLED_WEIGHTS_DIR.is_dir():
        return {}
    return {
        folder.name: folder
        for folder in sorted(BUNDLED_WEIGHTS_DIR.iterdir())
        if folder.is_dir() and (folder / "config.json").is_file()
    }


def bundled_model_path(name: str) -> Path:
    """The folder of the bundled model ``name``, for ``from_pretrained``.

    Raises:
        InputError: naming the bundled models when ``name`` is not one of them.
    """
    bundled = bundled_models()
    if name not in bundled:
        raise InputError(f"no bundled model {name!r}; bundled models: {', '.join(bundled) or 'none installed'}")
    return bundled[name]


def resolve_model(name_or_path: str) -> str:
    """Map a model reference to what ``from_pretrained`` loads: a bundled name, a folder or a Hub repo id.

    Raises:
        InputError: for a path that does not exist or a folder without ``config.json``.
    """
    bundled = bundled_models()
    if name_or_path in bundled:
        return str(bundled[name_or_path])
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise InputError(f"model {name_or_path!r}: not a model folder (expected a folder holding config.json)")
        return str(path)
    if not _REPO_ID.fullmatch(name_or_path):
        raise InputError(
            f"model {name_or_path!r}: no such folder and not a Hub repo id (owner/name); bundled models: "
            f"{', '.join(bundled) or 'none installed'}"
        )
    return name_or_path
