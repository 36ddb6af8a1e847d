"""NaN and infinite values: one policy for images, losses and weights.

Why a module of its own: a single NaN pixel spreads through every convolution
that sees it (a 10x10 NaN patch turned 26x26 output pixels into NaN, 10 % of
NaN pixels the whole output), and a NaN loss silently turns every weight into
NaN. The policy, applied at one point of training and inference each:

- images: non-finite pixels (NaN, inf, or beyond float32's range, which the
  network would see as inf) are filled with the image's finite median (CT, a fixed
  window: the window's low end, as around a scan is air), with a
  :class:`NonFiniteWarning` that says how many; an image with more than
  :data:`MAX_NON_FINITE_FRACTION` non-finite pixels is refused (there is too little
  left to segment);
- training: a non-finite loss stops the run with :class:`NonFiniteError`, and
  weights that are not all finite are never saved (:func:`all_finite`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .normalization import subsample

if TYPE_CHECKING:
    from .config import NormalizationConfig

__all__ = [
    "MAX_NON_FINITE_FRACTION",
    "NonFiniteError",
    "NonFiniteWarning",
    "all_finite",
    "check_loss",
    "check_weights",
    "count_non_finite",
    "fill_image",
    "fill_non_finite",
    "non_finite_filler",
    "non_finite_names",
]

#: More non-finite pixels than this fraction of an image: refuse it rather than invent it.
MAX_NON_FINITE_FRACTION = 0.5
#: Pixels read at once while counting (a band of rows), so a huge lazy image is never loaded whole.
COUNT_BLOCK_PIXELS = 1 << 20


class NonFiniteWarning(UserWarning):
    """Non-finite pixels were filled (the message says how many and with what)."""


class NonFiniteError(ValueError):
    """Too many non-finite pixels, a non-finite loss, or non-finite weights.

    A ``ValueError`` so that the command line reports it in one line, like other bad input.
    """


def _is_float(array: Any) -> bool:
    return np.dtype(getattr(array, "dtype", np.float64)).kind in "fc"


def _row_blocks(shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Index tuples that cover ``shape`` in blocks of about ``COUNT_BLOCK_PIXELS`` pixels."""
    if not shape:
        return [()]
    for axis in range(len(shape)):  # split the first axis whose sub-blocks are small enough
        inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
        if inner <= COUNT_BLOCK_PIXELS or axis == len(shape) - 1:
            step = max(1, COUNT_BLOCK_PIXELS // max(inner, 1))
            outer = [range(n) for n in shape[:axis]]
            blocks = []
            for lead in np.ndindex(*[len(r) for r in outer]):
                for start in range(0, shape[axis], step):
                    blocks.append((*lead, slice(start, start + step)))
            return blocks  # type: ignore[return-value]
    return [()]


def _bad(array: np.ndarray) -> np.ndarray:
    """Values that are not finite once cast to float32, as the network sees them.

    Why float32: a float64 pixel of 1e300 is finite, but becomes inf in the network input.
    """
    if array.dtype.itemsize > 4:
        with np.errstate(over="ignore"):
            return ~np.isfinite(array.astype(np.float32))
    return ~np.isfinite(array)


def count_non_finite(image: Any) -> int:
    """Number of NaN, infinite or float32-overflowing values, read block by block.

    numpy, dask or zarr: one block of about :data:`COUNT_BLOCK_PIXELS` pixels at a time.
    """
    if not _is_float(image):
        return 0  # integer and boolean images cannot hold NaN
    shape = tuple(int(n) for n in image.shape)
    return sum(int(np.count_nonzero(_bad(np.asarray(image[b])))) for b in _row_blocks(shape))


def fill_non_finite(array: np.ndarray, value: float) -> np.ndarray:
    """``array`` with its non-finite values replaced by ``value`` (a copy only when needed)."""
    if not _is_float(array):
        return array
    bad = _bad(array)
    if not bad.any():
        return array
    out = np.array(array, copy=True)
    out[bad] = value
    return out


def _finite_median(image: Any) -> float:
    """Median of the finite values of a subsample (the same one the percentiles use)."""
    sample = subsample(image)
    sample = sample[~_bad(sample)].astype(np.float64)
    if sample.size == 0:  # the subsample missed every finite value: read it all, blockwise
        shape = tuple(int(n) for n in image.shape)
        parts = [np.asarray(image[b]).ravel() for b in _row_blocks(shape)]
        sample = np.concatenate([p[~_bad(p)] for p in parts]).astype(np.float64)
    return float(np.median(sample))


#: What :func:`_bad` counts, in the messages: a finite float64 of 1e300 is one of them
_KINDS = "non-finite (NaN, infinite or beyond float32's +-3.4e38)"


def non_finite_filler(
    image: Any, what: str = "image", normalization: NormalizationConfig | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Check ``image`` once; return what to apply to each of its tiles before normalising.

    Clean images (all integer ones) get the identity. Otherwise the count is
    reported in a :class:`NonFiniteWarning` and the returned function fills each
    tile's non-finite pixels with the image's finite median, so a NaN pixel can
    neither spread through the network nor skew the normalisation. More than
    :data:`MAX_NON_FINITE_FRACTION` non-finite pixels raise :class:`NonFiniteError`.

    With a fixed intensity window (``normalization.mode == "window"``: CT in Hounsfield
    units) they get the window's low end instead: NaN there is mostly outside a scan's
    field of view, which is air. The median (soft tissue, -31 HU on the shipped CT) made
    the CT model label organs all around a scan masked with NaN.
    """
    count = count_non_finite(image)
    if count == 0:
        return lambda tile: tile
    size = int(np.prod([int(n) for n in image.shape], dtype=np.int64))
    fraction = count / max(size, 1)
    if fraction > MAX_NON_FINITE_FRACTION:
        raise NonFiniteError(
            f"{what} has {count} {_KINDS} pixels out of {size} "
            f"({100 * fraction:.1f} %, more than {100 * MAX_NON_FINITE_FRACTION:.0f} %): there "
            "is too little real data to segment; fix or crop the image (e.g. "
            "np.nan_to_num(image, nan=background_value)), or scale values beyond float32 "
            "into its range (e.g. image / np.abs(image).max())"
        )
    if normalization is not None and normalization.mode == "window":
        fill, source = float(normalization.low), "the intensity window's low end"
    else:
        fill, source = _finite_median(image), "the image's median"
    warnings.warn(
        f"{what} has {count} {_KINDS} pixels ({100 * fraction:.3g} %); "
        f"they were filled with {source} {fill:.6g} (results there are guesses)",
        NonFiniteWarning,
        stacklevel=2,
    )
    return lambda tile: fill_non_finite(tile, fill)


def fill_image(
    image: Any, what: str = "image", normalization: NormalizationConfig | None = None
) -> Any:
    """A whole image with non-finite pixels filled (training: the image is in memory anyway)."""
    return non_finite_filler(image, what, normalization)(np.asarray(image))


def all_finite(state_dict: Mapping[str, Any]) -> bool:
    """True when every floating-point tensor of a model's ``state_dict`` is finite.

    Why: a diverged run (too high a learning rate, a NaN pixel) turns weights into
    NaN while everything else looks normal; such weights must never be saved.
    """
    import torch

    for value in state_dict.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                return False
    return True


def non_finite_names(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the tensors with NaN or infinite values (for error messages)."""
    import torch

    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


def check_loss(loss: Any, step: int, lr: float) -> None:
    """Stop a diverged run before its NaN gradients reach the weights."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteError(
            f"training diverged at step {step}: the loss is {value} (learning rate {lr:g}); "
            "lower the learning rate (the Train dock's 'Learning rate', the command line's "
            "--lr, TrainConfig.learning_rate; 1e-3 is the usual) or "
            "check the images for extreme values. Checkpoints saved before (best/, last/) "
            "keep the last finite weights"
        )


def check_weights(net: Any, name: str) -> None:
    """Never write NaN or infinite weights as ``best/`` or ``last/``."""
    state = net.state_dict()
    if not all_finite(state):
        bad = non_finite_names(state)
        raise NonFiniteError(
            f"refusing to save {name}/: {len(bad)} weight tensor(s) are NaN or infinite "
            f"(e.g. {bad[0]}): the run diverged; lower the learning rate and train again"
        )
