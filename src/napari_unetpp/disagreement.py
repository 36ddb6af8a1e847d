"""What the heads' disagreement says: which depth holds, and when to worry.

Why: a deeply supervised UNet++ gives four predictions of one image from one pass.
Where they disagree the model is unsure (:func:`disagreement_map`); how much each
depth departs from the deepest *on the user's image* says whether the depth chosen
on the validation set still holds there (:func:`advise_depth`); and depth
disagreement, flip disagreement, the fraction of uncertain pixels and the size of
the objects against the model's training scale together say "this image is unlike
the training data" before the user trusts a result (:func:`check_image`: it runs the
predictions here; the signals are in :mod:`image_signals`, the thresholds and verdict in
:mod:`image_check`).
Where to label next (the deepest head's doubt, ranked in blocks)
is :mod:`label_next`.

Everything takes per-depth probabilities as :func:`inference.predict` returns
them (``{depth: (C?, *shape)}``), so the maps come from the pass that produced
the segmentation. Thresholds are calibrated on shifted copies of the zoo's
held-back splits (``benchmarks/bench_depth.py``; numbers in docs/benchmarks.md).

Example
-------
>>> import numpy as np
>>> probs = {1: np.full((8, 8), 0.2, "float32"), 2: np.full((8, 8), 0.6, "float32")}
>>> round(float(disagreement_map(probs, num_classes=1).max()), 3)
0.4
"""

from __future__ import annotations

import warnings
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import DataConfig, PredictConfig
from .events import Stopper
from .postprocess import label_threshold

if TYPE_CHECKING:
    from .image_check import ImageCheck

__all__ = [
    "ADVICE_MIN_PIXELS",
    "DepthAdvice",
    "advise_depth",
    "CHECK_LIMIT",
    "check_image",
    "check_prediction",
    "check_result",
    "class_spread",
    "disagreement_map",
    "result_disagreement",
    "zoom_used",
]


def class_spread(stack: np.ndarray, num_classes: int) -> np.ndarray:
    """Range over axis 0 (depths), max over classes when the maps carry a class axis."""
    spread = stack.max(axis=0) - stack.min(axis=0)
    return spread if num_classes == 1 else spread.max(axis=0)


def disagreement_map(probs: Mapping[int, Any], num_classes: int) -> np.ndarray:
    """Per pixel, how far the depths' probabilities spread (0 = all agree, 1 = opposite).

    For several classes, the largest spread over the classes. Needs two depths
    or more (a pruned prediction has one: predict all depths in one pass).
    """
    if len(probs) < 2:
        raise ValueError(
            f"a disagreement map needs two depths or more, got {sorted(probs)}; predict all "
            "depths in one pass (leave PredictConfig.depths and pruned_depth unset)"
        )
    stack = np.stack([np.asarray(probs[d], np.float32) for d in sorted(probs)])
    return class_spread(stack, num_classes).astype(np.float32)


# --------------------------------------------------------------------------- advice


def result_disagreement(probs: Mapping[int, Any], num_classes: int) -> np.ndarray | None:
    """The disagreement map of one prediction, from the pass that made it: an adaptive
    run's own (``AdaptiveResult.disagreement``: the heads it computed), else the range of
    its heads (:func:`disagreement_map`); None for one head (a pruned run).

    Why one function: ``predict --disagreement`` and the Segment dock show the same map.
    """
    own = getattr(probs, "disagreement", None)
    if own is not None:
        return np.asarray(own)
    return disagreement_map(probs, num_classes) if len(probs) > 1 else None


@dataclass
class DepthAdvice:
    """Each depth's agreement with the deepest on this image, and the depth that holds."""

    agreement: dict[int, float]
    recommended: int | None
    suggested: int
    tolerance: float
    message: str

    @property
    def departs(self) -> bool:
        """Whether the recommended depth labels unlike the deepest beyond the tolerance."""
        agreement = self.agreement.get(self.recommended) if self.recommended else None
        return agreement is not None and agreement < 1 - self.tolerance


