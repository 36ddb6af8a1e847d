"""Layers in and out of the widgets: input arrays and files, output layers updated in place.

Why here: the Segment and Train docks both write labels layers; one helper
keeps their metadata (model, depth, scale), their class names on hover (a
features table napari shows in the status bar) and their colours the same.
Class colours are fixed per class id (not napari's random label colours, which
gave CT organs 3-5 near-identical purples), and the dock shows them as a legend.
On the way in, :func:`layer_data` and :func:`current_slice` give the engine arrays,
and :func:`layer_file` a file for the run's ``command.sh`` (:mod:`napari_unetpp.runs`),
written by the run's job (:class:`LayerCopy`).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..config import ModelConfig

__all__ = [
    "CLASS_COLOURS",
    "class_names",
    "labels_style",
    "class_legend",
    "put_layer",
    "put_layer_steps",
    "PLUGIN_KEY",
    "layer_data",
    "current_slice",
    "LayerCopy",
    "layer_file",
    "layer_files",
    "write_copies",
]

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
#: Key of the metadata the plugin writes on its output layers (tells them from the user's).
PLUGIN_KEY = "napari_unetpp"
#: Arrays up to this size are saved beside a run so that ``command.sh`` can replay it.
MAX_SAVED_BYTES = 1 << 30


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
    """:func:`put_layer` as a generator: a new layer is built, inserted hidden, then shown,
    with a yield between the steps (a hidden layer is built and inserted in two).
    ``below``: a new layer goes under the layer of that name when it is there (a result's
    probabilities under its labels, which they washed out when added on top).

    Why: building a Labels or Shapes layer takes 10-40 ms of the GUI thread, napari's
    insert 50-100 ms more, and showing a layer (its first slice, thumbnail and paint)
    ~20 ms (issue 16, measured); in separate event-loop turns the viewer paints and
    serves input in between. An update in place does not yield.
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
    layers = viewer.layers  # looked up again: the user may have changed the list meanwhile
    old = layers[name] if name in layers else None
    index = layers.index(old) if old is not None else len(layers)
    if old is None and below is not None and below in layers:
        index = layers.index(below)
    if old is not None:
        layers.remove(old)
    insert_layer(layers, index, layer, select=select)
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


def insert_layer(layers: Any, index: int, layer: Any, *, select: bool = True) -> None:
    """Insert ``layer``; with ``select=False`` the selection stays as it was.

    Why: napari makes each inserted layer the selected one, which builds and shows
    its controls panel: about a quarter of the GUI-thread time of inserting a hidden
    layer (~20 of ~80 ms CPU, measured; issue 16). A result of five layers (the hidden
    depths among them) is selected once, not five times. napari has no public switch
    for this; with a napari that lacks the private one, the layer is selected as usual.
    The list behind a dock's proxy of the viewer is used: through the proxy the private
    switch raised three 'Private attribute access' warnings in the viewer at the first run.
    """
    from ._ui import unproxied

    layers = unproxied(layers)
    if select or not hasattr(layers, "_activate_on_insert"):
        layers.insert(index, layer)
        return
    layers._activate_on_insert = False
    try:
        layers.insert(index, layer)
    finally:
        layers._activate_on_insert = True


def _same(current: Any, wanted: Any) -> bool:
    """Whether a layer's transform part already is ``wanted`` (units compare as text)."""
    if hasattr(current, "affine_matrix"):
        current = current.affine_matrix
    if isinstance(wanted, tuple) and wanted and isinstance(wanted[0], str):
        return tuple(str(u) for u in current) == wanted
    return bool(np.array_equal(np.asarray(current), np.asarray(wanted)))


# --------------------------------------------------------------------------- input layers


def layer_choices(viewer: Any, kind: type[Any]) -> Any:
    """A ComboBox ``choices`` callable: (name, layer) of the viewer's layers of ``kind``,
    the user's before the plugin's own outputs.

    Why that order: a box falls back to its first choice when the chosen layer goes. With
    the image removed, the Segment dock had fallen to its ``UNet++ L1`` probabilities (the
    next Segment ran on them), and the Train dock's Labels box to the plugin's own labels.
    """

    def choices(_w: Any = None) -> list[tuple[str, Any]]:
        layers = [layer for layer in viewer.layers if isinstance(layer, kind)]
        layers.sort(key=made_here)  # stable: user's first
        return [(layer.name, layer) for layer in layers]

    return choices


