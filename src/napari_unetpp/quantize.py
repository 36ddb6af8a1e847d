"""int8 inference on the CPU (opt-in: ``PredictConfig(int8=True)``, ``predict --int8``).

Why: on a CPU without bfloat16 instructions the network runs in float32 near the
float32 matmul peak; int8 convolutions (x86 VNNI: four times the multiply-adds per
instruction) measured 2.1-2.6x faster per forward on the shipped ``zoo:em`` model with
its membrane IoU unchanged (+0.002 at L4; benchmarks/bench_int8.py,
docs/benchmarks.md). torch's eager static quantisation (``torch.ao.quantization``,
the ``x86`` engine): conv + BatchNorm + ReLU fused, per-channel weights, min/max
activation ranges at full 8 bits.

Calibration policy: the activation ranges are observed on the first tile batch of the
image being segmented (the central half of each of its tiles: :class:`LazyInt8`), then
frozen (a stack is one image: it calibrates once). Why the image's own tiles: the
ranges must cover what this image's tiles produce (training tiles need not be at hand,
and a model's training data may differ in contrast from the image); the tiles are
already normalised as training was, so one batch of them covers the range well (on EM,
calibrating on the segmented slices' own tiles scored as calibrating on training
slices). The copy is cached per model weights, heads and calibration batch, so
re-predicting the same image reuses it.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn

from .model import ConvBlock, NestedNode, UNetPlusPlus, head_name, node_name, nodes_for_depth

__all__ = ["Int8UNet", "LazyInt8", "ShuffleUp", "check_int8", "int8_network", "int8_refusal"]


class ShuffleUp(nn.Module):
    """A stride-2, 2 x 2 transposed convolution as a 1 x 1 convolution to four times the
    channels, then each pixel's four groups of channels moved to its 2 x 2 block: the same
    sums (each input pixel makes one block).

    Why: torch's quantised ``ConvTranspose2d`` gave errors larger than its outputs on every
    x86 engine here (fbgemm, oneDNN; per-tensor weights; per-channel is not supported),
    while int8 1 x 1 convolutions are exact to their quantisation. The groups are ordered
    (row, column, channel), so in channels_last memory the move copies whole pixels'
    channels, and the result stays channels_last (the quantised cat's fast path).
    """

    def __init__(self, up: nn.ConvTranspose2d) -> None:
        super().__init__()
        inputs, outputs = up.weight.shape[:2]
        self.conv = nn.Conv2d(inputs, outputs * 4, 1)
        with torch.no_grad():  # weight[i, c, a, b] -> row a * 2 * out + b * out + c, column i
            self.conv.weight.copy_(up.weight.permute(2, 3, 1, 0).reshape(-1, inputs, 1, 1))
            bias = up.bias if up.bias is not None else torch.zeros(outputs)
            assert self.conv.bias is not None  # made with a bias above
            self.conv.bias.copy_(bias.repeat(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).contiguous(memory_format=torch.channels_last)
        n, four, h, w = y.shape
        pixels = y.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, four // 4)  # a view
        blocks = pixels.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, four // 4)
        return blocks.permute(0, 3, 1, 2)  # channels_last


def check_int8(model: UNetPlusPlus) -> None:
    """Refuse (ValueError with the fix) a network the int8 path cannot take."""
    refused = _model_refusal(model)
    if refused is not None:
        reason, fix = refused
        raise ValueError(f"{reason}: set int8=False (drop --int8){fix}")


def _model_refusal(model: UNetPlusPlus) -> tuple[str, str] | None:
    """Why the int8 path cannot take ``model`` and what else fixes it, or None."""
    if model.spatial_dims != 2:
        return f"int8 inference supports 2D models only (this one is {model.spatial_dims}D)", ""
    if "x86" not in torch.backends.quantized.supported_engines:
        return (
            "int8 inference needs torch's x86 quantisation engine, which this CPU / torch "
            "build lacks",
            "",
        )
    for node in model.nodes.values():
        block = node if isinstance(node, ConvBlock) else node.get_submodule("block")
        kinds = [type(m) for m in block.children()]
        if kinds != [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2:
            return (
                f"int8 inference needs conv -> BatchNorm -> ReLU blocks (to fuse them); this "
                f"model uses {getattr(model.config, 'norm', '?')!r} normalisation",
                ", or train with norm='batch'",
            )
    return None


def int8_refusal(model: UNetPlusPlus, device: str | torch.device = "cpu") -> str | None:
    """Why int8 would not run, or not help, for ``model`` on ``device``; None when it would.

    Why: the Segment dock greys its int8 switch with this as the tooltip, instead of a
    refusal after Segment. Beside what :func:`check_int8` refuses: a GPU (``auto`` on a
    machine with one; int8 runs on the CPU only, and a GPU's mixed precision is faster),
    and a CPU with bfloat16 instructions, where the default bf16 run is the measured fast
    path and int8 was not measured (docs/benchmarks.md).
    """
    from .devices import cpu_computes_bf16, resolve_device

    try:
        kind = resolve_device(device).type
    except ValueError as exc:  # a device this machine lacks: Segment says so anyway
        return str(exc)
    if kind != "cpu":
        return (
            f"int8 runs on the CPU only, and the device here is {kind} (faster with its "
            "mixed precision): choose Device 'cpu' to use it"
        )
    if cpu_computes_bf16():
        return (
            "this CPU has bfloat16 instructions: the default bf16 run is its measured fast "
            "path (int8 was measured only on CPUs without them)"
        )
    refused = _model_refusal(model)
    return None if refused is None else refused[0]


class Int8UNet(nn.Module):
    """The heads ``depths`` of a UNet++ with every convolution in int8 (eager-mode static
    quantisation), all from one pass: the input quantised once, each head's logits
    dequantised once. ``forward(x, depths)`` as :class:`UNetPlusPlus`'s."""

    def __init__(
        self, model: UNetPlusPlus, depths: Iterable[int], observer: str = "minmax"
    ) -> None:
        super().__init__()
        from torch.ao import quantization as q
        from torch.ao.nn.quantized import FloatFunctional

        check_int8(model)
        net = copy.deepcopy(model).float().eval()
        self.depths = tuple(sorted(set(depths)))
        self.spatial_dims = 2
        self.order = nodes_for_depth(max(self.depths))
        self.nodes = nn.ModuleDict(
            {node_name(i, j): net.nodes[node_name(i, j)] for i, j in self.order}
        )
        self.heads = nn.ModuleDict({head_name(d): net.heads[head_name(d)] for d in self.depths})
        self.pool = net.pool
        self.cats = nn.ModuleDict(
            {node_name(i, j): FloatFunctional() for i, j in self.order if j > 0}
        )
        self.quant = q.QuantStub()
        self.dequant = nn.ModuleDict({head_name(d): q.DeQuantStub() for d in self.depths})
        for node in self.nodes.values():  # conv -> BatchNorm -> ReLU, twice: one int8 op each
            block = node if isinstance(node, ConvBlock) else node.block
            q.fuse_modules(block, [["0", "1", "2"], ["3", "4", "5"]], inplace=True)
        if observer == "histogram":  # torch's x86 default: 7-bit activations, histogram ranges
            self.qconfig = q.get_default_qconfig("x86")
        else:  # full 8-bit activations (VNNI has no overflow to avoid), min/max ranges
            self.qconfig = q.QConfig(
                activation=q.MinMaxObserver.with_args(reduce_range=False),
                weight=q.default_per_channel_weight_observer,
            )
        for node in self.nodes.values():  # torch's int8 transposed convolution is wrong here
            if isinstance(node, NestedNode):
                node.up = ShuffleUp(node.up)  # type: ignore[arg-type,assignment]

    def forward(
        self, x: torch.Tensor, depths: Iterable[int] | None = None
    ) -> dict[int, torch.Tensor]:
        wanted = self.depths if depths is None else tuple(sorted(set(depths)))
        if not set(wanted) <= set(self.depths):
            raise ValueError(f"this int8 copy has heads {self.depths}; asked for {wanted}")
        x, crop = UNetPlusPlus._pad_to_multiple(x, 2 ** max(self.depths))
        features: dict[tuple[int, int], torch.Tensor] = {}
        x = self.quant(x.contiguous(memory_format=torch.channels_last))
        for i, j in self.order:
            node = self.nodes[node_name(i, j)]
            if j == 0:
                features[i, j] = node(x if i == 0 else self.pool(features[i - 1, 0]))
                continue
            same = [features[i, k] for k in range(j)]
            up = node.get_submodule("up")(features[i + 1, j - 1])
            joined = cast(Any, self.cats[node_name(i, j)]).cat([*same, up], 1)  # FloatFunctional
            features[i, j] = node.get_submodule("block")(joined)
        return {
            d: crop(self.dequant[head_name(d)](self.heads[head_name(d)](features[0, d])))
            for d in wanted
        }


def int8_network(
    model: UNetPlusPlus,
    depths: Iterable[int],
    calibration: torch.Tensor,
    observer: str = "minmax",
    batch: int = 4,
) -> Int8UNet:
    """The int8 copy of heads ``depths``, its activation ranges observed on ``calibration``
    (float32 tiles, normalised as for the model), ``batch`` tiles at a time."""
    from torch.ao import quantization as q

    torch.backends.quantized.engine = "x86"
    net = Int8UNet(model, depths, observer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # observer / deprecation notices of torch.ao
        q.prepare(net, inplace=True)
        with torch.no_grad():
            for start in range(0, len(calibration), batch):
                net(calibration[start : start + batch].float())
        q.convert(net, inplace=True)
    return net.requires_grad_(False)


def _centres(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """The central half (along each axis, on the pooling grid) of each tile of ``x``.

    Why: the observed float forward costs about four int8 forwards (1.7 s for four 256 x 256
    tiles of zoo:em, one thread); a quarter of the pixels, spread over the batch's tiles,
    keeps the calibration under one int8 batch per image."""
    index: list[slice] = [slice(None), slice(None)]
    for size in x.shape[2:]:
        half = max(multiple, (size // 2) // multiple * multiple)
        start = min((size - half) // 2 // multiple * multiple, max(size - half, 0))
        index.append(slice(start, start + half))
    return x[tuple(index)]


class LazyInt8(nn.Module):
    """The int8 copy, built (calibrated) on the first batch it is given: in
    :func:`inference.predict` that is the image's first tile batch, its tiles' centres (see
    the module's calibration policy). Cached per model weights, heads and calibration
    batch."""

    def __init__(self, model: UNetPlusPlus, depths: Iterable[int]) -> None:
        super().__init__()
        check_int8(model)
        self._model = [model]  # not a submodule: the float network stays out of this one
        self.depths = tuple(sorted(set(depths)))
        self.spatial_dims = 2
        self.net: Int8UNet | None = None

    def forward(
        self, x: torch.Tensor, depths: Iterable[int] | None = None
    ) -> dict[int, torch.Tensor]:
        if self.net is None:
            from .predictor import cached_derived

            with torch.inference_mode(False):  # a plain copy: observers update buffers
                tiles = _centres(x, 2 ** max(self.depths)).float().cpu().clone()
            digest = hashlib.blake2b(tiles.numpy().tobytes(), digest_size=16).hexdigest()
            model = self._model[0]
            with torch.inference_mode(False):
                self.net = cached_derived(
                    model,
                    ("int8", self.depths, tuple(tiles.shape), digest),
                    lambda: int8_network(model, self.depths, tiles),
                )
        assert self.net is not None
        return self.net(x, depths)
