"""The network side of inference: a prepared copy (cached) and the tile runner.

Why apart from :mod:`inference`: ordinary and adaptive prediction and the depth
benchmarks run the same folded, cached network through the same runner (one
network pass for all heads, test-time flips, CUDA out-of-memory fallback).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from . import stitching
from .devices import (
    ModelT,
    autocast,
    autocast_dtype,
    empty_cache,
    inference_dtype,
    is_out_of_memory,
    memory_format,
    mixed_precision_on,
    place_model,
)
from .model import UNetPlusPlus

__all__ = [
    "TileRunner",
    "cached_derived",
    "fold_batchnorm",
    "inference_autocast",
    "network_dtype",
    "precision_note",
    "prepare_for_inference",
    "prepare_int8",
    "prepare_on",
]


def _fold_pair(conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold an eval-mode BatchNorm into the convolution before it (in place)."""
    with torch.no_grad():
        var, mean = bn.running_var, bn.running_mean
        assert var is not None and mean is not None  # checked by the caller
        scale = torch.rsqrt(var + bn.eps)
        shift = -mean * scale
        if bn.affine:
            scale = scale * bn.weight
            shift = shift * bn.weight + bn.bias
        weight = conv.weight
        weight.mul_(scale.reshape(-1, *([1] * (weight.ndim - 1))))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        conv.bias = nn.Parameter(bias * scale + shift)


def fold_batchnorm(module: ModelT) -> ModelT:
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
    model: UNetPlusPlus,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> UNetPlusPlus:
    """A frozen copy for prediction: eval mode, BatchNorm folded, the fastest layout.

    A deep copy, so the training model (its BatchNorm layers, its mode, its
    device) is untouched and training can go on after a preview prediction.
    ``device`` moves the copy (default: where the model is); ``dtype`` is what its
    weights are stored in (see :func:`devices.inference_dtype`), after folding in float32.
    """
    net = fold_batchnorm(copy.deepcopy(model).float().eval())
    net.requires_grad_(False)
    net.reuse_concat_buffer()
    return place_model(net, device).to(dtype)


def network_dtype(net: nn.Module) -> torch.dtype:
    """The dtype of ``net``'s weights: what its inputs must be cast to."""
    first = next(net.parameters(), None)
    return first.dtype if first is not None else torch.float32


def inference_autocast(net: nn.Module, device: torch.device, enabled: bool) -> Any:
    """:func:`devices.autocast` for a prepared network: none for a copy already in bf16
    (a CPU's), which needs no casts; CUDA's float32 copy runs under autocast."""
    return autocast(device, _autocasts(net, device, enabled))


def _autocasts(net: nn.Module, device: torch.device, enabled: bool) -> bool:
    """Whether :func:`inference_autocast` really switches autocast on (not a no-op)."""
    wanted = mixed_precision_on(device, enabled, _spatial_dims(net))
    return autocast_dtype(device, wanted and network_dtype(net) == torch.float32) is not None


def _spatial_dims(net: nn.Module) -> int:
    return int(getattr(net, "spatial_dims", 2))


def precision_note(net: nn.Module, device: torch.device, mixed_precision: bool) -> str:
    """`` (bfloat16)`` / `` (float16)`` / `` (int8)`` for progress messages, when not in
    float32."""
    from .quantize import LazyInt8

    if isinstance(net, LazyInt8):
        return " (int8)"
    wanted = mixed_precision_on(device, mixed_precision, _spatial_dims(net))
    dtype = autocast_dtype(device, wanted) or network_dtype(net)
    return "" if dtype == torch.float32 else f" ({str(dtype).removeprefix('torch.')})"


#: Bytes below which a CPU feature map comes from glibc's heap once its mmap threshold has
#: adapted (the threshold follows freed maps up to 32 MiB on 64-bit Linux); at 32 MiB and
#: above every map is mapped and faulted in afresh. A little under, for allocator headers.
HEAP_LIMIT = 32 * 2**20 - 2**16


