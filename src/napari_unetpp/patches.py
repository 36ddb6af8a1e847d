"""Training data as volumes: preparation, validation split, patch sampling, validation tiles.

Training data is held as :class:`Volume` objects, ``image (C, Z, Y, X)`` and
``target (Z, Y, X)``: a 2D image is a volume with one slice, a stack trained by a
2D model is sampled slice by slice, and a 3D model samples 3D patches. Plain
numpy (no torch): the trainer turns the batches into tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .augmentation import AugmentOptions, augment, draw_scale, zoom_patch
from .config import IGNORE_INDEX, DataConfig
from .labels import labels_to_targets
from .nonfinite import fill_image
from .normalization import (
    ArrayLike,
    as_list,
    check_numeric,
    check_pair,
    normalize,
    to_channels_first,
)

__all__ = [
    "DegenerateLabelsWarning",
    "PatchSampler",
    "Volume",
    "degenerate_labels",
    "fit_patch",
    "patch_shape_zyx",
    "prepare_volumes",
    "split_validation",
    "unpaint_empty_slices",
    "unpainted_slices",
    "validation_tiles",
]

#: At most this many labelled positions are kept per volume to draw patch centres from.
MAX_CENTRE_CANDIDATES = 2_000_000


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
    images, labels = as_list(images), as_list(labels)
    if len(images) != len(labels):
        raise ValueError(
            f"got {len(images)} image(s) but {len(labels)} labels array(s); give one "
            "labels array per image"
        )
    volumes: list[Volume] = []
    for n, (image, label) in enumerate(zip(images, labels, strict=False)):
        check_pair(image, label, data_config.channel_axis)
        check_numeric(image, f"image {n}")
        channels = fill_image(  # a CT's NaN: the window's low end (air), as prediction fills it
            to_channels_first(image, data_config.channel_axis),
            f"image {n}",
            data_config.normalization,
        )
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
    """The labels hold a single class (or classes on almost no pixel): a model can only
    learn to predict one thing everywhere."""


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


#: Classes on fewer of the labelled pixels than this teach "background everywhere".
MIN_CLASS_FRACTION = 0.002


def rare_classes(volumes: Sequence[Volume]) -> str | None:
    """Why these targets would teach "background everywhere" (classes on almost no pixel).

    Why: one scribble painted with napari's default label 1 (a few dozen pixels) reads as
    dense labels of one class, so every unpainted pixel is taught as background; 30 steps
    of fine-tuning the shipped EM model on such a stroke took its membrane IoU from 0.69
    to 0.0, with no word said.
    """
    labelled = classes = 0
    for volume in volumes:
        target = volume.target[volume.target != IGNORE_INDEX]
        labelled += int(target.size)
        classes += int(np.count_nonzero(target > 0))
    if not labelled or classes == 0 or classes / labelled >= MIN_CLASS_FRACTION:
        return None
    return (
        f"only {classes} of the {labelled} labelled pixels ({100 * classes / labelled:.2g} %) "
        "are a class, the rest background: the model will learn to find almost nothing. With "
        "dense labels every unpainted pixel is background; if you painted scribbles, paint "
        "background with 1 and classes with 2, 3... and use the sparse label mode"
    )


#: Dense labels on at most this share of a stack's slices may be a few painted slices ...
MAX_PAINTED_SHARE = 1 / 2
#: ... when no run of consecutive slices holding labels is longer than this.
MAX_PAINTED_RUN = 3


def _painted_runs(target: np.ndarray) -> list[int]:
    """Lengths of the runs of consecutive slices (axis 0) of ``target`` that hold a class."""
    painted = np.concatenate([[0], target.reshape(target.shape[0], -1).any(1), [0]]).astype(int)
    edges = np.flatnonzero(np.diff(painted))
    return (edges[1::2] - edges[::2]).tolist()


def unpainted_slices(volumes: Sequence[Volume]) -> str | None:
    """Why dense labels on a few slices of a stack would teach "background" on the rest.

    Why: a user paints the slice shown; with dense labels (0 = background) every other
    slice of the stack, or frame of a time series, is then taught as background
    everywhere, objects included. But a stack whose objects lie in some slices only is
    fine: the shipped CT model's training stacks hold organs on 13 of 79 and 20 of 20
    slices (33 of 99), and the slices without organs rightly teach "no organ here".

    The rule tells the two apart by how the labelled slices lie: objects span several
    consecutive slices (organs 13 and 20, 3 mm each), while painting the slice shown,
    or a few browsed to, gives isolated slices or short runs. So the labels are warned
    about when at most :data:`MAX_PAINTED_SHARE` of the stacks' slices hold a class and
    no run of consecutive labelled slices is longer than :data:`MAX_PAINTED_RUN`. Single
    planes and sparse labels (unpainted slices are ignored there) are never warned about.
    """
    total = 0
    runs: list[int] = []
    for volume in volumes:
        if volume.target.shape[0] < 2 or (volume.target == IGNORE_INDEX).any():
            continue  # one plane, or scribbles (unlabelled pixels are ignored)
        total += volume.target.shape[0]
        runs += _painted_runs(volume.target)
    painted = sum(runs)
    if not painted or painted > MAX_PAINTED_SHARE * total or max(runs) > MAX_PAINTED_RUN:
        return None
    return (
        f"only {painted} of the {total} slices hold labels: with dense labels (0 = background) "
        f"the other {total - painted} train as background everywhere, objects included. If you "
        "painted only those slices, crop the image and labels to them, or paint scribbles "
        "(sparse: 0 = unlabelled, 1 = background, 2.. = classes)"
    )


def unpaint_empty_slices(volumes: Sequence[Volume]) -> int:
    """Mark the slices of dense stacks that hold no class as unlabelled; return how many.

    Why, for a fine-tune only: dense labels on a slab of a stack (organs painted on slices
    90-105 of a CT scan) taught every other slice background, organs included, and nothing
    held those slices to what the starting model knew there; unlabelled, they are left to
    the preservation term (``losses.preservation_loss``), which keeps the starting model's
    predictions wherever nothing was painted. From scratch there is nothing to keep, and a
    stack's slices without objects rightly teach "no object here" (see
    :func:`unpainted_slices`). Single planes and scribbles are left as they are.
    """
    count = 0
    for volume in volumes:
        target = volume.target
        if target.shape[0] < 2 or (target == IGNORE_INDEX).any():
            continue
        empty = ~target.reshape(target.shape[0], -1).any(1)
        if empty.all():
            continue
        target[empty] = IGNORE_INDEX
        count += int(empty.sum())
    return count


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
    kept = Volume(volume.image[tuple(head)], volume.target[tuple(head[1:])], volume.name)
    held = Volume(volume.image[tuple(tail)], volume.target[tuple(tail[1:])], volume.name + " (val)")
    return [kept], [held]


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


def fit_patch(
    patch_size: Sequence[int], volumes: Sequence[Volume], spatial_dims: int, multiple: int
) -> tuple[int, ...]:
    """``patch_size`` cut to the largest image along each axis, rounded up to ``multiple``
    (the network's pooling).

    Why: a patch larger than every image is padding around it (ignored by the loss):
    patch 1024 on a 32 x 32 image cost a thousand times the work of the image per step.
    """
    extent = [max(v.spatial[axis] for v in volumes) for axis in range(3 - spatial_dims, 3)]
    return tuple(
        min(int(p), -(-e // multiple) * multiple) for p, e in zip(patch_size, extent, strict=True)
    )


def crop(
    volume: Volume, start: Sequence[int], size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``size`` at ``start`` (Z, Y, X); pad beyond edges (image mirrored, target ignored)."""
    index = tuple(slice(max(s, 0), s + n) for s, n in zip(start, size, strict=False))
    channels_and_index = (slice(None), *index)
    image = volume.image[channels_and_index]
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
        #: Patches per batch centred anywhere in the volumes, unlabelled pixels included (at
        #: most all but one, so a batch always holds labels): where a fine-tune's
        #: preservation term keeps the starting model's predictions (see :meth:`sample`).
        self.anywhere = 0
        for volume in volumes:
            volume.index(rng)
        counts = np.array(
            [v.labelled.size if sparse else v.target.size for v in volumes], dtype=np.float64
        )
        if counts.sum() == 0:
            raise ValueError("the training images have no labelled pixels; paint some labels")
        self.weights = counts / counts.sum()

    def centre(self, volume: Volume, anywhere: bool = False) -> tuple[int, int, int]:
        """A patch centre: foreground, labelled (sparse) or uniform (always, ``anywhere``)."""
        use_fg = volume.foreground.size and self.rng.random() < self.foreground_fraction
        if anywhere:
            flat = self.rng.integers(volume.target.size)
        elif use_fg:
            flat = volume.foreground[self.rng.integers(volume.foreground.size)]
        elif self.sparse:
            flat = volume.labelled[self.rng.integers(volume.labelled.size)]
        else:
            flat = self.rng.integers(volume.target.size)
        return tuple(int(c) for c in np.unravel_index(flat, volume.target.shape))  # type: ignore

    def sample_one(
        self, scale: float = 1.0, anywhere: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """One ``(image (C, *patch), target (*patch))`` pair, before augmentation.

        ``scale`` > 1 zooms in: a region ``1 / scale`` the patch's height and width
        is cropped and resampled to the patch size (``scale`` < 1 zooms out, with
        more context), so objects appear ``scale`` times their size.
        """
        volume = self.volumes[self.rng.choice(len(self.volumes), p=self.weights)]
        centre = self.centre(volume, anywhere)
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
        ``elastic``) as before. The last :attr:`anywhere` patches (at most all but one)
        are centred anywhere: why, a fine-tune on strokes of a few slices saw only
        those slices, so its preservation term held the starting model there alone, and
        the other slices drifted (zoo:ct, liver strokes on 3 slices: spleen Dice on
        unseen slices 0.74 -> 0.43).
        """
        options = options or AugmentOptions(elastic=elastic)
        images, targets = [], []
        anywhere = min(self.anywhere, batch_size - 1)
        for k in range(batch_size):
            scale = draw_scale(options, self.rng) if augment_patches else 1.0
            image, target = self.sample_one(scale, anywhere=k >= batch_size - anywhere)
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
