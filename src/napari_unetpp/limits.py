"""Bounds and checks of the config dataclasses, and the parameter count they bound.

Why apart from :mod:`config`: the dataclasses say *what* a job is; this module says
what a value may be. The bounds are checked before anything is allocated (a 20 kB
``config.json`` from a stranger must not ask for 100 GB), and :mod:`_checkpoint_io`
sizes its own caps from the same :data:`MAX_PARAMETERS` and :func:`estimate_parameters`.
Errors name the config and field (``ModelConfig.depth must lie in 1..8``) so a bad value
fails where it was written.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ModelConfig, PredictConfig

__all__ = [
    "MAX_BATCH_VOXELS",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_DEPTH",
    "MAX_ITERATIONS",
    "MAX_PARAMETERS",
    "MAX_PATCH",
    "MAX_WIDTH",
    "as_int",
    "as_ints",
    "check_choice",
    "check_model_scale",
    "check_positive",
    "check_predict_scale",
    "estimate_parameters",
]

#: Bounds checked before anything is allocated: a 20 kB config.json must not ask for
#: 100 GB (widths [1e9]) or a 2**20 padding (depth 20). Far beyond any real UNet++.
MAX_WIDTH = 4096
MAX_DEPTH = 8
MAX_CLASSES = 1000
MAX_CHANNELS = 1000
#: About 2 GB of float32 weights; the paper's widths at depth 4 are 9M.
MAX_PARAMETERS = 500_000_000
MAX_PATCH = 4096
#: Voxels of one training batch (batch_size x patch volume): 4 GiB of float32 input.
MAX_BATCH_VOXELS = 2**30
MAX_ITERATIONS = 10**8


def check_choice(owner: str, name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {choices}, got {value!r}")


def check_positive(owner: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{owner}.{name} must be a number > 0, got {value!r}")


def as_int(owner: str, name: str, value: Any, low: int, high: int) -> int:
    """An integer in ``low..high``; integral floats (JSON ``1e3``) are accepted, bools not."""
    if isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        if not (isinstance(value, float) and math.isfinite(value) and value.is_integer()):
            raise ValueError(f"{owner}.{name} must be an integer, got {value!r}") from None
        number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{owner}.{name} must lie in {low}..{high}, got {number}")
    return number


def as_ints(owner: str, name: str, values: Any, low: int, high: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{owner}.{name} must be a list of integers, got {values!r}")
    values = tuple(values)
    if len(values) > 64:
        raise ValueError(f"{owner}.{name}: {len(values)} values; expected a few")
    return tuple(as_int(owner, name, v, low, high) for v in values)


def estimate_parameters(config: ModelConfig) -> int:
    """Weights of the network ``config`` describes (convolutions only), without building it.

    Why: a checkpoint's config.json is checked against :data:`MAX_PARAMETERS`
    before ``UNetPlusPlus`` allocates anything.
    """
    k, w = 3**config.spatial_dims, config.widths
    total = 0
    for s in range(config.depth + 1):
        for i in range(s, -1, -1):
            j = s - i
            if j == 0:
                source = config.in_channels if i == 0 else w[i - 1]
            else:
                total += w[i + 1] * w[i] * 2**config.spatial_dims  # up-sampling
                source = w[i] * (j + 1)
            total += k * (source * w[i] + w[i] * w[i])
    return total + config.depth * w[0] * config.num_classes


def check_model_scale(config: ModelConfig) -> None:
    from .scale import UNITS

    size = config.pixel_size
    if size and len(size) != config.spatial_dims:
        raise ValueError(
            f"ModelConfig.pixel_size {size} needs {config.spatial_dims} value(s), one per "
            "spatial axis of the model (or none when unknown)"
        )
    if any(not (math.isfinite(s) and s > 0) for s in size):
        raise ValueError(f"ModelConfig.pixel_size must be positive and finite, got {size}")
    if size and config.pixel_unit not in UNITS:
        raise ValueError(
            f"ModelConfig.pixel_unit {config.pixel_unit!r}: give the unit of pixel_size, one "
            f"of {sorted(UNITS)}"
        )
    if not size and config.pixel_unit:
        raise ValueError("ModelConfig.pixel_unit is set but pixel_size is empty; set both")
    d = config.object_diameter
    if d is not None and not (math.isfinite(d) and d > 0):
        raise ValueError(
            f"ModelConfig.object_diameter must be a positive number of pixels (or None), got {d!r}"
        )


def _pixel_sizes(value: Any) -> tuple[float, ...]:
    """A number (one for all axes) or a sequence of numbers as floats; anything else as ``()``,
    which the caller refuses with the message that says what a pixel size is."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (float(value),)
    if isinstance(value, (str, bytes)):
        return ()
    try:
        return tuple(float(s) for s in value)
    except (TypeError, ValueError):
        return ()


def check_predict_scale(config: PredictConfig) -> None:
    from .scale import MAX_ZOOM, MIN_ZOOM, UNITS

    if config.pixel_size is not None:
        given, config.pixel_size = config.pixel_size, _pixel_sizes(config.pixel_size)
        if (
            not config.pixel_size
            or len(config.pixel_size) > 3  # one per spatial axis: Z, Y, X at most
            or any(not (math.isfinite(s) and s > 0) for s in config.pixel_size)
        ):
            raise ValueError(
                "PredictConfig.pixel_size must be 1 to 3 positive, finite values (one per "
                f"spatial axis Z Y X, or one for all), or None when unknown; got {given!r}"
            )
    if config.pixel_unit and config.pixel_unit not in UNITS:
        raise ValueError(
            f"PredictConfig.pixel_unit {config.pixel_unit!r}: use one of {sorted(UNITS)}, or "
            "empty for the model's unit"
        )
    r = config.rescale
    if r is None or r == "auto":
        return
    if isinstance(r, bool) or not isinstance(r, (int, float)):
        raise ValueError(f"PredictConfig.rescale must be a number, 'auto' or None, got {r!r}")
    if not (math.isfinite(r) and MIN_ZOOM <= r <= MAX_ZOOM):
        raise ValueError(
            f"PredictConfig.rescale {r!r} must lie in {MIN_ZOOM:g}..{MAX_ZOOM:g} (0.5 halves "
            "the image: objects twice the training size); use 'auto' to measure it"
        )
    config.rescale = float(r)
