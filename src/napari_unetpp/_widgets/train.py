"""Train or fine-tune a UNet++ on Image + Labels layers (a thin widget).

UI values -> ModelConfig / TrainConfig / DataConfig -> ``training.Trainer.run`` in the
viewer's job queue -> events -> progress bar, live plot, optional preview layer. The
finished (or stopped) run's best model is registered in :mod:`._state` for the predict
widget, and ``run.json`` + ``command.sh`` beside it reproduce it from a shell. The
widgets are :class:`._train_form.TrainForm`, the configs they say and the checks at
Start :mod:`._train_configs`; its reactions to the user (pairs, label-mode and target
guesses, 'Start from') are :class:`._train_inputs.TrainInputs`; the job and the run
record are in :mod:`._train_job`, the before/after layers in :mod:`._train_preview`.

Fine-tuning (starting from a model) switches to safe defaults: learning rate
:data:`._train_form.FINE_TUNE_LR`, :data:`..config.FINE_TUNE_ITERATIONS` steps,
BatchNorm statistics kept (``TrainConfig.freeze_norm``, the engine's default for
fine-tunes, so the CLI does the same), and a before/after view of the slice shown:
``<image> UNet++ before`` (the starting model) and ``<image> UNet++ preview`` (the new
one). Previews are computed inside the training job (never a second torch job beside
it). Closing the dock (or the viewer) stops its training as Stop does: ``last/`` and
``best/`` are saved.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning

from ..labels import check_instance_scribbles
from ..normalization import as_model_input
from ..runs import discard_unstarted_run
from . import _state
from ._dock import on_dock_closed
from ._jobs import queue_for
from ._layers import layer_data
from ._paths import chosen_path
from ._runner import JobRunner
from ._train_configs import at_pixel_size, check_channels, pair_pixel_sizes, rgb_as_grey
from ._train_inputs import TrainInputs
from ._train_job import (
    PreviewEvent,
    PreviewSource,
    Refused,
    finished_message,
    new_train_run,
    train_job,
)
from ._train_preview import preview_source, show_preview
from ._ui import set_progress, spread

if TYPE_CHECKING:
    import napari

    from ..config import ModelConfig

#: Progress text is redrawn at most this often (each redraw costs the GUI thread).
STATUS_INTERVAL_S = 0.25


def _first_loss(model: ModelConfig, initial: str | None) -> float | None:
    """The loss a new network starts near (None for a fine-tune: its start is unknown).

    (BCE or CE) + Dice of an untrained network: about ln(classes) + 1 (measured 1.51
    for a binary model); the live plot sizes its loss axis for it at Start.
    """
    return None if initial is not None else math.log(max(2, model.num_classes)) + 1.0


class TrainWidget(TrainInputs):
    """Dock widget: train a UNet++ from scratch or fine-tune one, on painted labels."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self._runner = JobRunner(queue=queue_for(napari_viewer), owner="train")
        self._note, self._shown_at, self._gone = "", 0.0, False
        self.last_run_dir: Path | None = None
        self.last_checkpoint: Path | None = None
        self._left_run: str | None = None  # a closed dock's training, stopping: its run
        self._connect()
        self._on_pair_changed()
        self._on_queue_changed()

    def _connect(self) -> None:
        self._show_advanced.changed.connect(self._on_show_advanced)
        self._start.changed.connect(self._on_start)
        self._stop.changed.connect(self._on_stop)
        # an outside signal (as the viewer's, in TrainInputs): disconnected when the dock
        # goes, so a closed widget that Python has not collected yet is never called back
        self._runner.queue.changed.connect(self._on_queue_changed)
        on_dock_closed(self.native, self._viewer, self._closed)

    def _closed(self) -> None:
        """The dock was closed (or deleted): stop its training, stop listening."""
        self._gone = True  # a preview being added stops (its Qt widgets may be deleted)
        self._runner.quit()
        self._runner.queue.changed.disconnect(self._on_queue_changed)
        super()._closed()

    # ------------------------------------------------------------------ UI events

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
            self._status.value = self._runner.queue.waiting_note()

    # ------------------------------------------------------------------ run

    def _on_start(self, _value: Any = None) -> None:
        from ..events import Stopper

        if self._runner.running:
            return
        try:
            pairs = self._training_pairs()
            model, train, data, initial = self._configs(pairs)
            if data.target == "instance" and data.label_mode == "sparse":
                for _, lab in pairs:  # its three classes: 1 background, 2 inside, 3 edge
                    check_instance_scribbles(layer_data(lab))
            grey = rgb_as_grey(pairs, model, data)
            if grey:  # as `train --from` does: RGB for a one-channel model is its luminance
                data = data.replace(channel_axis=None)
            check_channels(pairs, model, data)
            sizes = pair_pixel_sizes(pairs)  # resampled to the model's in the job, as the CLI
            model = at_pixel_size(model, sizes)
            heads, mapping = self._class_mapping(pairs, data, model.num_classes)
            labels = [np.array(layer_data(lab)) for _, lab in pairs]  # a copy: painting goes on
            folder = chosen_path(self._output.value, "output folder")
            start = self._start_from.value
            anyway = bool(self._train_anyway.value)
            run_dir, copies = new_train_run(
                folder, pairs, labels, (model, train, data), start, initial, sizes, anyway
            )
            self.last_run_dir = run_dir
        except (ValueError, OSError) as exc:
            show_error(str(exc))
            self._status.value = f"not started: {exc}"  # not an earlier run's "finished"
            return
        if heads:
            show_warning(f"UNet++ training: {heads}")
        elif mapping:  # which value trains which of the model's classes, as `train --from`
            show_info(f"UNet++ training: {mapping}")
        images = [as_model_input(layer_data(i), 1, None, rgb=grey)[0] for i, _ in pairs]
        self._preview_layer, stopper = pairs[0][0], Stopper()
        self._note, self._shown_at = heads or mapping or "", 0.0
        preview = (
            self._preview_source(model.spatial_dims, sizes[0], grey)
            if self._preview.value
            else None
        )
        self._plot.start(train.iterations, range(1, model.depth + 1), _first_loss(model, initial))
        self._set_running(True)
        self._status.value = f"preparing data ({model.num_classes} output channel(s))..."
        job = train_job(
            *(model, train, data, initial, run_dir, stopper, images, labels),
            *(preview, sizes, copies, not anyway),  # harmful labels stop it, unless 'anyway'
        )
        self._runner.start(
            job,
            on_yield=self._on_event,
            on_return=self._on_result,
            on_error=self._on_error,
            on_finish=lambda ran: self._finished(run_dir, ran),
            stop=stopper.stop,
            where=str(run_dir),
        )
        self._on_queue_changed()

    def _set_running(self, running: bool) -> None:
        self._start.enabled, self._stop.enabled = not running, running

    def _finished(self, run_dir: Path, ran: bool) -> None:
        """Buttons back; a run stopped while it waited for another job says so, and its
        folder goes (its command.sh named data never written; the status said
        "stopping after this step" for good)."""
        self._set_running(False)
        if not ran:
            discard_unstarted_run(run_dir)
            self._status.value = "stopped before it started: nothing was trained"
            set_progress(self._progress, 0)

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
            self._show_preview(event)  # sets event.shown: the training waits (see _train_job)
        elif event.kind == "done":
            set_progress(self._progress, int(100 * event.fraction))

    def _on_error(self, exc: BaseException) -> None:
        """The status says the run failed (the notification says why)."""
        self._status.value = f"failed: {exc.__cause__ or exc}"

    def _on_result(self, result: Any) -> None:
        if isinstance(result, Refused):  # labels that would make the model worse
            self._refused(result.reason)
            return
        if result.checkpoint is None:
            return
        if not result.info.provenance.get("iterations"):  # Stop came before the first step
            self._status.value = "stopped before the first training step: nothing was learned"
            return  # not offered as "just trained": its weights are the starting ones
        self.last_checkpoint = Path(result.checkpoint)
        assert self.last_run_dir is not None
        _state.register_model(self.last_run_dir.name, self.last_checkpoint)
        how = "stopped" if result.info.provenance.get("stopped_early") else "finished"
        warning = result.info.metrics.get("warning")  # e.g. one class only: said at step 1 too
        self._status.value = finished_message(result, how, self.last_checkpoint)
        if warning:
            show_warning(f"UNet++ training: {warning}")
        show_info(
            f"UNet++ training {how}: the model is in {self.last_checkpoint}; segment with it "
            "in the Segment with UNet++ widget (Model from: just trained)"
        )

    def _refused(self, reason: str) -> None:
        """A fine-tune stopped before it started: why, and how to go on anyway (its run
        folder goes: it holds only the record of a run that never ran).

        Why before: said once the run had started (and it went on), the warning was
        missed, and the EM model fine-tuned on membrane strokes in label 1 ended at IoU
        0.015 (``benchmarks/bench_dock_finetune.py em-label1``)."""
        from ..finetune_checks import TRAIN_ANYWAY
        from ..remedies import phrased

        if self.last_run_dir is not None:
            discard_unstarted_run(self.last_run_dir)
        how = TRAIN_ANYWAY.format(how="tick 'Train anyway' and press Start")
        reason = phrased(reason, "dock")  # the dock's fields, not the CLI's flags
        show_error(f"UNet++ training: {reason}; {how}")
        self._status.value = f"{reason}; {how}"

    # ------------------------------------------------------------------ preview

    def _preview_source(
        self, dims: int, pixel_size: tuple[tuple[float, ...], str] | None, grey: bool = False
    ) -> PreviewSource:
        """The slice shown now, of the (first) training image, for the before/after view
        (``grey``: an RGB image seen by a one-channel model, as its luminance)."""
        self._preview_point = tuple(self._viewer.dims.point)
        return preview_source(
            self._preview_layer,
            self._preview_point,
            self._channel_axis_value(),
            dims,
            self._device.value,
            pixel_size,
            grey,
        )

    def _show_preview(self, event: PreviewEvent) -> None:
        """``<image> UNet++ before`` (starting model) or ``... preview`` (the new one), one
        step per event-loop turn (:func:`._train_preview.show_preview`)."""
        layer = self._preview_layer
        try:
            if layer not in self._viewer.layers:  # the user removed the image meanwhile
                event.shown.set()
                return
            point, axis = self._preview_point, self._channel_axis_value()
        except BaseException:
            event.shown.set()
            raise
        steps = show_preview(self._viewer, layer, event, point, axis)
        spread(steps, lambda _none: None, self._runner.inline, alive=lambda: not self._gone)
