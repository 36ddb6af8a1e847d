"""Where an input's channel, leading (slice / time) and spatial axes are, and views of one item.

Why apart from :mod:`inference`: ordinary, adaptive and rescaled prediction (and
the distributed path) must read the axes of an image the same way: a 2D model
runs slice by slice over any leading axes, a 3D model on the last three, item by
item over the rest, and outputs drop the channel axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from .model import UNetPlusPlus
from .normalization import TileNormaliser, spatial_shape

__all__ = ["ItemSink", "ItemView", "Layout", "image_layout", "output_shape", "stacked_item"]


@dataclass(frozen=True)
class Layout:
    """Where the channel, leading (slice/time) and spatial axes of the input are."""

    ndim: int
    channel_axis: int | None
    channels: int
    lead_axes: tuple[int, ...]
    lead_shape: tuple[int, ...]
    spatial_axes: tuple[int, ...]
    spatial_shape: tuple[int, ...]

    @property
    def shape_without_channels(self) -> tuple[int, ...]:
        return self.lead_shape + self.spatial_shape


def image_layout(shape: tuple[int, ...], channel_axis: int | None, model: UNetPlusPlus) -> Layout:
    """Split ``shape`` into channels, leading and spatial axes for ``model``; explain mismatches."""
    ndim, dims = len(shape), model.spatial_dims
    in_channels = model.config.in_channels
    given = channel_axis  # as the user named it (-1), for messages
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            raise ValueError(
                f"DataConfig.channel_axis {channel_axis} is out of range for an image of shape "
                f"{shape}; set it to None (no channels) or to one of its axes"
            )
        channel_axis %= ndim
    others = tuple(a for a in range(ndim) if a != channel_axis)
    if len(others) < dims and channel_axis is not None and shape[channel_axis] != in_channels:
        # a grey image for a model of several channels: the "channel axis" is a spatial one
        raise ValueError(
            f"the model expects {in_channels} input channels along axis {given}, but "
            f"the image of shape {shape} has no channel axis there (it looks like a one-channel "
            f"image); give an image with {in_channels} channels, or use a one-channel model"
        )
    if len(others) < dims:
        raise ValueError(
            f"a {dims}D model needs {dims} spatial axes, but the image of shape {shape} has "
            f"{len(others)} besides channels; give an image with {dims} or more axes besides "
            "its channels (models are 2D or 3D), or check channel_axis"
        )
    _check_channels_last(shape, channel_axis, in_channels)
    channels = 1 if channel_axis is None else shape[channel_axis]
    if channels != in_channels:
        hint = (
            "set DataConfig.channel_axis to the image's channel axis"
            if channel_axis is None
            else "check DataConfig.channel_axis"
        )
        raise ValueError(
            f"the model expects {in_channels} input channel(s) but the image of shape {shape} "
            f"has {channels} along channel_axis={channel_axis}; {hint}"
        )
    lead, spatial = others[:-dims], others[-dims:]
    return Layout(
        ndim,
        channel_axis,
        channels,
        lead,
        tuple(shape[a] for a in lead),
        spatial,
        tuple(shape[a] for a in spatial),
    )


def _check_channels_last(
    shape: tuple[int, ...], channel_axis: int | None, in_channels: int
) -> None:
    """Refuse an image whose last axis of 1 or 2 can only be channels (a two-channel TIFF
    saved Y, X, C): taken as X, it was segmented as 256 planes of 256 x 2 pixels without a
    word. RGB(A) (3, 4) is handled by ``normalization.as_model_input``."""
    if channel_axis is not None or len(shape) < 3 or not (shape[-1] <= 2 < 4 < shape[-2]):
        return
    use = (
        f"give DataConfig.channel_axis=-1 (the model takes {in_channels})"
        if in_channels == shape[-1]
        else f"save each channel as its own image (the model takes {in_channels} channel(s))"
    )
    raise ValueError(
        f"the image of shape {shape} ends in an axis of {shape[-1]}, which would be segmented "
        f"as planes {shape[-2]} x {shape[-1]} pixels wide; if these are channels, {use}"
    )


class ItemView:
    """One item (slice / volume) of the input as a normalised ``(C, *spatial)`` array.

    Tiles arrive row by row, so the view reads one band (the rows of the current
    tile, full width) at a time, normalises it once, and serves that row's tiles
    from it: memory stays one band, and a dask input pays its per-compute
    overhead (10-30 ms) once per tile row instead of once per tile.

    With a ``device`` the normalised band is moved there once (one copy per band,
    not per tile) and tiles are served as torch views of it: the tiling then cuts,
    pads and stacks them on that device (the device-resident pipeline; on the CPU
    the same code runs on torch CPU tensors). With ``prefetch`` (``row_starts`` and
    the tile ``height`` given), the next band is read, normalised and moved in a
    background thread while the network works on this one (for a GPU, whose host
    cores are otherwise idle; on a CPU the network already uses every core).
    ``raw_to_device``: integer bands move raw and are normalised on the device (default:
    off the CPU; see :meth:`_load`).

    On the CPU with a :class:`TileNormaliser` the band is kept as stored (repaired) and
    each tile is normalised as it is cut: :meth:`read_into` writes it straight into its
    place in the batch (a normalised band and then a copy of each tile into the batch
    cost 1.8x as much, measured on a row of 256 px tiles).
    """

    _pool: ThreadPoolExecutor | None = None  # one reader thread, shared, made on first use

    def __init__(
        self,
        image: Any,
        layout: Layout,
        lead_index: tuple[int, ...],
        normalise: Callable[[np.ndarray], np.ndarray],
        device: torch.device | None = None,
        *,
        prefetch: bool = False,
        row_starts: Sequence[int] = (),
        height: int = 0,
        raw_to_device: bool | None = None,
    ) -> None:
        self.image = image
        self.layout = layout
        self.lead = dict(zip(layout.lead_axes, lead_index, strict=False))
        self.normalise = normalise
        self.device = device
        self.shape = (layout.channels, *layout.spatial_shape)
        self._band: tuple[int, int, Any] | None = None
        self._next = (
            {a: b for a, b in zip(row_starts, row_starts[1:], strict=False)} if prefetch else {}
        )
        self._height = height
        on_cpu = device is None or device.type == "cpu"
        self.raw_to_device = not on_cpu if raw_to_device is None else raw_to_device
        self._pending: dict[tuple[int, int], Future[Any]] = {}
        self._cut_then_normalise = (
            device is not None
            and device.type == "cpu"
            and not self.raw_to_device
            and isinstance(normalise, TileNormaliser)
        )

    def _raw(self, rows: slice) -> np.ndarray:
        """Rows of the first spatial axis, all channels and other axes, as stored."""
        first = self.layout.spatial_axes[0]
        full: list[int | slice] = []
        for axis in range(self.layout.ndim):
            full.append(self.lead.get(axis, rows if axis == first else slice(None)))
        data = np.asarray(self.image[tuple(full)])
        if self.layout.channel_axis is None:
            data = data[np.newaxis]
        else:  # the channel axis, among the axes left after integer indexing
            kept = [a for a in range(self.layout.ndim) if a not in self.lead]
            data = np.moveaxis(data, kept.index(self.layout.channel_axis), 0)
        return data

    def _load(self, start: int, stop: int) -> Any:
        """One band, normalised, on the device if there is one.

        With ``raw_to_device`` (the default off the CPU) an integer band travels raw and is
        normalised there (:class:`TileNormaliser`): a quarter (8 bits) or half (16 bits)
        of the bytes to copy to a GPU. On the CPU numpy's one-pass cast-and-subtract is faster.
        """
        raw = self._raw(slice(start, stop))
        if self._cut_then_normalise:
            return cast(TileNormaliser, self.normalise).prepare(raw)
        if self.device is None:
            return self.normalise(raw)
        if self.raw_to_device and isinstance(self.normalise, TileNormaliser):
            on_device = self.normalise.on_device(raw, self.device)
            if on_device is not None:
                return on_device
        band = self.normalise(raw)
        return torch.from_numpy(np.ascontiguousarray(band, np.float32)).to(self.device)

    def _prefetch(self, start: int) -> None:
        following = self._next.get(start)
        if following is None or not self._height:
            return
        key = (following, min(following + self._height, self.shape[1]))
        if key not in self._pending:
            if ItemView._pool is None:
                ItemView._pool = ThreadPoolExecutor(1, thread_name_prefix="unetpp-read")
            self._pending[key] = ItemView._pool.submit(self._load, *key)

    def _cut(self, index: tuple[slice, ...]) -> Any:
        """``index`` cut from the band that holds it (read first if it is not this one)."""
        rows = index[1]
        start, stop = rows.start or 0, min(rows.stop, self.shape[1])
        if self._band is None or not (self._band[0] <= start and stop <= self._band[1]):
            pending = self._pending.pop((start, stop), None)
            band = pending.result() if pending is not None else self._load(start, stop)
            self._band = (start, stop, band)
            self._prefetch(start)
        lo, _, band = self._band
        key = (slice(None), slice(start - lo, stop - lo), *index[2:])
        return band[key]

    def __getitem__(self, index: tuple[slice, ...]) -> Any:
        block = self._cut(index)
        if self._cut_then_normalise:
            return torch.from_numpy(cast(TileNormaliser, self.normalise).scale(block))
        return block

    @property
    def read_into(self) -> Callable[[tuple[slice, ...], np.ndarray], bool] | None:
        """On the CPU (see above): ``read_into(index, out)`` normalises the tile at ``index``
        straight into ``out``; ``None`` where tiles are read as ``view[index]`` only."""
        return self._normalise_into if self._cut_then_normalise else None

    def _normalise_into(self, index: tuple[slice, ...], out: np.ndarray) -> bool:
        """The tile at ``index`` normalised into ``out`` (a float32 array of its shape, e.g.
        its place in a batch); ``False`` for a tile cut short by the image's border (read
        it with ``view[index]`` and pad it)."""
        block = self._cut(index)
        if block.shape != out.shape or out.dtype != np.float32:
            return False
        cast(TileNormaliser, self.normalise).scale(block, out=out)
        return True


def stacked_item(stacked: np.ndarray, lead: tuple[int, ...], num_classes: int) -> np.ndarray | None:
    """One item of stacked outputs ``(heads, [classes,] *lead, *spatial)`` as a writable
    ``(heads * classes, *spatial)`` view (the tile runner's channel order), or ``None``
    where that view cannot be had without a copy."""
    heads: tuple[slice | int, ...] = (slice(None), *lead)
    if num_classes == 1:
        return stacked[heads]
    classes: tuple[slice | int, ...] = (slice(None), *heads)
    item = stacked[classes]
    merged = item.reshape(-1, *item.shape[2:])
    return merged if np.may_share_memory(merged, stacked) else None


class ItemSink:
    """Writes the ``(C_out, *region)`` blocks of one item into the full output array."""

    def __init__(self, target: Any, lead_index: tuple[int, ...], squeeze: bool) -> None:
        self.target = target
        self.lead = tuple(lead_index)
        self.squeeze = squeeze

    def __setitem__(self, index: tuple[slice, ...], value: np.ndarray) -> None:
        if self.squeeze:
            self.target[self.lead + tuple(index[1:])] = value[0]
        else:
            self.target[(slice(None),) + self.lead + tuple(index[1:])] = value


# --------------------------------------------------------------------------- outputs


def output_shape(
    image_shape: tuple[int, ...], channel_axis: int | None, num_classes: int
) -> tuple[int, ...]:
    """Shape of one depth's probabilities: the image without channels, classes first if > 1."""
    shape = spatial_shape(image_shape, channel_axis)
    return shape if num_classes == 1 else (num_classes, *shape)
