"""The Segment dock's output layers: one per depth, the labels, adaptive-depth maps.

``<image> UNet++ L1`` .. ``L<D>`` (per-depth probability, magma, same scale/translate
as the input) and ``<image> UNet++ labels`` (``postprocess.probabilities_to_labels`` of
the depth the pruning panel's slider shows: instances for nuclei models). The labels
layer's metadata records the model, that depth and the scale; class names show on
hover (layer features) with fixed colours and a legend in the dock. Per-depth layers
that an earlier model with more depths left behind are removed. Multi-class models
show the probability of *any foreground* (1 - background) per depth, what one
compares across depths by eye; the classes are in the labels. "current slice only"
writes its own one-slice-thick ``... (quick look)`` layers placed at the slice shown,
leaving the whole-stack layers alone. ``<image> UNet++ label here next`` (hidden)
numbers the blocks to paint next (``label_next.label_here_next``). Why in one file:
the names and metadata stay the same for whole-stack runs and quick looks.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Shapes

from ._layers import PLUGIN_KEY, class_legend, labels_style, put_layer_steps
from ._ui import unproxied

if TYPE_CHECKING:
    import napari

    from ..config import ModelConfig
    from ..label_next import Region
    from ._predict_input import Placement

Lift = Callable[[Any], Any]


def lift_for(where: Placement) -> Lift:
    """Give a quick look's one-slice output back its sliced axes (length 1)."""
    lead = where.lead_index
    return (lambda a: a) if lead is None else (lambda a: a[(None,) * len(lead)])


def depth_layers(viewer: napari.viewer.Viewer, base: str, suffix: str) -> list[int]:
    """The depths ``d`` of existing ``<base> L<d><suffix>`` layers."""
    found = []
    for existing in viewer.layers:
        tail = existing.name[len(base) + 2 :] if existing.name.startswith(f"{base} L") else ""
        if suffix:
            tail = tail[: -len(suffix)] if tail.endswith(suffix) else ""
        if tail.isdigit():
            found.append(int(tail))
    return found


def drop_stale_depths(
    viewer: napari.viewer.Viewer,
    base: str,
    suffix: str,
    made: set[int],
    every: bool,
    model: str | None = None,
) -> None:
    """Remove the per-depth layers this run does not write (``made``): all of them when it
    is a run of ``every`` depth (an earlier model's deeper ones), else those another
    ``model`` made.

    Why the model: a run that writes no per-depth layer (adaptive depth) or one (Apply)
    left another model's L1..L4 beside its result, hidden and named as its depths.
    """
    for d in depth_layers(viewer, base, suffix):
        layer = viewer.layers[f"{base} L{d}{suffix}"]
        made_by = layer.metadata.get(PLUGIN_KEY, {}).get("model")
        if d not in made and (every or made_by not in (None, model)):
            viewer.layers.remove(layer)


#: The layers only an adaptive run makes (``<image> UNet++ <name>``); its disagreement map
#: is every run's of several heads (replaced by the next run's, or dropped by a pruned run).
ADAPTIVE_LAYERS = ("adaptive", "depth used")


def drop_adaptive(viewer: napari.viewer.Viewer, base: str, suffix: str) -> None:
    """Remove an earlier adaptive run's layers: after a run of fixed depth its mix of depths
    stayed visible over the new probabilities, and its depth map described labels that were
    no longer there."""
    for name in ADAPTIVE_LAYERS:
        if f"{base} {name}{suffix}" in viewer.layers:
            viewer.layers.remove(f"{base} {name}{suffix}")


