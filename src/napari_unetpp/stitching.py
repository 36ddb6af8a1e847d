"""Stitching tile outputs: stacked heads, the running weighted mean, its backends.

Why apart from :mod:`tiling`: :mod:`tiling` decides *where* tiles go and drives the
predictor; this module decides how their outputs are *added up*. The accumulation is the
memory- and precision-critical part (a rolling band of running means, allocated once, on
the host or on a GPU), and keeping it apart keeps the sliding-window generator readable.
Everything is numpy; torch is imported only when a torch device is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np

__all__ = ["Band", "Outputs", "RatioCache", "StackedOutputs", "backend_for"]


class StackedOutputs(Mapping):  # type: ignore[type-arg]
    """Several outputs kept as channel ranges of one ``(N, sum C, *tile)`` array.

    Why: a predictor with many heads (a UNet++ returns one per depth) would
    otherwise be blended head by head, tile by tile; stacked, every tile is
    blended once for all heads, so the per-tile Python work does not grow with
    heads. Reads like a ``{key: (N, C_key, *tile)}`` mapping of views.
    """

    def __init__(self, data: Any, channels: Mapping[Hashable, int]) -> None:
        self.data = data
        self.channels = dict(channels)
        self.slices: dict[Hashable, slice] = {}
        offset = 0
        for key, count in self.channels.items():
            self.slices[key] = slice(offset, offset + int(count))
            offset += int(count)
        if offset != data.shape[1]:
            raise ValueError(f"channels {self.channels} do not add up to {data.shape[1]}")

    def __getitem__(self, key: Hashable) -> Any:
        return self.data[:, self.slices[key]]

    def __iter__(self) -> Any:
        return iter(self.channels)

    def __len__(self) -> int:
        return len(self.channels)


def _as_numpy(value: Any) -> np.ndarray:
    """A predictor output (numpy, torch on any device, ...) as a float32 numpy array."""
    if hasattr(value, "detach"):  # torch, without importing it here
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _shared_host_array(array: Any) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or not array.flags.writeable:
        raise ValueError("the array to blend into must be a writable float32 numpy array")
    return array


class _NumpyBackend:
    """Blending in host memory with numpy (for numpy predictors and as the fallback)."""

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return np.zeros(shape, dtype=np.float32)

    def put(self, value: Any) -> Any:
        return _as_numpy(value)

    def scratch(self, shape: tuple[int, ...]) -> Any:
        """The blend's intermediate ``value - mean`` (numpy has no fused update)."""
        return self.zeros(shape)

    def share(self, array: np.ndarray) -> Any:
        """A host float32 array to blend into in place (refused where it would be a copy)."""
        return _shared_host_array(array)

    def cat(self, values: list[Any]) -> Any:
        return values[0] if len(values) == 1 else np.concatenate(values, axis=1)

    def blend(self, mean: Any, value: Any, ratio: Any, delta: Any) -> None:
        np.subtract(value, mean, out=delta)
        delta *= ratio
        mean += delta

    def divide(self, a: Any, b: Any, out: Any) -> Any:
        return np.divide(a, b, out=out)

    def view(self, array: Any, host: np.ndarray | None, index: tuple[slice, ...]) -> Any:
        """``array[index]`` (``host``: the same memory as numpy, or None)."""
        return array[index]

    def host(self, array: Any) -> np.ndarray:
        return array


