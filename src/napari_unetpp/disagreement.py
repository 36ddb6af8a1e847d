"""What the heads' disagreement says: where to label next, which depth holds, and when to worry.

Why: a deeply supervised UNet++ gives four predictions of one image from one pass.
Where they disagree the model is unsure, so those regions are the most useful to
label next (:func:`rank_regions`); how much each depth departs from the deepest
*on the user's image* says whether the depth chosen on the validation set still
holds there (:func:`advise_depth`); and depth disagreement, flip disagreement,
the fraction of uncertain pixels and the size of the objects against the
model's training scale together say "this image is unlike the training data"
before the user trusts a result (:func:`check_image`).

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
>>> rank_regions(disagreement_map(probs, 1), (4, 4), top=1)[0].score > 0.39
True
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import DataConfig, ModelConfig, PredictConfig
from .events import Stopper

__all__ = [
    "DepthAdvice",
    "ImageCheck",
    "Region",
    "THRESHOLDS",
    "advise_depth",
    "calibrate",
    "check_image",
    "disagreement_map",
    "image_signals",
    "judge",
    "rank_regions",
]

#: Fallback warning thresholds, for a model without its own calibration (a checkpoint's
#: ``metrics["image_check"]``, see :func:`calibrate`): the largest of the zoo models'
#: calibrated values (benchmarks/bench_depth.py). A signal above its threshold marks the
#: image as unlike the training data; ``size_ratio`` is a factor either way (objects that
#: much larger or smaller than the training median): DSB nuclei vary up to 2.9x between
#: images of the held-back split, so 2.5 keeps native images quiet.
THRESHOLDS: dict[str, float] = {
    "depth_disagreement": 0.19,
    "flip_disagreement": 0.06,
    "uncertain_fraction": 0.17,
    "size_ratio": 2.5,
    "scale_gain": 1.6,
}
#: A size ratio beyond this (but within ``size_ratio``) gives a hint, not a warning.
SIZE_HINT = 1.5
#: Added to both sides of the scale probe's ratio, so images where the heads agree
#: almost perfectly at both sizes (ratio of two tiny numbers) do not count as a gain.
_PROBE_FLOOR = 0.002


def _class_spread(stack: np.ndarray, num_classes: int) -> np.ndarray:
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
    return _class_spread(stack, num_classes).astype(np.float32)


@dataclass(frozen=True)
class Region:
    """A block of the image to label next: ``item`` (leading index, e.g. slice), where, score."""

    item: tuple[int, ...]
    start: tuple[int, ...]
    size: tuple[int, ...]
    score: float

    @property
    def index(self) -> tuple[Any, ...]:
        """Index of the block into an array of the image's shape (without channels)."""
        return self.item + tuple(
            slice(s, s + n) for s, n in zip(self.start, self.size, strict=True)
        )


