"""The decoder nodes' concatenation: a fresh ``torch.cat`` per node against the kept buffer.

Why: on the CPU a fresh output over glibc's mmap threshold (32 MB) is mapped and faulted
in page by page; :class:`napari_unetpp.model.ConcatBuffer` writes every concatenation of a
prepared network into one kept buffer instead. Both variants run in one process,
interleaved (A B A B ...), so the ratio holds on a busy machine; raw forward passes of the
prepared network on one batch of tiles, per depth, medians.

Run::

    python benchmarks/bench_concat.py             # paper widths and the zoo's CPU widths
    python benchmarks/bench_concat.py --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from napari_unetpp.model import NestedNode, UNetPlusPlus
from napari_unetpp.predictor import prepare_for_inference

WIDTHS = {"paper 32-512": (32, 64, 128, 256, 512), "CPU 16-256": (16, 32, 64, 128, 256)}


def _use_buffer(net: UNetPlusPlus, on: bool, buffer: object) -> None:
    for node in net.nodes.values():
        if isinstance(node, NestedNode):
            node.concat = buffer if on else None  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="after one warm-up round")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tile", type=int, default=256)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch} x "
        f"{args.tile}x{args.tile}; {args.rounds} interleaved rounds, medians\n"
    )
    print("| widths | depth | fresh torch.cat s | kept buffer s | speed-up |")
    print("|---|---|---|---|---|")
    x = torch.randn(args.batch, 1, args.tile, args.tile)
    x = x.contiguous(memory_format=torch.channels_last)
    for name, widths in WIDTHS.items():
        torch.manual_seed(0)
        net = prepare_for_inference(UNetPlusPlus(widths=widths).eval(), "cpu")
        buffer = net.nodes["x_0_1"].concat
        times: dict[tuple[bool, int], list[float]] = {}
        with torch.inference_mode():
            for k in range(args.rounds + 1):
                for on in (False, True):
                    _use_buffer(net, on, buffer)
                    for depth in (1, 2, 3, 4):
                        start = time.perf_counter()
                        net(x, [depth])
                        if k:
                            times.setdefault((on, depth), []).append(time.perf_counter() - start)
        for depth in (1, 2, 3, 4):
            fresh = statistics.median(times[False, depth])
            kept = statistics.median(times[True, depth])
            print(f"| {name} | L{depth} | {fresh:.3f} | {kept:.3f} | {fresh / kept:.2f}x |")


if __name__ == "__main__":
    main()
