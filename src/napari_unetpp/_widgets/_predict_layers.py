"""The Segment dock's output layers: a finished run's layers, put together.

For the image ``name``: the per-depth probabilities and adaptive-depth maps
(:mod:`._depth_layers`), the labels and the blocks to label next
(:mod:`._label_layers`), added one step per event-loop turn; the notes the result
gives (:func:`._predict_notes.scale_note`). The labels layer's metadata records the
model, the labels' depth and the scale; class names show on hover (layer features)
with fixed colours and a legend in the dock. "current slice only" writes its own
one-slice-thick ``... (quick look)`` layers placed at the slice shown, leaving the
whole-stack layers alone. Why in one file: the names and metadata stay the same for
whole-stack runs and quick looks.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._depth_layers import (
    drop_adaptive,
    drop_stale_depths,
    put_depth_used,
    put_depths,
    put_disagreement,
)
from ._dock import unproxied
from ._label_layers import class_legend, keep_edited, put_label_here_next, put_labels
from ._predict_notes import scale_note

if TYPE_CHECKING:
    import napari

    from ..config import ModelConfig
    from ..label_next import Region
    from ._predict_input import Placement


def _untouched(selection: Any, before: Sequence[Any]) -> bool:
    """Whether the user selected no layer since ``before`` (removing one deselects it).

    Why: the labels are selected in the last of the result's event-loop turns, a moment
    after their insert; a layer the user picked in between (their own labels, to paint
    on) lost the selection to the result, and the next brush stroke went into it.
    """
    return all(any(layer is old for old in before) for layer in selection)


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
    if image is not None:
        _image_under_results(viewer, image, f"{name} UNet++ ")
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


def _image_under_results(viewer: napari.viewer.Viewer, image: Any, prefix: str) -> None:
    """Move the input image under its earlier results (layers named ``prefix...``).

    Why: an image removed and opened again went on top of its earlier result layers, which
    a Segment then updated in place under the opaque image: the new labels were hidden
    (QA session 15).
    """
    layers = viewer.layers
    if image not in layers:
        return
    below = [i for i, layer in enumerate(layers) if layer.name.startswith(prefix)]
    here = layers.index(image)
    if below and here > min(below):
        layers.move(here, min(below))


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
