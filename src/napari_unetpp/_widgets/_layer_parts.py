"""A new layer's canvas visual and controls panel, built in event-loop turns before its insert.

Why: napari's insert of one hidden 4 x 256 x 256 layer was 100-190 ms of the GUI thread on
a 2-core machine (issue 16; the stall budget is 50 ms per turn), and most of it is two
callbacks of the layer list's ``inserted`` event: the canvas visual
(``QtViewer._on_add_layer_change``: an Image, a tiled Image and a Volume node, ~40 ms) and
the controls panel (``QtLayerControlsContainer._add``, ~35 ms). Neither needs the layer to
be in the list: here each is built in a turn of its own, and the insert's turn only hands
them over. napari has no public way to do this, so this module is the one place that
reaches into napari's Qt viewer; where napari lacks any of it (another version, an
experimental poller, a viewer without a window), :func:`prebuild` returns None and the
layer is inserted as napari does it. A part napari built anyway (its callback renamed: the
blocker blocked nothing) wins, and the prebuilt one is closed.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ._dock import unproxied


@dataclass
class LayerParts:
    """A layer's prebuilt canvas visual and controls panel, for one insert into ``qt_viewer``."""

    qt_viewer: Any
    visual: Any = None
    controls: Any = None

    def discard(self) -> None:
        """Close what was built and not handed over (the insert did not happen)."""
        if self.visual is not None:
            self.visual.close()
        if self.controls is not None:
            container = self.qt_viewer.controls
            for layer, controls in list(container.widgets.items()):
                if controls is self.controls:  # put in its place before the insert: taken out
                    del container.widgets[layer]
            if container.indexOf(self.controls) >= 0:
                container.removeWidget(self.controls)
            self.controls.close()
            self.controls.deleteLater()
        self.visual = self.controls = None


def _qt_viewer(viewer: Any) -> Any:
    """napari's Qt viewer behind ``viewer``, when it has every piece used here; else None."""
    window = getattr(unproxied(viewer), "window", None)
    qt_viewer = getattr(window, "_qt_viewer", None)
    canvas = getattr(qt_viewer, "canvas", None)
    controls = getattr(qt_viewer, "controls", None)
    needed = [
        (qt_viewer, "_on_add_layer_change"),
        (canvas, "add_layer_visual_mapping"),
        (canvas, "layer_to_visual"),
        (canvas, "font_info"),
        (controls, "_add"),
        (controls, "widgets"),
        (controls, "addWidget"),
        (controls, "removeWidget"),
        (controls, "indexOf"),
    ]
    if any(not hasattr(obj, name) for obj, name in needed):
        return None
    if getattr(qt_viewer, "_qt_poll", None) is not None:  # experimental: napari wires it
        return None
    return qt_viewer


def prebuild(viewer: Any, layer: Any) -> Generator[None, None, LayerParts | None]:
    """Build ``layer``'s canvas visual, its controls panel, and put the panel in napari's
    stack of controls, a turn each; None where napari does not allow it (see the module's
    docstring). Closed early, nothing is left behind (:meth:`LayerParts.discard`)."""
    qt_viewer = _qt_viewer(viewer)
    try:
        from napari._qt.layer_controls.qt_layer_controls_container import (
            create_qt_layer_controls,
        )
        from napari._vispy.utils.visual import create_vispy_layer
    except ImportError:
        return None
    if qt_viewer is None:
        return None
    parts = LayerParts(qt_viewer)
    container = qt_viewer.controls
    try:
        parts.visual = create_vispy_layer(layer, font_info=qt_viewer.canvas.font_info())
        yield
        parts.controls = create_qt_layer_controls(layer)
        yield
        # put in napari's stack of controls now (Qt styles it there: ~40 ms, measured), as
        # napari's callback does; shown only once the layer is in the list and selected
        parts.controls.ndisplay = qt_viewer.viewer.dims.ndisplay
        container.addWidget(parts.controls)
        container.widgets[layer] = parts.controls
    except BaseException:
        parts.discard()
        raise
    return parts


def insert_with(layers: Any, index: int, layer: Any, parts: LayerParts) -> None:
    """Insert ``layer`` into the (unproxied) ``layers`` with its prebuilt ``parts``.

    napari's two callbacks are blocked for this insert only; what each would have made is
    then handed over in the same turn (the controls are in place already), so the viewer is
    never seen with a layer that has no visual or no controls (a selection or removal in
    between would fail in napari).
    """
    qt_viewer = parts.qt_viewer
    container = qt_viewer.controls
    emitter = layers.events.inserted
    with emitter.blocker(qt_viewer._on_add_layer_change), emitter.blocker(container._add):
        try:
            layers.insert(index, layer)
        except BaseException:
            parts.discard()
            raise
    if layer not in layers:  # refused or removed by another callback: nothing to attach
        parts.discard()
        return
    if layer not in qt_viewer.canvas.layer_to_visual:
        qt_viewer.canvas.add_layer_visual_mapping(layer, parts.visual)
        parts.visual = None
    if container.widgets.get(layer) is parts.controls:
        parts.controls = None  # in place since the last step
    parts.discard()  # what napari built itself (a callback the blocker did not match)
