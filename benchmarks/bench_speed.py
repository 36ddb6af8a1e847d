"""Speed, one table: tiled inference per depth vs MONAI, FLOPs, roofline, host pipeline, training.

Why one run: every ratio in the table (ours vs MONAI, pruned vs full, achieved vs the
machine's matmul peak) compares numbers taken minutes apart in one process, with the
timed cases interleaved (A, B, A, B, ... and the median of each), so a busy machine
slows all of them alike and the ratios hold even when the absolute times do not.

Rows (2D, paper widths 32-512 unless said, random weights: speed does not depend on them):
- matmul peak: the median GFLOP/s of ``torch.mm`` (2048x2048 on a CPU, 8192x8192 on a GPU;
  fp32, and bf16 where the networks run in bf16 as ``predict`` runs them by default: a GPU,
  or a CPU with bf16 instructions; into a kept output), timed in turn with the networks
  (so under the same load), the roofline in each precision;
- raw forward Ld: the prepared pruned network (BatchNorm folded, channels_last) on a
  batch of 4 tiles of 256x256, no tiling: GFLOP/s and the fraction of the matmul peak;
- tiled Ld / all heads: ``inference.predict`` on a 1024x1024 image (tile 256, overlap
  0.25, Gaussian blending, batch 4), pruned L1..L4 and all four heads in one pass
  (``--size``, ``--tile``, ``--batch-size`` change the image, tiles and batch: a GPU wants
  bigger batches than the CPU's 4);
- MONAI: ``BasicUNetPlusPlus`` (same widths, batch norm, deep supervision: 4 heads) with
  ``sliding_window_inference`` (same tile, overlap, blending, batch), as a user runs it
  (float32), and under torch's CPU bf16 autocast where the CPU has bf16 instructions;
  ours also in float32 (``mixed_precision=False``) beside it;
- host pipeline: ``predict`` with a UNet++ whose forward returns zeros (the network costs
  nothing), all heads and one head, on a stack of 4 such images: what the host side can feed;
- training: ``training.Trainer`` steps/s at batch 8, 256x256, CPU widths and paper widths.

GFLOP/Mpx is exact (``pruning.gflop_per_mpx``, torch.utils.flop_counter). Needs
``pip install -e .[bench]`` (MONAI) for the MONAI row (skipped with a note otherwise).

Run (about 6 minutes on an idle 2-core CPU; ``--quick``: a 512x512 image, one round)::

    python benchmarks/bench_speed.py --full
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from napari_unetpp.config import DataConfig, ModelConfig, PredictConfig, TrainConfig
from napari_unetpp.datasets import shared_data_dir
from napari_unetpp.devices import autocast_dtype, inference_dtype, memory_format
from napari_unetpp.inference import predict_array
from napari_unetpp.model import UNetPlusPlus
from napari_unetpp.predictor import inference_autocast, network_dtype, prepare_for_inference
from napari_unetpp.pruning import gflop_per_mpx
from napari_unetpp.tiling import tile_grid

CPU_WIDTHS = (16, 32, 64, 128, 256)
PAPER_WIDTHS = (32, 64, 128, 256, 512)
DEPTHS = (1, 2, 3, 4)


def load_em() -> tuple[np.ndarray, np.ndarray] | None:
    root = shared_data_dir()
    if root is None:
        return None
    import tifffile

    root = root / "em_isbi2012"
    return tifffile.imread(root / "image.tif"), tifffile.imread(root / "membranes.tif")


def test_image(size: int) -> np.ndarray:
    """A size x size uint8 EM image (ISBI 2012 slices side by side), or noise without data."""
    em = load_em()
    if em is None:
        return np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    reps = -(-size // em[0].shape[1])
    return np.tile(em[0][0], (reps, reps))[:size, :size]


def progress(message: str) -> None:
    """What is running now, on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    cases: dict[str, Callable[[], object]], rounds: int, device: str
) -> dict[str, float]:
    """Median seconds of each case, timed in turn (A, B, A, B, ...) after one warm-up each."""
    for name, run in cases.items():
        progress(f"warm-up {name}")
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for k in range(rounds):
        for name, run in cases.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - start)
            progress(f"round {k + 1}/{rounds} {name}: {times[name][-1]:.1f} s")
    return {name: statistics.median(t) for name, t in times.items()}


