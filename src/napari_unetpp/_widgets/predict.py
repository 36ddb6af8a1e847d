"""Segment an Image layer with a UNet++ and see every depth (a thin widget).

UI values -> PredictConfig + the model's DataConfig -> ``inference.predict`` in a
:class:`._workers.JobRunner` -> events -> progress bar -> layers, updated in place on re-runs:
``<image> UNet++ L1`` .. ``L<D>`` (per-depth probability, magma, same scale/translate as the
input) and ``<image> UNet++ labels`` (``postprocess.probabilities_to_labels`` of the deepest
head: instances for nuclei models). Multi-class models show the probability of *any
foreground* (1 - background) per depth, what one compares across depths by eye; the
classes are in the labels. "current slice only" returns one-slice-thick layers placed at
the slice shown. RGB images given to a 1-channel model become grey (luminance,
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
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar,
                              PushButton, SpinBox, TextEdit)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info

from ..data import rgb_to_grey
from ..zoo import card_markdown
from . import _state
from ._workers import JobRunner, format_command, layer_file, new_run_dir, save_run_record
from .pruning_panel import PruningPanel

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


def segment_job(model: UNetPlusPlus, image: Any, config: PredictConfig, data: DataConfig,
                stopper: Stopper, run_dir: Path) -> Generator[Any, None, tuple[Any, Any]]:
    """Predict, then turn the deepest (or pruned) head into labels; save them to ``run_dir``."""
    import tifffile

    from ..inference import predict
    from ..postprocess import probabilities_to_labels

    probs = yield from predict(model, image, config, data, stopper=stopper)
    if not probs.complete:
        return probs, None
    depth = config.pruned_depth or max(probs)
    labels = probabilities_to_labels(np.asarray(probs[depth]), model.config, data,
                                     threshold=config.threshold, min_size=config.min_size)
    tifffile.imwrite(run_dir / "labels.tif", labels, compression="zlib")
    return probs, labels


class PredictWidget(Container):
    """Dock widget: segment with a shipped, just-trained or saved UNet++; prune it."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=True)
        self._viewer = napari_viewer
        self._runner = JobRunner()
        self._loading = False
        self.model: UNetPlusPlus | None = None
        self.info: CheckpointInfo | None = None
        self.model_spec: str | None = None  # "zoo:<name>" or a checkpoint path (for command.sh)
        self.last_run_dir: Path | None = None
        self.last_probabilities: dict[int, Any] | None = None  # engine output of the last run
        self._build()
        self._runner.attach(self.native)
        _state.models_changed.connect(self._on_models_changed)
        for event in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, event).connect(self._image.reset_choices)
        self.native.destroyed.connect(self._disconnect)
        initial = ("just trained" if _state.registered_models()
                   else "shipped" if self._zoo_choices() else "from file")
        self._source.value = initial
        self._on_source()

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self._source = ComboBox(label="Model from", choices=SOURCES)
        self._model = ComboBox(label="Model", choices=self._model_choices)
        self._file = FileEdit(label="Model folder", mode="d", value=None)
        self._card = TextEdit(label="Model card", value="no model loaded")
        self._card.native.setReadOnly(True)
        self._card.native.setMaximumHeight(150)
        self._image = ComboBox(label="Image", choices=self._image_layers)
        self._scope = ComboBox(label="Scope", choices=SCOPES)
        self._tile = SpinBox(label="Tile size", min=16, max=4096, step=16, value=256)
        self._device = ComboBox(label="Device", choices=_device_choices())
        self._tta = CheckBox(text="Test-time augmentation (flips: smoother, 8x slower)")
        self._output = FileEdit(label="Output folder", mode="d", value=DEFAULT_OUTPUT)
        self._run = PushButton(text="Segment")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(min=0, max=100, value=0)
        self._status = Label(value="")
        self._status.native.setWordWrap(True)  # long run paths must not widen the dock
        self.pruning = PruningPanel(self)
        buttons = Container(layout="horizontal", widgets=[self._run, self._cancel], labels=False)
        self.extend([self._source, self._model, self._file, self._card, self._image,
                     self._scope, self._tile, self._device, self._tta, self._output, buttons,
                     self._progress, self._status, self.pruning])
        self._source.changed.connect(self._on_source)
        self._model.changed.connect(self._on_model_choice)
        self._file.changed.connect(self._on_file)
        self._image.changed.connect(self._default_scope)
        self._run.changed.connect(lambda: self.segment())
        self._cancel.changed.connect(self.cancel)

    def _disconnect(self, *_: Any) -> None:
        """Stop listening to the session and the viewer once the dock widget is closed."""
        _state.models_changed.disconnect(self._on_models_changed)
        for event in ("inserted", "removed", "reordered"):
            getattr(self._viewer.layers.events, event).disconnect(self._image.reset_choices)

    def _image_layers(self, _w: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    @staticmethod
    def _zoo_choices() -> list[tuple[str, str]]:
        from .. import zoo

        return [(entry.title, f"zoo:{entry.name}") for entry in zoo.available_models()]

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
        if self._source.value == "just trained":
            self._model.reset_choices()

    def _on_model_choice(self, _value: Any = None) -> None:
        if not self._loading and self._model.value and self._model.value != self.model_spec:
            self._load(self._model.value)

    def _on_file(self, _value: Any = None) -> None:
        path = self._file.value
        if not self._loading and path and str(path) not in ("", ".") and Path(path).is_dir():
            self._load(str(path))

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
        self._load(str(path))

    def _load(self, spec: str) -> None:
        """Load ``spec`` ("zoo:<name>" or a path) on the GUI thread (a file read: fast)."""
        from .. import zoo
        from ..checkpoint import load_checkpoint

        try:
            if spec.startswith("zoo:"):
                model, info = zoo.load_pretrained(spec[4:])
            else:
                model, info = load_checkpoint(spec)
        except (ValueError, OSError) as exc:
            show_error(f"could not load the model: {exc}")
            return
        dims = None if self.model is None else self.model.config.spatial_dims
        self.model, self.info, self.model_spec = model.eval(), info, spec
        self._card.native.setMarkdown(card_markdown(info, info.card.get("title", self.model_name)))
        if dims != model.config.spatial_dims:  # keep the user's tile unless 2D <-> 3D
            self._tile.value = 256 if model.config.spatial_dims == 2 else 64
        self._default_scope()
        self.pruning.set_model(model, info)

    @property
    def model_name(self) -> str:
        """A short name of the loaded model, for folders and layer metadata."""
        spec = self.model_spec or "model"
        if spec.startswith("zoo:"):
            return spec[4:]
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
        data, cfg, scope = layer.data[0] if layer.multiscale else layer.data, self.info.data, \
            self._scope.value
        dims, channels = self.model.config.spatial_dims, self.model.config.in_channels
        if layer.rgb and channels == 1:
            data, axis = rgb_to_grey(data), None  # the grey the CLI and the zoo use
        elif layer.rgb:
            axis = data.ndim - 1
        else:
            axis = None if channels == 1 else cfg.channel_axis
            if axis is None and channels > 1:
                raise ValueError(f"the model expects {channels} channels; open the image as one "
                                 "layer with a channel axis (or as RGB)")
        axis = None if axis is None else axis % data.ndim
        scale, translate = list(layer.scale), list(layer.translate)
        if axis is not None and not layer.rgb:
            del scale[axis], translate[axis]
        spatial = data.ndim - (axis is not None)
        if scope == "3D" and (dims != 3 or spatial < 3):
            raise ValueError("'3D' needs a 3D model and a 3D image; this model is "
                             f"{dims}D: choose 'whole stack slice-wise'")
        if scope != "3D" and dims == 3:
            raise ValueError("this model is 3D: choose the '3D' scope")
        if scope == "2D" and spatial > 2:
            raise ValueError(f"the image has {spatial} dimensions: choose 'whole stack "
                             "slice-wise' or 'current slice only'")
        lead_index = None
        if scope.startswith("current") and spatial > 2:
            point = list(layer.world_to_data(self._viewer.dims.point))
            lead = [a for a in range(data.ndim) if a != axis][: spatial - 2]
            index = [slice(None)] * data.ndim
            for a in lead:
                index[a] = int(np.clip(round(point[a]), 0, data.shape[a] - 1))
            lead_index = tuple(index[a] for a in lead)
            data = data[tuple(index)]
            if axis is not None:
                axis -= sum(1 for a in lead if a < axis)
            for k, i in enumerate(lead_index):
                translate[k] += i * scale[k]
        return data, cfg.replace(channel_axis=axis), Placement(lead_index, tuple(scale),
                                                              tuple(translate))

    def _predict_config(self, pruned_depth: int | None) -> PredictConfig:
        from ..config import PredictConfig

        dims = self.model.config.spatial_dims if self.model is not None else 2
        return PredictConfig(pruned_depth=pruned_depth, tile_size=(self._tile.value,) * dims,
                             tta=self._tta.value, device=self._device.value)

    def segment(self, pruned_depth: int | None = None) -> None:
        """Segment the chosen image: all depths, or only ``pruned_depth`` (fast path)."""
        from ..events import Stopper

        if self._runner.running:
            show_info("a segmentation is running: wait for it or press Cancel")
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
        stopper = Stopper()
        self._set_running(True)
        self._status.value = f"segmenting {layer.name}..."
        self._runner.start(
            segment_job(self.model, image, config, data, stopper, run_dir),
            on_yield=self._on_event, on_return=lambda r: self._show(layer, placement, r, config),
            on_finish=lambda: self._set_running(False), stop=stopper.stop)

    def cancel(self, _value: Any = None) -> None:
        """Ask the running segmentation to stop after its current tile batch."""
        self._status.value = "cancelling..."
        self._runner.request_stop()

    def _set_running(self, running: bool) -> None:
        self._run.enabled, self._cancel.enabled = not running, running
        self.pruning.set_busy(running)

    def _on_event(self, event: Any) -> None:
        self._progress.value = int(100 * event.fraction)
        eta = "" if event.eta_s is None else f" · {event.eta_s:.0f} s left"
        self._status.value = (event.message or f"tile {event.step}/{event.total}") + eta

    def _show(self, layer: Image, where: Placement, result: tuple[Any, Any],
              config: PredictConfig) -> None:
        probs, labels = result
        if labels is None:
            self._status.value = "cancelled: layers left unchanged"
            return
        self.last_probabilities = dict(probs)
        lift = (lambda a: a) if where.lead_index is None else (
            lambda a: a[(None,) * len(where.lead_index)])
        final = config.pruned_depth or max(probs)
        if config.pruned_depth is None:  # the pruned fast path updates the labels only
            for d in sorted(probs):
                p = np.asarray(probs[d])
                shown = p if p.ndim == np.ndim(labels) else 1.0 - p[0]  # classes: foreground
                self._put(Image, f"{layer.name} UNet++ L{d}", lift(shown), where,
                          colormap="magma", contrast_limits=(0.0, 1.0), opacity=0.7,
                          blending="additive", visible=d == final)
        self._put(Labels, f"{layer.name} UNet++ labels", lift(labels), where, opacity=0.5)
        self._progress.value = 100
        self._status.value = f"done: labels from L{final}; run saved in {self.last_run_dir}"

    def _put(self, kind: type, name: str, data: Any, where: Placement, **style: Any) -> None:
        """Update layer ``name`` in place, or add it (replacing one of another kind or ndim)."""
        layers = self._viewer.layers
        old = layers[name] if name in layers else None
        if isinstance(old, kind) and old.ndim == np.ndim(data):
            old.data = data
            old.scale, old.translate = where.scale, where.translate
            return
        index = layers.index(old) if old is not None else len(layers)
        if old is not None:
            layers.remove(old)
        layers.insert(index, kind(data, name=name, scale=where.scale,
                                  translate=where.translate, **style))

    # ------------------------------------------------------------------ records

    def _fresh_run_dir(self, name: str) -> Path:
        self.last_run_dir = new_run_dir(self._output.value, name)
        return self.last_run_dir

    def _record(self, run_dir: Path, layer: Image, config: PredictConfig,
                data: DataConfig) -> None:
        image = layer_file(layer, run_dir, "image")
        spec = self.model_spec or ""
        configs = {"model": self.info.model.to_dict(), "data": data.to_dict(),
                   "predict": config.to_dict(), "checkpoint": spec, "images": [image],
                   "scope": self._scope.value}
        command = format_command("predict", spec, image, out=run_dir, config=run_dir / "run.json",
                                 depth=config.pruned_depth, channel_axis=data.channel_axis,
                                 probabilities=True)
        save_run_record(run_dir, "predict", configs, command)


def _device_choices() -> list[str]:
    """``auto`` plus the device types present here (what PredictConfig.device accepts)."""
    from ..devices import available_devices

    kinds = [name.split(":")[0] for name in available_devices()]
    return ["auto"] + [k for k in ("cuda", "mps", "cpu") if k in kinds]
