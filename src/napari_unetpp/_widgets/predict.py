"""Segment an Image layer with a UNet++ and see every depth (a thin widget).

UI values -> PredictConfig + the model's DataConfig -> ``inference.predict`` in a
:class:`._runner.JobRunner` -> events -> progress bar -> layers, updated in place on re-runs:
``<image> UNet++ L1`` .. ``L<D>`` (per-depth probability, magma, same scale/translate as the
input) and ``<image> UNet++ labels`` (``postprocess.probabilities_to_labels`` of the depth
the pruning panel's slider shows: instances for nuclei models). The labels layer's metadata
records the model, that depth and the scale; class names show on hover (layer features)
with fixed colours and a legend in the dock. Per-depth layers that an earlier model with
more depths left behind are removed. Multi-class models show the probability of *any
foreground* (1 - background) per depth, what one compares across depths by eye; the
classes are in the labels. "current slice only" writes its own one-slice-thick
``... (quick look)`` layers placed at the slice shown, leaving the whole-stack layers
alone. RGB images given to a 1-channel model become grey (luminance,
``data.rgb_to_grey``, as the CLI does).

Every run writes ``run.json``, ``command.sh`` (the same run as ``napari-unetpp predict``)
and ``labels.tif`` into ``<output folder>/<image>-<timestamp>``. The default output folder
is ``~/napari-unetpp/predictions``, beside the train widget's ``runs``: one predictable
place, never a write into data folders (often read-only shares).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    TextEdit,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info

from ..locate import is_zoo, zoo_name, zoo_spec
from ..normalization import rgb_to_grey
from ..runs import format_command, new_run_dir, predict_record, save_run_record
from ..zoo import card_markdown
from . import _state
from ._jobs import on_dock_closed, queue_for
from ._layers import class_legend, labels_style, layer_file, put_layer
from ._paths import chosen_path
from ._runner import JobRunner
from .pruning_panel import PruningPanel
from .scale_panel import ScalePanel, check_job, estimate_job

if TYPE_CHECKING:
    import napari

    from ..checkpoint import CheckpointInfo
    from ..config import DataConfig, PredictConfig
    from ..events import Stopper
    from ..model import UNetPlusPlus

SOURCES = ["shipped", "just trained", "from file"]
SCOPES = ["2D", "whole stack slice-wise", "3D", "current slice only (quick look)"]
DEFAULT_OUTPUT = Path.home() / "napari-unetpp" / "predictions"


class Placement(NamedTuple):
    """Where a run's output goes: slice index (quick look), output scale and translate."""

    lead_index: tuple[int, ...] | None
    scale: tuple[float, ...]
    translate: tuple[float, ...]


def segment_job(
    model: UNetPlusPlus,
    image: Any,
    config: PredictConfig,
    data: DataConfig,
    stopper: Stopper,
    run_dir: Path,
    depth: int | None = None,
) -> Generator[Any, None, tuple[Any, Any]]:
    """Predict, then turn head ``depth`` (default: the pruned or deepest one) into labels;
    save them to ``run_dir``."""
    import tifffile

    from ..inference import predict
    from ..postprocess import probabilities_to_labels

    probs = yield from predict(model, image, config, data, stopper=stopper)
    if not probs.complete:
        return probs, None
    depth = config.pruned_depth or (depth if depth in probs else max(probs))
    labels = probabilities_to_labels(
        np.asarray(probs[depth]),
        model.config,
        data,
        threshold=config.threshold,
        min_size=config.min_size,
    )
    tifffile.imwrite(run_dir / "labels.tif", labels, compression="zlib")
    return probs, labels


