"""Memory: peak RSS of ``napari-unetpp predict --format zarr`` on one big lazy 2D plane.

Why: issue 18 found that a 20000 x 20000 zarr plane tiled within 0.5 GB and then
peaked at 4.96 GB in the labels stage, which loaded the whole plane. Labels are now
made in bands of rows (``postprocess.probabilities_to_labels``); the target is a
peak RSS of at most 1.5 GB for the whole command. Each size runs the real command
line in a child process (peak RSS is per process), on a uint8 zarr plane built by
tiling real EM slices chunk by chunk (never held whole), with a small random-weight
model: memory, not accuracy, is measured.

Run::

    python benchmarks/bench_big_plane.py --sizes 4000 20000
    python benchmarks/bench_big_plane.py --sizes 4000 --target instance
    python benchmarks/bench_big_plane.py --sizes 8000 20000 --stage labels
    python benchmarks/bench_big_plane.py --sizes 8000 --stage labels-whole
    python benchmarks/bench_big_plane.py --sizes 20000 --rows 3000   # 20000 wide, less time

Prints a markdown table and the command line.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_unetpp.datasets import shared_data_dir

WIDTHS = (4, 8)  # depth 1: the cheapest net, so the run measures the pipeline around it
CHUNK = 1024


def make_plane(path: Path, size: int, rows: int | None = None) -> None:
    """A ``rows x size`` (default square) uint8 zarr plane of real EM slices, chunk by chunk."""
    import tifffile
    import zarr

    em = tifffile.imread(shared_data_dir() / "em_isbi2012" / "image.tif")
    mosaic = np.block([[em[0], em[1]], [em[2], em[3]]])  # 1024 x 1024
    rows = rows or size
    plane = zarr.open_array(
        str(path), mode="w", shape=(rows, size), dtype="uint8", chunks=(CHUNK, CHUNK)
    )
    for y in range(0, rows, CHUNK):
        for x in range(0, size, CHUNK):
            block = mosaic[: min(CHUNK, rows - y), : min(CHUNK, size - x)]
            plane[y : y + block.shape[0], x : x + block.shape[1]] = block


def make_model(path: Path, target: str) -> None:
    import torch

    from napari_unetpp.checkpoint import CheckpointInfo, save_checkpoint
    from napari_unetpp.config import DataConfig, ModelConfig, TrainConfig
    from napari_unetpp.model import UNetPlusPlus

    torch.manual_seed(0)
    classes = 3 if target == "instance" else 1
    config = ModelConfig(widths=WIDTHS, depth=1, num_classes=classes)
    info = CheckpointInfo(
        model=config,
        data=DataConfig(target=target),
        train=TrainConfig(),
        metrics={},
        provenance={},
        card={},
        version="bench",
    )
    save_checkpoint(path, UNetPlusPlus.from_config(config).eval(), info)


def measure(size: int, target: str, tile: int, rows: int | None) -> dict[str, float]:
    """Build the plane and the model, run the CLI in a child, return its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_plane(folder / "plane.zarr", size, rows)
        make_model(folder / "model", target)
        command = [
            sys.executable,
            "-m",
            "napari_unetpp.cli",
            "predict",
            str(folder / "model"),
            str(folder / "plane.zarr"),
            "--out",
            str(folder / "out"),
            "--format",
            "zarr",
            "--device",
            "cpu",
            "--tile",
            str(tile),
            str(tile),
            "--quiet",
        ]
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1])
        labels = np.asarray(
            __import__("zarr").open_array(str(folder / "out" / "plane_labels.zarr"), mode="r")[
                :256, :256
            ]
        )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux
    return {"peak_mb": peak, "seconds": seconds, "labelled": float((labels > 0).mean())}


def measure_labels(size: int, target: str, whole: bool, rows: int | None) -> dict[str, float]:
    """The labels stage alone, on probabilities read lazily from a zarr plane (no network).

    ``whole``: label the plane in one piece (``band_rows`` = its height), as before bands.
    """
    import dask
    import dask.array as da
    import zarr

    from napari_unetpp.config import DataConfig, ModelConfig
    from napari_unetpp.postprocess import labels_shape, probabilities_to_labels

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_plane(folder / "plane.zarr", size, rows)
        plane = da.from_zarr(str(folder / "plane.zarr")).astype(np.float32) / np.float32(255)
        if target == "instance":  # background / interior / boundary from the EM intensities
            prob = da.stack([1 - plane, plane, (1 - plane) / 2])
            model, data = ModelConfig(num_classes=3), DataConfig(target="instance")
        else:
            prob, model, data = plane, ModelConfig(num_classes=1), DataConfig()
        out = zarr.open_array(
            str(folder / "labels.zarr"),
            mode="w",
            dtype="int32",
            shape=labels_shape(prob.shape, model),
            chunks=(CHUNK, CHUNK),
        )
        start = time.perf_counter()
        with dask.config.set(scheduler="synchronous"):
            probabilities_to_labels(
                prob, model, data, min_size=20, out=out, band_rows=(rows or size) if whole else None
            )
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak, "seconds": seconds, "labelled": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[4000, 20000])
    parser.add_argument("--target", choices=["semantic", "instance"], default="semantic")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument(
        "--stage",
        choices=["predict", "labels", "labels-whole"],
        default="predict",
        help="the whole `predict` command, or the labels "
        "stage alone (in bands, or the whole plane at once as before)",
    )
    parser.add_argument(
        "--rows",
        type=int,
        help="a plane this many rows tall (default: square; "
        "memory in bands does not grow with the height, time does)",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one size per process: peak RSS only ever grows
        if args.stage == "predict":
            r = measure(args.child, args.target, args.tile, args.rows)
        else:
            r = measure_labels(args.child, args.target, args.stage == "labels-whole", args.rows)
        print(f"{r['peak_mb']:.0f} {r['seconds']:.0f} {r['labelled']:.3f}")
        return
    print(f"command: `python benchmarks/bench_big_plane.py {' '.join(sys.argv[1:])}`")
    what = (
        f"`predict --format zarr`, model widths {list(WIDTHS)} depth 1, tile {args.tile}"
        if args.stage == "predict"
        else f"labels stage only ({'whole plane' if args.stage == 'labels-whole' else 'bands'})"
    )
    print(f"machine: {os.cpu_count()} CPU cores (shared); {what}; {args.target} labels")
    print()
    print("| plane (uint8 zarr) | float32 plane | peak RSS | time |")
    print("|---|---|---|---|")
    for size in args.sizes:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(size),
                "--target",
                args.target,
                "--tile",
                str(args.tile),
                "--stage",
                args.stage,
                *(["--rows", str(args.rows)] if args.rows else []),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            print(f"| {size} x {size} | failed: {proc.stderr.strip().splitlines()[-1]} |")
            continue
        peak, seconds, _ = proc.stdout.split()
        rows = args.rows or size
        print(
            f"| {rows} x {size} | {4 * rows * size / 2**30:.2f} GiB | {peak} MiB | {seconds} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
