# Copyright 2026 The astromer-hf developers. MIT licence.
"""The errors this package raises on purpose.

Every deliberate error derives from :class:`AstromerError`, so a caller (or a command line) can tell a problem with
the user's input from a bug. Shipped as Hub remote code next to the feature extractor, so it imports nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AstromerError", "InputError", "LightCurveValidationError"]


class AstromerError(Exception):
    """Base class of every error raised on purpose by the Astromer packages."""


class InputError(AstromerError, ValueError):
    """A path, file, column, model name or option given by the user that cannot be used as it is."""


class LightCurveValidationError(AstromerError, ValueError):
    """A light curve that cannot be turned into Astromer windows, or stored as it is.

    Attributes:
        curve_index: position of the offending curve in the input (``None`` when not known).
        curve_id: the caller's identifier for it, when known.
        field: the offending field (``"time"``, ``"mag"``, ``"err"``, ``"shape"``, ``"observations"``, …).
        source: the file (or other origin) the curve came from, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        curve_index: int | None = None,
        curve_id: Any = None,
        field: str | None = None,
        source: str | None = None,
    ):
        super().__init__(message)
        self.curve_index = curve_index
        self.curve_id = curve_id
        self.field = field
        self.source = source
