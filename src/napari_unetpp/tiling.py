"""Sliding-window (tiled) prediction: tile positions, blending weights, stitching.

Why tiles: a whole EM section or CT volume rarely fits in GPU memory, and a dask
or zarr stack must never be loaded whole. The image is cut into overlapping
tiles, each tile is predicted, and the predictions are blended with weights that
fall off towards the tile border (where a convolutional network sees zero
padding instead of the real neighbourhood), as nnU-Net and MONAI do.

Everything here is numpy (torch only when asked for); the network is hidden behind a
``predictor`` callable, so the same code stitches a UNet++, a test's ``x + 1`` or an
ensemble, and every output head is stitched in one pass over the image: the heads are
stacked into one array and each tile is blended once, in place, as a running weighted
mean in float32 (:mod:`stitching`: :class:`~stitching.StackedOutputs`, the band, its
numpy and torch backends).

Memory: tiles are read from the input one batch at a time, and the blended
result is accumulated in a rolling band one tile high along the first spatial
axis; finished rows are written to the output (a numpy array, a zarr array or
any object that accepts slice assignment) as soon as no later tile touches them.
Peak memory therefore grows with the tile batch and one band, not with the image.
The band can live on a GPU (``accumulate_on``, MONAI's separate accumulation
device), so a GPU predictor's outputs are blended where they were computed; an image
that serves torch tensors (inference's bands, normalised once and moved to the device
once) gets its tiles cut, padded and stacked on that device too.

Example
-------
>>> import numpy as np
>>> image = np.random.rand(1, 50, 70).astype("float32")
>>> out = sliding_window(lambda x: {"y": x + 1}, image, (32, 32), overlap=0.25)
>>> bool(np.allclose(out["y"], image + 1))
True
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Generator, Hashable, Sequence
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np

from .events import drive
from .stitching import Band, Outputs, RatioCache, backend_for

__all__ = [
    "Sink",
    "TileProgress",
    "blending_weights",
    "iter_sliding_window",
    "owned_boxes",
    "pad_to",
    "round_up",
    "sliding_window",
    "tile_grid",
    "tile_starts",
]

BlendMode = Literal["gaussian", "constant"]
#: Floor of the Gaussian's 1D factors (peak 1): tile borders keep a positive weight, so
#: pixels seen only by tile borders (image corners) never divide by 0. Applied per axis,
#: not to the product, so the weights stay separable: near an image border all tiles
#: share that axis' factor and their ratios are those of the other axes. With sigma =
#: tile / 8 the border factor is exp(-8) = 3.4e-4, so the floor is only a safeguard.
MIN_WEIGHT = 1e-4
#: Gaussian sigma as a fraction of the tile size (nnU-Net's and MONAI's default).
SIGMA_SCALE = 1.0 / 8.0

Predictor = Callable[[np.ndarray], Any]
"""Maps a float32 batch ``(N, C, *tile)`` to ``{key: (N, C_out, *tile)}`` (or one array)."""


class Sink(Protocol):
    """Where finished rows of one output go: anything supporting ``sink[index] = block``."""

    def __setitem__(self, index: tuple[slice, ...], value: np.ndarray) -> None: ...


class TileProgress(NamedTuple):
    """Progress of a sliding window: tiles predicted so far, out of ``total``."""

    done: int
    total: int


# --------------------------------------------------------------------------- pure helpers


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-int(value) // int(multiple)) * int(multiple)


def _check_tiling_args(size: int, tile: int, overlap: float, align: int) -> None:
    if size < 1:
        raise ValueError(f"cannot tile an axis of size {size}; the image must not be empty")
    if tile < 1:
        raise ValueError(f"tile size must be >= 1, got {tile}; use e.g. 256 (2D) or 96 (3D)")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}; 0.25 or 0.5 are typical")
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")


def tile_starts(size: int, tile: int, overlap: float, align: int = 1) -> list[int]:
    """Start positions of tiles covering ``[0, size)`` along one axis.

    The tiles are spread evenly (as nnU-Net's ``compute_steps_for_sliding_window``),
    neighbours overlap by at least ``overlap * tile``, the first tile starts at 0
    and the last ends flush with the border, so no tile hangs over the image and
    every pixel is seen by as few tiles as the overlap allows. When ``tile >= size``
    there is one tile at 0 and the caller pads (see :func:`pad_to`).

    ``align`` rounds the starts to multiples of ``align``: for a network that pools
    ``k`` times, ``align = 2**k`` puts every tile on the image's pooling grid, so
    overlapping tiles agree and tiled output equals whole-image output away from
    tile borders. The last tile stays flush; it is aligned too when ``size - tile``
    is a multiple of ``align`` (pad the image up to one, as :func:`sliding_window` does).
    """
    _check_tiling_args(size, tile, overlap, align)
    if size <= tile:
        return [0]
    if align > tile:
        align = 1  # aligned starts could not cover the axis
    span = size - tile
    step = max(tile * (1.0 - overlap), 1.0)
    # the largest gap allowed between starts: the step, on the alignment grid
    limit = math.ceil(step) if align == 1 else align * max(1, math.floor(step / align + 1e-9))
    top = span - span % align  # the last aligned position that keeps a tile inside
    count = math.ceil(span / step) + 1
    while True:
        ideal = (k * span / (count - 1) for k in range(count))
        starts = sorted({min(align * round(x / align), top) for x in ideal})
        if starts[-1] != span:
            starts.append(span)
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        if max(gaps) <= limit or count > span:
            return starts
        count += 1


def tile_grid(
    shape: Sequence[int], tile: Sequence[int], overlap: float, align: int = 1
) -> list[tuple[int, ...]]:
    """All tile start corners for a spatial ``shape``, first axis slowest (C order).

    The order matters: :func:`iter_sliding_window` finishes rows of the first
    axis in turn and writes them out. With ``align > 1`` each axis is treated as
    padded at its end up to a multiple of ``align`` (and at least one tile), so
    every start, the last included, lies on the alignment grid.
    """
    if len(shape) != len(tile):
        raise ValueError(
            f"tile size {tuple(tile)} has {len(tile)} axes but the image has "
            f"{len(shape)} spatial axes {tuple(shape)}; give one tile size per spatial axis"
        )
    extent = [max(int(t), round_up(int(s), align)) for s, t in zip(shape, tile, strict=False)]
    per_axis = [tile_starts(e, int(t), overlap, align) for e, t in zip(extent, tile, strict=False)]
    grid: list[tuple[int, ...]] = [()]
    for starts in per_axis:
        grid = [g + (s,) for g in grid for s in starts]
    return grid


def owned_boxes(
    grid: Sequence[tuple[int, ...]],
    tile: Sequence[int],
    shape: Sequence[int],
    margin: int = 0,
    align: int = 1,
) -> list[tuple[tuple[int, int], ...]]:
    """Per tile of ``grid``: the box (``(start, stop)`` per axis, tile coordinates) where its
    Gaussian blending weight is the largest, grown by ``margin`` and rounded out to ``align``.

    Why: outside that box a neighbouring tile outweighs this one (by the Gaussian's ratio,
    ``exp(-8)`` at the far border), so a predictor may compute there less carefully (adaptive
    depth runs its deeper nodes on the box only). The grid is a product of per-axis starts,
    so the tile of largest weight is the nearest centre on every axis; ties own both sides.
    """
    tile = tuple(int(t) for t in tile)
    per_axis: list[dict[int, tuple[int, int]]] = []
    for axis, (t, n) in enumerate(zip(tile, shape, strict=True)):
        starts = sorted({g[axis] for g in grid})
        x = np.arange(max(int(n), 1))
        centre = {s: s + (t - 1) / 2 for s in starts}
        nearest = np.full(x.shape, np.inf)
        for s in starts:
            covered = (x >= s) & (x < s + t)
            nearest = np.where(covered, np.minimum(nearest, np.abs(x - centre[s])), nearest)
        boxes = {}
        for s in starts:
            own = np.nonzero((x >= s) & (x < s + t) & (np.abs(x - centre[s]) <= nearest))[0]
            low, high = (int(own[0]) - s, int(own[-1]) + 1 - s) if own.size else (0, t)
            low, high = max(low - margin, 0) // align * align, min(high + margin, t)
            boxes[s] = (low, min(round_up(high, align), t))
        per_axis.append(boxes)
    return [tuple(per_axis[a][g[a]] for a in range(len(tile))) for g in grid]


@functools.lru_cache(maxsize=32)
def _cached_weights(tile_shape: tuple[int, ...], mode: str) -> np.ndarray:
    if mode == "constant":
        weights = np.ones(tile_shape, dtype=np.float32)
    else:
        weights = np.ones((), dtype=np.float64)
        for size in tile_shape:
            centre = (size - 1) / 2.0
            sigma = max(size * SIGMA_SCALE, 1e-3)
            axis = np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2)
            weights = np.multiply.outer(weights, np.maximum(axis / axis.max(), MIN_WEIGHT))
        weights = weights.astype(np.float32)
    weights.setflags(write=False)  # shared by every caller through the cache
    return weights


def blending_weights(tile_shape: Sequence[int], mode: BlendMode = "gaussian") -> np.ndarray:
    """Per-pixel weight of a tile's prediction when overlapping tiles are averaged.

    ``gaussian``: a separable Gaussian with sigma = tile / 8 on each axis, peak 1,
    each axis' factor clipped below at :data:`MIN_WEIGHT`: tile borders, where the network saw
    padding rather than the real neighbourhood, count least, which removes seams.
    ``constant``: plain averaging. The array is cached and read-only.
    """
    if mode not in ("gaussian", "constant"):
        raise ValueError(f"blending mode must be 'gaussian' or 'constant', got {mode!r}")
    shape = tuple(int(s) for s in tile_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"tile shape must be positive sizes, got {tuple(tile_shape)}")
    return _cached_weights(shape, mode)


def pad_to(
    array: np.ndarray, shape: Sequence[int], mode: str = "reflect"
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad the trailing axes of ``array`` at their end up to ``shape``.

    Returns the padded array and the index that crops a same-shaped result back.
    Padding at the end (not centred) keeps tile starts on the image's own grid.
    ``reflect`` mirrors the image (what the network sees inside the image is
    continued), so predictions near the border stay plausible.
    """
    lead = array.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"cannot pad an array of shape {array.shape} to {tuple(shape)}")
    extra = [max(int(t) - s, 0) for s, t in zip(array.shape[lead:], shape, strict=False)]
    crop = tuple(slice(None) for _ in range(lead)) + tuple(slice(0, s) for s in array.shape[lead:])
    if not any(extra):
        return array, crop
    widths = [(0, 0)] * lead + [(0, e) for e in extra]
    if mode == "reflect" and any(
        s == 1 and e for s, e in zip(array.shape[lead:], extra, strict=False)
    ):
        mode = "edge"  # numpy cannot reflect a single pixel
    return np.pad(array, widths, mode=mode), crop  # type: ignore[call-overload]


