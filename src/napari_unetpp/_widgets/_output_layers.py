"""The widgets' output layers: added in event-loop steps, or updated in place.

Why here: the Segment and Train docks both write result layers; one way of putting
them keeps their metadata (``layer.metadata[PLUGIN_KEY]``: model, depth, scale),
their transform and their class names the same, updates a re-run's layer in place
(the user's view and selection stay), and spreads a new layer's building, insert and
first paint over event-loop turns (issue 16). The user's layers on the way in are
:mod:`._layers`'; the labels' look is :mod:`._label_layers`'.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from ._layer_parts import LayerParts, insert_with, prebuild
from ._layers import PLUGIN_KEY


def put_layer(
    viewer: Any,
    kind: type[Any],
    name: str,
    data: Any,
    scale: Sequence[float],
    translate: Sequence[float],
    meta: dict[str, Any],
    *,
    select: bool = True,
    **style: Any,
) -> Any:
    """Update layer ``name`` in place, or add it (replacing one of another kind or ndim).

    ``meta`` goes to ``layer.metadata[PLUGIN_KEY]``; ``style`` applies to new layers
    and, for the colours and class names of labels, also to updated ones. ``select``:
    whether a new layer becomes the selected one, as napari does (see :func:`insert_layer`).
    All at once; :func:`put_layer_steps` is the same in event-loop turns.
    """
    from ..events import drive

    steps = put_layer_steps(
        viewer, kind, name, data, scale, translate, meta, select=select, **style
    )
    return drive(steps)


def put_layer_steps(
    viewer: Any,
    kind: type[Any],
    name: str,
    data: Any,
    scale: Sequence[float],
    translate: Sequence[float],
    meta: dict[str, Any],
    *,
    select: bool = True,
    below: str | None = None,
    **style: Any,
) -> Generator[None, None, Any]:
    """:func:`put_layer` as a generator: a new layer is built, its canvas visual and
    controls panel are built (unselected layers: :mod:`._layer_parts`), it is inserted
    hidden, then shown, with a yield between the steps (a hidden layer has no show step).
    ``below``: a new layer goes under the layer of that name when it is there (a result's
    probabilities under its labels, which they washed out when added on top).

    Why: building a Labels or Shapes layer takes 10-40 ms of the GUI thread, napari's
    insert 100-190 ms more (its visual ~40, its controls ~35), and showing a layer (its
    first slice, thumbnail and paint) ~20 ms (issue 16, measured); in separate event-loop
    turns the viewer paints and serves input in between. An update in place does not yield.
    """
    old = viewer.layers[name] if name in viewer.layers else None
    if isinstance(old, kind) and old.ndim == _data_ndim(data):
        _update(old, data, scale, translate, meta, style)
        return old
    visible = style.pop("visible", True)
    layer = kind(
        data,
        name=name,
        scale=scale,
        translate=translate,
        metadata={PLUGIN_KEY: meta},
        visible=False,
        **style,
    )
    yield
    # its canvas visual and controls panel, a turn each (select=False: a layer napari
    # selects needs its controls during the insert); None: napari builds them in the insert
    parts = None if select else (yield from prebuild(viewer, layer))
    try:
        if parts is not None:
            yield
        layers = viewer.layers  # looked up again: the user may have changed the list meanwhile
        old = layers[name] if name in layers else None
        index = layers.index(old) if old is not None else len(layers)
        if old is None and below is not None and below in layers:
            index = layers.index(below)
        if old is not None:
            layers.remove(old)
    except BaseException:  # the steps were dropped (the dock closed): nothing left behind
        if parts is not None:
            parts.discard()
        raise
    insert_layer(layers, index, layer, select=select, parts=parts)
    if visible:
        try:
            yield
        finally:  # also when the steps are dropped here (the dock was closed): never left
            layer.visible = True  # hidden, where a re-run's update in place kept it hidden
    return layer


def _forget_edits(layer: Any) -> None:
    """Clear a Labels layer's undo history after its data was replaced by a new result.

    Why: napari keeps the history across ``layer.data = ...``; a brush correction on the
    old result, then ctrl+z after a re-run, wrote the old result's pixels into the new one.
    Made not editable, napari clears the history (public API; the tool mode is kept).
    """
    from napari.layers import Labels

    if not isinstance(layer, Labels):
        return
    mode = layer.mode
    layer.editable = False
    layer.editable = True
    layer.mode = mode


def _data_ndim(data: Any) -> int:
    """The ndim of a layer of ``data``: an array's, or a list of shapes' vertex dimension."""
    return int(np.shape(data[0])[-1]) if isinstance(data, list) and data else int(np.ndim(data))


def _update(
    old: Any,
    data: Any,
    scale: Sequence[float],
    translate: Sequence[float],
    meta: dict[str, Any],
    style: dict[str, Any],
) -> None:
    """Give an existing layer new data, transform, class names and metadata."""
    old.data = data
    _forget_edits(old)
    # each assignment refreshes the layer (~10 ms of the GUI thread): only on a change
    if not np.array_equal(old.scale, scale):
        old.scale = scale
    if not np.array_equal(old.translate, translate):
        old.translate = translate
    for key in ("features", "colormap"):
        if key in style:
            setattr(old, key, style[key])
    for key in ("units", "rotate", "shear", "affine"):  # the image layer's frame
        if key in style and not _same(getattr(old, key), style[key]):
            setattr(old, key, style[key])
    old.metadata = {**old.metadata, PLUGIN_KEY: meta}


def insert_layer(
    layers: Any, index: int, layer: Any, *, select: bool = True, parts: LayerParts | None = None
) -> None:
    """Insert ``layer``; with ``select=False`` the selection stays as it was. ``parts``: its
    canvas visual and controls, built before (:func:`._layer_parts.prebuild`; unselected only).

    Why: napari makes each inserted layer the selected one, which builds and shows
    its controls panel: about a quarter of the GUI-thread time of inserting a hidden
    layer (~20 of ~80 ms CPU, measured; issue 16). A result of five layers (the hidden
    depths among them) is selected once, not five times. napari has no public switch
    for this; with a napari that lacks the private one, the layer is selected as usual.
    The list behind a dock's proxy of the viewer is used: through the proxy the private
    switch raised three 'Private attribute access' warnings in the viewer at the first run.
    """
    from ._dock import unproxied

    layers = unproxied(layers)
    if select or not hasattr(layers, "_activate_on_insert"):
        if parts is not None:  # napari selects it during the insert: its controls must exist
            parts.discard()
        layers.insert(index, layer)
        return
    layers._activate_on_insert = False
    try:
        if parts is None:
            layers.insert(index, layer)
        else:
            insert_with(layers, index, layer, parts)
    finally:
        layers._activate_on_insert = True


def _same(current: Any, wanted: Any) -> bool:
    """Whether a layer's transform part already is ``wanted`` (units compare as text)."""
    if hasattr(current, "affine_matrix"):
        current = current.affine_matrix
    if isinstance(wanted, tuple) and wanted and isinstance(wanted[0], str):
        return tuple(str(u) for u in current) == wanted
    return bool(np.array_equal(np.asarray(current), np.asarray(wanted)))
