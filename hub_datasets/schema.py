"""Shared schema of every light-curve dataset in this package: features, published class names, label maps.

One row is one light curve in one band:

=========  ===========================  ============================================================
column     feature                      meaning
=========  ===========================  ============================================================
``id``     ``string``                   survey object id (MACHO ``field.tile.seq``, ATLAS 17-digit objID)
``time``   ``List(float64)``, (L,)      observation epochs, MJD (float64: float32 quantises MJD ≈ 5e4 to 0.004 d)
``mag``    ``List(float32)``, (L,)      magnitudes
``err``    ``List(float32)``, (L,)      1-sigma magnitude errors
``band``   ``string``                   filter name (``R`` for MACHO, ``o`` for ATLAS, ``r`` for SDSS)
``label``  ``ClassLabel``               published class names, codes alphabetical as upstream
=========  ===========================  ============================================================
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import datasets

from modeling_astromer.errors import AstromerError

#: Alcock et al. MACHO classes; codes are ``pd.Categorical(Class).codes`` (alphabetical) as in the official pipeline.
ALCOCK_CLASSES: tuple[str, ...] = ("Cep_0", "Cep_1", "EC", "LPV", "RRab", "RRc")
#: ATLAS (Heinze et al. 2018) merged classes; label map ``{0: CB, 1: DB, 2: Mira, 3: Other, 4: Pulse}``.
ATLAS_CLASSES: tuple[str, ...] = ("CB", "DB", "Mira", "Other", "Pulse")
#: SDSS Stripe 82 RR Lyrae (Sesar et al. 2010) types.
SDSS_RRLYRAE_CLASSES: tuple[str, ...] = ("RRab", "RRc")

#: Raw class strings that the official pipeline removes (the A2 step removing ``UNK`` is not known; we remove it).
REMOVED_CLASSES: frozenset[str] = frozenset({"unk", "std", "dubious"})

_LPV_WOOD = re.compile(r"^lpv[\s_\-]*(wood[\s_\-]*)?[a-d]?$", re.IGNORECASE)

#: Heinze et al. (2018) ATLAS classes → merged ATLAS classes. The merge is *inferred* from the class names
#: (the papers publish the merged counts, not the mapping), not taken from published code.
HEINZE_TO_ATLAS: dict[str, str] = {
    "cbf": "CB",
    "cbh": "CB",
    "dbf": "DB",
    "dbh": "DB",
    "mira": "Mira",
    "pulse": "Pulse",
    "lpv": "Other",
    "irr": "Other",
    "sine": "Other",
    "msine": "Other",
    "nsine": "Other",
    "stoch": "Other",
}


def light_curve_features(class_names: Sequence[str]) -> datasets.Features:
    """The ``datasets.Features`` of a light-curve table whose ``label`` uses ``class_names`` (in code order)."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "time": datasets.List(datasets.Value("float64")),
            "mag": datasets.List(datasets.Value("float32")),
            "err": datasets.List(datasets.Value("float32")),
            "band": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(class_names)),
        }
    )


class UnknownLabelError(AstromerError, ValueError):
    """A raw class string that maps to none of the published classes and is not on the removal list."""


def normalise_alcock_class(raw: str) -> str | None:
    """Map a raw Alcock ``Class`` string to a published class name, or ``None`` when the object is removed.

    The four Wood sequences ``LPV WoodA``…``LPV WoodD`` (any separator) merge into ``LPV``; ``UNK``, ``std``
    and ``Dubious`` return ``None``. Anything else raises :class:`UnknownLabelError`.
    """
    text = str(raw).strip()
    if text.lower() in REMOVED_CLASSES:
        return None
    if text in ALCOCK_CLASSES:
        return text
    if _LPV_WOOD.match(text):
        return "LPV"
    raise UnknownLabelError(f"unknown Alcock class {raw!r}; expected one of {ALCOCK_CLASSES}, LPV Wood[A-D]")


def normalise_atlas_class(raw: str) -> str | None:
    """Map a raw ATLAS ``Class`` (merged name or Heinze class) to a published class name; ``None`` = removed."""
    text = str(raw).strip()
    if text.lower() in REMOVED_CLASSES:
        return None
    if text in ATLAS_CLASSES:
        return text
    merged = HEINZE_TO_ATLAS.get(text.lower())
    if merged is not None:
        return merged
    raise UnknownLabelError(f"unknown ATLAS class {raw!r}; expected one of {ATLAS_CLASSES} or a Heinze class")
