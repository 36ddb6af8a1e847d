"""Train or fine-tune a UNet++ on Image + Labels layers (a thin widget).

UI values -> ModelConfig / TrainConfig / DataConfig -> ``training.Trainer.run`` in the
viewer's job queue -> events -> progress bar, live plot, optional preview layer. The
finished (or stopped) run's best model is registered in :mod:`._state` for the predict
widget, and ``run.json`` + ``command.sh`` beside it reproduce it from a shell. The
widgets and the configs they say are :class:`._train_form.TrainForm`; the job and
the run record are in :mod:`._train_job`.

Fine-tuning (starting from a model) switches to safe defaults: learning rate
:data:`FINE_TUNE_LR`, :data:`FINE_TUNE_ITERATIONS` steps, BatchNorm statistics kept
(``TrainConfig.freeze_norm``, the engine's default for fine-tunes, so the CLI does
the same), and a before/after view of the slice shown: ``<image> UNet++ before``
(the starting model) and ``<image> UNet++ preview`` (the new one). Previews are
computed inside the training job (never a second torch job beside it). Closing the
dock (or the viewer) stops its training as Stop does: ``last/`` and ``best/`` are saved.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from ..locate import is_zoo
from ..normalization import as_model_input
from ..runs import new_run_dir
from . import _state
from ._jobs import queue_for
from ._layers import current_slice, layer_data, made_here
from ._paths import chosen_path
from ._predict_job import layer_frame
from ._runner import JobRunner
from ._train_form import (
    FINE_TUNE_ITERATIONS,
    FINE_TUNE_LR,
    SCRATCH_ITERATIONS,
    SCRATCH_LR,
    TrainForm,
)
from ._train_job import (
    PreviewEvent,
    PreviewSource,
    pair_pixel_sizes,
    record_train,
    train_job,
)
from ._ui import on_dock_closed, set_progress

if TYPE_CHECKING:
    import napari

    from ..config import DataConfig, ModelConfig, TrainConfig
    from ._layers import LayerCopy

#: Labels with more elements are guessed from their middle slice (keeps the GUI snappy).
GUESS_MAX_SIZE = 1 << 24
#: The label-mode guess is refreshed this long after the last brush stroke.
GUESS_DELAY_MS = 500
#: Progress text is redrawn at most this often (each redraw costs the GUI thread).
STATUS_INTERVAL_S = 0.25
#: Dense labels with more distinct values than this are guessed to be instance ids (each
#: object painted with its own id): more classes than anyone paints by hand.
INSTANCE_GUESS_VALUES = 16
#: Why a run cannot learn instances from scribbles, in the dock's words.
SCRIBBLES_NEED_CLASSES = (
    "Target 'instances (boundaries)' needs dense labels, every object painted with its own "
    "id; scribbles (Label mode 'sparse') teach classes: choose Target 'semantic (classes)'"
)


def _at_pixel_size(
    model: ModelConfig, sizes: list[tuple[tuple[float, ...], str] | None]
) -> ModelConfig:
    """The model config with the pixel size the run trains at (a new model takes the
    images'; a fine-tuned one keeps its own): recorded in run.json and the checkpoint."""
    from ..scale import training_pixel_size

    size, unit = training_pixel_size(sizes, model.pixel_size, model.pixel_unit, model.spatial_dims)
    return model.replace(pixel_size=size, pixel_unit=unit) if size else model


def _first_loss(model: ModelConfig, initial: str | None) -> float | None:
    """The loss a new network starts near (None for a fine-tune: its start is unknown).

    (BCE or CE) + Dice of an untrained network: about ln(classes) + 1 (measured 1.51
    for a binary model); the live plot sizes its loss axis for it at Start.
    """
    return None if initial is not None else math.log(max(2, model.num_classes)) + 1.0


class TrainWidget(TrainForm):
    """Dock widget: train a UNet++ from scratch or fine-tune one, on painted labels."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self._runner = JobRunner(queue=queue_for(napari_viewer), owner="train")
        self._pairs: list[tuple[Image, Labels]] = []
        self._mode_from_user = False
        self._target_from_user = False
        self._labels_from_user = False  # the user picked the Labels box's layer
        self._painted: Labels | None = None  # the layer whose paint events we follow
        self._note, self._shown_at = "", 0.0
        self.last_run_dir: Path | None = None
        self.last_checkpoint: Path | None = None
        self._left_run: str | None = None  # a closed dock's training, stopping: its run
        self._connect()
        self._on_pair_changed()
        self._on_queue_changed()

    def _connect(self) -> None:
        from qtpy.QtCore import QTimer

        self._guess_timer = QTimer()
        self._guess_timer.setSingleShot(True)
        self._guess_timer.setInterval(GUESS_DELAY_MS)
        self._guess_timer.timeout.connect(self._on_pair_changed)
        self._image.changed.connect(self._on_pair_changed)
        self._labels_box.changed.connect(self._on_pair_changed)
        self._labels_box.native.activated.connect(self._on_user_labels)  # user choices only
        self._label_mode.native.activated.connect(self._on_user_mode)  # user choices only
        self._target.native.activated.connect(self._on_user_target)
        self._channel_axis.changed.connect(self._on_axes_changed)
        self._dims.changed.connect(self._on_axes_changed)
        self._add_pair.changed.connect(self._on_add_pair)
        self._clear_pairs.changed.connect(self._on_clear_pairs)
        self._start_from.changed.connect(self._on_start_from)
        self._checkpoint_file.changed.connect(self._inherit_target)
        self._show_advanced.changed.connect(lambda v: setattr(self._advanced, "visible", v))
        self._start.changed.connect(self._on_start)
        self._stop.changed.connect(self._on_stop)
        # outside signals: disconnected when the Qt widget goes, so a closed widget that
        # Python has not collected yet is never called back (its Qt objects are deleted)
        emitters = [
            getattr(self._viewer.layers.events, e) for e in ("inserted", "removed", "reordered")
        ]
        for emitter in emitters:
            emitter.connect(self._on_layers_changed)
        _state.models_changed.connect(self._on_models_changed)
        self._runner.queue.changed.connect(self._on_queue_changed)
        on_dock_closed(self.native, self._viewer, self._closed)

    def _closed(self) -> None:
        """The dock was closed (or deleted): stop its training, stop listening."""
        self._runner.quit()
        _state.models_changed.disconnect(self._on_models_changed)
        self._runner.queue.changed.disconnect(self._on_queue_changed)
        for event in ("inserted", "removed", "reordered"):
            getattr(self._viewer.layers.events, event).disconnect(self._on_layers_changed)
        self._follow_painting(None)
        self._guess_timer.stop()

    # ------------------------------------------------------------------ UI events

    def _on_layers_changed(self, event: Any = None) -> None:
        try:
            self.reset_choices()
        except RuntimeError:  # its Qt widgets were deleted before the dock said so
            self._closed()
            return
        if getattr(event, "type", "") == "inserted":
            self._take_new_labels(event.value)

    def _take_new_labels(self, layer: Any) -> None:
        """A Labels layer the user adds replaces the plugin's own labels in the Labels box.

        Why: a dock opened after a Segment run holds ``<image> UNet++ labels`` (the only
        Labels layer then); the user's new layer, painted in the 'label here next'
        blocks, was listed but not chosen, and Start fine-tuned the model on its own
        output. A layer the user picked in the box stays picked.
        """
        chosen = self._labels_box.value
        if (
            isinstance(layer, Labels)
            and not made_here(layer)
            and not self._labels_from_user
            and (chosen is None or made_here(chosen))
        ):
            self._labels_box.value = layer

    def _on_user_labels(self, _index: int) -> None:
        self._labels_from_user = True

    def _on_models_changed(self) -> None:
        try:
            self._start_from.reset_choices()
        except RuntimeError:
            self._closed()

    def _on_queue_changed(self) -> None:
        """Show a training of this viewer that a closed dock left stopping (another open
        Train dock's training says nothing here: this dock's last result stays shown)."""
        current = self._runner.queue.current
        left = current if current and current.owner == "train" and current.dropped else None
        if not self._runner.running and left is not None:
            self._left_run = left.where
            self._status.value = "a training of this viewer is stopping; Start waits for it"
        elif self._left_run is not None and not self._runner.running:
            self._status.value = (
                f"the closed dock's training stopped early; its last step is saved in "
                f"{self._left_run} (last/ continues it: napari-unetpp train --out "
                "<that folder> --resume)"
            )
            self._left_run = None
        elif self._runner.queued:
            self._status.value = "waiting for another UNet++ job of this viewer to finish..."

    def _follow_painting(self, labels: Labels | None) -> None:
        """Refresh the label-mode guess a moment after each brush stroke on ``labels``."""
        if self._painted is labels:
            return
        if self._painted is not None:
            self._painted.events.paint.disconnect(self._on_paint)
        self._painted = labels
        if labels is not None:
            labels.events.paint.connect(self._on_paint)

    def _on_paint(self, _event: Any = None) -> None:
        self._guess_timer.start()

    def _on_pair_changed(self, _value: Any = None) -> None:
        image, labels = self._image.value, self._labels_box.value
        self._pair_info.value = ""
        self._follow_painting(labels)
        if image is None or labels is None:
            return
        self._fit_axes(image, labels)
        try:
            self._check_pair(image, labels)
        except ValueError as exc:
            self._pair_info.value = f"⚠ {exc}"
            if not self._mode_from_user:  # another layer's guess says nothing of this one
                self._label_reason.value = ""
            return
        self._pair_info.value = _placement_note(image, labels)
        self._guess_label_mode(labels)

    def _on_axes_changed(self, _value: Any = None) -> None:
        """Channel axis or 'Stacks as' changed: say at once whether the pair fits them."""
        image, labels = self._image.value, self._labels_box.value
        if image is None or labels is None:
            return
        try:
            self._check_pair(image, labels)
        except ValueError as exc:
            self._pair_info.value = f"⚠ {exc}"
        else:
            self._pair_info.value = ""

    def _on_user_mode(self, _index: int) -> None:
        self._mode_from_user = True
        self._label_reason.value = f"label mode set to {self._label_mode.value} by you"

    def _on_user_target(self, _index: int) -> None:
        self._target_from_user = True

    def _guess_label_mode(self, labels: Labels) -> None:
        from ..labels import guess_label_mode

        if self._mode_from_user:
            return
        data = layer_data(labels)
        if data.size > GUESS_MAX_SIZE and data.ndim > 2:
            data = data[data.shape[0] // 2]
        data = np.asarray(data)
        try:
            mode, why = guess_label_mode(data)
        except ValueError as exc:
            self._label_reason.value = str(exc)
            return
        self._label_mode.value = mode
        self._label_reason.value = f"guessed {mode}: {why}{self._guess_target(data, mode)}"

    def _guess_target(self, data: np.ndarray, mode: str) -> str:
        """Instances for dense labels of many ids, unless the user or the model to fine-tune
        says otherwise; returns the reason to show (empty when nothing was guessed)."""
        if self._target_from_user or self._start_from.value != "scratch":
            return ""
        values = int(np.unique(data[data > 0]).size)
        instance = mode == "dense" and values > INSTANCE_GUESS_VALUES
        self._target.value = "instance" if instance else "semantic"
        return f"; {values} label values: guessed instances (one id per object)" if instance else ""

    def _on_add_pair(self, _value: Any = None) -> None:
        image, labels = self._image.value, self._labels_box.value
        try:
            if image is None or labels is None:
                raise ValueError("choose an Image layer and a Labels layer to add a pair")
            self._check_pair(image, labels)
        except ValueError as exc:
            show_error(str(exc))
            return
        self._pairs.append((image, labels))
        names = ", ".join(f"{i.name} + {lab.name}" for i, lab in self._pairs)
        self._pair_list.value = f"training on: {names}"

    def _on_clear_pairs(self, _value: Any = None) -> None:
        self._pairs.clear()
        self._pair_list.value = "training on: the selected pair"

    def _training_pairs(self) -> list[tuple[Image, Labels]]:
        if self._pairs:
            return list(self._pairs)
        image, labels = self._image.value, self._labels_box.value
        if image is None or labels is None:
            raise ValueError("choose an Image layer and a Labels layer (paint labels first)")
        self._check_pair(image, labels)
        self._guess_label_mode(labels)
        return [(image, labels)]

    def _on_start_from(self, value: str) -> None:
        self._checkpoint_file.visible = value == "file"
        scratch = value == "scratch"
        for widget in (self._widths, self._depth, self._custom_widths):
            widget.enabled = scratch  # a fine-tuned model keeps its architecture
        # fine-tuning: small steps, BatchNorm statistics kept (issue 16: a good model got worse)
        self._lr.value = SCRATCH_LR if scratch else FINE_TUNE_LR
        self._iterations.value = SCRATCH_ITERATIONS if scratch else FINE_TUNE_ITERATIONS
        self._freeze_norm.value = not scratch
        self._preserve.value = not scratch
        self._preview.value = not scratch
        self._inherit_target()

    def _inherit_target(self, _value: Any = None) -> None:
        """A fine-tune learns what its model learnt (an instance model stays one), as the
        CLI's ``--from`` does; the user may still change it."""
        try:
            _, base = self._initial()
        except (ValueError, OSError, KeyError):  # no checkpoint chosen yet
            return
        if base is not None:
            self._target.value = base.data.target

    # ------------------------------------------------------------------ configs

    # ------------------------------------------------------------------ run

    def _on_start(self, _value: Any = None) -> None:
        from ..events import Stopper

        if self._runner.running:
            return
        try:
            pairs = self._training_pairs()
            model, train, data, initial = self._configs(pairs)
            if data.target == "instance" and data.label_mode == "sparse":
                raise ValueError(SCRIBBLES_NEED_CLASSES)
            grey = _rgb_as_grey(pairs, model, data)
            if grey:  # as `train --from` does: RGB for a one-channel model is its luminance
                data = data.replace(channel_axis=None)
            _check_channels(pairs, model, data)
            sizes = pair_pixel_sizes(pairs)  # resampled to the model's in the job, as the CLI
            model = _at_pixel_size(model, sizes)
            heads = self._heads_warning(pairs, data, model.num_classes)
            labels = [np.array(layer_data(lab)) for _, lab in pairs]  # a copy: painting goes on
            run_dir, copies = self._new_run(pairs, labels, model, train, data, initial, sizes)
        except (ValueError, OSError) as exc:
            show_error(str(exc))
            self._status.value = f"not started: {exc}"  # not an earlier run's "finished"
            return
        if heads:
            show_warning(f"UNet++ training: {heads}")
        images = [as_model_input(layer_data(i), 1, None, rgb=grey)[0] for i, _ in pairs]
        self._preview_layer, stopper = pairs[0][0], Stopper()
        self._note, self._shown_at = heads or "", 0.0
        preview = (
            self._preview_source(model.spatial_dims, sizes[0], grey)
            if self._preview.value
            else None
        )
        self._plot.start(train.iterations, range(1, model.depth + 1), _first_loss(model, initial))
        self._set_running(True)
        self._status.value = f"preparing data ({model.num_classes} output channel(s))..."
        job = train_job(
            model, train, data, initial, run_dir, stopper, images, labels, preview, sizes, copies
        )
        self._runner.start(
            job,
            on_yield=self._on_event,
            on_return=self._on_result,
            on_error=self._on_error,
            on_finish=lambda: self._set_running(False),
            stop=stopper.stop,
            where=str(run_dir),
        )
        self._on_queue_changed()

    def _heads_warning(
        self, pairs: list[tuple[Image, Labels]], data: DataConfig, classes: int
    ) -> str | None:
        """For a fine-tune whose labels replace the model's heads: the warning to give at
        Start (``train --from`` gives it too), else None."""
        from ..finetune import class_mapping

        _, base = self._initial()
        if base is None:
            return None
        return class_mapping([layer_data(lab) for _, lab in pairs], base.model, data, classes)[0]

    def _preview_source(
        self, dims: int, pixel_size: tuple[tuple[float, ...], str] | None, grey: bool = False
    ) -> PreviewSource:
        """The slice shown now, of the (first) training image, for the before/after view
        (``grey``: an RGB image seen by a one-channel model, as its luminance)."""
        axis = self._channel_axis_value()
        self._preview_point = tuple(self._viewer.dims.point)
        image = current_slice(self._preview_layer, self._viewer.dims.point, axis, dims)
        if grey:
            image, axis = as_model_input(image, 1, None, rgb=True)[0], None
        return PreviewSource(
            np.ascontiguousarray(image), axis is not None, self._device.value, pixel_size
        )

    def _new_run(
        self,
        pairs: list[tuple[Image, Labels]],
        labels: list[np.ndarray],
        model: ModelConfig,
        train: TrainConfig,
        data: DataConfig,
        initial: str | None,
        sizes: list[tuple[tuple[float, ...], str] | None],
    ) -> tuple[Path, list[LayerCopy]]:
        """A fresh run folder with ``run.json`` and ``command.sh`` in it, and the copies of
        the data they name, for the job to write (``labels``: the copies trained on)."""
        folder = chosen_path(self._output.value, "output folder")
        self.last_run_dir = run_dir = new_run_dir(folder, pairs[0][0].name)
        start = self._start_from.value
        origin = start if is_zoo(start) else initial  # a shipped model by name, not path
        one_size = sizes[0] if sizes and all(s == sizes[0] for s in sizes) else None
        copies = record_train(run_dir, pairs, labels, model, train, data, origin, one_size)
        return run_dir, copies

    def _set_running(self, running: bool) -> None:
        self._start.enabled, self._stop.enabled = not running, running

    def _on_stop(self, _value: Any = None) -> None:
        self._status.value = "stopping after this step; keeping the best model..."
        self._runner.request_stop()

    def _on_event(self, event: Any) -> None:
        if event.kind == "step":
            self._plot.add_step(event.step, event.loss)  # a list append; redrawn on a timer
            now = time.perf_counter()
            if now - self._shown_at < STATUS_INTERVAL_S and event.step < event.total:
                return  # every step is recorded, the text is redrawn a few times a second
            self._shown_at = now
            set_progress(self._progress, int(100 * event.fraction))
            eta = (
                ""
                if event.eta_s is None
                else " · ETA " + time.strftime("%H:%M:%S", time.gmtime(event.eta_s))
            )
            note = f"\n{self._note}" if self._note else ""
            self._status.value = f"step {event.step}/{event.total} · {event.message}{eta}{note}"
        elif event.kind == "note":
            self._note = event.message
            self._status.value = event.message
        elif event.kind == "validation":
            self._plot.add_validation(event.step, event.val_loss, event.val_scores)
        elif event.kind == "preview":
            try:
                self._show_preview(event)
            finally:
                event.shown.set()  # the training waits for this (see _train_job)
        elif event.kind == "done":
            set_progress(self._progress, int(100 * event.fraction))

    def _on_error(self, exc: BaseException) -> None:
        """The status says the run failed (the notification says why)."""
        self._status.value = f"failed: {exc.__cause__ or exc}"

    def _on_result(self, result: Any) -> None:
        from ..train_data import NO_VALIDATION

        if result.checkpoint is None:
            return
        if not result.info.provenance.get("iterations"):  # Stop came before the first step
            self._status.value = "stopped before the first training step: nothing was learned"
            return  # not offered as "just trained": its weights are the starting ones
        self.last_checkpoint = Path(result.checkpoint)
        assert self.last_run_dir is not None
        _state.register_model(self.last_run_dir.name, self.last_checkpoint)
        metrics = result.info.metrics
        best = metrics.get("best_depth")
        how = "stopped" if result.info.provenance.get("stopped_early") else "finished"
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
        warning = metrics.get("warning")  # e.g. labels of one class only: said at step 1 too
        self._status.value = (
            f"{how} at step {result.info.provenance.get('iterations')}; "
            f"depth L{best}; {judged}; model saved to {self.last_checkpoint}"
            + (f"; WARNING: {warning}" if warning else "")
        )
        if warning:
            show_warning(f"UNet++ training: {warning}")
        show_info(
            f"UNet++ training {how}: the model is in {self.last_checkpoint}; segment with it "
            "in the Segment with UNet++ widget (Model from: just trained)"
        )

    # ------------------------------------------------------------------ preview

    def _show_preview(self, event: PreviewEvent) -> None:
        """``<image> UNet++ before`` (starting model) or ``... preview`` (the new one)."""
        from ._layers import put_layer

        layer = self._preview_layer
        if layer not in self._viewer.layers:  # the user removed the image meanwhile
            return
        stage = "before" if event.stage == "before" else "preview"
        labels = event.labels
        lead = layer.ndim - (self._channel_axis_value() is not None) - labels.ndim
        point = [int(round(p)) for p in layer.world_to_data(self._preview_point)]
        scale, translate = list(layer.scale[-labels.ndim :]), list(layer.translate[-labels.ndim :])
        if lead > 0:  # a slice of a stack: place it where it was taken
            labels = labels[(None,) * lead]
            scale = list(layer.scale[:lead]) + scale
            translate = [
                t + p * s
                for t, p, s in zip(
                    layer.translate[:lead], point[:lead], layer.scale[:lead], strict=True
                )
            ] + translate
        put_layer(
            self._viewer,
            Labels,
            f"{layer.name} UNet++ {stage}",
            labels,
            scale,
            translate,
            {"stage": event.stage, "step": event.step},
            **layer_frame(layer, None if layer.rgb else self._channel_axis_value()),
            opacity=0.5,
        )


def _check_channels(
    pairs: list[tuple[Image, Labels]], model: ModelConfig, data: DataConfig
) -> None:
    """Refuse at Start images whose channels the model (a fine-tuned one's) cannot take; it
    failed inside the job, in the engine's words, after making a run folder."""
    for image, _ in pairs:
        shape = layer_data(image).shape
        channels = 1 if data.channel_axis is None else shape[data.channel_axis]
        if channels != model.in_channels:
            raise ValueError(
                f"the model takes {model.in_channels} input channel(s) but '{image.name}' "
                f"{shape} has {channels} with its 'Channel axis' choice: choose that axis, an "
                f"image of {model.in_channels} channel(s), or start from scratch"
            )


def _placement_note(image: Image, labels: Labels) -> str:
    """A note when the labels are shown at another scale or place than the image (a label
    file without the image's pixel size): training pairs their arrays pixel by pixel."""
    n = labels.ndim
    same = np.allclose(image.scale[-n:], labels.scale) and np.allclose(
        image.translate[-n:], labels.translate
    )
    return (
        ""
        if same
        else "note: the labels are shown at another scale or position than the image; "
        "training pairs them pixel by pixel (as painted into the labels' array)"
    )


def _rgb_as_grey(pairs: list[tuple[Image, Labels]], model: ModelConfig, data: DataConfig) -> bool:
    """Whether the training images are RGB layers for a one-channel model (a fine-tune of
    the shipped nuclei model on H&E, say): then they are trained on as their luminance, as
    the Segment dock and the CLI see them (the channel axis would be a dead end)."""
    return (
        model.in_channels == 1
        and data.channel_axis is not None
        and all(image.rgb for image, _ in pairs)
    )