class FreeUNet(UNetPlusPlus):
    """A UNet++ whose forward costs nothing (zeros): the tiled pipeline is all that is timed."""

    def forward(self, x: torch.Tensor, depths=None) -> dict[int, torch.Tensor]:  # type: ignore
        wanted = self._check_depths(depths)
        zeros = x.new_zeros((x.shape[0], self.config.num_classes, *x.shape[2:]))
        return {d: zeros for d in wanted}


def monai_cases(
    image: np.ndarray, widths: tuple[int, ...], tile: int, device: str, batch: int = 4
) -> tuple[dict[str, Callable[[], object]], float | None, str]:
    """MONAI's BasicUNetPlusPlus + sliding_window_inference, or why it is not there."""
    try:
        from monai.inferers import sliding_window_inference
        from monai.networks.nets import BasicUNetPlusPlus
    except ImportError:
        return {}, None, "MONAI not installed (pip install -e .[bench])"
    net = (
        BasicUNetPlusPlus(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            features=(*widths, widths[0]),
            deep_supervision=True,
            norm=("batch", {}),
        )
        .eval()
        .to(device)
    )
    x = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None].to(device)

    def run() -> object:
        with torch.inference_mode():
            return sliding_window_inference(
                x, (tile, tile), batch, net, overlap=0.25, mode="gaussian"
            )

    def run_bf16() -> object:  # MONAI under torch's CPU autocast: its best on this CPU
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run()

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 1, tile, tile, device=device))
    gflop = counter.get_total_flops() / (tile * tile / 1e6) / 1e9
    import monai

    cases = {"monai": run}
    if device == "cpu" and inference_dtype(device) == torch.bfloat16:
        cases["monai bf16"] = run_bf16
    return cases, gflop, f"MONAI {monai.__version__}"


def bench_inference(
    size: int, tile: int, rounds: int, device: str, batch: int = 4
) -> tuple[dict[str, float], dict[str, float], dict[str, float], str]:
    """Seconds per Mpx per case (interleaved medians), GFLOP/Mpx per case, matmul peaks."""
    image = test_image(size)
    torch.manual_seed(0)
    model = UNetPlusPlus(widths=PAPER_WIDTHS, depth=4).eval()
    data = DataConfig()
    config = PredictConfig(tile_size=(tile, tile), overlap=0.25, batch_size=batch, device=device)
    # the network's arithmetic as predict runs it: bf16 on a GPU (autocast) and on a CPU
    # with bf16 instructions (a bf16 copy), else fp32; the matmul peak in the same precision
    # (and fp32's too), into a kept output, so the peak is not an allocation's page faults
    low = autocast_dtype(device) or inference_dtype(device)
    cases: dict[str, Callable[[], object]] = {}
    for dtype in dict.fromkeys([torch.float32, low]):
        cases[f"matmul {dtype}"] = matmul_case(device, dtype)
    batch_x = torch.rand(batch, 1, tile, tile, device=device).contiguous(
        memory_format=memory_format(2, torch.device(device))
    )
    for d in DEPTHS:
        pruned = prepare_for_inference(model.prune(d), device, inference_dtype(device))
        x = batch_x.to(network_dtype(pruned))

        def raw(net: UNetPlusPlus = pruned, x: torch.Tensor = x) -> object:
            with torch.inference_mode(), inference_autocast(net, torch.device(device), True):
                return net(x)

        cases[f"raw L{d}"] = raw
    for d in DEPTHS:
        cases[f"tiled L{d}"] = lambda d=d: predict_array(
            model, image, config.replace(pruned_depth=d), data
        )
    cases["tiled all"] = lambda: predict_array(model, image, config, data)
    if low != torch.float32:
        cases["tiled all fp32"] = lambda: predict_array(
            model, image, config.replace(mixed_precision=False), data
        )
    monai, monai_gflop, monai_note = monai_cases(image, PAPER_WIDTHS, tile, device, batch)
    cases.update(monai)
    seconds = interleaved(cases, rounds, device)
    peaks = {
        name: 4 * 2 * MATMUL_N[device != "cpu"] ** 3 / seconds.pop(name) / 1e9
        for name in list(seconds)
        if name.startswith("matmul")
    }
    # tiled rows: GFLOP per Mpx of *image*, the overlapping tiles' extra pixels included
    grid = tile_grid(image.shape, (tile, tile), 0.25, 16)
    overlap = len(grid) * tile * tile / image.size
    gflop = {f"raw L{d}": gflop_per_mpx(model, d) for d in DEPTHS}
    gflop.update({f"tiled L{d}": overlap * gflop_per_mpx(model, d) for d in DEPTHS})
    gflop["tiled all"] = gflop["tiled L4"]  # all heads: the L4 network, shared nodes once
    gflop["tiled all fp32"] = gflop["tiled L4"]
    if monai_gflop is not None:  # MONAI places the same 192-pixel steps here
        gflop["monai"] = gflop["monai bf16"] = overlap * monai_gflop
    mpx = {n: (batch_x.numel() if n.startswith("raw") else image.size) / 1e6 for n in seconds}
    per_mpx = {name: s / mpx[name] for name, s in seconds.items()}
    return per_mpx, gflop, peaks, monai_note


