"""int8 on a CPU without bfloat16: speed at L4 and the EM membrane IoU it costs (issue 15).

Why: on a CPU without bf16 instructions the network runs in float32 at ~95-100 % of the
float32 matmul peak, which caps tiled inference at ~2x MONAI's. int8 convolutions (x86's
VNNI: four times the multiply-adds of float32 per instruction) are the remaining lever
that needs no compiler at run time. This measures torch's eager-mode static quantisation
(``torch.ao.quantization``, the ``x86`` engine: fbgemm / oneDNN kernels, convolution and
ReLU fused, BatchNorm folded, per-channel weights) against the float32 network
``predict`` runs (BatchNorm folded, channels_last):

- speed: the raw forward of a batch of four 256 x 256 tiles at L4, paper widths (32-512,
  random weights: speed does not depend on them) and the shipped EM model's widths
  (16-256), the two precisions interleaved (A, B, A, B), medians;
- accuracy: the shipped ``zoo:em`` model at L4 on the held-back slices 15-19 (tiles 256,
  overlap 0.25, Gaussian blending, each slice normalised as a whole), membrane IoU
  (probability > 0.5) counted over the five slices together; int8 calibrated on tiles of
  the training slices (0-9) only.

Run (needs ``NAPARI_UNETPP_DATA``, see /work/shared/data/README; with one thread the
times are the process's CPU time, which a busy machine distorts least)::

    OMP_NUM_THREADS=1 python benchmarks/bench_int8.py --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import load_em  # noqa: E402

from napari_unetpp import zoo  # noqa: E402
from napari_unetpp.model import (  # noqa: E402
    ConvBlock,
    NestedNode,
    UNetPlusPlus,
    head_name,
    node_name,
    nodes_for_depth,
)
from napari_unetpp.normalization import normalize  # noqa: E402
from napari_unetpp.predictor import prepare_for_inference  # noqa: E402
from napari_unetpp.tiling import sliding_window  # noqa: E402

PAPER_WIDTHS = (32, 64, 128, 256, 512)
TILE, BATCH, OVERLAP = 256, 4, 0.25


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
            self.conv.bias.copy_(bias.repeat(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).contiguous(memory_format=torch.channels_last)
        n, four, h, w = y.shape
        pixels = y.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, four // 4)  # a view
        blocks = pixels.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, four // 4)
        return blocks.permute(0, 3, 1, 2)  # channels_last


class Int8UNet(nn.Module):
    """Head ``depth`` of a UNet++ with every convolution in int8 (eager-mode static
    quantisation): the input quantised once, the logits dequantised once."""

    def __init__(self, model: UNetPlusPlus, depth: int, observer: str) -> None:
        super().__init__()
        from torch.ao import quantization as q
        from torch.ao.nn.quantized import FloatFunctional

        net = copy.deepcopy(model).float().eval()
        self.depth = depth
        self.order = nodes_for_depth(depth)
        self.nodes = nn.ModuleDict(
            {node_name(i, j): net.nodes[node_name(i, j)] for i, j in self.order}
        )
        self.head = net.heads[head_name(depth)]
        self.pool = net.pool
        self.cats = nn.ModuleDict(
            {node_name(i, j): FloatFunctional() for i, j in self.order if j > 0}
        )
        self.quant, self.dequant = q.QuantStub(), q.DeQuantStub()
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
                node.up = ShuffleUp(node.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: dict[tuple[int, int], torch.Tensor] = {}
        x = self.quant(x)
        for i, j in self.order:
            node = self.nodes[node_name(i, j)]
            if j == 0:
                features[i, j] = node(x if i == 0 else self.pool(features[i - 1, 0]))
                continue
            same = [features[i, k] for k in range(j)]
            joined = self.cats[node_name(i, j)].cat([*same, node.up(features[i + 1, j - 1])], 1)
            features[i, j] = node.block(joined)
        return self.dequant(self.head(features[0, self.depth]))


def int8_network(
    model: UNetPlusPlus, depth: int, calibration: torch.Tensor, observer: str
) -> nn.Module:
    """The int8 copy of head ``depth``, its activation ranges observed on ``calibration``."""
    from torch.ao import quantization as q

    torch.backends.quantized.engine = "x86"
    net = Int8UNet(model, depth, observer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # observer / deprecation notices of torch.ao
        q.prepare(net, inplace=True)
        with torch.no_grad():
            for start in range(0, len(calibration), BATCH):
                net(calibration[start : start + BATCH])
        q.convert(net, inplace=True)
    return net


def head_logits(model: UNetPlusPlus, depth: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The float32 network as ``predict`` runs it: BatchNorm folded, channels_last."""
    prepared = prepare_for_inference(model, "cpu")
    return lambda x: prepared(x.contiguous(memory_format=torch.channels_last), [depth])[depth]