#: Below this many pixels (32 x 32) the depths' agreement is too coarse to advise a depth.
ADVICE_MIN_PIXELS = 1024


def advise_depth(
    probs: Mapping[int, Any],
    num_classes: int,
    recommended: int | None = None,
    tolerance: float = 0.02,
    threshold: float = 0.5,
) -> DepthAdvice:
    """Without labels: how far each depth's labels depart from the deepest's on this image.

    ``agreement[d]`` is the fraction of pixels where depth ``d`` labels as the
    deepest does. ``suggested`` is the shallowest depth whose agreement is at
    least ``1 - tolerance``. When the ``recommended`` depth (the card's, chosen
    on the validation set) departs more than that, the message says so and
    names the depth that holds on this image.
    """
    deepest = max(probs)

    def labels(d: int) -> np.ndarray:
        p = np.asarray(probs[d])
        return p > threshold if num_classes == 1 else p.argmax(axis=0)

    reference = labels(deepest)
    agreement = {d: float((labels(d) == reference).mean()) for d in sorted(probs)}
    suggested = min(d for d, a in agreement.items() if a >= 1 - tolerance)
    if reference.size < ADVICE_MIN_PIXELS:  # 2 pixels of 64 are 3 %: no evidence either way
        suggested = recommended if recommended in agreement else deepest
        message = (
            f"the image is too small ({reference.size} pixels) to judge the depths on it: "
            f"keeping L{suggested}"
        )
    elif recommended is None or recommended not in agreement:
        message = (
            f"on this image L{suggested} labels as L{deepest} does on "
            f"{100 * agreement[suggested]:.1f}% of the pixels (tolerance "
            f"{100 * tolerance:.1f}%)"
        )
    elif agreement[recommended] >= 1 - tolerance:
        message = (
            f"the recommended depth L{recommended} holds on this image: it labels as "
            f"L{deepest} on {100 * agreement[recommended]:.1f}% of the pixels"
        )
    else:
        differ, allowed = 100 * (1 - agreement[recommended]), 100 * tolerance
        # as many decimals as show it above the tolerance: "2.0% differ, tolerance 2.0%"
        # read as a contradiction (QA session 13)
        places = next((p for p in range(1, 5) if round(differ, p) > round(allowed, p)), 4)
        message = (
            f"the recommended depth L{recommended} departs from L{deepest} on this "
            f"image ({differ:.{places}f}% of the pixels differ, "
            f"tolerance {allowed:.{places}f}%): use L{suggested} here"
        )
    return DepthAdvice(agreement, recommended, suggested, tolerance, message)


# --------------------------------------------------------------------------- the check


def check_image(
    model: Any,
    image: Any,
    data_config: DataConfig,
    predict_config: PredictConfig | None = None,
    *,
    flip: bool = True,
    scale_probe: bool = True,
    recommended: int | None = None,
    tolerance: float = 0.02,
    thresholds: Mapping[str, float] | None = None,
    stopper: Stopper | None = None,
) -> Generator[Any, None, tuple[ImageCheck | None, dict[int, Any]]]:
    """Predict every depth (and the deepest on the flipped image), then judge the image.

    A generator of :class:`inference.PredictEvent` (every pass), returning the
    :class:`image_check.ImageCheck` and the per-depth probabilities (so the caller can show
    the segmentation it just checked). ``flip`` adds a pass on the mirrored image; the rest
    is :func:`check_prediction`'s (``scale_probe``, ``recommended``, ``thresholds``).
    Stopped through ``stopper``, it judges nothing and returns ``(None, probs)``: the
    tiles not yet predicted are empty, and a verdict on them would be a false "unlike the
    training data".
    """
    from .inference import predict

    if not 0 <= tolerance <= 1:  # NaN too: checked before the passes, not after them
        raise ValueError(
            f"the depth advice's tolerance must lie in [0, 1] (a fraction of the pixels, "
            f"e.g. 0.02), got {tolerance}"
        )
    config = _check_config(predict_config)
    probs = yield from predict(model, image, config, data_config, stopper=stopper)
    flipped = None
    if flip and probs and getattr(probs, "complete", True):
        axis = (
            -1
            if data_config.channel_axis is None
            or data_config.channel_axis % np.ndim(image) != np.ndim(image) - 1
            else -2
        )
        mirrored = np.flip(np.asarray(image), axis=axis)
        other = yield from predict(
            model, mirrored, config.replace(pruned_depth=max(probs)), data_config, stopper=stopper
        )
        if other:
            flipped = np.flip(np.asarray(other[max(probs)]), axis=-1)
    check = yield from check_prediction(
        model,
        image,
        probs,
        data_config,
        config,
        flipped=flipped,
        scale_probe=scale_probe,
        recommended=recommended,
        tolerance=tolerance,
        thresholds=thresholds,
        stopper=stopper,
    )
    return check, dict(probs)


