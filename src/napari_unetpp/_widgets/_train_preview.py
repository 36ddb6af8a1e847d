"""The train dock's before/after view: the slice a preview segments, and its layer.

Why apart from the dock (:mod:`.train`): the preview is computed inside the training job
(:mod:`._train_job`) on the slice shown at Start; placing its labels back where that
slice lies in the image (its scale, its translate, the stack index it was taken at) is
layer geometry, not the dock's run logic.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
from napari.layers import Labels

from ..normalization import as_model_input
from ._layers import current_slice
from ._output_layers import put_layer_steps
from ._predict_input import layer_frame
from ._train_job import PreviewEvent, PreviewSource

__all__ = ["preview_source", "show_preview"]


def preview_source(
    layer: Any,
    point: tuple[float, ...],
    axis: int | None,
    dims: int,
    device: Any,
    pixel_size: tuple[tuple[float, ...], str] | None,
    grey: bool = False,
) -> PreviewSource:
    """The slice of ``layer`` at the viewer's ``point`` for the before/after view (``axis``:
    its channel axis; ``grey``: an RGB image seen by a one-channel model, as its luminance)."""
    image = current_slice(layer, point, axis, dims)
    if grey:
        image, axis = as_model_input(image, 1, None, rgb=True)[0], None
    return PreviewSource(np.ascontiguousarray(image), axis is not None, device, pixel_size)


def show_preview(
    viewer: Any, layer: Any, event: PreviewEvent, point: tuple[float, ...], axis: int | None
) -> Generator[None, None, None]:
    """``<image> UNet++ before`` (starting model) or ``... preview`` (the new one), placed
    where the slice taken at ``point`` lies in ``layer`` (``axis``: its channel axis).

    A generator of event-loop steps (:func:`._ui.spread`), as the Segment dock's layers: a
    new layer is built, its canvas visual and controls made, inserted unselected and shown
    in turns of their own (the first preview was one turn of 220 ms of GUI-thread CPU on a
    busy 2-core machine, 0.3-0.8 s late ticks: issue 16); an update is one step. Sets
    ``event.shown`` when done or dropped: the training waits for it (:mod:`._train_job`).
    """
    try:
        yield from _put_preview(viewer, layer, event, point, axis)
    finally:
        event.shown.set()


def _put_preview(
    viewer: Any, layer: Any, event: PreviewEvent, point: tuple[float, ...], axis: int | None
) -> Generator[None, None, None]:
    stage = "before" if event.stage == "before" else "preview"
    labels = event.labels
    lead = layer.ndim - (axis is not None) - labels.ndim
    index = [int(round(p)) for p in layer.world_to_data(point)]
    scale, translate = list(layer.scale[-labels.ndim :]), list(layer.translate[-labels.ndim :])
    if lead > 0:  # a slice of a stack: place it where it was taken
        labels = labels[(None,) * lead]
        scale = list(layer.scale[:lead]) + scale
        translate = [
            t + p * s
            for t, p, s in zip(
                layer.translate[:lead], index[:lead], layer.scale[:lead], strict=True
            )
        ] + translate
    yield from put_layer_steps(
        viewer,
        Labels,
        f"{layer.name} UNet++ {stage}",
        labels,
        scale,
        translate,
        {"stage": event.stage, "step": event.step},
        **layer_frame(layer, None if layer.rgb else axis),
        opacity=0.5,
        select=False,  # the user's own labels stay selected, to paint on
    )
