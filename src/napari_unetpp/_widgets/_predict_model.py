"""The Segment dock's model box and its listeners: which models it offers, loading one
(torch imported in a thread first), and following the viewer's layers, the models
trained meanwhile and the dock's close.

Why apart from segmenting (:mod:`.predict`): the box reacts to the outside world (an
image chosen, a training finished, a model dropped on the viewer, the dock closed) and
decides which model a Segment uses; the run itself only reads ``model`` and ``info``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error

from ..locate import zoo_spec
from ..zoo import card_markdown
from . import _state
from ._model_box import could_be_ct, device_choices, guess_zoo_model, model_name, zoo_choices
from ._predict_form import PredictForm
from ._workers import in_background


class PredictModels(PredictForm):
    """The form plus its model box's behaviour and the dock's outside listeners."""

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

    # ------------------------------------------------------------------ listeners

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
            self._stopping = True
            self._runner.request_stop()

    def _on_user_model(self, _index: int) -> None:
        self._model_from_user = True

    def _on_image(self, _value: Any = None) -> None:
        if self._source.value == "shipped" and not self._model_from_user:
            self._pick_zoo_model()
        self._default_scope()
        if self._image.value is not None:
            self.scale.set_layer(self._image.value)

    # ------------------------------------------------------------------ model

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
                # not a pruned model saved here: it switched a fine-tuned (or opened)
                # model to its one head, the Depth slider stuck there (QA session 13)
                pruned = str(self.pruning.saved) if self.pruning.saved else None
                if not self._model_from_user and newest and newest[0][1] != pruned:
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
        self._refresh_int8()

    def _refresh_int8(self, _value: Any = None) -> None:
        """The int8 switch greyed (and off) where int8 cannot run or does not help, its
        tooltip saying why (``quantize.int8_refusal``): a GPU, a CPU with bf16, a 3D
        model or one without batch norm; a model change or Device choice re-checks it."""
        if self.model is None:
            return
        from ..quantize import int8_refusal

        refused = int8_refusal(self.model, self._device.value)
        self._int8.enabled = refused is None
        if refused is not None:
            self._int8.value = False
        self._int8.tooltip = refused or (
            "runs the network in int8 on this CPU: about 2x faster per slice on the EM "
            "model, membrane IoU within 0.002 of float32 (calibrated on the image's first "
            "tiles); written into run.json and command.sh (--int8)"
        )

    @property
    def model_name(self) -> str:
        """A short name of the loaded model, for folders and layer metadata."""
        return model_name(self.model_spec)
