"""Tiled inference: every requested depth of a UNet++ in one pass, at any image size.

``predict`` is a generator of :class:`PredictEvent` that *returns* the per-depth
probabilities, so the napari widget (through ``thread_worker``), the CLI and a
test drive the same code (:func:`predict_array` runs it to the end).

What it does, and why
---------------------
- Normalises exactly as training did (``data.normalize``): the intensity range
  of ``percentile`` mode is computed once per image (a stack counts as one image,
  as in training) on a strided subsample, so a dask stack is never loaded whole.
- A 2D model runs slice by slice over any leading axes (Z, T); a 3D model runs
  on the last three axes, item by item over the rest.
- Tiles (``tiling.iter_sliding_window``) are rounded up to a multiple of
  ``2**model.depth`` and placed on that grid, so every tile shares the pooling
  grid of the image: overlapping tiles agree, there are no seams, and the same
  settings give the same tiles for every depth (all heads at once, one head, or
  the pruned network agree exactly).
- All requested heads come from one network pass (shared nodes run once);
  ``pruned_depth`` runs only ``model.prune(d)`` (the fast path of the pruning slider).
- On CUDA the tiles are blended on the GPU (one band of sums, when it takes under
  a quarter of the free memory), so tile outputs never travel one by one.
- CUDA out-of-memory: the tile batch is halved and retried, then the job moves to
  the CPU; blending that runs out of GPU memory redoes the slice on the host. Each
  step is reported in a ``"fallback"`` event.
- ``out``: results go into zarr arrays in that folder as tiles finish (memory is
  bounded by the tile batch and one band of tiles, not by the volume).

Cancellation
------------
Cooperative, as everywhere in the engine: when ``stopper.stopped`` is seen (it is
checked after every event), ``predict`` stops after the current tile batch and
*returns what is done*; the result's ``complete`` attribute is ``False``, the last
event has kind ``"stopped"``, and parts not reached are 0 (in a zarr ``out`` the
group attribute ``complete`` is false too). No exception is raised: a stop is a
user's choice, not an error. (Stopped before the first tile, the result is empty.)

Example
-------
>>> import numpy as np
>>> from napari_unetpp.config import DataConfig, PredictConfig
>>> from napari_unetpp.model import UNetPlusPlus
>>> net = UNetPlusPlus(widths=(4, 8, 16), depth=2)
>>> probs = predict_array(net, np.zeros((40, 50), "uint8"), PredictConfig(device="cpu"),
...                       DataConfig())
>>> sorted(probs), probs[2].shape, probs.complete
([1, 2], (40, 50), True)
"""

from __future__ import annotations

import copy
import itertools
import weakref
from collections.abc import Callable, Generator, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import stores, tiling
from .config import DataConfig, PredictConfig
from .data import intensity_range, normalize
from .devices import autocast, empty_cache, is_out_of_memory, memory_format, resolve_device
from .events import EtaClock, Event, Stopper, drive
from .model import UNetPlusPlus
from .nonfinite import non_finite_filler

__all__ = [
    "PredictEvent",
    "PredictResult",
    "fold_batchnorm",
    "output_shape",
    "predict",
    "predict_array",
    "prepare_for_inference",
]


@dataclass
class PredictEvent(Event):
    """Progress of :func:`predict`; ``step`` / ``total`` count tiles over the whole job.

    Kinds: ``"start"`` (step 0, before the first tile), ``"tiles"`` (after each
    tile batch), ``"fallback"`` (out of memory: smaller batch or CPU, see
    ``message``), ``"stopped"`` (the stopper was seen; the result is partial),
    ``"done"``.
    """

    depths: tuple[int, ...] = ()
    device: str = ""
    item: int = 0
    items: int = 1
    batch_size: int = 0


