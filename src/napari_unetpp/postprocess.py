"""Probabilities -> Labels: threshold (binary), argmax (classes), watershed (instances).

Why a module of its own: the widget, the CLI and the zoo demo must turn the same
probabilities into the same labels; and instance segmentation (touching nuclei)
needs more than a threshold: the network predicts background / interior /
boundary (``DataConfig.target == "instance"``), and a seeded watershed splits
objects along the predicted boundaries.

Stacks predicted by a 2D model are processed slice by slice (objects never
connect across slices, as the model never saw the neighbours); a 3D model's
volume is processed as a whole. Inputs may be numpy, dask or zarr: one slice or
volume is read at a time.

Example
-------
>>> import numpy as np
>>> from napari_unetpp.config import DataConfig, ModelConfig
>>> prob = np.array([[0.9, 0.2], [0.1, 0.7]], dtype="float32")
>>> probabilities_to_labels(prob, ModelConfig(), DataConfig()).tolist()
[[1, 0], [0, 1]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .config import DataConfig, ModelConfig

__all__ = [
    "probabilities_to_labels",
    "label_threshold",
    "labels_shape",
    "remove_small",
    "instances_from_probabilities",
]

#: Channels of an instance model's output, in order (see ``data.instance_targets``).
INSTANCE_CHANNELS = ("background", "interior", "boundary")


def _items(lead_shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Index tuples over the leading (slice / time) axes; one empty tuple when there are none."""
    return iter(np.ndindex(*lead_shape))


def _structure(ndim: int) -> np.ndarray:
    """Face connectivity (4 in 2D, 6 in 3D): touching corners do not merge objects."""
    return ndi.generate_binary_structure(ndim, 1)


def remove_small(labels: np.ndarray, min_size: int, *, by_component: bool = False) -> np.ndarray:
    """Set objects with fewer than ``min_size`` pixels to 0 (a new int32 array).

    Objects are the label ids (instance labels, where one id may be split by
    a crop), or with ``by_component=True`` every connected component of every
    non-zero value (semantic maps, where a class id is not an object). Why: a
    network's specks (a few pixels of false positive) are the most common
    error a biologist has to clean by hand.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(
            f"labels must be integers, got dtype {labels.dtype}; threshold or argmax first"
        )
    out = labels.astype(np.int32, copy=True)
    if min_size <= 1 or not out.any():
        return out
    if not by_component:
        out[_small_ids(out.clip(min=0), min_size)] = 0
        return out
    for value in np.unique(out[out != 0]):
        components, count = ndi.label(out == value, structure=_structure(out.ndim))
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        tiny = sizes < min_size
        tiny[0] = False
        out[tiny[components]] = 0
    return out


def _small_ids(ids: np.ndarray, min_size: int) -> np.ndarray:
    """Mask of the pixels whose id (not 0) has fewer than ``min_size`` pixels.

    ``bincount`` when the ids are about as many as the pixels (the usual
    sequential labels), ``unique`` otherwise: ids near 2**31 must not allocate a
    16 GiB table of counts.
    """
    if int(ids.max()) <= 2 * ids.size + 1024:
        small = np.bincount(ids.ravel()) < min_size
        small[0] = False
        return small[ids]
    values, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    small = (counts < min_size) & (values != 0)
    return small[inverse].reshape(ids.shape)


def instances_from_probabilities(
    prob: np.ndarray, threshold: float = 0.5, min_size: int = 0
) -> np.ndarray:
    """Instance labels from background / interior / boundary probabilities ``(3, *spatial)``.

    Seeds are the connected components of confident interior (``interior >
    threshold`` and ``boundary < threshold``): the boundary band the network
    learned keeps the interiors of touching objects apart. A watershed on the
    boundary probability grows the seeds over the foreground (``background <
    1 - threshold``), so each object gets its boundary pixels back. Foreground
    blobs without a seed (tiny objects) become objects of their own.
    """
    from skimage.segmentation import relabel_sequential, watershed

    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape[0] != len(INSTANCE_CHANNELS):
        raise ValueError(
            f"instance probabilities need {len(INSTANCE_CHANNELS)} channels "
            f"{INSTANCE_CHANNELS}, got shape {prob.shape}"
        )
    background, interior, boundary = prob
    structure = _structure(interior.ndim)
    foreground = background < 1.0 - threshold
    seeds, count = ndi.label(
        (interior > threshold) & (boundary < threshold) & foreground, structure=structure
    )
    labels = watershed(boundary, seeds, mask=foreground, connectivity=1)
    unseeded = foreground & (labels == 0)
    if unseeded.any():
        extra, _ = ndi.label(unseeded, structure=structure)
        labels[unseeded] = extra[unseeded] + count
    labels = remove_small(labels, min_size)
    return relabel_sequential(labels)[0].astype(np.int32)


#: The threshold of a model that records none (``ModelConfig.threshold``).
DEFAULT_THRESHOLD = 0.5


def label_threshold(model_config: ModelConfig, threshold: float | None = None) -> float:
    """The probability threshold labels are made with: ``threshold`` if given, else the
    model's own (chosen on its validation split, ``ModelConfig.threshold``), else 0.5.

    Why one helper: the labels, the depth advice and the object-size pass must all cut
    the probabilities where the model's card was scored.
    """
    if threshold is not None:
        return float(threshold)
    own = getattr(model_config, "threshold", None)
    return DEFAULT_THRESHOLD if own is None else float(own)


def _class_axes(model_config: ModelConfig) -> int:
    """Leading class axes of one depth's probabilities: none for one class, else one."""
    return 0 if model_config.num_classes == 1 else 1