def _pad_tensor(block: Any, tile: tuple[int, ...]) -> Any:
    """:func:`pad_to` for a torch tile, on its device: the same reflect (or edge) indices."""
    import torch

    sizes = tuple(block.shape[1:])
    mode = "edge" if any(n == 1 and n < t for n, t in zip(sizes, tile, strict=False)) else "reflect"
    for axis, (n, t) in enumerate(zip(sizes, tile, strict=False), start=1):
        if n < t:
            index = np.pad(np.arange(n), (0, t - n), mode=mode)  # type: ignore[call-overload]
            block = block.index_select(axis, torch.as_tensor(index, device=block.device))
    return block


def _read_tile(image: Any, index: tuple[slice, ...], tile: tuple[int, ...]) -> Any:
    """The tile ``image[index]`` ``(C, *tile)`` as float32, read lazily and reflect-padded
    past the border.

    An image that serves torch tensors (inference's device-resident bands) gets torch
    tiles cut and padded on that device; anything else gives numpy.
    """
    block = image[index]
    if hasattr(block, "detach"):
        block = block.float()  # the band is float32 already: no copy
        return block if tuple(block.shape[1:]) == tile else _pad_tensor(block, tile)
    return pad_to(np.asarray(block, dtype=np.float32), tile)[0]


