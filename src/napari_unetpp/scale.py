"""Physical pixel size and object size: pure helpers (numpy / scipy / skimage, no torch).

Why: a network learns features at the scale of its training data. Nuclei twice
as large as the training set's, or a CT scan at 1 mm for a model trained at
3 mm, look like different objects to it. Resampling the input to the model's
scale (and the outputs back to the input grid) fixes that, as nnU-Net does with
its training spacing and cellpose with its object diameter.

Conventions
-----------
- A *zoom factor* multiplies an axis' size: ``new = round(old * zoom)``. Input
  pixels of 1 mm for a model trained at 3 mm give ``zoom = 1 / 3`` (shrink).
- ``rescale`` (cellpose's name) is the same thing: the model's object diameter
  over the input's, so objects twice the training size give ``rescale = 0.5``.
- Only the model's spatial axes are resampled: the last two (non-channel) axes
  for a 2D model, even on a stack it runs slice by slice; the last three for a
  3D model. Channel and leading (time, slice) axes never are.

Example
-------
>>> zoom_from_pixel_size((1.0, 1.0), (3.0, 3.0))
(0.3333333333333333, 0.3333333333333333)
>>> image = np.zeros((5, 33, 47), "float32")           # a stack for a 2D model
>>> axes = spatial_axes(image.ndim, 2, channel_axis=None)
>>> small = resample(image, (0.5, 0.5), axes)
>>> small.shape, resample_to(small, image.shape, axes).shape
((5, 17, 24), (5, 33, 47))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "UNITS",
    "MIN_ZOOM",
    "mean_zoom",
    "MAX_ZOOM",
    "convert_pixel_size",
    "model_axes_pixel_size",
    "zoom_from_pixel_size",
    "check_zoom",
    "spatial_axes",
    "scaled_shape",
    "resample",
    "resample_to",
    "SMOOTH_BEYOND",
    "shrink_sigma",
    "object_diameters",
    "median_object_diameter",
    "foreground_diameter",
    "drop_specks",
    "auto_rescale",
    "rescale_from_diameter",
    "training_pixel_size",
    "training_scale",
]

#: Physical units a pixel size may be given in, as micrometres per unit.
UNITS: dict[str, float] = {"nm": 1e-3, "um": 1.0, "µm": 1.0, "mm": 1e3}

#: Bounds of an effective zoom: beyond them the model sees objects 10x off its
#: training scale, which no resampling makes sensible (and memory explodes).
MIN_ZOOM, MAX_ZOOM = 0.1, 10.0


def _unit_factor(unit: str) -> float:
    if unit not in UNITS:
        raise ValueError(f"unknown pixel unit {unit!r}; use one of {sorted(UNITS)}")
    return UNITS[unit]


def convert_pixel_size(size: Sequence[float], unit: str, to_unit: str) -> tuple[float, ...]:
    """``size`` in ``unit`` expressed in ``to_unit`` (e.g. 0.004 um -> 4 nm)."""
    factor = _unit_factor(unit) / _unit_factor(to_unit)
    return tuple(float(s) * factor for s in size)


def model_axes_pixel_size(pixel_size: Sequence[float], spatial_dims: int) -> tuple[float, ...]:
    """The input's pixel size on the model's spatial axes.

    One value applies to every axis; more values are per axis of the input
    (e.g. a layer's ZYX scale) and the last ``spatial_dims`` of them are the
    model's axes (a 2D model on a stack uses the in-plane YX sizes).
    """
    size = tuple(float(s) for s in pixel_size)
    if len(size) == 1:
        return size * spatial_dims
    if len(size) < spatial_dims:
        raise ValueError(
            f"pixel_size {size} has {len(size)} value(s) but the model is {spatial_dims}D; "
            f"give one value (isotropic) or {spatial_dims} (one per spatial axis)"
        )
    return size[-spatial_dims:]


#: Zooms closer to 1 than this are float noise of a pixel size, not a resampling.
_UNIT_ZOOM = 1e-6


def zoom_from_pixel_size(
    pixel_size: Sequence[float],
    model_pixel_size: Sequence[float],
    unit: str = "",
    model_unit: str = "",
) -> tuple[float, ...]:
    """Zoom per model axis that brings pixels of ``pixel_size`` to the model's ``model_pixel_size``.

    ``unit`` empty means the model's unit; otherwise sizes are converted first. A zoom
    within float noise of 1 (a NIfTI affine is stored in float32: 3 mm reads 3.00000011)
    is 1, so the image is not interpolated for nothing.
    """
    dims = len(model_pixel_size)
    size = model_axes_pixel_size(pixel_size, dims)
    if unit and model_unit and unit != model_unit:
        size = convert_pixel_size(size, unit, model_unit)
    zoom = (float(s) / float(m) for s, m in zip(size, model_pixel_size, strict=True))
    return tuple(1.0 if abs(z - 1.0) < _UNIT_ZOOM else z for z in zoom)


def mean_zoom(zoom: Sequence[float]) -> float:
    """One factor for a zoom per axis (their geometric mean): how much a length (an object's
    diameter) grows from the input's grid to the model's."""
    return float(math.prod(float(z) for z in zoom) ** (1.0 / len(zoom)))


def check_zoom(zoom: Sequence[float], what: str = "zoom") -> tuple[float, ...]:
    """``zoom`` if every factor is finite and within ``MIN_ZOOM..MAX_ZOOM``, else a ValueError."""
    zoom = tuple(float(z) for z in zoom)
    for z in zoom:
        if not (math.isfinite(z) and MIN_ZOOM <= z <= MAX_ZOOM):
            raise ValueError(
                f"{what} ({', '.join(f'{v:.3g}' for v in zoom)}) resamples the image by more than "
                f"{MAX_ZOOM:g}x (allowed {MIN_ZOOM:g}..{MAX_ZOOM:g} per axis); check the pixel "
                "size and its unit (the model's unit is in its card), or the rescale factor"
            )
    return zoom


def spatial_axes(ndim: int, spatial_dims: int, channel_axis: int | None) -> tuple[int, ...]:
    """Axes of an ``ndim`` array that a ``spatial_dims`` model resamples (never the channels)."""
    if channel_axis is not None:
        channel_axis %= ndim
    others = [a for a in range(ndim) if a != channel_axis]
    if len(others) < spatial_dims:
        raise ValueError(
            f"a {spatial_dims}D model needs {spatial_dims} spatial axes, the array has "
            f"{len(others)} besides channels"
        )
    return tuple(others[-spatial_dims:])


def scaled_shape(shape: Sequence[int], zoom: Sequence[float]) -> tuple[int, ...]:
    """``size * zoom`` rounded half up per axis, at least 1."""
    pairs = zip(shape, zoom, strict=True)
    return tuple(max(1, math.floor(int(s) * float(z) + 0.5)) for s, z in pairs)


def resample(
    image: Any,
    zoom: Sequence[float],
    axes: Sequence[int],
    order: int = 1,
    anti_aliasing: bool = False,
    sigma: Sequence[float] | None = None,
) -> np.ndarray:
    """``image`` with ``axes`` zoomed by ``zoom`` (one factor per axis), float32 for order > 0.

    ``sigma``: a Gaussian (input px, one per axis of ``axes``) applied before shrinking,
    instead of ``anti_aliasing``'s default one (see :func:`resample_to`)."""
    shape = list(int(s) for s in image.shape)
    for axis, size in zip(axes, scaled_shape([shape[a] for a in axes], zoom), strict=True):
        shape[axis] = size
    return resample_to(image, tuple(shape), axes, order, anti_aliasing=anti_aliasing, sigma=sigma)


#: Only a shrink by more than this (per axis) is smoothed (:func:`shrink_sigma`): a small one
#: averages little noise and blurs what the model sees all the same.
SMOOTH_BEYOND = 1.5


def shrink_sigma(zoom: Sequence[float], k: float) -> tuple[float, ...]:
    """Per axis, a Gaussian sigma (input px) to smooth with before resampling by ``zoom``:
    ``k`` times skimage's anti-aliasing sigma ``(shrink - 1) / 2`` where the shrink
    ``1 / zoom`` exceeds :data:`SMOOTH_BEYOND`, else 0.

    Why a fraction: skimage's full sigma (``k = 1``) blurs organ edges that the CT model
    needs (mean organ Dice 0.683 -> 0.527 on a clean 1 mm copy of its held-back slices),
    and none passes a fine scan's per-pixel noise on undiminished (see
    :func:`rescaled.model_grid`, which decides when to smooth).
    """
    return tuple(
        k * (1.0 / float(z) - 1.0) / 2.0 if k > 0 and 1.0 / float(z) > SMOOTH_BEYOND else 0.0
        for z in zoom
    )


def resample_to(
    image: Any,
    shape: Sequence[int],
    axes: Sequence[int],
    order: int = 1,
    out: Any = None,
    anti_aliasing: bool = False,
    sigma: Sequence[float] | None = None,
) -> Any:
    """``image`` resampled on ``axes`` to exactly ``shape`` (other axes must already match).

    Works block by block over the other axes (one plane of a stack, one channel),
    so a dask or zarr input is read one block at a time and ``out`` (any array of
    ``shape``, e.g. a zarr array) is written one block at a time. Linear
    (``order=1``) suits images and probabilities; ``order=0`` keeps label ids.

    No anti-aliasing by default, as nnU-Net and cellpose resample: the shipped
    CT model lost 0.08 liver Dice on a 3x-shrunk image smoothed first (skimage's
    Gaussian, sigma 1 px) and nothing without it. ``anti_aliasing=True`` simulates
    a coarser detector (the shift benchmark's shrunk copies). ``sigma`` (input px, one
    per axis of ``axes``) smooths with that Gaussian before a shrink instead
    (:func:`shrink_sigma`).
    """
    from skimage.transform import resize

    axes = tuple(int(a) % len(image.shape) for a in axes)
    src = tuple(int(s) for s in image.shape)
    shape = tuple(int(s) for s in shape)
    others = [a for a in range(len(src)) if a not in axes]
    if len(shape) != len(src) or any(src[a] != shape[a] for a in others):
        raise ValueError(
            f"resample_to: target shape {shape} must equal the image's {src} except on axes {axes}"
        )
    dtype = image.dtype if order == 0 else np.float32
    if out is None:
        out = np.empty(shape, dtype=dtype)
    block_shape = tuple(shape[a] for a in axes)
    shrinks = order > 0 and any(shape[a] < src[a] for a in axes)
    smooth = bool((anti_aliasing or sigma is not None) and shrinks)
    block_sigma = None if sigma is None else tuple(float(v) for v in sigma)
    for lead in np.ndindex(*[src[a] for a in others]):
        index: list[Any] = [slice(None)] * len(src)
        for axis, i in zip(others, lead, strict=True):
            index[axis] = i
        block = np.asarray(image[tuple(index)])
        if block.shape == block_shape:
            out[tuple(index)] = block.astype(dtype, copy=False)
            continue
        values = block if order == 0 else block.astype(np.float32, copy=False)
        out[tuple(index)] = resize(
            values,
            block_shape,
            order=order,
            mode="edge",
            preserve_range=True,
            anti_aliasing=smooth,
            anti_aliasing_sigma=block_sigma if smooth else None,
        ).astype(dtype, copy=False)
    return out


def object_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameter (px) of each instance of an integer label image (0 = background).

    The diameter of the circle (2D) or sphere (3D) of the same area / volume:
    what cellpose calls the object diameter, robust to odd shapes.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape}")
    flat = labels.ravel()
    if flat.size == 0 or not flat.any():
        return np.zeros(0, dtype=np.float64)
    if flat.min() < 0:
        raise ValueError("labels must be non-negative integer ids (0 = background)")
    sizes = np.bincount(flat.astype(np.int64))[1:]
    sizes = sizes[sizes > 0].astype(np.float64)
    if labels.ndim == 2:
        return np.sqrt(4.0 * sizes / np.pi)
    return np.cbrt(6.0 * sizes / np.pi)