def labels_shape(prob_shape: Sequence[int], model_config: ModelConfig) -> tuple[int, ...]:
    """The shape of the labels made from probabilities of ``prob_shape`` (to allocate ``out``)."""
    return tuple(prob_shape[_class_axes(model_config) :])


def _check_prob(prob: Any, model_config: ModelConfig, data_config: DataConfig) -> int:
    """Number of leading class axes (0 or 1); raises with a fix on a shape mismatch."""
    channels = model_config.num_classes
    if data_config.target == "instance" and channels != len(INSTANCE_CHANNELS):
        raise ValueError(
            f"an instance model predicts {len(INSTANCE_CHANNELS)} channels "
            f"{INSTANCE_CHANNELS}, but num_classes is {channels}; use a model trained with "
            "DataConfig(target='instance') or set target='semantic'"
        )
    class_axes = _class_axes(model_config)
    if len(prob.shape) < model_config.spatial_dims + class_axes:
        raise ValueError(
            f"probabilities of shape {tuple(prob.shape)} are too small for a "
            f"{model_config.spatial_dims}D model with {channels} output channel(s)"
        )
    if class_axes and prob.shape[0] != channels:
        raise ValueError(
            f"probabilities of shape {tuple(prob.shape)} should have {channels} classes on "
            "axis 0 (as inference.predict returns them); pass one depth's array, e.g. probs[4]"
        )
    return class_axes


