"""Hostile camera data: the shipped nuclei model on held-back DSB images as real cameras give them.

Why (issue 14): a biologist's uint16 camera image is not a DSB png. Each variant is made
from 8 held-back fluorescence images (and, where it applies, 4 brightfield ones):
converted to uint16 (x200) or 12-bit (x16), then with hot pixels (isolated pixels at
65535 or 4095), dead pixels (at 0), the top few % saturated, a camera bias, a strong
illumination gradient, or low photon counts (Poisson noise plus a bias of 100). Each is
segmented exactly as a user does (``inference.predict_array`` with the model's own
``DataConfig``, its recommended depth, default settings) and scored by foreground IoU
(class interior or boundary vs labels > 0, pooled over the group's pixels).

``--no-defects`` runs the engine as it was before hot and dead pixels were recognised
(``defects.py``: no pixel is left out of the range, none is repaired).

Run::

    python benchmarks/bench_camera.py            # after (the engine as it is)
    python benchmarks/bench_camera.py --no-defects   # before

Prints a markdown table. Measured numbers: docs/benchmarks.md, "Hostile camera data".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

#: Held-back fluorescence images (dark background) of four sizes, and brightfield ones.
FLUORESCENCE = (
    "00071198d059ba7f",
    "1b6044e4858a9b7c",
    "44ab6a09eedee848",
    "c00ae67f72816dae",
    "02903040e19ddf92",
    "5bda829acd824821",
    "3477024fd843e460",
    "1400420310c90943",
)
BRIGHTFIELD = ("00ae65c1c6631ae6", "2255d5aba044256b", "673baf65ae5c571d", "af6b6173c59450bc")


def held_back_pairs(ids: tuple[str, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The images (grey uint8, as the model sees them) and instance labels of ``ids``."""
    from bench_intensity import held_back

    from napari_unetpp import zoo

    pairs = dict(zip(zoo.NUCLEI_HELD_OUT_IDS, held_back(), strict=True))
    return [pairs[image_id] for image_id in ids]


def uint16(image: np.ndarray, gain: int = 200) -> np.ndarray:
    """A uint16 camera's grey levels (uint8 x ``gain``; x16 gives 12-bit data)."""
    return image.astype(np.uint16) * np.uint16(gain)


def defect_pixels(image: np.ndarray, fraction: float, value: int, seed: int = 0) -> np.ndarray:
    """A copy with ``fraction`` of the pixels, at random (so mostly isolated), set to ``value``."""
    rng = np.random.default_rng(seed)
    out = image.copy()
    out.flat[rng.choice(out.size, int(round(fraction * out.size)), replace=False)] = value
    return out


def saturated(image: np.ndarray, top: float) -> np.ndarray:
    """uint16 with a gain that saturates the brightest ``top`` % of the pixels at 65535."""
    level = max(float(np.percentile(image, 100 - top)), 1.0)
    scaled = np.round(image.astype(np.float64) * (65535 / level))
    return np.clip(scaled, 0, 65535).astype(np.uint16)


def gradient(image: np.ndarray, low: float = 0.25, high: float = 1.75) -> np.ndarray:
    """uint16 (x200) under illumination falling linearly from ``high`` to ``low`` across x."""
    ramp = np.linspace(low, high, image.shape[1])[None, :]
    return np.clip(np.round(image * 200.0 * ramp), 0, 65535).astype(np.uint16)


def photons(image: np.ndarray, peak: float, bias: int = 100, seed: int = 0) -> np.ndarray:
    """Poisson counts with ``peak`` photons at the image's brightest pixel, plus a bias."""
    rng = np.random.default_rng(seed)
    return (rng.poisson(image / max(float(image.max()), 1.0) * peak) + bias).astype(np.uint16)


