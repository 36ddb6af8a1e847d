"""Arrays to network inputs and targets: normalisation, label modes, patches, augmentation.

Why one module: inference must normalise exactly as training did, and the widget,
the CLI and the trainer must agree on what a label value means. Everything here is
plain numpy/scipy (no torch), so it is cheap to import and easy to test.

Label conventions (DESIGN.md)
-----------------------------
- ``dense``: 0 = background, other values = classes (``class_values`` says which
  value is which class; unlisted values are background), or instance ids when
  ``DataConfig.target == "instance"`` (turned into background / interior /
  boundary so that touching objects can be separated).
- ``sparse`` (scribbles): 0 = unlabelled (ignored by the loss), 1 = background,
  2..K+1 = classes 1..K.

Training data is held as :class:`Volume` objects, ``image (C, Z, Y, X)`` and
``target (Z, Y, X)``: a 2D image is a volume with one slice, a stack trained by a
2D model is sampled slice by slice, and a 3D model samples 3D patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .augmentation import AugmentOptions, augment, draw_scale, elastic_deform, zoom_patch
from .config import IGNORE_INDEX, DataConfig, LabelMode, NormalizationConfig
from .nonfinite import fill_image

__all__ = [
    "AugmentOptions",
    "DegenerateLabelsWarning",
    "Volume",
    "PatchSampler",
    "augment",
    "degenerate_labels",
    "elastic_deform",
    "guess_label_mode",
    "intensity_range",
    "labels_to_targets",
    "looks_rgb",
    "normalize",
    "num_output_channels",
    "rgb_to_grey",
    "prepare_volumes",
    "resolve_class_values",
    "split_validation",
    "to_channels_first",
    "validation_tiles",
]

#: Percentiles of images larger than this are computed on a strided subsample.
PERCENTILE_SAMPLE_SIZE = 1_000_000
#: Dense labels with more distinct values than this are almost surely instance ids.
MAX_SEMANTIC_CLASSES = 64
#: At most this many labelled positions are kept per volume to draw patch centres from.
MAX_CENTRE_CANDIDATES = 2_000_000

ArrayLike = Any  # numpy, dask or zarr arrays: anything np.asarray accepts


# --------------------------------------------------------------------------- input checks


def _check_numeric(array: ArrayLike, what: str) -> None:
    # never np.asarray a dask/zarr array just to read its dtype (it would load it whole)
    dtype = getattr(array, "dtype", None)
    dtype = np.dtype(dtype) if dtype is not None else np.asarray(array).dtype
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{what} has unsupported dtype {dtype}; convert it to an integer or float "
            "array (e.g. image.astype('float32'))"
        )


def _check_labels_dtype(labels: np.ndarray) -> None:
    if labels.dtype.kind == "f":
        if not np.all(np.mod(labels, 1) == 0):
            raise ValueError(
                f"labels have non-integer values (dtype {labels.dtype}); labels must be "
                "integer ids: round them or use a Labels layer"
            )
    elif labels.dtype.kind not in "biu":
        raise ValueError(
            f"labels have unsupported dtype {labels.dtype}; use an integer array "
            "(e.g. labels.astype('uint16'))"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"labels contain negative values ({labels.min()}); use 0 for background or "
            "unlabelled and positive ids for classes"
        )


# --------------------------------------------------------------------------- normalisation


def _subsample(image: ArrayLike, limit: int = PERCENTILE_SAMPLE_SIZE) -> np.ndarray:
    """A strided subsample of at most ~``limit`` values, read one plane at a time.

    Axes of at most 4 elements (colour channels) are kept whole, so an RGB image
    keeps every colour; a dask or zarr stack is read plane by plane (a strided
    view of a whole dask stack at once held about twice the stack in memory).
    Training and tiled inference both call this, so they see the same percentiles.
    """
    shape = tuple(int(n) for n in image.shape)
    size = int(np.prod(shape))
    big = [axis for axis, n in enumerate(shape) if n > 4]
    if size <= limit or not big:
        return np.asarray(image).ravel()
    step = int(np.ceil((size / limit) ** (1.0 / len(big))))
    index = [slice(None, None, step) if axis in big else slice(None) for axis in range(len(shape))]
    first = big[0]
    planes = [
        np.asarray(image[(*index[:first], i, *index[first + 1 :])]).ravel()
        for i in range(0, shape[first], step)
    ]
    return np.concatenate(planes)


def intensity_range(image: ArrayLike, config: NormalizationConfig) -> tuple[float, float]:
    """The ``(low, high)`` intensities that map to 0 and 1.

    Exposed separately so that tiled inference can compute it once on the whole
    image (or a subsample of it) and apply it to every tile.
    """
    _check_numeric(image, "image")
    if config.mode == "window":
        return float(config.low), float(config.high)
    if config.mode == "none":
        return 0.0, 1.0
    sample = _subsample(image).astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise ValueError("image has no finite values to normalise; check the input data")
    low, high = np.percentile(sample, [config.low, config.high])
    thinned = _with_min_foreground(sample, config.min_foreground, (low, high))
    if thinned is not None:
        low, high = np.percentile(thinned, [config.low, config.high])
    return float(low), float(high)


#: A pixel stands out from the background when it is this many robust standard deviations
#: (1.4826 x the median absolute deviation) away from the median.
OBJECT_SIGMAS = 5.0


def _with_min_foreground(
    sample: np.ndarray, fraction: float, plain: tuple[float, float]
) -> np.ndarray | None:
    """``sample`` with background values thinned until the objects are ``fraction`` of it,
    or None when the ``plain`` percentiles already reach the objects.

    Why: in a mostly empty field (a few nuclei in a big frame, or a dim image
    padded with zeros) the 99.8th percentile is background, so the scale blows up
    (a constant field: x 1e8) or dim objects end up far from the 0..1 the model
    was trained on. Objects are the pixels more than :data:`OBJECT_SIGMAS` robust
    standard deviations (and, for integer data, more than one grey level) from
    the median, bright or dark. Only when they are rarer than ``fraction`` *and*
    the percentile on their side (high for bright objects, low for dark ones)
    stays inside the background band is anything changed: typical images, and
    noise with a long tail, keep plain percentiles.
    """
    if fraction <= 0 or sample.size < 64:
        return None
    centre = float(np.median(sample))
    distance = sample - centre
    spread = 1.4826 * float(np.median(np.abs(distance)))
    integral = bool(np.all(sample == np.round(sample)))
    margin = max(OBJECT_SIGMAS * spread, 1.0 if integral else 0.0)
    bright, dark = distance > margin, distance < -margin
    misses = (bright.any() and plain[1] <= centre + margin) or (
        dark.any() and plain[0] >= centre - margin
    )
    objects = bright | dark
    count = int(objects.sum())
    if not misses or count >= fraction * sample.size:
        return None
    background = sample[~objects]
    keep = max(int(count * (1 - fraction) / fraction), 1)
    chosen = background[np.linspace(0, background.size - 1, keep).astype(np.int64)]
    return np.concatenate([sample[objects], chosen])


def normalize(
    image: ArrayLike,
    config: NormalizationConfig,
    *,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Raw intensities -> float32 network input.

    ``percentile``: per image, the ``low``/``high`` percentiles (computed on a
    subsample for big inputs) map to 0/1, robust to hot pixels. ``window``:
    ``(x - low) / (high - low)`` with the fixed window (CT Hounsfield units).
    ``none``: cast only. ``clip`` clips to 0..1 afterwards. ``value_range``
    overrides the computed range (tiles of one image must share it).
    """
    _check_numeric(image, "image")
    data = np.asarray(image, dtype=np.float32)
    if config.mode == "none":
        return np.clip(data, 0, 1) if config.clip else data
    low, high = value_range if value_range is not None else intensity_range(data, config)
    scale = 1.0 / max(high - low, 1e-8)  # constant images become 0, not NaN
    out = (data - np.float32(low)) * np.float32(scale)
    if config.clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def to_channels_first(image: ArrayLike, channel_axis: int | None) -> np.ndarray:
    """Move the channel axis first, or add a length-1 one when there is none.

    Why: the network wants ``(C, *spatial)``; users hand over YXC (RGB), CYX,
    ZCYX... and say where the channels are with ``DataConfig.channel_axis``.
    """
    array = np.asarray(image)
    if channel_axis is None:
        return array[np.newaxis]
    if not -array.ndim <= channel_axis < array.ndim:
        raise ValueError(
            f"channel_axis {channel_axis} is out of range for an image of shape "
            f"{array.shape}; set DataConfig.channel_axis to None or to one of its axes"
        )
    return np.moveaxis(array, channel_axis, 0)