def put_depths(
    viewer: napari.viewer.Viewer,
    base: str,
    suffix: str,
    probs: Any,
    labels_ndim: int,
    where: Placement,
    meta: dict[str, Any],
    shown_depth: int,
) -> Generator[None, None, None]:
    """One probability layer per depth; only ``shown_depth`` (the labels' depth) visible.

    Multi-class output shows the probability of any foreground (1 - background).
    An adaptive run's mix of depths is one layer, ``<base> adaptive``: named L4 it would
    pass for the deepest head's output. Yields after each layer (see :func:`show_result`).
    """
    lift = lift_for(where)
    adaptive = hasattr(probs, "depth_map")
    for d in sorted(probs):
        p = np.asarray(probs[d])
        shown = p if p.ndim == labels_ndim else 1.0 - p[0]  # classes: foreground
        yield from put_layer_steps(
            viewer,
            Image,
            f"{base} adaptive{suffix}" if adaptive else f"{base} L{d}{suffix}",
            lift(shown),
            where.scale,
            where.translate,
            {**meta, "depth": "adaptive" if adaptive else d},
            **where.frame,
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            opacity=0.7,
            blending="additive",
            visible=adaptive or d == shown_depth,  # a hidden new layer uploads no texture
            select=False,  # a run selects its labels layer, once (see show_result)
            below=f"{base} labels{suffix}",  # a re-run's new layer under the kept labels
        )
        yield
    for d in depth_layers(viewer, base, suffix):
        layer = viewer.layers[f"{base} L{d}{suffix}"]
        # an adaptive run hides an earlier run's per-depth layers; napari refreshes a layer
        # on every assignment, the same value too (a shown one is re-sliced): only on a change
        if layer.visible != (not adaptive and d == shown_depth):
            layer.visible = not adaptive and d == shown_depth


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


def put_depth_used(
    viewer: napari.viewer.Viewer,
    base: str,
    suffix: str,
    probs: Any,
    where: Placement,
    meta: dict[str, Any],
    max_depth: int,
) -> Generator[None, None, None]:
    """Adaptive depth's "depth used" layer (hidden at first)."""
    yield from put_layer_steps(
        viewer,
        Image,
        f"{base} depth used{suffix}",
        lift_for(where)(probs.depth_map),
        where.scale,
        where.translate,
        meta,
        **where.frame,
        colormap="viridis",
        contrast_limits=(1, max_depth),
        opacity=0.5,
        visible=False,
        select=False,
    )


def put_disagreement(
    viewer: napari.viewer.Viewer,
    name: str,
    disagreement: Any,
    where: Placement,
    meta: dict[str, Any],
) -> Generator[None, None, None]:
    """The run's per-pixel depth disagreement (``disagreement.result_disagreement``, hidden
    at first): of every run of several heads, adaptive or not, as ``predict
    --disagreement`` writes it."""
    yield from put_layer_steps(
        viewer,
        Image,
        name,
        lift_for(where)(disagreement),
        where.scale,
        where.translate,
        meta,
        **where.frame,
        colormap="inferno",
        opacity=0.6,
        blending="additive",
        visible=False,
        select=False,
    )


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


def _untouched(selection: Any, before: Sequence[Any]) -> bool:
    """Whether the user selected no layer since ``before`` (removing one deselects it).

    Why: the labels are selected in the last of the result's event-loop turns, a moment
    after their insert; a layer the user picked in between (their own labels, to paint
    on) lost the selection to the result, and the next brush stroke went into it.
    """
    return all(any(layer is old for old in before) for layer in selection)


def scale_note(probs: Any, model: ModelConfig | None = None) -> str | None:
    """What the scale step did (zoom, measured size), or None when it did nothing.

    A run of a model that records its training pixel size on an image without one says
    so: a plain tif of a CT at 0.98 mm ran as if at the zoo model's 3 mm (liver Dice 0.45
    instead of 0.92) while the status said nothing (the command line notes it).
    """
    scale = getattr(probs, "scale", None)
    if not scale:
        if model is None or not model.pixel_size:
            return None
        trained = f"{' x '.join(f'{s:g}' for s in model.pixel_size)} {model.pixel_unit}".strip()
        return (
            f"no pixel size: segmented as if at the model's {trained}; type the image's in "
            "'Pixel size' (Your image panel) if it differs"
        )
    zooms = scale.get("zoom", ())
    zoom = " x ".join(f"{z:.2f}" for z in zooms)
    measured = scale.get("measured_diameter")
    done = (
        "already at the model's scale"
        if all(abs(z - 1) < 0.005 for z in zooms)
        else f"resampled by {zoom} to the model's scale"
    )
    return (
        done
        + (f" (objects ~{measured:.0f} px)" if measured else "")
        + (f"; {scale['note']}" if scale.get("note") else "")
    )


