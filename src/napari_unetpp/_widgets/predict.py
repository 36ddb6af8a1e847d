"""Segment an Image layer with a UNet++ and see every depth (a thin widget).

UI values -> PredictConfig + the model's DataConfig (:mod:`._predict_job`) ->
``inference.predict`` in a :class:`._runner.JobRunner` -> events -> progress bar ->
layers, updated in place on re-runs (:mod:`._predict_layers`). The model box offers
shipped, just-trained and saved models (:mod:`._model_box`). RGB images given to a
1-channel model become grey (luminance, as the CLI does).

Every run writes ``run.json``, ``command.sh`` and ``labels.tif`` into ``<output
folder>/<image>-<timestamp>``; the default, ``~/napari-unetpp/predictions``, is one
predictable place, never a write into data folders (often read-only shares).
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    TextEdit,
)
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning

from ..locate import zoo_spec
from ..runs import new_run_dir
from ..zoo import card_markdown
from . import _state
from ._jobs import queue_for
from ._layers import layer_choices
from ._model_box import (
    SOURCES,
    could_be_ct,
    device_choices,
    guess_zoo_model,
    model_name,
    zoo_choices,
)
from ._paths import chosen_path
from ._predict_job import (
    SCOPES,
    Placement,
    default_scope,
    over_passes,
    predict_config,
    predict_input,
    record_predict,
    scan_file,
    segment_job,
    segment_passes,
)
from ._predict_layers import show_result
from ._runner import JobRunner
from ._ui import narrow, on_dock_closed, scroll_inside, set_progress, spread, wrapped
from ._workers import in_background
from .pruning_panel import PruningPanel
from .scale_panel import ScalePanel, check_job, estimate_job, layer_pixel_size

if TYPE_CHECKING:
    import napari

    from ..checkpoint import CheckpointInfo
    from ..config import DataConfig, PredictConfig
    from ..events import Stopper
    from ..model import UNetPlusPlus
    from ._layers import LayerCopy

DEFAULT_OUTPUT = Path.home() / "napari-unetpp" / "predictions"


class PredictWidget(Container):
    """Dock widget: segment with a shipped, just-trained or saved UNet++; prune it."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # not magicgui's scrollable: napari docks ``.native``, the content *inside* magicgui's
        # scroll area, and the orphaned scroll area kept resizing it to its own width
        # (624 px) on every layout change, so the dock swung 405 <-> 624 px and relaid out
        # twice per status update (issue 16); _ui.scroll_inside scrolls inside ``.native``
        super().__init__()
        self._viewer = napari_viewer
        self._runner = JobRunner(queue=queue_for(napari_viewer), owner="segment")
        self._loading = False
        self._showing = False  # a finished run's layers are being added
        self._closed = False  # the dock left the viewer: no more layers, no more widget updates
        self._model_from_user = False
        self.model: UNetPlusPlus | None = None
        self.info: CheckpointInfo | None = None
        self.model_spec: str | None = None  # "zoo:<name>" or a checkpoint path (for command.sh)
        self.last_run_dir: Path | None = None
        self.last_probabilities: dict[int, Any] | None = None  # engine output of the last run
        self._job_image: weakref.ref[Image] | None = None  # the image being segmented
        # torch is imported by a thread, not here: on the GUI thread its 2-3 s froze the
        # viewer at every first dock open; the model and devices come when it is in
        self._torch_ready = "torch" in sys.modules
        self._devices = device_choices() if self._torch_ready else ["auto"]
        self._deferred_spec: str | None = None  # the model to load once torch is in
        self._build()
        scroll_inside(self)  # fits a laptop screen, and beside the Train dock
        _state.models_changed.connect(self._on_models_changed)
        for event in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, event).connect(self._on_layers_changed)
        on_dock_closed(self.native, napari_viewer, self._on_closed)
        initial = (
            "just trained"
            if _state.registered_models()
            else "shipped"
            if zoo_choices()
            else "from file"
        )
        self._source.value = initial
        if initial == "shipped":
            self._pick_zoo_model()
        self._on_source()
        self._on_image()  # an image opened before the dock: its pixel size, scope, model
        if not self._torch_ready:
            self._import_torch()

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
        self._image = ComboBox(label="Image", choices=layer_choices(self._viewer, Image))
        self._scope = ComboBox(label="Scope", choices=SCOPES)
        self._tile = SpinBox(label="Tile size", min=16, max=4096, step=16, value=256)
        self._device = ComboBox(label="Device", choices=lambda _w: self._devices)
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
        self._status = wrapped()  # long run paths must not widen the dock
        self._legend = wrapped()
        self._legend.visible = False
        self.pruning = PruningPanel(self._runner.queue)
        self.pruning.set_device(self._device.value)
        self.pruning.set_output_folder(chosen_path(self._output.value, "output folder"))
        self.scale = ScalePanel()
        buttons = Container(layout="horizontal", widgets=[self._run, self._cancel], labels=False)
        for box in (self._source, self._model, self._image, self._scope, self._device):
            narrow(box)  # long model/layer names must not widen the dock (laptop screens)
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

    def _import_torch(self) -> None:
        """Import torch in a thread; then list the devices and load the chosen model."""
        self._status.value = "loading PyTorch..."
        self._set_running(False)
        in_background(
            device_choices, self._on_torch, self._on_torch_error, inline=self._runner.inline
        )

    def _on_torch(self, devices: list[str]) -> None:
        if self._closed:
            return
        self._torch_ready, self._devices = True, devices
        self._device.reset_choices()
        self._status.value = ""
        spec, self._deferred_spec = self._deferred_spec, None
        if spec is not None and self.model is None:
            self._load_model(spec)
        self._set_running(self._runner.running)

    def _on_torch_error(self, exc: BaseException) -> None:
        from ._runner import report_error

        self._status.value = f"PyTorch could not be loaded: {exc}"
        report_error(exc)

    def _on_closed(self) -> None:
        """The dock was closed: stop its jobs (no layer appears later); stop listening."""
        self._closed = True
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
            return
        source = self._job_image() if self._job_image is not None else None
        if self._runner.running and source is not None and source not in self._viewer.layers:
            # its result would be dropped (no layers for a removed image): stop the work now
            self._job_image = None
            self._status.value = f"the image {source.name!r} was removed: cancelling..."
            self._runner.request_stop()

    def _on_user_model(self, _index: int) -> None:
        self._model_from_user = True

    def _on_image(self, _value: Any = None) -> None:
        if self._source.value == "shipped" and not self._model_from_user:
            self._pick_zoo_model()
        self._default_scope()
        if self._image.value is not None:
            self.scale.set_layer(self._image.value)

    def _pick_zoo_model(self) -> None:
        """Choose the shipped model that matches the chosen image (EM, CT, nuclei); any other
        image gets the nuclei model, as the user guide says, but one that could hold
        Hounsfield units keeps the CT model it has (floats may be a scan).

        Why not keep the model for an image nothing was guessed for: a grey fluorescence
        image chosen after an EM stack kept the EM model, and its nuclei came out as
        membranes (QA session 12); after a scan, an EM plane was segmented as a body.
        """
        layer = self._image.value
        match = None if layer is None else guess_zoo_model(layer)
        choices = [value for _, value in zoo_choices()]
        if match is None and layer is not None:
            keep_ct = self._model.value == zoo_spec("ct") and could_be_ct(layer)
            match = None if keep_ct else zoo_spec("nuclei")
        if match in choices:
            self._model.reset_choices()
            self._model.value = match

    def _model_choices(self, _w: Any = None) -> list[tuple[str, str]]:
        source = self._source.value if hasattr(self, "_source") else None
        if source == "shipped":
            return zoo_choices()
        if source == "just trained":  # newest first: the default is the run just finished
            models = reversed(_state.registered_models().items())
            return [(name, str(path)) for name, path in models]
        return []

    # ------------------------------------------------------------------ model

    def _on_source(self, _value: Any = None) -> None:
        from_file = self._source.value == "from file"
        self._model.visible, self._file.visible = not from_file, from_file
        self._model.reset_choices()
        if self._source.value == "shipped" and not self._model_from_user:
            self._pick_zoo_model()  # not the first in the list: the one for this image
        if not self._loading:
            self._on_file() if from_file else self._on_model_choice()

    def _on_models_changed(self) -> None:
        """A run finished (or a model was dropped): listed, and chosen unless the user
        picked a model (segmenting with the older run after training is a silent trap).

        A shipped model the dock picked for the image (not the user) gives way too: in
        the 'label here next' loop (segment, paint, fine-tune, segment again) the second
        Segment ran the shipped model again and gave the first result (QA session 12).
        A pruned model saved from this dock is no training: the dock keeps its model.
        """
        try:
            latest = list(_state.registered_models().values())[-1:]
            if (
                self._source.value == "shipped"
                and not self._model_from_user
                and latest
                and latest[0] != self.pruning.saved
            ):
                self._source.value = "just trained"  # loads the newest (see _on_source)
                if not self.busy:  # else a run's progress (or "waiting...") is shown
                    self._status.value = f"model: {self.model_name}, just trained"
            elif self._source.value == "just trained":
                self._model.reset_choices()
                newest = self._model_choices()[:1]  # the box keeps its old order
                if not self._model_from_user and newest:
                    self._model.value = newest[0][1]
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

        if not self._torch_ready:  # loaded when torch is in (see _on_torch)
            self._deferred_spec = spec
            return
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
        return model_name(self.model_spec)

    # ------------------------------------------------------------------ run

    def _default_scope(self, _value: Any = None) -> None:
        layer, model = self._image.value, self.model
        if layer is not None and model is not None:
            self._scope.value = default_scope(layer, model.config)

    def _input(self, layer: Image) -> tuple[Any, DataConfig, Placement]:
        """The array to segment, its DataConfig and where the output goes; checks the scope."""
        assert self.model is not None and self.info is not None
        dims = self._viewer.dims
        return predict_input(
            layer, self.model.config, self.info.data, self._scope.value, dims.point, dims.displayed
        )

    def _predict_config(self, pruned_depth: int | None) -> PredictConfig:
        dims = self.model.config.spatial_dims if self.model is not None else 2
        tile, tta, overrides = self._tile.value, self._tta.value, self.scale.overrides()
        return predict_config(dims, tile, tta, self._device.value, overrides, pruned_depth)

    def segment(self, pruned_depth: int | None = None) -> None:
        """Segment the chosen image: all depths, or only ``pruned_depth`` (fast path)."""
        from ..events import Stopper

        if (ready := self._ready()) is None:
            return
        model, layer = ready
        try:
            image, data, placement = self._input(layer)
            config = self._predict_config(pruned_depth)
            part = None if placement.lead_index is None else image  # a quick look's slice
            depth = pruned_depth or self.pruning.depth
            run_dir, copies = self._new_run(layer, config, data, part, depth)
        except (ValueError, OSError) as exc:
            show_error(str(exc))
            self._status.value = f"not started: {exc}"  # not an earlier run's "done"
            return
        if self.scale.adaptive.value and config.tta and pruned_depth is None:
            # else the ticked box did nothing, without a word (predict_config turns it off)
            show_info("test-time augmentation runs every depth: adaptive depth is off")
        stopper = Stopper()
        self._job_image = weakref.ref(layer)  # removed while segmenting: the job is stopped
        made_by = (model, self.info, self.model_spec)  # the model may be changed meanwhile
        scope = self._scope.value  # and the scope (another image chosen)
        metrics = dict(self.info.metrics) if self.info else {}
        check = metrics if self.scale.check_results.value else None
        grid = layer_pixel_size(layer)  # the labels are saved with it
        scan = scan_file(layer) if placement.lead_index is None else None
        job = segment_job(
            model, image, config, data, stopper, run_dir, depth, check, grid, scan, copies
        )

        def check_stopped() -> bool:  # Cancel pressed on a run that was to be checked
            return stopper.stopped and check is not None

        self._start(
            f"segmenting {layer.name} (labels from L{depth})",
            over_passes(job, segment_passes(config, check is not None)),
            lambda r: self._show(
                layer, placement, r, config, depth, made_by, scope, check_stopped()
            ),
            stopper,
        )
        if self._runner.queued:
            self._status.value = "waiting for another UNet++ job of this viewer to finish..."

    def _ready(self) -> tuple[UNetPlusPlus, Image] | None:
        """The model and image, when a job may start; else None (the user is told why)."""
        if self._runner.running or self._showing:  # its layers going in count as running
            show_info("a UNet++ job of this dock is running: wait for it or press Cancel")
            return None
        layer = self._image.value
        if self.model is None or layer is None:
            show_error("choose a model and an Image layer first")
            return None
        return self.model, layer

    def _start(self, what: str, job: Any, on_return: Any, stopper: Stopper) -> None:
        """Run ``job`` in the viewer's job queue; progress in the dock; buttons locked."""
        ended: list[bool] = []  # it returned or failed; else it was stopped while queued

        def returned(result: Any) -> None:
            ended.append(True)
            on_return(result)

        def failed(exc: BaseException) -> None:
            ended.append(True)
            self._on_error(exc)

        def finished() -> None:
            self._set_running(False)
            if not ended and not self._closed:  # Cancel (or its image removed) while waiting:
                # no callback but this one, and the status said "cancelling..." for good
                self._status.value = "stopped before it started: nothing was changed"
                set_progress(self._progress, 0)

        self._set_running(True)
        self._status.value = f"{what}..."
        self._runner.start(
            job,
            on_yield=self._on_event,
            on_return=returned,
            on_error=failed,
            on_finish=finished,
            stop=stopper.stop,
        )

    def _on_error(self, exc: BaseException) -> None:
        """The status says the run failed (the notification says why)."""
        cause = exc.__cause__ or exc
        self._status.value = f"failed: {cause}"
        set_progress(self._progress, 0)

    def cancel(self, _value: Any = None) -> None:
        """Ask the running segmentation to stop after its current tile batch."""
        self._status.value = "cancelling..."
        self._runner.request_stop()

    @property
    def busy(self) -> bool:
        """Whether a job of this dock runs, or a finished run's layers are still being added."""
        return self._runner.running or self._showing

    def _set_running(self, running: bool) -> None:
        """Lock Run while a job runs, its layers are being added or torch is loading."""
        busy = running or self._showing or not self._torch_ready
        self._run.enabled, self._cancel.enabled = not busy, running
        self.pruning.set_busy(busy)

    def _on_event(self, event: Any) -> None:
        import time

        now = time.perf_counter()
        if now - getattr(self, "_shown_at", 0.0) < 0.25 and event.step < event.total:
            return  # the text is redrawn a few times a second, not per tile
        self._shown_at = now
        set_progress(self._progress, int(100 * event.fraction))
        eta = "" if event.eta_s is None else f" · {event.eta_s:.0f} s left"
        self._status.value = (event.message or f"tile {event.step}/{event.total}") + eta

    def _show(
        self,
        layer: Image,
        where: Placement,
        result: tuple[Any, Any, list[Any], Any],
        config: PredictConfig,
        depth: int,
        made_by: tuple[UNetPlusPlus, CheckpointInfo | None, str | None],
        scope: str,
        check_stopped: bool = False,
    ) -> None:
        """The finished run's layers and status. ``check_stopped``: Cancel was pressed on a
        run to be checked; in the check's pass that leaves whole labels, but no check."""
        probs, labels, regions, check = result
        if layer not in self._viewer.layers:  # the user removed the image meanwhile
            set_progress(self._progress, 100 if labels is not None else 0)
            self._status.value = (
                f"done, but the image {layer.name!r} was removed: no layers added; "
                f"run saved in {self.last_run_dir}"
                if labels is not None
                else f"stopped: the image {layer.name!r} was removed"
            )
            return
        if labels is None:
            self._status.value = "cancelled: layers left unchanged"
            return
        model, info, spec = made_by  # described by the model that made them, not today's
        assert info is not None
        self.last_probabilities = dict(probs)
        final = config.pruned_depth or (depth if depth in probs else max(probs))
        adaptive = hasattr(probs, "depth_map")
        meta = {
            "model": spec,
            "model_name": model_name(spec),
            # an adaptive run's labels come from a mix of depths: recorded as L4, they
            # passed for the deepest head's (its probabilities layer already said "adaptive")
            "depth": "adaptive" if adaptive else final,
            "scale": list(where.scale),
            "run": str(self.last_run_dir),
            "scope": scope,
        }
        steps = show_result(
            self._viewer,
            layer.name,
            (probs, labels),
            where,
            meta,
            model.config,
            regions=regions,
            instance=info.data.target == "instance",
            all_depths=config.pruned_depth is None,
            image=layer,
        )
        source = "adaptive depth, up to" if adaptive else "the Depth slider's depth:"
        self._showing = True  # Run stays locked until every layer is in

        def shown(legend_notes: tuple[str, list[str]] | None) -> None:
            self._showing = False
            self._set_running(self._runner.running)
            if legend_notes is None:
                self._status.value = "failed to add the result layers"
                return
            legend, notes = legend_notes
            self._legend.value, self._legend.visible = legend, bool(legend)
            set_progress(self._progress, 100)
            saved = f"run saved in {self.last_run_dir}"
            warned = _warn_unlike_training(check, layer.name)
            hints = [] if warned else _hints(check, layer.name)
            if check_stopped and check is None:  # else "done" hid that Cancel did anything
                hints.append("cancelled while checking the result: labels complete, not checked")
            # the depth advice is about the model that ran: not shown on one chosen since
            if check is not None and check.advice is not None and self.model is model:
                self.pruning.show_advice(check.advice, layer.name)
                if check.advice.departs and not warned:  # a warning's report has it too
                    show_info(f"{layer.name}: {check.advice.message}")
            self._status.value = "; ".join(
                [f"done with {meta['model_name']}: labels from {source} L{final}"]
                + [*warned, *hints, *notes, saved]
            )

        self._status.value = "adding the layers..."
        spread(steps, shown, self._runner.inline, alive=lambda: not self._closed)

    def estimate_size(self, _value: Any = None) -> None:
        """Measure the median object diameter (one pass) and put it in the panel."""
        layer = self._image.value
        self._run_side_job(
            "estimating the object size", estimate_job, lambda d: self._on_estimate(d, layer)
        )

    def _on_estimate(self, diameter: float | None, layer: Image) -> None:
        if diameter is None:
            self._status.value = "no objects found: the diameter is left as it was"
            return
        if self._image.value is not layer:  # another image was chosen meanwhile
            self._status.value = (
                f"median object diameter {diameter:.1f} px of {layer.name!r}, no longer the "
                "chosen image: the diameter is left as it was"
            )
            return
        self.scale.show_diameter(diameter)
        self._status.value = (
            f"median object diameter {diameter:.1f} px; Segment rescales "
            "to the model's training size"
        )

    def check_image(self, _value: Any = None) -> None:
        """Depth/flip disagreement and object size: is this image like the training data?"""
        layer, model = self._image.value, self.model
        self._run_side_job(
            "checking the image against the training data",
            check_job,
            lambda check: self._on_check(check, layer, model),
            metrics=dict(self.info.metrics) if self.info else {},
        )

    def _on_check(self, check: Any, layer: Image, model: UNetPlusPlus | None = None) -> None:
        if check is None:
            return
        set_progress(self._progress, 100)
        # the slider marks the depths on this image, as after a checked Segment (of the
        # model that ran: not on one chosen since)
        if check.advice is not None and model is not None and self.model is model:
            self.pruning.show_advice(check.advice, layer.name)
        # named: another image may be chosen by now (the Segment check's words too)
        report = f"{layer.name}: {check.report('dock').removeprefix('WARNING: ')}"
        warning = "WARNING: " if check.unlike_training else ""
        # one line: the report's indented reasons and remedies as "; "-separated items
        self._status.value = warning + "; ".join(line.strip() for line in report.splitlines())
        # napari heads a warning notification with "WARNING" already
        (show_warning if check.unlike_training else show_info)(report)

    def _run_side_job(self, what: str, job: Any, on_return: Any, **kwargs: Any) -> None:
        """Estimate / Check: the same input, config and job queue as Segment."""
        from ..events import Stopper

        if (ready := self._ready()) is None:
            return
        model, layer = ready
        try:
            image, data, _ = self._input(layer)
            config = self._predict_config(None)
        except ValueError as exc:
            show_error(str(exc))
            return
        stopper = Stopper()

        def done(result: Any) -> None:
            if stopper.stopped:  # a cancelled check judged half-empty probabilities
                self._status.value = "cancelled: nothing was changed"
                set_progress(self._progress, 0)
                return
            on_return(result)

        self._start(what, job(model, image, config, data, stopper=stopper, **kwargs), done, stopper)

    # ------------------------------------------------------------------ records

    def _new_run(
        self,
        layer: Image,
        config: PredictConfig,
        data: DataConfig,
        part: Any = None,
        depth: int | None = None,
    ) -> tuple[Path, list[LayerCopy]]:
        """A fresh run folder with ``run.json`` and ``command.sh`` in it (``part``: the
        slice of ``layer`` a quick look segments; ``depth``: the labels' head), and the
        image copy the command names, for the job to write."""
        if self.info is None:
            raise ValueError("load a model first")
        folder = chosen_path(self._output.value, "output folder")
        self.last_run_dir = run_dir = new_run_dir(folder, layer.name)
        copies = record_predict(
            run_dir,
            layer,
            self.model_spec or "",
            self.info,
            config,
            data,
            self._scope.value,
            check=bool(self.scale.check_results.value),
            part=part,
            labels_depth=depth,
        )
        return run_dir, copies


def _hints(check: Any, image_name: str) -> list[str]:
    """The check's remedies when the image passed it (objects larger than in training,
    a depth...): told once, as the status line's note; a warning's report has them."""
    if check is None or not check.remedies:
        return []
    hint = "hint: " + "; ".join(check.remedies_for("dock"))
    show_info(f"{image_name}: {hint}")
    return [hint]


def _warn_unlike_training(check: Any, image_name: str) -> list[str]:
    """A warning notification when the check says the image is unlike the training data;
    the status line's note (empty when the image looks like it, or was not checked)."""
    if check is None or not check.unlike_training:
        return []
    show_warning(f"{image_name}: {check.report('dock').removeprefix('WARNING: ')}")
    return ["WARNING: this image looks unlike the training data (see the notification)"]