class PredictWidget(Container):
    """Dock widget: segment with a shipped, just-trained or saved UNet++; prune it."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=True)
        self._viewer = napari_viewer
        self._runner = JobRunner(queue=queue_for(napari_viewer), owner="segment")
        self._loading = False
        self._model_from_user = False
        self.model: UNetPlusPlus | None = None
        self.info: CheckpointInfo | None = None
        self.model_spec: str | None = None  # "zoo:<name>" or a checkpoint path (for command.sh)
        self.last_run_dir: Path | None = None
        self.last_probabilities: dict[int, Any] | None = None  # engine output of the last run
        self._build()
        _state.models_changed.connect(self._on_models_changed)
        for event in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, event).connect(self._on_layers_changed)
        on_dock_closed(self.native, napari_viewer.window._qt_window, self._on_closed)
        initial = (
            "just trained"
            if _state.registered_models()
            else "shipped"
            if self._zoo_choices()
            else "from file"
        )
        self._source.value = initial
        if initial == "shipped":
            self._pick_zoo_model()
        self._on_source()

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self._source = ComboBox(label="Model from", choices=SOURCES)
        self._model = ComboBox(label="Model", choices=self._model_choices)
        self._file = FileEdit(
            label="Model folder", mode=FileDialogMode.EXISTING_DIRECTORY, value=None
        )
        self._card = TextEdit(label="Model card", value="no model loaded")
        self._card.native.setReadOnly(True)
        self._card.native.setMaximumHeight(150)
        self._image = ComboBox(label="Image", choices=self._image_layers)
        self._scope = ComboBox(label="Scope", choices=SCOPES)
        self._tile = SpinBox(label="Tile size", min=16, max=4096, step=16, value=256)
        self._device = ComboBox(label="Device", choices=_device_choices())
        self._tta = CheckBox(
            text="Test-time augmentation (8x slower)",
            tooltip="averages flipped copies: smoother, 8x slower",
        )
        self._output = FileEdit(
            label="Output folder", mode=FileDialogMode.EXISTING_DIRECTORY, value=DEFAULT_OUTPUT
        )
        self._run = PushButton(text="Segment")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(min=0, max=100, value=0)
        self._status = Label(value="")
        self._status.native.setWordWrap(True)  # long run paths must not widen the dock
        self._legend = Label(value="", visible=False)
        self._legend.native.setWordWrap(True)
        self.pruning = PruningPanel(self._runner.queue)
        self.pruning.set_device(self._device.value)
        self.pruning.set_output_folder(chosen_path(self._output.value, "output folder"))
        self.scale = ScalePanel()
        buttons = Container(layout="horizontal", widgets=[self._run, self._cancel], labels=False)
        for box in (self._source, self._model, self._image, self._scope, self._device):
            _narrow(box)  # long model/layer names must not widen the dock (laptop screens)
        self.extend(
            [
                self._source,
                self._model,
                self._file,
                self._card,
                self._image,
                self._scope,
                self.scale,
                self._tile,
                self._device,
                self._tta,
                self._output,
                buttons,
                self._progress,
                self._status,
                self._legend,
                self.pruning,
            ]
        )
        self.scale.estimate.changed.connect(self.estimate_size)
        self.scale.check.changed.connect(self.check_image)
        self._source.changed.connect(self._on_source)
        self._model.changed.connect(self._on_model_choice)
        self._model.native.activated.connect(self._on_user_model)  # user choices only
        self._file.changed.connect(self._on_file)
        self._image.changed.connect(self._on_image)
        self._run.changed.connect(lambda: self.segment())
        self._cancel.changed.connect(self.cancel)
        self._device.changed.connect(self.pruning.set_device)
        self._output.changed.connect(self.pruning.set_output_folder)
        self.pruning.apply_requested.connect(lambda depth: self.segment(pruned_depth=depth))

    def _on_closed(self) -> None:
        """The dock was closed: stop its jobs (no layer appears later); stop listening."""
        self._runner.quit()
        self.pruning.close_jobs()
        _state.models_changed.disconnect(self._on_models_changed)
        for event in ("inserted", "removed", "reordered"):
            getattr(self._viewer.layers.events, event).disconnect(self._on_layers_changed)

    def _on_layers_changed(self, _event: Any = None) -> None:
        try:
            self._image.reset_choices()
        except RuntimeError:  # its Qt widgets were deleted before the dock said so
            self._on_closed()

    def _on_user_model(self, _index: int) -> None:
        self._model_from_user = True

    def _on_image(self, _value: Any = None) -> None:
        if self._source.value == "shipped" and not self._model_from_user:
            self._pick_zoo_model()
        self._default_scope()
        if self._image.value is not None:
            self.scale.set_layer(self._image.value)

    def _pick_zoo_model(self) -> None:
        """Choose the shipped model that matches the chosen image (EM, CT, nuclei)."""
        layer = self._image.value
        match = None if layer is None else guess_zoo_model(layer)
        choices = [value for _, value in self._zoo_choices()]
        if match in choices:
            self._model.reset_choices()
            self._model.value = match

    def _image_layers(self, _w: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    @staticmethod
    def _zoo_choices() -> list[tuple[str, str]]:
        from .. import zoo

        return [(entry.title, entry.spec) for entry in zoo.available_models()]

    def _model_choices(self, _w: Any = None) -> list[tuple[str, str]]:
        source = self._source.value if hasattr(self, "_source") else None
        if source == "shipped":
            return self._zoo_choices()
        if source == "just trained":
            return [(name, str(path)) for name, path in _state.registered_models().items()]
        return []

    # ------------------------------------------------------------------ model

    def _on_source(self, _value: Any = None) -> None:
        from_file = self._source.value == "from file"
        self._model.visible, self._file.visible = not from_file, from_file
        self._model.reset_choices()
        if not self._loading:
            self._on_file() if from_file else self._on_model_choice()

    def _on_models_changed(self) -> None:
        try:
            if self._source.value == "just trained":
                self._model.reset_choices()
        except RuntimeError:  # its Qt widgets were deleted before the dock said so
            self._on_closed()

    def _on_model_choice(self, _value: Any = None) -> None:
        if not self._loading and self._model.value and self._model.value != self.model_spec:
            self._load_model(self._model.value)

    def _on_file(self, _value: Any = None) -> None:
        path = self._file.value
        if not self._loading and isinstance(path, Path) and str(path) != "." and path.is_dir():
            self._load_model(str(path))

    def load_model(self, path: str | Path) -> None:
        """Load a checkpoint folder or zip (the reader calls this when a model is dropped)."""
        path = Path(path)
        registered = {str(p): name for name, p in _state.registered_models().items()}
        self._loading = True
        try:
            self._source.value = "just trained" if str(path) in registered else "from file"
            if str(path) in registered:
                self._model.value = str(path)
            else:
                self._file.value = path
        finally:
            self._loading = False
        self._load_model(str(path))

    def _load_model(self, spec: str) -> None:
        """Load ``spec`` ("zoo:<name>" or a path) on the GUI thread (a file read: fast)."""
        from ..files import load_model

        try:
            model, info = load_model(spec)
        except (ValueError, OSError) as exc:
            show_error(f"could not load the model: {exc}")
            return
        dims = None if self.model is None else self.model.config.spatial_dims
        self.model, self.info, self.model_spec = model.eval(), info, spec
        self._card.native.setMarkdown(card_markdown(info, info.card.get("title", self.model_name)))
        if dims != model.config.spatial_dims:  # keep the user's tile unless 2D <-> 3D
            self._tile.value = 256 if model.config.spatial_dims == 2 else 64
        self._default_scope()
        self.pruning.set_model(model, info, name=self.model_name, source=spec)
        self.scale.set_model(model.config)

    @property
    def model_name(self) -> str:
        """A short name of the loaded model, for folders and layer metadata."""
        spec = self.model_spec or "model"
        if is_zoo(spec):
            return zoo_name(spec)
        path = Path(spec)  # a training run's best/ or last/ is named after its run
        return f"{path.parent.name}-{path.name}" if path.name in ("best", "last") else path.stem

    # ------------------------------------------------------------------ run

    def _default_scope(self, _value: Any = None) -> None:
        layer, model = self._image.value, self.model
        if layer is None or model is None:
            return
        spatial = layer.ndim - (model.config.in_channels > 1 and not layer.rgb)
        if model.config.spatial_dims == 3:
            self._scope.value = "3D"
        else:
            self._scope.value = "whole stack slice-wise" if spatial > 2 else "2D"

    def _input(self, layer: Image) -> tuple[Any, DataConfig, Placement]:
        """The array to segment, its DataConfig and where the output goes; checks the scope."""
        assert self.model is not None and self.info is not None
        data, cfg, scope = (
            layer.data[0] if layer.multiscale else layer.data,
            self.info.data,
            self._scope.value,
        )
        dims, channels = self.model.config.spatial_dims, self.model.config.in_channels
        if layer.rgb and channels == 1:
            data, axis = rgb_to_grey(data), None  # the grey the CLI and the zoo use
        elif layer.rgb:
            axis = data.ndim - 1
        else:
            axis = None if channels == 1 else cfg.channel_axis
            if axis is None and channels > 1:
                raise ValueError(
                    f"the model expects {channels} channels; open the image as one "
                    "layer with a channel axis (or as RGB)"
                )
        axis = None if axis is None else axis % data.ndim
        scale, translate = list(layer.scale), list(layer.translate)
        if axis is not None and not layer.rgb:
            del scale[axis], translate[axis]
        spatial = data.ndim - (axis is not None)
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
        lead_index = None
        if scope.startswith("current") and spatial > 2:
            point = list(layer.world_to_data(self._viewer.dims.point))
            lead = [a for a in range(data.ndim) if a != axis][: spatial - 2]
            lead_index = tuple(int(np.clip(round(point[a]), 0, data.shape[a] - 1)) for a in lead)
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
            cfg.replace(channel_axis=axis),
            Placement(lead_index, tuple(scale), tuple(translate)),
        )

    def _predict_config(self, pruned_depth: int | None) -> PredictConfig:
        from ..config import PredictConfig

        dims = self.model.config.spatial_dims if self.model is not None else 2
        scale = self.scale.overrides()
        if pruned_depth is not None or self._tta.value:
            scale["adaptive_depth"] = False  # Apply runs the pruned network; TTA all depths
        return PredictConfig(
            pruned_depth=pruned_depth,
            tile_size=(self._tile.value,) * dims,
            tta=self._tta.value,
            device=self._device.value,
            **scale,
        )

    def segment(self, pruned_depth: int | None = None) -> None:
        """Segment the chosen image: all depths, or only ``pruned_depth`` (fast path)."""
        from ..events import Stopper

        if self._runner.running:
            show_info("a UNet++ job of this dock is running: wait for it or press Cancel")
            return
        layer = self._image.value
        if self.model is None or layer is None:
            show_error("choose a model and an Image layer first")
            return
        try:
            image, data, placement = self._input(layer)
            config = self._predict_config(pruned_depth)
            run_dir = self._fresh_run_dir(layer.name)
            self._record(run_dir, layer, config, data)
        except (ValueError, OSError) as exc:
            show_error(str(exc))
            return
        stopper, depth = Stopper(), pruned_depth or self.pruning.depth
        self._set_running(True)
        self._status.value = f"segmenting {layer.name} (labels from L{depth})..."
        self._runner.start(
            segment_job(self.model, image, config, data, stopper, run_dir, depth),
            on_yield=self._on_event,
            on_return=lambda r: self._show(layer, placement, r, config, depth),
            on_finish=lambda: self._set_running(False),
            stop=stopper.stop,
        )
        if self._runner.queued:
            self._status.value = "waiting for another UNet++ job of this viewer to finish..."

    def cancel(self, _value: Any = None) -> None:
        """Ask the running segmentation to stop after its current tile batch."""
        self._status.value = "cancelling..."
        self._runner.request_stop()

    def _set_running(self, running: bool) -> None:
        self._run.enabled, self._cancel.enabled = not running, running
        self.pruning.set_busy(running)

    def _on_event(self, event: Any) -> None:
        import time

        now = time.perf_counter()
        if now - getattr(self, "_shown_at", 0.0) < 0.25 and event.step < event.total:
            return  # the text is redrawn a few times a second, not per tile
        self._shown_at = now
        self._progress.value = int(100 * event.fraction)
        eta = "" if event.eta_s is None else f" · {event.eta_s:.0f} s left"
        self._status.value = (event.message or f"tile {event.step}/{event.total}") + eta

    def _show(
        self,
        layer: Image,
        where: Placement,
        result: tuple[Any, Any],
        config: PredictConfig,
        depth: int,
    ) -> None:
        probs, labels = result
        if labels is None:
            self._status.value = "cancelled: layers left unchanged"
            return
        self.last_probabilities = dict(probs)
        lead_index = where.lead_index
        lift = (lambda a: a) if lead_index is None else (lambda a: a[(None,) * len(lead_index)])
        final = config.pruned_depth or (depth if depth in probs else max(probs))
        base = f"{layer.name} UNet++"
        suffix = "" if where.lead_index is None else " (quick look)"
        meta = {
            "model": self.model_spec,
            "model_name": self.model_name,
            "depth": final,
            "scale": list(where.scale),
            "run": str(self.last_run_dir),
            "scope": self._scope.value,
        }
        if config.pruned_depth is None:
            self._drop_stale_depths(base, suffix, set(probs))
        for d in sorted(probs):
            p = np.asarray(probs[d])
            shown = p if p.ndim == np.ndim(labels) else 1.0 - p[0]  # classes: foreground
            put_layer(
                self._viewer,
                Image,
                f"{base} L{d}{suffix}",
                lift(shown),
                where.scale,
                where.translate,
                {**meta, "depth": d},
                colormap="magma",
                contrast_limits=(0.0, 1.0),
                opacity=0.7,
                blending="additive",
            )
        for d in self._depth_layers(base, suffix):  # only the labels' depth is shown
            self._viewer.layers[f"{base} L{d}{suffix}"].visible = d == final
        assert self.model is not None and self.info is not None
        instance = self.info.data.target == "instance"
        put_layer(
            self._viewer,
            Labels,
            f"{base} labels{suffix}",
            lift(labels),
            where.scale,
            where.translate,
            meta,
            **labels_style(self.model.config, instance),
        )
        self._legend.value = class_legend(self.model.config, instance)
        self._legend.visible = bool(self._legend.value)
        notes = self._show_maps(base, suffix, probs, where, meta, lift)
        self._progress.value = 100
        source = (
            "adaptive depth, up to" if hasattr(probs, "depth_map") else "the Depth slider's depth:"
        )
        self._status.value = "; ".join(
            [f"done: labels from {source} L{final}", *notes, f"run saved in {self.last_run_dir}"]
        )

    def _show_maps(
        self, base: str, suffix: str, probs: Any, where: Placement, meta: dict[str, Any], lift: Any
    ) -> list[str]:
        """Adaptive depth's "depth used" and disagreement layers; what the scale step did."""
        notes = []
        if hasattr(probs, "depth_map"):
            assert self.model is not None
            put_layer(
                self._viewer,
                Image,
                f"{base} depth used{suffix}",
                lift(probs.depth_map),
                where.scale,
                where.translate,
                meta,
                colormap="viridis",
                contrast_limits=(1, self.model.depth),
                opacity=0.5,
                visible=False,
            )
            put_layer(
                self._viewer,
                Image,
                f"{base} disagreement{suffix}",
                lift(probs.disagreement),
                where.scale,
                where.translate,
                meta,
                colormap="inferno",
                opacity=0.6,
                blending="additive",
                visible=False,
            )
            notes.append(probs.summary())
        scale = getattr(probs, "scale", None)
        if scale:
            zoom = " x ".join(f"{z:.2f}" for z in scale.get("zoom", ()))
            measured = scale.get("measured_diameter")
            notes.append(
                f"resampled by {zoom} to the model's scale"
                + (f" (objects ~{measured:.0f} px)" if measured else "")
                + (f"; {scale['note']}" if scale.get("note") else "")
            )
        return notes

    def estimate_size(self, _value: Any = None) -> None:
        """Measure the median object diameter (one pass) and put it in the panel."""
        self._run_side_job("estimating the object size", estimate_job, self._on_estimate)

    def _on_estimate(self, diameter: float | None) -> None:
        if diameter is None:
            self._status.value = "no objects found: the diameter is left as it was"
            return
        self.scale.show_diameter(diameter)
        self._status.value = (
            f"median object diameter {diameter:.1f} px; Segment rescales "
            "to the model's training size"
        )

    def check_image(self, _value: Any = None) -> None:
        """Depth/flip disagreement and object size: is this image like the training data?"""
        self._run_side_job(
            "checking the image against the training data",
            check_job,
            self._on_check,
            metrics=dict(self.info.metrics) if self.info else {},
        )

    def _on_check(self, check: Any) -> None:
        from napari.utils.notifications import show_warning

        if check is None:
            return
        report = check.report()
        self._status.value = report.replace("\n", "; ")
        (show_warning if check.unlike_training else show_info)(report)

    def _run_side_job(self, what: str, job: Any, on_return: Any, **kwargs: Any) -> None:
        """Estimate / Check: the same input, config and job queue as Segment."""
        from ..events import Stopper

        layer = self._image.value
        if self.model is None or layer is None:
            show_error("choose a model and an Image layer first")
            return
        if self._runner.running:
            show_info("a UNet++ job of this dock is running: wait for it or press Cancel")
            return
        try:
            image, data, _ = self._input(layer)
            config = self._predict_config(None)
        except ValueError as exc:
            show_error(str(exc))
            return
        stopper = Stopper()
        self._set_running(True)
        self._status.value = f"{what}..."
        self._runner.start(
            job(self.model, image, config, data, stopper=stopper, **kwargs),
            on_yield=self._on_event,
            on_return=on_return,
            on_finish=lambda: self._set_running(False),
            stop=stopper.stop,
        )

    def _depth_layers(self, base: str, suffix: str) -> list[int]:
        """The depths ``d`` of existing ``<base> L<d><suffix>`` layers."""
        found = []
        for existing in self._viewer.layers:
            tail = existing.name[len(base) + 2 :] if existing.name.startswith(f"{base} L") else ""
            if suffix:
                tail = tail[: -len(suffix)] if tail.endswith(suffix) else ""
            if tail.isdigit():
                found.append(int(tail))
        return found

    def _drop_stale_depths(self, base: str, suffix: str, depths: set[int]) -> None:
        """Remove per-depth layers an earlier model (with more depths) left behind."""
        for d in self._depth_layers(base, suffix):
            if d not in depths:
                self._viewer.layers.remove(f"{base} L{d}{suffix}")

    # ------------------------------------------------------------------ records

    def _fresh_run_dir(self, name: str) -> Path:
        self.last_run_dir = new_run_dir(chosen_path(self._output.value, "output folder"), name)
        return self.last_run_dir

    def _record(self, run_dir: Path, layer: Image, config: PredictConfig, data: DataConfig) -> None:
        if self.info is None:
            raise ValueError("load a model first")
        image = layer_file(layer, run_dir, "image")
        spec = self.model_spec or ""
        model = self.info.model.to_dict()
        scope = self._scope.value
        configs = predict_record(spec, config, data, model=model, images=[image], scope=scope)
        command = format_command(
            "predict",
            spec,
            image,
            out=run_dir,
            config=run_dir / "run.json",
            depth=config.pruned_depth,
            channel_axis=data.channel_axis,
            probabilities=True,
        )
        save_run_record(run_dir, "predict", configs, command)


