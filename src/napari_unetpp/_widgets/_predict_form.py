"""The Segment dock's form: its widgets and state, and how a job runs in it.

Why apart from the dock's behaviour: what the user sets (model box, image, scope,
tile, device, output folder), how those values become the job's input, config and
run record, and how one job at a time runs in the dock (progress, Cancel, the Run
button locked) are the same for Segment and for its side jobs (estimate, check). The
model box's reactions are :class:`._predict_model.PredictModels`; segmenting and
showing the result are :class:`.predict.PredictWidget`. Sub-widgets stay attributes
(``w._scope``, ``w._tile``) so tests set them and call the handlers.
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
from napari.utils.notifications import show_error, show_info

from ..runs import new_run_dir
from . import _state
from ._dock import scroll_inside, share_dock_area
from ._jobs import queue_for
from ._layers import layer_choices
from ._model_box import SOURCES, device_choices, zoo_choices
from ._paths import chosen_path
from ._predict_input import SCOPES, Placement, default_scope, predict_config, predict_input
from ._predict_record import record_predict
from ._runner import JobRunner
from ._ui import narrow, set_progress, wrapped
from .pruning_panel import PruningPanel
from .scale_panel import ScalePanel, check_reachable

if TYPE_CHECKING:
    import napari

    from ..checkpoint import CheckpointInfo
    from ..config import DataConfig, PredictConfig
    from ..events import Stopper
    from ..model import UNetPlusPlus
    from ._layers import LayerCopy

DEFAULT_OUTPUT = Path.home() / "napari-unetpp" / "predictions"


class PredictForm(Container):
    """The Segment dock's widgets, state and job machinery (see the module docstring)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # not magicgui's scrollable: napari docks ``.native``, the content *inside* magicgui's
        # scroll area, and the orphaned scroll area kept resizing it to its own width
        # (624 px) on every layout change, so the dock swung 405 <-> 624 px and relaid out
        # twice per status update (issue 16); _dock.scroll_inside scrolls inside ``.native``
        super().__init__()
        self._viewer = napari_viewer
        self._runner = JobRunner(queue=queue_for(napari_viewer), owner="segment")
        self._loading = False
        self._showing = False  # a finished run's layers are being added
        self._closed = False  # the dock left the viewer: no more layers, no more widget updates
        self._stopping = False  # Cancel (or the image's removal) asked the job to stop
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
        share_dock_area(self.native)  # a tab beside the other UNet++ dock, not one row

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
        # off and greyed until a model is in (the tooltip then says why it stays off)
        self._int8 = CheckBox(text="int8 (CPU without bf16: ~2x faster)", enabled=False)
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
                self._int8,
                self._output,
                buttons,
                self._progress,
                self._status,
                self._legend,
                self.pruning,
            ]
        )

    def _model_choices(self, _w: Any = None) -> list[tuple[str, str]]:
        source = self._source.value if hasattr(self, "_source") else None
        if source == "shipped":
            return zoo_choices()
        if source == "just trained":  # newest first: the default is the run just finished
            models = reversed(_state.registered_models().items())
            return [(name, str(path)) for name, path in models]
        return []

    # ------------------------------------------------------------------ configs

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
        model = self.model.config if self.model is not None else None
        overrides = check_reachable(self.scale.overrides(), model)
        tile, tta = self._tile.value, self._tta.value
        int8 = self._int8.enabled and self._int8.value  # greyed: off, whatever it shows
        return predict_config(dims, tile, tta, self._device.value, overrides, pruned_depth, int8)

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
            diameter=self.scale.diameter_given(),
        )
        return run_dir, copies

    # ------------------------------------------------------------------ jobs

    def _ready(self) -> tuple[UNetPlusPlus, Image] | None:
        """The model and image, when a job may start; else None (the user is told why)."""
        if self._runner.running or self._showing:  # its layers going in count as running
            show_info("a UNet++ job of this dock is running: wait for it or press Cancel")
            return None
        layer = self._image.value
        if self.model is None or layer is None:
            why = (
                "choose a model first"
                if self.model is None
                else "choose an Image layer first (the Image box lists Image layers only, "
                "not Labels)"
            )
            show_error(why)
            # not an earlier run's "done ... run saved in ...", as if this click had run
            self._status.value = f"not started: {why}"
            return None
        return self.model, layer

    def _start(self, what: str, job: Any, on_return: Any, stopper: Stopper) -> None:
        """Run ``job`` in the viewer's job queue; progress in the dock; buttons locked."""

        def finished(ran: bool) -> None:
            self._set_running(False)
            if not ran and not self._closed:  # Cancel (or its image removed) while waiting:
                # no callback but this one, and the status said "cancelling..." for good
                self._status.value = "stopped before it started: nothing was changed"
                set_progress(self._progress, 0)

        self._set_running(True)
        self._stopping = False
        self._status.value = f"{what}..."
        self._runner.start(
            job,
            on_yield=self._on_event,
            on_return=on_return,
            on_error=self._on_error,
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
        self._stopping = True  # the tiles still reported must not hide it
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
        self.scale.set_busy(busy)

    def _on_event(self, event: Any) -> None:
        import time

        now = time.perf_counter()
        if now - getattr(self, "_shown_at", 0.0) < 0.25 and event.step < event.total:
            return  # the text is redrawn a few times a second, not per tile
        self._shown_at = now
        set_progress(self._progress, int(100 * event.fraction))
        if self._stopping:  # "cancelling..." stays until the job stops:
            return  # the next tile's "· 11 s left" read as if Cancel had done nothing
        eta = "" if event.eta_s is None else f" · {event.eta_s:.0f} s left"
        self._status.value = (event.message or f"tile {event.step}/{event.total}") + eta
