"""The Segment dock's input, job and record: what a run reads, computes and writes.

Why apart from the dock: these take a layer, configs and arrays, never a widget,
so the dock stays a thin mapping of UI values onto them. :func:`predict_input`
turns an Image layer and the chosen scope into the engine's array plus where the
output layers go (:class:`Placement`); :func:`segment_job` is the generator the
job queue runs; :func:`record_predict` writes ``run.json`` and ``command.sh``.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..normalization import as_model_input, looks_rgb
from ..runs import format_command, predict_record, replay_dir, save_run_record
from ._layers import LayerCopy, layer_file, write_copies

if TYPE_CHECKING:
    from ..checkpoint import CheckpointInfo
    from ..config import DataConfig, DeviceName, ModelConfig, PredictConfig
    from ..events import Stopper
    from ..model import UNetPlusPlus

SCOPES = ["2D", "whole stack slice-wise", "3D", "current slice only (quick look)"]


class Placement(NamedTuple):
    """Where a run's output goes: slice index (quick look), output scale and translate.

    ``frame``: the rest of the image layer's placement, given to every result layer so
    it overlays the image: its units (else napari drops units from the scale bar and
    warns once per layer), and its rotate, shear and affine (where the output keeps
    the layer's axes; a removed channel axis leaves them out).
    """

    lead_index: tuple[int, ...] | None
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    frame: Mapping[str, Any] = MappingProxyType({})


def layer_frame(layer: Any, removed_axis: int | None) -> dict[str, Any]:
    """Units, rotate, shear and affine of ``layer`` for outputs without ``removed_axis``."""
    units = [str(u) for u in getattr(layer, "units", ())]
    if removed_axis is not None and units:
        del units[removed_axis]
    frame: dict[str, Any] = {"units": tuple(units)} if units else {}
    if removed_axis is None:
        frame.update(
            rotate=np.asarray(layer.rotate),
            shear=np.asarray(layer.shear),
            affine=np.asarray(layer.affine.affine_matrix),
        )
    return frame


def default_scope(layer: Any, model: ModelConfig) -> str:
    """The scope that fits this image and model: 3D models run in 3D, stacks slice-wise."""
    spatial = layer.ndim - (model.in_channels > 1 and not layer.rgb)
    if model.spatial_dims == 3:
        return "3D"
    return "whole stack slice-wise" if spatial > 2 else "2D"


def predict_input(
    layer: Any,
    model: ModelConfig,
    data_config: DataConfig,
    scope: str,
    point: Any,
    displayed: tuple[int, ...] | None = None,
) -> tuple[Any, DataConfig, Placement]:
    """The array to segment, its DataConfig and where the output goes; checks the scope.

    ``point`` is the viewer's world position (``viewer.dims.point``): the slice a
    "current slice only" run takes; ``displayed`` (``viewer.dims.displayed``): the
    axes the view shows, which must be that slice's.
    """
    data = layer.data[0] if layer.multiscale else layer.data
    dims, channels = model.spatial_dims, model.in_channels
    data, grey = as_model_input(data, channels, None, rgb=layer.rgb)  # as the CLI and zoo
    if channels == 1 and not layer.rgb and looks_rgb(np.shape(data)):
        # the engine reads such a last axis as colour: the dock and it disagreed on the
        # image's dimensions, and the run ended in an IndexError (QA session 11)
        raise ValueError(
            f"the layer's last axis has {np.shape(data)[-1]} values, like colour, but the "
            "layer is not RGB (napari shows it as planes of "
            f"{' x '.join(map(str, np.shape(data)[-2:]))} pixels): add it with rgb=True, "
            "or split the channels into layers (channel_axis=-1)"
        )
    if grey:
        axis = None
    elif layer.rgb:
        axis = data.ndim - 1
    else:
        axis = None if channels == 1 else data_config.channel_axis
        if axis is None and channels > 1:
            raise ValueError(
                f"the model expects {channels} channels; open the image as one "
                "layer with a channel axis (or as RGB)"
            )
    axis = None if axis is None else axis % data.ndim
    scale, translate = list(layer.scale), list(layer.translate)
    removed = axis if axis is not None and not layer.rgb else None
    if removed is not None:
        del scale[removed], translate[removed]
    spatial = data.ndim - (axis is not None)
    _check_scope(scope, dims, spatial)
    lead_index = None
    if scope.startswith("current") and spatial > 2:
        _check_plane_shown(layer.ndim, len(point), displayed, removed)
        world = list(layer.world_to_data(point))
        lead = [a for a in range(data.ndim) if a != axis][: spatial - 2]
        lead_index = tuple(int(np.clip(round(world[a]), 0, data.shape[a] - 1)) for a in lead)
        index: list[int | slice] = [slice(None)] * data.ndim
        for a, i in zip(lead, lead_index, strict=True):
            index[a] = i
        data = data[tuple(index)]
        if axis is not None:
            axis -= sum(1 for a in lead if a < axis)
        for k, i in enumerate(lead_index):
            translate[k] += i * scale[k]
    return (
        data,
        data_config.replace(channel_axis=axis),
        Placement(lead_index, tuple(scale), tuple(translate), layer_frame(layer, removed)),
    )


def _check_plane_shown(
    ndim: int, world_ndim: int, displayed: tuple[int, ...] | None, channel: int | None
) -> None:
    """A ValueError when a 2D view shows another plane than the one a quick look segments
    (the image's last two axes, its Y-X plane).

    Why: with the axis order changed (napari's transpose / roll buttons) the view showed
    a Z-X plane, the quick look segmented the Y-X plane at the slider's Z, and its result
    was one row of the view.
    """
    if displayed is None or len(displayed) != 2:  # a 3D view shows no one plane
        return
    offset = world_ndim - ndim  # a layer takes the viewer's last axes
    shown = sorted(d - offset for d in displayed)
    plane = [a for a in range(ndim) if a != channel][-2:]
    if shown != plane:
        raise ValueError(
            "'current slice only' segments the image's Y-X plane (its last two axes), but "
            f"the view shows axes {shown[0]} and {shown[1]} (the axis order was changed): "
            "put the order back with the viewer's transpose / roll buttons, or choose "
            "'whole stack slice-wise'"
        )


def _check_scope(scope: str, dims: int, spatial: int) -> None:
    """A ValueError that names the scope to choose when this one cannot run."""
    if scope == "3D" and (dims != 3 or spatial < 3):
        raise ValueError(
            "'3D' needs a 3D model and a 3D image; this model is "
            f"{dims}D: choose 'whole stack slice-wise'"
        )
    if scope != "3D" and dims == 3:
        raise ValueError("this model is 3D: choose the '3D' scope")
    if scope == "2D" and spatial > 2:
        raise ValueError(
            f"the image has {spatial} dimensions: choose 'whole stack "
            "slice-wise' or 'current slice only'"
        )


def predict_config(
    dims: int,
    tile: int,
    tta: bool,
    device: DeviceName,
    scale: dict[str, Any],
    pruned_depth: int | None,
) -> PredictConfig:
    """The dock's PredictConfig; ``scale`` is the scale panel's overrides.

    Apply (a pruned depth) runs the pruned network and TTA all depths, so neither
    runs adaptive depth.
    """
    from ..config import PredictConfig

    if pruned_depth is not None or tta:
        scale = {**scale, "adaptive_depth": False}
    return PredictConfig(
        pruned_depth=pruned_depth,
        tile_size=(tile,) * dims,
        tta=tta,
        device=device,
        **scale,
    )


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
    """Write ``copies`` (the image ``command.sh`` names: :func:`record_predict`), predict,
    then turn head ``depth`` (default: the pruned or deepest one) into labels;
    save them to ``run_dir`` (:func:`save_labels`: ``grid`` is the layer's pixel size and
    unit, ``scan`` its NIfTI / DICOM file). Returns the probabilities, the labels, the
    blocks to label next (here, in the worker: ranking a big stack would stall the GUI
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
        _add_to_run_file(run_dir, {"scale": probs.scale})
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
            _add_to_run_file(run_dir, {"image_check": result.to_dict()})
    return probs, labels, regions, result, disagreement


def scan_file(layer: Any) -> Path | None:
    """The NIfTI file or DICOM series a layer was read from by this plugin's reader, or None."""
    meta = getattr(layer, "metadata", {}) or {}
    path = meta.get("path")
    return Path(path) if meta.get("source") in ("nifti", "dicom") and path else None


def save_labels(
    run_dir: Path,
    labels: np.ndarray,
    grid: tuple[tuple[float, ...] | None, str],
    scan: Path | None = None,
) -> None:
    """``labels.tif`` with the image's pixel size, and for a scan ``labels.nii.gz`` on its own
    grid, as ``napari-unetpp predict`` writes them.

    Why: the dock's labels.tif had no pixel size, and a radiologist's labels of a NIfTI or
    DICOM scan were only in the reader's axis order: ITK-SNAP or 3D Slicer could not lay
    them on the scan (the CLI's run of the same command could).
    """
    from ..files import write_array
    from ..medical import write_nifti_like

    sizes, unit = grid
    sizes = None if sizes is None else tuple(sizes)[-min(len(sizes), labels.ndim) :]
    write_array(run_dir / "labels", labels, "tif", sizes, unit or None)
    if scan is not None:
        try:
            write_nifti_like(run_dir / "labels.nii.gz", labels, scan)
        except ValueError:  # unevenly spaced DICOM slices: no one grid (the CLI skips it too)
            pass


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


def _add_to_run_file(run_dir: Path, fields: Mapping[str, Any]) -> None:
    """Merge ``fields`` into the run's ``run.json`` (written at Start)."""
    from ..runs import RUN_FILE, read_run_file, write_json

    record = run_dir / RUN_FILE
    write_json(record, {**read_run_file(record), **fields})


def record_predict(
    run_dir: Path,
    layer: Any,
    spec: str,
    info: CheckpointInfo,
    config: PredictConfig,
    data: DataConfig,
    scope: str,
    check: bool = True,
    part: Any = None,
    labels_depth: int | None = None,
) -> list[LayerCopy]:
    """``run.json`` and ``command.sh``: the same run as ``napari-unetpp predict``
    (``check``: the result is checked against the training data, as the CLI does unless
    ``--no-check``; ``part``: the slice a quick look segments, saved as the command's
    image: the layer's file made the command segment the whole stack).

    ``labels_depth``: the head the dock's labels come from (the Depth slider's). The CLI
    labels from the deepest head unless ``--depth`` names one, so a command without it
    gave other labels (EM: L4 for the dock's recommended L3).

    Returns the image copy the command names, for :func:`segment_job` to write (off the
    GUI thread)."""
    image, copy = layer_file(layer, run_dir, "image", part)
    depth = config.pruned_depth
    if depth is None and not config.adaptive_depth and labels_depth != info.model.depth:
        depth = labels_depth
    model = info.model.to_dict()
    configs = predict_record(spec, config, data, model=model, images=[image], scope=scope)
    command = format_command(
        "predict",
        spec,
        image,
        out=replay_dir(run_dir),  # never beside (or over) the dock's labels.tif
        config=run_dir / "run.json",
        depth=depth,
        channel_axis=data.channel_axis,
        probabilities=True,
        no_check=not check,
    )
    save_run_record(run_dir, "predict", configs, command)
    return [] if copy is None else [copy]
