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
pass finds no large objects, cheap probes at half and a quarter of the zoom check that
they were not shattered into fragments (see ``_probe_ladder``).

The result's ``scale`` attribute (a dict, also in the ``"scale"`` event's message)
says what was used: pixel sizes, zoom per model axis, measured diameter, passes.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
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
    "training_shrink",
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
        diameters, probe = yield from object_sizes(
            model, image, measuring, data_config, zoom, result[depth], depth, stopper
        )
        factor, why = S.auto_rescale(mc.object_diameter * 1.0, diameters)
        report.update(
            measured_diameter=float(np.median(diameters) / gmean) if diameters.size else None,
            objects=int(diameters.size),
            auto_factor=factor,
            probe=probe,  # the fraction of the zoom the objects were measured at
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
) -> Generator[Any, None, tuple[np.ndarray, float]]:
    """Model-grid diameters of the objects in ``prob`` (head ``depth`` of a pass at ``zoom``),
    specks left out (``scale.drop_specks``), and the fraction of ``zoom`` they were measured
    at: 1.0 for this pass, :data:`PROBE_FRACTIONS` when a smaller probe replaced them (the
    objects had come out shattered; see :func:`_probe_ladder`).

    A pass that found mostly specks (more than :data:`NOISE_SPECK_SHARE` of its objects)
    found noise: its few larger "objects" are no evidence of small ones, so without a probe
    that finds the real objects no diameter is returned (no enlargement).

    The one measurement behind ``rescale="auto"`` and the dock's "Estimate size", so the
    diameter a user is shown is the one an auto run would use. ``config`` carries no
    pixel size or rescale (the zoom is given).
    """
    gmean = S.mean_zoom(zoom)  # native-grid px -> model-grid px
    found = measure_diameters(prob, model.config, data_config, config.threshold) * gmean
    diameters = S.drop_specks(found, model.config.object_diameter)
    noisy = found.size >= S.AUTO_MIN_OBJECTS and diameters.size < (1 - NOISE_SPECK_SHARE) * (
        found.size
    )
    probe, fraction = yield from _probe_ladder(
        model, image, config, data_config, zoom, depth, diameters, noisy, stopper
    )
    if probe is not None:
        return probe, fraction
    if noisy:
        yield _scale_event(
            f"object size not measured: {found.size - diameters.size} of the {found.size} "
            "objects found are specks (noise), and no smaller probe found whole objects"
        )
        return np.zeros(0), 1.0
    return diameters, 1.0


#: A probe's objects must measure this much larger than the finer pass's to be believed:
#: then the finer pass had shattered them.
PROBE_RATIO = 1.3
#: No probe when the first pass's objects are this many times the model's: they came out
#: whole. Below it a probe runs: pieces of objects 4x the training size, specks left out,
#: measured 25 px (1.4x) on DSB nuclei shown 2.5x larger, so "larger than the model's"
#: alone does not mean whole (that image was shrunk 0.7x instead of 0.23x).
PROBE_SKIP_ABOVE = 1.5
#: The probes, as fractions of the first pass's zoom, finest first: powers of two, whose
#: linear resampling averages 2 x 2 input pixels (at 1/3 it picks single pixels, so a
#: noisy image stays as noisy: the probe at 1/3 of a dim 2x image found 600 noise blobs
#: where 1/2 and 1/4 found the 20 nuclei; benchmarks/bench_dim_size.py).
PROBE_FRACTIONS = (0.5, 0.25)
#: A pass whose objects are more than this share specks found noise, not objects: the
#: held-back DSB images have at most a third (2349e95e, 4 of 12), dim noisy 2x copies of
#: them 0.67-0.81 (benchmarks/bench_dim_size.py).
NOISE_SPECK_SHARE = 0.5