class _Placed(NamedTuple):
    """One tile of the grid with its slices, worked out once per sliding window.

    Why: every item of a stack, and every batch, would otherwise rebuild the same slices
    tile by tile in Python, which cost as much as blending a small tile.
    """

    start: tuple[int, ...]
    read: tuple[slice, ...]  # (all channels, *tile) in the image
    valid: tuple[slice, ...] | None  # the part inside the image, in the tile; None: all of it
    region: tuple[slice, ...] | None  # that part in the image; None: all in the padding
    weights: Any  # the blending weights of that part
    share: Hashable = None  # equal for tiles whose blend shares are equal (see _share_keys)


@functools.lru_cache(maxsize=8)
def _place(
    spatial: tuple[int, ...],
    tile: tuple[int, ...],
    overlap: float,
    align: int,
    blending: BlendMode,
    accumulate_on: Any,
) -> tuple[list[tuple[int, ...]], list[_Placed]]:
    """The grid and its placed tiles, kept for the next item (a stack's slices share them)."""
    grid = tile_grid(spatial, tile, overlap, align)
    weights = backend_for(accumulate_on).put(blending_weights(tile, blending))
    shares = _share_keys(grid, tile, spatial)
    placed = []
    for start in grid:
        read = (slice(None), *(slice(s, s + t) for s, t in zip(start, tile, strict=False)))
        size = tuple(max(min(t, n - s), 0) for s, t, n in zip(start, tile, spatial, strict=False))
        region = (slice(None), *(slice(s, s + v) for s, v in zip(start, size, strict=False)))
        if size == tile:  # inside the image: no slicing
            placed.append(_Placed(start, read, None, region, weights, shares[start]))
        elif min(size) == 0:  # a tile entirely in the alignment padding
            placed.append(_Placed(start, read, None, None, None))
        else:
            valid = tuple(slice(0, v) for v in size)
            placed.append(
                _Placed(start, read, (slice(None), *valid), region, weights[valid], shares[start])
            )
    return grid, placed


