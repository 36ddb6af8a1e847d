"""Reading and writing the files the CLI and its dask workers are given.

Why a module of its own: the command line, the distributed workers (which read
their own slice of a stack) and the benchmarks all read images, labels and
checkpoints the same way, and none of them should need the argument parser to do
it. Everything a user can get wrong here (a missing file, an unknown suffix,
labels that do not fit the image) raises :class:`UserError`, which the CLI prints
as one line without a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .locate import locate

if TYPE_CHECKING:  # torch is loaded only when a model is: `napari-unetpp --help` stays fast
    from .checkpoint import CheckpointInfo
    from .model import UNetPlusPlus

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".zarr", ".nii", ".nii.gz", ".dcm")
#: Name endings dropped when matching an image to its labels by name.
LABEL_TAGS = ("_labels", "_label", "_masks", "_mask", "_gt", "_seg", "-labels", "-mask")


class UserError(ValueError):
    """A mistake in the command line or the input files: reported in one line, exit 2."""


def is_zarr(path: str | os.PathLike[str]) -> bool:
    """A ``.zarr`` path or a zarr folder of any name: a folder that is one image, not many."""
    path = Path(path)
    if path.suffix.lower() == ".zarr":
        return True
    return path.is_dir() and any((path / m).exists() for m in (".zarray", ".zgroup", "zarr.json"))


def _is_medical(path: Path) -> bool:
    """A NIfTI file or a DICOM file / series folder (one image, read by :mod:`.readers`)."""
    from .medical import is_medical

    return is_medical(path)


def _is_supported(path: Path) -> bool:
    return (
        is_zarr(path)
        or _is_medical(path)
        or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    )


def collect_files(paths: Sequence[str | Path], what: str) -> list[Path]:
    """Expand files and folders into a sorted list of readable image files.

    A folder contributes its supported files in sorted order (a ``.zarr`` folder is
    one image), so ``--images imgs/ --labels masks/`` pairs by position or by name.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{what} {path} does not exist")
        if path.is_dir() and not is_zarr(path) and not _is_medical(path):
            found = sorted(p for p in path.iterdir() if _is_supported(p))
            if not found:
                raise UserError(f"no {what} files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files.extend(found)
        elif _is_supported(path):
            files.append(path)
        else:
            raise UserError(
                f"{path}: unsupported {what} file type {path.suffix!r}; "
                f"use one of {', '.join(IMAGE_SUFFIXES)}"
            )
    return files


def stem(path: str | os.PathLike[str]) -> str:
    """The file name without its image suffix (``a.ome.tif`` -> ``a``): names the outputs."""
    path = Path(path)
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _label_key(path: Path) -> str:
    """The stem without a labels ending, so ``a_mask.tif`` matches ``a.png``."""
    name = stem(path)
    for tag in LABEL_TAGS:
        if name.lower().endswith(tag):
            return name[: -len(tag)]
    return name


def pair_files(
    images: Sequence[str | os.PathLike[str]], labels: Sequence[str | os.PathLike[str]]
) -> list[tuple[Path, Path]]:
    """Pair images with labels by name when every name matches, else by sorted order.

    Name matching ignores the suffix and endings such as ``_labels`` / ``_mask``, so
    ``a.png`` pairs with ``a.tif`` or ``a_labels.tif`` in another folder.
    """
    image_paths, label_paths = [Path(p) for p in images], [Path(p) for p in labels]
    by_name = {_label_key(p): p for p in label_paths}
    if len(by_name) == len(labels) and all(_label_key(p) in by_name for p in image_paths):
        return [(p, by_name[_label_key(p)]) for p in image_paths]
    if len(images) != len(labels):
        raise UserError(
            f"got {len(images)} image file(s) but {len(labels)} label file(s), and their "
            "names do not match; give one labels file per image (paired by name or order)"
        )
    return list(zip(image_paths, label_paths, strict=False))


def read_array(path: str | os.PathLike[str], lazy: bool = False) -> Any:
    """Read tif/tiff/png/npy/zarr; ``lazy`` keeps big data on disk (memmap or dask).

    Lazy reading: ``.npy`` and uncompressed TIFF are memory-mapped, compressed or
    tiled TIFF is read through tifffile's zarr store into dask, zarr stays zarr.
    A string path is as good as a ``Path`` (a Python user's ``read_array("a.tif")``
    was an AttributeError).
    """
    import numpy as np

    path = Path(path)

    suffix = path.suffix.lower()
    try:
        if _is_medical(path):
            return read_image_with_size(path)[0]
        if is_zarr(path):
            return _read_zarr(path, lazy)
        if suffix == ".npy":
            return np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path, lazy)
        if suffix == ".png":
            import imageio.v3 as iio

            return np.asarray(iio.imread(path))
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UserError(f"cannot read {path}: {exc}") from exc
    raise UserError(f"{path}: unsupported file type; use one of {', '.join(IMAGE_SUFFIXES)}")


