"""Host pipeline alone: ``predict`` with a network that costs nothing, in wall and CPU time.

Why CPU time too: on a shared machine the wall time of a single-threaded run depends on
the other jobs; the process's CPU time does much less, so two versions of the pipeline
can be compared on a busy machine (run it with ``OMP_NUM_THREADS=1`` for that).
The table of benchmarks/bench_speed.py has the wall-time row with default threads.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_host.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from napari_unetpp.config import DataConfig, PredictConfig
from napari_unetpp.inference import predict_array
from napari_unetpp.model import UNetPlusPlus

# Own copies of bench_speed's free network and image (a few lines), so that this script
# also runs against older versions of the package, for before/after comparisons.
PAPER_WIDTHS = (32, 64, 128, 256, 512)


class FreeUNet(UNetPlusPlus):
    """A UNet++ whose forward costs nothing (zeros)."""

    def forward(self, x: torch.Tensor, depths=None) -> dict[int, torch.Tensor]:  # type: ignore
        wanted = self._check_depths(depths)
        zeros = x.new_zeros((x.shape[0], self.config.num_classes, *x.shape[2:]))
        return {d: zeros for d in wanted}


def test_image(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)


def main(rounds: int = 5) -> None:
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
    mpx = stack.size / 1e6
    print("| free predictor, 4 x 1024x1024 | Mpx/s (CPU time) | Mpx/s (wall) |")
    print("|---|---|---|")
    for name, values in times.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        print(f"| {name} | {mpx / cpu:.1f} | {mpx / wall:.1f} |")


if __name__ == "__main__":
    main()