def probabilities_to_labels(
    prob: Any,
    model_config: ModelConfig,
    data_config: DataConfig,
    threshold: float | None = None,
    min_size: int = 0,
    out: Any = None,
    band_rows: int | None = None,
) -> Any:
    """One depth's probabilities (as ``inference.predict`` returns them) -> int32 labels.

    - ``num_classes == 1``: foreground where ``prob > threshold`` (labels 0/1);
    - several classes: the most probable class (ids ``0..C-1``, 0 = background;
      ``threshold`` is not used);
    - ``data_config.target == "instance"``: one id per object by seeded watershed
      (see :func:`instances_from_probabilities`), ids unique over a whole stack.

    ``threshold``: None = the model's own (:func:`label_threshold`).
    ``min_size`` removes objects (connected components of a class, or instances)
    smaller than that many pixels. Stacks of a 2D model are handled slice by slice.

    ``out``: an array to write the labels into (e.g. a zarr array of the labels'
    shape), one slice at a time, and return; then memory holds one slice, not the
    whole stack (big volumes predicted to zarr). Default: a new numpy array.

    ``band_rows``: 2D planes of more than :data:`BAND_MIN_PIXELS` pixels are read and
    labelled in bands of rows (with ``out``, memory then holds a band, not the plane);
    give a number of rows to force bands of that height (None: automatic). Semantic
    bands equal the whole-plane result exactly; instance bands can differ from it
    only next to a seam (see :func:`_instances_in_bands`).
    """
    threshold = label_threshold(model_config, threshold)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}; 0.5 is the usual")
    if band_rows is not None and band_rows < 1:
        raise ValueError(f"band_rows must be a positive number of rows or None, got {band_rows}")
    class_axes = _check_prob(prob, model_config, data_config)
    shape = tuple(prob.shape)
    spatial_dims = model_config.spatial_dims
    lead_shape = shape[class_axes : len(shape) - spatial_dims]
    if out is not None and tuple(out.shape) != labels_shape(shape, model_config):
        raise ValueError(
            f"out has shape {tuple(out.shape)}; the labels have shape "
            f"{labels_shape(shape, model_config)}"
        )
    labels = np.zeros(labels_shape(shape, model_config), np.int32) if out is None else out
    instance = data_config.target == "instance"
    plan = _band_plan(shape[len(shape) - spatial_dims :], instance, min_size, band_rows)
    next_id = 0
    for lead in _items(lead_shape):
        index = (slice(None),) * class_axes + lead
        if plan is not None:
            next_id = _label_in_bands(
                prob, index, labels, lead, plan, instance, class_axes, threshold, min_size, next_id
            )
            continue
        result = _label_item(
            np.asarray(prob[index], dtype=np.float32), instance, class_axes, threshold, min_size
        )
        if instance:
            result[result > 0] += next_id
            next_id = max(next_id, int(result.max()))
        labels[lead] = result
    return labels


def _label_item(
    item: np.ndarray, instance: bool, class_axes: int, threshold: float, min_size: int
) -> np.ndarray:
    """Labels of one slice, volume or band of probabilities (instance ids from 1)."""
    if instance:
        return instances_from_probabilities(item, threshold, min_size)
    if class_axes == 0:
        return remove_small((item > threshold).astype(np.int32), min_size, by_component=True)
    return remove_small(item.argmax(axis=0).astype(np.int32), min_size, by_component=True)


# --------------------------------------------------------------------------- bands of rows

#: 2D planes with more pixels than this are labelled in bands (a 4096 x 4096 plane is not).
BAND_MIN_PIXELS = 4096 * 4096
#: Pixels of a band's core: rows per band = this // width.
BAND_PIXELS = 1 << 22
#: Rows of context above and below an instance band: objects up to this tall never see a seam.
INSTANCE_HALO = 96