#: Matmul sizes of the peak: 2048 on a CPU, 8192 on a GPU.
MATMUL_N = (2048, 8192)


def matmul_case(device: str, dtype: torch.dtype) -> Callable[[], object]:
    """Four ``torch.mm`` of ``MATMUL_N`` square matrices into a kept output."""
    n = MATMUL_N[device != "cpu"]
    a, b = (torch.rand(n, n, device=device, dtype=dtype) for _ in range(2))
    product = torch.empty(n, n, device=device, dtype=dtype)
    return lambda: [torch.mm(a, b, out=product) for _ in range(4)]


def bench_host(size: int, rounds: int, device: str, batch: int = 4) -> dict[str, float]:
    """Mpx/s of ``predict`` when the network costs nothing: all heads and one head."""
    stack = np.stack([test_image(size)] * 4)
    net = FreeUNet(widths=PAPER_WIDTHS, depth=4).eval()
    data = DataConfig()
    config = PredictConfig(tile_size=(256, 256), overlap=0.25, batch_size=batch, device=device)
    seconds = interleaved(
        {
            "all heads": lambda: predict_array(net, stack, config, data),
            "one head": lambda: predict_array(net, stack, config.replace(depths=(4,)), data),
        },
        rounds,
        device,
    )
    return {name: stack.size / 1e6 / s for name, s in seconds.items()}


def bench_training(
    widths: tuple[int, ...], device: str, steps: int, warmup: int, patch: int = 256, batch: int = 8
) -> float:
    """Steps per second of ``Trainer`` (2D, deep supervision at depth 4), after warm-up."""
    from napari_unetpp.training import Trainer

    em = load_em()
    if em is None:
        rng = np.random.default_rng(0)
        em = (
            rng.integers(0, 256, (4, 512, 512), dtype=np.uint8),
            (rng.random((4, 512, 512)) > 0.5).astype(np.uint8),
        )
    image, labels = em
    total = warmup + steps
    trainer = Trainer(
        ModelConfig(widths=widths, depth=4),
        TrainConfig(
            iterations=total,
            batch_size=batch,
            patch_size=(patch, patch),
            validate_every=total + 1,
            validation_fraction=0.0,
            device=device,
        ),
        DataConfig(),
    )
    times: list[float] = []
    progress(f"training widths {widths}")
    gen = trainer.run(list(image[:4]), list(labels[:4]))
    for event in gen:
        if event.kind == "step":
            sync(device)
            times.append(time.perf_counter())
            if len(times) == total:
                gen.close()  # skip the end-of-run evaluation: it is not a training step
                break
    return (len(times) - 1 - warmup) / (times[-1] - times[warmup])