def _probe_ladder(
    model: Any,
    image: Any,
    config: PredictConfig,
    data_config: DataConfig,
    zoom: tuple[float, ...],
    depth: int,
    diameters: np.ndarray,
    noisy: bool,
    stopper: Stopper | None,
) -> Generator[Any, None, tuple[np.ndarray | None, float]]:
    """Model-grid diameters measured by a smaller probe, when they show the objects are
    large, and the probe's fraction of ``zoom``; ``(None, 1.0)`` when the pass's own stand.

    Why: objects far larger than the training ones come out of the first pass in
    fragments (the issue's 537 pieces for 23 nuclei), whose median says "small"
    and would skip the rescale (or ask for an enlargement). At half the zoom they
    are whole again; dim noisy ones may still be noise and fragments there, and whole
    only at a quarter (one head, a sixteenth of the pixels). A probe is believed when its
    objects measure :data:`PROBE_RATIO` times the finer pass's, and then the next one
    checks it in turn. Runs unless the first pass found objects clearly larger than the
    model's.
    """
    model_diameter = model.config.object_diameter
    first = float(np.median(diameters)) if diameters.size else 0.0
    if first > model_diameter * PROBE_SKIP_ABOVE and not noisy:
        return None, 1.0  # large and whole already: shrinking to the model's size follows
    axes = S.spatial_axes(len(image.shape), model.config.spatial_dims, data_config.channel_axis)
    gmean = S.mean_zoom(zoom)
    best: tuple[np.ndarray | None, float] = (None, 1.0)
    finer = first
    for fraction in PROBE_FRACTIONS:
        small = tuple(z * fraction for z in zoom)
        if any(z < S.MIN_ZOOM for z in small):
            break
        if any(image.shape[a] * z < model_diameter for a, z in zip(axes, small, strict=True)):
            # no whole object fits: a 2 x 2 image probed at 1 x 1 warned "the image has no
            # contrast (every sampled pixel is 2.5)" of its 1..4 (QA session 14)
            break
        probe_config = config.replace(depths=(), pruned_depth=depth)
        result = yield from _one_pass(model, image, probe_config, data_config, small, None, stopper)
        if not result or not result.complete:
            break
        found = measure_diameters(result[depth], model.config, data_config, config.threshold)
        found = S.drop_specks(found * gmean, model_diameter)
        if found.size < S.AUTO_MIN_OBJECTS:
            break
        whole = float(np.median(found))
        if whole <= PROBE_RATIO * finer:
            break  # as large as the finer pass saw them: that pass saw them whole
        if not noisy and first < model_diameter / S.AUTO_GROW_BELOW and whole < model_diameter:
            break  # tiny objects that merged at a smaller size, not fragments of large ones
        best, finer = (found, fraction), whole
    return best


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
#: Still noisier than this after :data:`SMOOTH_FRACTION`, the fraction doubles (up to
#: :data:`SMOOTH_MAX_FRACTION`) until the noise is down to :data:`SMOOTH_NOISE`. Dim, noisy
#: nuclei 2x DSB's size (held-back images at 8 photons, benchmarks/bench_dim_size.py) come
#: out at 0.077-0.10 with half of skimage's sigma; a crop of one shrunk 0.48x scored
#: foreground IoU 0.21 so, and 0.74 and 0.82 with 1x and 2x of the sigma. A limit at 0.086
#: split those images by the estimator's own scatter (0.83 or 0.51 at zooms 3 % apart).
#: Half of the sigma brings the CT 1 mm copies with up to 30 HU of noise (the ones the
#: smoothing was measured on) to 0.063 at most, so none of them is smoothed more than before.
#: Only instance models (nuclei) smooth more: EM's texture reads as noise to the estimator, so
#: a 2 nm EM stack shrunk to 4 nm would be blurred at 2x skimage's sigma, never measured.
SMOOTH_MORE_ABOVE = 0.07
SMOOTH_MAX_FRACTION = 2.0


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
    :data:`SMOOTH_NOISE`; then :data:`SMOOTH_FRACTION` of skimage's anti-aliasing sigma, and
    more (see :data:`SMOOTH_MORE_ABOVE`) when that leaves it far noisier.

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

    def noise_of(array: np.ndarray) -> float | None:
        grey, was_rgb = as_model_input(array, model_config.in_channels, axis)
        return noise_level(grey, data_config.replace(channel_axis=None if was_rgb else axis))

    noise = noise_of(plain)
    if noise is None or noise <= SMOOTH_NOISE:
        return plain, (0.0,) * len(sigma)
    fraction = SMOOTH_FRACTION
    smooth = S.resample(image, zoom, axes, order=1, sigma=sigma)
    noise = noise_of(smooth)
    if noise is None or noise <= SMOOTH_MORE_ABOVE or data_config.target != "instance":
        return smooth, sigma  # more smoothing was measured on nuclei only (not EM, not CT)
    while noise is not None and noise > SMOOTH_NOISE and fraction < SMOOTH_MAX_FRACTION:
        fraction *= 2.0
        sigma = S.shrink_sigma(zoom, fraction)
        smooth = S.resample(image, zoom, axes, order=1, sigma=sigma)
        noise = noise_of(smooth)
    return smooth, sigma


def training_shrink(
    model_config: ModelConfig, data_config: DataConfig
) -> Callable[[Any, Sequence[float], Sequence[int]], tuple[Any, Any]]:
    """:func:`model_grid` for :func:`scale.training_scale`: training pairs resampled to the
    model's pixel size the way prediction resamples an image.

    Why: a fine scan (a CT at 1 mm for the 3 mm model) is smoothed before it is shrunk when
    it comes out noisy; a fine-tune on the same scan was shrunk without it, so the model
    learned a noisier image than it is later shown.
    """

    def shrink(image: Any, zoom: Sequence[float], axes: Sequence[int]) -> tuple[Any, Any]:
        return model_grid(image, zoom, axes, model_config, data_config)

    return shrink


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
