"""Label values to training targets: label modes, class values, instance targets.

Label conventions (DESIGN.md)
-----------------------------
- ``dense``: 0 = background, other values = classes (``class_values`` says which
  value is which class; unlisted values are background), or instance ids when
  ``DataConfig.target == "instance"`` (turned into background / interior /
  boundary so that touching objects can be separated).
- ``sparse`` (scribbles): 0 = unlabelled (ignored by the loss), 1 = background,
  2..K+1 = classes 1..K.

Why one module: the widget, the CLI and the trainer must agree on what a label
value means. Plain numpy/scipy (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from .config import IGNORE_INDEX, DataConfig, LabelMode
from .normalization import ArrayLike, as_list

__all__ = [
    "check_instance_scribbles",
    "guess_label_mode",
    "instance_scribble_targets",
    "instance_targets",
    "labels_to_targets",
    "num_output_channels",
    "remap_values",
    "resolve_class_values",
]

#: Dense labels with more distinct values than this are almost surely instance ids.
MAX_SEMANTIC_CLASSES = 64


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


# --------------------------------------------------------------------------- label modes


def _interior_fraction(labels: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of labelled pixels whose in-plane 3x3 neighbourhood has the same value."""
    size = (1,) * (labels.ndim - 2) + (3, 3) if labels.ndim >= 2 else 3
    same = (ndi.minimum_filter(labels, size=size) == labels) & (
        ndi.maximum_filter(labels, size=size) == labels
    )
    return float(same[mask].mean())


#: Regions of a value smaller than this share of its largest are specks (a mask's stray
#: islands), not strokes of their own.
SPECK_SHARE = 0.1


def _has_repeated_regions(labels: np.ndarray, values: np.ndarray) -> bool:
    """True when some value forms several sizeable separate regions (strokes, not one object
    each).

    Why sizeable: a dense organ mask's stray island (the CT slab's stomach: 28 pixels beside
    2839) made the masks "repeated strokes", and as scribbles their value 1 (an organ) was
    trained as background.
    """
    for value in values:
        regions, count = ndi.label(labels == value)
        if count > 1:
            sizes = np.bincount(regions.ravel())[1:]
            if np.count_nonzero(sizes >= SPECK_SHARE * sizes.max()) > 1:
                return True
    return False


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
    arrays = as_list(labels)
    if not arrays:
        raise ValueError("no labels given; pass at least one labels array")
    values = [np.unique(np.asarray(a)) for a in arrays]
    for distinct in values:  # checked on the few distinct values, before any mode's reading
        _check_labels_dtype(distinct)
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
    2, so touching objects get a boundary between them; scribbles for an instance model:
    :func:`instance_scribble_targets`). For training several
    images, resolve ``class_values`` first (:func:`resolve_class_values`).
    """
    array = np.asarray(labels)
    _check_labels_dtype(array)
    array = array.astype(np.int64, copy=False)
    if data_config.target == "instance":
        if data_config.label_mode == "sparse":
            return instance_scribble_targets(array)
        return instance_targets(array, data_config.boundary_width, spatial_dims)
    classes = resolve_class_values(data_config, array)
    sparse = data_config.label_mode == "sparse"
    values, ids = list(classes), list(range(1, len(classes) + 1))
    if sparse and 1 not in values:
        values, ids = [1, *values], [0, *ids]
    return remap_values(array, values, ids, IGNORE_INDEX if sparse else 0)


#: Scribbles for an instance model: 1 = background, 2 = inside an object, 3 = an object's
#: edge (between touching objects), its three classes in order.
INSTANCE_SCRIBBLES = (1, 2, 3)


def instance_scribble_targets(labels: np.ndarray) -> np.ndarray:
    """Scribbles for an instance model -> 0 background, 1 interior, 2 boundary; 0 ignored.

    Why: scribbles with the shipped nuclei model were refused ("choose Target semantic");
    done so, the fine-tuned model gave classes, no objects (held-out AP@0.5 0.75 -> 0.0 in
    30 steps). Read as the model's own three classes, they keep it an instance model.
    """
    check_instance_scribbles(labels)
    return remap_values(labels, INSTANCE_SCRIBBLES, (0, 1, 2), IGNORE_INDEX)


def check_instance_scribbles(labels: ArrayLike) -> None:
    """Raise a ``ValueError`` saying the values to paint when scribbles for an instance
    model hold another value than :data:`INSTANCE_SCRIBBLES` (a cheap check, for Start)."""
    array = np.asarray(labels)
    high = int(array.max()) if array.size else 0
    if high > INSTANCE_SCRIBBLES[-1]:
        raise ValueError(
            f"scribbles for an instance model use 1 = background, 2 = inside an object and "
            f"3 = an object's edge (between touching objects), not {high}: repaint those "
            "strokes, or paint dense labels (every object of a region with its own id)"
        )


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
    ids = labels
    if labels.size and max(abs(int(labels.max())), abs(int(labels.min()))) > 2**52:
        # ids beyond 2**52 collide in the filters' float arithmetic: compare ranks instead
        ids = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    other = (ndi.maximum_filter(ids, size=size) != ids) | (
        ndi.minimum_filter(ids, size=size) != ids
    )
    target = (labels > 0).astype(np.int64)
    target[(labels > 0) & other] = 2
    return target