class TileRunner:
    """The tile predictor: one network pass for all depths, TTA, OOM fallback.

    On a CUDA out-of-memory error the batch is split in halves (down to single
    tiles), then the network moves to the CPU; ``messages`` collects what
    happened so ``inference.predict`` can report it. Batches may be numpy or torch (tiles
    cut on the device); the heads come back stacked in one tensor
    (:class:`stitching.StackedOutputs`), activated in one call and blended in one go.
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
        # per device (it changes after a CUDA out-of-memory): the input's memory format and
        # dtype, and whether autocast is on; worked out once, not per batch (a walk over
        # the network's parameters and the CPU's features cost as much as a small tile)
        self._format: tuple[torch.device, torch.memory_format, torch.dtype, bool] | None = None
        self._channels: dict[Hashable, int] = {d: num_classes for d in depths}
        self._passes: dict[tuple[torch.device, int, tuple[int, ...]], int] = {}

    @property
    def input_dtype(self) -> torch.dtype:
        """What batches are cast to (the network's dtype): tiles can be stacked in it."""
        return network_dtype(self.net)

    def __call__(self, batch: np.ndarray | torch.Tensor) -> Mapping[int, torch.Tensor]:
        parts: list[Mapping[int, torch.Tensor]] = []
        size = int(batch.shape[0])  # not len(): a Python-level call on a tensor
        step = min(self.chunk, self._per_pass(size, tuple(batch.shape[2:])))
        self._reuse = size <= step and len(self.flips) == 1  # one part, no sums
        start = 0
        while start < size:
            chunk = batch[start : start + step]
            try:
                parts.append(self._forward(chunk))
            except Exception as exc:  # noqa: BLE001 - re-raised unless it is an OOM on CUDA
                if self.device.type != "cuda" or not is_out_of_memory(exc):
                    raise
            else:
                start += int(chunk.shape[0])
                continue
            self._shrink()  # outside the except block: the traceback's tensors are freed
            step = min(step, self.chunk)
        if len(parts) == 1:
            return parts[0]
        stacked = [p for p in parts if isinstance(p, stitching.StackedOutputs)]
        if len(stacked) == len(parts):
            where = stacked[-1].data.device  # after a CPU fallback: the CPU
            data = torch.cat([p.data.to(where) for p in stacked])
            return stitching.StackedOutputs(data, stacked[0].channels)
        where = {d: t.device for d, t in parts[-1].items()}  # after a CPU fallback: the CPU
        return {d: torch.cat([p[d].to(where[d]) for p in parts]) for d in parts[0]}

    def _per_pass(self, size: int, tile: tuple[int, ...]) -> int:
        """Tiles per network pass on the CPU: as many as keep its largest feature map under
        glibc's largest mmap threshold (:data:`HEAP_LIMIT`), in passes of equal size.

        Why: glibc maps every allocation above that threshold fresh and returns it on free,
        so each such feature map is faulted in page by page, layer after layer. A batch of
        four 256 x 256 tiles at width 32 makes 32 MiB maps, just above; in two passes of two
        they come from the heap, with the same results bit for bit: tiled L1 / L2 / L4 took
        0.89x / 0.93x / 0.94x the CPU time (one thread, interleaved, benchmarks.md). CUDA has
        its own caching allocator: no split.
        """
        key = (self.device, size, tile)
        known = self._passes.get(key)
        if known is not None:
            return known
        widths = getattr(getattr(self.net, "config", None), "widths", None)
        step = size
        if self.device.type == "cpu" and size > 1 and widths:
            pixels = math.prod(int(t) for t in tile)
            shrink = 2 ** len(tile)  # each level pools every spatial axis by 2
            per_tile = max(int(w) * pixels // shrink**level for level, w in enumerate(widths))
            passes = -(-size * per_tile * network_dtype(self.net).itemsize // HEAP_LIMIT)
            step = max(1, -(-size // passes))
        self._passes[key] = step
        return step

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
        self.net = place_model(self.net, self.device)
        self.messages.append(
            "out of GPU memory even with one tile: continuing on the CPU (slower); "
            "a smaller PredictConfig.tile_size would fit the GPU"
        )

    def _activate(self, logits: dict[int, torch.Tensor], reuse: bool) -> torch.Tensor:
        """Every head's probabilities in one ``(N, heads * classes, *tile)`` float32 tensor.

        Binary heads are activated straight into their channels of the stacked tensor
        (one pass over the logits); with ``reuse`` that tensor is the runner's buffer,
        kept across batches (the tiling is done with a batch before it asks for the next).
        One float32 head is activated where the network wrote it (its fresh output):
        read and written in place, half the memory a pass into the buffer touches.
        """
        first = logits[self.depths[0]]
        if self.num_classes > 1:
            stacked = torch.cat([logits[d].float() for d in self.depths], dim=1)
            n, _, *tile = stacked.shape
            per_head = stacked.view(n, len(self.depths), self.num_classes, *tile)
            return torch.softmax(per_head, dim=2).view(stacked.shape)
        if len(self.depths) == 1 and first.dtype == torch.float32 and first.is_contiguous():
            return first.sigmoid_()
        shape = (first.shape[0], len(self.depths), *first.shape[2:])
        out = self._buffer if reuse else None
        if out is None or out.shape != shape or out.device != first.device:
            out = torch.empty(shape, dtype=torch.float32, device=first.device)
            self._buffer = out if reuse else None
        for k, d in enumerate(self.depths):
            head = out[:, k : k + 1]
            if logits[d].dtype == torch.float32:
                torch.sigmoid(logits[d], out=head)
            else:  # bf16 logits widened into the kept buffer: no fresh float32 copy per head
                head.copy_(logits[d]).sigmoid_()
        return out

    def _forward(self, batch: np.ndarray | torch.Tensor) -> stitching.StackedOutputs:
        """Probabilities of one chunk, left on the device (the blending may happen there)."""
        if not isinstance(batch, torch.Tensor):
            batch = torch.from_numpy(np.ascontiguousarray(batch))
        if self._format is None or self._format[0] != self.device:
            layout = memory_format(self.net.spatial_dims, self.device)
            casts = _autocasts(self.net, self.device, self.mixed_precision)
            self._format = (self.device, layout, network_dtype(self.net), casts)
        _, layout, dtype, casts = self._format
        x = batch.to(self.device, dtype).contiguous(memory_format=layout)
        total: torch.Tensor | None = None
        with torch.inference_mode(), autocast(self.device) if casts else contextlib.nullcontext():
            for axes in self.flips:
                prob = self._activate(
                    self.net(x.flip(axes) if axes else x, self.depths), self._reuse
                )
                prob = prob.flip(axes) if axes else prob
                total = prob if total is None else total.add_(prob)
            assert total is not None
            if len(self.flips) > 1:
                total = total.div_(len(self.flips))
        return stitching.StackedOutputs(total, self._channels)


#: Derived networks (pruned, prepared) of each live model, with the weight versions they
#: were made from: re-predicting with unchanged weights (the pruning slider, a stack slice
#: by slice, a benchmark) skips the deep copy, the pruning and the folding.
_DERIVED: weakref.WeakKeyDictionary[nn.Module, dict[Hashable, tuple[tuple[int, ...], Any]]] = (
    weakref.WeakKeyDictionary()
)


def _weights_version(model: nn.Module) -> tuple[int, ...]:
    """Changes whenever a weight or buffer is updated in place (optimizer, load) or replaced,
    or a forward hook is added or removed (the copies carry the hooks).

    The module tree is walked by hand: ``parameters()`` and ``modules()`` nest generators
    per module, which took 0.7 ms on the paper-width network, every prediction.
    """
    version: list[int] = []
    hooks: list[int] = []
    todo = [model]
    while todo:
        module = todo.pop()
        for tensors in (module._parameters, module._buffers):
            for t in tensors.values():
                if t is not None:
                    version += (id(t), t.data_ptr(), t._version)
        for table in (module._forward_hooks, module._forward_pre_hooks):
            hooks += map(id, table.values())
        todo += [m for m in module._modules.values() if m is not None]
    return (*version, -1, *hooks)


def cached_derived(model: nn.Module, key: Hashable, make: Callable[[], Any]) -> Any:
    """``make()``, reused while ``model``'s weights are unchanged (one entry per key)."""
    version = _weights_version(model)
    entries = _DERIVED.setdefault(model, {})
    hit = entries.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    value = make()
    entries[key] = (version, value)
    return value


def prepare_int8(net: UNetPlusPlus, depths: tuple[int, ...], device: torch.device) -> nn.Module:
    """The int8 copy of ``net``'s heads ``depths`` (:mod:`quantize`), calibrated on the first
    tile batch it runs; refused (ValueError with the fix) off the CPU or for a network the
    quantiser cannot take."""
    from .quantize import LazyInt8

    if device.type != "cpu":
        raise ValueError(
            f"int8 inference runs on the CPU only, but the device is {device.type}: set "
            "device='cpu' (--device cpu), or int8=False (drop --int8; a GPU is faster with "
            "its default mixed precision)"
        )
    return LazyInt8(net, depths)


def prepare_on(
    net: UNetPlusPlus, device: torch.device, mixed_precision: bool = False
) -> tuple[UNetPlusPlus, torch.device, list[str]]:
    """The prepared network on ``device``, or on the CPU when its weights do not fit the GPU.

    ``mixed_precision``: in bfloat16 where the device computes it natively on the CPU
    (:func:`devices.inference_dtype`); CUDA keeps float32 weights under autocast.
    """
    mixed_precision = mixed_precision_on(device, mixed_precision, net.spatial_dims)
    dtype = inference_dtype(device, mixed_precision)
    try:
        prepared = cached_derived(
            net,
            ("prepared", str(device), str(dtype)),
            lambda: prepare_for_inference(net, device, dtype),
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
    dtype = inference_dtype(cpu, mixed_precision_on(cpu, mixed_precision, net.spatial_dims))
    return prepare_for_inference(net, cpu, dtype), cpu, [message]
