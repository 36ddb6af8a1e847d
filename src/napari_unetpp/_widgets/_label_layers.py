"""The Segment dock's labels layers: the result's labels, and the blocks to label next.

``<image> UNet++ labels`` (``postprocess.probabilities_to_labels`` of the depth the
pruning panel's slider shows: instances for nuclei models), with class names on hover
and fixed colours per class id (not napari's random label colours, which gave CT
organs 3-5 near-identical purples), shown as a legend in the dock; labels the user
painted on are handed over to them before a re-run (:func:`keep_edited`).
``<image> UNet++ label here next`` (hidden) numbers the blocks to paint next
(``label_next.label_here_next``). Why apart: what the user paints on, and where to
paint, are one job; :mod:`._predict_layers` puts a result's layers together.
"""

from __future__ import annotations

import weakref
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels, Shapes

from ._layers import PLUGIN_KEY
from ._output_layers import put_layer_steps
from ._predict_input import lift_for

if TYPE_CHECKING:
    import napari

    from ..config import ModelConfig
    from ..label_next import Region
    from ._predict_input import Placement


#: Distinct colours for class ids 1, 2, ... (0 = background stays transparent).
CLASS_COLOURS = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#ffe119",
    "#f58231",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
    "#bcf60c",
    "#008080",
    "#9a6324",
    "#800000",
)


def class_names(config: ModelConfig) -> list[str]:
    """Names of label ids 0..C-1 of a multi-class semantic model (empty otherwise)."""
    names = list(config.class_names)
    if config.num_classes < 2 or len(names) != config.num_classes:
        return []
    return names


def labels_style(config: ModelConfig, instance: bool = False) -> dict[str, Any]:
    """Layer keyword arguments for a model's labels: class names (hover) and fixed colours."""
    names = [] if instance else class_names(config)
    if not names:
        return {"opacity": 0.5}
    from napari.utils.colormaps import DirectLabelColormap

    colours: dict[int | None, Any] = {None: "transparent", 0: "transparent"}
    for k in range(1, len(names)):
        colours[k] = CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)]
    return {
        "opacity": 0.5,
        "features": {"index": np.arange(len(names)), "class": names},
        "colormap": DirectLabelColormap(color_dict=colours),
    }


def class_legend(config: ModelConfig, instance: bool = False) -> str:
    """Rich text: one coloured square and name per class (empty when there are no names)."""
    names = [] if instance else class_names(config)
    return "  ".join(
        f'<span style="color:{CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)]}">'
        f"&#9632;</span>&nbsp;{name}"
        for k, name in enumerate(names)
        if k > 0
    )


def put_labels(
    viewer: napari.viewer.Viewer,
    name: str,
    labels: Any,
    where: Placement,
    meta: dict[str, Any],
    model: ModelConfig,
    instance: bool,
) -> Generator[None, None, Any]:
    """The labels layer (class names on hover, fixed colours), added unselected; returns it.
    Its first brush stroke, fill or erase marks it edited (:func:`keep_edited`)."""
    layer = yield from put_layer_steps(
        viewer,
        Labels,
        name,
        lift_for(where)(labels),
        where.scale,
        where.translate,
        meta,
        **where.frame,
        **labels_style(model, instance),
        select=False,
    )
    if layer not in _watched:
        _watched.add(layer)
        layer.events.paint.connect(_mark_edited)
    return layer


#: Result labels layers whose paint events mark them edited (weakly: never kept alive).
_watched: weakref.WeakSet[Any] = weakref.WeakSet()


def _mark_edited(event: Any) -> None:
    """A result's labels were painted on: the next run must not overwrite them."""
    meta = event.source.metadata.get(PLUGIN_KEY)
    if isinstance(meta, dict):
        meta["edited"] = True


def keep_edited(viewer: napari.viewer.Viewer, name: str) -> str | None:
    """Hand a result's labels layer the user painted on over to them: renamed
    ``<name> (edited)`` and no longer marked as the plugin's (so the Train dock lists it
    as theirs). Returns its new name, or None when there was none to keep.

    Why: a re-run updated the layer in place, and corrections painted in it, in the
    'label here next' blocks say, were gone without a word (QA session 12).
    """
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is None or not (layer.metadata.get(PLUGIN_KEY) or {}).get("edited"):
        return None
    layer.metadata = {k: v for k, v in layer.metadata.items() if k != PLUGIN_KEY}
    layer.name = f"{name} (edited)"  # napari makes it unique (a second one: " [1]")
    return str(layer.name)


def put_label_here_next(
    viewer: napari.viewer.Viewer,
    name: str,
    regions: Sequence[Region],
    where: Placement,
    meta: dict[str, Any],
) -> Generator[None, None, int]:
    """The blocks to label next as numbered rectangles (a hidden Shapes layer); how many.

    ``regions``: ``label_next.label_here_next`` of the deepest head (what the CLI's
    ``--disagreement`` writes to ``_regions.json``), ranked in the job's worker thread;
    2D blocks only (a 3D block is not a rectangle).
    """
    lifted = () if where.lead_index is None else (0,) * len(where.lead_index)
    boxes = []
    for region in regions:
        if len(region.start) != 2:
            return 0
        (y, x), (h, w) = region.start, region.size
        corners = [(y, x), (y, x + w), (y + h, x + w), (y + h, x)]
        boxes.append(np.array([(*lifted, *region.item, *c) for c in corners], dtype=float))
    if not boxes:
        return 0
    old = viewer.layers[name] if name in viewer.layers else None
    shapes = yield from put_layer_steps(
        viewer,
        Shapes,
        name,
        boxes,
        where.scale,
        where.translate,
        meta,
        **where.frame,
        shape_type="rectangle",
        edge_color="yellow",
        face_color="transparent",
        edge_width=3,
        features={"rank": list(range(1, len(boxes) + 1)), "doubt": [r.score for r in regions]},
        text={"string": "{rank}", "color": "yellow", "anchor": "upper_left", "size": 10},
        visible=False,
        select=False,
    )
    if old is not None and shapes is old:  # in place: napari gives added shapes its default look
        shapes.edge_width, shapes.edge_color, shapes.face_color = 3, "yellow", "transparent"
    return len(boxes)