def median_object_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter (px) of the instances in ``labels``; NaN when there are none."""
    diameters = object_diameters(labels)
    return float(np.median(diameters)) if diameters.size else float("nan")


def foreground_diameter(mask: np.ndarray) -> float:
    """:func:`median_object_diameter` of the connected components of a binary foreground."""
    from scipy import ndimage

    components, _ = ndimage.label(np.asarray(mask) > 0)
    return median_object_diameter(components)


def rescale_from_diameter(model_diameter: float | None, diameter: float) -> float:
    """``PredictConfig.rescale`` for objects of ``diameter`` px: the model's diameter over it.

    The one conversion behind the CLI's ``--diameter`` and the widget's "object
    diameter (px)" field; the result is checked against ``MIN_ZOOM..MAX_ZOOM``.
    """
    if model_diameter is None:
        raise ValueError(
            "this model records no training object diameter (ModelConfig.object_diameter), so "
            "a diameter cannot be turned into a rescale factor; give rescale instead "
            "(e.g. 0.5 for objects twice the training size)"
        )
    if not (math.isfinite(diameter) and diameter > 0):
        raise ValueError(f"the object diameter must be a positive number of pixels, got {diameter}")
    return check_zoom((model_diameter / diameter,), "rescale (model diameter / diameter)")[0]


#: ``auto_rescale`` defaults: fewer objects than this say nothing reliable about size;
#: objects larger than the training median by more than ``AUTO_TOLERANCE`` are
#: shrunk to it, smaller ones are enlarged only below ``1 / AUTO_GROW_BELOW`` of it
#: (measured on DSB held-back images, benchmarks/bench_shift.py: enlarging nuclei
#: that were 10-15 % small lost ~0.015 IoU, and enlarging 0.5x-shrunk ones gained
#: nothing, while shrinking 2x-enlarged ones recovered the native score); the factor
#: is clamped so one bad first pass cannot blow the image up or away.
AUTO_MIN_OBJECTS = 5
AUTO_TOLERANCE = 0.12
AUTO_GROW_BELOW = 2.5
AUTO_CLAMP = (0.25, 4.0)
#: Objects under this fraction of the model's diameter are specks, not objects to measure
#: (see :func:`drop_specks`). A quarter (what the largest enlargement brings to the model's
#: size) also dropped real nuclei of images shrunk to half size: on the shift benchmark's
#: 0.5x crops auto then scored 0.797 instead of 0.817 (benchmarks/bench_shift.py).
SPECK_FRACTION = 1 / 6


def drop_specks(diameters: np.ndarray, model_diameter: float | None) -> np.ndarray:
    """``diameters`` (model-grid px) without the specks: objects under
    ``SPECK_FRACTION`` of the model's diameter (3 px for the 18 px nuclei model).

    Why: on a dim, noisy image a first pass can find hundreds of specks of 1-3 px
    beside a few real objects (890 pieces of median 3 px for 25 nuclei of 75 px, a
    held-back DSB image at 2x). Their median asked for the largest enlargement, which
    shattered the nuclei further (foreground IoU 0.04 instead of 0.78). A half-size
    probe's objects are judged at full size too: small real objects must not vanish
    from it as "specks".
    """
    diameters = np.asarray(diameters, dtype=np.float64)
    if not model_diameter:
        return diameters
    return diameters[diameters >= model_diameter * SPECK_FRACTION]


def auto_rescale(
    model_diameter: float,
    diameters: np.ndarray,
    *,
    min_objects: int = AUTO_MIN_OBJECTS,
    tolerance: float = AUTO_TOLERANCE,
    grow_below: float = AUTO_GROW_BELOW,
    clamp: tuple[float, float] = AUTO_CLAMP,
) -> tuple[float, str]:
    """Rescale factor (model median diameter / measured median) and why, from a first pass.

    Returns ``(1.0, reason)`` when there are too few objects or the sizes already
    agree (objects at most ``tolerance`` larger than the model's, or less than
    ``grow_below`` times smaller); else the clamped ratio and a sentence for the user.
    """
    diameters = np.asarray(diameters, dtype=np.float64)
    if diameters.size < min_objects:
        return 1.0, (
            f"auto rescale skipped: {diameters.size} object(s) found, "
            f"{min_objects} needed to measure their size"
        )
    measured = float(np.median(diameters))
    ratio = float(model_diameter) / measured
    if 1.0 / (1.0 + tolerance) <= ratio <= grow_below:
        return 1.0, (
            f"auto rescale not needed: median object diameter {measured:.1f} px, "
            f"the model's {model_diameter:.1f} px"
        )
    clamped = float(np.clip(ratio, *clamp))
    note = "" if clamped == ratio else f" (clamped from {ratio:.3f})"
    return clamped, (
        f"auto rescale {clamped:.3f}{note}: median object diameter {measured:.1f} px "
        f"({diameters.size} objects), the model's {model_diameter:.1f} px"
    )


def training_pixel_size(
    pixel_sizes: Sequence[tuple[Sequence[float], str] | None],
    model_pixel_size: Sequence[float],
    model_unit: str,
    spatial_dims: int,
) -> tuple[tuple[float, ...], str]:
    """The pixel size a training run works at (see :func:`training_scale`): the model's,
    else the first known one of the pairs (per model axis), else ``((), "")``."""
    if model_pixel_size:
        return tuple(float(v) for v in model_pixel_size), model_unit
    first = next((ps for ps in pixel_sizes if ps is not None and ps[1]), None)
    if first is None:
        return (), ""
    return model_axes_pixel_size(first[0], spatial_dims), first[1]


def training_scale(
    images: list[Any],
    labels: list[Any],
    pixel_sizes: Sequence[tuple[Sequence[float], str] | None],
    model_pixel_size: Sequence[float],
    model_unit: str,
    spatial_dims: int,
    channel_axis: int | None = None,
    shrink: Callable[[Any, tuple[float, ...], tuple[int, ...]], tuple[Any, Any]] | None = None,
) -> tuple[list[Any], list[Any], tuple[float, ...], str, list[str]]:
    """Training pairs resampled to one pixel size, and that pixel size (for the new model).

    ``shrink(image, zoom, axes) -> (image, sigma)``: how an image is resampled (default
    linear, sigma 0); :func:`rescaled.training_shrink` resamples as prediction does, a fine
    noisy scan smoothed before it is shrunk, so a fine-tune learns the image it will see.

    Why: a model learns features at its training scale, and prediction resamples every
    input to the pixel size the model records. Fine-tuning a 4 nm EM model on 2 nm images
    as they are would teach it at 2 nm while it still says 4 nm, so its predictions would
    be made at half the scale it was tuned at. Here, with the model's pixel size known,
    each pair whose pixel size is known (``(size, unit)``, one value or one per spatial
    axis) is resampled to it (images linearly, labels by nearest neighbour, which keeps
    ids and the unlabelled 0); a new model without one takes the first known pixel size.
    Returns the pairs, the pixel size and unit the model should record (empty when none
    is known) and one note per resampled pair.
    """
    target, unit = training_pixel_size(pixel_sizes, model_pixel_size, model_unit, spatial_dims)
    if not target:
        return list(images), list(labels), (), "", []
    out_images, out_labels, notes = [], [], []
    for k, (image, label, known) in enumerate(zip(images, labels, pixel_sizes, strict=True)):
        if known is None or not known[1]:
            out_images.append(image)
            out_labels.append(label)
            continue
        size = model_axes_pixel_size(known[0], spatial_dims)
        zoom = check_zoom(zoom_from_pixel_size(size, target, known[1], unit or known[1]))
        if all(abs(z - 1.0) < 0.02 for z in zoom):
            out_images.append(image)
            out_labels.append(label)
            continue
        image_axes = spatial_axes(np.ndim(image), spatial_dims, channel_axis)
        if shrink is None:
            out_images.append(resample(image, zoom, image_axes, order=1))
            smoothed = ""
        else:
            small, sigma = shrink(image, zoom, image_axes)
            out_images.append(small)
            smoothed = (
                f", smoothed first (sigma {' x '.join(f'{v:.2g}' for v in sigma)} px)"
                if any(sigma)
                else ""
            )
        out_labels.append(
            resample(label, zoom, spatial_axes(np.ndim(label), spatial_dims, None), order=0)
        )
        shown = " x ".join(f"{v:g}" for v in size)
        notes.append(
            f"pair {k + 1}: pixel size {shown} {known[1]} resampled to the model's "
            f"{' x '.join(f'{v:g}' for v in target)} {unit} (zoom "
            f"{' x '.join(f'{z:.3g}' for z in zoom)}){smoothed}"
        )
    return out_images, out_labels, target, unit, notes
