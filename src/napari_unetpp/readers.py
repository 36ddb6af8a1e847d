"""Image files with their physical pixel size: NIfTI, DICOM series, TIFF / OME-TIFF.

Why a module of its own: a model trained at 3 mm (CT) or 4 nm (EM) can only be
applied at the right scale when the pixel size travels with the pixels from the
file to the engine. The napari reader (``_reader.py``) and the CLI
(``files.read_image_with_size``) both read through here, so a dropped ``.nii.gz``
and ``napari-unetpp predict scan.nii.gz`` see the same array, orientation and
spacing. No torch, no Qt. TIFF (OME and ImageJ metadata) is read here; NIfTI and
DICOM, with their optional packages and the patient orientation, in :mod:`medical`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ImageData",
    "TIFF_SUFFIXES",
    "read_image",
    "read_tiff",
    "holds_whole_file",
    "array_axes",
    "known_pixel_size",
    "tiff_spacing",
    "zarr_spacing",
]

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class ImageData:
    """An array, the physical size of a step along each of its axes, and where it came from.

    ``axes`` names every array axis (tifffile letters: ``Z``, ``Y``, ``X`` spatial;
    ``C`` channel, ``S`` RGB sample, ``T`` time, ...); ``scale`` has one value per
    axis (1.0 on non-spatial axes, as napari's layer ``scale`` wants); ``unit`` is
    ``"nm"``, ``"um"`` or ``"mm"``, or None when the file does not say (then the
    scale is the file's number without a unit, or all ones).
    """

    array: Any
    axes: str
    scale: tuple[float, ...]
    unit: str | None
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Indices of the Z/Y/X axes, in array order."""
        return tuple(i for i, a in enumerate(self.axes) if a in "ZYX")

    @property
    def pixel_size(self) -> tuple[float, ...] | None:
        """Physical size per spatial axis (array order), or None when the file has none.

        A stack calibrated in Y and X only gives ``(Y, X)`` (see :func:`known_pixel_size`).
        """
        if self.metadata.get("has_spacing"):
            return tuple(self.scale[i] for i in self.spatial_axes)
        return known_pixel_size(self.axes, self.metadata.get("spacing") or {})


def known_pixel_size(axes: str, sizes: dict[str, float]) -> tuple[float, ...] | None:
    """The pixel size of the spatial axes of ``axes`` that ``sizes`` gives, in array order.

    Every spatial axis known: all of them. Only Y and X (an ImageJ stack of slices whose
    spacing was never set, the common case): the in-plane ``(Y, X)``, which is all a 2D
    model needs (a 3D model asks for one value per axis). Else None.
    """
    spatial = [a for a in axes if a in "ZYX"]
    if spatial and set(spatial) <= set(sizes):
        return tuple(float(sizes[a]) for a in spatial)
    if spatial[-2:] == ["Y", "X"] and {"Y", "X"} <= set(sizes):
        return float(sizes["Y"]), float(sizes["X"])
    return None


def read_image(path: str | Path) -> ImageData:
    """Any supported file with its pixel size: NIfTI, DICOM (file or series folder), TIFF."""
    from .medical import is_dicom, is_nifti, read_dicom, read_nifti  # it imports ImageData

    path = Path(path)
    if is_nifti(path):
        return read_nifti(path)
    if is_dicom(path):
        return read_dicom(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return read_tiff(path)
    raise ValueError(
        f"{path}: not a NIfTI (.nii, .nii.gz), DICOM (.dcm or a series folder) or TIFF file"
    )


# --------------------------------------------------------------------------- TIFF

#: Unit names seen in ImageJ / OME / TIFF metadata -> (unit, factor to it).
_UNITS = {
    "nm": ("nm", 1.0),
    "nanometer": ("nm", 1.0),
    "nanometre": ("nm", 1.0),
    "um": ("um", 1.0),
    "µm": ("um", 1.0),
    "\u03bcm": ("um", 1.0),
    "micron": ("um", 1.0),
    "microns": ("um", 1.0),
    "micrometer": ("um", 1.0),
    "micrometre": ("um", 1.0),
    "\\u00b5m": ("um", 1.0),
    "mm": ("mm", 1.0),
    "millimeter": ("mm", 1.0),
    "millimetre": ("mm", 1.0),
    "cm": ("mm", 10.0),
    "centimeter": ("mm", 10.0),
    "m": ("mm", 1000.0),
    "meter": ("mm", 1000.0),
    "å": ("nm", 0.1),
    "angstrom": ("nm", 0.1),
}


def _unit(name: Any) -> tuple[str, float] | None:
    if name is None:
        return None
    return _UNITS.get(str(name).strip().lower())


def _ome_sizes(xml: str) -> tuple[dict[str, float], str | None]:
    """PhysicalSizeX/Y/Z of the first OME Pixels element, converted to one unit."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}, None
    sizes: dict[str, float] = {}
    units: list[tuple[str, float]] = []
    for axis in "XYZ":
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            continue
        known = _unit(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if known is None:
            continue
        sizes[axis] = float(value)
        units.append(known)
    if not sizes:
        return {}, None
    target = units[0][0]
    factors = {"nm": 1e-3, "um": 1.0, "mm": 1e3}
    for axis, (name, factor) in zip(list(sizes), units, strict=True):
        sizes[axis] *= factor * factors[name] / factors[target]
    return sizes, target


def _resolution(page: Any, tag: str) -> float | None:
    value = page.tags.get(tag)
    if value is None:
        return None
    num, den = value.value if isinstance(value.value, tuple) else (value.value, 1)
    return float(num) / float(den) if num and den else None


def tiff_spacing(path: str | Path) -> tuple[str, dict[str, float], str | None, str]:
    """``(axes, {axis: size}, unit, kind)`` from a TIFF's metadata, without reading pixels.

    In order of trust: OME ``PhysicalSizeX/Y/Z`` (with units), ImageJ ``unit`` and
    ``spacing`` with X/YResolution (pixels per unit), tifffile's JSON description
    (``spacing``, ``unit``: how the shipped CT volume stores 3 mm, without a
    unit), and XResolution/YResolution with ResolutionUnit centimetre. A
    resolution in pixels per *inch* is print DPI (72, 300...), not a pixel size,
    and is ignored.
    """
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        series = tif.series[0]
        axes = series.axes
        page: Any = tif.pages[0]
        if tif.is_ome and tif.ome_metadata:
            sizes, unit = _ome_sizes(tif.ome_metadata)
            if sizes:
                return axes, sizes, unit, "ome-tiff"
        x_res, y_res = _resolution(page, "XResolution"), _resolution(page, "YResolution")
        imagej = tif.imagej_metadata
        if imagej:
            ij_unit = _unit(imagej.get("unit"))
            sizes = {}
            if ij_unit is not None:
                if x_res:
                    sizes["X"] = ij_unit[1] / x_res
                if y_res:
                    sizes["Y"] = ij_unit[1] / y_res
                if imagej.get("spacing"):
                    sizes["Z"] = ij_unit[1] * float(imagej["spacing"])
                if sizes:
                    return axes, sizes, ij_unit[0], "imagej"
        shaped = _shaped_description(page)
        if shaped.get("spacing") is not None:
            sizes = _shaped_sizes(axes, shaped, x_res, y_res)
            if sizes:
                json_unit = _unit(shaped.get("unit"))
                factor = json_unit[1] if json_unit else 1.0
                sizes = {a: v * factor for a, v in sizes.items()}
                return axes, sizes, json_unit[0] if json_unit else None, "tifffile"
        res_unit = page.tags.get("ResolutionUnit")
        # centimetre (TIFF), and tifffile's own millimetre (4) and micrometre (5)
        per_unit = {3: (10.0, "mm"), 4: (1.0, "mm"), 5: (1.0, "um")}
        known = per_unit.get(int(res_unit.value)) if res_unit is not None else None
        if known is not None and x_res and y_res:
            factor, unit = known
            sizes = {"X": factor / x_res, "Y": factor / y_res}
            if int(res_unit.value) == 3:  # centimetre: not a microscope's or a scanner's unit
                sizes, unit = _readable(sizes, unit)
            return axes, sizes, unit, "tiff"
    return axes, {}, None, "tiff"


def _readable(sizes: dict[str, float], unit: str) -> tuple[dict[str, float], str]:
    """The sizes in nm (below 50 nm), mm (from 0.1 mm) or else um.

    Why: a TIFF resolution in pixels per centimetre read as millimetres gave a 4 nm EM
    slice as 4e-06 mm in the dock's pixel-size field and the layer's scale.
    """
    from .scale import convert_pixel_size

    axes, values = list(sizes), list(sizes.values())
    largest = max(convert_pixel_size(values, unit, "um"))
    readable = "nm" if largest < 0.05 else "mm" if largest >= 100 else "um"
    return dict(zip(axes, convert_pixel_size(values, unit, readable), strict=True)), readable


def _shaped_sizes(
    axes: str, shaped: dict[str, Any], x_res: float | None, y_res: float | None
) -> dict[str, float]:
    """Sizes from a tifffile JSON description: a list per spatial axis, or one number.

    One number is ImageJ's slice ``spacing``; Y/X then come from X/YResolution
    when those say anything (not 1 pixel per unit), else the number is taken
    as isotropic (the shipped CT volume: ``"spacing": 3.0``, 3 mm voxels).
    """
    spacing = shaped["spacing"]
    spatial = [a for a in array_axes(axes, len(axes)) if a in "ZYX"]  # a stack's Q is its Z
    if isinstance(spacing, list):
        values = [float(v) for v in spacing]
        return dict(zip(spatial[-len(values) :], values, strict=False)) if values else {}
    value = float(spacing)
    sizes = {a: value for a in spatial}
    if x_res and y_res and (x_res, y_res) != (1.0, 1.0):
        sizes.update(X=1.0 / x_res, Y=1.0 / y_res)
    return sizes


def _shaped_description(page: Any) -> dict[str, Any]:
    """tifffile's JSON ``ImageDescription`` (``{"shape": ..., "spacing": ...}``), else {}."""
    text = page.tags.get("ImageDescription")
    if text is None or not isinstance(text.value, str) or not text.value.startswith("{"):
        return {}
    try:
        value = json.loads(text.value)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def read_tiff(path: str | Path) -> ImageData:
    """A TIFF / OME-TIFF with its pixel size per axis (see :func:`tiff_spacing`)."""
    import tifffile

    path = Path(path)
    try:
        axes, sizes, unit, kind = tiff_spacing(path)
        array = tifffile.imread(str(path))
    except IndexError as exc:  # tifffile found no page: "list index out of range"
        raise ValueError(f"{path}: not a readable TIFF file (no image in it)") from exc
    axes = array_axes(axes, array.ndim)
    scale = tuple(float(sizes.get(a, 1.0)) for a in axes)
    spatial = {a for a in axes if a in "ZYX"}
    metadata = {
        "has_spacing": bool(sizes) and spatial <= set(sizes),
        "spacing": sizes,
        "kind": kind,
        "file_axes": axes,
    }
    return ImageData(array, axes, scale, unit, kind, metadata)


def holds_whole_file(path: str | Path, shape: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` is all of the image in ``path`` (a TIFF's first series,
    from its header); True when that cannot be told (not a TIFF).

    Why: a reader splits a multichannel TIFF into one layer per channel, each naming the
    file as its source; a ``command.sh`` naming the file then segmented every channel as a
    stack (other labels, of another shape) instead of the channel the dock segmented.
    """
    if Path(path).suffix.lower() not in TIFF_SUFFIXES:
        return True
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            return tuple(tif.series[0].shape) == tuple(shape)
    except (OSError, IndexError, ValueError):  # tifffile.TiffFileError is a ValueError
        return False  # unreadable now: the layer's own pixels are the safe record


# --------------------------------------------------------------------------- zarr


def zarr_spacing(node: Any, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """The pixel size (Z, Y, X order, of the spatial axes present) and unit of an opened zarr
    group or array of ``ndim`` axes: OME-Zarr (NGFF 0.4 ``multiscales``, 0.5 under ``ome``),
    level 0 with its scale transforms, or the ``spacing``/``unit`` attributes this package
    writes with its results. ``(None, None)`` when it says nothing (or not per axis)."""
    attrs = dict(getattr(node, "attrs", {}) or {})
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if isinstance(multiscales, list) and multiscales and isinstance(multiscales[0], dict):
        return _ngff_spacing(multiscales[0], ndim)
    spacing, unit = attrs.get("spacing"), _unit(attrs.get("unit"))
    if isinstance(spacing, list) and 1 <= len(spacing) <= 3 and unit:
        try:
            return tuple(float(v) * unit[1] for v in spacing), unit[0]
        except (TypeError, ValueError):
            return None, None
    return None, None


def _ngff_spacing(
    multiscale: dict[str, Any], ndim: int
) -> tuple[tuple[float, ...] | None, str | None]:
    """One OME-Zarr multiscale's level-0 pixel size: scales of the dataset and of the whole."""
    axes = multiscale.get("axes") or []
    datasets = multiscale.get("datasets") or [{}]
    if len(axes) != ndim or not isinstance(datasets[0], dict):
        return None, None
    scale = [1.0] * ndim
    for transforms in (
        datasets[0].get("coordinateTransformations"),
        multiscale.get("coordinateTransformations"),
    ):
        for transform in transforms or []:
            if isinstance(transform, dict) and transform.get("type") == "scale":
                values = transform.get("scale") or []
                try:  # a hostile or broken file's scale is no pixel size, not an error
                    scale = [a * float(b) for a, b in zip(scale, values, strict=True)]
                except (TypeError, ValueError):
                    return None, None
    sizes, unit = [], None
    for axis, value in zip(axes, scale, strict=True):
        if not isinstance(axis, dict) or axis.get("type") != "space":
            continue
        found = _unit(axis.get("unit"))
        if found is None or (unit is not None and found[0] != unit):
            return None, None
        unit = found[0]
        sizes.append(float(value) * found[1])
    if not sizes or len(sizes) > 3 or not all(0 < v < math.inf for v in sizes):
        return None, None
    return tuple(sizes), unit


def array_axes(axes: str, ndim: int) -> str:
    """tifffile's series axes for the array it returned.

    ``Q``/``I`` (tifffile's unknown axes) nearest Y and X are a stack's Z, any before it T:
    a result of ours with classes first, ``QQYX``, is ``TZYX``, not ``ZZYX`` (whose
    pixel size would have four values, one of them the class axis's).
    """
    chars = list(axes)
    for n, i in enumerate(reversed([i for i, a in enumerate(axes) if a in "QI"])):
        chars[i] = "Z" if n == 0 and "Z" not in axes else "T"
    axes = "".join(chars)
    if len(axes) != ndim:
        axes = "ZYX"[-ndim:] if ndim <= 3 else "T" * (ndim - 3) + "ZYX"
    return axes
