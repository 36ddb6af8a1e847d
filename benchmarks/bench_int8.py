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

``--predict``: instead, the landed opt-in end to end: ``predict_array`` with
``PredictConfig(int8=True)`` (calibrated on each slice's own first tile batch) against
float32 (``mixed_precision=False``) on slices 15-19, all four heads in one pass, each
slice's two runs interleaved; per head the membrane IoU and the share of equal labels.
The int8 copy is cached per calibration batch, so only the first round calibrates; the
first round's times are given apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import load_em  # noqa: E402

from napari_unetpp import zoo  # noqa: E402
from napari_unetpp.model import UNetPlusPlus  # noqa: E402
from napari_unetpp.normalization import normalize  # noqa: E402
from napari_unetpp.predictor import prepare_for_inference  # noqa: E402
from napari_unetpp.quantize import int8_network  # noqa: E402
from napari_unetpp.tiling import sliding_window  # noqa: E402

PAPER_WIDTHS = (32, 64, 128, 256, 512)
TILE, BATCH, OVERLAP = 256, 4, 0.25


def int8_logits(
    model: UNetPlusPlus, depth: int, calibration: torch.Tensor, observer: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Head ``depth`` of the int8 copy ``predict --int8`` runs (``quantize.int8_network``),
    its activation ranges observed on ``calibration``."""
    net = int8_network(model, (depth,), calibration, observer, BATCH)
    return lambda x: net(x, (depth,))[depth]


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
        minmax = int8_logits(net, depth, calibration, "minmax")
        default = int8_logits(net, depth, calibration, "histogram")
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
        iou = membrane_iou(
            int8_logits(model, depth, calibration, observer), image, truth, info.data
        )
        print(f"| int8 ({observer}) | {iou:.4f} | {iou - reference:+.4f} |")
    # what a per-image calibration would do: ranges from the segmented slices' own tiles
    own = em_tiles(image, zoo_test_slices(), info.data, 16)
    iou = membrane_iou(int8_logits(model, depth, own, "minmax"), image, truth, info.data)
    print(f"| int8 (min/max), calibrated on slices 15-19 | {iou:.4f} | {iou - reference:+.4f} |")


def end_to_end(rounds: int) -> None:
    """``predict`` in float32 and with ``int8=True`` on slices 15-19, interleaved."""
    from napari_unetpp.config import PredictConfig
    from napari_unetpp.inference import predict_array

    em = load_em()
    if em is None:
        raise SystemExit("set NAPARI_UNETPP_DATA to the shared data folder (EM slices)")
    image, truth = em
    model, info = zoo.load_pretrained("em")
    configs = {
        q: PredictConfig(device="cpu", mixed_precision=False, int8=q, overlap=OVERLAP)
        for q in (False, True)
    }
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    seconds: dict[bool, list[float]] = {False: [], True: []}
    first: dict[bool, float] = {False: 0.0, True: 0.0}
    probs: dict[bool, list] = {False: [], True: []}
    for k in range(rounds + 1):
        for z in zoo_test_slices():
            for q, config in configs.items():
                start = clock()
                result = predict_array(model, image[z], config, info.data)
                spent = clock() - start
                if k == 0:
                    first[q] += spent
                    probs[q].append(result)
                else:
                    seconds[q].append(spent)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), predict_array on "
        f"slices 15-19 (512 x 512), tiles {TILE}, batch {BATCH}, all heads in one pass"
    )
    print()
    per_slice = {q: statistics.median(v) if v else float("nan") for q, v in seconds.items()}
    print("| | float32 | int8 | speed-up |")
    print("|---|---|---|---|")
    print(
        f"| 5 slices, first round (int8 calibrates) s | {first[False]:.2f} | {first[True]:.2f} "
        f"| {first[False] / first[True]:.2f}x |"
    )
    print(
        f"| per slice, median of {rounds} more round(s) s | {per_slice[False]:.3f} | "
        f"{per_slice[True]:.3f} | {per_slice[False] / per_slice[True]:.2f}x |"
    )
    print()
    print("| head | membrane IoU float32 | int8 | change | equal labels |")
    print("|---|---|---|---|---|")
    masks = [truth[z] > 0 for z in zoo_test_slices()]
    for d in model.head_depths:
        labels = {q: [r[d] > 0.5 for r in probs[q]] for q in probs}
        iou = {
            q: sum(int((p & m).sum()) for p, m in zip(v, masks, strict=True))
            / sum(int((p | m).sum()) for p, m in zip(v, masks, strict=True))
            for q, v in labels.items()
        }
        equal = np.mean([(a == b).mean() for a, b in zip(labels[False], labels[True], strict=True)])
        print(
            f"| L{d} | {iou[False]:.4f} | {iou[True]:.4f} | {iou[True] - iou[False]:+.4f} | "
            f"{100 * equal:.2f} % |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--depth", type=int, default=4, help="the head to run (1-4)")
    parser.add_argument("--skip-speed", action="store_true", help="membrane IoU only")
    parser.add_argument(
        "--predict", action="store_true", help="predict_array end to end, int8=True vs float32"
    )
    args = parser.parse_args()
    if args.predict:
        end_to_end(args.rounds)
    else:
        main(args.rounds, args.depth, not args.skip_speed)
