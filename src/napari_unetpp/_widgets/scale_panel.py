"""The Segment dock's "your image vs the training data" panel: pixel size, object size, depth.

A model is right only at the scale it was trained at (issue 14): this panel turns what
the user knows (the layer's pixel size, kept by the readers from NIfTI/DICOM/OME-TIFF,
or the size of their objects) into ``PredictConfig.pixel_size`` / ``rescale``, so
``inference.predict`` resamples to the model's scale and back. "Estimate" measures the
objects' median diameter as "auto" does (``rescaled.object_sizes``); "auto"
does that inside every run (cellpose's two-pass recipe). "Adaptive depth" and "Check this
image" use what deep supervision gives for free (``adaptive.py``, ``disagreement.py``).

The panel holds values only; its owner (the Segment dock) runs the jobs in the
viewer's queue (Estimate and Check are :mod:`._predict_job`'s) and calls
:meth:`set_model`, :meth:`set_layer` and :meth:`overrides`. How a pixel size is read
from a layer or typed is :mod:`._pixel_size`'s.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, Container, FloatSpinBox, LineEdit, PushButton

from ._pixel_size import layer_pixel_size, parse_pixel_size, pixel_size_text
from ._ui import wrapped

if TYPE_CHECKING:
    from ..config import ModelConfig


class ScalePanel(Container):
    """Pixel size, object diameter (with Estimate), auto size, adaptive depth, image check."""

    def __init__(self) -> None:
        super().__init__(label="Your image")
        self._pixel = LineEdit(label="Pixel size", value="")
        self._pixel.tooltip = (
            "the image's pixel size per axis, e.g. '0.98 0.98 mm' (taken from "
            "the layer when the file says); empty = unknown"
        )
        self._model_scale = wrapped()
        self._diameter = FloatSpinBox(
            label="Object diameter (px)", min=0.0, max=2000.0, step=0.5, value=0.0
        )
        self._diameter.tooltip = "median object diameter in your image; 0 = as in training"
        self.estimate = PushButton(text="Estimate size")
        self._auto = CheckBox(text="auto object size")
        self._auto.tooltip = (
            "measure the objects in a first pass, rescale, segment again (on by default for "
            "models that know their objects' size; a diameter typed or estimated replaces it)"
        )
        # one source of scale at a time: a typed or estimated diameter is used as given,
        # auto measures afresh (ticked, a typed diameter was silently ignored)
        self._diameter.changed.connect(self._diameter_given)
        self._auto.changed.connect(self._auto_ticked)
        self.adaptive = CheckBox(text="adaptive depth")
        self.adaptive.tooltip = (
            "per tile, stop at the shallowest depth that agrees with the "
            "next one; adds 'depth used' and 'disagreement' layers"
        )
        self.check_results = CheckBox(text="check each result", value=True)
        self.check_results.tooltip = (
            "after Segment, judge the result from its own pass plus one at half size "
            "(about a quarter more time): warns when the image looks unlike the "
            "training data, and says what to try"
        )
        self.check = PushButton(text="Check this image")
        self.check.tooltip = (
            "depth and flip disagreement, uncertain pixels and object size "
            "against the training data: warns before you trust a result"
        )
        # one control per row: the dock must fit a laptop screen (issue 16: <= ~450 px)
        self.extend(
            [
                self._pixel,
                self._model_scale,
                self._diameter,
                self.estimate,
                self._auto,
                self.adaptive,
                self.check_results,
                self.check,
            ]
        )
        self._model: ModelConfig | None = None
        self._sized = False  # the model in use records its objects' size
        self._busy = False  # the owner runs a job (see set_busy)
        self._layer: weakref.ref[Any] | None = None  # the image the values are for

    def set_model(self, config: ModelConfig) -> None:
        """Show the training scale; object size only for models that record it."""
        self._model = config
        parts = []
        if config.pixel_size:
            sizes = " x ".join(f"{s:g}" for s in config.pixel_size)
            parts.append(f"trained at {sizes} {config.pixel_unit}".strip())
        if config.object_diameter:
            parts.append(f"objects ~{config.object_diameter:.0f} px in training")
            if not config.pixel_size:  # the pixel size field is shown but not used
                parts.append("no pixel size: the object diameter sets the scale")
        self._model_scale.value = "; ".join(parts) or "the model records no training scale"
        # a model trained without a pixel size cannot use one (the engine ignores it)
        self._pixel.enabled = bool(config.pixel_size)
        sized = config.object_diameter is not None
        was_sized, self._sized = self._sized, sized
        for widget in (self._diameter, self.estimate, self._auto):
            widget.enabled = sized
        self.estimate.enabled = sized and not self._busy
        if not sized:
            self._diameter.value, self._auto.value = 0.0, False
        elif not was_sized:
            # a user's objects are rarely the training set's size: nuclei 2x larger came out
            # shattered at the model's scale (foreground IoU 0.692, 0.814 with auto on 22
            # held-back DSB images shown 2x; natively auto costs 0.008: docs/benchmarks.md)
            self._auto.value = self._diameter.value == 0.0
        # adaptive depth compares each head with the next: a model of one head has none
        # (ticked, every Segment failed with "needs a deeply supervised network")
        self.adaptive.enabled = config.deep_supervision and config.depth > 1
        if not self.adaptive.enabled:
            self.adaptive.value = False

    def _diameter_given(self, value: float) -> None:
        if value > 0:
            self._auto.value = False

    def _auto_ticked(self, ticked: bool) -> None:
        if ticked:
            self._diameter.value = 0.0

    def set_busy(self, busy: bool) -> None:
        """Lock Estimate and Check while the owner runs a job, as its Segment button is:
        pressed mid-run they only said "a UNet++ job of this dock is running"."""
        self._busy = busy
        self.estimate.enabled = self._sized and not busy
        self.check.enabled = not busy

    def set_layer(self, layer: Any) -> None:
        """Take the layer's pixel size (kept from its file) into the field; another layer's
        object diameter is forgotten (it was measured on, or typed for, that image)."""
        if self._layer is None or self._layer() is not layer:
            self._diameter.value = 0.0
        self._layer = weakref.ref(layer)
        sizes, unit = layer_pixel_size(layer)
        self._pixel.value = "" if sizes is None else pixel_size_text(sizes, unit)

    def show_diameter(self, diameter: float) -> None:
        self._diameter.value = round(float(diameter), 1)

    def diameter_given(self) -> float | str | None:
        """The object size the user set: ``"auto"``, a typed or estimated diameter, or None
        (for the run record: the config keeps only the rescale factor it becomes)."""
        if not self._sized:
            return None
        if self._auto.value:
            return "auto"
        return float(self._diameter.value) if self._diameter.value > 0 else None

    def overrides(self) -> dict[str, Any]:
        """``PredictConfig`` fields from the panel (ValueError on a malformed pixel size)."""
        from ..scale import rescale_from_diameter

        used = self._model is None or bool(self._model.pixel_size)
        sizes, unit = parse_pixel_size(self._pixel.value) if used else (None, "")
        values: dict[str, Any] = {
            "pixel_size": sizes,
            "pixel_unit": unit,
            "adaptive_depth": bool(self.adaptive.value),
        }
        if self._auto.value:
            values["rescale"] = "auto"
        elif self._diameter.value > 0 and self._model is not None:
            values["rescale"] = rescale_from_diameter(
                self._model.object_diameter, float(self._diameter.value)
            )
        return values


def check_reachable(fields: dict[str, Any], model: ModelConfig | None) -> dict[str, Any]:
    """``fields`` (:meth:`ScalePanel.overrides`), or a ValueError when no resampling can bring
    their pixel size to the model's.

    Why: '1 mm' typed for the 4 nm EM model (a zoom of 250000) started a run that wrote
    its folder, run.json and command.sh, then failed; Segment refuses it before that.
    """
    from ..scale import check_zoom, zoom_from_pixel_size

    sizes = fields.get("pixel_size")
    if sizes is not None and model is not None and model.pixel_size:
        unit = fields.get("pixel_unit", "")
        zoom = zoom_from_pixel_size(sizes, model.pixel_size, unit, model.pixel_unit)
        check_zoom(zoom, f"pixel size '{pixel_size_text(sizes, unit)}': a zoom")
    return fields
