"""Pixel sizes as the docks read, type and show them: a layer's, or a field's text.

Why apart from the panels: the Segment dock's pixel size field, its model box and the
Train dock's pairs (resampled to the model's pixel size at Start) all read a layer's
pixel size the same way, and a size typed in one is parsed in one way (issue 14).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

#: Units a pixel size may be typed in (the model's unit when none is typed).
UNIT_WORDS = {
    "nm": "nm",
    "um": "um",
    "µm": "um",
    "micron": "um",
    "mm": "mm",
    "nanometer": "nm",
    "micrometer": "um",
    "millimeter": "mm",
}


def parse_pixel_size(text: str) -> tuple[tuple[float, ...] | None, str]:
    """``"0.98"``, ``"3, 0.98 0.98 mm"`` -> sizes and unit (``""`` = the model's); empty -> None.

    Raises ValueError with the accepted forms, so a typo never runs at a wrong scale.
    """
    text = text.strip()
    if not text:
        return None, ""
    match = re.fullmatch(r"([0-9eE.+\-,;x\s]+?)\s*([A-Za-zµ]+)?", text)
    unit = UNIT_WORDS.get((match.group(2) or "").lower(), None) if match else None
    if not match or (match.group(2) and unit is None):
        raise ValueError(
            f"pixel size {text!r}: type one number per axis (or one for all), "
            "optionally a unit (nm, um, mm), e.g. '0.98 0.98 mm'"
        )
    if re.search(r"\d,\d", text) and "." not in text:  # '1,5' was 1 x 5 mm, silently
        raise ValueError(
            f"pixel size {text!r}: a decimal comma? type a dot ('1.5'), and separate the "
            "numbers with spaces ('3 1.5 1.5 mm')"
        )
    try:
        sizes = tuple(float(v) for v in re.split(r"[\s,;x]+", match.group(1).strip()) if v)
    except ValueError:
        raise ValueError(f"pixel size {text!r}: not numbers") from None
    # in the field's words: the engine's check named PredictConfig.pixel_size ("0", "-1")
    if not 1 <= len(sizes) <= 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(
            f"pixel size {text!r}: type 1 to 3 numbers above 0 (one per axis Z Y X, or one "
            "for all), optionally a unit (nm, um, mm), e.g. '0.98 0.98 mm'"
        )
    return sizes, unit or ""


def layer_pixel_size(layer: Any) -> tuple[tuple[float, ...] | None, str]:
    """The pixel size a layer carries: the reader's metadata, else a ``scale`` with real units.

    A scale without a unit (napari's default "pixel") is never taken as physical. The
    spatial axes are the last two or three in one length unit: a time axis before them
    (in seconds, or "pixel") left the field empty for a calibrated time series.
    """
    meta = getattr(layer, "metadata", {}) or {}
    if meta.get("pixel_size") and meta.get("unit"):
        return tuple(float(s) for s in meta["pixel_size"]), str(meta["unit"])
    units = [UNIT_WORDS.get(str(u)) for u in getattr(layer, "units", ())]
    # a negative scale flips the axis in the viewer; its pixels are as large as ever
    scale = [abs(float(s)) for s in getattr(layer, "scale", ())]
    if not units or len(units) != len(scale) or units[-1] is None:
        return None, ""
    spatial = 1
    while spatial < min(3, len(units)) and units[-spatial - 1] == units[-1]:
        spatial += 1
    if spatial < 2:
        return None, ""
    return tuple(scale[-spatial:]), str(units[-1])


def pixel_size_text(sizes: Sequence[float], unit: str) -> str:
    """``sizes`` and ``unit`` as the pixel size field shows them (:func:`parse_pixel_size`
    reads it back): ``"3 0.98 0.98 mm"``."""
    return " ".join(f"{s:g}" for s in sizes) + (f" {unit}" if unit else "")
