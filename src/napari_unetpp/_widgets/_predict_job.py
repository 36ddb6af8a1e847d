"""The Segment dock's jobs: the segmentation generator the job queue runs, and its progress.

Why apart from the dock: these take a model, configs and arrays, never a widget or a
layer. :func:`segment_job` predicts, labels, ranks the blocks to label next and checks
the result in the worker; :func:`estimate_job` and :func:`check_job` are the scale
panel's "Estimate size" and "Check this image"; :func:`over_passes` gives a job of
several prediction passes (a Segment run, "Check this image") one progress bar. The
input they get is :mod:`._predict_input`'s; the files they write, :mod:`._predict_record`'s.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..runs import diameter_record
from ._layers import LayerCopy, write_copies
from ._predict_record import add_to_run_file, save_labels

if TYPE_CHECKING:
    from ..config import DataConfig, PredictConfig
    from ..events import Stopper
    from ..model import UNetPlusPlus

#: Probabilities larger than this (values) are not ranked for "label here next" in the dock,
#: nor given a disagreement map: each holds a copy of them (about 1 GB at this size).
RANK_LIMIT = 2**28


def segment_job(
    model: UNetPlusPlus,
    image: Any,
    config: PredictConfig,
    data: DataConfig,
    stopper: Stopper,
    run_dir: Path,
    depth: int | None = None,
    check: Mapping[str, Any] | None = None,
    grid: tuple[tuple[float, ...] | None, str] = (None, ""),
    scan: Path | None = None,
    copies: Sequence[LayerCopy] = (),
) -> Generator[Any, None, tuple[Any, Any, list[Any], Any, Any]]:
    """Write ``copies`` (the image ``command.sh`` names:
    :func:`._predict_record.record_predict`), predict, then turn head ``depth`` (default:
    the pruned or deepest one) into labels; save them to ``run_dir``
    (:func:`._predict_record.save_labels`: ``grid`` is the layer's pixel size and unit,
    ``scan`` its NIfTI / DICOM file). Returns the probabilities, the labels, the blocks
    to label next (here, in the worker: ranking a big stack would stall the GUI
    thread), when ``check`` (the model's metrics) is given the image check of the
    result (or None), and the disagreement map of the pass
    (``disagreement.result_disagreement``, as ``predict --disagreement`` writes it; None
    for one head, or past :data:`RANK_LIMIT` unless an adaptive run brought its own),
    computed here for the same reason."""
    from ..disagreement import result_disagreement
    from ..inference import predict
    from ..label_next import label_here_next, region_size
    from ..postprocess import probabilities_to_labels

    write_copies(copies)
    probs = yield from predict(model, image, config, data, stopper=stopper)
    if not probs.complete:
        return probs, None, [], None, None
    if getattr(probs, "scale", None) is not None:  # the zoom used, as the CLI's run.json has
        measured = (
            {"diameter": diameter_record("auto", probs.scale)} if config.rescale == "auto" else {}
        )
        add_to_run_file(run_dir, {"scale": probs.scale, **measured})
    depth = config.pruned_depth or (depth if depth in probs else max(probs))
    labels = probabilities_to_labels(
        np.asarray(probs[depth]),
        model.config,
        data,
        threshold=config.threshold,
        min_size=config.min_size,
    )
    save_labels(run_dir, labels, grid, scan)
    deepest = probs[max(probs)]
    regions = (
        label_here_next(
            probs,
            model.config.num_classes,
            region_size(2),
            image=image,
            normalization=data.normalization,
        )
        if model.config.spatial_dims == 2 and np.size(deepest) <= RANK_LIMIT
        else []  # 3D blocks are no rectangles; a huge plane: the CLI's --disagreement
    )
    disagreement = (  # an adaptive run's map comes with it; others are computed here
        result_disagreement(probs, model.config.num_classes)
        if hasattr(probs, "disagreement") or np.size(deepest) <= RANK_LIMIT
        else None  # a huge volume: none in the dock (the CLI's --disagreement writes one)
    )
    result = None
    if check is not None:
        result = yield from result_check(model, image, probs, config, data, check, stopper)
        if result is not None:
            add_to_run_file(run_dir, {"image_check": result.to_dict()})
    return probs, labels, regions, result, disagreement


def result_check(
    model: UNetPlusPlus,
    image: Any,
    probs: Any,
    config: PredictConfig,
    data: DataConfig,
    metrics: Mapping[str, Any],
    stopper: Stopper,
) -> Generator[Any, None, Any]:
    """``disagreement.check_result`` on a finished segmentation, its probe's progress
    relabelled; None when stopped or when the result is too large to check in memory."""
    from dataclasses import replace

    from ..disagreement import check_result

    checking = check_result(model, image, probs, data, config, metrics, stopper)
    while True:
        try:
            event = next(checking)
        except StopIteration as done:
            return done.value
        yield replace(event, message="checking the result against the training data")


#: Per-mille steps of :func:`over_passes`' events.
PASS_STEPS = 1000


def segment_passes(config: PredictConfig, checked: bool) -> tuple[float, ...]:
    """The relative costs of a Segment run's passes, for :func:`over_passes`: the
    segmentation (twice with auto object size: measure, then at the measured size), then,
    when the result is checked, every depth at half size (a quarter of the pixels)."""
    passes = (1.0, 1.0) if config.rescale == "auto" else (1.0,)
    return (*passes, 0.25) if checked else passes


def over_passes(
    job: Generator[Any, None, Any], weights: tuple[float, ...]
) -> Generator[Any, None, Any]:
    """``job``'s events with one progress and ETA over all its prediction passes.

    Why: every ``inference.predict`` pass counts its own tiles from 0 (its ``"start"``
    event), so a job of several passes ("Check this image": every depth, the mirrored
    image, half size) ran its bar and ETA to the end and restarted once per pass.
    ``weights``: the planned passes' costs relative to each other; a pass beyond them
    (auto object size's second pass) costs as much as the first and extends the total.
    Each message says which pass it is (when there are several).
    """
    from dataclasses import replace

    from ..events import EtaClock

    plan, current, clock, step = list(weights), -1, EtaClock(), 0
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as done:
                return done.value
            if event.kind == "start":
                current += 1
                if current >= len(plan):
                    plan.append(plan[0])
            index = max(current, 0)
            if event.total > 0:  # a tile count; notes between passes keep the position
                share = sum(plan[:index]) + plan[index] * event.fraction
                step = max(step, round(PASS_STEPS * share / sum(plan)))  # never back
            text = event.message or f"tile {event.step}/{event.total}"
            if len(plan) > 1:  # one pass needs no count
                text = f"pass {index + 1} of {len(plan)}: {text}"
            yield replace(
                event,
                step=step,
                total=PASS_STEPS,
                eta_s=clock.update(step, PASS_STEPS),
                message=text,
            )
    finally:
        job.close()  # a dropped job's passes end here too (their files, their memory)


def estimate_job(
    model: UNetPlusPlus, image: Any, config: PredictConfig, data: DataConfig, stopper: Stopper
) -> Generator[Any, None, float | None]:
    """The median equivalent diameter (px) of the objects, measured as ``rescale="auto"``
    measures it: one pass at the deepest head, and a half-size probe when the objects
    came out in fragments (a first pass alone called nuclei 2-3x the training size
    "8 px": their pieces). None with fewer objects than 'auto object size' needs
    (``scale.AUTO_MIN_OBJECTS``): one speck of a 10 x 10 crop set a 3.7x enlargement."""
    from ..inference import predict
    from ..rescaled import object_sizes
    from ..scale import AUTO_MIN_OBJECTS

    first = config.replace(
        rescale=None,
        pixel_size=None,
        adaptive_depth=False,
        depths=(),
        pruned_depth=model.depth,
        tta=False,
    )
    probs = yield from predict(model, image, first, data, stopper=stopper)
    if not probs.complete:
        return None
    zoom = (1.0,) * model.config.spatial_dims
    diameters, _ = yield from object_sizes(
        model, image, first, data, zoom, probs[model.depth], model.depth, stopper
    )
    return float(np.median(diameters)) if diameters.size >= AUTO_MIN_OBJECTS else None


#: Relative cost of the passes of ``disagreement.check_image``: every depth, the deepest
#: on the mirrored image (nearly every node again), every depth at half size (a quarter
#: of the pixels; skipped when the run rescales).
CHECK_PASSES = (1.0, 1.0, 0.25)


def check_job(
    model: UNetPlusPlus,
    image: Any,
    config: PredictConfig,
    data: DataConfig,
    metrics: dict[str, Any],
    stopper: Stopper,
) -> Generator[Any, None, Any]:
    """``disagreement.check_image`` with the model card's recommended depth and calibration,
    its progress counted over all its passes."""
    from ..disagreement import check_image

    checking = check_image(
        model,
        image,
        data,
        config.replace(adaptive_depth=False),
        recommended=metrics.get("best_depth"),
        thresholds=metrics.get("image_check"),
        stopper=stopper,
    )
    check, _ = yield from over_passes(checking, CHECK_PASSES)
    return check
