"""The train dock's job: training plus its previews, as one generator in the job queue;
its run record, and what its end says (the checks at Start of what it trains on are
:mod:`._train_configs`').

Why previews live inside the training job: a preview is torch work too, and a
second job beside the training would race it for the CPU (and break the
one-job-at-a-time rule of :mod:`._jobs`); computed between two training steps in
the worker thread, it costs the GUI thread only the layer update. The slice
previewed is the one shown when the run started (:class:`PreviewSource`).

Why the job waits while its preview is shown: adding or updating the preview layer
is napari's Python on the GUI thread, and a small model's training is mostly Python
too; sharing the GIL with the training doubled the first add (0.18-0.36 s against
0.09-0.2 s with the worker waiting, issue 16). The wait is bounded, so a dock that no
longer shows previews (closed) delays its stopping job by at most
:data:`PREVIEW_WAIT_S`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..config import DataConfig, DeviceName, ModelConfig, TrainConfig
    from ..training import TrainResult
    from ._layers import LayerCopy

__all__ = [
    "PreviewEvent",
    "PreviewSource",
    "Refused",
    "finished_message",
    "new_train_run",
    "predict_labels_job",
    "record_train",
    "train_job",
]

#: Longest wait of the training for the GUI thread to show one preview (seconds).
PREVIEW_WAIT_S = 1.0


@dataclass
class PreviewSource:
    """What to preview: the slice shown when the run started, and the device."""

    image: np.ndarray
    channels_last: bool
    device: DeviceName
    pixel_size: tuple[tuple[float, ...], str] | None = None  # the layer's, with its unit


@dataclass
class Refused:
    """A fine-tune not started: why its labels would make the model worse."""

    reason: str


@dataclass
class PreviewEvent:
    """Labels of the preview slice by the starting model ("before"), a new best model
    ("best") or the final one ("after"). The dock sets ``shown`` once it shows them."""

    stage: str
    labels: np.ndarray
    step: int
    kind: str = "preview"
    shown: threading.Event = field(default_factory=threading.Event, repr=False)


def predict_labels_job(
    checkpoint: str | os.PathLike[str],
    image: np.ndarray,
    device: DeviceName = "auto",
    *,
    channels_last: bool = False,
    pixel_size: tuple[tuple[float, ...], str] | None = None,
) -> Generator[Any, Any, np.ndarray]:
    """Engine job: labels of ``image`` from a saved model at its recommended depth.

    Used for quick previews (a slice at a time); the predict widget is the full tool.
    ``pixel_size`` (with its unit): resampled to the model's, as the training was.
    """
    from ..checkpoint import load_checkpoint
    from ..config import PredictConfig
    from ..inference import predict
    from ..postprocess import probabilities_to_labels

    model, info = load_checkpoint(checkpoint, device="cpu")
    depth = int(info.metrics.get("best_depth") or model.config.depth)
    data = info.data.replace(channel_axis=-1 if channels_last else None)
    config = PredictConfig(
        depths=(depth,), device=device, tile_size=(256,) * model.config.spatial_dims
    )
    if pixel_size is not None and model.config.pixel_size:
        config = config.replace(pixel_size=pixel_size[0], pixel_unit=pixel_size[1])
    probabilities = yield from predict(model, image, config, data)
    return probabilities_to_labels(probabilities[depth], info.model, data)


def _preview(checkpoint: str | Path, source: PreviewSource) -> np.ndarray:
    from ..events import drive

    return drive(
        predict_labels_job(
            checkpoint,
            source.image,
            source.device,
            channels_last=source.channels_last,
            pixel_size=source.pixel_size,
        )
    )


def _show(event: PreviewEvent) -> Generator[PreviewEvent, None, None]:
    """Yield ``event``, then wait until the dock has shown it (see the module docstring)."""
    yield event
    event.shown.wait(PREVIEW_WAIT_S)


def train_job(
    model: ModelConfig,
    train: TrainConfig,
    data: DataConfig,
    initial: str | None,
    run_dir: Path,
    stopper: Any,
    images: list[Any],
    labels: list[Any],
    preview: PreviewSource | None = None,
    pixel_sizes: list[tuple[tuple[float, ...], str] | None] | None = None,
    copies: Sequence[LayerCopy] = (),
    check: bool = False,
) -> Generator[Any, None, TrainResult | Refused]:
    """Write ``copies`` (the data ``command.sh`` names: :func:`record_train`), build the
    Trainer in the worker (importing the engine takes seconds) and run it,
    yielding :class:`PreviewEvent` s among its events when ``preview`` is given.

    ``pixel_sizes`` (per pair, from the image layers): the pairs are resampled to the
    model's pixel size first, as ``napari-unetpp train`` does (``scale.training_scale``).
    ``check``: a fine-tune whose labels would make its model worse
    (``finetune_checks.harmful_labels``, as ``train --from``) returns :class:`Refused`
    before anything is written or trained.
    """
    from ..rescaled import training_shrink
    from ..scale import training_scale
    from ..training import Trainer, TrainEvent
    from ._layers import write_copies

    notes: list[str] = []
    if pixel_sizes and any(pixel_sizes):
        dims, axis = model.spatial_dims, data.channel_axis
        shrink = training_shrink(model, data)  # as predict shrinks (smoothed if noisy)
        images, labels, size, unit, notes = training_scale(
            images, labels, pixel_sizes, model.pixel_size, model.pixel_unit, dims, axis, shrink
        )
        model = model.replace(pixel_size=size, pixel_unit=unit) if size else model
    if check and initial is not None:
        from ..finetune_checks import harmful_labels

        reason = harmful_labels(initial, images, labels, data, model.num_classes, train.device)
        if reason:
            return Refused(reason)
    write_copies(copies)
    for note in notes:
        yield TrainEvent("note", 0, train.iterations, note)
    trainer = Trainer(model, train, data, initial=initial, output_dir=run_dir, stopper=stopper)
    if preview is not None and initial is not None:
        yield from _show(PreviewEvent("before", _preview(initial, preview), 0))
    run = trainer.run(images, labels)
    while True:
        try:
            event = next(run)
        except StopIteration as done:
            result = done.value
            break
        yield event
        if (
            preview is not None
            and event.kind == "checkpoint"
            and event.path is not None
            and not stopper.stopped
        ):
            yield from _show(PreviewEvent("best", _preview(event.path, preview), event.step))
    if preview is not None and result.checkpoint is not None:
        steps = int(result.info.provenance.get("iterations") or 0)
        yield from _show(PreviewEvent("after", _preview(result.checkpoint, preview), steps))
    return result


def finished_message(result: Any, how: str, checkpoint: Path) -> str:
    """The dock's status line for a run that took steps (``how``: "finished" or
    "stopped"): its depth, its validation score (or why there is none), where it is."""
    from ..train_data import NO_VALIDATION

    metrics = result.info.metrics
    best = metrics.get("best_depth")
    scores = [row.get("iou") for row in (metrics.get("depths") or {}).values()]
    known = [s for s in scores if s is not None]
    few_labels = (result.info.provenance.get("data") or {}).get("validation") == NO_VALIDATION
    judged = (
        f"validation IoU {max(known):.3f}"
        if known
        else "no validation score: paint on more of the image; compare the before/after "
        "layers instead"
        if few_labels
        else "no validation score: stopped before the first validation (every "
        f"{result.info.train.validate_every} steps)"
    )
    warning = metrics.get("warning")
    return (
        f"{how} at step {result.info.provenance.get('iterations')}; "
        f"depth L{best}; {judged}; model saved to {checkpoint}"
        + (f"; WARNING: {warning}" if warning else "")
    )


def new_train_run(
    folder: Path,
    pairs: list[tuple[Any, Any]],
    labels: list[np.ndarray],
    configs: tuple[ModelConfig, TrainConfig, DataConfig],
    start: str,
    initial: str | None,
    sizes: list[tuple[tuple[float, ...], str] | None],
    anyway: bool = False,
) -> tuple[Path, list[LayerCopy]]:
    """A fresh run folder in ``folder`` with ``run.json`` and ``command.sh`` in it, and the
    copies of the data they name, for the job to write (``labels``: the copies trained on;
    ``start``: the dock's 'Start from' value, a shipped model named by its spec)."""
    from ..locate import is_zoo
    from ..runs import new_run_dir

    run_dir = new_run_dir(folder, pairs[0][0].name)
    origin = start if is_zoo(start) else initial  # a shipped model by name, not path
    one_size = sizes[0] if sizes and all(s == sizes[0] for s in sizes) else None
    copies = record_train(run_dir, pairs, labels, *configs, origin, one_size, anyway)
    return run_dir, copies


def record_train(
    run_dir: Path,
    pairs: list[tuple[Any, Any]],
    labels_now: list[np.ndarray],
    model: ModelConfig,
    train: TrainConfig,
    data: DataConfig,
    origin: str | None,
    pixel_size: tuple[tuple[float, ...], str] | None = None,
    anyway: bool = False,
) -> list[LayerCopy]:
    """``run.json`` and ``command.sh``: the same run as ``napari-unetpp train``, naming
    the (image, labels) layers as files; ``labels_now``: the labels trained on (copies
    taken at Start: painting goes on while the job waits); ``origin`` is the starting
    model (spec or path) or None; ``pixel_size``: the images' one pixel size and unit
    (``--pixel-size``), if known; ``anyway``: 'Train anyway' ticked (``--train-anyway``).
    Returns the copies the command names, for
    :func:`train_job` to write (off the GUI thread)."""
    from ..runs import format_command, replay_dir, save_run_record, train_record
    from ._layers import layer_files

    images, image_copies = layer_files([i for i, _ in pairs], run_dir / "data", "image")
    labels, label_copies = layer_files(
        [lab for _, lab in pairs], run_dir / "data", "labels", labels_now
    )
    configs = train_record(model, train, data, {"images": images, "labels": labels}, origin)
    command = format_command(
        "train",
        images=images,
        labels=labels,
        out=replay_dir(run_dir),  # never over the dock's best/ and last/
        config=run_dir / "run.json",
        from_=origin,
        pixel_size=list(pixel_size[0]) if pixel_size else None,
        pixel_unit=pixel_size[1] if pixel_size else None,
        train_anyway=anyway and origin is not None,
    )
    save_run_record(run_dir, "train", configs, command)
    return image_copies + label_copies
