"""How noisy is an image, in the units the network sees? (Immerkaer's estimator, robust.)

Why: a model trained on clean scans fails silently on a noisy one (low-dose CT, a short
exposure). Its heads then agree with each other and are sure of themselves (the shipped
CT model on a scan with 40 HU of noise: liver Dice 0.12, depth disagreement 0.025,
uncertain fraction 0.011), so no output signal of :mod:`image_check` notices. The input
does: the noise level of the normalised image, against the level the model was found to
tolerate (``metrics["image_check"]["noise"]``, measured by
``benchmarks/bench_depth.py noise`` on the model's validation images).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .config import DataConfig
from .nonfinite import NonFiniteError, NonFiniteWarning, non_finite_filler
from .normalization import normalize, to_channels_first

__all__ = ["MAX_PLANES", "noise_level", "plane_noise"]

#: At most this many evenly spaced planes of a stack are measured (their median is kept).
MAX_PLANES = 8
#: Fewer measurable pixels than this in a plane: no estimate (too little to judge).
MIN_PIXELS = 256
#: Immerkaer's kernel: the difference of two Laplacians, blind to flat, sloped and
#: (mostly) edge structure; white noise of standard deviation s gives values of sd 6 s.
_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
#: The median of |N(0, 1)|: turns a median absolute value into a standard deviation.
_MAD = 0.6745


def plane_noise(plane: np.ndarray, clipped: bool) -> float | None:
    """Noise standard deviation of one normalised 2D plane, or None when too little is left.

    The median (not the mean) of the kernel's response: objects' edges and texture are
    a minority of the pixels, so they do not raise it. ``clipped``: the normalisation
    clipped to 0..1, so pixels at or next to a clipped value (CT air and bone outside the
    window) are left out: their noise was cut off.
    """
    from scipy import ndimage

    x = np.asarray(plane, np.float32)
    if x.ndim != 2 or min(x.shape) < 3:
        return None
    response = np.abs(ndimage.convolve(x, _KERNEL, mode="reflect"))[1:-1, 1:-1]
    if clipped:
        inside = (x > 0) & (x < 1)
        inside = ndimage.binary_erosion(inside, np.ones((3, 3), bool))[1:-1, 1:-1]
        response = response[inside]
    if response.size < MIN_PIXELS:
        return None
    return float(np.median(response) / (_MAD * 6.0))


def noise_level(image: Any, data_config: DataConfig) -> float | None:
    """The image's noise (standard deviation, in normalised units), or None if unmeasurable.

    In-plane (the last two spatial axes), the median over up to :data:`MAX_PLANES` evenly
    spaced planes and over the channels, after the model's own normalisation, so the value
    compares with the model's tolerance whatever the camera's units. Non-finite pixels
    are filled as the network's input is (:func:`nonfinite.non_finite_filler`, quietly:
    the prediction has said so): one NaN made the estimate NaN, which the check took
    for "noisier than this model tolerates".
    """
    norm = data_config.normalization
    data = to_channels_first(np.asarray(image), data_config.channel_axis)
    values = []
    for channel in data:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteWarning)
            try:
                channel = non_finite_filler(channel, normalization=norm)(channel)
            except NonFiniteError:  # mostly non-finite: nothing to measure
                continue
        x = normalize(channel, norm)
        if x.ndim < 2:
            continue
        planes = x.reshape(-1, *x.shape[-2:])
        picks = np.unique(np.linspace(0, len(planes) - 1, min(len(planes), MAX_PLANES)).round())
        for i in picks.astype(int):
            value = plane_noise(planes[i], norm.clip and norm.mode != "none")
            if value is not None:
                values.append(value)
    return float(np.median(values)) if values else None
