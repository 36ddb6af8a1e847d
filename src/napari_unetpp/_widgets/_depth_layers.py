"""The Segment dock's per-depth layers: one probability layer per depth, and the maps
of how the depths differ (adaptive depth's mix and "depth used", the disagreement).

``<image> UNet++ L1`` .. ``L<D>`` (per-depth probability, magma, same scale/translate
as the input); multi-class models show the probability of *any foreground*
(1 - background) per depth, what one compares across depths by eye. Per-depth layers
that an earlier model with more depths left behind are removed, and so are an earlier
adaptive run's layers after a run of fixed depth. Why apart: the depths' names and the
rules that drop stale ones are one job; the labels are :mod:`._label_layers`', and
:mod:`._predict_layers` puts a result's layers together.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image

from ._layers import PLUGIN_KEY
from ._output_layers import put_layer_steps
from ._predict_input import lift_for

if TYPE_CHECKING:
    import napari

    from ._predict_input import Placement


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
    pass for the deepest head's output. Yields after each layer (see
    :func:`._predict_layers.show_result`).
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
    _in_depth_order(viewer, base, suffix)
    for d in depth_layers(viewer, base, suffix):
        layer = viewer.layers[f"{base} L{d}{suffix}"]
        # an adaptive run hides an earlier run's per-depth layers; napari refreshes a layer
        # on every assignment, the same value too (a shown one is re-sliced): only on a change
        if layer.visible != (not adaptive and d == shown_depth):
            layer.visible = not adaptive and d == shown_depth


def _in_depth_order(viewer: napari.viewer.Viewer, base: str, suffix: str) -> None:
    """Put the per-depth layers back in depth order (L1 lowest), where the last one is.

    Why: after Apply at L2 with another model (its other depths dropped, L2 updated in
    place), a full Segment inserted the new L1 under the labels, above the kept L2: the
    layer list read L2, L1, L3, L4 (QA session 15). Moves nothing when in order already
    (each move is a reorder event the viewer redraws for).
    """
    found = depth_layers(viewer, base, suffix)
    if found == sorted(found):
        return
    layers = viewer.layers
    names = [f"{base} L{d}{suffix}" for d in sorted(found)]
    end = max(layers.index(name) for name in names) + 1
    for name in names:  # each moved to the end of the group: ascending, L1 lowest
        layers.move(layers.index(name), end)


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