#: name -> (make the hostile copy, also for brightfield?)
VARIANTS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], bool]] = {
    "clean uint8": (lambda im: im, True),
    "uint16 x200": (uint16, True),
    "hot 0.1 % at 65535": (lambda im: defect_pixels(uint16(im), 0.001, 65535), False),
    "hot 0.5 % at 65535": (lambda im: defect_pixels(uint16(im), 0.005, 65535), True),
    "hot 2 % at 65535": (lambda im: defect_pixels(uint16(im), 0.02, 65535), True),
    "12-bit (x16)": (lambda im: uint16(im, 16), True),
    "12-bit (x16), hot 0.5 % at 4095": (
        lambda im: defect_pixels(uint16(im, 16), 0.005, 4095),
        False,
    ),
    "12-bit (x16), hot 2 % at 4095": (lambda im: defect_pixels(uint16(im, 16), 0.02, 4095), True),
    "top 2 % saturated": (lambda im: saturated(im, 2), False),
    "top 5 % saturated": (lambda im: saturated(im, 5), False),
    "top 5 % saturated + hot 0.5 %": (
        lambda im: defect_pixels(saturated(im, 5), 0.005, 65535),
        False,
    ),
    "bias +100": (lambda im: uint16(im) + 100, False),
    "bias +100, hot 0.5 %": (lambda im: defect_pixels(uint16(im) + 100, 0.005, 65535), False),
    "illumination x0.25..1.75": (gradient, False),
    "Poisson, peak 20 photons": (lambda im: photons(im, 20), True),
    "Poisson 20, hot 0.5 %": (lambda im: defect_pixels(photons(im, 20), 0.005, 65535), False),
    "Poisson 20, dead 0.5 % at 0": (lambda im: defect_pixels(photons(im, 20), 0.005, 0), True),
    "Poisson, peak 1000 photons": (lambda im: photons(im, 1000), True),
    "Poisson 1000, hot 0.5 % + dead 0.5 %": (
        lambda im: defect_pixels(
            defect_pixels(photons(im, 1000), 0.005, 65535, seed=1), 0.005, 0, seed=2
        ),
        True,
    ),
    "dead 0.5 % at 0 (x200, no bias)": (lambda im: defect_pixels(uint16(im), 0.005, 0), True),
    "dead 2 % at 0 (x200, no bias)": (lambda im: defect_pixels(uint16(im), 0.02, 0), True),
}


def foreground_iou(model, data_config, depth: int, pairs, make, rescale=None) -> float:
    """Pooled foreground IoU of the model's segmentation of ``make(image)``, as a user runs it
    (``rescale``: ``PredictConfig.rescale``, a zoom factor or ``"auto"``)."""
    import warnings

    from napari_unetpp.config import PredictConfig
    from napari_unetpp.inference import predict_array
    from napari_unetpp.metrics import confusion_counts

    config = PredictConfig(depths=(depth,), device="cpu", rescale=rescale)
    tp = fp = fn = 0
    for image, labels in pairs:
        with warnings.catch_warnings():  # the defect warning, once per image: not scored
            warnings.simplefilter("ignore")
            pred = predict_array(model, make(image), config, data_config)[depth].argmax(0) > 0
        counts = confusion_counts(pred, labels > 0)  # pooled over the images, as the cards
        tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
    return tp / max(tp + fp + fn, 1)


def main(argv: list[str] | None = None) -> int:
    import torch

    from napari_unetpp import normalization, zoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-defects",
        action="store_true",
        help="the engine before defects.py: no hot or dead pixel is recognised",
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--fluorescence",
        nargs="+",
        default=list(FLUORESCENCE),
        help="held-back ids of the fluorescence group (default: 8 of four sizes)",
    )
    parser.add_argument(
        "--rescale", default=None, help="PredictConfig.rescale: a zoom factor, or auto"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.no_defects:
        normalization._sample_defects = lambda raw, counts, stride=1: None  # type: ignore[assignment]
    model, info = zoo.load_pretrained("nuclei")
    depth = int(info.metrics.get("best_depth", model.depth))
    rescale = args.rescale if args.rescale in (None, "auto") else float(args.rescale)
    groups = {
        "fluorescence": held_back_pairs(tuple(args.fluorescence)),
        "brightfield": held_back_pairs(BRIGHTFIELD),
    }
    print(f"| variant | {' | '.join(groups)} |")
    print("|---|" + "---|" * len(groups))
    for name in args.variants:
        make, brightfield = VARIANTS[name]
        start = time.perf_counter()
        scores = [
            f"{foreground_iou(model, info.data, depth, pairs, make, rescale):.3f}"
            if group == "fluorescence" or brightfield
            else ""
            for group, pairs in groups.items()
        ]
        print(f"| {name} | {' | '.join(scores)} |", flush=True)
        print(f"  ({name}: {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    print(
        f"\n{len(args.fluorescence)} fluorescence and {len(BRIGHTFIELD)} brightfield held-back DSB "
        f"images, L{depth}, pooled foreground IoU; command: python benchmarks/bench_camera.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
