"""Memory: peak RSS of tiled inference on a lazy dask stack, against the stack's size.

Why: DESIGN.md promises that memory is bounded by the tile batch, not by the
volume, when the output is streamed to zarr. Each measurement runs in its own
child process (peak RSS is per process and only grows) on a lazy stack built by
repeating the real EM slices; it is never loaded whole.

Run::

    python benchmarks/bench_memory.py --slices 8 32

Prints a markdown table and the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from napari_unetpp.datasets import shared_data_dir

WIDTHS = (4, 8, 16, 32, 64)  # memory, not accuracy, is measured: a small net keeps it quick


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(slices: int, mode: str, tile: int) -> dict[str, float]:
    """One measurement: predict on a lazy (slices, 512, 512) stack; report peak RSS."""
    import dask.array as da
    import torch

    from napari_unetpp.config import DataConfig, PredictConfig
    from napari_unetpp.events import drive
    from napari_unetpp.inference import predict
    from napari_unetpp.model import UNetPlusPlus

    torch.manual_seed(0)
    from napari_unetpp.files import read_array

    em = read_array(shared_data_dir() / "em_isbi2012" / "image.tif", lazy=True)  # memmap or dask
    one = da.asarray(em).rechunk((1, *em.shape[1:]))
    stack = da.concatenate([one] * (-(-slices // em.shape[0])))[:slices]
    model = UNetPlusPlus(widths=WIDTHS, depth=4).eval()
    config = PredictConfig(tile_size=(tile, tile), device="cpu")
    baseline = _rss_mb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probabilities.zarr" if mode == "zarr" else None
        result = drive(predict(model, stack, config, DataConfig(), out=out))
        shape = tuple(next(iter(result.values())).shape)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {
        "slices": slices,
        "baseline_mb": baseline,
        "peak_mb": peak,
        "seconds": seconds,
        "output_shape": list(shape),
        "heads": len(result),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", nargs="+", type=int, default=[8, 32])
    parser.add_argument(
        "--modes", nargs="+", default=["zarr", "memory"], choices=["zarr", "memory"]
    )
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--child", nargs=2, metavar=("SLICES", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.tile)))
        return

    import torch

    print(f"command: `python benchmarks/bench_memory.py {' '.join(sys.argv[1:])}`")
    print(
        f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, widths "
        f"{list(WIDTHS)}, depth 4, all 4 heads returned, tile {args.tile}"
    )
    print()
    print(
        "| slices (512x512) | input uint8 | input float32 | output, 4 heads float32 | "
        "output written to | peak RSS | RSS before predict | peak - before | time |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for slices in args.slices:
        for mode in args.modes:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(slices), mode, "--tile", str(args.tile)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                print(f"| {slices} | child failed: {proc.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            px = slices * 512 * 512
            print(
                f"| {slices} | {px / 2**20:.0f} MiB | {4 * px / 2**20:.0f} MiB | "
                f"{16 * px / 2**20:.0f} MiB | {'zarr (disk)' if mode == 'zarr' else 'memory'} "
                f"| {r['peak_mb']:.0f} MiB | {r['baseline_mb']:.0f} MiB | "
                f"{r['peak_mb'] - r['baseline_mb']:.0f} MiB | {r['seconds']:.0f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
