"""The Segment dock's input: what a run reads, and where its output layers go.

Why apart from the dock: these take a layer and configs, never a widget, so the
dock stays a thin mapping of UI values onto them. :func:`predict_input` turns an
Image layer and the chosen scope into the engine's array plus where the output
layers go (:class:`Placement`); :func:`predict_config` the dock's values into a
PredictConfig. The job that runs on them is :mod:`._predict_job`; what it writes,
:mod:`._predict_record`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..normalization import as_model_input, looks_rgb

if TYPE_CHECKING:
    from ..config import DataConfig, DeviceName, ModelConfig, PredictConfig

SCOPES = ["2D", "whole stack slice-wise", "3D", "current slice only (quick look)"]


class Placement(NamedTuple):
    """Where a run's output goes: slice index (quick look), output scale and translate.

    ``frame``: the rest of the image layer's placement, given to every result layer so
    it overlays the image: its units (else napari drops units from the scale bar and
    warns once per layer), and its rotate, shear and affine (where the output keeps
    the layer's axes; a removed channel axis leaves them out).
    """

    lead_index: tuple[int, ...] | None
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    frame: Mapping[str, Any] = MappingProxyType({})


Lift = Callable[[Any], Any]


def lift_for(where: Placement) -> Lift:
    """Give a quick look's one-slice output back its sliced axes (length 1)."""
    lead = where.lead_index
    return (lambda a: a) if lead is None else (lambda a: a[(None,) * len(lead)])


def layer_frame(layer: Any, removed_axis: int | None) -> dict[str, Any]:
    """Units, rotate, shear and affine of ``layer`` for outputs without ``removed_axis``."""
    units = [str(u) for u in getattr(layer, "units", ())]
    if removed_axis is not None and units:
        del units[removed_axis]
    frame: dict[str, Any] = {"units": tuple(units)} if units else {}
    if removed_axis is None:
        frame.update(
            rotate=np.asarray(layer.rotate),
            shear=np.asarray(layer.shear),
            affine=np.asarray(layer.affine.affine_matrix),
        )
    return frame


def default_scope(layer: Any, model: ModelConfig) -> str:
    """The scope that fits this image and model: 3D models run in 3D, stacks slice-wise."""
    spatial = layer.ndim - (model.in_channels > 1 and not layer.rgb)
    if model.spatial_dims == 3:
        return "3D"
    return "whole stack slice-wise" if spatial > 2 else "2D"


def predict_input(
    layer: Any,
    model: ModelConfig,
    data_config: DataConfig,
    scope: str,
    point: Any,
    displayed: tuple[int, ...] | None = None,
) -> tuple[Any, DataConfig, Placement]:
    """The array to segment, its DataConfig and where the output goes; checks the scope.

    ``point`` is the viewer's world position (``viewer.dims.point``): the slice a
    "current slice only" run takes; ``displayed`` (``viewer.dims.displayed``): the
    axes the view shows, which must be that slice's.
    """
    data = layer.data[0] if layer.multiscale else layer.data
    dims, channels = model.spatial_dims, model.in_channels
    data, grey = as_model_input(data, channels, None, rgb=layer.rgb)  # as the CLI and zoo
    if channels == 1 and not layer.rgb and looks_rgb(np.shape(data)):
        # the engine reads such a last axis as colour: the dock and it disagreed on the
        # image's dimensions, and the run ended in an IndexError (QA session 11)
        raise ValueError(
            f"the layer's last axis has {np.shape(data)[-1]} values, like colour, but the "
            "layer is not RGB (napari shows it as planes of "
            f"{' x '.join(map(str, np.shape(data)[-2:]))} pixels): add it with rgb=True, "
            "or split the channels into layers (channel_axis=-1)"
        )
    if channels == 1 and not layer.rgb and np.ndim(data) > 2 and np.shape(data)[-1] == 1:
        # the engine's advice ("give DataConfig.channel_axis=-1") names no field of the dock
        raise ValueError(
            "the layer's last axis has 1 value (napari shows it as planes of "
            f"{np.shape(data)[-2]} x 1 pixels): remove that axis (in napari's console: "
            "layer.data = layer.data[..., 0]), or save the image without it"
        )
    if grey:
        axis = None
    elif layer.rgb:
        axis = data.ndim - 1
    else:
        axis = None if channels == 1 else data_config.channel_axis
        if axis is None and channels > 1:
            raise ValueError(
                f"the model expects {channels} channels; open the image as one "
                "layer with a channel axis (or as RGB)"
            )
    axis = None if axis is None else axis % data.ndim
    scale, translate = list(layer.scale), list(layer.translate)
    removed = axis if axis is not None and not layer.rgb else None
    if removed is not None:
        del scale[removed], translate[removed]
    spatial = data.ndim - (axis is not None)
    _check_scope(scope, dims, spatial)
    lead_index = None
    if scope.startswith("current") and spatial > 2:
        _check_plane_shown(layer.ndim, len(point), displayed, removed)
        world = list(layer.world_to_data(point))
        lead = [a for a in range(data.ndim) if a != axis][: spatial - 2]
        lead_index = tuple(int(np.clip(round(world[a]), 0, data.shape[a] - 1)) for a in lead)
        index: list[int | slice] = [slice(None)] * data.ndim
        for a, i in zip(lead, lead_index, strict=True):
            index[a] = i
        data = data[tuple(index)]
        if axis is not None:
            axis -= sum(1 for a in lead if a < axis)
        for k, i in enumerate(lead_index):
            translate[k] += i * scale[k]
    return (
        data,
        data_config.replace(channel_axis=axis),
        Placement(lead_index, tuple(scale), tuple(translate), layer_frame(layer, removed)),
    )


def _check_plane_shown(
    ndim: int, world_ndim: int, displayed: tuple[int, ...] | None, channel: int | None
) -> None:
    """A ValueError when a 2D view shows another plane than the one a quick look segments
    (the image's last two axes, its Y-X plane).

    Why: with the axis order changed (napari's transpose / roll buttons) the view showed
    a Z-X plane, the quick look segmented the Y-X plane at the slider's Z, and its result
    was one row of the view.
    """
    if displayed is None or len(displayed) != 2:  # a 3D view shows no one plane
        return
    offset = world_ndim - ndim  # a layer takes the viewer's last axes
    shown = sorted(d - offset for d in displayed)
    plane = [a for a in range(ndim) if a != channel][-2:]
    if shown != plane:
        raise ValueError(
            "'current slice only' segments the image's Y-X plane (its last two axes), but "
            f"the view shows axes {shown[0]} and {shown[1]} (the axis order was changed): "
            "put the order back with the viewer's transpose / roll buttons, or choose "
            "'whole stack slice-wise'"
        )


def _check_scope(scope: str, dims: int, spatial: int) -> None:
    """A ValueError that names the scope to choose when this one cannot run."""
    if scope == "3D" and (dims != 3 or spatial < 3):
        raise ValueError(
            "'3D' needs a 3D model and a 3D image; this model is "
            f"{dims}D: choose 'whole stack slice-wise'"
        )
    if scope != "3D" and dims == 3:
        raise ValueError("this model is 3D: choose the '3D' scope")
    if scope == "2D" and spatial > 2:
        raise ValueError(
            f"the image has {spatial} dimensions: choose 'whole stack "
            "slice-wise' or 'current slice only'"
        )


def predict_config(
    dims: int,
    tile: int,
    tta: bool,
    device: DeviceName,
    scale: dict[str, Any],
    pruned_depth: int | None,
    int8: bool = False,
) -> PredictConfig:
    """The dock's PredictConfig; ``scale`` is the scale panel's overrides.

    Apply (a pruned depth) runs the pruned network and TTA all depths, so neither
    runs adaptive depth. ``int8``: the int8 switch (greyed where it cannot run); it
    cannot run adaptive depth, which the user must untick (both were asked for).
    """
    from ..config import PredictConfig

    if pruned_depth is not None or tta:
        scale = {**scale, "adaptive_depth": False}
    if int8 and scale.get("adaptive_depth"):
        raise ValueError(
            "int8 does not run adaptive depth (it chooses the heads per tile): untick "
            "'adaptive depth' (Your image) or 'int8'"
        )
    return PredictConfig(
        pruned_depth=pruned_depth,
        tile_size=(tile,) * dims,
        tta=tta,
        device=device,
        int8=int8,
        **scale,
    )
