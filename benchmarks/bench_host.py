"""Host pipeline alone: ``predict`` with a network that costs nothing, in wall and CPU time.

Why CPU time too: on a shared machine the wall time of a single-threaded run depends on
the other jobs; the process's CPU time does much less, so two versions of the pipeline
can be compared on a busy machine (run it with ``OMP_NUM_THREADS=1`` for that).
The table of benchmarks/bench_speed.py has the wall-time row with default threads.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_host.py

Before and after, interleaved (``--against`` another version's ``src``): the two
versions run alternately in fresh processes, with 1 and with 2 threads, ``--repeats``
times each; the table gives the medians over every timed round::

    mkdir /tmp/before && git archive <commit> src | tar -x -C /tmp/before
    python benchmarks/bench_host.py --against /tmp/before/src --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_unetpp.config import DataConfig, PredictConfig
from napari_unetpp.inference import predict_array
from napari_unetpp.model import UNetPlusPlus

# Own copies of bench_speed's free network and image (a few lines), so that this script
# also runs against older versions of the package, for before/after comparisons.
PAPER_WIDTHS = (32, 64, 128, 256, 512)
MPX = 4 * 1024 * 1024 / 1e6  # the stack: 4 slices of 1024 x 1024


class FreeUNet(UNetPlusPlus):
    """A UNet++ whose forward costs nothing (zeros)."""

    def forward(self, x: torch.Tensor, depths=None) -> dict[int, torch.Tensor]:  # type: ignore
        wanted = self._check_depths(depths)
        zeros = x.new_zeros((x.shape[0], self.config.num_classes, *x.shape[2:]))
        return {d: zeros for d in wanted}


def test_image(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)


def measure(rounds: int = 5) -> dict[str, list[tuple[float, float]]]:
    """(CPU, wall) seconds of each timed round, all heads and one head alternately."""
    stack = np.stack([test_image(1024)] * 4)
    net = FreeUNet(widths=PAPER_WIDTHS, depth=4).eval()
    config = PredictConfig(device="cpu", tile_size=(256, 256), overlap=0.25, batch_size=4)
    cases = {"all heads": config, "one head": config.replace(depths=(4,))}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for k in range(rounds + 1):  # the first round warms up
        for name, cfg in cases.items():
            cpu, wall = time.process_time(), time.perf_counter()
            predict_array(net, stack, cfg, DataConfig())
            if k:
                times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    return times


def main(rounds: int = 5) -> None:
    print("| free predictor, 4 x 1024x1024 | Mpx/s (CPU time) | Mpx/s (wall) |")
    print("|---|---|---|")
    for name, values in measure(rounds).items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        print(f"| {name} | {MPX / cpu:.1f} | {MPX / wall:.1f} |")


def against(old_src: str, repeats: int, rounds: int) -> None:
    """This checkout and ``old_src`` alternately, each in fresh processes, 1 and 2 threads."""
    trees = {"before": old_src, "after": str(Path(__file__).resolve().parents[1] / "src")}
    runs: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for threads in (1, 2):
            for tree, src in trees.items():
                env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS=str(threads))
                out = subprocess.run(
                    [sys.executable, __file__, "--json", "--rounds", str(rounds)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                for case, values in json.loads(out.splitlines()[-1]).items():
                    runs.setdefault((case, threads, tree), []).extend(map(tuple, values))
    print("| free predictor | threads | before: Mpx/s CPU, wall | after: Mpx/s CPU, wall |")
    print("|---|---|---|---|")
    for case in ("all heads", "one head"):
        for threads in (1, 2):
            cells = []
            for tree in trees:
                values = runs[(case, threads, tree)]
                cpu = statistics.median(v[0] for v in values)
                wall = statistics.median(v[1] for v in values)
                cells.append(f"{MPX / cpu:.1f}, {MPX / wall:.1f}")
            print(f"| {case} | {threads} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per process")
    parser.add_argument("--json", action="store_true", help="raw (CPU, wall) seconds")
    parser.add_argument("--against", help="another checkout's src: interleaved before/after")
    parser.add_argument("--repeats", type=int, default=3, help="processes per version (--against)")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.rounds)))
    elif args.against:
        against(args.against, args.repeats, args.rounds)
    else:
        main(args.rounds)