#: Per-depth probabilities larger than this (values) are not checked after a segmentation:
#: the signals hold several float32 copies of them (see :func:`check_prediction`).
CHECK_LIMIT = 2**26


def _check_config(predict_config: PredictConfig | None) -> PredictConfig:
    """Every depth in one pass, no adaptive depth, no TTA: the signals compare the heads."""
    return (predict_config or PredictConfig()).replace(
        depths=(), pruned_depth=None, adaptive_depth=False, tta=False
    )


def zoom_used(probs: Any) -> float:
    """The zoom a prediction ran at (``PredictResult.scale``) as one factor, 1 if none."""
    from .scale import mean_zoom

    return mean_zoom((getattr(probs, "scale", None) or {}).get("zoom") or [1.0])


def check_prediction(
    model: Any,
    image: Any,
    probs: Mapping[int, Any],
    data_config: DataConfig,
    predict_config: PredictConfig | None = None,
    *,
    flipped: np.ndarray | None = None,
    scale_probe: bool = True,
    recommended: int | None = None,
    tolerance: float = 0.02,
    thresholds: Mapping[str, float] | None = None,
    stopper: Stopper | None = None,
    found: bool | None = None,
) -> Generator[Any, None, ImageCheck | None]:
    """Judge an image from a prediction already made (a segmentation's own pass).

    Why: the depth signals, the uncertain fraction and the object size come free with
    the pass that produced the labels; only the scale probe costs more (every depth
    once more at half size: a quarter of the pixels), so every result can be checked,
    not only those a user thinks to check. The probe runs only when the prediction ran
    at the image's own scale: a pixel size or rescale already put the objects at the
    model's scale, and their measured size is then corrected by the zoom used.

    A generator of the probe's :class:`inference.PredictEvent`, returning the
    :class:`image_check.ImageCheck`, or None when ``probs`` is partial or the stopper was
    set (a verdict on tiles never predicted would be a false "unlike the training data").
    ``flipped``: the deepest head on the mirrored image
    (:func:`check_image`). ``recommended``: the card's depth (``metrics["best_depth"]``),
    for the depth advice. ``thresholds``: the model's calibration (a checkpoint's
    ``metrics["image_check"]``, see :func:`image_check.calibrate`); missing signals fall
    back to :data:`image_check.THRESHOLDS`. ``found``: whether the whole result labels
    any class pixel (:func:`check_result` knows it when ``probs`` is a region of it);
    None: read from ``probs``. A result without one is called unlike the training data,
    :func:`image_check.empty_result_check` saying why first.
    """
    from .image_check import (
        THRESHOLDS,
        ImageCheck,
        empty_result_check,
        flat_image_check,
        judge,
        no_classes_here,
        tiny_image_check,
        units_image_check,
        units_problem,
        values_shifted,
    )
    from .image_signals import (
        double_size,
        half_size,
        image_signals,
        intensity_signals,
        labels_anything,
    )
    from .inference import predict
    from .normalization import contrast_problem, repaired

    def stopped() -> bool:
        return stopper is not None and stopper.stopped

    if stopped() or not getattr(probs, "complete", True):
        return None
    problem = contrast_problem(image, data_config.normalization)
    if problem is not None:
        return flat_image_check(problem)
    if (units := units_problem(image, data_config.normalization)) is not None:
        return units_image_check(units)
    config = _check_config(predict_config)
    threshold = label_threshold(model.config, config.threshold)
    classes = model.config.num_classes
    tiny = tiny_image_check(int(np.size(probs[max(probs)])) // (classes if classes > 1 else 1))
    if tiny is not None:
        if len(probs) > 1:
            tiny.advice = advise_depth(probs, classes, recommended, tolerance, threshold)
        return tiny
    deepest = max(probs)
    if found is None:
        found = labels_anything(probs[deepest], classes, threshold)
    zoom = zoom_used(probs)
    half = None
    # camera defects repaired before halving, which smears hot pixels past recognition
    with warnings.catch_warnings():  # the segmentation's own pass told the user already
        warnings.simplefilter("ignore")
        whole = repaired(image, data_config.normalization, data_config.channel_axis)
    norm = data_config.normalization
    small = half_size(whole, model.config.spatial_dims, data_config.channel_axis, norm)
    at_scale = config.replace(pixel_size=None, pixel_unit="", rescale=None)
    if scale_probe and zoom == 1.0 and small is not None:
        half = yield from predict(model, small, at_scale, data_config, stopper=stopper)
    double = None  # an image too small to halve is probed at twice its size instead
    large = (
        double_size(whole, model.config.spatial_dims, data_config.channel_axis, norm)
        if scale_probe and zoom == 1.0 and small is None
        else None
    )
    if large is not None:
        double = yield from predict(model, large, at_scale, data_config, stopper=stopper)
    if stopped():
        return None
    signals = image_signals(
        probs, flipped, model.config, data_config, half or None, zoom=zoom, double=double or None
    )
    signals["noise"] = _input_noise(model, whole, probs, data_config)  # not the heads'
    limits = {**THRESHOLDS, **(thresholds or {})}
    signals.update(
        intensity_signals(image, probs[deepest], model.config, data_config, limits, threshold)
    )
    verdict, reasons, remedies = judge(signals, limits, zoom=zoom, auto=config.rescale == "auto")
    # the heads agree on nothing and are sure of it (fewer unsure pixels than the zoo
    # models' own limit): told first, whatever else fired. A model unsure everywhere (a
    # few training steps) finds nothing on its own training data too: not the image's fault
    unsure = signals.get("uncertain_fraction")
    if not found and (unsure is None or unsure <= THRESHOLDS["uncertain_fraction"]):
        empty = empty_result_check(model.config.class_names, data_config.normalization, deepest)
        none_here = None if verdict else no_classes_here(signals, model.config.class_names)
        if none_here is not None:  # a CT in HU without this model's organs: not its fault
            none_here.advice = _advice(probs, model, recommended, tolerance, threshold)
            return none_here
        verdict, reasons = True, empty.reasons + reasons
        if values_shifted(signals, limits) is not None:
            pass  # the histogram says why nothing was found: its remedy alone, not the scale
        elif (signals.get("found_gain") or 0.0) > limits["found_gain"]:
            # found at twice the size: the scale explains the empty result, so its rescale
            # goes first (not "check the intensities", which sent a 6 mm CT astray)
            remedies = remedies + [r for r in empty.remedies if r not in remedies]
        else:
            remedies = empty.remedies + [r for r in remedies if r not in empty.remedies]
    advice = _advice(probs, model, recommended, tolerance, threshold)
    return ImageCheck(signals, verdict, reasons, remedies, advice)


def _advice(
    probs: Mapping[int, Any],
    model: Any,
    recommended: int | None,
    tolerance: float,
    threshold: float,
) -> DepthAdvice | None:
    """The depth advice of a check (none for a single depth)."""
    if len(probs) < 2:
        return None
    return advise_depth(probs, model.config.num_classes, recommended, tolerance, threshold)


def _input_noise(
    model: Any, image: Any, probs: Mapping[int, Any], data_config: DataConfig
) -> float | None:
    """The noise of what the network saw (:func:`noise.noise_level`): the model's grey
    input, resampled by the zoom the pass ran at and smoothed as it was (a noisy 1 mm CT is
    smoothed before it is shrunk to a 3 mm model's grid, and the model judges that)."""
    from . import scale as S
    from .noise import noise_level
    from .normalization import as_model_input

    axis = data_config.channel_axis
    grey, was_rgb = as_model_input(image, model.config.in_channels, axis)
    axis = None if was_rgb else axis
    scale = getattr(probs, "scale", None) or {}
    zoom = scale.get("zoom")
    if zoom and any(float(z) != 1.0 for z in zoom):
        axes = S.spatial_axes(np.ndim(grey), model.config.spatial_dims, axis)
        sigma = scale.get("smoothing_sigma")  # as the pass smoothed it (rescaled.model_grid)
        grey = S.resample(
            np.asarray(grey), zoom, axes, sigma=sigma if sigma and any(sigma) else None
        )
    return noise_level(grey, data_config.replace(channel_axis=axis))


def check_result(
    model: Any,
    image: Any,
    probs: Mapping[int, Any],
    data_config: DataConfig,
    predict_config: PredictConfig | None,
    metrics: Mapping[str, Any],
    stopper: Stopper | None = None,
) -> Generator[Any, None, ImageCheck | None]:
    """:func:`check_prediction` with the model's own calibration and recommended depth
    (its checkpoint's ``metrics``), as the Segment dock and ``predict`` check each result.

    A big image is judged on the region ``info --on`` reads (:func:`image_signals.check_region`:
    a central block of a few evenly spaced planes), so a whole CT scan is checked too;
    None when even that holds more than :data:`CHECK_LIMIT` values per depth.
    """
    from .image_signals import labels_anything

    part_image, part = _check_part(model, image, probs, data_config)
    if np.size(part[max(part)]) > CHECK_LIMIT:
        return None
    found = None  # whether the whole result labels anything, when a region of it is judged
    if part is not probs:
        threshold = label_threshold(model.config, _check_config(predict_config).threshold)
        found = labels_anything(probs[max(probs)], model.config.num_classes, threshold)
    image, probs = part_image, part
    return (
        yield from check_prediction(
            model,
            image,
            probs,
            data_config,
            predict_config,
            recommended=metrics.get("best_depth"),
            thresholds=metrics.get("image_check"),
            stopper=stopper,
            found=found,
        )
    )


def _check_part(
    model: Any, image: Any, probs: Mapping[int, Any], data_config: DataConfig
) -> tuple[Any, Mapping[int, Any]]:
    """The image and its probabilities cut to :func:`image_signals.check_region`
    (the probabilities have no channel axis, and a class axis first for several classes)."""
    from .image_signals import check_region
    from .inference import PredictResult

    shape = tuple(int(n) for n in np.shape(image))
    region = check_region(shape, model.config.spatial_dims, data_config.channel_axis)
    if region is None:
        return image, probs
    channel = None if data_config.channel_axis is None else data_config.channel_axis % len(shape)
    cut = tuple(r for axis, r in enumerate(region) if axis != channel)
    if model.config.num_classes > 1:
        cut = (slice(None), *cut)
    complete = bool(getattr(probs, "complete", True))
    part = PredictResult({d: np.asarray(p[cut]) for d, p in probs.items()}, complete)
    part.scale = getattr(probs, "scale", None)
    return np.asarray(image[region]), part
