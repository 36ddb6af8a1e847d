"""The per-image numbers the image check judges, from one pass's probabilities.

Why apart from :mod:`image_check`: these are measurements (depth and flip
disagreement, uncertain fraction, object size, scale gain, half-size ratio) and the
parts of an image they are measured on (:func:`check_region`, :func:`half_size`);
:mod:`image_check` judges them against thresholds calibrated per model, and
:func:`disagreement.check_image` runs the predictions and calls both.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .config import DataConfig, ModelConfig, NormalizationConfig
from .disagreement import class_spread, disagreement_map
from .nonfinite import NonFiniteWarning, fill_image
from .rescaled import measure_diameters

__all__ = [
    "AIR_HU",
    "CHECK_PLANES",
    "CHECK_SIDE",
    "DOUBLE_MAX",
    "check_region",
    "double_size",
    "half_size",
    "image_signals",
    "intensity_signals",
    "labels_anything",
    "TISSUE_PEAKS_HU",
    "tissue_shift",
]

#: Added to both sides of the scale probe's ratio, so images where the heads agree
#: almost perfectly at both sizes (ratio of two tiny numbers) do not count as a gain.
_PROBE_FLOOR = 0.002


def _uncertain(prob: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels whose deepest prediction is far from certain (top class below 0.75)."""
    confidence = np.maximum(prob, 1 - prob) if num_classes == 1 else prob.max(axis=0)
    return confidence < 0.75


def _at_model_scale(prob: np.ndarray, dims: int, zoom: float) -> np.ndarray:
    """One head's probabilities (on the image's grid) resampled by ``zoom`` back to the grid
    the model predicted them on, where its uncertain fraction was calibrated.

    Why: a result resampled back to a finer grid is interpolated between the model's
    pixels, so every class edge gains a band of blended, unsure values. The CT model's held-back
    slices at 1 mm (pixel size given) had an uncertain fraction of 0.027-0.029 against
    0.014-0.018 natively (limit 0.029): the check warned on a 0.8 mm scan it segmented well
    (benchmarks/bench_ct_user.py grid).
    """
    if zoom == 1.0:
        return prob
    from .scale import resample

    axes = tuple(range(prob.ndim - dims, prob.ndim))  # the model's axes (``zoom``: their mean)
    return resample(prob, (zoom,) * dims, axes, order=1)


#: Added to both shares of :func:`_found_fraction` in ``found_gain``: a crop that holds
#: nothing at its own size and a few stray pixels at twice it is no gain.
_FOUND_FLOOR = 0.01


def _found_fraction(prob: np.ndarray, num_classes: int) -> float:
    """Share of the pixels the deepest head labels as a class (not background)."""
    if num_classes > 1:
        return float((prob.argmax(axis=0) > 0).mean())
    return float((prob > 0.5).mean())