#: ITU-R BT.709 luminance weights, as ``skimage.color.rgb2gray``: the grey the shipped
#: one-channel nuclei model was trained on.
LUMINANCE_WEIGHTS = (0.2125, 0.7154, 0.0721)


def looks_rgb(shape: Sequence[int]) -> bool:
    """A colour image or stack, channels last: ``(..., Y, X, 3 or 4)`` with a real X axis.

    Why: PNG/JPEG readers return RGB(A) as a last axis of 3 or 4, which a one-channel
    model would otherwise take for a spatial axis.
    """
    return len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4


def rgb_to_grey(image: ArrayLike) -> ArrayLike:
    """Luminance of an RGB(A) image, channels last (alpha ignored), as float32.

    Why: one-channel models (the shipped nuclei model) were trained on luminance, so the
    widget, the CLI and the training script must hand them the same grey. Dask arrays
    stay lazy; uint8 input gives 0..255 (intensity normalisation follows anyway).
    """
    red, green, blue = (image[..., k].astype(np.float32) for k in range(3))
    w_red, w_green, w_blue = LUMINANCE_WEIGHTS
    return red * np.float32(w_red) + green * np.float32(w_green) + blue * np.float32(w_blue)


def spatial_shape(image_shape: Sequence[int], channel_axis: int | None) -> tuple[int, ...]:
    """The image shape without its channel axis (what labels must match)."""
    shape = list(image_shape)
    if channel_axis is not None:
        del shape[channel_axis]
    return tuple(shape)