def _share_keys(
    grid: list[tuple[int, ...]], tile: tuple[int, ...], spatial: tuple[int, ...]
) -> dict[tuple[int, ...], Hashable]:
    """For each tile, on each axis: where the starts within a tile of its own lie, relative
    to it, and how much of their tile lies inside the image (on the first axis only the
    starts up to its own: later rows of tiles are blended after it).

    Why: the grid is a product of its axes' starts, so these lists fix which earlier tiles
    overlap a tile, where and how large, and in which order they were blended; its blend
    share ``w / W`` is made of exactly those (the same additions in the same order, then a
    division). Tiles with equal keys have shares equal bit for bit: in an evenly spaced
    grid most tiles do, and :class:`~stitching.RatioCache` keeps one copy for them (the
    blend then reads a few shares that stay in the cache). Tiles entirely in the alignment
    padding are never blended and are left out.
    """
    axes: list[dict[int, tuple[tuple[int, int], ...]]] = []
    for a, (t, n) in enumerate(zip(tile, spatial, strict=False)):
        starts = sorted({start[a] for start in grid})
        inside = {v: max(min(t, n - v), 0) for v in starts}
        near = {  # per start: the neighbours within a tile, as (offset, size inside)
            s: tuple(
                (v - s, inside[v])
                for v in starts[
                    bisect.bisect_right(starts, s - t) : bisect.bisect_left(starts, s + t)
                ]
                if inside[v] and (a > 0 or v <= s)
            )
            for s in starts
        }
        axes.append(near)
    return {start: tuple(near[s] for near, s in zip(axes, start, strict=False)) for start in grid}


