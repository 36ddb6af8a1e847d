"""Image files with their physical pixel size: NIfTI, DICOM series, TIFF / OME-TIFF.

Why a module of its own: a model trained at 3 mm (CT) or 4 nm (EM) can only be
applied at the right scale when the pixel size travels with the pixels from the
file to the engine. The napari reader (``_reader.py``) and the CLI
(``files.read_image_with_size``) both read through here, so a dropped ``.nii.gz``
and ``napari-unetpp predict scan.nii.gz`` see the same array, orientation and
spacing. No torch, no Qt; nibabel and pydicom are optional (``pip install
napari-unetpp[medical]``) and imported only when such a file is read.

Orientation of medical volumes (NIfTI, DICOM)
---------------------------------------------
Both come out as ``(Z, Y, X)`` axial slices in the orientation of the shipped
CT model's training volume (``ct_totalseg/ct_full.tif``, TotalSegmentator's test
scan), measured on its organ labels: Z runs from inferior to superior (feet to
head: the pelvis is slice 0), Y from anterior to posterior (the belly at the top
of the slice), X from the patient's left to the patient's right (the liver and
the right kidney at large X, so on the *right* of the displayed image, napari
drawing X to the right). In RAS world terms: Z = +S, Y = -A, X = +R. Any file
whose axes are close to the patient axes is permuted and flipped into it (the
largest direction cosine decides, as ``nibabel.as_closest_canonical``); oblique
scans are not resampled, and ``metadata["direction"]`` keeps the original axes.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ImageData",
    "MEDICAL_SUFFIXES",
    "TIFF_SUFFIXES",
    "is_dicom",
    "is_medical",
    "is_nifti",
    "read_dicom",
    "read_image",
    "read_nifti",
    "read_tiff",
    "array_axes",
    "reorient_to_zyx",
    "tiff_spacing",
]

#: Suffixes (lower case) read by this module besides TIFF.
MEDICAL_SUFFIXES = (".nii", ".nii.gz", ".dcm")
TIFF_SUFFIXES = (".tif", ".tiff")
#: World (RAS) axis and wanted sign of each output axis Z, Y, X (see the module docstring).
ZYX_FROM_RAS = ((2, +1), (1, -1), (0, +1))
_MISSING = (
    "reading {what} needs the optional package {package}: "
    "pip install 'napari-unetpp[medical]' (or pip install {package})"
)


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
        """Physical size per spatial axis (array order), or None when the file has none."""
        if not self.metadata.get("has_spacing"):
            return None
        return tuple(self.scale[i] for i in self.spatial_axes)


# --------------------------------------------------------------------------- kinds


def _name(path: Path) -> str:
    return path.name.lower()


def is_nifti(path: str | Path) -> bool:
    """A ``.nii`` or ``.nii.gz`` file."""
    name = _name(Path(path))
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _has_dicm_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.suffix.lower() == ".dcm" or _has_dicm_magic(p))
    )


def is_dicom(path: str | Path) -> bool:
    """A DICOM file (``.dcm`` or the ``DICM`` marker) or a folder holding DICOM files.

    Cheap: looks at names and 4 bytes of at most the first 8 files of a folder.
    """
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".dcm" or _has_dicm_magic(path)
    if not path.is_dir():
        return False
    files = [p for p in itertools.islice(sorted(path.iterdir()), 64) if p.is_file()][:8]
    return bool(files) and any(p.suffix.lower() == ".dcm" or _has_dicm_magic(p) for p in files)


def is_medical(path: str | Path) -> bool:
    """Read by :func:`read_nifti` or :func:`read_dicom`."""
    return is_nifti(path) or is_dicom(path)


def read_image(path: str | Path) -> ImageData:
    """Any supported file with its pixel size: NIfTI, DICOM (file or series folder), TIFF."""
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


# --------------------------------------------------------------------------- orientation


def reorient_to_zyx(
    array: np.ndarray, axes_ras: np.ndarray
) -> tuple[np.ndarray, tuple[float, float, float], tuple[int, ...], tuple[bool, ...]]:
    """Permute and flip a volume into the module's ``(Z, Y, X)`` convention.

    ``axes_ras`` is 3x3: column ``j`` is the world (RAS, mm) step of one voxel along
    array axis ``j`` (a NIfTI affine's upper-left block). Returns the new array,
    the spacing per output axis, the permutation used and which axes were flipped.
    """
    axes_ras = np.asarray(axes_ras, dtype=np.float64)
    spacing = np.linalg.norm(axes_ras, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(
            f"degenerate voxel axes (spacing {spacing.tolist()}); "
            "the file's affine / orientation tags are broken"
        )
    cosines = axes_ras / spacing
    # the voxel axis for each world axis: the assignment with the largest total |cosine|
    best = max(
        itertools.permutations(range(3)), key=lambda p: sum(abs(cosines[w, p[w]]) for w in range(3))
    )
    order, flips = [], []
    for world, sign in ZYX_FROM_RAS:
        voxel = best[world]
        order.append(voxel)
        flips.append(bool(np.sign(cosines[world, voxel]) != sign))
    out = np.transpose(array, order)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    size = tuple(float(spacing[v]) for v in order)
    return np.ascontiguousarray(out), size, tuple(order), tuple(flips)  # type: ignore[return-value]


# --------------------------------------------------------------------------- NIfTI

_NIFTI_UNITS = {
    "mm": ("mm", 1.0),
    "micron": ("um", 1.0),
    "meter": ("mm", 1000.0),
    "unknown": ("mm", 1.0),
}  # NIfTI's default space unit is mm


def read_nifti(path: str | Path) -> ImageData:
    """A NIfTI volume as ``(Z, Y, X)`` (extra 4th+ axes first, as ``T``) with its spacing.

    Orientation follows the module docstring: the affine (sform, else qform, as
    nibabel chooses) decides how the voxel axes are permuted and flipped.
    Intensities keep the file's scaling (``scl_slope``/``scl_inter``): CT in HU.
    """
    try:
        import nibabel
    except ImportError as exc:
        raise ImportError(_MISSING.format(what="NIfTI", package="nibabel")) from exc
    path = Path(path)
    try:
        image: Any = nibabel.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (nibabel.filebasedimages.ImageFileError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if (
        data.dtype.kind == "f"
        and data.size
        and np.all(np.mod(data, 1) == 0)
        and (data.min() >= -32768 and data.max() <= 32767)
    ):
        data = data.astype(np.int16)  # scaled integers (HU) stay compact
    while data.ndim < 3:
        data = data[..., np.newaxis]
    extra = data.ndim - 3
    affine = np.asarray(image.affine, dtype=np.float64)
    space_unit = image.header.get_xyzt_units()[0] or "unknown"
    unit, factor = _NIFTI_UNITS.get(space_unit, ("mm", 1.0))
    # put the non-spatial axes (time, components) first, then reorient each 3D volume
    moved = np.moveaxis(data, tuple(range(3)), tuple(range(extra, extra + 3)))
    flat = moved.reshape(-1, *moved.shape[extra:])
    volumes = []
    for volume in flat:
        out, size, order, flips = reorient_to_zyx(volume, affine[:3, :3])
        volumes.append(out)
    array = np.stack(volumes).reshape(*moved.shape[:extra], *volumes[0].shape)
    spacing = tuple(s * factor for s in size)
    return ImageData(
        array=array,
        axes="T" * extra + "ZYX",
        scale=(1.0,) * extra + spacing,
        unit=unit,
        source="nifti",
        metadata={
            "has_spacing": True,
            "file_spacing": [float(v) for v in image.header.get_zooms()[:3]],
            "direction": affine[:3, :3].tolist(),
            "axis_order": list(order),
            "flipped": list(flips),
            "orientation": "Z=+S, Y=-A, X=+R",
            "space_unit": space_unit,
        },
    )


# --------------------------------------------------------------------------- DICOM


def _read_dicom_headers(files: Sequence[Path]) -> list[Any]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for file in files:
        try:
            headers.append((file, pydicom.dcmread(str(file), stop_before_pixels=True)))
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # a non-DICOM or broken file in the folder: skip it
    return headers


def _pick_series(headers: list[Any]) -> tuple[list[Any], list[str]]:
    """The series with the most image slices (a folder may hold scouts or several series)."""
    series: dict[str, list[Any]] = {}
    for file, ds in headers:
        if "PixelData" not in ds and getattr(ds, "Rows", None) is None:
            continue
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append((file, ds))
    if not series:
        raise ValueError("no DICOM image found (files hold no pixel data)")
    uid = max(series, key=lambda k: len(series[k]))
    return series[uid], sorted(series)


def read_dicom(path: str | Path) -> ImageData:
    """A DICOM series (folder) or file as ``(Z, Y, X)`` (or ``(Y, X)``) in HU, with spacing.

    Slices are sorted along the slice normal (the cross product of the row and
    column directions of ``ImageOrientationPatient``) by ``ImagePositionPatient``;
    the slice spacing is the median distance between neighbouring positions
    (``SpacingBetweenSlices`` / ``SliceThickness`` for one slice), the in-plane
    spacing ``PixelSpacing``. ``RescaleSlope``/``RescaleIntercept`` are applied,
    so CT values are Hounsfield units. Then the volume is oriented as the module
    docstring says (DICOM's LPS axes turned into RAS first).
    """
    try:
        import pydicom  # noqa: F401
    except ImportError as exc:
        raise ImportError(_MISSING.format(what="DICOM", package="pydicom")) from exc
    path = Path(path)
    files = _dicom_files(path) if path.is_dir() else [path]
    headers = _read_dicom_headers(files)
    if not headers:
        raise ValueError(f"{path}: no readable DICOM file")
    chosen, all_series = _pick_series(headers)
    first = chosen[0][1]
    orientation = getattr(first, "ImageOrientationPatient", None)
    row_dir = np.array(orientation[:3] if orientation else (1, 0, 0), dtype=np.float64)
    col_dir = np.array(orientation[3:] if orientation else (0, 1, 0), dtype=np.float64)
    normal = np.cross(row_dir, col_dir)

    def position(ds: Any) -> float:
        where = getattr(ds, "ImagePositionPatient", None)
        if where is None:
            return float(getattr(ds, "InstanceNumber", 0) or 0)
        return float(np.dot(normal, np.asarray(where, dtype=np.float64)))

    chosen = sorted(chosen, key=lambda item: position(item[1]))
    positions = np.array([position(ds) for _, ds in chosen])
    pixel_spacing: Any = getattr(first, "PixelSpacing", None)
    has_spacing = pixel_spacing is not None
    dy, dx = (float(pixel_spacing[0]), float(pixel_spacing[1])) if has_spacing else (1.0, 1.0)
    if len(chosen) > 1:
        gaps = np.diff(positions)
        dz = float(np.median(gaps))
        uneven = bool(np.ptp(gaps) > 0.01 * max(abs(dz), 1e-6))
    else:
        dz = float(
            getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 1.0
        )
        uneven = False
    if dz <= 0:
        raise ValueError(
            f"{path}: slices share one position (duplicate series?); put one series per folder"
        )
    volume = np.stack([_hu(ds) for ds in _read_pixels([f for f, _ in chosen])])
    metadata: dict[str, Any] = {
        "has_spacing": has_spacing,
        "series": all_series,
        "uneven_slices": uneven,
        "modality": str(getattr(first, "Modality", "")),
        "file_spacing": [dz, dy, dx],
    }
    unit = "mm" if has_spacing else None
    if volume.ndim == 4:  # multi-frame files: their per-frame geometry is not read
        if len(chosen) > 1:
            raise ValueError(
                f"{path}: a series of multi-frame DICOM files is not supported; "
                "convert it to NIfTI (e.g. with dcm2niix) and open that"
            )
        volume, orientation = volume[0], None
        metadata["multi_frame"] = True
    if orientation is None:  # no patient axes (secondary capture...): the stack as stored
        array = volume if len(chosen) > 1 else volume[0]
        scale = (dz, dy, dx)[-array.ndim :]
        return ImageData(array, "ZYX"[-array.ndim :], scale, unit, "dicom", metadata)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    axes_ras = np.stack([normal * dz, col_dir * dy, row_dir * dx], axis=1) * lps_to_ras[:, None]
    array, size, order, flips = reorient_to_zyx(volume, axes_ras)
    metadata.update(
        direction=axes_ras.tolist(),
        axis_order=list(order),
        flipped=list(flips),
        orientation="Z=+S, Y=-A, X=+R",
    )
    if len(chosen) == 1:  # one slice: drop the length-1 axis the slice normal went to
        gone = order.index(0)
        array = array.reshape(tuple(n for i, n in enumerate(array.shape) if i != gone))
        in_plane = tuple(v for i, v in enumerate(size) if i != gone)
        return ImageData(array, "YX", in_plane, unit, "dicom", metadata)
    return ImageData(array, "ZYX", size, unit, "dicom", metadata)


def _read_pixels(files: Sequence[Path]) -> list[Any]:
    import pydicom

    return [pydicom.dcmread(str(f)) for f in files]


def _hu(ds: Any) -> np.ndarray:
    """Stored values -> modality values (HU for CT): ``value * slope + intercept``."""
    pixels = ds.pixel_array
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == round(intercept):
        out = pixels.astype(np.int32) + int(intercept)
        if out.min(initial=0) >= -32768 and out.max(initial=0) <= 32767:
            return out.astype(np.int16)
        return out
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


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
        if res_unit is not None and int(res_unit.value) == 3 and x_res and y_res:
            return axes, {"X": 10.0 / x_res, "Y": 10.0 / y_res}, "mm", "tiff"
    return axes, {}, None, "tiff"


def _shaped_sizes(
    axes: str, shaped: dict[str, Any], x_res: float | None, y_res: float | None
) -> dict[str, float]:
    """Sizes from a tifffile JSON description: a list per spatial axis, or one number.

    One number is ImageJ's slice ``spacing``; Y/X then come from X/YResolution
    when those say anything (not 1 pixel per unit), else the number is taken
    as isotropic (the shipped CT volume: ``"spacing": 3.0``, 3 mm voxels).
    """
    spacing = shaped["spacing"]
    spatial = [a for a in axes if a in "ZYX"]
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
    axes, sizes, unit, kind = tiff_spacing(path)
    array = tifffile.imread(str(path))
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


def array_axes(axes: str, ndim: int) -> str:
    """tifffile's series axes for the array it returned (``Q``/``I`` stand for Z of a stack)."""
    axes = re.sub("[QI]", "Z", axes)
    if len(axes) != ndim:
        axes = "ZYX"[-ndim:] if ndim <= 3 else "T" * (ndim - 3) + "ZYX"
    return axes
