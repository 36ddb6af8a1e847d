"""Speed: training steps/s and tiled inference Mpx/s per depth (all heads vs pruned).

Why: the pruning slider promises that a shallower UNet++ is faster at a known cost
in accuracy; this script measures the "faster" part on the machine at hand, through
the same engine calls the widgets and the CLI make (``training.Trainer``,
``inference.predict``). Weights are random: speed does not depend on them.

Run (CPU, a few minutes on 2 cores)::

    python benchmarks/bench_speed.py --device cpu

Prints markdown tables (paste into docs/benchmarks.md) and the command line.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_unetpp.config import DataConfig, ModelConfig, PredictConfig, TrainConfig
from napari_unetpp.events import drive
from napari_unetpp.model import UNetPlusPlus

CPU_WIDTHS = (16, 32, 64, 128, 256)
PAPER_WIDTHS = (32, 64, 128, 256, 512)


def data_dir() -> Path:
    """The shared real data: $NAPARI_UNETPP_DATA, ../shared/data or /work/shared/data."""
    for candidate in (os.environ.get("NAPARI_UNETPP_DATA", ""),
                      Path(__file__).resolve().parents[2] / "shared" / "data",
                      "/work/shared/data"):
        if candidate and (Path(candidate) / "em_isbi2012").is_dir():
            return Path(candidate)
    sys.exit("EM data not found: set NAPARI_UNETPP_DATA")


def load_em() -> tuple[np.ndarray, np.ndarray]:
    root = data_dir() / "em_isbi2012"
    return tifffile.imread(root / "image.tif"), tifffile.imread(root / "membranes.tif")


def bench_training(widths: tuple[int, ...], device: str, steps: int, warmup: int,
                   patch: int, batch: int) -> float:
    """Steps per second of ``Trainer`` (2D, deep supervision at depth 4), after warm-up."""
    from napari_unetpp.training import Trainer

    image, labels = load_em()
    total = warmup + steps
    trainer = Trainer(
        ModelConfig(widths=widths, depth=4),
        TrainConfig(iterations=total, batch_size=batch, patch_size=(patch, patch),
                    validate_every=total + 1, validation_fraction=0.0, device=device),
        DataConfig(),
    )
    times: list[float] = []
    gen = trainer.run(list(image[:4]), list(labels[:4]))
    for event in gen:
        if event.kind == "step":
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            if len(times) == total:
                gen.close()  # skip the end-of-run evaluation: it is not a training step
                break
    return (len(times) - 1 - warmup) / (times[-1] - times[warmup]) if steps else float("nan")


def bench_inference(widths: tuple[int, ...], device: str, slices: int, tile: int,
                    repeats: int) -> list[dict[str, float]]:
    """Mpx/s of tiled inference on 512x512 EM slices: all heads at once, then pruned L1..L4."""
    from napari_unetpp.inference import predict

    image = load_em()[0][:slices]
    model = UNetPlusPlus(widths=widths, depth=4).eval()
    megapixels = image.size / 1e6
    data = DataConfig()
    rows = []
    for depth in (None, 1, 2, 3, 4):
        config = PredictConfig(tile_size=(tile, tile), device=device, pruned_depth=depth)
        drive(predict(model, image[:1], config, data))  # warm-up: allocator, kernels, folding
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            drive(predict(model, image, config, data))
            best = min(best, time.perf_counter() - start)
        rows.append({"depth": depth or 0, "seconds": best, "mpx_s": megapixels / best,
                     "parameters": model.num_parameters(depth)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--slices", type=int, default=2, help="512x512 EM slices to segment")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="inference runs (best kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    command = "python benchmarks/bench_speed.py " + " ".join(sys.argv[1:])
    print(f"command: `{command.strip()}`")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    print()
    widths_sets = {"CPU widths 16-256": CPU_WIDTHS, "paper widths 32-512": PAPER_WIDTHS}
    if not args.skip_training:
        print(f"Training, 2D, depth 4, patch {args.patch}x{args.patch}, batch {args.batch} "
              f"({args.steps} timed steps after {args.warmup} warm-up)")
        print()
        print("| widths | parameters | steps/s | s/step |")
        print("|---|---|---|---|")
        for name, widths in widths_sets.items():
            rate = bench_training(widths, args.device, args.steps, args.warmup, args.patch,
                                  args.batch)
            params = UNetPlusPlus(widths=widths, depth=4).num_parameters()
            print(f"| {name} | {params / 1e6:.2f}M | {rate:.3f} | {1 / rate:.2f} |", flush=True)
        print()
    if args.skip_inference:
        return
    print(f"Inference, {args.slices} EM slices of 512x512, tile {args.tile}, overlap 0.25, "
          "Gaussian blending, batch 4 (best of "
          f"{args.repeats})")
    for name, widths in widths_sets.items():
        rows = bench_inference(widths, args.device, args.slices, args.tile, args.repeats)
        full = rows[0]
        print()
        print(f"{name}:")
        print()
        print("| network | parameters | Mpx/s | speed-up vs all heads (L4) |")
        print("|---|---|---|---|")
        for row in rows:
            label = "all heads L1-L4, one pass" if row["depth"] == 0 else f"pruned L{row['depth']}"
            print(f"| {label} | {row['parameters'] / 1e6:.2f}M | {row['mpx_s']:.3f} | "
                  f"{full['seconds'] / row['seconds']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
