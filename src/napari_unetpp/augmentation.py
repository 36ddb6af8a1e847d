"""Random transforms of training patches: geometry, scale, intensity, blur, noise.

Why a module of its own: a model only transfers to another microscope or scanner
if training showed it other object sizes, contrasts and noise levels (issue 14:
nuclei 2-3x larger than DSB's were shattered into fragments). Everything here is
plain numpy/scipy and draws from the ``numpy.random.Generator`` it is given, so a
seed reproduces a run. ``data.PatchSampler`` calls :func:`zoom_patch` (it needs the
context around a patch) and :func:`augment`; :class:`AugmentOptions` is built
from ``TrainConfig`` (``AugmentOptions.from_train_config``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .config import IGNORE_INDEX

__all__ = ["AugmentOptions", "augment", "draw_scale", "elastic_deform", "zoom_patch"]


@dataclass(frozen=True)
class AugmentOptions:
    """What :func:`augment` and the patch sampler do (see the ``TrainConfig`` fields).

    ``scale``: zoom range (log-uniform; ``(1, 1)`` = off), in-plane only (Y, X), so
    anisotropic stacks keep their slice spacing; drawn for a ``scale_probability``
    share of the patches, the others keep the data's own scale. ``contrast`` / ``brightness``:
    ``x * U(1 - c, 1 + c) + U(-b, b)``. ``gamma``: ``exp(U(-g, g))`` applied over the
    patch's own range. ``blur``: probability of a Gaussian blur (sigma 0.5-1.5 px,
    in-plane). ``noise``: Gaussian noise with a standard deviation up to this (in
    normalised units, where the image spans ~0..1), on half the patches.
    """

    scale: tuple[float, float] = (1.0, 1.0)
    scale_probability: float = 1.0
    contrast: float = 0.2
    brightness: float = 0.1
    gamma: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    elastic: bool = False

    @classmethod
    def from_train_config(cls, config: Any) -> AugmentOptions:
        """The options of a ``TrainConfig`` (its ``augment_*`` fields and ``elastic``)."""
        return cls(
            scale=tuple(config.augment_scale),
            scale_probability=config.augment_scale_probability,
            contrast=config.augment_contrast,
            brightness=config.augment_brightness,
            gamma=config.augment_gamma,
            blur=config.augment_blur,
            noise=config.augment_noise,
            elastic=config.elastic,
        )


def draw_scale(options: AugmentOptions, rng: np.random.Generator) -> float:
    """A zoom factor from ``options.scale`` (log-uniform); 1.0 without drawing when off."""
    low, high = options.scale
    if low == high == 1.0:
        return 1.0
    if options.scale_probability < 1.0 and rng.random() >= options.scale_probability:
        return 1.0  # no extra draw at probability 1: earlier runs resume on the same stream
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def zoom_patch(
    image: np.ndarray, target: np.ndarray, size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``image (C, *spatial)`` and ``target (*spatial)`` to ``size`` (spatial).

    Image: linear; target: nearest, so class ids, instance ids and the ignore
    value survive unchanged (no value is invented between two labels). Pixel
    centres are aligned, so a zoom keeps the patch centred.
    """
    size = tuple(int(n) for n in size)
    if tuple(target.shape) == size:
        return image, target
    axes = [
        (np.arange(out, dtype=np.float64) + 0.5) * (n / out) - 0.5
        for n, out in zip(target.shape, size, strict=True)
    ]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    zoomed = np.stack([ndi.map_coordinates(c, coords, order=1, mode="nearest") for c in image])
    labels = ndi.map_coordinates(target, coords, order=0, mode="nearest")
    return zoomed.astype(np.float32), labels.astype(target.dtype)


def augment(
    image: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    *,
    elastic: bool = False,
    keep_labelled: bool = False,
    options: AugmentOptions | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, in-plane 90-degree rotations, contrast/brightness, and per ``options``
    gamma, elastic deformation, blur and noise.

    ``image (C, *spatial)`` and ``target (*spatial)`` get the same geometric
    transform, so they stay aligned. ``keep_labelled`` drops an elastic
    deformation that would push every labelled pixel (thin scribbles) out.
    Without ``options`` (or with its defaults) the draws are those of earlier
    releases, so old seeds reproduce old runs.
    """
    options = options or AugmentOptions(elastic=elastic)
    spatial = target.ndim
    for axis in range(spatial):
        if rng.random() < 0.5:
            image, target = np.flip(image, axis + 1), np.flip(target, axis)
    square = target.shape[-1] == target.shape[-2]
    turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    if turns:
        image = np.rot90(image, turns, axes=(-2, -1))
        target = np.rot90(target, turns, axes=(-2, -1))
    c, b = options.contrast, options.brightness
    image = image * np.float32(rng.uniform(1 - c, 1 + c)) + np.float32(rng.uniform(-b, b))
    if options.gamma > 0:
        image = _gamma(image, float(np.exp(rng.uniform(-options.gamma, options.gamma))))
    if options.elastic or elastic:
        warped_image, warped_target = elastic_deform(image, target, rng)
        if not keep_labelled or (warped_target != IGNORE_INDEX).any():
            image, target = warped_image, warped_target
    if options.blur > 0 and rng.random() < options.blur:
        sigma = (0.0,) * (image.ndim - 2) + (float(rng.uniform(0.5, 1.5)),) * 2
        image = ndi.gaussian_filter(np.asarray(image, np.float32), sigma)
    if options.noise > 0 and rng.random() < 0.5:
        std = np.float32(rng.uniform(0, options.noise))
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * std
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(target)


def _gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """``x -> low + span * ((x - low) / span) ** gamma`` over each channel's own range.

    Why over the patch's range: normalised images are not clipped to 0..1, and a
    power of a negative value is undefined; the end points stay where they were.
    """
    out = np.empty(image.shape, np.float32)
    for k, channel in enumerate(image):
        low, high = float(channel.min()), float(channel.max())
        span = high - low
        if span <= 0:
            out[k] = channel
            continue
        out[k] = low + span * np.power((channel - low) / span, gamma)
    return out


def elastic_deform(
    image: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    alpha: float = 8.0,
    sigma: float = 6.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random displacement (up to ~``alpha`` pixels) applied to image and labels.

    One field for both: linear interpolation for the image, nearest for the labels
    (no invented label values).
    """
    shape = target.shape
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    coords = []
    for axis, base in enumerate(grid):
        if len(shape) == 3 and axis == 0 and shape[0] < 8:
            coords.append(base)  # thin 3D patches: deform in-plane only
            continue
        field_ = ndi.gaussian_filter(rng.uniform(-1, 1, shape).astype(np.float32), sigma)
        field_ *= alpha / max(float(np.abs(field_).max()), 1e-6)
        coords.append(base + field_)
    warped = np.stack(
        [ndi.map_coordinates(channel, coords, order=1, mode="reflect") for channel in image]
    )
    labels = ndi.map_coordinates(target, coords, order=0, mode="reflect")
    return warped.astype(np.float32), labels.astype(target.dtype)