def em_tiles(image: np.ndarray, slices: range, data, count: int) -> torch.Tensor:
    """``count`` 256 x 256 tiles of normalised slices (corners of each slice, in turn)."""
    tiles = []
    for z in slices:
        plane = normalize(image[z], data.normalization)
        for y, x in ((0, 0), (0, 256), (256, 0), (256, 256)):
            tiles.append(plane[y : y + TILE, x : x + TILE])
    return torch.from_numpy(np.stack(tiles[:count])[:, np.newaxis].copy())


def speed(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each case, interleaved, after one warm-up call each: the process's
    CPU time with one thread (what a busy machine distorts least), else wall time."""
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in cases}
    for k in range(rounds + 1):
        for name, run in cases.items():
            start = clock()
            with torch.inference_mode():
                run()
            if k:
                times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def membrane_iou(
    logits: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray, truth: np.ndarray, data
) -> float:
    """Membrane IoU over slices 15-19 together, tiled as ``predict`` tiles (align 16)."""
    hits = union = 0

    def predictor(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.sigmoid(logits(torch.as_tensor(batch)))

    for z in zoo_test_slices():
        plane = normalize(image[z], data.normalization)[np.newaxis]
        prob = sliding_window(predictor, plane, (TILE, TILE), OVERLAP, BATCH, align=16)[0][0]
        pred, mask = prob > 0.5, truth[z] > 0
        hits += int((pred & mask).sum())
        union += int((pred | mask).sum())
    return hits / union


def zoo_test_slices() -> range:
    return range(*zoo.EM_TEST_SLICES)


def main(rounds: int, depth: int, timed: bool = True) -> None:
    torch.manual_seed(0)
    em = load_em()
    if em is None:
        raise SystemExit("set NAPARI_UNETPP_DATA to the shared data folder (EM slices)")
    image, truth = em
    model, info = zoo.load_pretrained("em")
    calibration = em_tiles(image, range(0, 10), info.data, 16)
    batch = calibration[:BATCH].contiguous()
    clock = "CPU time" if torch.get_num_threads() == 1 else "wall time"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) ({clock}), engine x86, "
        f"batch {BATCH} x {TILE}x{TILE}, head L{depth}, {rounds} interleaved round(s), medians"
    )
    random = UNetPlusPlus(widths=PAPER_WIDTHS, depth=4).eval()
    if timed:
        print()
        print("| network | float32 s | int8 (min/max) s | int8 (x86 default) s | speed-up |")
        print("|---|---|---|---|---|")
    for name, net in (("paper widths 32-512", random), ("zoo:em, widths 16-256", model)):
        if not timed:
            break
        fp32 = head_logits(net, depth)
        minmax = int8_network(net, depth, calibration, "minmax")
        default = int8_network(net, depth, calibration, "histogram")
        seconds = speed(
            {
                "float32": lambda f=fp32: f(batch),
                "minmax": lambda m=minmax: m(batch),
                "default": lambda m=default: m(batch),
            },
            rounds,
        )
        best = min(seconds["minmax"], seconds["default"])
        print(
            f"| {name} | {seconds['float32']:.3f} | {seconds['minmax']:.3f} | "
            f"{seconds['default']:.3f} | {seconds['float32'] / best:.2f}x |"
        )
    print()
    print(f"| zoo:em L{depth}, slices 15-19 | membrane IoU | change |")
    print("|---|---|---|")
    fp32 = head_logits(model, depth)
    reference = membrane_iou(fp32, image, truth, info.data)
    print(f"| float32 (as predict runs it) | {reference:.4f} | |")
    for observer in ("minmax", "histogram"):
        net = int8_network(model, depth, calibration, observer)
        iou = membrane_iou(net, image, truth, info.data)
        print(f"| int8 ({observer}) | {iou:.4f} | {iou - reference:+.4f} |")
    # what a per-image calibration would do: ranges from the segmented slices' own tiles
    own = em_tiles(image, zoo_test_slices(), info.data, 16)
    iou = membrane_iou(int8_network(model, depth, own, "minmax"), image, truth, info.data)
    print(f"| int8 (min/max), calibrated on slices 15-19 | {iou:.4f} | {iou - reference:+.4f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--depth", type=int, default=4, help="the head to run (1-4)")
    parser.add_argument("--skip-speed", action="store_true", help="membrane IoU only")
    args = parser.parse_args()
    main(args.rounds, args.depth, not args.skip_speed)
