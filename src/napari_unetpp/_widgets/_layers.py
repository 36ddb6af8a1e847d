"""The user's layers on the way in: choices, arrays, and files for a run's ``command.sh``.

Why here: the Segment and Train docks both read Image and Labels layers and name them
in a run's ``command.sh`` (:mod:`napari_unetpp.runs`). :func:`layer_choices` lists the
user's layers before the plugin's own results (:data:`PLUGIN_KEY` tells them apart);
:func:`layer_data` and :func:`current_slice` give the engine arrays, and
:func:`layer_file` a file for ``command.sh``, written by the run's job
(:class:`LayerCopy`). The plugin's output layers are :mod:`._output_layers`'.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PLUGIN_KEY",
    "layer_choices",
    "made_here",
    "layer_data",
    "current_slice",
    "LayerCopy",
    "layer_file",
    "layer_files",
    "write_copies",
]

#: Key of the metadata the plugin writes on its output layers (tells them from the user's).
PLUGIN_KEY = "napari_unetpp"
#: Arrays up to this size are saved beside a run so that ``command.sh`` can replay it.
MAX_SAVED_BYTES = 1 << 30


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