def read_image_with_size(
    path: str | os.PathLike[str], lazy: bool = False
) -> tuple[Any, tuple[float, ...] | None, str | None]:
    """``(array, pixel_size, unit)``: the image and its physical size per spatial axis.

    ``pixel_size`` follows the array's spatial axes (Z, Y, X order; None when the
    file does not say) in ``unit`` ("nm", "um", "mm", or None when the file gives
    numbers without a unit). NIfTI and DICOM volumes come out in the shipped CT
    model's orientation (see :mod:`.readers`); TIFF keeps :func:`read_array`'s
    (lazy) reading and adds the resolution tags.
    """
    from . import readers

    path = Path(path)
    try:
        if _is_medical(path):
            image = readers.read_image(path)
            return image.array, image.pixel_size, image.unit
        array = read_array(path, lazy)
        if is_zarr(path):  # OME-Zarr's scale, or the spacing our results carry
            from .stores import open_zarr

            return (array, *readers.zarr_spacing(open_zarr(path), array.ndim))
        if path.suffix.lower() not in (".tif", ".tiff"):
            return array, None, None
        axes, sizes, unit, _ = readers.tiff_spacing(path)
        size = readers.known_pixel_size(readers.array_axes(axes, array.ndim), sizes)
        return array, size, unit if size else None
    except ImportError as exc:  # nibabel / pydicom missing: the message says what to install
        raise UserError(f"cannot read {path}: {exc}") from exc
    except IndexError as exc:  # tifffile found no page: "list index out of range"
        raise UserError(f"cannot read {path}: not a readable TIFF file (no image in it)") from exc
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, (FileNotFoundError, UserError)):
            raise
        raise UserError(f"cannot read {path}: {exc}") from exc


def _read_tiff(path: Path, lazy: bool) -> Any:
    import tifffile

    if not lazy:
        return tifffile.imread(path)
    try:
        return tifffile.memmap(path, mode="r")
    except (ValueError, OSError):  # compressed, tiled or otherwise not memory-mappable
        pass
    import dask.array as da
    import zarr

    store = tifffile.imread(path, aszarr=True)
    node = zarr.open(store, mode="r")
    if not hasattr(node, "shape"):  # pyramidal file: level 0 is full resolution
        node = node["0"]
    return da.from_zarr(node)


def _read_zarr(path: Path, lazy: bool) -> Any:
    import numpy as np

    from .stores import open_zarr

    node = open_zarr(path)  # refuses pickle / object stores before zarr parses them
    if not hasattr(node, "shape"):  # a group: OME-Zarr level "0", else its only array
        names = sorted(name for name, _ in node.arrays())
        if not names:
            raise UserError(f"zarr group {path} holds no array")
        key = "0" if "0" in names else names[0]
        node = node[key]
    return node if lazy else np.asarray(node[...])


def check_image(image: Any, path: Path) -> None:
    """Reject data types that cannot be an image before they reach the engine."""
    import numpy as np

    kind = np.dtype(image.dtype).kind
    if kind not in "biuf":
        raise UserError(f"{path}: unsupported image dtype {image.dtype}; need integers or floats")
    if image.ndim < 2:
        raise UserError(f"{path}: an image needs at least 2 axes, got shape {image.shape}")
    if 0 in image.shape:
        raise UserError(f"{path}: the image has no pixels (shape {tuple(image.shape)})")