class _BatchBuffer:
    """Stacks each batch of tiles into one buffer kept for the whole sliding window.

    Why: a fresh batch (a megabyte and more) per predictor call is mapped and faulted in
    page by page on every call; written into kept memory, stacking is a plain copy. Safe
    because each batch is predicted and blended before the next one is cut.
    ``dtype``: torch tiles are stacked in this dtype (the network's input, bfloat16 on a
    CPU that has it): the cast happens in the stacking copy, one pass instead of two, and
    gives the same values as casting the stacked float32 batch.
    """

    def __init__(self, dtype: Any = None) -> None:
        self._buffer: Any = None
        self._dtype = dtype
        self._scratch: np.ndarray | None = None  # one float32 tile, for a batch in another dtype

    def read(self, image: Any, tiles: list[_Placed], tile: tuple[int, ...]) -> Any:
        """The batch of ``tiles``: written in place by an image that can (``read_into``, an
        :class:`~layout.ItemView` on the CPU normalises each tile into its slot), else
        read tile by tile and stacked."""
        into = getattr(image, "read_into", None)
        if into is None:
            return self.stack([_read_tile(image, t.read, tile) for t in tiles])
        import torch

        n, shape = len(tiles), (len(tiles), int(image.shape[0]), *tile)
        dtype = self._dtype or torch.float32
        buffer = self._buffer
        if (
            not isinstance(buffer, torch.Tensor)
            or buffer.shape[1:] != shape[1:]
            or buffer.shape[0] < n
            or buffer.device.type != "cpu"
            or buffer.dtype != dtype
        ):
            buffer = self._buffer = torch.empty(shape, dtype=dtype)
        if dtype == torch.float32:
            slots = buffer.numpy()  # numpy views of the slots: cheaper to cut than tensors
        else:  # normalised in float32, then cast in the copy into the batch
            if self._scratch is None or self._scratch.shape != shape[1:]:
                self._scratch = np.empty(shape[1:], np.float32)
            slots = None
        for k, t in enumerate(tiles):
            if slots is not None:
                if into(t.read, slots[k]):
                    continue
            elif into(t.read, self._scratch):
                buffer[k].copy_(torch.from_numpy(self._scratch))
                continue
            buffer[k].copy_(_read_tile(image, t.read, tile))  # cut short by the border: padded
        return buffer[:n]

    def stack(self, tiles: list[Any]) -> Any:
        first, n = tiles[0], len(tiles)
        shape = (n, *first.shape)
        buffer = self._buffer
        if hasattr(first, "detach"):
            import torch

            dtype = self._dtype or first.dtype
            if (
                buffer is None
                or buffer.shape[1:] != shape[1:]
                or len(buffer) < n
                or (buffer.device != first.device or buffer.dtype != dtype)
            ):
                buffer = self._buffer = torch.empty(shape, dtype=dtype, device=first.device)
            return torch.stack(tiles, out=buffer[:n])
        if buffer is None or buffer.shape[1:] != shape[1:] or len(buffer) < n:
            buffer = self._buffer = np.empty(shape, dtype=first.dtype)
        return np.stack(tiles, out=buffer[:n])


