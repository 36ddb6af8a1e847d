"""Medical volumes with their voxel size: NIfTI (``.nii``, ``.nii.gz``) and DICOM series.

Why apart from :mod:`readers`: these formats need the optional nibabel / pydicom
(``pip install napari-unetpp[medical]``, imported only when such a file is read) and
share one concern the TIFF reader does not have, the patient orientation.
:func:`readers.read_image` dispatches here; ``_reader.py`` and :mod:`files` ask
:func:`is_medical` which files are ours.

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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .readers import ImageData

__all__ = [
    "MEDICAL_SUFFIXES",
    "is_dicom",
    "is_medical",
    "is_nifti",
    "read_dicom",
    "read_nifti",
    "reorient_to_zyx",
    "write_nifti_like",
]

#: Suffixes (lower case) read by this module.
MEDICAL_SUFFIXES = (".nii", ".nii.gz", ".dcm")
#: World (RAS) axis and wanted sign of each output axis Z, Y, X (see the module docstring).
ZYX_FROM_RAS = ((2, +1), (1, -1), (0, +1))
_MISSING = (
    "reading {what} needs the optional package {package}: "
    "pip install 'napari-unetpp[medical]' (or pip install {package})"
)


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


# --------------------------------------------------------------------------- orientation


def _orientation(
    axes_ras: np.ndarray,
) -> tuple[tuple[int, ...], tuple[bool, ...], tuple[float, float, float]]:
    """The voxel axis for each output axis Z, Y, X, whether it is flipped, and its spacing."""
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
    size = tuple(float(spacing[v]) for v in order)
    return tuple(order), tuple(flips), size  # type: ignore[return-value]


def reorient_to_zyx(
    array: np.ndarray, axes_ras: np.ndarray
) -> tuple[np.ndarray, tuple[float, float, float], tuple[int, ...], tuple[bool, ...]]:
    """Permute and flip a volume into the module's ``(Z, Y, X)`` convention.

    ``axes_ras`` is 3x3: column ``j`` is the world (RAS, mm) step of one voxel along
    array axis ``j`` (a NIfTI affine's upper-left block). Returns the new array,
    the spacing per output axis, the permutation used and which axes were flipped.
    """
    order, flips, size = _orientation(axes_ras)
    out = np.transpose(array, order)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return np.ascontiguousarray(out), size, order, flips


def orient_like_file(array: np.ndarray, axes_ras: np.ndarray) -> np.ndarray:
    """The inverse of :func:`reorient_to_zyx`: a ``(Z, Y, X)`` volume back in the file's voxel
    order, so that labels drawn on the reader's volume lie on the file's own grid."""
    order, flips, _ = _orientation(axes_ras)
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis)
    return np.ascontiguousarray(np.transpose(array, np.argsort(order)))


def write_nifti_like(path: str | Path, labels: np.ndarray, source: str | Path) -> Path:
    """Write ``labels`` (on the reader's ``(Z, Y, X)`` volume of ``source``) as a NIfTI file on
    ``source``'s grid, so that any medical viewer (ITK-SNAP, 3D Slicer) overlays the labels on
    the scan. A NIfTI source gives its voxel order, affine and header; a DICOM series its
    slices' positions and axes (as dcm2niix would: columns, rows, slices). A 4D NIfTI's
    labels ``(T, Z, Y, X)`` go back to its ``(x, y, z, t)``; a ``ValueError`` says why not."""
    import nibabel

    if is_dicom(source):
        voxels, affine = _dicom_voxels(labels, Path(source))
        header = nibabel.Nifti1Header()
        header.set_xyzt_units("mm")
    else:
        image: Any = nibabel.load(str(source))
        affine = np.asarray(image.affine, dtype=np.float64)
        order = _orientation(affine[:3, :3])[0]
        shape = tuple(image.shape) + (1,) * (3 - len(image.shape))  # a 2D file: one slice
        volumes = labels.reshape(-1, *labels.shape[-3:]) if labels.ndim == 4 else [labels]
        if (
            len(shape) != labels.ndim
            or labels.ndim not in (3, 4)
            or labels.shape[-3:] != tuple(shape[i] for i in order)
            or (labels.ndim == 4 and labels.shape[0] != shape[3])
        ):
            raise ValueError(
                f"labels of shape {labels.shape} do not match the volume {image.shape} of {source}"
            )
        # a 4D (time) series: the reader put time first, the file has it last
        voxels = np.stack([orient_like_file(v, affine[:3, :3]) for v in volumes], axis=-1)
        voxels = (voxels[..., 0] if labels.ndim == 3 else voxels).reshape(image.shape)
        header = image.header.copy()
    dtype = np.uint8 if voxels.max(initial=0) < 256 and voxels.min(initial=0) >= 0 else np.int32
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)  # labels are ids, not scaled intensities
    out = nibabel.Nifti1Image(voxels.astype(dtype), affine, header)
    if is_dicom(source):  # DICOM positions are the scanner's coordinates
        out.set_qform(affine, code=1)
        out.set_sform(affine, code=1)
    nibabel.save(out, str(path))
    return Path(path)


def _dicom_voxels(labels: np.ndarray, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels on a DICOM series' reader volume as ``(column, row, slice)`` voxels, and the
    affine that puts each at its patient position (RAS, mm)."""
    series = _dicom_series(source)
    if series.axes_ras is None or series.origin_ras is None:
        raise ValueError(f"{source}: the slices carry no patient position or orientation")
    if series.uneven:  # one affine would misplace every slice past a gap
        raise ValueError(f"{source}: the slices are unevenly spaced, so no one grid holds them")
    shape = (len(series.files), int(series.first.Rows), int(series.first.Columns))
    order = _orientation(series.axes_ras)[0]
    expected = tuple(shape[i] for i in order)
    if len(series.files) == 1:  # the reader dropped the slice axis
        labels = labels.reshape(expected)
    if labels.shape != expected:
        raise ValueError(f"labels of shape {labels.shape} do not match the series {expected}")
    stored = orient_like_file(labels, series.axes_ras)  # (slice, row, column)
    affine = np.eye(4)
    affine[:3, :3] = series.axes_ras[:, ::-1]
    affine[:3, 3] = series.origin_ras
    return np.ascontiguousarray(stored.transpose(2, 1, 0)), affine


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


def _plane(ds: Any) -> tuple[float, ...] | None:
    """A slice's orientation; a localizer says so in its ImageType, or lies in another plane."""
    if "LOCALIZER" in [str(v).upper() for v in (getattr(ds, "ImageType", None) or [])]:
        return (float("nan"),)
    orientation = getattr(ds, "ImageOrientationPatient", None)
    return tuple(round(float(v), 3) for v in orientation) if orientation else None


def _drop_localizers(chosen: list[Any]) -> tuple[list[Any], list[Path]]:
    """The slices in the series' most common plane, and the files left out (scouts).

    A scout / localizer stored in the scan's own series (another size, a coronal plane) made
    the whole series unreadable ("put one series per folder") and, before that, its position
    along the axial normal was taken for a gap between slices. A slice in the scan's plane
    but of another size stays in: it is named when the pixels are read."""
    groups: dict[Any, list[Any]] = {}
    for item in chosen:
        groups.setdefault(_plane(item[1]), []).append(item)
    if len(groups) == 1:
        return chosen, []
    keep = max(groups.values(), key=len)
    kept = {file for file, _ in keep}
    return keep, sorted(file for file, _ in chosen if file not in kept)


@dataclass
class _Series:
    """The geometry of the chosen DICOM series, from its headers only (no pixels)."""

    files: list[Path]  # sorted along the slice normal
    first: Any  # the first slice's header
    all_series: list[str]
    axes_ras: np.ndarray | None  # column j: the RAS step (mm) of one voxel along axis j
    origin_ras: np.ndarray | None  # the first voxel's centre (RAS, mm)
    spacing: tuple[float, float, float]  # slice, row, column (mm)
    has_spacing: bool
    uneven: bool
    pixel_spacings: int = 1  # how many different PixelSpacing values its slices give
    left_out: list[Path] = field(default_factory=list)  # localizers in the series


def _dicom_series(path: Path) -> _Series:
    """Pick the series (:func:`_pick_series`), sort its slices and measure their spacing."""
    files = _dicom_files(path) if path.is_dir() else [path]
    headers = _read_dicom_headers(files)
    if not headers:
        raise ValueError(f"{path}: no readable DICOM file")
    chosen, all_series = _pick_series(headers)
    chosen, left_out = _drop_localizers(chosen)
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
    first = chosen[0][1]
    positions = np.array([position(ds) for _, ds in chosen])
    pixel_spacing: Any = getattr(first, "PixelSpacing", None)
    has_spacing = pixel_spacing is not None
    dy, dx = (float(pixel_spacing[0]), float(pixel_spacing[1])) if has_spacing else (1.0, 1.0)
    placed = all(getattr(ds, "ImagePositionPatient", None) is not None for _, ds in chosen)
    if len(chosen) > 1 and placed:
        gaps = np.diff(positions)
        dz = float(np.median(gaps))
        uneven = bool(np.ptp(gaps) > 0.01 * max(abs(dz), 1e-6))
    else:  # one slice, or slices ordered by InstanceNumber: their gaps are no millimetres
        dz = float(
            getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 1.0
        )
        uneven = False
    if dz <= 0:
        raise ValueError(
            f"{path}: slices share one position (duplicate series?); put one series per folder"
        )
    axes_ras = origin_ras = None
    if orientation is not None:
        lps_to_ras = np.array([-1.0, -1.0, 1.0])
        axes_ras = np.stack([normal * dz, col_dir * dy, row_dir * dx], axis=1) * lps_to_ras[:, None]
        where = getattr(first, "ImagePositionPatient", None)
        if where is not None and placed:
            origin_ras = np.asarray(where, dtype=np.float64) * lps_to_ras
    spacings = {tuple(float(v) for v in getattr(ds, "PixelSpacing", ()) or ()) for _, ds in chosen}
    return _Series(
        [f for f, _ in chosen], first, all_series, axes_ras, origin_ras, (dz, dy, dx),
        has_spacing, uneven, len(spacings), left_out,
    )  # fmt: skip


def _warn_series(path: Path, series: _Series) -> None:
    """Say what a folder's reading chose or could not keep: the user's scan must not be
    silently another series, or slices silently closed up over a gap."""
    if len(series.all_series) > 1:
        warnings.warn(
            f"{path}: the folder holds {len(series.all_series)} DICOM series; read the one "
            f"with the most slices ({len(series.files)}, SeriesInstanceUID "
            f"{getattr(series.first, 'SeriesInstanceUID', '?')}); put one series per folder "
            "to choose another",
            stacklevel=3,
        )
    if path.is_file() and len(siblings := _dicom_files(path.parent)) > 1:
        warnings.warn(
            f"{path}: read as one slice, one of the {len(siblings)} DICOM files in its "
            "folder; to read the whole series open the folder (napari: File > Open Folder..., "
            "or drag the folder in)",
            stacklevel=3,
        )
    if series.left_out:
        names = ", ".join(f.name for f in series.left_out[:3])
        more = f" and {len(series.left_out) - 3} more" if len(series.left_out) > 3 else ""
        warnings.warn(
            f"{path}: left out {len(series.left_out)} localizer / scout slice(s) (another plane "
            f"than the series' other {len(series.files)}, or marked LOCALIZER): {names}{more}",
            stacklevel=3,
        )
    if series.pixel_spacings > 1:
        warnings.warn(
            f"{path}: the slices give {series.pixel_spacings} different pixel spacings "
            "(PixelSpacing); all are read at the lowest slice's "
            f"{series.spacing[1]:g} x {series.spacing[2]:g} mm, so sizes in the others are "
            "off; put one series per folder, or resample it (e.g. with 3D Slicer)",
            stacklevel=3,
        )
    if series.uneven:
        warnings.warn(
            f"{path}: the slices are unevenly spaced (missing slices?); they are stacked "
            f"{series.spacing[0]:g} mm apart, so positions along the stack are approximate",
            stacklevel=3,
        )


def read_dicom(path: str | Path) -> ImageData:
    """A DICOM series (folder) or file as ``(Z, Y, X)`` (or ``(Y, X)``) in HU, with spacing.

    Slices are sorted along the slice normal (the cross product of the row and
    column directions of ``ImageOrientationPatient``) by ``ImagePositionPatient``;
    the slice spacing is the median distance between neighbouring positions
    (``SpacingBetweenSlices`` / ``SliceThickness`` for one slice, or when the slices have
    no position and are ordered by ``InstanceNumber``), the in-plane
    spacing ``PixelSpacing``. ``RescaleSlope``/``RescaleIntercept`` are applied,
    so CT values are Hounsfield units. Then the volume is oriented as the module
    docstring says (DICOM's LPS axes turned into RAS first). A folder of several
    series, or of unevenly spaced slices, is read with a warning saying so.
    """
    try:
        import pydicom  # noqa: F401
    except ImportError as exc:
        raise ImportError(_MISSING.format(what="DICOM", package="pydicom")) from exc
    path = Path(path)
    series = _dicom_series(path)
    _warn_series(path, series)
    volume = np.stack(_read_pixels(series.files))
    dz, dy, dx = series.spacing
    metadata: dict[str, Any] = {
        "has_spacing": series.has_spacing,
        "series": series.all_series,
        "uneven_slices": series.uneven,
        "modality": str(getattr(series.first, "Modality", "")),
        "file_spacing": [dz, dy, dx],
    }
    unit = "mm" if series.has_spacing else None
    axes_ras = series.axes_ras
    if volume.ndim == 4:  # multi-frame files: their per-frame geometry is not read
        if len(series.files) > 1:
            raise ValueError(
                f"{path}: a series of multi-frame DICOM files is not supported; "
                "convert it to NIfTI (e.g. with dcm2niix) and open that"
            )
        volume, axes_ras = volume[0], None
        metadata["multi_frame"] = True
    if axes_ras is None:  # no patient axes (secondary capture...): the stack as stored
        array = volume if len(series.files) > 1 else volume[0]
        scale = (dz, dy, dx)[-array.ndim :]
        return ImageData(array, "ZYX"[-array.ndim :], scale, unit, "dicom", metadata)
    array, size, order, flips = reorient_to_zyx(volume, axes_ras)
    metadata.update(
        direction=axes_ras.tolist(),
        axis_order=list(order),
        flipped=list(flips),
        orientation="Z=+S, Y=-A, X=+R",
    )
    if len(series.files) == 1:  # one slice: drop the length-1 axis the slice normal went to
        gone = order.index(0)
        array = array.reshape(tuple(n for i, n in enumerate(array.shape) if i != gone))
        in_plane = tuple(v for i, v in enumerate(size) if i != gone)
        return ImageData(array, "YX", in_plane, unit, "dicom", metadata)
    return ImageData(array, "ZYX", size, unit, "dicom", metadata)


def _read_pixels(files: Sequence[Path]) -> list[np.ndarray]:
    """Each slice's modality values (:func:`_hu`). A slice that cannot be read, or whose size
    differs, is named: one bad file among 300 must be findable."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    broken = (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, NotImplementedError)
    slices: list[np.ndarray] = []
    for file in files:
        try:
            ds = pydicom.dcmread(str(file))
            slices.append(_hu(ds))
        except RuntimeError as exc:  # pydicom: no installed plugin decodes this compression
            syntax = ds.file_meta.get("TransferSyntaxUID", None)
            raise ValueError(
                f"{file}: cannot decode its {getattr(syntax, 'name', 'compressed')} pixels "
                "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or decompress "
                f"the series, e.g. gdcmconv --raw); {' '.join(str(exc).split())[:200]}"
            ) from exc
        except broken as exc:
            raise ValueError(
                f"{file}: cannot read this slice's pixels ({exc}); remove or re-export it"
            ) from exc
        if slices[-1].shape != slices[0].shape:
            raise ValueError(
                f"{file}: a slice of shape {slices[-1].shape} in a series of "
                f"{slices[0].shape}; put one series per folder"
            )
    return slices


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