def check_labels(labels: Any, image: Any, path: Path, channel_axis: int | None) -> Any:
    """Labels must be integer-valued, match the image's spatial shape and label something."""
    import numpy as np

    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise UserError(
                f"{path}: labels must be integers (class or instance ids), got dtype "
                f"{labels.dtype} with fractional values"
            )
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "biu":
        raise UserError(f"{path}: unsupported labels dtype {labels.dtype}; need integers")
    from .normalization import check_pair

    try:
        check_pair(image, labels, channel_axis)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from exc
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise UserError(
            f"{path}: labels contain negative values (down to {labels.min()}); ids must be "
            ">= 0 (0 = background, or unlabelled with --label-mode sparse)"
        )
    if not labels.any():
        raise UserError(f"{path}: labels are empty (all 0); paint or load some labels first")
    return labels


def create_zarr(path: str | os.PathLike[str], shape: tuple[int, ...], dtype: Any) -> Any:
    """A new zarr array at ``path`` (zarr 2 or 3), chunked one slice deep, marked incomplete.

    ``path`` must not exist: outputs are written into a fresh staging folder
    (:class:`~napari_unetpp.outputs.OutputFolder`) and renamed into place.
    """
    from .stores import create_array, slice_chunks

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to replace it")
    return create_array(None, None, shape, dtype, slice_chunks(shape, (1024, 1024)), path=path)


def spacing_attrs(pixel_size: tuple[float, ...] | None, unit: str | None) -> dict[str, Any]:
    """A result's pixel size as stored with it (TIFF JSON description, zarr attributes):
    every output of one input carries the same, so each opens on the input's grid."""
    return {"spacing": [float(v) for v in pixel_size], "unit": unit} if pixel_size else {}


def resolution_tags(pixel_size: tuple[float, ...] | None, unit: str | None) -> dict[str, Any]:
    """``tifffile.imwrite`` keywords for the TIFF's own X/YResolution in pixels per
    centimetre, so that Fiji and other TIFF readers (not only this plugin, which reads the
    JSON description first) open a result at the input's in-plane pixel size."""
    from .scale import UNITS, convert_pixel_size

    if not pixel_size or len(pixel_size) < 2 or unit not in UNITS:
        return {}
    y_mm, x_mm = convert_pixel_size(pixel_size[-2:], unit, "mm")
    if not (y_mm > 0 and x_mm > 0):
        return {}
    return {"resolution": (10.0 / x_mm, 10.0 / y_mm), "resolutionunit": 3}


def write_array(
    base: str | os.PathLike[str],
    array: Any,
    fmt: str,
    pixel_size: tuple[float, ...] | None = None,
    unit: str | None = None,
) -> Path:
    """Write ``base.tif`` (BigTIFF when needed) or ``base.zarr`` (chunked, for big results).

    ``pixel_size`` (per trailing spatial axis, in ``unit``) is stored as the input's was
    read (a TIFF's JSON ``spacing``/``unit``, a zarr's attributes), so that the result
    opens at the image's scale and overlays it.
    """
    import numpy as np

    base = Path(base)
    spacing = spacing_attrs(pixel_size, unit)
    if fmt == "zarr":
        from .stores import mark_complete

        path = base.with_suffix(".zarr")
        target = create_zarr(path, tuple(array.shape), array.dtype)
        target[...] = np.asarray(array)
        target.attrs.update(spacing)
        mark_complete(target)
        return path
    import tifffile

    from .outputs import TIFF_SOFTWARE

    path = base.with_suffix(".tif")
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to replace it")
    # minisblack: a 3- or 4-slice stack must not be stored (and shown) as RGB; the
    # Software tag tells a later run that this file is ours to replace
    tifffile.imwrite(
        path,
        np.asarray(array),
        compression="zlib",
        photometric="minisblack",
        software=TIFF_SOFTWARE,
        metadata=spacing,
        **resolution_tags(pixel_size, unit),
    )
    return path


# --------------------------------------------------------------------------- checkpoints


def load_model(spec: str, device: str = "cpu") -> tuple[UNetPlusPlus, CheckpointInfo]:
    """A checkpoint path (folder, ``config.json``, ``.zip``, run folder) or ``zoo:NAME``.

    Where ``spec`` points is :func:`napari_unetpp.locate.locate`'s decision.
    """
    from .checkpoint import load_checkpoint

    return load_checkpoint(locate(spec).path, device=device)
