"""Prediction at the model's scale: resample in, predict, resample the outputs back.

``inference.predict`` hands over to :func:`predict_rescaled` when a
``PredictConfig`` carries ``pixel_size`` or ``rescale``; the tiled prediction
itself is untouched (it runs on the resampled image with those fields cleared).

Why a wrapper and not a tiling option: the zoom applies to the whole image (its
normalisation, its tiles on the model's pooling grid), and the outputs must land
on the input's exact grid, so labels always match the napari layer they belong to.

``rescale="auto"`` follows cellpose's recipe with our own code: a first pass at
the base scale, the median equivalent diameter of its objects (instances, or
connected components of the foreground), then a second pass zoomed by
``model.config.object_diameter / measured`` (skipped when the sizes already
agree or too few objects were found; see ``scale.auto_rescale``). When the first
pass finds no large objects, a cheap probe at half the zoom checks that they were
not shattered into fragments (see ``_probe_half``).

The result's ``scale`` attribute (a dict, also in the ``"scale"`` event's message)
says what was used: pixel sizes, zoom per model axis, measured diameter, passes.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import scale as S
from .config import DataConfig, ModelConfig, PredictConfig
from .events import Stopper
from .nonfinite import fill_image
from .normalization import repaired

__all__ = [
    "needs_rescaling",
    "base_zoom",
    "measure_diameters",
    "object_sizes",
    "predict_rescaled",
    "model_grid",
]


def needs_rescaling(config: PredictConfig) -> bool:
    """Whether ``config`` asks for any resampling (pixel size or rescale given)."""
    return config.pixel_size is not None or config.rescale is not None


def base_zoom(model_config: ModelConfig, config: PredictConfig) -> tuple[tuple[float, ...], str]:
    """Zoom per model axis from the pixel sizes and a numeric ``rescale``, and a note.

    ``pixel_size`` without a training pixel size in the model is ignored (the note
    says so): a napari layer always has a scale, often the default 1.
    """
    dims = model_config.spatial_dims
    zoom, note = (1.0,) * dims, ""
    if config.pixel_size is not None:
        if model_config.pixel_size:
            zoom = S.zoom_from_pixel_size(
                config.pixel_size,
                model_config.pixel_size,
                config.pixel_unit,
                model_config.pixel_unit,
            )
        else:
            note = (
                "pixel_size ignored: the model records no training pixel size (use rescale instead)"
            )
    if isinstance(config.rescale, float):
        zoom = tuple(z * config.rescale for z in zoom)
    return S.check_zoom(zoom), note


def measure_diameters(
    prob: Any, model_config: ModelConfig, data_config: DataConfig, threshold: float | None = None
) -> np.ndarray:
    """Equivalent diameters (px) of the objects in one depth's probabilities.

    Instances of an instance model; connected components of the foreground
    otherwise. A 2D model's stack is measured slice by slice (objects never join
    across slices), and the diameters of all slices are pooled.
    """
    from scipy import ndimage

    from .postprocess import probabilities_to_labels

    labels = np.asarray(
        probabilities_to_labels(np.asarray(prob), model_config, data_config, threshold=threshold)
    )
    dims = model_config.spatial_dims
    planes = labels.reshape((-1, *labels.shape[labels.ndim - dims :]))
    found = []
    for plane in planes:
        if data_config.target != "instance":
            plane, _ = ndimage.label(plane > 0)
        found.append(S.object_diameters(plane))
    return np.concatenate(found) if found else np.zeros(0)


def _scale_event(message: str, total: int = 0) -> Any:
    from .inference import PredictEvent

    return PredictEvent("scale", 0, total, message)


def predict_rescaled(
    model: Any,
    image: Any,
    config: PredictConfig,
    data_config: DataConfig,
    *,
    out: str | Path | None = None,
    stopper: Stopper | None = None,
) -> Generator[Any, None, Any]:
    """``inference.predict`` at the model's scale; outputs on the input's grid (see module doc)."""
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        image = np.asarray(image)
    mc = model.config
    zoom, note = base_zoom(mc, config)
    report: dict[str, Any] = {
        "pixel_size": list(config.pixel_size) if config.pixel_size is not None else None,
        "pixel_unit": config.pixel_unit or mc.pixel_unit,
        "model_pixel_size": list(mc.pixel_size),
        "rescale": config.rescale,
        "model_diameter": mc.object_diameter,
        "measured_diameter": None,
        "objects": None,
        "zoom": list(zoom),
        # the Gaussian (input px per model axis) smoothed with before shrinking (model_grid)
        "smoothing_sigma": [0.0] * len(zoom),
        "passes": 1,
        "note": note,
    }
    if note:
        yield _scale_event(note)
    inner = config.replace(pixel_size=None, pixel_unit="", rescale=None)
    auto = config.rescale == "auto"
    if auto and mc.object_diameter is None:
        raise ValueError(
            "rescale='auto' needs the model's training object diameter "
            "(ModelConfig.object_diameter), which this model does not record; give a "
            "number instead (model object size / your object size, e.g. 0.5 for objects "
            "twice as large)"
        )
    if any(z != 1.0 for z in zoom):
        yield _scale_event(f"resampling the input by {_fmt(zoom)} to the model's scale")
    # adaptive depth stops many tiles at a shallow head, which splits large objects more:
    # the objects are measured on one fixed head, the deepest, and the adaptive pass
    # follows; so is a pruned run's (shallower heads measured other sizes: the dock's
    # all-depth run and its command.sh's --depth 3 took two zooms; QA session 14)
    heads = [inner.pruned_depth] if inner.pruned_depth is not None else list(inner.depths)
    shallow = bool(heads) and max(heads) != mc.depth
    measuring = (
        inner.replace(adaptive_depth=False, depths=(), pruned_depth=mc.depth)
        if auto and (inner.adaptive_depth or shallow)
        else inner
    )
    result = yield from _one_pass(
        model, image, measuring, data_config, zoom, None if auto else out, stopper
    )
    if auto and result.complete and result:
        depth = measuring.pruned_depth if measuring.pruned_depth is not None else max(result)
        gmean = S.mean_zoom(zoom)  # native-grid px -> model-grid px
        diameters, probed = yield from object_sizes(
            model, image, measuring, data_config, zoom, result[depth], depth, stopper
        )
        factor, why = S.auto_rescale(mc.object_diameter * 1.0, diameters)
        report.update(
            measured_diameter=float(np.median(diameters) / gmean) if diameters.size else None,
            objects=int(diameters.size),
            auto_factor=factor,
            probe=probed,
        )
        report["note"] = "; ".join(n for n in (note, why) if n)
        yield _scale_event(why)
        if factor != 1.0 or measuring is not inner:
            zoom = S.check_zoom(tuple(z * factor for z in zoom))
            report.update(zoom=list(zoom), passes=2)
            yield _scale_event(f"second pass: resampling the input by {_fmt(zoom)}")
            result = yield from _one_pass(model, image, inner, data_config, zoom, out, stopper)
        elif out is not None:
            result = _store(result, out)
    report["smoothing_sigma"] = list(getattr(result, "smoothing_sigma", report["smoothing_sigma"]))
    result.scale = report
    return result


def object_sizes(
    model: Any,
    image: Any,
    config: PredictConfig,
    data_config: DataConfig,
    zoom: tuple[float, ...],
    prob: Any,
    depth: int,
    stopper: Stopper | None,
) -> Generator[Any, None, tuple[np.ndarray, bool]]:
    """Model-grid diameters of the objects in ``prob`` (head ``depth`` of a pass at ``zoom``),
    specks left out (``scale.drop_specks``), and whether a half-zoom probe replaced them
    (the objects had come out shattered).

    The one measurement behind ``rescale="auto"`` and the dock's "Estimate size", so the
    diameter a user is shown is the one an auto run would use. ``config`` carries no
    pixel size or rescale (the zoom is given).
    """
    gmean = S.mean_zoom(zoom)  # native-grid px -> model-grid px
    diameters = measure_diameters(prob, model.config, data_config, config.threshold) * gmean
    diameters = S.drop_specks(diameters, model.config.object_diameter)
    probe = yield from _probe_half(
        model,
        image,
        config,
        data_config,
        zoom,
        depth,
        diameters,
        model.config.object_diameter,
        stopper,
    )
    return (diameters, False) if probe is None else (probe, True)


#: The half-scale probe's objects must measure this much larger than the first pass's
#: to be believed: then the first pass had shattered them.
PROBE_RATIO = 1.3
#: No probe when the first pass's objects are this many times the model's: they came out
#: whole. Below it a probe runs: pieces of objects 4x the training size, specks left out,
#: measured 25 px (1.4x) on DSB nuclei shown 2.5x larger, so "larger than the model's"
#: alone does not mean whole (that image was shrunk 0.7x instead of 0.23x).
PROBE_SKIP_ABOVE = 1.5


def _probe_half(
    model: Any,
    image: Any,
    config: PredictConfig,
    data_config: DataConfig,
    zoom: tuple[float, ...],
    depth: int,
    diameters: np.ndarray,
    model_diameter: float,
    stopper: Stopper | None,
) -> Generator[Any, None, np.ndarray | None]:
    """Model-grid diameters measured at half the zoom, when they show the objects are large.

    Why: objects far larger than the training ones come out of the first pass in
    fragments (the issue's 537 pieces for 23 nuclei), whose median says "small"
    and would skip the rescale (or ask for an enlargement). At half the zoom they
    are whole again. Run (one head, a quarter of the pixels) unless the first pass
    found objects clearly larger than the model's.
    """
    first = float(np.median(diameters)) if diameters.size else 0.0
    if first > model_diameter * PROBE_SKIP_ABOVE:
        return None  # large and whole already: shrinking to the model's size follows
    half = tuple(z * 0.5 for z in zoom)
    if any(z < S.MIN_ZOOM for z in half):
        return None
    axes = S.spatial_axes(len(image.shape), model.config.spatial_dims, data_config.channel_axis)
    if any(image.shape[a] * z < model_diameter for a, z in zip(axes, half, strict=True)):
        # no whole object fits: a 2 x 2 image probed at 1 x 1 warned "the image has no
        # contrast (every sampled pixel is 2.5)" of its 1..4 (QA session 14)
        return None
    probe_config = config.replace(depths=(), pruned_depth=depth)
    result = yield from _one_pass(model, image, probe_config, data_config, half, None, stopper)
    if not result or not result.complete:
        return None
    gmean = S.mean_zoom(zoom)
    found = measure_diameters(result[depth], model.config, data_config, config.threshold) * gmean
    found = S.drop_specks(found, model_diameter)
    if found.size < S.AUTO_MIN_OBJECTS:
        return None
    whole = float(np.median(found))
    if whole <= PROBE_RATIO * first:
        return None
    if first < model_diameter / S.AUTO_GROW_BELOW and whole < model_diameter:
        return None  # tiny objects that merged at half the zoom, not fragments of large ones
    return found


#: The Gaussian smoothing before a shrink to the model's grid, as a fraction of skimage's
#: anti-aliasing sigma (``scale.shrink_sigma``), and the noise (normalised units, as
#: :func:`noise.noise_level` measures it on the shrunk image) above which it is applied: the
#: shipped CT model's tolerated noise (``metrics.image_check.noise`` 0.0574, 23 HU in its
#: window). Measured on its held-back slices upsampled to 1 mm with 0-30 HU of noise
#: (benchmarks/bench_ct_user.py smoothing; docs/benchmarks.md "A fine CT scan shrunk to the
#: model's pixel size"): always smoothing with half of skimage's sigma lost 0.04 mean organ
#: Dice on clean and 10 HU copies (the spleen, blur-sensitive, 0.77 -> 0.62) and gained 0.16
#: at 30 HU; smoothing only the noisy ones keeps both.
SMOOTH_FRACTION = 0.5
SMOOTH_NOISE = 0.057


def model_grid(
    image: Any,
    zoom: Sequence[float],
    axes: Sequence[int],
    model_config: ModelConfig,
    data_config: DataConfig,
) -> tuple[np.ndarray, tuple[float, ...]]:
    """``image`` resampled (linearly) by ``zoom`` to the model's grid, and the Gaussian sigma
    (input px per axis of ``axes``) it was smoothed with first: none, unless the image
    shrinks by more than ``scale.SMOOTH_BEYOND`` and comes out noisier than
    :data:`SMOOTH_NOISE`; then :data:`SMOOTH_FRACTION` of skimage's anti-aliasing sigma.

    Why: a fine scan (a CT at 1 mm for a 3 mm model) carries per-pixel noise that plain
    shrinking (nnU-Net's way) passes on to the model undiminished: 30 HU took the CT model's
    mean organ Dice from 0.68 to 0.48. Smoothing averages it down, but blurs what the model
    sees, which costs on a clean scan; so only a noisy one is smoothed.
    """
    from .noise import noise_level
    from .normalization import as_model_input

    plain = S.resample(image, zoom, axes, order=1)
    sigma = S.shrink_sigma(zoom, SMOOTH_FRACTION)
    if not any(sigma):
        return plain, sigma
    axis = data_config.channel_axis  # measured on what the network takes (grey for RGB)
    grey, was_rgb = as_model_input(plain, model_config.in_channels, axis)
    noise = noise_level(grey, data_config.replace(channel_axis=None if was_rgb else axis))
    if noise is None or noise <= SMOOTH_NOISE:
        return plain, (0.0,) * len(sigma)
    return S.resample(image, zoom, axes, order=1, sigma=sigma), sigma


def _fmt(zoom: tuple[float, ...]) -> str:
    return " x ".join(f"{z:.3f}" for z in zoom)


def _one_pass(
    model: Any,
    image: Any,
    config: PredictConfig,
    data_config: DataConfig,
    zoom: tuple[float, ...],
    out: str | Path | None,
    stopper: Stopper | None,
) -> Generator[Any, None, Any]:
    """One ``inference.predict`` at ``zoom``; probabilities resampled back to ``image``'s grid."""
    from .inference import predict

    if all(z == 1.0 for z in zoom):
        return (yield from predict(model, image, config, data_config, out=out, stopper=stopper))
    dims = model.config.spatial_dims
    axes = S.spatial_axes(len(image.shape), dims, data_config.channel_axis)
    # filled and repaired first: resampling spreads each NaN (miscounting them in the
    # warning) and smears hot pixels past recognition
    norm = data_config.normalization
    whole = repaired(fill_image(image, normalization=norm), norm, data_config.channel_axis)
    small, sigma = model_grid(whole, zoom, axes, model.config, data_config)
    if any(sigma):
        yield _scale_event(
            f"smoothing the noisy input (Gaussian sigma {_fmt(sigma)} px) before shrinking it"
        )
    result = yield from predict(model, small, config, data_config, stopper=stopper)
    if not result:
        return result
    if not result.complete and out is None:  # stopped: nobody reads a partial in-memory result
        # (Cancel on a 0.98 mm CT waited 16 s for every head to be resampled back, 1.2 GB)
        return type(result)({}, complete=False)
    shape = tuple(int(s) for s in image.shape)
    back = yield from _back(
        result, shape, model.config.num_classes, data_config, dims, out, stopper
    )
    back.smoothing_sigma = sigma
    return back


def _back(
    result: Any,
    shape: tuple[int, ...],
    num_classes: int,
    data_config: DataConfig,
    dims: int,
    out: str | Path | None,
    stopper: Stopper | None = None,
) -> Generator[Any, None, Any]:
    """The probabilities of ``result`` resampled (linearly) onto the input grid ``shape``.

    An adaptive-depth result keeps its kind: its depth-used map (nearest) and
    disagreement map (linear) come back on the same grid. Each head is announced and
    ``stopper`` is heard between heads: on a 112 x 512 x 512 CT at 0.8 mm this took over
    a minute after the last tile, the status stuck at 'tile 111/112 · 4 s left' and Cancel
    pressed then ignored until the whole result was shown.
    """
    from .adaptive import AdaptiveResult
    from .inference import PredictResult
    from .layout import output_shape
    from .stores import allocate_outputs, mark_complete

    target = output_shape(tuple(int(s) for s in shape), data_config.channel_axis, num_classes)
    arrays, group = allocate_outputs(tuple(result), target, (256,) * dims, out)
    axes = tuple(range(len(target) - dims, len(target)))
    for n, (depth, prob) in enumerate(result.items(), start=1):
        if stopper is not None and stopper.stopped:  # nobody reads half the heads
            if group is None:
                return type(result)({}, complete=False)
            mark_complete(group, False)
            return PredictResult(arrays, False, Path(out) if out is not None else None)
        yield _scale_event(
            f"resampling the result back to the image's grid (head {n} of {len(result)})"
        )
        S.resample_to(prob, target, axes, order=1, out=arrays[depth])
    if group is not None:
        mark_complete(group, bool(result.complete))
    path = Path(out) if out is not None else None
    if not isinstance(result, AdaptiveResult):
        return PredictResult(arrays, result.complete, path)
    grid = target[len(target) - len(result.depth_map.shape) :]
    map_axes = tuple(range(len(grid) - dims, len(grid)))
    return AdaptiveResult(
        arrays,
        result.complete,
        path,
        depth_map=np.asarray(S.resample_to(result.depth_map, grid, map_axes, order=0)).astype(
            result.depth_map.dtype
        ),
        disagreement=S.resample_to(result.disagreement, grid, map_axes, order=1),
        tile_depths=result.tile_depths,
        tiles_per_depth=result.tiles_per_depth,
        cost_fraction=result.cost_fraction,
        seconds=result.seconds,
    )


def _store(result: Any, out: str | Path) -> Any:
    """An in-memory result written to zarr arrays in ``out`` (auto rescale that kept scale 1)."""
    from .inference import PredictResult
    from .stores import allocate_outputs, mark_complete

    first = next(iter(result.values()))
    arrays, group = allocate_outputs(tuple(result), first.shape, (256,) * first.ndim, out)
    for depth, prob in result.items():
        arrays[depth][...] = prob
    mark_complete(group, bool(result.complete))
    return PredictResult(arrays, result.complete, Path(out))
