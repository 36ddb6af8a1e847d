"""Segment an Image layer with a UNet++ and see every depth (a thin widget).

UI values -> PredictConfig + the model's DataConfig (:mod:`._predict_input`) ->
``inference.predict`` in a :class:`._runner.JobRunner` -> events -> progress bar ->
layers, updated in place on re-runs (:mod:`._predict_layers`). The model box offers
shipped, just-trained and saved models (:mod:`._model_box`, :mod:`._predict_model`).
RGB images given to a 1-channel model become grey (luminance, as the CLI does). The
form and its job machinery are :class:`._predict_form.PredictForm`; what a result and
its check tell the user is :mod:`._predict_notes`.

Every run writes ``run.json``, ``command.sh`` and ``labels.tif`` into ``<output
folder>/<image>-<timestamp>``; the default, ``~/napari-unetpp/predictions``, is one
predictable place, never a write into data folders (often read-only shares).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from napari.layers import Image
from napari.utils.notifications import show_error, show_info

from . import _state
from ._dock import on_dock_closed
from ._model_box import model_name, zoo_choices
from ._pixel_size import layer_pixel_size
from ._predict_input import Placement
from ._predict_job import check_job, estimate_job, over_passes, segment_job, segment_passes
from ._predict_layers import show_result
from ._predict_model import PredictModels
from ._predict_notes import check_status, estimate_status, notify_check, result_notes
from ._predict_record import scan_file
from ._ui import set_progress, spread

if TYPE_CHECKING:
    import napari

    from ..checkpoint import CheckpointInfo
    from ..config import PredictConfig
    from ..model import UNetPlusPlus


class PredictWidget(PredictModels):
    """Dock widget: segment with a shipped, just-trained or saved UNet++; prune it."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self._connect()
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

    def _connect(self) -> None:
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
        self._device.changed.connect(self._refresh_int8)
        self._output.changed.connect(self.pruning.set_output_folder)
        self.pruning.apply_requested.connect(lambda depth: self.segment(pruned_depth=depth))

    # ------------------------------------------------------------------ run

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
            self._status.value = self._runner.queue.waiting_note()

    def _show(
        self,
        layer: Image,
        where: Placement,
        result: tuple[Any, Any, list[Any], Any, Any],
        config: PredictConfig,
        depth: int,
        made_by: tuple[UNetPlusPlus, CheckpointInfo | None, str | None],
        scope: str,
        check_stopped: bool = False,
    ) -> None:
        """The finished run's layers and status. ``check_stopped``: Cancel was pressed on a
        run to be checked; in the check's pass that leaves whole labels, but no check."""
        probs, labels, regions, check, disagreement = result
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
            disagreement=disagreement,
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
            warned, told = result_notes(check, layer.name, check_stopped)
            # the depth advice is about the model that ran: not shown on one chosen since
            if check is not None and check.advice is not None and self.model is model:
                self.pruning.show_advice(check.advice, layer.name)
                if check.advice.departs and not warned:  # a warning's report has it too
                    show_info(f"{layer.name}: {check.advice.message}")
            self._status.value = "; ".join(
                [f"done with {meta['model_name']}: labels from {source} L{final}"]
                + [*told, *notes, saved]
            )

        self._status.value = "adding the layers..."
        spread(steps, shown, self._runner.inline, alive=lambda: not self._closed)

    # ------------------------------------------------------------------ side jobs

    def estimate_size(self, _value: Any = None) -> None:
        """Measure the median object diameter (one pass) and put it in the panel."""
        layer = self._image.value
        self._run_side_job(
            "estimating the object size", estimate_job, lambda d: self._on_estimate(d, layer)
        )

    def _on_estimate(self, diameter: float | None, layer: Image) -> None:
        chosen = self._image.value is layer  # else another image was chosen meanwhile
        if diameter is not None and chosen:
            self.scale.show_diameter(diameter)
        self._status.value = estimate_status(diameter, layer.name, chosen)

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
        self._status.value, report = check_status(check, layer.name)
        notify_check(check, report)

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