def rank_regions(
    disagreement: np.ndarray,
    region_size: Sequence[int],
    top: int = 10,
    spread: bool = False,
) -> list[Region]:
    """The ``top`` blocks of ``region_size`` (the last axes) with the highest mean disagreement.

    Blocks tile each item (slice / volume) without overlap; partial blocks at the
    border count with their own mean. "Label here next": painting these first
    gives the model the examples it is least sure about.

    ``spread``: pick for coverage as well as doubt: no two chosen blocks touch,
    and the items (slices) take turns, each giving its best remaining block per
    round. Why: the most doubtful blocks cluster on one kind of content (one
    faint, dense patch of tissue), and a few labels there teach that patch, not
    the image.
    """
    size = tuple(int(s) for s in region_size)
    dims = len(size)
    if dims == 0 or dims > disagreement.ndim or any(s < 1 for s in size):
        raise ValueError(
            f"region_size {tuple(region_size)}: give one positive size per "
            f"spatial axis of a map of shape {disagreement.shape}, e.g. (128, 128)"
        )
    lead_shape, spatial = disagreement.shape[:-dims], disagreement.shape[-dims:]
    found: list[Region] = []
    for item in np.ndindex(*lead_shape):
        plane = disagreement[item]
        for start in np.ndindex(*(-(-n // s) for n, s in zip(spatial, size, strict=True))):
            corner = tuple(k * s for k, s in zip(start, size, strict=True))
            block = plane[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))]
            found.append(Region(item, corner, tuple(block.shape), float(block.mean())))
    found.sort(key=lambda r: -r.score)
    count = max(int(top), 0)
    return _spread_out(found, size, count) if spread else found[:count]


def _spread_out(ranked: list[Region], size: tuple[int, ...], count: int) -> list[Region]:
    """Best-first picks, items taking turns, never a block next to one already chosen."""
    by_item: dict[tuple[int, ...], list[Region]] = {}
    for region in ranked:
        by_item.setdefault(region.item, []).append(region)
    order = sorted(by_item, key=lambda item: -by_item[item][0].score)
    taken: dict[tuple[int, ...], list[tuple[int, ...]]] = {item: [] for item in order}
    chosen: list[Region] = []

    def touches(item: tuple[int, ...], block: tuple[int, ...]) -> bool:
        return any(max(abs(a - b) for a, b in zip(block, t, strict=True)) <= 1 for t in taken[item])

    while len(chosen) < count and any(by_item.values()):
        for item in order:
            queue = by_item[item]
            while queue:
                region = queue.pop(0)
                block = tuple(c // s for c, s in zip(region.start, size, strict=True))
                if not touches(item, block):
                    taken[item].append(block)
                    chosen.append(region)
                    break
            if len(chosen) == count:
                break
    return chosen


# --------------------------------------------------------------------------- signals


def _uncertain(prob: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels whose deepest prediction is far from certain (top class below 0.75)."""
    confidence = np.maximum(prob, 1 - prob) if num_classes == 1 else prob.max(axis=0)
    return confidence < 0.75


def _object_diameter(
    prob: np.ndarray, model_config: ModelConfig, data_config: DataConfig
) -> float | None:
    """Median equivalent diameter (pixels) of the predicted objects, ``None`` without objects."""
    from skimage.measure import regionprops

    from .postprocess import probabilities_to_labels

    labels = probabilities_to_labels(prob, model_config, data_config)
    if data_config.target != "instance":
        from scipy import ndimage

        labels, _ = ndimage.label(labels > 0)
    areas = [r.area for r in regionprops(np.asarray(labels))]
    if not areas:
        return None
    dims = model_config.spatial_dims
    median = float(np.median(areas))
    if dims == 2:
        return float(2 * (median / np.pi) ** 0.5)
    return float(2 * (3 * median / (4 * np.pi)) ** (1 / 3))


def image_signals(
    probs: Mapping[int, Any],
    flipped: np.ndarray | None,
    model_config: ModelConfig,
    data_config: DataConfig,
    half: Mapping[int, Any] | None = None,
) -> dict[str, float | None]:
    """The per-image signals of :func:`check_image` from one pass (and optional probes).

    ``flipped``: the deepest head's probabilities of the flipped image, flipped back.
    ``half``: every depth's probabilities of the image at half size; ``scale_gain``
    is how much better the heads agree there (> 1: objects look larger than in training).
    """
    deepest = np.asarray(probs[max(probs)], np.float32)
    c = model_config.num_classes
    signals: dict[str, float | None] = {
        "depth_disagreement": float(disagreement_map(probs, c).mean()),
        "uncertain_fraction": float(_uncertain(deepest, c).mean()),
        "flip_disagreement": None,
        "object_diameter": None,
        "size_ratio": None,
        "scale_gain": None,
    }
    if half is not None:
        at_half = float(disagreement_map(half, c).mean())
        signals["scale_gain"] = ((signals["depth_disagreement"] or 0.0) + _PROBE_FLOOR) / (
            at_half + _PROBE_FLOOR
        )
    if flipped is not None:
        signals["flip_disagreement"] = float(_class_spread(np.stack([deepest, flipped]), c).mean())
    expected = getattr(model_config, "object_diameter", None)  # the "scale" engineer's field
    if expected:
        measured = _object_diameter(deepest, model_config, data_config)
        signals["object_diameter"] = measured
        signals["size_ratio"] = None if measured is None else measured / float(expected)
    return signals


# --------------------------------------------------------------------------- advice


@dataclass
class DepthAdvice:
    """Each depth's agreement with the deepest on this image, and the depth that holds."""

    agreement: dict[int, float]
    recommended: int | None
    suggested: int
    tolerance: float
    message: str


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
    if recommended is None or recommended not in agreement:
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
        message = (
            f"the recommended depth L{recommended} departs from L{deepest} on this "
            f"image ({100 * (1 - agreement[recommended]):.1f}% of the pixels differ, "
            f"tolerance {100 * tolerance:.1f}%): use L{suggested} here"
        )
    return DepthAdvice(agreement, recommended, suggested, tolerance, message)


# --------------------------------------------------------------------------- the check


@dataclass
class ImageCheck:
    """Is this image like the training data? Signals, verdict, reasons, remedies, depth advice."""

    signals: dict[str, float | None]
    unlike_training: bool
    reasons: list[str] = field(default_factory=list)
    remedies: list[str] = field(default_factory=list)
    advice: DepthAdvice | None = None

    def report(self) -> str:
        """Lines for a CLI or a notification."""
        shown = ", ".join(f"{k} {v:.3f}" for k, v in self.signals.items() if v is not None)
        lines = [
            (
                "WARNING: this image looks unlike the model's training data"
                if self.unlike_training
                else "this image looks like the training data"
            )
            + f" ({shown})"
        ]
        lines += [f"  - {r}" for r in self.reasons]
        lines += [f"  remedy: {r}" for r in self.remedies]
        if self.advice is not None:
            lines.append(f"depth: {self.advice.message}")
        return "\n".join(lines)


def judge(
    signals: Mapping[str, float | None], thresholds: Mapping[str, float] = THRESHOLDS
) -> tuple[bool, list[str], list[str]]:
    """Verdict, reasons and remedies from the signals (pure: the calibration re-runs it)."""
    reasons: list[str] = []
    for name in ("depth_disagreement", "flip_disagreement", "uncertain_fraction"):
        value = signals.get(name)
        if value is not None and value > thresholds[name]:
            reasons.append(f"{name.replace('_', ' ')} {value:.3f} > {thresholds[name]:.3f}")
    ratio = signals.get("size_ratio")
    limit = thresholds["size_ratio"]
    size_off = ratio is not None and not 1 / limit <= ratio <= limit
    if size_off:
        reasons.append(f"objects are {ratio:.2f}x the training size (limit {limit:.2f}x)")
    gain = signals.get("scale_gain")
    larger = gain is not None and gain > thresholds["scale_gain"]
    if larger:
        reasons.append(
            f"the depths agree {gain:.1f}x better at half size: objects look "
            "larger than in training"
        )
    remedies: list[str] = []
    if reasons:
        if size_off or larger:
            factor = 1 / ratio if size_off and ratio else 0.5
            remedies.append(
                f"rescale the image by {factor:.2f} (or give its pixel size) so "
                "objects match the training size"
            )
        else:
            remedies.append(
                "check the pixel size (rescale so objects have the training size); "
                "if they already match, fine-tune on a few labelled regions of this "
                "image (the highest-disagreement ones)"
            )
    elif ratio is not None and not 1 / SIZE_HINT <= ratio <= SIZE_HINT:
        # within the natural spread of the training images, so no warning; still worth a try
        remedies.append(
            f"objects are {ratio:.2f}x the training size: try 'auto object size' "
            "(--rescale auto) and compare"
        )
    return bool(reasons), reasons, remedies


def calibrate(
    native: Sequence[Mapping[str, float | None]], margin: float = 1.5
) -> dict[str, float]:
    """Thresholds for one model: ``margin`` x the largest value of each signal on images
    like its training data (a held-back validation split, native, never the test split).

    Stored in the checkpoint as ``metrics["image_check"]``; :func:`check_image` reads it.
    """
    out: dict[str, float] = {}
    for name in ("depth_disagreement", "flip_disagreement", "uncertain_fraction"):
        values = [float(v) for r in native if (v := r.get(name)) is not None]
        if values:
            out[name] = round(margin * max(values), 4)
    gains = [float(v) for r in native if (v := r.get("scale_gain")) is not None]
    if gains:  # a ratio near 1 on native images: the fallback unless natives reach it
        out["scale_gain"] = round(max(THRESHOLDS["scale_gain"], 1.1 * max(gains)), 3)
    return out


def _half_size(image: Any, spatial_dims: int, channel_axis: int | None) -> np.ndarray | None:
    """The image at half size along its spatial axes (anti-aliased), or None when too small."""
    from skimage.transform import resize

    array = np.asarray(image)
    ndim = array.ndim
    channel = None if channel_axis is None else channel_axis % ndim
    spatial = [a for a in range(ndim) if a != channel][-spatial_dims:]
    shape = [s // 2 if a in spatial else s for a, s in enumerate(array.shape)]
    if min(shape[a] for a in spatial) < 32:
        return None
    sigma = [0.5 if a in spatial else 0.0 for a in range(ndim)]
    return resize(
        array.astype(np.float32),
        shape,
        order=1,
        anti_aliasing=True,
        anti_aliasing_sigma=sigma,
        preserve_range=True,
    ).astype(np.float32)


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
) -> Generator[Any, None, tuple[ImageCheck, dict[int, Any]]]:
    """Predict every depth (and the deepest on the flipped image), then judge the image.

    ``scale_probe`` predicts every depth once more at half size (a quarter of the
    pixels): heads that agree much better there mean objects larger than in training.

    A generator of :class:`inference.PredictEvent` (both passes), returning the
    :class:`ImageCheck` and the per-depth probabilities (so the caller can show
    the segmentation it just checked). ``recommended``: the depth the model card
    recommends (``metrics["best_depth"]``), for the depth advice. ``thresholds``:
    the model's own calibration (a checkpoint's ``metrics["image_check"]``, see
    :func:`calibrate`); missing signals fall back to :data:`THRESHOLDS`.
    """
    from .inference import predict

    config = (predict_config or PredictConfig()).replace(
        depths=(), pruned_depth=None, adaptive_depth=False, tta=False
    )
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
    half = None
    small = _half_size(image, model.config.spatial_dims, data_config.channel_axis)
    if scale_probe and small is not None and getattr(probs, "complete", True):
        half = yield from predict(model, small, config, data_config, stopper=stopper)
    signals = image_signals(probs, flipped, model.config, data_config, half or None)
    verdict, reasons, remedies = judge(signals, {**THRESHOLDS, **(thresholds or {})})
    advice = (
        advise_depth(probs, model.config.num_classes, recommended, tolerance, config.threshold)
        if len(probs) > 1
        else None
    )
    return ImageCheck(signals, verdict, reasons, remedies, advice), dict(probs)