def _band_plan(
    plane: tuple[int, ...], instance: bool, min_size: int, band_rows: int | None
) -> tuple[int, int] | None:
    """``(rows per band, halo rows)`` for a big 2D plane, or None to label it whole.

    The halo of a semantic band is ``min_size`` rows: a component with fewer pixels
    spans fewer rows, and one that leaves the band plus halo has more pixels in
    it, so small-object removal decides exactly as on the whole plane.
    """
    if len(plane) != 2:
        return None  # a 3D model's volume is labelled whole (objects cross every plane)
    height, width = plane
    if band_rows is None and height * width <= BAND_MIN_PIXELS:
        return None
    halo = INSTANCE_HALO if instance else (min_size if min_size > 1 else 0)
    rows = band_rows if band_rows is not None else max(BAND_PIXELS // width, 2 * halo, 16)
    return (rows, halo) if rows < height else None


def _label_in_bands(
    prob: Any,
    index: tuple,
    labels: Any,
    lead: tuple[int, ...],
    plan: tuple[int, int],
    instance: bool,
    class_axes: int,
    threshold: float,
    min_size: int,
    next_id: int,
) -> int:
    """Label one 2D plane band by band; returns the last instance id used."""
    rows, halo = plan
    height = int(prob.shape[-2])
    carry = np.zeros((0, int(prob.shape[-1])), np.int32)
    writer = _RowWriter(labels, lead)
    for start in range(0, height, rows):
        stop = min(start + rows, height)
        lo, hi = max(start - halo, 0), min(stop + halo, height)
        key = (*index, slice(lo, hi))
        band = np.asarray(prob[key], dtype=np.float32)
        result = _label_item(band, instance, class_axes, threshold, min_size)
        if instance:
            block, carry, next_id = _keep_anchored(result, lo, start, stop, carry, next_id)
        else:
            block = result[start - lo : stop - lo]
        writer.write(block, final=stop == height)
    return next_id


class _RowWriter:
    """Writes a plane's rows in blocks that end on the target's chunk rows.

    Why: bands of a few hundred rows written into a zarr array chunked 1024 rows
    deep would read, decompress and rewrite every chunk several times. Rows wait
    in one buffer of a chunk row's height plus a band (no copies to join them).
    """

    def __init__(self, target: Any, lead: tuple[int, ...]) -> None:
        chunks = None if isinstance(target, np.ndarray) else getattr(target, "chunks", None)
        self.step = int(chunks[-2]) if chunks and isinstance(chunks[-2], int) else 1
        self.target, self.lead = target, lead
        self.buffer: np.ndarray | None = None
        self.held = 0  # rows waiting in the buffer
        self.start = 0  # first row not yet written

    def write(self, block: np.ndarray, final: bool = False) -> None:
        if self.step == 1:
            key = (*self.lead, slice(self.start, self.start + len(block)))
            self.target[key] = block
            self.start += len(block)
            return
        need = self.held + len(block)
        if self.buffer is None or len(self.buffer) < need:
            grown = np.empty((max(need, self.step + len(block)), *block.shape[1:]), block.dtype)
            if self.buffer is not None:
                grown[: self.held] = self.buffer[: self.held]
            self.buffer = grown
        self.buffer[self.held : need] = block
        self.held = need
        end = self.start + self.held
        cut = end if final else end // self.step * self.step
        if cut <= self.start:
            return
        done = cut - self.start
        key = (*self.lead, slice(self.start, cut))
        self.target[key] = self.buffer[:done]
        self.buffer[: self.held - done] = self.buffer[done : self.held]
        self.held -= done
        self.start = cut


def _keep_anchored(
    window: np.ndarray, lo: int, start: int, stop: int, carry: np.ndarray, next_id: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Stitch one instance band: each object belongs to the band that holds its top row.

    ``window`` holds the instances of rows ``lo..`` (band core ``start..stop`` plus
    halos). An object whose top row lies in the core is kept whole, also its rows
    below the core (written into the next band through ``carry``); others belong
    to the band above or below, which sees them with their context. Kept objects
    get ids after ``next_id``, so ids stay unique across bands. Pixels already
    claimed by the band above stay with it. Differences from labelling the whole
    plane: only where the watershed of a window differs from the global one
    (objects taller than the halo, or ties along a seam).
    """
    boxes = ndi.find_objects(window)
    tops = np.array([box[0].start + lo if box is not None else -1 for box in boxes], np.int64)
    kept = (tops >= start) & (tops < stop)
    new_ids = np.zeros(len(boxes) + 1, np.int32)
    new_ids[1:][kept] = next_id + np.arange(1, int(kept.sum()) + 1, dtype=np.int32)
    mapped = new_ids[window[start - lo :]]  # rows start.. of the window, new ids or 0
    mapped[: carry.shape[0]] = np.where(carry > 0, carry, mapped[: carry.shape[0]])
    return mapped[: stop - start], mapped[stop - start :], next_id + int(kept.sum())