class _TorchBackend:
    """Blending with torch on any device (a GPU: tiles never leave it; the CPU: both cores).

    The update is one fused ``lerp_`` (one pass over the tile instead of three);
    it may round differently from the numpy backend's three steps in the last bit,
    and, like them, it leaves the mean unchanged when a tile repeats it exactly.
    """

    def __init__(self, device: Any) -> None:
        import torch  # only when asked for: this module stays importable without torch

        self.torch = torch
        self.device = torch.device(device)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return self.torch.zeros(shape, dtype=self.torch.float32, device=self.device)

    def put(self, value: Any) -> Any:
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            value = value.copy()  # the cached weights: torch wants writable memory
        tensor = self.torch.as_tensor(value)
        return tensor.to(self.device, self.torch.float32, non_blocking=True)

    def cat(self, values: list[Any]) -> Any:
        return values[0] if len(values) == 1 else self.torch.cat(values, dim=1)

    def scratch(self, shape: tuple[int, ...]) -> Any:
        return None  # lerp_ needs none

    def share(self, array: np.ndarray) -> Any:
        if self.device.type != "cpu":
            raise ValueError("blending into a host array needs a host (CPU) backend")
        return self.torch.from_numpy(_shared_host_array(array))

    def blend(self, mean: Any, value: Any, ratio: Any, delta: Any) -> None:
        mean.lerp_(value, ratio)  # mean + ratio * (value - mean), fused; delta unused

    def divide(self, a: Any, b: Any, out: Any) -> Any:
        return self.torch.div(a, b, out=out)

    def view(self, array: Any, host: np.ndarray | None, index: tuple[slice, ...]) -> Any:
        """``array[index]``; cut from ``host`` (``array``'s memory as numpy) where given:
        numpy slices a view in under a microsecond, torch's indexing took ~10 us a tile."""
        return array[index] if host is None else self.torch.from_numpy(host[index])

    def host(self, array: Any) -> np.ndarray:
        return array.cpu().numpy()