def show_result(
    viewer: napari.viewer.Viewer,
    name: str,
    result: tuple[Any, Any],
    where: Placement,
    meta: dict[str, Any],
    model: ModelConfig,
    *,
    image: Any = None,
    **options: Any,
) -> Generator[None, None, tuple[str, list[str]]]:
    """All of a finished run's layers for the image ``name``; returns (legend, notes).

    ``options``: :func:`_add_result`'s (``instance``, ``all_depths``, ``regions``,
    ``disagreement``: the run's map, shown for every run of several heads).
    ``meta["depth"]`` is the labels' depth (``"adaptive"``: a mix); ``regions``: the blocks
    to label next (the job ranked them). A run of all depths first drops the per-depth
    layers it did not make (a pruned run makes one and keeps the rest). A generator that
    yields between the steps of adding a layer (building it, then inserting it: napari's
    insert alone is 50-100 ms of the GUI thread here), so the dock runs one step per event-loop turn
    (:func:`._ui.spread`) and the viewer keeps painting between them (issue 16). The
    layers are added unselected; a new labels layer is then selected, once (each
    selection builds and shows a layer's controls), unless the user selected a layer
    meanwhile. ``image`` (the input layer): once the user removed it, no more layers are
    added (a note says so), as when it was removed before the result came; the rest of a
    removed image's result came in one by one, labels over nothing, and 'done'.
    """
    steps = _add_result(viewer, name, result, where, meta, model, **options)
    try:
        while True:
            try:
                next(steps)
            except StopIteration as end:
                return end.value
            yield
            if image is not None and image not in viewer.layers:
                note = f"the image {name!r} was removed: the rest of its layers were not added"
                return class_legend(model, options["instance"]), [note]
    finally:  # now, on the GUI thread: a layer inserted hidden is shown (put_layer_steps)
        steps.close()


def _add_result(
    viewer: napari.viewer.Viewer,
    name: str,
    result: tuple[Any, Any],
    where: Placement,
    meta: dict[str, Any],
    model: ModelConfig,
    *,
    instance: bool,
    all_depths: bool,
    regions: Sequence[Region] = (),
    disagreement: Any = None,
) -> Generator[None, None, tuple[str, list[str]]]:
    """:func:`show_result`'s steps, without the watch on the input image."""
    probs, labels = result
    selection = unproxied(viewer).layers.selection  # the dock's proxy wraps each layer anew
    chosen = list(selection)  # a layer the user selects meanwhile keeps the selection
    base = f"{name} UNet++"
    suffix = "" if where.lead_index is None else " (quick look)"
    adaptive = hasattr(probs, "depth_map")
    if not adaptive:
        drop_adaptive(viewer, base, suffix)
    made = set() if adaptive else set(probs)
    drop_stale_depths(viewer, base, suffix, made, all_depths and not adaptive, meta["model"])
    yield from put_depths(viewer, base, suffix, probs, np.ndim(labels), where, meta, meta["depth"])
    labels_name = f"{base} labels{suffix}"
    kept = keep_edited(viewer, labels_name)
    before = viewer.layers[labels_name] if labels_name in viewer.layers else None
    labels_layer = yield from put_labels(viewer, labels_name, labels, where, meta, model, instance)
    notes = [] if kept is None else [f"your edits of the labels are kept in '{kept}'"]
    if hasattr(probs, "depth_map"):
        yield
        yield from put_depth_used(viewer, base, suffix, probs, where, meta, model.depth)
        notes.append(probs.summary())
    disagreement_name = f"{base} disagreement{suffix}"
    if disagreement is not None:
        yield
        yield from put_disagreement(viewer, disagreement_name, disagreement, where, meta)
    elif disagreement_name in viewer.layers:  # one head now: the map described other labels
        viewer.layers.remove(disagreement_name)
    yield
    next_name = f"{base} label here next{suffix}"
    if (yield from put_label_here_next(viewer, next_name, regions, where, meta)):
        notes.append(f"where to label next: the '{next_name}' layer (hidden)")
    elif next_name in viewer.layers:  # an earlier run's blocks (of another model, maybe)
        viewer.layers.remove(next_name)
    refused = str(getattr(regions, "note", ""))  # nothing worth labelling (label_next.Ranking)
    if refused:
        notes.append(refused)
    if labels_layer is not before:  # new: selected, as napari selects a new layer
        yield
        if labels_layer in viewer.layers and _untouched(selection, chosen):
            viewer.layers.selection.active = labels_layer
    note = scale_note(probs, model)
    return class_legend(model, instance), notes + ([note] if note else [])
