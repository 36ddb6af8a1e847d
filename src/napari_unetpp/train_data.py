"""A training run's data: classes resolved once, volumes, validation split, sampler, tiles.

Plain numpy (no torch): the trainer asks :func:`prepare_data` once per run and
then only draws batches from the sampler and scores the validation tiles.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import IGNORE_INDEX, DataConfig, ModelConfig, NormalizationConfig, TrainConfig
from .labels import num_output_channels, resolve_class_values
from .normalization import as_list, contrast_problem, to_channels_first
from .patches import (
    DegenerateLabelsWarning,
    PatchSampler,
    degenerate_labels,
    fit_patch,
    prepare_volumes,
    rare_classes,
    split_validation,
    unpaint_empty_slices,
    unpainted_slices,
    validation_tiles,
)

__all__ = ["NO_VALIDATION", "TrainData", "prepare_data"]

#: Validation tiles are this many times the patch size in-plane (fewer, larger tiles).
VALIDATION_TILE_FACTOR = 2
#: At most this many validation tiles (evenly spaced) keep validation cheap on CPU.
MAX_VALIDATION_TILES = 64
#: Fewer labelled validation pixels than this, or only one class among them, give no
#: trustworthy score (a few scribbled pixels scored 1.000): then nothing is held back for
#: validation and all labels train.
MIN_VALIDATION_PIXELS = 200
#: What the run says (a "note" event, and the checkpoint's provenance) without validation.
NO_VALIDATION = "no validation: paint on more of the image (training loss shown instead)"


@dataclass
class TrainData:
    """The sampler, the validation tiles, the resolved data config and what the run records."""

    sampler: PatchSampler
    val_tiles: list[tuple[np.ndarray, np.ndarray]]
    data_config: DataConfig
    description: dict[str, Any]
    #: every labelled pixel is one class: a validation score means nothing
    one_class: bool = False
    #: the patch size trained at: ``TrainConfig.patch_size`` cut to the images
    patch_size: tuple[int, ...] = ()


def _check_model_fits(
    model_config: ModelConfig, data_config: DataConfig, labels: list[Any], channels: int
) -> None:
    needed = num_output_channels(data_config, labels)
    if model_config.num_classes != needed and not (needed == 1 and model_config.num_classes == 2):
        raise ValueError(
            f"ModelConfig.num_classes is {model_config.num_classes} but these labels need "
            f"{needed} output channel(s) (labels.num_output_channels); set num_classes={needed}"
        )
    if model_config.in_channels != channels:
        raise ValueError(
            f"ModelConfig.in_channels is {model_config.in_channels} but the images have "
            f"{channels} channel(s); set in_channels={channels} or DataConfig.channel_axis"
        )


def _evenly(items: list[Any], limit: int) -> list[Any]:
    if len(items) <= limit:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def _flat_image(images: list[Any], config: NormalizationConfig) -> str | None:
    """What is wrong with the first training image too flat to learn from, or None.

    Why: predict warns on an image with no contrast (all zero, 2-3 grey levels), but
    training took one silently and fitted the labels to noise stretched to 0..1.
    """
    for k, image in enumerate(images):
        problem = contrast_problem(image, config)
        if problem is not None:
            which = f"training image {k + 1} of {len(images)}" if len(images) > 1 else "the image"
            return f"{which}: {problem}; the model can learn nothing from it"
    return None


def prepare_data(
    images: Any,
    labels: Any,
    val_images: Any,
    val_labels: Any,
    model_config: ModelConfig,
    train_config: TrainConfig,
    data_config: DataConfig,
    rng: np.random.Generator,
    fine_tune: bool = False,
) -> TrainData:
    """Resolve classes once, build volumes, split, and set up the sampler and validation tiles.

    ``fine_tune``: the run starts from a model, so the slices of a dense stack that hold no
    class are unpainted, not background (``patches.unpaint_empty_slices``).
    """
    images, labels = as_list(images), as_list(labels)
    extra = as_list(val_labels) if val_labels is not None else []
    if (val_images is None) != (val_labels is None):
        raise ValueError("give both val_images and val_labels, or neither")
    data_config = data_config.replace(
        class_values=resolve_class_values(data_config, labels + extra)
    )
    dims = model_config.spatial_dims
    first = to_channels_first(images[0], data_config.channel_axis)
    _check_model_fits(model_config, data_config, labels + extra, first.shape[0])
    volumes = prepare_volumes(images, labels, data_config, dims)
    unpainted = unpaint_empty_slices(volumes) if fine_tune else 0
    one_class = degenerate_labels(volumes)
    degenerate = (
        one_class
        or rare_classes(volumes)
        or unpainted_slices(volumes)
        or _flat_image(images, data_config.normalization)
    )
    if degenerate:
        warnings.warn(degenerate, DegenerateLabelsWarning, stacklevel=2)
    if val_images is not None:
        train, val = volumes, prepare_volumes(val_images, val_labels, data_config, dims)
    else:
        # the split comes from the seed alone: every rank validates on the same data
        split_rng = np.random.default_rng(train_config.seed)
        train, val = split_validation(volumes, train_config.validation_fraction, split_rng)
    patch = fit_patch(train_config.patch_size, volumes, dims, 2**model_config.depth)
    tile = [p * (VALIDATION_TILE_FACTOR if k >= len(patch) - 2 else 1) for k, p in enumerate(patch)]
    tiles = _evenly(validation_tiles(val, tile, dims), MAX_VALIDATION_TILES)
    if val and val_images is None and (not _can_score(tiles) or not _any_labelled(train)):
        # too few to score, or every stroke in the held-back block (painted on the last
        # slice shown): every label trains, with no validation score
        train, val, tiles = volumes, [], []
    sampler = PatchSampler(
        train,
        patch,
        dims,
        train_config.foreground_fraction,
        rng,
        sparse=data_config.label_mode == "sparse",
    )
    description: dict[str, Any] = {
        "train": [v.name + f" {v.spatial}" for v in train],
        "validation": [v.name + f" {v.spatial}" for v in val] if tiles else NO_VALIDATION,
    }
    if degenerate:
        description["degenerate_labels"] = degenerate  # saved with the checkpoint
    if unpainted:
        description["unpainted_slices"] = unpainted
    return TrainData(sampler, tiles, data_config, description, one_class is not None, patch)


def _any_labelled(volumes: list[Any]) -> bool:
    """Whether the volumes hold a labelled pixel (scribbles leave the rest unlabelled)."""
    return any(bool(np.any(v.target != IGNORE_INDEX)) for v in volumes)


def _can_score(tiles: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """Enough labelled validation pixels, of at least two classes, for a meaningful score."""
    labelled = [t[t != IGNORE_INDEX] for _, t in tiles]
    count = sum(int(v.size) for v in labelled)
    classes = set().union(*(np.unique(v).tolist() for v in labelled)) if labelled else set()
    return count >= MIN_VALIDATION_PIXELS and len(classes) >= 2