class Band:
    """Running weighted means for the rows ``[lo, lo + height)`` of the first spatial axis.

    All outputs live in one array, channel ranges per key (see :class:`StackedOutputs`).
    Each tile updates the mean in place, ``mean += w / W * (value - mean)`` with ``W``
    the weight seen so far: the result is the weighted average of the tiles, in float32,
    and the blend of identical predictions is exactly that prediction (the first tile
    sets it, later ones add exact zeros). Rows before the start of the tile being added
    can no longer change (tiles arrive in order of their first coordinate), so they are
    written out and the band moves on. Every buffer is allocated once: the band moves
    by copying into a second band and swapping, and each tile's intermediate values go
    to scratch arrays (fresh allocations of this size cost page faults every time).

    ``into``: the whole item's zeroed output ``(channels, *spatial)`` (in-memory results
    on the host): the means are kept there directly, so there is nothing to write out
    or shift, only the band of weights; that saves a copy of every output and the
    band's copies, most of the host's memory traffic.

    ``weighted=False``: every tile comes with its recorded share (:class:`RatioCache`
    replaying), so there is no band of weights to allocate, fill or shift.
    """

    def __init__(
        self,
        spatial: tuple[int, ...],
        tile: tuple[int, ...],
        channels: int,
        backend: _NumpyBackend | _TorchBackend,
        into: Any = None,
        weighted: bool = True,
    ) -> None:
        self.spatial = spatial
        self.height = min(tile[0], spatial[0])
        self.lo = 0
        self.backend = backend
        self.direct = into is not None
        band = (self.height, *spatial[1:])
        self.weight: Any = None
        self._spare_weight: Any = None
        if weighted:
            self.weight, self._spare_weight = backend.zeros((1, *band)), backend.zeros((1, *band))
        self._host: np.ndarray | None = None
        if self.direct:
            self.mean, self._spare_mean = into, None
            self._host = backend.host(into)  # the same memory, as numpy (cut faster)
        else:
            self.mean, self._spare_mean = (
                backend.zeros((channels, *band)),
                backend.zeros((channels, *band)),
            )
        self._tile = tuple(tile)
        self._delta = backend.scratch((channels, *tile))
        self._ratio: Any = backend.zeros((1, *tile)) if weighted else None

    def add(self, region: tuple[slice, ...], block: Any, w: Any, ratio: Any = None) -> Any:
        """Blend ``block`` ``(C, *valid_tile)`` with weights ``w`` in at ``region``
        ``(all channels, *valid_tile's place in the image)``.

        Returns the tile's share ``w / W`` (a scratch view, overwritten by the next
        tile); pass a recorded ``ratio`` to skip the weights (see :class:`RatioCache`).
        """
        if ratio is None:
            if self.weight is None:
                raise ValueError("this band keeps no weights: pass each tile's recorded share")
            total = self.weight[self._in_band(region)]
            total += w  # a view: updates the band in place
            shape = tuple(w.shape)  # the tile's valid part (weights have no channel axis)
            scratch = (slice(None), *(slice(0, n) for n in shape))
            ratio = self.backend.divide(
                w, total, self._ratio if shape == self._tile else self._ratio[scratch]
            )
        if self.direct:
            target = self.backend.view(self.mean, self._host, region)
        else:
            target = self.mean[self._in_band(region)]
        if self._delta is None:  # torch: one fused update, no scratch (the hot path)
            self.backend.blend(target, block, ratio, None)
            return ratio
        shape = tuple(block.shape)
        scratch = (slice(None), *(slice(0, n) for n in shape[1:]))
        delta = self._delta if shape[1:] == self._tile else self._delta[scratch]
        self.backend.blend(target, block, ratio, delta)
        return ratio

    def _in_band(self, region: tuple[slice, ...]) -> tuple[slice, ...]:
        """``region`` (image rows) in the band's rows."""
        if not self.lo:
            return region
        rows = region[1]
        return (slice(None), slice(rows.start - self.lo, rows.stop - self.lo), *region[2:])

    def advance(
        self, to: int, sinks: Mapping[Hashable, Any], slices: Mapping[Hashable, slice]
    ) -> None:
        """Write rows ``[lo, to)`` out and shift the band so that it starts at ``to``."""
        rows = min(to, self.spatial[0]) - self.lo
        if rows <= 0:
            return
        shift = min(rows, self.height)
        self.flush(shift, sinks, slices)
        if self.weight is not None:
            self.weight, self._spare_weight = self._shifted(self.weight, self._spare_weight, shift)
        if not self.direct:
            self.mean, self._spare_mean = self._shifted(self.mean, self._spare_mean, shift)
        self.lo += rows

    def _shifted(self, old: Any, new: Any, shift: int) -> tuple[Any, Any]:
        """``old`` moved up by ``shift`` rows into ``new`` (zeros below); returns both, swapped."""
        new[:, : self.height - shift] = old[:, shift:]
        new[:, self.height - shift :] = 0
        return new, old

    def flush(
        self, rows: int, sinks: Mapping[Hashable, Any], slices: Mapping[Hashable, slice]
    ) -> None:
        """Write the first ``rows`` rows of the band (0 where no tile reached): one copy out."""
        rows = min(rows, self.spatial[0] - self.lo)
        if rows <= 0 or self.direct:  # direct: already where it belongs
            return
        target = (slice(None), slice(self.lo, self.lo + rows))
        done = self.backend.host(self.mean[:, :rows])
        for key, channels in slices.items():
            sinks[key][target] = done[channels]