def row(
    name: str, s_per_mpx: float | None, gflop: float | None, peak: float, ratio: str = ""
) -> str:
    mpx_s = f"{1 / s_per_mpx:.3f}" if s_per_mpx else ""
    s = f"{s_per_mpx:.3f}" if s_per_mpx else ""
    g = f"{gflop:.1f}" if gflop else ""
    rate = gflop / s_per_mpx if gflop and s_per_mpx else None
    r = f"{rate:.1f}" if rate else ""
    frac = f"{100 * rate / peak:.0f} %" if rate else ""
    return f"| {name} | {s} | {mpx_s} | {g} | {r} | {frac} | {ratio} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--full",
        action="store_true",
        help="1024x1024 image, 2 interleaved rounds, 2 training steps (default)",
    )
    mode.add_argument(
        "--quick", action="store_true", help="512x512 image, 1 round, 1 training step (a smoke run)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--size", type=int, default=0, help="image size (overrides the mode's)")
    parser.add_argument("--tile", type=int, default=256, help="tile size of the tiled rows")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="tiles per forward pass (a GPU wants 16+)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size, rounds, steps = (512, 1, 1) if args.quick else (1024, 2, 2)
    size = args.size or size
    tile, batch = args.tile, args.batch_size
    command = "python benchmarks/bench_speed.py " + " ".join(sys.argv[1:])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"command: `{command.strip()}`")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        f"(load average {load:.1f} at start), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
    )
    started = time.perf_counter()
    per_mpx, gflop, peaks, monai_note = bench_inference(size, tile, rounds, args.device, batch)
    peak = list(peaks.values())[-1]  # in the networks' precision, timed among them
    fp32_peak = peaks["matmul torch.float32"]
    host = bench_host(size, rounds, args.device, batch)
    training = (
        {}
        if args.skip_training
        else {
            name: bench_training(widths, args.device, steps, 1)
            for name, widths in (
                ("CPU widths 16-256", CPU_WIDTHS),
                ("paper widths 32-512", PAPER_WIDTHS),
            )
        }
    )
    print(
        f"image {size}x{size} (EM), tile {tile}, overlap 0.25, Gaussian, batch {batch}; "
        f"{rounds} interleaved round(s), medians; {monai_note}; "
        f"took {time.perf_counter() - started:.0f} s. GFLOP/Mpx of tiled rows counts the "
        "pixels the overlapping tiles compute (per Mpx of image); raw rows per Mpx of tiles."
    )
    print()
    print("| measurement | s/Mpx | Mpx/s | GFLOP/Mpx | GFLOP/s | of matmul peak | ratio |")
    print("|---|---|---|---|---|---|---|")
    n = MATMUL_N[args.device != "cpu"]
    for name, rate in peaks.items():
        dtype = name.removeprefix("matmul torch.")
        print(f"| {dtype} matmul {n}x{n} (peak, interleaved) | | | | {rate:.1f} | 100 % | |")
    precision = str(inference_dtype(args.device)).removeprefix("torch.")
    if args.device != "cpu":
        precision = str(autocast_dtype(args.device)).removeprefix("torch.")
    for d in DEPTHS:
        print(
            row(
                f"ours raw forward L{d} ({batch}x{tile}x{tile}, {precision})",
                per_mpx[f"raw L{d}"],
                gflop[f"raw L{d}"],
                peak,
                f"L4/L{d} {per_mpx['raw L4'] / per_mpx[f'raw L{d}']:.2f}x",
            )
        )
    for d in DEPTHS:
        print(
            row(
                f"ours tiled, pruned L{d} ({precision})",
                per_mpx[f"tiled L{d}"],
                gflop[f"tiled L{d}"],
                peak,
                f"L4/L{d} {per_mpx['tiled L4'] / per_mpx[f'tiled L{d}']:.2f}x "
                f"(FLOPs {gflop['tiled L4'] / gflop[f'tiled L{d}']:.2f}x)",
            )
        )
    monai = per_mpx.get("monai")
    vs = f"{monai / per_mpx['tiled all']:.2f}x faster than MONAI" if monai else ""
    name = f"ours tiled, all heads L1-L4 ({precision})"
    print(row(name, per_mpx["tiled all"], gflop["tiled all"], peak, vs))
    if "tiled all fp32" in per_mpx:
        vs = f"{monai / per_mpx['tiled all fp32']:.2f}x faster than MONAI" if monai else ""
        name = "ours tiled, all heads L1-L4 (float32, --full-precision)"
        print(row(name, per_mpx["tiled all fp32"], gflop["tiled all"], fp32_peak, vs))
    if monai:
        name = "MONAI BasicUNet++ tiled, 4 heads (float32, as a user runs it)"
        print(row(name, monai, gflop.get("monai"), fp32_peak, "1.00x"))
    if "monai bf16" in per_mpx:
        vs = f"ours {per_mpx['monai bf16'] / per_mpx['tiled all']:.2f}x faster"
        name = "MONAI BasicUNet++ tiled, 4 heads (CPU bf16 autocast)"
        print(row(name, per_mpx["monai bf16"], gflop.get("monai"), peak, vs))
    for name, rate in host.items():
        print(f"| host pipeline, free predictor, {name} | {1 / rate:.4f} | {rate:.1f} | | | | |")
    for name, rate in training.items():
        mpx = 8 * 256 * 256 / 1e6
        print(
            f"| training {name}, batch 8, 256x256 | {1 / (rate * mpx):.2f} | "
            f"{rate * mpx:.4f} | | | | {rate:.3f} steps/s |"
        )


if __name__ == "__main__":
    main()