def _narrow(box: ComboBox, chars: int = 12) -> None:
    """Let a combo box shrink below its longest item (the list still shows it whole)."""
    from qtpy.QtWidgets import QComboBox

    box.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.native.setMinimumContentsLength(chars)


def guess_zoo_model(layer: Any) -> str | None:
    """``zoo:<name>`` of the shipped model made for this image (EM, CT or nuclei), or None.

    From what napari knows: the sample's or file's name, then the pixel values
    (Hounsfield units below -500 are CT; an 8-bit RGB image is a nuclei stain).
    """
    text = " ".join(
        str(v)
        for v in (
            layer.name,
            layer.metadata.get("source", ""),
            getattr(layer.source, "path", "") or "",
        )
    ).lower()
    words = set(text.replace("/", " ").replace("_", " ").replace(".", " ").split())
    for name, hints in (
        ("em", {"em", "isbi2012", "sstem", "tem", "membranes"}),
        ("ct", {"ct", "totalseg", "hu"}),
        ("nuclei", {"nuclei", "dsb2018", "nucleus", "dapi", "hoechst"}),
    ):
        if words & hints:
            return zoo_spec(name)
    data = layer.data[-1] if layer.multiscale else layer.data  # the smallest level: cheap
    if np.issubdtype(data.dtype, np.signedinteger) and data.size and np.min(data) < -500:
        return zoo_spec("ct")
    return zoo_spec("nuclei") if layer.rgb else None


def _device_choices() -> list[str]:
    """``auto`` plus the device types present here (what PredictConfig.device accepts)."""
    from ..devices import available_devices

    kinds = [name.split(":")[0] for name in available_devices()]
    return ["auto"] + [k for k in ("cuda", "mps", "cpu") if k in kinds]