class RatioCache:
    """Each tile's share ``w / W`` of the blend, recorded on one item, replayed on the next.

    Why: the share depends only on where the tiles lie and in which order they come,
    which is the same for every slice of a stack; replayed, a tile costs one fused
    update instead of three passes (and on a GPU, one kernel launch instead of three).
    The same operations make the same bits. Recording stops (and nothing is replayed)
    past ``max_values`` floats, so a huge plane does not keep a copy of its weights.

    Tiles whose shares are equal bit for bit (``like``: the same key, see
    ``tiling._share_keys``; in an evenly spaced grid every tile away from the image's
    edges sees the same neighbours) share one stored copy: the blend then reads a few
    shares that stay in the cache instead of one per tile (one head, 1024 x 1024, tile
    256: 6 copies for 25 tiles; the blend of 25 tiles was 19 % faster in isolation).
    """

    def __init__(self, max_values: int = 16 * 2**20) -> None:
        self.max_values = max_values
        self._key: Hashable = None
        self._ratios: dict[tuple[int, ...], Any] = {}
        self._alike: dict[Hashable, Any] = {}
        self._values = 0
        self.complete = False
        self.replayed = 0  # tiles that used a recorded share (for tests and benchmarks)

    def bind(self, key: Hashable) -> None:
        """Start over unless this item's tiling (``key``) is the one recorded."""
        if key != self._key:
            self._key, self._ratios, self._values, self.complete = key, {}, 0, False
            self._alike = {}
            self.replayed = 0

    def get(self, start: tuple[int, ...]) -> Any:
        ratio = self._ratios.get(start) if self.complete else None
        self.replayed += ratio is not None
        return ratio

    def record(self, start: tuple[int, ...], ratio: Any, like: Hashable = None) -> None:
        """Keep ``ratio`` (a copy) as the share of the tile at ``start``; tiles recorded with
        the same ``like`` key (not ``None``) share the first one's copy."""
        if self.complete or self._values > self.max_values:
            return
        kept = None if like is None else self._alike.get(like)
        if kept is None:
            kept = ratio.clone() if hasattr(ratio, "clone") else ratio.copy()
            self._values += int(ratio.numel() if hasattr(ratio, "numel") else ratio.size)
            if like is not None:
                self._alike[like] = kept
        self._ratios[start] = kept

    def finish(self) -> None:
        """The item ran to its end: replay from now on (if everything was recorded)."""
        self.complete = self._values <= self.max_values and bool(self._ratios)


class Outputs:
    """The keys of a predictor's outputs, their channel ranges, and where they are written."""

    def __init__(self, spatial: tuple[int, ...], allocate: Callable[..., Any]) -> None:
        self.spatial = spatial
        self.allocate = allocate
        self.slices: dict[Hashable, slice] = {}
        self.sinks: dict[Hashable, Any] = {}
        self._channels: dict[Hashable, int] = {}  # as registered: unchanged, nothing to check

    def stack(self, outputs: Any, backend: Any, n: int, tile: tuple[int, ...]) -> Any:
        """All outputs of one batch as one ``(N, sum C, *tile)`` array on the backend."""
        if isinstance(outputs, StackedOutputs):  # one check for all keys: they share N, tile
            _check_output(tuple(outputs.slices), outputs.data, n, tile)
            if outputs.channels != self._channels:
                self._register(outputs.channels)
            return backend.put(outputs.data)
        if isinstance(outputs, Mapping):
            items = list(outputs.items())
        elif isinstance(outputs, (tuple, list)):
            items = list(enumerate(outputs))
        else:
            items = [(0, outputs)]
        values = [backend.put(v) for _, v in items]
        for (key, _), value in zip(items, values, strict=False):
            _check_output(key, value, n, tile)
        self._register(
            {key: value.shape[1] for (key, _), value in zip(items, values, strict=False)}
        )
        return backend.cat(values)

    def _register(self, channels: dict[Hashable, int]) -> None:
        self._channels = dict(channels)
        if self.slices:
            now = {k: s.stop - s.start for k, s in self.slices.items()}
            if now != channels:
                raise ValueError(
                    f"the predictor's outputs changed from {now} to {channels} "
                    "between batches; it must return the same keys and channels"
                )
            return
        offset = 0
        for key, count in channels.items():
            self.slices[key] = slice(offset, offset + count)
            self.sinks[key] = self.allocate(key, (count, *self.spatial))
            offset += count

    @property
    def channels(self) -> int:
        return sum(s.stop - s.start for s in self.slices.values())


def _check_output(key: Hashable, value: Any, n: int, tile: tuple[int, ...]) -> None:
    if value.ndim != len(tile) + 2 or value.shape[0] != n or tuple(value.shape[2:]) != tile:
        raise ValueError(
            f"predictor output {key!r} has shape {tuple(value.shape)}; expected (N={n}, C_out, "
            f"{', '.join(map(str, tile))}): the predictor must keep the tile's spatial shape"
        )


def backend_for(accumulate_on: Any) -> _NumpyBackend | _TorchBackend:
    """Host memory (numpy) for ``None``, else torch on the device ``accumulate_on``."""
    return _NumpyBackend() if accumulate_on is None else _TorchBackend(accumulate_on)
