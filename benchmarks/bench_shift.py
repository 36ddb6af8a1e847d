"""Shift benchmark: the shipped models on shifted copies of their held-back splits.

Why: a model that scores well on its own held-back split can fail on a second
microscope or scanner. This builds shifted copies of the held-back data (nuclei
rescaled 0.5x and 2x, darkened, blurred; CT resampled to 1 mm in-plane; EM
upsampled 2x) and scores every depth with and without the scale correction
(``PredictConfig.rescale="auto"`` for nuclei, ``pixel_size`` for CT and EM).

Run (CPU, a few minutes on 2 cores with the defaults)::

    PYTHONPATH=src python benchmarks/bench_shift.py --nuclei 8 --nuclei-crop 256 --em-crop 256

Scores are those of the model cards (``scripts/train_zoo.py``): nuclei foreground
IoU over all pixels and DSB AP@0.5 per image, CT per-organ Dice over the slices,
EM membrane IoU. Shifted copies are scored on their own (shifted) grid, against
labels resampled by nearest neighbour.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import zoo_data as D  # noqa: E402  (the zoo's data loaders)
import zoo_specs as Z  # noqa: E402  (the zoo's held-back splits and card scores)

from napari_unetpp import metrics as M  # noqa: E402
from napari_unetpp import scale as S  # noqa: E402
from napari_unetpp import zoo  # noqa: E402
from napari_unetpp.config import PredictConfig  # noqa: E402
from napari_unetpp.inference import predict_array  # noqa: E402
from napari_unetpp.postprocess import label_threshold, probabilities_to_labels  # noqa: E402

Pair = tuple[np.ndarray, np.ndarray]


def zoom_pair(image: np.ndarray, labels: np.ndarray, factor: float) -> Pair:
    """Image resampled linearly (smoothed first when shrinking, as a coarser camera would
    integrate), labels by nearest neighbour."""
    axes = (image.ndim - 2, image.ndim - 1)
    small = S.resample(image, (factor, factor), axes, order=1, anti_aliasing=factor < 1)
    return small, S.resample_to(labels, small.shape, axes, order=0)


def darken(image: np.ndarray) -> np.ndarray:
    """A dim acquisition: a fifth of the signal over a dark offset, 8 bit (quantised)."""
    return np.clip(np.round(image.astype(np.float32) * 0.2 + 2), 0, 255).astype(np.uint8)


def blur(image: np.ndarray) -> np.ndarray:
    """A defocused acquisition: Gaussian blur, sigma 2 px."""
    return ndimage.gaussian_filter(image.astype(np.float32), 2.0)


#: The labels' threshold (``--threshold``): None = each model's own (``ModelConfig.threshold``).
THRESHOLD: float | None = None


def predict_all(model: Any, image: np.ndarray, data: Any, **scale: Any) -> tuple[dict, Any]:
    config = PredictConfig(device="cpu", mixed_precision=False, threshold=THRESHOLD, **scale)
    result = predict_array(model, image, config, data)
    return dict(result), result.scale


# --------------------------------------------------------------------------- nuclei


def centre_crop(pair: Pair, side: int) -> Pair:
    """At most ``side`` x ``side`` from the centre (2x copies of 1040x1388 images are slow)."""
    image, labels = pair
    y0, x0 = [max(0, (n - side) // 2) for n in labels.shape]
    window = (slice(y0, y0 + side), slice(x0, x0 + side))
    return image[window], labels[window]


def nuclei_rows(count: int, side: int, only: list[str] | None = None) -> list[dict[str, Any]]:
    model, info = zoo.load_pretrained("nuclei")
    ids = zoo.NUCLEI_HELD_OUT_IDS
    picked = [ids[int(k)] for k in np.linspace(0, len(ids) - 1, count)]  # all size groups
    test = [centre_crop(D.load_nucleus(i), side) for i in picked]
    shifts = {
        "native": lambda p: p,
        "0.5x": lambda p: zoom_pair(*p, 0.5),
        "2x": lambda p: zoom_pair(*p, 2.0),
        "dark": lambda p: (darken(p[0]), p[1]),
        "blur": lambda p: (blur(p[0]), p[1]),
    }
    rows = []
    for shift, make in shifts.items():
        if only and shift not in only:
            continue
        pairs = [make(p) for p in test]
        for mode in (None, "auto"):
            t0 = time.perf_counter()
            per_depth: dict[int, list[np.ndarray]] = {}
            zooms = []
            for image, _ in pairs:
                probs, used = predict_all(model, image, info.data, rescale=mode)
                zooms.append(used["zoom"][0] if used else 1.0)
                for d, prob in probs.items():
                    labels = probabilities_to_labels(prob, model.config, info.data, THRESHOLD)
                    per_depth.setdefault(d, []).append(np.asarray(labels))
            scores = {d: Z._nuclei_score(out, pairs) for d, out in per_depth.items()}
            rows.append(
                {
                    "model": "nuclei",
                    "shift": shift,
                    "correction": mode or "-",
                    "zoom": f"{np.median(zooms):.2f}",
                    **{f"L{d}": s["iou"] for d, s in scores.items()},
                    "ap50@L4": scores[max(scores)]["ap50"],
                    "s": time.perf_counter() - t0,
                }
            )
            _print_row(rows[-1])
    return rows


# --------------------------------------------------------------------------- CT


def ct_rows() -> list[dict[str, Any]]:
    model, info = zoo.load_pretrained("ct")
    test = Z._ct_test()
    native = (np.stack([i for i, _ in test]), np.stack([t for _, t in test]))
    model_mm = model.config.pixel_size[-1] if model.config.pixel_size else 3.0
    one_mm = zoom_pair(*native, model_mm / 1.0)
    rows = []
    for shift, (image, truth), sizes in (
        ("native 3 mm", native, (None,)),
        ("1 mm in-plane", one_mm, (None, (1.0, 1.0))),
    ):
        for size in sizes:
            t0 = time.perf_counter()
            probs, used = predict_all(model, image, info.data, pixel_size=size)
            row = {
                "model": "ct",
                "shift": shift,
                "correction": "-" if size is None else "pixel_size 1 mm",
                "zoom": f"{used['zoom'][0]:.2f}" if used else "1.00",
            }
            for d, prob in sorted(probs.items()):
                row[f"L{d}"] = M.dice(prob.argmax(0) == 1, truth == 1)  # class 1 = liver
            best = max(probs)
            row["mean organ Dice@L4"] = Z._ct_score(
                list(probs[best].argmax(0)), list(zip(image, truth, strict=True))
            )["dice"]
            row["s"] = time.perf_counter() - t0
            rows.append(row)
            _print_row(row)
    return rows


# --------------------------------------------------------------------------- EM


def em_rows(crop: int, slices: int) -> list[dict[str, Any]]:
    model, info = zoo.load_pretrained("em")
    test = Z._em_test()[:slices]
    native = (
        np.stack([i[:crop, :crop] for i, _ in test]),
        np.stack([t[:crop, :crop] for _, t in test]),
    )
    twice = zoom_pair(*native, 2.0)
    unit_size = model.config.pixel_size[-1] if model.config.pixel_size else 4.0
    rows = []
    for shift, (image, truth), sizes in (
        ("native 4 nm", native, (None,)),
        ("2x (2 nm)", twice, (None, (unit_size / 2,))),
    ):
        for size in sizes:
            t0 = time.perf_counter()
            probs, used = predict_all(model, image, info.data, pixel_size=size)
            row = {
                "model": "em",
                "shift": shift,
                "correction": "-" if size is None else f"pixel_size {size[0]:g} nm",
                "zoom": f"{used['zoom'][0]:.2f}" if used else "1.00",
            }
            for d, prob in sorted(probs.items()):
                row[f"L{d}"] = M.iou(prob > label_threshold(model.config, THRESHOLD), truth > 0)
            row["s"] = time.perf_counter() - t0
            rows.append(row)
            _print_row(row)
    return rows


# --------------------------------------------------------------------------- output


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _print_row(row: dict[str, Any]) -> None:
    print("  ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table per model (columns differ: nuclei AP, CT mean organ Dice)."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == name]
        keys = [k for k in group[0] if k != "model"]
        lines += ["", f"**{name}**", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in group]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nuclei",
        type=int,
        default=8,
        help="held-back nuclei images to use (of 44, evenly spaced), default 8",
    )
    parser.add_argument(
        "--nuclei-crop",
        type=int,
        default=256,
        help="centre crop side of each nuclei image (px, before shifting)",
    )
    parser.add_argument("--em-crop", type=int, default=256, help="EM crop side (px at 4 nm)")
    parser.add_argument("--em-slices", type=int, default=2, help="held-back EM slices (of 5)")
    parser.add_argument("--models", nargs="+", default=["nuclei", "ct", "em"])
    parser.add_argument(
        "--nuclei-shifts",
        nargs="+",
        default=None,
        help="only these nuclei shifts (native 0.5x 2x dark blur)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="cut the labels (and the auto size's first pass) here instead of at each "
        "model's own threshold (0.5 = before the models recorded one)",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    args = parser.parse_args(argv)
    global THRESHOLD
    THRESHOLD = args.threshold
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    rows: list[dict[str, Any]] = []
    if "nuclei" in args.models:
        rows += nuclei_rows(args.nuclei, args.nuclei_crop, args.nuclei_shifts)
    if "ct" in args.models:
        rows += ct_rows()
    if "em" in args.models:
        rows += em_rows(args.em_crop, args.em_slices)
    table = markdown(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