def made_here(layer: Any) -> bool:
    """Whether ``layer`` is one of this plugin's result layers (not the user's own)."""
    return PLUGIN_KEY in getattr(layer, "metadata", {})


def layer_data(layer: Any) -> Any:
    """A layer's array (the full-resolution level of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def current_slice(
    layer: Any, world_point: Sequence[float], channel_axis: int | None, spatial_dims: int
) -> np.ndarray:
    """What a ``spatial_dims`` model sees at the viewer's position: the slice shown now
    (2D) or the volume (3D), with the channels (if any) moved last."""
    data = layer_data(layer)
    point = [int(round(p)) for p in layer.world_to_data(world_point)]
    if channel_axis is not None:
        channel_axis %= data.ndim
        data = np.moveaxis(data, channel_axis, -1)
        if len(point) == data.ndim:  # an RGB layer's point has no channel coordinate
            del point[channel_axis]
    lead = data.ndim - (channel_axis is not None) - spatial_dims
    index = tuple(int(np.clip(point[a], 0, data.shape[a] - 1)) for a in range(max(lead, 0)))
    return np.asarray(data[index])


@dataclass(frozen=True)
class LayerCopy:
    """A layer's array that ``command.sh`` names as ``path``, written by the run's job.

    Why by the job (in its worker, before anything else): written in the Start click's
    handler, a 6000 x 6000 uint16 image held the GUI thread 0.42 s (a 1 GiB one, seconds),
    and a run cancelled while queued left the copy behind.
    """

    path: Path
    data: Any = field(repr=False)
    rgb: bool = False

    def write(self) -> None:
        import tifffile

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(self.path, self.data, photometric="rgb" if self.rgb else "minisblack")


def write_copies(copies: Sequence[LayerCopy]) -> None:
    """Write the arrays a run's ``command.sh`` names (a job's first step)."""
    for copy in copies:
        copy.write()


def layer_file(
    layer: Any, folder: str | os.PathLike[str], stem: str, part: Any = None
) -> tuple[str, LayerCopy | None]:
    """A file holding ``layer``'s data, for ``command.sh``, and the copy to write there.

    An Image layer opened from a file uses that file, unless the layer is only part of it
    (one channel a reader split off); other data (painted
    labels, samples, arrays from scripts) is to be saved as ``folder/stem.tif`` (the
    :class:`LayerCopy` returned, for the job to write) when it is in memory and not huge;
    otherwise a ``<...>`` placeholder says what to put.
    ``part``: the part of the layer a run used (a quick look's slice, a copy of painted
    labels), saved instead.
    """
    from ..medical import is_dicom
    from ..readers import holds_whole_file

    source = getattr(getattr(layer, "source", None), "path", None)
    data = layer_data(layer) if part is None else part
    # a DICOM series is a folder: named as it is, not copied (a CT: 300 MB on the GUI thread)
    file = Path(source) if source else None
    readable = file is not None and (file.is_file() or is_dicom(file))
    if part is None and file is not None and readable and type(layer).__name__ == "Image":
        if holds_whole_file(file, np.shape(data)):  # not one channel of the file
            return str(file.resolve()), None
    if not hasattr(data, "__array__") or type(data).__module__.split(".")[0] != "numpy":
        return f"<{stem}: save layer {layer.name!r} to a file>", None
    if data.nbytes > MAX_SAVED_BYTES:
        return f"<{stem}: save layer {layer.name!r} to a file>", None
    path = (Path(folder) / f"{stem}.tif").resolve()
    rgb = getattr(layer, "rgb", False) and np.shape(data)[-1] in (3, 4)  # not its grey part
    return str(path), LayerCopy(path, data, bool(rgb))


def layer_files(
    layers: Sequence[Any],
    folder: str | os.PathLike[str],
    prefix: str,
    parts: Sequence[Any] | None = None,
) -> tuple[list[str], list[LayerCopy]]:
    """:func:`layer_file` for several layers (``prefix_0``, ``prefix_1``...): their paths,
    and the copies to write."""
    named = [
        layer_file(layer, folder, f"{prefix}_{n}", None if parts is None else parts[n])
        for n, layer in enumerate(layers)
    ]
    return [path for path, _ in named], [copy for _, copy in named if copy is not None]