class PredictResult(dict):  # type: ignore[type-arg]
    """``{depth: probabilities}`` plus how the run ended.

    A plain ``dict`` for every consumer; ``complete`` is ``False`` when the run
    was stopped (unreached parts are 0), ``path`` is the zarr folder when
    ``out`` was given. ``scale`` says what resampling was used (zoom, pixel
    sizes, measured object diameter; see ``rescaled.py``), ``None`` when none.
    """

    scale: dict[str, Any] | None = None

    def __init__(self, arrays: dict[int, Any], complete: bool, path: Path | None = None) -> None:
        super().__init__(arrays)
        self.complete = complete
        self.path = path


# --------------------------------------------------------------------------- model


def _fold_pair(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold an eval-mode BatchNorm into the convolution before it (in place)."""
    with torch.no_grad():
        var, mean = bn.running_var, bn.running_mean
        assert var is not None and mean is not None  # checked by the caller
        scale = torch.rsqrt(var + bn.eps)
        shift = -mean * scale
        if bn.affine:
            scale = scale * bn.weight
            shift = shift * bn.weight + bn.bias
        weight = conv.weight  # type: ignore[union-attr]
        weight.mul_(scale.reshape(-1, *([1] * (weight.ndim - 1))))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)  # type: ignore
        conv.bias = nn.Parameter(bias * scale + shift)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every ``Conv -> BatchNorm`` pair of its ``nn.Sequential`` blocks (in place).

    In eval mode a BatchNorm is an affine map per channel, so it can live in
    the convolution's weights and bias: one kernel less per block, the same
    output (to float rounding). Only pairs with running statistics are folded.
    """
    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    for parent in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(parent._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = parent._modules[first], parent._modules[second]
            if (
                isinstance(conv, conv_types)
                and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                and bn.running_mean is not None
                and conv.out_channels == bn.num_features
            ):
                _fold_pair(conv, bn)
                parent._modules[second] = nn.Identity()
    return module


def prepare_for_inference(
    model: UNetPlusPlus, device: str | torch.device | None = None
) -> UNetPlusPlus:
    """A frozen copy for prediction: eval mode, BatchNorm folded, the fastest layout.

    A deep copy, so the training model (its BatchNorm layers, its mode, its
    device) is untouched and training can go on after a preview prediction.
    ``device`` moves the copy (default: where the model is).
    """
    net = fold_batchnorm(copy.deepcopy(model).eval())
    net.requires_grad_(False)
    if device is not None:
        net = net.to(torch.device(device))
    return net.to(memory_format=memory_format(net.spatial_dims, next(net.parameters()).device))


class _Runner:
    """The tile predictor: one network pass for all depths, TTA, OOM fallback.

    On a CUDA out-of-memory error the batch is split in halves (down to single
    tiles), then the network moves to the CPU; ``messages`` collects what
    happened so :func:`predict` can report it. Batches may be numpy or torch (tiles
    cut on the device); the heads come back stacked in one tensor
    (:class:`tiling.StackedOutputs`), activated in one call and blended in one go.
    """

    def __init__(
        self,
        net: UNetPlusPlus,
        depths: tuple[int, ...],
        device: torch.device,
        num_classes: int,
        tta: bool,
        mixed_precision: bool,
        chunk: int,
    ) -> None:
        self.net = net
        self.depths = depths
        self.device = device
        self.num_classes = num_classes
        self.mixed_precision = mixed_precision
        self.chunk = chunk
        axes = range(2, 2 + net.spatial_dims)
        subsets = (c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r))
        self.flips: list[tuple[int, ...]] = list(subsets) if tta else [()]
        self.messages: list[str] = []
        self._buffer: torch.Tensor | None = None
        self._reuse = False

    def __call__(self, batch: np.ndarray | torch.Tensor) -> Mapping[int, torch.Tensor]:
        parts: list[Mapping[int, torch.Tensor]] = []
        self._reuse = len(batch) <= self.chunk and len(self.flips) == 1  # one part, no sums
        start = 0
        while start < len(batch):
            chunk = batch[start : start + self.chunk]
            try:
                parts.append(self._forward(chunk))
            except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM on CUDA
                if self.device.type != "cuda" or not is_out_of_memory(exc):
                    raise
            else:
                start += len(chunk)
                continue
            self._shrink()  # outside the except block: the traceback's tensors are freed
        if len(parts) == 1:
            return parts[0]
        if all(isinstance(p, tiling.StackedOutputs) for p in parts):
            where = parts[-1].data.device  # after a CPU fallback: the CPU
            data = torch.cat([p.data.to(where) for p in parts])  # type: ignore[attr-defined]
            return tiling.StackedOutputs(data, parts[0].channels)  # type: ignore[attr-defined]
        where = {d: t.device for d, t in parts[-1].items()}  # after a CPU fallback: the CPU
        return {d: torch.cat([p[d].to(where[d]) for p in parts]) for d in parts[0]}

    def _shrink(self) -> None:
        empty_cache(self.device)
        if self.chunk > 1:
            self.chunk //= 2
            self.messages.append(
                f"out of GPU memory: tile batch reduced to {self.chunk}; a smaller "
                "PredictConfig.batch_size or tile_size avoids this"
            )
            return
        self.device = torch.device("cpu")
        fmt = memory_format(self.net.spatial_dims, self.device)
        self.net = self.net.to(self.device, memory_format=fmt)
        self.messages.append(
            "out of GPU memory even with one tile: continuing on the CPU (slower); "
            "a smaller PredictConfig.tile_size would fit the GPU"
        )

    def _activate(self, logits: dict[int, torch.Tensor], reuse: bool) -> torch.Tensor:
        """Every head's probabilities in one ``(N, heads * classes, *tile)`` float32 tensor.

        Binary heads are activated straight into their channels of the stacked tensor
        (one pass over the logits); with ``reuse`` that tensor is the runner's buffer,
        kept across batches (the tiling is done with a batch before it asks for the next).
        """
        first = logits[self.depths[0]]
        if self.num_classes > 1:
            stacked = torch.cat([logits[d].float() for d in self.depths], dim=1)
            n, _, *tile = stacked.shape
            per_head = stacked.view(n, len(self.depths), self.num_classes, *tile)
            return torch.softmax(per_head, dim=2).view(stacked.shape)
        shape = (first.shape[0], len(self.depths), *first.shape[2:])
        out = self._buffer if reuse else None
        if out is None or out.shape != shape or out.device != first.device:
            out = torch.empty(shape, dtype=torch.float32, device=first.device)
            self._buffer = out if reuse else None
        for k, d in enumerate(self.depths):
            torch.sigmoid(logits[d].float(), out=out[:, k : k + 1])
        return out

    def _forward(self, batch: np.ndarray | torch.Tensor) -> tiling.StackedOutputs:
        """Probabilities of one chunk, left on the device (the blending may happen there)."""
        if not isinstance(batch, torch.Tensor):
            batch = torch.from_numpy(np.ascontiguousarray(batch))
        fmt = memory_format(self.net.spatial_dims, self.device)
        x = batch.to(self.device).contiguous(memory_format=fmt)
        total: torch.Tensor | None = None
        with torch.inference_mode(), autocast(self.device, enabled=self.mixed_precision):
            for axes in self.flips:
                prob = self._activate(
                    self.net(x.flip(axes) if axes else x, self.depths), self._reuse
                )
                prob = prob.flip(axes) if axes else prob
                total = prob if total is None else total.add_(prob)
            assert total is not None
            if len(self.flips) > 1:
                total = total.div_(len(self.flips))
        return tiling.StackedOutputs(total, {d: self.num_classes for d in self.depths})


# --------------------------------------------------------------------------- image layout


@dataclass(frozen=True)
class _Layout:
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


def _layout(shape: tuple[int, ...], channel_axis: int | None, model: UNetPlusPlus) -> _Layout:
    ndim, dims = len(shape), model.spatial_dims
    in_channels = model.config.in_channels
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            raise ValueError(
                f"DataConfig.channel_axis {channel_axis} is out of range for an image of shape "
                f"{shape}; set it to None (no channels) or to one of its axes"
            )
        channel_axis %= ndim
    others = tuple(a for a in range(ndim) if a != channel_axis)
    if len(others) < dims:
        raise ValueError(
            f"a {dims}D model needs {dims} spatial axes, but the image of shape {shape} has "
            f"{len(others)} besides channels; use a {len(others)}D model or check channel_axis"
        )
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
    return _Layout(
        ndim,
        channel_axis,
        channels,
        lead,
        tuple(shape[a] for a in lead),
        spatial,
        tuple(shape[a] for a in spatial),
    )


class _ItemView:
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
    """

    _pool: ThreadPoolExecutor | None = None  # one reader thread, shared, made on first use

    def __init__(
        self,
        image: Any,
        layout: _Layout,
        lead_index: tuple[int, ...],
        normalise: Callable[[np.ndarray], np.ndarray],
        device: torch.device | None = None,
        *,
        prefetch: bool = False,
        row_starts: Sequence[int] = (),
        height: int = 0,
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
        self._pending: dict[tuple[int, int], Future[Any]] = {}

    def _read(self, rows: slice) -> np.ndarray:
        """Rows of the first spatial axis, all channels and other axes, normalised."""
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
        return self.normalise(data)

    def _load(self, start: int, stop: int) -> Any:
        """One band, normalised, on the device if there is one."""
        band = self._read(slice(start, stop))
        if self.device is not None:
            band = torch.from_numpy(np.ascontiguousarray(band, np.float32)).to(self.device)
        return band

    def _prefetch(self, start: int) -> None:
        following = self._next.get(start)
        if following is None or not self._height:
            return
        key = (following, min(following + self._height, self.shape[1]))
        if key not in self._pending:
            if _ItemView._pool is None:
                _ItemView._pool = ThreadPoolExecutor(1, thread_name_prefix="unetpp-read")
            self._pending[key] = _ItemView._pool.submit(self._load, *key)

    def __getitem__(self, index: tuple[slice, ...]) -> Any:
        rows = index[1]
        start, stop = rows.start or 0, min(rows.stop, self.shape[1])
        if self._band is None or not (self._band[0] <= start and stop <= self._band[1]):
            pending = self._pending.pop((start, stop), None)
            band = pending.result() if pending is not None else self._load(start, stop)
            self._band = (start, stop, band)
            self._prefetch(start)
        lo, _, band = self._band
        return band[(slice(None), slice(start - lo, stop - lo), *index[2:])]


class _ItemSink:
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
    shape = list(image_shape)
    if channel_axis is not None:
        del shape[channel_axis]
    return tuple(shape) if num_classes == 1 else (num_classes, *shape)


def _allocate(
    depths: tuple[int, ...],
    shape: tuple[int, ...],
    spatial_chunks: tuple[int, ...],
    out: str | Path | None,
) -> tuple[dict[int, Any], Any]:
    """numpy in memory, or a zarr group (zarr 2 or 3) marked incomplete until the end."""
    return stores.allocate_outputs(depths, shape, spatial_chunks, out)


# --------------------------------------------------------------------------- predict


def _plan_depths(
    model: UNetPlusPlus, config: PredictConfig
) -> tuple[UNetPlusPlus, tuple[int, ...]]:
    """The network to run and the heads it returns (pruned fast path or shared pass)."""
    heads = model.head_depths
    bad = [d for d in config.depths if d not in heads]
    if bad:
        raise ValueError(
            f"PredictConfig.depths {list(config.depths)}: this model has heads at depths "
            f"{list(heads)}; choose among those (or leave depths empty for all)"
        )
    d = config.pruned_depth
    if d is None:
        return model, tuple(sorted(set(config.depths))) or heads
    if d not in heads:
        raise ValueError(
            f"PredictConfig.pruned_depth {d}: this model has heads at depths {list(heads)}"
        )
    if config.depths and set(config.depths) != {d}:
        raise ValueError(
            f"pruned_depth={d} returns head {d} only, but depths={list(config.depths)}; "
            f"leave depths empty (or set it to ({d},)), or unset pruned_depth"
        )
    return (model if heads == (d,) else _cached(model, ("pruned", d), lambda: model.prune(d))), (d,)


def _tile_shape(config: PredictConfig, spatial: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """Tiles on the model's pooling grid, no larger than the (rounded-up) image."""
    if len(config.tile_size) != len(spatial):
        example = (256, 256) if len(spatial) == 2 else (64, 128, 128)
        raise ValueError(
            f"PredictConfig.tile_size {config.tile_size} has {len(config.tile_size)} values but "
            f"the model is {len(spatial)}D; give {len(spatial)}, e.g. tile_size={example}"
        )
    return tuple(
        tiling.round_up(min(t, s), multiple)
        for t, s in zip(config.tile_size, spatial, strict=False)
    )


#: Derived networks (pruned, prepared) of each live model, with the weight versions they
#: were made from: re-predicting with unchanged weights (the pruning slider, a stack slice
#: by slice, a benchmark) skips the deep copy, the pruning and the folding.
_DERIVED: weakref.WeakKeyDictionary[nn.Module, dict[Hashable, tuple[tuple[int, ...], Any]]] = (
    weakref.WeakKeyDictionary()
)


def _weights_version(model: nn.Module) -> tuple[int, ...]:
    """Changes whenever a weight or buffer is updated in place (optimizer, load) or replaced,
    or a forward hook is added or removed (the copies carry the hooks)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    hooks = (
        id(h)
        for m in model.modules()
        for d in (m._forward_hooks, m._forward_pre_hooks)
        for h in d.values()
    )
    return (*(v for t in tensors for v in (id(t), t.data_ptr(), t._version)), -1, *hooks)


def _cached(model: nn.Module, key: Hashable, make: Callable[[], Any]) -> Any:
    """``make()``, reused while ``model``'s weights are unchanged (one entry per key)."""
    version = _weights_version(model)
    entries = _DERIVED.setdefault(model, {})
    hit = entries.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    value = make()
    entries[key] = (version, value)
    return value


def _prepare_on(
    net: UNetPlusPlus, device: torch.device
) -> tuple[UNetPlusPlus, torch.device, list[str]]:
    """The prepared network on ``device``, or on the CPU when its weights do not fit the GPU."""
    try:
        prepared = _cached(
            net, ("prepared", str(device)), lambda: prepare_for_inference(net, device)
        )
        return prepared, device, []
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM on CUDA
        if device.type != "cuda" or not is_out_of_memory(exc):
            raise
    empty_cache(device)
    cpu = torch.device("cpu")
    message = (
        "out of GPU memory while loading the model: running on the CPU (slower); "
        "free GPU memory (close other jobs) to use the GPU"
    )
    return prepare_for_inference(net, cpu), cpu, [message]


def _accumulate_on(
    device: torch.device, channels: int, tile: tuple[int, ...], spatial: tuple[int, ...]
) -> torch.device | None:
    """Blend on the GPU when one band of float32 sums takes under a quarter of its free memory.

    Why: on the host, stitching every head's tiles costs more than the network on a
    fast GPU; on the GPU the tiles never travel. A huge 3D band stays on the host.
    """
    if device.type != "cuda":
        return None
    band_bytes = 4 * (channels + 2) * min(tile[0], spatial[0]) * int(np.prod(spatial[1:]))
    free, _ = torch.cuda.mem_get_info(device)
    return device if band_bytes < free / 4 else None


def _blend_device(
    device: torch.device, channels: int, tile: tuple[int, ...], spatial: tuple[int, ...]
) -> torch.device | None:
    """Where tiles are cut and blended: the GPU (if the band fits), torch on the CPU, else numpy.

    Why torch on the CPU: its element-wise kernels use every core where numpy uses
    one, and the tiles then go from the normalised band to the network without a
    numpy round trip (the blending is bit-identical to the numpy path).
    """
    if device.type == "cpu":
        return device
    return _accumulate_on(device, channels, tile, spatial)


def _normaliser(image: Any, data_config: DataConfig) -> Callable[[np.ndarray], np.ndarray]:
    """Per-tile normalisation with one intensity range for the whole image (or stack)."""
    norm = data_config.normalization
    value_range = intensity_range(image, norm)
    fill = non_finite_filler(image)  # NaN pixels: filled with a warning, or refused
    return lambda tile: normalize(fill(tile), norm, value_range=value_range)


def predict(
    model: UNetPlusPlus,
    image: Any,
    predict_config: PredictConfig,
    data_config: DataConfig,
    *,
    out: str | Path | None = None,
    stopper: Stopper | None = None,
) -> Generator[PredictEvent, None, PredictResult]:
    """Per-depth probabilities of ``image``, tile by tile; a generator of events.

    Parameters
    ----------
    model
        A :class:`UNetPlusPlus` (left untouched: a folded copy runs).
    image
        numpy, dask or zarr array; channels at ``data_config.channel_axis``. A 2D
        model reads the last two other axes as YX (leading ones slice by slice),
        a 3D model the last three as ZYX.
    predict_config
        Depths, pruned fast path, tiles, overlap, batch, blending, TTA, device.
    data_config
        Normalisation and channel axis, as saved with the model.
    out
        A folder: write one zarr array per depth there (``L1``, ``L2``...) as
        tiles finish, and return those arrays (for data larger than memory).
    stopper
        Checked after every event; when set, the partial result is returned
        (``result.complete`` is ``False``).

    Returns
    -------
    PredictResult
        ``{depth: float32 probabilities}``: the image's shape without channels
        when ``num_classes == 1`` (sigmoid), else ``(num_classes, *that)`` (softmax).

    ``predict_config.pixel_size`` / ``rescale`` first resample the image to the
    model's scale and the outputs back to the image's grid (``rescaled.py``).
    """
    from .rescaled import needs_rescaling, predict_rescaled

    if needs_rescaling(predict_config):  # resample to the model's scale, then back (rescaled.py)
        return (
            yield from predict_rescaled(
                model, image, predict_config, data_config, out=out, stopper=stopper
            )
        )
    if predict_config.adaptive_depth:  # per-tile depth: adaptive.py, on the same tiling
        from .adaptive import predict_adaptive

        return (
            yield from predict_adaptive(
                model, image, predict_config, data_config, out=out, stopper=stopper
            )
        )
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        image = np.asarray(image)
    shape = tuple(int(s) for s in image.shape)
    layout = _layout(shape, data_config.channel_axis, model)
    net, depths = _plan_depths(model, predict_config)
    multiple = 2**model.depth  # same grid for every depth: all heads, one head, pruned agree
    tile = _tile_shape(predict_config, layout.spatial_shape, multiple)
    device = resolve_device(predict_config.device)
    num_classes = model.config.num_classes
    stopped = (lambda: stopper.stopped) if stopper is not None else (lambda: False)

    items = list(np.ndindex(*layout.lead_shape))
    grid = tiling.tile_grid(layout.spatial_shape, tile, predict_config.overlap, multiple)
    per_item = len(grid)
    row_starts = sorted({start[0] for start in grid})
    total = per_item * len(items)
    prepared, device, notes = _prepare_on(net, device)
    runner = _Runner(
        prepared,
        depths,
        device,
        num_classes,
        predict_config.tta,
        predict_config.mixed_precision,
        predict_config.batch_size,
    )
    runner.messages.extend(notes)

    def event(kind: str, step: int, item: int, message: str = "", eta: float | None = None):
        return PredictEvent(
            kind,
            step,
            total,
            message,
            eta,
            depths,
            str(runner.device),
            item,
            len(items),
            runner.chunk,
        )

    yield event(
        "start", 0, 0, f"predicting depths {list(depths)} on {device}, {total} tile(s) of {tile}"
    )
    for message in runner.messages:
        yield event("fallback", 0, 0, message)
    runner.messages.clear()
    if stopped():
        return PredictResult({}, complete=False)
    normalise = _normaliser(image, data_config)
    arrays, group = _allocate(
        depths, output_shape(shape, layout.channel_axis, num_classes), tile, out
    )
    accumulate_on = _blend_device(
        runner.device, num_classes * len(depths), tile, layout.spatial_shape
    )
    clock = EtaClock()
    done, complete = 0, True

    def tiles(
        lead: tuple[int, ...], accumulate_on: torch.device | None
    ) -> Generator[tiling.TileProgress, None, Any]:
        sinks = {d: _ItemSink(a, lead, num_classes == 1) for d, a in arrays.items()}
        view = _ItemView(
            image,
            layout,
            lead,
            normalise,
            accumulate_on,
            prefetch=accumulate_on is not None and accumulate_on.type == "cuda",
            row_starts=row_starts,
            height=tile[0],
        )
        return tiling.iter_sliding_window(
            runner,
            view,
            tile,
            predict_config.overlap,
            predict_config.batch_size,
            predict_config.blending,
            align=multiple,
            allocate=lambda key, _shape: sinks[key],
            should_stop=stopped,
            accumulate_on=accumulate_on,
        )

    for n, lead in enumerate(items):
        while True:  # an item is redone on the host if blending on the GPU ran out of memory
            try:
                done = yield from _run_item(
                    tiles(lead, accumulate_on), runner, event, done, total, n, clock
                )
                break
            except Exception as exc:  # noqa: BLE001 - re-raised unless a GPU blending OOM
                if accumulate_on is None or not is_out_of_memory(exc):
                    raise
            accumulate_on = None
            empty_cache(runner.device)
            yield event(
                "fallback",
                done,
                n,
                "out of GPU memory while blending tiles: "
                "blending in host memory from now on (slower)",
            )
        if stopped():
            complete = done >= total
            break
    if group is not None:
        stores.mark_complete(group, complete)
    result = PredictResult(arrays, complete, Path(out) if out is not None else None)
    if not complete:
        yield event(
            "stopped",
            done,
            len(items) - 1,
            "stopped: the result is partial (parts not reached are 0)",
        )
    else:
        yield event("done", total, len(items) - 1, f"predicted {len(items)} item(s)")
    return result


def _run_item(
    gen: Generator[tiling.TileProgress, None, Any],
    runner: _Runner,
    event: Callable[..., PredictEvent],
    done: int,
    total: int,
    item: int,
    clock: EtaClock,
) -> Generator[PredictEvent, None, int]:
    """Drive one item's sliding window, turning its progress into events; return tiles done."""
    step = done
    while True:
        try:
            progress = next(gen)
        except StopIteration:
            return step
        step = done + progress.done
        for message in runner.messages:
            yield event("fallback", step, item, message)
        runner.messages.clear()
        yield event("tiles", step, item, eta=clock.update(step, total))


def predict_array(
    model: UNetPlusPlus,
    image: Any,
    predict_config: PredictConfig,
    data_config: DataConfig,
    *,
    out: str | Path | None = None,
    stopper: Stopper | None = None,
    callback: Callable[[PredictEvent], Any] | None = None,
) -> PredictResult:
    """:func:`predict` run to the end (for scripts and notebooks): ``drive(predict(...))``."""
    return drive(
        predict(model, image, predict_config, data_config, out=out, stopper=stopper), callback
    )