def labels_anything(prob: Any, num_classes: int, threshold: float = 0.5) -> bool:
    """Whether one head's probabilities (class axis first for several classes) label any
    pixel as a class, as :func:`postprocess.probabilities_to_labels` would; read in blocks
    along the first spatial axis (about 4 M values each), so a big result (or a zarr on
    disk) is never read whole."""
    shape = tuple(int(n) for n in np.shape(prob))
    spatial = shape[1:] if num_classes > 1 else shape
    if not spatial or 0 in spatial:
        return False
    per_row = max(1, int(np.prod(shape)) // spatial[0])
    step = max(1, (1 << 22) // per_row)
    for start in range(0, spatial[0], step):
        rows = slice(start, start + step)
        if num_classes > 1:
            p = np.asarray(prob[:, rows])
            if (p[1:].max(axis=0) > p[0]).any():
                return True
        elif (np.asarray(prob[rows]) > threshold).any():
            return True
    return False


def _object_diameter(
    prob: np.ndarray, model_config: ModelConfig, data_config: DataConfig, to_model: float = 1.0
) -> float | None:
    """Median diameter of the predicted objects in model-grid pixels (``to_model``: that
    grid's pixels per pixel of ``prob``); ``None`` without objects.

    Specks are kept here, unlike in ``rescale="auto"``'s measurement: a first pass that
    shatters large objects leaves specks among the fragments, and the check reads them
    as such (the half-size ratio); dropped, the check missed 2 of 14 nuclei images at 2x
    and 3 bad blurred or darkened results (benchmarks/bench_depth.py warning).
    """
    found = measure_diameters(prob, model_config, data_config) * to_model
    return float(np.median(found)) if found.size else None


def image_signals(
    probs: Mapping[int, Any],
    flipped: np.ndarray | None,
    model_config: ModelConfig,
    data_config: DataConfig,
    half: Mapping[int, Any] | None = None,
    zoom: float = 1.0,
    double: Mapping[int, Any] | None = None,
) -> dict[str, float | None]:
    """The per-image signals of :func:`check_image` from one pass (and optional probes).

    ``flipped``: the deepest head's probabilities of the flipped image, flipped back.
    ``half``: every depth's probabilities of the image at half size; ``scale_gain``
    is how much better the heads agree there (> 1: objects look larger than in training;
    below a model's calibrated ``scale_gain_low``: already smaller than in training).
    ``double``: every depth's probabilities of the image at twice its size (an image too
    small for ``half``, :func:`double_size`); ``found_gain`` is how much more of it the
    deepest head labels there (a share of the pixels at each size).
    ``zoom``: the zoom the pass ran at (its probabilities are back on the image's grid),
    so object sizes are compared with the training size at the model's scale. One depth
    (a pruned pass) gives no depth disagreement, and a pruned pass shallower than the
    model no uncertain fraction (its threshold is the deepest head's).
    """
    deepest = np.asarray(probs[max(probs)], np.float32)
    c = model_config.num_classes
    # the uncertain fraction's threshold is calibrated on the model's deepest head; a
    # shallower pruned head is always less sure (the EM sample at L1: 0.141 > 0.127)
    pruned = max(probs) < model_config.depth
    dims = model_config.spatial_dims
    signals: dict[str, float | None] = {
        "depth_disagreement": (
            float(disagreement_map(probs, c).mean()) if len(probs) > 1 else None
        ),
        "uncertain_fraction": (
            None if pruned else float(_uncertain(_at_model_scale(deepest, dims, zoom), c).mean())
        ),
        "flip_disagreement": None,
        "object_diameter": None,
        "size_ratio": None,
        "scale_gain": None,
        "half_size_ratio": None,
        "found_gain": None,
    }
    if double is not None:
        found = _found_fraction(deepest, c)
        at_double = _found_fraction(np.asarray(double[max(double)], np.float32), c)
        signals["found_gain"] = (at_double + _FOUND_FLOOR) / (found + _FOUND_FLOOR)
    if half is not None and signals["depth_disagreement"] is not None:
        at_half = float(disagreement_map(half, c).mean())
        signals["scale_gain"] = ((signals["depth_disagreement"] or 0.0) + _PROBE_FLOOR) / (
            at_half + _PROBE_FLOOR
        )
    if flipped is not None:
        signals["flip_disagreement"] = float(class_spread(np.stack([deepest, flipped]), c).mean())
    expected = getattr(model_config, "object_diameter", None)  # the "scale" engineer's field
    if expected:
        measured = _object_diameter(deepest, model_config, data_config, zoom)
        signals["object_diameter"] = measured
        signals["size_ratio"] = None if measured is None else measured / float(expected)
        signals["half_size_ratio"] = _half_size_ratio(half, measured, model_config, data_config)
    return signals


def _half_size_ratio(
    half: Mapping[int, Any] | None,
    measured: float | None,
    model_config: ModelConfig,
    data_config: DataConfig,
) -> float | None:
    """Twice the objects' diameter found at half size over the diameter at full size.

    Why: objects much larger than in training are not seen as large ones; the model
    splits each into fragments about its training size (537 pieces for 23 nuclei on
    one user image), so the measured size looks normal. At half size the same objects
    come out whole: about 2x the fragments' size. Near 1 (or below: small objects
    fade at half size) on images like the training data.
    """
    if half is None or not measured:
        return None
    half_deepest = np.asarray(half[max(half)], np.float32)
    whole = _object_diameter(half_deepest, model_config, data_config, to_model=2.0)
    return None if whole is None else whole / measured


#: Where air reads in Hounsfield units, and the band searched for it: padding outside a
#: scanner's field of view (-2048, -3024) lies below it, lung and bowel gas inside it.
AIR_HU = -1000.0
AIR_BAND = (-1300.0, -600.0)
#: A class (or the air) measured on fewer pixels than this gives no value.
INTENSITY_MIN_PIXELS = 50


def intensity_signals(
    image: Any,
    prob: Any,
    model_config: ModelConfig,
    data_config: DataConfig,
    reference: Mapping[str, float],
    threshold: float = 0.5,
) -> dict[str, float | None]:
    """How far the image's classes read from the training's, in the model's units (HU for CT).

    ``reference``: the model's calibration (``metrics["image_check"]``), whose
    ``intensity_<class>`` is the median intensity of that class in its training data. Per
    class found (the deepest head's labels ``prob``), ``shift_<class>`` is its median here
    minus that; ``intensity_shift`` the median of those; ``air_shift`` how far the air of a
    CT (the peak of the values in :data:`AIR_BAND`, moved by ``intensity_shift`` when that is
    beyond its limit) reads from -1000 HU. Empty for a model without a fixed
    intensity window or without the references, or an image with channels.

    Why: on a contrast-enhanced CT (organs 40-200 HU brighter, a portal-venous phase) the
    CT model's heads agree and are sure while its kidneys are lost (Dice 0.77 -> 0.08), so no
    other signal fired (benchmarks/bench_ct_user.py contrast). The organs it still finds read
    brighter than in training; air tells a contrast phase (air in place) from values shifted
    as a whole (a RescaleIntercept missing or wrong: air moves with the organs).
    """
    norm = data_config.normalization
    names = [n for n in model_config.class_names if f"intensity_{n}" in reference]
    if norm.mode != "window" or data_config.channel_axis is not None:
        return {}
    peaks = {"tissue_shift": tissue_shift(image)} if norm.low < 0 else {}
    if not names:  # no class references (a model without them): the histogram alone
        return peaks
    values = np.asarray(image, np.float32)
    p = np.asarray(prob, np.float32)
    if model_config.num_classes > 1:
        labels, ids = p.argmax(axis=0), list(range(model_config.num_classes))
    else:
        labels, ids = (p > threshold).astype(np.int64), [1]
    if labels.shape != values.shape:
        return peaks
    out: dict[str, float | None] = dict(peaks)
    shifts = []
    for k in ids:
        name = model_config.class_names[k if model_config.num_classes > 1 else 0]
        if name not in names:
            continue
        inside = values[labels == k]
        inside = inside[np.isfinite(inside)]
        if inside.size < INTENSITY_MIN_PIXELS:
            out[f"shift_{name}"] = None
            continue
        one = float(np.median(inside)) - float(reference[f"intensity_{name}"])
        out[f"shift_{name}"] = one
        shifts.append(one)
    shift = float(np.median(shifts)) if shifts else None
    out["intensity_shift"] = shift
    out["air_shift"] = None
    if norm.low < 0 and shift is not None:  # a window in Hounsfield units (CT)
        # looked for where it would be if all values had moved with the classes (a scan
        # without its RescaleIntercept has air at +24, its padding at -2000)
        limit = reference.get("intensity_shift")
        moved = shift if limit is not None and abs(shift) > limit else 0.0
        low, high = AIR_BAND[0] + moved, AIR_BAND[1] + moved
        air = values[(values >= low) & (values <= high)]
        if air.size >= INTENSITY_MIN_PIXELS:  # the peak: lung (-850) is a minority, noise even
            counts, edges = np.histogram(air, bins=np.arange(low, high + 10, 10))
            peak = int(np.argmax(np.convolve(counts, np.ones(3), mode="same")))
            out["air_shift"] = float(edges[peak] + 5.0) - AIR_HU
    return out


#: Where a CT's histogram peaks in Hounsfield units: air, fat, soft tissue (muscle, organs).
TISSUE_PEAKS_HU = (-1000.0, -100.0, 40.0)
#: The least share of the values (per 10 HU, smoothed over 50 HU) a peak must hold to count.
_PEAK_MIN_SHARE = 0.004


def tissue_shift(image: Any, span: float = 2000.0) -> float | None:
    """How far (HU, to 10) the image's own air / fat / soft-tissue histogram peaks sit from
    :data:`TISSUE_PEAKS_HU`, or None when its histogram does not show at least two of them
    (no CT, or too few values).

    Why: values shifted down by 200-1024 HU (a RescaleIntercept applied twice, data stored
    as HU - 1024) put every organ below the CT model's window: it finds nothing, so no organ
    median can say how far they moved, and the check's remedy named the image's scale. The
    histogram of any abdominal slice still shows its three peaks, moved as a whole: the
    shift is the one (within ``span``) that puts the most of them back (each peak's share
    counted by its square root, so a field of air does not outvote fat and soft tissue).
    """
    from .normalization import subsample

    values = np.asarray(subsample(image), np.float64)
    values = values[np.isfinite(values)]
    if values.size < 1000:
        return None
    low = float(values.min())
    if np.mean(values == low) > 0.01:  # a constant padding outside the field of view
        values = values[values > low]
    if values.size < 1000:
        return None
    start = np.floor(values.min() / 10) * 10
    counts, _ = np.histogram(values, bins=np.arange(start, values.max() + 20, 10))
    share = np.convolve(counts / values.size, np.ones(5) / 5, mode="same")

    def at(hu: np.ndarray) -> np.ndarray:
        index = np.round((hu - start) / 10).astype(int)
        inside = (index >= 0) & (index < share.size)
        return np.where(inside, share[np.clip(index, 0, share.size - 1)], 0.0)

    shifts = np.arange(-span, span + 10, 10)
    found = np.stack([at(hu + shifts) for hu in TISSUE_PEAKS_HU])  # (peaks, shifts)
    score = np.sqrt(found).sum(axis=0)
    best = int(np.argmax(score))
    # a peak stands above the histogram's floor and 3x above a flat one's share per bin
    least = max(_PEAK_MIN_SHARE, 3.0 / share.size)
    if int((found[:, best] >= least).sum()) < 2:
        return None
    return float(shifts[best])


#: The check keeps every depth's probabilities (and the flipped and half-size passes) in
#: memory: 1.4 GB and 5 minutes for a 4096 x 4096 EM plane on 2 cores, growing with the image.
#: So it reads a central region of at most this side per spatial axis (4 Mpx in 2D, 4 M voxels
#: in 3D) and at most :data:`CHECK_PLANES` evenly spaced planes of a stack.
CHECK_SIDE = {2: 2048, 3: 160}
CHECK_PLANES = 8


def check_region(
    shape: Sequence[int], spatial_dims: int, channel_axis: int | None
) -> tuple[slice, ...] | None:
    """The part of an image the check reads (slices per axis), or None for all of it."""
    from .scale import spatial_axes

    ndim = len(shape)
    spatial = spatial_axes(ndim, spatial_dims, channel_axis)
    channel = None if channel_axis is None else channel_axis % ndim
    side = CHECK_SIDE.get(spatial_dims, CHECK_SIDE[3])
    region = []
    for axis, n in enumerate(shape):
        if axis in spatial:
            start = max(0, (n - side) // 2)
            region.append(slice(start, start + min(n, side)))
        elif axis == channel:
            region.append(slice(0, n))
        else:  # leading Z / T of a 2D model's stack
            region.append(slice(0, n, -(-n // CHECK_PLANES)))
    small = all(len(range(n)[r]) == n for n, r in zip(shape, region, strict=True))
    return None if small else tuple(region)


def half_size(
    image: Any,
    spatial_dims: int,
    channel_axis: int | None,
    normalization: NormalizationConfig | None = None,
) -> np.ndarray | None:
    """The image at half size along its spatial axes (anti-aliased), or None when too small;
    its NaN filled as the segmentation fills them (``normalization``: a CT's window)."""
    return _resized(image, 0.5, spatial_dims, channel_axis, normalization)


#: :func:`double_size` enlarges only images of at most this many pixels (voxels) per plane
#: (volume): a thin strip or a flat stack of large planes would cost four (eight) times itself.
DOUBLE_MAX = 2**16


def double_size(
    image: Any,
    spatial_dims: int,
    channel_axis: int | None,
    normalization: NormalizationConfig | None = None,
) -> np.ndarray | None:
    """The image at twice its size along its spatial axes, for an image too small to halve
    (:func:`half_size` gives None: a side under 64 px) and small enough to enlarge
    (:data:`DOUBLE_MAX`), else None.

    Why: the half-size probe is what tells "objects smaller than in training", and a small
    image cannot have it: a CT at 6 mm for a 3 mm model (50 x 61 px) was called like the
    training data while the model found no organ in it (benchmarks/bench_depth.py warning).
    Enlarged, such an image costs four times its few pixels.
    """
    array = np.asarray(image)
    channel = None if channel_axis is None else channel_axis % array.ndim
    spatial = [n for a, n in enumerate(array.shape) if a != channel][-spatial_dims:]
    if int(np.prod(spatial)) > DOUBLE_MAX or min(spatial) >= 64:  # 64: halved instead
        return None
    return _resized(array, 2.0, spatial_dims, channel_axis, normalization)


def _resized(
    image: Any,
    factor: float,
    spatial_dims: int,
    channel_axis: int | None,
    normalization: NormalizationConfig | None,
) -> np.ndarray | None:
    """The image zoomed by ``factor`` (0.5: anti-aliased; 2: linear), its NaN filled; None
    when a zoomed side would be under 32 px (a UNet++ of depth 4 pools it to 2 px)."""
    from skimage.transform import resize

    array = np.asarray(image)
    ndim = array.ndim
    channel = None if channel_axis is None else channel_axis % ndim
    spatial = [a for a in range(ndim) if a != channel][-spatial_dims:]
    shape = [int(s * factor) if a in spatial else s for a, s in enumerate(array.shape)]
    if min(shape[a] for a in spatial) < 32:
        return None
    with warnings.catch_warnings():  # the segmentation's own pass reported them already
        warnings.simplefilter("ignore", NonFiniteWarning)
        array = fill_image(array, normalization=normalization)  # else smoothing spreads NaN
    sigma = [0.5 if a in spatial else 0.0 for a in range(ndim)]
    return resize(
        array.astype(np.float32),
        shape,
        order=1,
        anti_aliasing=factor < 1,
        anti_aliasing_sigma=sigma if factor < 1 else None,
        preserve_range=True,
    ).astype(np.float32)