def iter_sliding_window(
    predictor: Predictor,
    image: Any,
    tile_size: Sequence[int],
    overlap: float = 0.25,
    batch_size: int = 4,
    blending: BlendMode = "gaussian",
    *,
    align: int = 1,
    allocate: Callable[[Hashable, tuple[int, ...]], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    accumulate_on: Any = None,
    into: Any = None,
    ratios: RatioCache | None = None,
    tile_dtype: Any = None,
) -> Generator[TileProgress, None, dict[Hashable, Any]]:
    """Generator form of :func:`sliding_window`: yields progress, returns the outputs.

    After each batch it yields a :class:`TileProgress`; when resumed it asks
    ``should_stop()`` and, if true, writes what has been blended so far (rows no
    tile reached stay 0) and returns early. ``allocate(key, shape)`` creates the
    output for one key when its channel count is first known (default: a numpy
    float32 array); it may return a zarr array or a view that writes elsewhere.
    ``accumulate_on``: ``None`` blends in host memory (numpy); a torch device
    blends there, so a GPU predictor's outputs never leave the GPU tile by tile.
    ``into``: a zeroed, writable host array ``(sum C_out, *spatial)``, the predictor's
    outputs in their order: blended there in place, with no band to write out (then
    ``allocate``'s arrays are not written).
    ``ratios``: a :class:`stitching.RatioCache` shared by the items of one stack: the
    blend shares of the first item's tiles are replayed on the next ones.
    ``tile_dtype``: the torch dtype the predictor casts its input to (its network's): torch
    tiles are stacked straight into it (numpy tiles stay float32).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(image.shape) < 2:
        raise ValueError(f"image must be (C, *spatial), got shape {tuple(image.shape)}")
    spatial = tuple(int(s) for s in image.shape[1:])
    tile = tuple(int(t) for t in tile_size)
    if len(tile) != len(spatial):
        raise ValueError(
            f"tile size {tile} has {len(tile)} axes but the image has spatial shape {spatial}; "
            f"give one size per spatial axis, e.g. {tuple(min(s, 256) for s in spatial)}"
        )
    grid, placed = _place(spatial, tile, float(overlap), int(align), blending, accumulate_on)
    backend = backend_for(accumulate_on)
    if ratios is not None:
        ratios.bind((spatial, tile, tuple(grid), blending, str(accumulate_on), into is None))
    replay = ratios is not None and ratios.complete  # every share known: no weights to add
    outputs = Outputs(spatial, allocate or (lambda key, shape: np.zeros(shape, np.float32)))
    band: Band | None = None
    batches = _BatchBuffer(tile_dtype)
    done = 0
    for first in range(0, len(grid), batch_size):
        tiles = placed[first : first + batch_size]
        batch = batches.read(image, tiles, tile)
        stacked = outputs.stack(predictor(batch), backend, len(tiles), tile)
        if band is None:
            target = None if into is None else backend.share(into)
            band = Band(spatial, tile, outputs.channels, backend, into=target, weighted=not replay)
        blocks = list(stacked)  # one call (torch: unbind) instead of one index per tile
        for t, whole in zip(tiles, blocks, strict=True):
            band.advance(t.start[0], outputs.sinks, outputs.slices)
            if t.region is None:
                continue
            block = whole if t.valid is None else whole[t.valid]
            if ratios is None:
                band.add(t.region, block, t.weights)
                continue
            share = ratios.get(t.start)
            used = band.add(t.region, block, t.weights, share)
            if share is None:
                ratios.record(t.start, used, t.share)
        done += len(tiles)
        yield TileProgress(done, len(grid))
        if should_stop is not None and should_stop() and done < len(grid):
            band.flush(band.height, outputs.sinks, outputs.slices)
            return outputs.sinks
    if band is not None:
        band.advance(spatial[0], outputs.sinks, outputs.slices)
    if ratios is not None:
        ratios.finish()
    return outputs.sinks


def sliding_window(
    predictor: Predictor,
    image: Any,
    tile_size: Sequence[int],
    overlap: float = 0.25,
    batch_size: int = 4,
    blending: BlendMode = "gaussian",
    on_batch: Callable[[int, int], Any] | None = None,
    *,
    align: int = 1,
    allocate: Callable[[Hashable, tuple[int, ...]], Any] | None = None,
    accumulate_on: Any = None,
) -> dict[Hashable, Any]:
    """Predict ``image`` ``(C, *spatial)`` tile by tile and blend all outputs in one pass.

    Parameters
    ----------
    predictor
        Maps a float32 batch ``(N, C, *tile)`` to ``{key: (N, C_out, *tile)}``
        (numpy or torch, any device); every key is stitched.
    image
        numpy, dask or zarr array ``(C, *spatial)``; only one batch of tiles is
        read at a time, so lazy inputs stay lazy. Axes smaller than the tile are
        reflect-padded (the output keeps the image's shape).
    tile_size, overlap, batch_size, blending
        Tile shape (one size per spatial axis), fraction of a tile shared with
        its neighbour, tiles per predictor call, ``"gaussian"`` or ``"constant"``.
    on_batch
        Called as ``on_batch(done, total)`` after each batch (progress bars).
    align
        Round tile starts to multiples of ``align`` (``2**depth`` for a UNet++).
    allocate
        ``allocate(key, shape) -> writable array`` for each output (default numpy).
    accumulate_on
        ``None`` (blend in host memory) or a torch device to blend on (a GPU:
        tile outputs stay there; one band of sums must fit its memory).

    Returns
    -------
    dict
        ``{key: float32 array (C_out, *spatial)}``.
    """
    gen = iter_sliding_window(
        predictor,
        image,
        tile_size,
        overlap,
        batch_size,
        blending,
        align=align,
        allocate=allocate,
        accumulate_on=accumulate_on,
    )
    report = None if on_batch is None else (lambda p: on_batch(p.done, p.total))
    return drive(gen, report)  # closes the generator if on_batch raises