def check_pair(image: ArrayLike, labels: ArrayLike, channel_axis: int | None) -> None:
    """Raise a ``ValueError`` naming both shapes when labels do not cover the image."""
    expected = spatial_shape(image.shape, channel_axis)
    if tuple(labels.shape) != expected:
        hint = (
            " (is the image RGB? set DataConfig.channel_axis=-1)"
            if channel_axis is None and len(image.shape) == len(labels.shape) + 1
            else ""
        )
        raise ValueError(
            f"image shape {tuple(image.shape)} and labels shape {tuple(labels.shape)} do not "
            f"match: labels must have the image's shape without its channel axis "
            f"({expected}){hint}"
        )


# --------------------------------------------------------------------------- label modes


def _interior_fraction(labels: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of labelled pixels whose in-plane 3x3 neighbourhood has the same value."""
    size = (1,) * (labels.ndim - 2) + (3, 3) if labels.ndim >= 2 else 3
    same = (ndi.minimum_filter(labels, size=size) == labels) & (
        ndi.maximum_filter(labels, size=size) == labels
    )
    return float(same[mask].mean())


def _has_repeated_regions(labels: np.ndarray, values: np.ndarray) -> bool:
    """True when some value forms several separate regions (strokes, not one object each)."""
    return any(ndi.label(labels == v)[1] > 1 for v in values)


def guess_label_mode(labels: ArrayLike) -> tuple[LabelMode, str]:
    """Guess ``dense`` or ``sparse`` from what the labels look like, and say why.

    Scribbles cover few pixels (< 30 %), use value 1 for background and a few
    more values for classes, and are drawn as thin or repeated strokes. Dense
    labels (masks, instance ids, painted objects) are compact regions. The
    sentence returned is shown to the user, who can overrule the guess.
    """
    array = np.asarray(labels)
    _check_labels_dtype(array)
    mask = array > 0
    coverage = float(mask.mean()) if array.size else 0.0
    if coverage == 0:
        raise ValueError(
            "labels are empty (all 0): paint some labels first (sparse scribbles: "
            "1 = background, 2.. = classes; dense: 0 = background, 1.. = classes)"
        )
    values = np.unique(array[mask])
    percent = f"{100 * coverage:.1f}%"
    if coverage >= 0.3:
        return "dense", f"{percent} of pixels are labelled, so these look like dense labels"
    if values[0] != 1 or not 2 <= len(values) <= 16:
        why = (
            "the smallest label is not 1 (scribbles use 1 for background)"
            if values[0] != 1
            else f"there are {len(values)} label value(s), not 2..16 as for scribbles "
            "(1 = background plus classes)"
        )
        return "dense", f"only {percent} of pixels are labelled, but {why}: dense labels"
    array = array.astype(np.int64, copy=False)
    thin = _interior_fraction(array, mask) < 0.5
    if thin or _has_repeated_regions(array, values):
        shape = "thin strokes" if thin else "repeated strokes"
        return "sparse", (
            f"only {percent} of pixels are labelled, values start at 1 and are drawn as "
            f"{shape}, so these look like sparse scribbles (0 = unlabelled, 1 = background)"
        )
    return "dense", (
        f"only {percent} of pixels are labelled, but each value is one compact region "
        "(like objects or instances), so these look like dense labels (0 = background)"
    )


# --------------------------------------------------------------------------- targets


def _label_values(labels: ArrayLike | Sequence[ArrayLike]) -> np.ndarray:
    arrays = [labels] if hasattr(labels, "shape") else list(labels)
    if not arrays:
        raise ValueError("no labels given; pass at least one labels array")
    values = [np.unique(np.asarray(a)) for a in arrays]
    return np.unique(np.concatenate(values))


def resolve_class_values(
    data_config: DataConfig, labels: ArrayLike | Sequence[ArrayLike]
) -> tuple[int, ...]:
    """Label values of classes 1..K, decided once for all images so they agree.

    Given ``class_values`` win. Otherwise dense labels use their non-zero values
    (sorted), sparse ones the values >= 2. A single class means a binary target.
    """
    if data_config.class_values:
        return tuple(data_config.class_values)
    if data_config.target == "instance":
        return ()
    values = _label_values(labels)
    first = 2 if data_config.label_mode == "sparse" else 1
    classes = tuple(int(v) for v in values if v >= first)
    if not classes:
        raise ValueError(
            "labels contain no class pixels"
            + (
                " (sparse scribbles need values >= 2 for classes, 1 is background)"
                if data_config.label_mode == "sparse"
                else " (all 0 = background)"
            )
            + "; paint at least one class"
        )
    if len(classes) > MAX_SEMANTIC_CLASSES:
        raise ValueError(
            f"labels have {len(classes)} distinct values: these look like instance ids; "
            "use DataConfig(target='instance') or list the classes in class_values"
        )
    return classes


def num_output_channels(data_config: DataConfig, labels: ArrayLike | Sequence[ArrayLike]) -> int:
    """Output channels of a model for these labels: 1 (binary), K + 1 classes, or 3 (instance)."""
    if data_config.target == "instance":
        return 3
    classes = resolve_class_values(data_config, labels)
    return 1 if len(classes) == 1 else len(classes) + 1


def labels_to_targets(
    labels: ArrayLike, data_config: DataConfig, *, spatial_dims: int = 2
) -> np.ndarray:
    """Label values -> int64 class ids for the loss, ``IGNORE_INDEX`` where unknown.

    dense: 0 (and values not in ``class_values``) -> 0, ``class_values[k]`` -> k + 1.
    sparse: 0 -> ignore, 1 -> 0, class values -> 1..K. instance: ids -> 0 background,
    1 interior, 2 boundary (``boundary_width`` pixels, in-plane for ``spatial_dims``
    2, so touching objects get a boundary between them). For training several
    images, resolve ``class_values`` first (:func:`resolve_class_values`).
    """
    array = np.asarray(labels)
    _check_labels_dtype(array)
    array = array.astype(np.int64, copy=False)
    if data_config.target == "instance":
        if data_config.label_mode == "sparse":
            raise ValueError(
                "instance targets need dense instance labels; use label_mode='dense' "
                "or target='semantic' for scribbles"
            )
        return instance_targets(array, data_config.boundary_width, spatial_dims)
    classes = resolve_class_values(data_config, array)
    sparse = data_config.label_mode == "sparse"
    values, ids = list(classes), list(range(1, len(classes) + 1))
    if sparse and 1 not in values:
        values, ids = [1, *values], [0, *ids]
    return remap_values(array, values, ids, IGNORE_INDEX if sparse else 0)


def remap_values(
    array: np.ndarray, values: Sequence[int], ids: Sequence[int], default: int
) -> np.ndarray:
    """``values[k] -> ids[k]``, anything else -> ``default``, as int64.

    Why not a lookup table indexed by value: label ids near 2**31 would allocate
    a 16 GiB table; sorting the few values and searching each pixel's value in
    them costs memory in proportion to the image only.
    """
    order = np.argsort(np.asarray(values, dtype=np.int64), kind="stable")
    keys = np.asarray(values, dtype=np.int64)[order]
    mapped = np.asarray(ids, dtype=np.int64)[order]
    if keys.size == 0:
        return np.full(array.shape, default, dtype=np.int64)
    position = np.searchsorted(keys, array).clip(max=keys.size - 1)
    return np.where(keys[position] == array, mapped[position], np.int64(default))


def instance_targets(labels: np.ndarray, boundary_width: int, spatial_dims: int = 2) -> np.ndarray:
    """Instance ids -> 0 background, 1 interior, 2 boundary.

    A pixel is boundary when another id (or background) lies within
    ``boundary_width`` pixels, so two touching objects both get a boundary
    band and the interior classes of neighbours never touch.
    """
    window = 2 * int(boundary_width) + 1
    axes = min(spatial_dims, labels.ndim)
    size = (1,) * (labels.ndim - axes) + (window,) * axes
    other = (ndi.maximum_filter(labels, size=size) != labels) | (
        ndi.minimum_filter(labels, size=size) != labels
    )
    target = (labels > 0).astype(np.int64)
    target[(labels > 0) & other] = 2
    return target


# --------------------------------------------------------------------------- volumes


@dataclass
class Volume:
    """One training or validation item: ``image (C, Z, Y, X)`` float32, ``target (Z, Y, X)``.

    A 2D image has ``Z == 1``; a 2D model samples single slices of it.
    """

    image: np.ndarray
    target: np.ndarray
    name: str = ""
    foreground: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    labelled: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    @property
    def spatial(self) -> tuple[int, int, int]:
        return tuple(self.target.shape)  # type: ignore[return-value]

    def index(self, rng: np.random.Generator) -> None:
        """Cache flat positions of foreground and labelled voxels (patch centres)."""
        flat = self.target.ravel()
        self.foreground = _cap(np.flatnonzero(flat > 0), rng)
        self.labelled = _cap(np.flatnonzero(flat != IGNORE_INDEX), rng)


def _cap(index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if index.size > MAX_CENTRE_CANDIDATES:
        index = np.sort(rng.choice(index, MAX_CENTRE_CANDIDATES, replace=False))
    return index


def _as_list(arrays: ArrayLike | Sequence[ArrayLike]) -> list[ArrayLike]:
    if hasattr(arrays, "shape"):
        return [arrays]
    return list(arrays)


def _to_zyx(array: np.ndarray, spatial_dims: int) -> list[np.ndarray]:
    """``(C, *rest)`` -> list of ``(C, Z, Y, X)``: leading axes become slices (2D) or items (3D)."""
    rest = array.shape[1:]
    if len(rest) < spatial_dims:
        raise ValueError(
            f"an array with spatial shape {rest} cannot feed a {spatial_dims}D model; "
            f"give {spatial_dims} spatial axes (or set the channel axis correctly)"
        )
    if spatial_dims == 2:
        return [array.reshape(array.shape[0], -1, *rest[-2:])]
    items = array.reshape(array.shape[0], -1, *rest[-3:])
    return [items[:, t] for t in range(items.shape[1])]


def prepare_volumes(
    images: ArrayLike | Sequence[ArrayLike],
    labels: ArrayLike | Sequence[ArrayLike],
    data_config: DataConfig,
    spatial_dims: int = 2,
) -> list[Volume]:
    """Normalise images, map labels to targets, and reshape both to volumes.

    ``data_config.class_values`` must already be resolved for all images
    (:func:`resolve_class_values`), so that every image uses the same classes.
    """
    images, labels = _as_list(images), _as_list(labels)
    if len(images) != len(labels):
        raise ValueError(
            f"got {len(images)} image(s) but {len(labels)} labels array(s); give one "
            "labels array per image"
        )
    volumes: list[Volume] = []
    for n, (image, label) in enumerate(zip(images, labels, strict=False)):
        check_pair(image, label, data_config.channel_axis)
        _check_numeric(image, f"image {n}")
        channels = fill_image(to_channels_first(image, data_config.channel_axis), f"image {n}")
        normed = normalize(channels, data_config.normalization)
        target = labels_to_targets(label, data_config, spatial_dims=spatial_dims)
        pieces = _to_zyx(normed, spatial_dims)
        targets = [t[0] for t in _to_zyx(target[np.newaxis], spatial_dims)]
        for k, (img, tgt) in enumerate(zip(pieces, targets, strict=False)):
            suffix = f"/{k}" if len(pieces) > 1 else ""
            volumes.append(
                Volume(np.ascontiguousarray(img), np.ascontiguousarray(tgt), f"image {n}{suffix}")
            )
    if not any((v.target != IGNORE_INDEX).any() for v in volumes):
        raise ValueError("labels are empty (nothing labelled); paint some labels first")
    return volumes


class DegenerateLabelsWarning(UserWarning):
    """The labels hold a single class: a model can only learn to predict it everywhere."""


def degenerate_labels(volumes: Sequence[Volume]) -> str | None:
    """Why these training targets cannot teach anything (one class only), or None.

    Why: all-one dense labels (every pixel foreground, no background) train a
    model that predicts foreground everywhere, and its validation IoU of 1.000
    looks perfect while it means nothing.
    """
    present: set[int] = set()
    for volume in volumes:
        labelled = volume.target[volume.target != IGNORE_INDEX]
        if labelled.size == 0:
            continue
        low, high = int(labelled.min()), int(labelled.max())
        if low != high:
            return None
        present.add(low)
        if len(present) > 1:
            return None
    if len(present) != 1:
        return None
    (only,) = present
    what = "background" if only == 0 else f"class {only} (no background)"
    return (
        f"every labelled pixel is {what}: the model can only learn to predict that "
        "everywhere, and its validation score is meaningless; label some pixels of "
        "another class (dense labels: 0 = background) or check class_values"
    )


def split_validation(
    volumes: list[Volume], fraction: float, rng: np.random.Generator
) -> tuple[list[Volume], list[Volume]]:
    """Train / validation volumes that never share a pixel.

    Several volumes: whole volumes go to validation (chosen with ``rng``).
    One volume: the last block of slices (Z), or for a single 2D image the last
    block of rows, because neighbouring slices/rows are correlated and a random
    pixel split would over-estimate the score.
    """
    if fraction <= 0:
        return volumes, []
    if len(volumes) >= 2:
        count = min(len(volumes) - 1, max(1, int(round(fraction * len(volumes)))))
        chosen = set(rng.choice(len(volumes), count, replace=False).tolist())
        train = [v for i, v in enumerate(volumes) if i not in chosen]
        return train, [v for i, v in enumerate(volumes) if i in chosen]
    (volume,) = volumes
    axis = 1 if volume.target.shape[0] >= 2 else 2  # Z, else Y (image axes: C, Z, Y, X)
    size = volume.image.shape[axis]
    count = min(size - 1, max(1, int(round(fraction * size))))
    if count < 1:
        return volumes, []
    cut = size - count
    head = [slice(None)] * 4
    tail = [slice(None)] * 4
    head[axis], tail[axis] = slice(0, cut), slice(cut, None)
    train = Volume(volume.image[tuple(head)], volume.target[tuple(head[1:])], volume.name)
    val = Volume(volume.image[tuple(tail)], volume.target[tuple(tail[1:])], volume.name + " (val)")
    return [train], [val]


# --------------------------------------------------------------------------- patches


def patch_shape_zyx(patch_size: Sequence[int], spatial_dims: int) -> tuple[int, int, int]:
    """``TrainConfig.patch_size`` as a (Z, Y, X) crop size (Z = 1 for a 2D model)."""
    if len(patch_size) != spatial_dims:
        raise ValueError(
            f"patch_size {tuple(patch_size)} has {len(patch_size)} values but the model is "
            f"{spatial_dims}D; give {spatial_dims} values, e.g. "
            f"{(128, 128) if spatial_dims == 2 else (32, 128, 128)}"
        )
    size = (1, *patch_size) if spatial_dims == 2 else tuple(patch_size)
    return size  # type: ignore[return-value]


def crop(
    volume: Volume, start: Sequence[int], size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``size`` at ``start`` (Z, Y, X); pad beyond edges (image mirrored, target ignored)."""
    index = tuple(slice(max(s, 0), s + n) for s, n in zip(start, size, strict=False))
    image = volume.image[(slice(None), *index)]
    target = volume.target[index]
    pad = [
        (max(-s, 0), n - got - max(-s, 0))
        for s, n, got in zip(start, size, target.shape, strict=False)
    ]
    if any(a or b for a, b in pad):
        image = np.pad(image, [(0, 0), *pad], mode="symmetric")
        target = np.pad(target, pad, mode="constant", constant_values=IGNORE_INDEX)
    return image, target


class PatchSampler:
    """Random training patches that favour labelled pixels.

    With probability ``foreground_fraction`` a patch is centred (with a random
    offset) on a foreground pixel (a class, not background); otherwise on any
    pixel (dense) or on any *labelled* pixel (sparse), so a patch from scribbles
    always contains something the loss can learn from.
    """

    def __init__(
        self,
        volumes: list[Volume],
        patch_size: Sequence[int],
        spatial_dims: int,
        foreground_fraction: float,
        rng: np.random.Generator,
        sparse: bool = False,
    ) -> None:
        if not volumes:
            raise ValueError(
                "no training data left after the validation split; add images "
                "or lower validation_fraction"
            )
        self.volumes = volumes
        self.size = patch_shape_zyx(patch_size, spatial_dims)
        self.spatial_dims = spatial_dims
        self.foreground_fraction = foreground_fraction
        self.rng = rng
        self.sparse = sparse
        for volume in volumes:
            volume.index(rng)
        counts = np.array(
            [v.labelled.size if sparse else v.target.size for v in volumes], dtype=np.float64
        )
        if counts.sum() == 0:
            raise ValueError("the training images have no labelled pixels; paint some labels")
        self.weights = counts / counts.sum()

    def centre(self, volume: Volume) -> tuple[int, int, int]:
        """A patch centre: foreground, labelled (sparse) or uniform."""
        use_fg = volume.foreground.size and self.rng.random() < self.foreground_fraction
        if use_fg:
            flat = volume.foreground[self.rng.integers(volume.foreground.size)]
        elif self.sparse:
            flat = volume.labelled[self.rng.integers(volume.labelled.size)]
        else:
            flat = self.rng.integers(volume.target.size)
        return tuple(int(c) for c in np.unravel_index(flat, volume.target.shape))  # type: ignore

    def sample_one(self, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """One ``(image (C, *patch), target (*patch))`` pair, before augmentation.

        ``scale`` > 1 zooms in: a region ``1 / scale`` the patch's height and width
        is cropped and resampled to the patch size (``scale`` < 1 zooms out, with
        more context), so objects appear ``scale`` times their size.
        """
        volume = self.volumes[self.rng.choice(len(self.volumes), p=self.weights)]
        centre = self.centre(volume)
        size = tuple(
            n if axis == 0 or scale == 1.0 else max(int(round(n / scale)), 1)
            for axis, n in enumerate(self.size)
        )
        start = []
        for c, n, full in zip(centre, size, volume.spatial, strict=True):
            if full >= n:  # the centre lands anywhere in the patch, the patch inside the image
                start.append(int(np.clip(c - int(self.rng.integers(n)), 0, full - n)))
            else:  # image smaller than the patch: pad, with the image at a random offset
                start.append(-int(self.rng.integers(n - full + 1)))
        image, target = crop(volume, start, size)
        if size != self.size:
            image, target = zoom_patch(image, target, self.size)
        if self.spatial_dims == 2:
            image, target = image[:, 0], target[0]
        return image, target

    def sample(
        self,
        batch_size: int,
        *,
        augment_patches: bool = True,
        elastic: bool = False,
        options: AugmentOptions | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A batch ``(N, C, *patch)`` float32 and ``(N, *patch)`` int64.

        ``options`` (``AugmentOptions.from_train_config``) adds random scale,
        gamma, blur and noise; without it, flips/rotations/contrast (and
        ``elastic``) as before.
        """
        options = options or AugmentOptions(elastic=elastic)
        images, targets = [], []
        for _ in range(batch_size):
            scale = draw_scale(options, self.rng) if augment_patches else 1.0
            image, target = self.sample_one(scale)
            if augment_patches:
                image, target = augment(
                    image, target, self.rng, options=options, keep_labelled=self.sparse
                )
            images.append(image)
            targets.append(target)
        return np.stack(images).astype(np.float32), np.stack(targets).astype(np.int64)


# --------------------------------------------------------------------------- validation


def validation_tiles(
    volumes: list[Volume], tile: Sequence[int], spatial_dims: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping tiles covering the validation volumes (edges padded, targets ignored).

    Tiles without a labelled pixel are dropped: they cannot score anything.
    """
    size = patch_shape_zyx(tile, spatial_dims)
    tiles = []
    for volume in volumes:
        steps = [range(0, max(full, 1), n) for full, n in zip(volume.spatial, size, strict=False)]
        for z in steps[0]:
            for y in steps[1]:
                for x in steps[2]:
                    image, target = crop(volume, (z, y, x), size)
                    if not (target != IGNORE_INDEX).any():
                        continue
                    if spatial_dims == 2:
                        image, target = image[:, 0], target[0]
                    tiles.append((image, target))
    return tiles
