"""Train or fine-tune a UNet++ on Image + Labels layers (a thin widget).

UI values -> ModelConfig / TrainConfig / DataConfig -> ``training.Trainer.run`` in the
viewer's job queue -> events -> progress bar, live plot, optional preview layer. The
finished (or stopped) run's best model is registered in :mod:`._state` for the predict
widget, and ``run.json`` + ``command.sh`` beside it reproduce it from a shell.

Fine-tuning (starting from a model) switches to safe defaults: learning rate
:data:`FINE_TUNE_LR`, :data:`FINE_TUNE_ITERATIONS` steps, BatchNorm statistics kept
(``TrainConfig.freeze_norm``, the engine's default for fine-tunes, so the CLI does
the same), and a before/after view of the slice shown: ``<image> UNet++ before``
(the starting model) and ``<image> UNet++ preview`` (the new one). Previews are
computed inside the training job (never a second torch job beside it). Closing the
dock stops its training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    Widget,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info

from ..config import FINE_TUNE_LEARNING_RATE
from ..locate import is_zoo, locate
from ..runs import format_command, new_run_dir, save_run_record, train_record
from . import _state
from ._jobs import on_dock_closed, queue_for
from ._layers import PLUGIN_KEY, current_slice, layer_data, layer_files
from ._paths import chosen_path
from ._plot import TrainingPlot
from ._runner import JobRunner
from ._train_job import PreviewEvent, PreviewSource, train_job

if TYPE_CHECKING:
    import napari

    from ..config import DataConfig, ModelConfig, TrainConfig

WIDTH_PRESETS = {
    "fast CPU (16..256)": (16, 32, 64, 128, 256),
    "tiny (8..128)": (8, 16, 32, 64, 128),
    "paper (32..512)": (32, 64, 128, 256, 512),
}
CHANNEL_AXES = [
    ("none (grey)", "none"),
    ("last (RGB / YXC)", "-1"),
    ("axis 0", "0"),
    ("axis 1", "1"),
]
DEFAULT_OUTPUT = Path.home() / "napari-unetpp" / "runs"
#: Labels with more elements are guessed from their middle slice (keeps the GUI snappy).
GUESS_MAX_SIZE = 1 << 24
#: Defaults when starting from a trained model: small steps that keep what it knows.
FINE_TUNE_LR, FINE_TUNE_ITERATIONS = FINE_TUNE_LEARNING_RATE, 200
SCRATCH_LR, SCRATCH_ITERATIONS = 1e-3, 2000
#: The label-mode guess is refreshed this long after the last brush stroke.
GUESS_DELAY_MS = 500
#: Progress text is redrawn at most this often (each redraw costs the GUI thread).
STATUS_INTERVAL_S = 0.25


def _wrapped(text: str = "") -> Label:
    """A Label whose long text wraps instead of widening the dock."""
    label = Label(value=text)
    label.native.setWordWrap(True)
    return label


class TrainWidget(Container):
    """Dock widget: train a UNet++ from scratch or fine-tune one, on painted labels."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=True)
        self._viewer = napari_viewer
        self._runner = JobRunner(queue=queue_for(napari_viewer), owner="train")
        self._pairs: list[tuple[Image, Labels]] = []
        self._mode_from_user = False
        self._painted: Labels | None = None  # the layer whose paint events we follow
        self._note, self._shown_at = "", 0.0
        self.last_run_dir: Path | None = None
        self.last_checkpoint: Path | None = None
        self._build_data()
        self._build_model()
        self._build_advanced()
        self._build_run()
        self._connect()
        self._on_pair_changed()
        self._on_queue_changed()

    # ------------------------------------------------------------------ layout

    def _layers(self, kind: type[Any]) -> Any:
        return lambda _w=None: [
            (layer.name, layer) for layer in self._viewer.layers if isinstance(layer, kind)
        ]

    def _build_data(self) -> None:
        # not "_labels": that is magicgui Container's "show labels" flag (issue 16)
        self._image = ComboBox(label="Image", choices=self._layers(Image))
        self._labels_box = ComboBox(label="Labels", choices=self._user_labels_first)
        self._pair_info = _wrapped()
        self._add_pair, self._clear_pairs = PushButton(text="Add pair"), PushButton(text="Clear")
        self._pair_list = _wrapped("training on: the selected pair")
        self._label_mode = ComboBox(label="Label mode", choices=["dense", "sparse"])
        self._label_reason = _wrapped()
        self._target = ComboBox(
            label="Target",
            choices=[("semantic (classes)", "semantic"), ("instances (boundaries)", "instance")],
        )
        self._dims = ComboBox(label="Stacks as", choices=[("2D slice-wise", 2), ("3D", 3)])
        self._channel_axis = ComboBox(label="Channel axis", choices=CHANNEL_AXES)
        pairs = Container(
            widgets=[self._add_pair, self._clear_pairs], layout="horizontal", labels=False
        )
        self.extend(
            [
                self._image,
                self._labels_box,
                self._pair_info,
                pairs,
                self._pair_list,
                self._label_mode,
                self._label_reason,
                self._target,
                self._dims,
                self._channel_axis,
            ]
        )

    def _build_model(self) -> None:
        self._start_from = ComboBox(label="Start from", choices=self._start_choices)
        self._checkpoint_file = FileEdit(
            label="Checkpoint",
            mode=FileDialogMode.EXISTING_FILE,
            filter="*.json *.zip",
            visible=False,
        )
        self._widths = ComboBox(label="Widths", choices=list(WIDTH_PRESETS.items()))
        self._depth = SpinBox(label="Depth", value=4, min=1, max=4)
        self._iterations = SpinBox(label="Iterations", value=2000, min=1, max=1_000_000, step=100)
        self._patch = SpinBox(label="Patch size", value=128, min=16, max=1024, step=16)
        self._batch = SpinBox(label="Batch size", value=4, min=1, max=256)
        self._lr = FloatSpinBox(
            label="Learning rate", value=SCRATCH_LR, min=1e-6, max=1.0, step=1e-5
        )
        self._lr.native.setDecimals(6)
        self._device = ComboBox(label="Device", choices=["auto", "cuda", "mps", "cpu"])
        self.extend(
            [
                self._start_from,
                self._checkpoint_file,
                self._widths,
                self._depth,
                self._iterations,
                self._patch,
                self._batch,
                self._lr,
                self._device,
            ]
        )

    def _build_advanced(self) -> None:
        self._show_advanced = CheckBox(text="Advanced options", value=False)
        self._custom_widths = LineEdit(label="Custom widths", value="", tooltip="e.g. 8 16 32")
        self._patch_z = SpinBox(label="Patch depth (3D)", value=16, min=4, max=512)
        self._validate_every = SpinBox(label="Validate every", value=100, min=1, max=100_000)
        self._val_fraction = FloatSpinBox(
            label="Validation part", value=0.2, min=0, max=0.9, step=0.05
        )
        self._augment = CheckBox(text="Augment", value=True)
        self._elastic = CheckBox(text="Elastic deformation", value=False)
        self._normalization = ComboBox(
            label="Normalisation", choices=["percentile", "window", "none"]
        )
        self._norm_low = FloatSpinBox(label="low", value=1.0, min=-1e6, max=1e6)
        self._norm_high = FloatSpinBox(label="high", value=99.8, min=-1e6, max=1e6)
        self._freeze_encoder = CheckBox(text="Freeze encoder (fine-tuning)", value=False)
        self._freeze_norm = CheckBox(text="Keep BatchNorm statistics (fine-tuning)", value=False)
        self._preserve = CheckBox(
            text="Keep unpainted predictions (fine-tuning)",
            value=False,
            tooltip="Where you painted nothing, the model is held to its own starting "
            "prediction, so a few strokes correct it without changing the rest",
        )
        self._mixed_precision = CheckBox(text="Mixed precision (CUDA)", value=True)
        self._seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        advanced: list[Widget] = [
            self._custom_widths,
            self._patch_z,
            self._validate_every,
            self._val_fraction,
            self._augment,
            self._elastic,
            self._normalization,
            self._norm_low,
            self._norm_high,
            self._freeze_encoder,
            self._freeze_norm,
            self._preserve,
            self._mixed_precision,
            self._seed,
        ]
        self._advanced = Container(visible=False, widgets=advanced)
        self.extend([self._show_advanced, self._advanced])

    def _build_run(self) -> None:
        self._output = FileEdit(
            label="Output folder", mode=FileDialogMode.EXISTING_DIRECTORY, value=DEFAULT_OUTPUT
        )
        self._preview = CheckBox(text="Preview the slice shown (before/after)", value=False)
        self._start, self._stop = PushButton(text="Start"), PushButton(text="Stop", enabled=False)
        self._progress = ProgressBar(label="Progress", value=0, min=0, max=100)
        self._status = _wrapped()
        buttons = Container(widgets=[self._start, self._stop], layout="horizontal", labels=False)
        self.extend([self._output, self._preview, buttons, self._progress, self._status])
        self._plot = TrainingPlot()
        self._plot.setMinimumWidth(200)
        self.native.layout().addWidget(self._plot)

    def _connect(self) -> None:
        from qtpy.QtCore import QTimer

        self._guess_timer = QTimer()
        self._guess_timer.setSingleShot(True)
        self._guess_timer.setInterval(GUESS_DELAY_MS)
        self._guess_timer.timeout.connect(self._on_pair_changed)
        self._image.changed.connect(self._on_pair_changed)
        self._labels_box.changed.connect(self._on_pair_changed)
        self._label_mode.native.activated.connect(self._on_user_mode)  # user choices only
        self._add_pair.changed.connect(self._on_add_pair)
        self._clear_pairs.changed.connect(self._on_clear_pairs)
        self._start_from.changed.connect(self._on_start_from)
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
        on_dock_closed(self.native, self._viewer.window._qt_window, self._closed)

    def _closed(self) -> None:
        """The dock was closed (or deleted): stop its training, stop listening."""
        self._runner.quit()
        _state.models_changed.disconnect(self._on_models_changed)
        self._runner.queue.changed.disconnect(self._on_queue_changed)
        for event in ("inserted", "removed", "reordered"):
            getattr(self._viewer.layers.events, event).disconnect(self._on_layers_changed)
        self._follow_painting(None)
        self._guess_timer.stop()

    def _start_choices(self, _w: Any = None) -> list[tuple[str, str]]:
        from ..zoo import available_models

        choices = [("scratch", "scratch")]
        choices += [(f"shipped: {e.name}", e.spec) for e in available_models()]
        choices += [(f"trained: {n}", f"trained:{n}") for n in _state.registered_models()]
        return choices + [("checkpoint file...", "file")]

    # ------------------------------------------------------------------ UI events

    def _user_labels_first(self, _w: Any = None) -> list[tuple[str, Labels]]:
        """Labels layers, the user's before the plugin's own outputs (the default is the first)."""
        layers = [layer for layer in self._viewer.layers if isinstance(layer, Labels)]
        layers.sort(key=lambda layer: PLUGIN_KEY in layer.metadata)
        return [(layer.name, layer) for layer in layers]

    def _on_layers_changed(self, _event: Any = None) -> None:
        try:
            self.reset_choices()
        except RuntimeError:  # its Qt widgets were deleted before the dock said so
            self._closed()

    def _on_models_changed(self) -> None:
        try:
            self._start_from.reset_choices()
        except RuntimeError:
            self._closed()

    def _on_queue_changed(self) -> None:
        """Show a training of this viewer that another (closed) dock left stopping."""
        if not self._runner.running and self._runner.queue.busy("train"):
            self._status.value = "a training of this viewer is stopping; Start waits for it"
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
        if image.rgb:
            self._channel_axis.value = "-1"
        try:
            self._check_pair(image, labels)
        except ValueError as exc:
            self._pair_info.value = f"⚠ {exc}"
            return
        self._guess_label_mode(labels)

    def _on_user_mode(self, _index: int) -> None:
        self._mode_from_user = True
        self._label_reason.value = f"label mode set to {self._label_mode.value} by you"

    def _guess_label_mode(self, labels: Labels) -> None:
        from ..labels import guess_label_mode

        if self._mode_from_user:
            return
        data = layer_data(labels)
        if data.size > GUESS_MAX_SIZE and data.ndim > 2:
            data = data[data.shape[0] // 2]
        try:
            mode, why = guess_label_mode(np.asarray(data))
        except ValueError as exc:
            self._label_reason.value = str(exc)
            return
        self._label_mode.value = mode
        self._label_reason.value = f"guessed {mode}: {why}"

    def _check_pair(self, image: Image, labels: Labels) -> None:
        from ..normalization import check_pair

        check_pair(layer_data(image), layer_data(labels), self._channel_axis_value())

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

    # ------------------------------------------------------------------ configs

    def _channel_axis_value(self) -> int | None:
        value = self._channel_axis.value
        return None if value == "none" else int(value)

    def _training_pairs(self) -> list[tuple[Image, Labels]]:
        if self._pairs:
            return list(self._pairs)
        image, labels = self._image.value, self._labels_box.value
        if image is None or labels is None:
            raise ValueError("choose an Image layer and a Labels layer (paint labels first)")
        self._check_pair(image, labels)
        self._guess_label_mode(labels)
        return [(image, labels)]

    def _initial(self) -> tuple[str | None, Any]:
        """The checkpoint to start from (path or zoo folder) and its info, or (None, None)."""
        from ..checkpoint import read_info

        value = self._start_from.value
        if value == "scratch":
            return None, None
        if is_zoo(value):
            path = str(locate(value).path)
        elif value.startswith("trained:"):
            path = str(_state.registered_models()[value[8:]])
        else:
            path = str(chosen_path(self._checkpoint_file.value, "checkpoint file"))
        return path, read_info(path)

    def _widths_value(self) -> tuple[int, ...]:
        text = self._custom_widths.value.replace(",", " ").split()
        try:
            return tuple(int(t) for t in text) if text else self._widths.value
        except ValueError:
            raise ValueError(
                f"custom widths {self._custom_widths.value!r}: give integers, e.g. 8 16 32 64 128"
            ) from None

    def _configs(
        self, pairs: list[tuple[Image, Labels]]
    ) -> tuple[ModelConfig, TrainConfig, DataConfig, str | None]:
        from ..config import DataConfig, ModelConfig, NormalizationConfig, TrainConfig
        from ..labels import num_output_channels

        initial, base = self._initial()
        norm = NormalizationConfig(
            self._normalization.value, self._norm_low.value, self._norm_high.value
        )
        data = DataConfig(
            normalization=base.data.normalization if base else norm,
            label_mode=self._label_mode.value,
            target=self._target.value,
            channel_axis=self._channel_axis_value(),
        )
        classes = num_output_channels(data, [layer_data(lab) for _, lab in pairs])
        axis = data.channel_axis
        channels = 1 if axis is None else layer_data(pairs[0][0]).shape[axis]
        if base is None:
            model = ModelConfig(
                in_channels=channels,
                num_classes=classes,
                widths=self._widths_value(),
                depth=self._depth.value,
                spatial_dims=self._dims.value,
            )
        else:
            model = base.model.replace(num_classes=classes, class_names=())
        dims = model.spatial_dims
        patch = (self._patch.value,) * 2
        train = TrainConfig(
            iterations=self._iterations.value,
            batch_size=self._batch.value,
            patch_size=patch if dims == 2 else (self._patch_z.value, *patch),
            learning_rate=self._lr.value,
            validate_every=min(self._validate_every.value, self._iterations.value),
            validation_fraction=self._val_fraction.value,
            augment=self._augment.value,
            elastic=self._elastic.value,
            device=self._device.value,
            mixed_precision=self._mixed_precision.value,
            seed=self._seed.value,
            freeze_encoder=self._freeze_encoder.value,
            freeze_norm=self._freeze_norm.value,
            preserve_weight=1.0 if self._preserve.value and initial is not None else 0.0,
        )
        return model, train, data, initial

    # ------------------------------------------------------------------ run

    def _on_start(self, _value: Any = None) -> None:
        from ..events import Stopper

        if self._runner.running:
            return
        try:
            pairs = self._training_pairs()
            model, train, data, initial = self._configs(pairs)
            run_dir = self._fresh_run_dir(pairs[0][0].name)
            self._record(run_dir, pairs, model, train, data, initial)
        except (ValueError, OSError) as exc:
            show_error(str(exc))
            return
        images = [layer_data(i) for i, _ in pairs]
        labels = [np.array(layer_data(lab)) for _, lab in pairs]  # a copy: painting goes on
        self._preview_layer, stopper = pairs[0][0], Stopper()
        self._note, self._shown_at = "", 0.0
        preview = self._preview_source(model.spatial_dims) if self._preview.value else None
        self._plot.clear()
        self._set_running(True)
        self._status.value = f"preparing data ({model.num_classes} output channel(s))..."
        job = train_job(model, train, data, initial, run_dir, stopper, images, labels, preview)
        self._runner.start(
            job,
            on_yield=self._on_event,
            on_return=self._on_result,
            on_finish=lambda: self._set_running(False),
            stop=stopper.stop,
        )
        self._on_queue_changed()

    def _preview_source(self, dims: int) -> PreviewSource:
        """The slice shown now, of the (first) training image, for the before/after view."""
        axis = self._channel_axis_value()
        self._preview_point = tuple(self._viewer.dims.point)
        image = current_slice(self._preview_layer, self._viewer.dims.point, axis, dims)
        return PreviewSource(np.ascontiguousarray(image), axis is not None, self._device.value)

    def _fresh_run_dir(self, name: str) -> Path:
        self.last_run_dir = new_run_dir(chosen_path(self._output.value, "output folder"), name)
        return self.last_run_dir

    def _record(
        self,
        run_dir: Path,
        pairs: list[tuple[Image, Labels]],
        model: ModelConfig,
        train: TrainConfig,
        data: DataConfig,
        initial: str | None,
    ) -> None:
        images = layer_files([i for i, _ in pairs], run_dir / "data", "image")
        labels = layer_files([lab for _, lab in pairs], run_dir / "data", "labels")
        start = self._start_from.value
        origin = start if is_zoo(start) else initial
        configs = train_record(model, train, data, {"images": images, "labels": labels}, origin)
        command = format_command(
            "train",
            images=images,
            labels=labels,
            out=run_dir,
            config=run_dir / "run.json",
            from_=origin,
        )
        save_run_record(run_dir, "train", configs, command)

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
            self._progress.value = int(100 * event.fraction)
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
            self._show_preview(event)
        elif event.kind == "done":
            self._progress.value = int(100 * event.fraction)

    def _on_result(self, result: Any) -> None:
        if result.checkpoint is None:
            return
        self.last_checkpoint = Path(result.checkpoint)
        assert self.last_run_dir is not None
        _state.register_model(self.last_run_dir.name, self.last_checkpoint)
        metrics = result.info.metrics
        best = metrics.get("best_depth")
        how = "stopped" if result.info.provenance.get("stopped_early") else "finished"
        scores = [row.get("iou") for row in (metrics.get("depths") or {}).values()]
        known = [s for s in scores if s is not None]
        judged = (
            f"validation IoU {max(known):.3f}"
            if known
            else "no validation score: paint on more of the image; compare the before/after "
            "layers instead"
        )
        self._status.value = (
            f"{how} at step {result.info.provenance.get('iterations')}; "
            f"depth L{best}; {judged}; model saved to {self.last_checkpoint}"
        )
        show_info(
            f"UNet++ training {how}: the model is in {self.last_checkpoint} and in the "
            "Segment with UNet++ widget"
        )

    # ------------------------------------------------------------------ preview

    def _show_preview(self, event: PreviewEvent) -> None:
        """``<image> UNet++ before`` (starting model) or ``... preview`` (the new one)."""
        from ._layers import put_layer

        layer = self._preview_layer
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
            opacity=0.5,
        )
