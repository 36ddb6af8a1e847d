"""The shipped CT model on a user's scan: a fine pixel size with noise, contrast, HU offsets.

Why: the CT model was trained on one scan at 3 mm. A user's second scan is at ~1 mm with
per-pixel noise, may be contrast-enhanced, and may be stored with its Hounsfield units
shifted. Each part builds such copies of the card's held-back slices (``ct.tif`` slices 0-5
= full-scan slices 82-87) and scores the deepest head per organ (Dice over the slices).

- ``smoothing``: the slices upsampled 3x (to 1 mm) with white or spatially correlated noise
  (0-30 HU), segmented with ``pixel_size=(1, 1)`` mm, with and without a Gaussian before the
  shrink to 3 mm (``rescaled.model_grid``: a fraction of skimage's anti-aliasing sigma,
  always or only when the shrunk image is noisy);
- ``contrast``: organs brightened as in a portal-venous phase, and the Hounsfield units
  shifted as a whole (a RescaleIntercept missing or wrong): the score and what the image
  check says (after a run, and ``info --on``); it calibrates the check's intensity
  references (``--write`` stores them in the zoo);
- ``grid``: native slices resampled to finer pixels and segmented with their pixel size: the
  check's uncertain fraction on the image's grid and at the model's scale;
- ``natives``: the half-size probe's limits (``scale_gain``, ``scale_gain_low``) calibrated
  on blocks of the model's training slices across the whole scan (``--write`` stores them),
  and the check's confusion table before / after: the whole scan's native blocks against
  the true alarms (1 mm without its pixel size, contrast, shifted HU).

Run (CPU, 1 torch thread)::

    NAPARI_UNETPP_DATA=/work/shared/data PYTHONPATH=src python benchmarks/bench_ct_user.py smoothing
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import zoo_data as D  # noqa: E402  (the zoo's data loaders)
import zoo_specs as Z  # noqa: E402  (the zoo's held-back splits and card scores)

from napari_unetpp import rescaled, zoo  # noqa: E402
from napari_unetpp import scale as S  # noqa: E402
from napari_unetpp.config import PredictConfig  # noqa: E402
from napari_unetpp.inference import predict_array  # noqa: E402

ORGANS = [name for name, _ in zoo.CT_ORGANS]


def held_back() -> tuple[np.ndarray, np.ndarray]:
    """The card's held-back slices (Z, Y, X) in HU and their model classes 1..5."""
    test = Z._ct_test()
    return np.stack([i for i, _ in test]), np.stack([t for _, t in test])


def organ_dice(classes: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice per organ over all slices (the card's score), and their mean."""
    pairs = list(zip(truth, truth, strict=True))  # _ct_score reads only the truths
    score = Z._ct_score(list(classes), pairs)
    return {**{o: score[f"dice_{o}"] for o in ORGANS}, "mean": score["dice"]}


def segment(model: Any, info: Any, image: np.ndarray, **config: Any) -> Any:
    """The deepest head (what a user gets) on the CPU in float32; ``config`` may ask for more."""
    settings = PredictConfig(device="cpu", mixed_precision=False, pruned_depth=4)
    settings = settings.replace(**config)
    return predict_array(model, image, settings, info.data)


def noisy(image: np.ndarray, sd: float, correlated: float, seed: int) -> np.ndarray:
    """``image`` + Gaussian noise of ``sd`` HU per pixel; ``correlated`` > 0: white noise
    smoothed by that sigma (px) and scaled back to ``sd`` (a CT's noise is not white)."""
    if sd == 0:
        return image.astype(np.float32)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 1.0, image.shape).astype(np.float32)
    if correlated:
        noise = ndimage.gaussian_filter(noise, (0, correlated, correlated))
        noise /= noise.std()
    return image.astype(np.float32) + sd * noise


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |"


# --------------------------------------------------------------------------- smoothing


#: (name, fraction of skimage's sigma, noise above which it smooths): the choices compared.
SMOOTHINGS = {
    "none": (0.0, 0.0),
    "always": (None, 0.0),
    "if noisy (shipped)": (None, rescaled.SMOOTH_NOISE),
}


def smoothing(args: argparse.Namespace) -> None:
    from napari_unetpp.disagreement import _input_noise

    model, info = zoo.load_pretrained("ct")
    limit = info.metrics["image_check"]["noise"]
    ct, truth = held_back()
    up = 3.0  # 3 mm -> 1 mm
    fine = S.resample(ct, (up, up), (1, 2), order=1)
    fine_truth = S.resample_to(truth, fine.shape, (1, 2), order=0)
    native = segment(model, info, ct)
    base = organ_dice(np.asarray(native[4]).argmax(0), truth)
    print(
        "| noise at 1 mm | smoothing | sigma (px at 1 mm) | "
        + " | ".join(ORGANS)
        + " | mean | noise seen | noise warning |"
    )
    print("|---|---|---|" + "---|" * (len(ORGANS) + 3))
    print(_row(["native 3 mm", "-", "-", *base.values(), "-", "-"]), flush=True)
    fractions = [(f"k = {k:g}", k, 0.0) for k in args.k]
    fractions += [(n, args.fraction if k is None else k, t) for n, (k, t) in SMOOTHINGS.items()]
    for sd in args.noise:
        for corr in [0.0] if sd == 0 else args.correlated:
            kind = f"{sd:g} HU" + (f", correlated {corr:g} px" if corr else ", white")
            for name, k, above in fractions:
                rescaled.SMOOTH_FRACTION, rescaled.SMOOTH_NOISE = k, above
                scores, seen, sigmas = [], [], []
                for seed in range(args.seeds if sd else 1):
                    image = noisy(fine, sd, corr, seed)
                    probs = segment(model, info, image, pixel_size=(1.0, 1.0))
                    scores.append(organ_dice(np.asarray(probs[4]).argmax(0), fine_truth))
                    seen.append(_input_noise(model, image, probs, info.data) or 0.0)
                    sigmas.append(probs.scale["smoothing_sigma"][0])
                mean = {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
                fired = f"{sum(v > limit for v in seen)}/{len(seen)}"
                cells = [kind, name, f"{np.mean(sigmas):.2f}", *mean.values()]
                print(_row([*cells, float(np.mean(seen)), fired]), flush=True)


# --------------------------------------------------------------------------- contrast

#: TotalSegmentator ids of ``ct.tif``'s organ labels (``classes.json``) that a contrast
#: phase brightens; ``ct_full.tif``'s v1 ids differ for the vessels and the pancreas.
IDS = {
    "ct.tif": {
        "liver": 5,
        "spleen": 1,
        "kidney": (2, 3),
        "pancreas": 7,
        "aorta": 52,
        "veins": (63, 64),
    },
    "ct_full.tif": {
        "liver": 5,
        "spleen": 1,
        "kidney": (2, 3),
        "pancreas": 10,
        "aorta": 7,
        "veins": (8, 9),
    },
}
#: HU added per structure: a portal-venous phase, mild and strong (kidney: cortex, medulla).
PHASES = {
    "portal-venous, mild": {
        "liver": 40,
        "spleen": 50,
        "cortex": 100,
        "medulla": 60,
        "pancreas": 40,
        "aorta": 100,
        "veins": 100,
    },
    "portal-venous, strong": {
        "liver": 80,
        "spleen": 100,
        "cortex": 200,
        "medulla": 120,
        "pancreas": 60,
        "aorta": 200,
        "veins": 150,
    },
}


def enhanced(ct: np.ndarray, organs: np.ndarray, phase: dict[str, float], ids: dict) -> np.ndarray:
    """``ct`` with its organs brightened as ``phase`` says (a kidney's outer 2 px are its
    cortex), the added map softened by a 0.5 px Gaussian (partial volume at the edges)."""
    add = np.zeros(ct.shape, np.float32)
    for name in ("liver", "spleen", "pancreas", "aorta"):
        add[organs == ids[name]] = phase[name]
    add[np.isin(organs, ids["veins"])] = phase["veins"]
    kidney = np.isin(organs, ids["kidney"])
    for z in range(len(ct)):
        depth = ndimage.distance_transform_edt(kidney[z])
        add[z][kidney[z]] = np.where(depth[kidney[z]] <= 2, phase["cortex"], phase["medulla"])
    add = ndimage.gaussian_filter(add, (0, 0.5, 0.5))
    return (ct.astype(np.float32) + add).astype(np.float32)


def checked(model: Any, info: Any, image: np.ndarray, full: bool = True) -> tuple[Any, Any, Any]:
    """The labels of the deepest head, the dock's check after a run and (``full``) ``info
    --on``'s (the flipped pass as well)."""
    from napari_unetpp.disagreement import check_image, check_result
    from napari_unetpp.events import drive

    metrics = info.metrics
    probs = segment(model, info, image, pruned_depth=None)
    after = drive(check_result(model, image, probs, info.data, None, metrics))
    whole = None
    if full:
        config = PredictConfig(device="cpu", mixed_precision=False)
        whole, _ = drive(
            check_image(
                model,
                image,
                info.data,
                config,
                recommended=metrics.get("best_depth"),
                thresholds=metrics.get("image_check"),
            )
        )
    return np.asarray(probs[4]).argmax(0), after, whole


def calibrate(model: Any, info: Any) -> dict[str, float]:
    """The CT model's intensity references: its training slices under their labels, and the
    limit from the check's measure on the native validation slices (``zoo.CT_VAL_SLICES``)."""
    from napari_unetpp.image_check import calibrate_intensity
    from napari_unetpp.image_signals import intensity_signals

    images, labels, val, _ = Z._ct_train()
    names = list(model.config.class_names)
    references = calibrate_intensity(images, labels, names)
    probs = segment(model, info, val[0])
    shift = intensity_signals(val[0], probs[4], model.config, info.data, references)
    print(f"validation slices: {shift}")
    return calibrate_intensity(images, labels, names, [shift["intensity_shift"] or 0.0])


def write(values: dict[str, float]) -> None:
    """Add the references to the shipped CT config.json (weights untouched)."""
    import json

    from napari_unetpp.locate import CONFIG_NAME

    path = zoo.models_dir() / "ct" / CONFIG_NAME
    config = json.loads(path.read_text())
    config["metrics"].setdefault("image_check", {}).update(values)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {sorted(values)} into {path}")


def contrast(args: argparse.Namespace) -> None:
    import tifffile

    from napari_unetpp.disagreement import check_result
    from napari_unetpp.events import drive

    model, info = zoo.load_pretrained("ct")
    values = calibrate(model, info)
    print("intensity references:", values)
    if args.write:
        write(values)
        model, info = zoo.load_pretrained("ct")
    info.metrics.setdefault("image_check", {}).update(values)  # judged as shipped
    ct, truth = held_back()
    t0, t1 = zoo.CT_TEST_SLICES
    organs = tifffile.imread(D.DATA / "ct_totalseg" / "organs.tif")[t0:t1]
    head = "| scan | " + " | ".join(ORGANS) + " | mean | intensity / air shift (HU) |"
    print(head + " dock's check | info --on |")
    print("|---|" + "---|" * (len(ORGANS) + 4))
    scans = [("held-back, native", ct, False)]
    scans += [
        (f"held-back, {n}", enhanced(ct, organs, p, IDS["ct.tif"]), True) for n, p in PHASES.items()
    ]
    scans += [
        (f"held-back, values {o:+d} HU", ct.astype(np.float32) + o, True) for o in args.offsets
    ]
    for name, image, shifted in scans:
        classes, after, whole = checked(model, info, image)
        dice = organ_dice(classes, truth)
        found = f"{_hu(after, 'intensity_shift')} / {_hu(after, 'air_shift')}"
        print(_row([name, *dice.values(), found, _verdict(after), _verdict(whole)]), flush=True)
        if shifted or after.unlike_training:
            print("    " + after.report("dock").replace("\n", "\n    "), flush=True)
    full, _ = D.load_ct_full()
    silent = 0
    blocks = range(args.first, 112, 8)
    for start in blocks:  # the whole scan's native slices, 8 at a time (what a check reads)
        _, after, _ = checked(model, info, full[start : start + 8], full=False)
        silent += not after.unlike_training
        found = f"{_hu(after, 'intensity_shift')} / {_hu(after, 'air_shift')}"
        print(f"native slices {start}-{min(start + 8, 112) - 1}: {found}, {_verdict(after)}")
    print(f"native whole-scan blocks silent: {silent}/{len(blocks)}")
    for mm in (3.0, 0.98):  # the whole scan as the dock checks it (8 planes of the 112)
        zoom = 3.0 / mm
        image = full if zoom == 1 else S.resample(full, (zoom, zoom), (1, 2)).round()
        probs = segment(model, info, image, pruned_depth=None, pixel_size=(3.0, mm, mm))
        after = drive(check_result(model, image, probs, info.data, None, info.metrics))
        found = f"{_hu(after, 'intensity_shift')} / {_hu(after, 'air_shift')}"
        print(f"whole scan at {mm:g} mm: {found}, {_verdict(after)}", flush=True)


def _hu(check: Any, name: str) -> str:
    value = check.signals.get(name) if check is not None else None
    return "-" if value is None else f"{value:+.0f}"


def _verdict(check: Any) -> str:
    if check is None:
        return "not checked"
    return "fires" if check.unlike_training else "silent"


# --------------------------------------------------------------------------- grid


def grid(args: argparse.Namespace) -> None:
    """The uncertain fraction of native blocks resampled to finer pixels (pixel size given):
    on the image's grid (before) and at the model's scale (the check's, now), and the verdict."""
    from napari_unetpp.disagreement import check_result
    from napari_unetpp.events import drive
    from napari_unetpp.image_signals import _uncertain

    model, info = zoo.load_pretrained("ct")
    limit = info.metrics["image_check"]["uncertain_fraction"]
    full, _ = D.load_ct_full()
    columns = ["slices", "pixel size", "uncertain fraction, image grid"]
    columns += [f"at the model's scale (limit {limit})", "check"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|")
    for start, stop in ((82, 88), (88, 92), (92, 100), (74, 82)):
        for mm in args.sizes:
            zoom = 3.0 / mm
            ct = full[start:stop]
            image = ct if zoom == 1 else S.resample(ct, (zoom, zoom), (1, 2))
            probs = segment(model, info, image, pruned_depth=None, pixel_size=(mm, mm))
            check = drive(check_result(model, image, probs, info.data, None, info.metrics))
            fine = float(_uncertain(np.asarray(probs[4]), model.config.num_classes).mean())
            cells = [f"{start}-{stop - 1}", f"{mm:g} mm", f"{fine:.4f}"]
            cells += [f"{check.signals['uncertain_fraction']:.4f}", _verdict(check)]
            print(_row(cells), flush=True)


# --------------------------------------------------------------------------- natives

#: The half-size probe's limits, recalibrated by ``natives`` (the rest of the check's limits
#: are kept: the uncertain fraction is what catches a 1 mm scan without its pixel size).
PROBE_LIMITS = ("scale_gain", "scale_gain_low")
#: Those limits as session 14 shipped them (from the 4 validation slices): the "before" column.
PROBE_BEFORE = {"scale_gain": 2.477, "scale_gain_low": 0.9}


def _blocks(slices: range, size: int = 8) -> list[tuple[int, int]]:
    """``slices`` cut into blocks of ``size`` (the last one ends at the range's end)."""
    starts = list(range(slices.start, slices.stop - size + 1, size))
    if starts and starts[-1] + size < slices.stop:
        starts.append(slices.stop - size)
    return [(a, a + size) for a in starts]


def natives(args: argparse.Namespace) -> None:
    """Calibrate the probe's limits on the training slices' blocks (and the validation
    slices), then count which images the check calls unlike the training data."""
    from napari_unetpp.disagreement import check_result
    from napari_unetpp.events import drive
    from napari_unetpp.image_check import calibrate

    model, info = zoo.load_pretrained("ct")
    shipped = dict(info.metrics["image_check"])
    full, organs = D.load_ct_full()
    below, above = D.ct_train_slices()
    v0, v1 = (D.CT_FULL_OFFSET + v for v in zoo.CT_VAL_SLICES)
    sources = [*_blocks(below), (v0, v1), *_blocks(above)]  # what a check reads: 8 planes
    sources += [(z, z + 1) for z in [*below, *range(v0, v1), *above]]  # or one
    records = []
    for a, b in sources:
        probs = segment(model, info, full[a:b], pruned_depth=None)
        check = drive(check_result(model, full[a:b], probs, info.data, None, info.metrics))
        records.append(check.signals)
        print(f"calibration slices {a}-{b - 1}: scale gain {check.signals['scale_gain']:.3f}")
    records = [r for r in records if r.get("scale_gain") is not None]
    limits = {k: v for k, v in calibrate(records).items() if k in PROBE_LIMITS}
    print(f"shipped: { {k: shipped.get(k) for k in PROBE_LIMITS} }, calibrated: {limits}")
    if args.write:
        write(limits)
    after = {**shipped, **limits}
    shipped = {**shipped, **PROBE_BEFORE}
    ct, _ = held_back()
    t0, t1 = zoo.CT_TEST_SLICES
    held = tifffile_organs()[t0:t1]
    cases: list[tuple[str, str, np.ndarray]] = []
    for start in range(args.first, 112, 8):
        name = f"slices {start}-{min(start + 8, 112) - 1}"
        cases.append(("native", name, full[start : start + 8]))
    for z in range(112) if args.slices else ():
        cases.append(("native, one slice", f"slice {z}", full[z]))
    for start in range(66, 112, 8):  # 1 mm without its pixel size, where the organs are
        image = S.resample(full[start : start + 8].astype(np.float32), (3.0, 3.0), (1, 2))
        cases.append(("1 mm, no pixel size", f"slices {start}-{min(start + 8, 112) - 1}", image))
    for name, phase in PHASES.items():
        cases.append(("contrast", name, enhanced(ct, held, phase, IDS["ct.tif"])))
    for offset in args.offsets:
        cases.append(("HU shifted", f"{offset:+d} HU", ct.astype(np.float32) + offset))
    counts: dict[str, list[int]] = {}
    print("| kind | image | before | after | reasons (after) |")
    print("|---|---|---|---|---|")
    for kind, name, image in cases:
        probs = segment(model, info, image, pruned_depth=None)
        verdicts = []
        for limit in (shipped, after):
            metrics = {**info.metrics, "image_check": limit}
            check = drive(check_result(model, image, probs, info.data, None, metrics))
            verdicts.append(check)
        fired = [int(c.unlike_training) for c in verdicts]
        total = counts.setdefault(kind, [0, 0, 0])
        total[0] += fired[0]
        total[1] += fired[1]
        total[2] += 1
        why = "; ".join(r.split(":")[0] for r in verdicts[1].reasons)[:90]
        print(_row([kind, name, _verdict(verdicts[0]), _verdict(verdicts[1]), why]), flush=True)
    print("| kind | images | fires before | fires after |")
    print("|---|---|---|---|")
    for kind, (before, now, n) in counts.items():
        print(f"| {kind} | {n} | {before}/{n} | {now}/{n} |")


def tifffile_organs() -> np.ndarray:
    """``organs.tif``: the held-back slices' TotalSegmentator ids."""
    import tifffile

    return tifffile.imread(D.DATA / "ct_totalseg" / "organs.tif")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    smooth = sub.add_parser("smoothing", help="Gaussian before the shrink, 1 mm + noise")
    smooth.add_argument("--noise", type=float, nargs="+", default=[0, 10, 20, 30])
    smooth.add_argument("--correlated", type=float, nargs="+", default=[0.0, 0.7])
    smooth.add_argument(
        "--k",
        type=float,
        nargs="*",
        default=[0.25, 0.75, 1.0],
        help="also these fractions of skimage's sigma, always applied",
    )
    smooth.add_argument(
        "--fraction", type=float, default=rescaled.SMOOTH_FRACTION, help="the shipped fraction"
    )
    smooth.add_argument("--seeds", type=int, default=2, help="noise draws per level")
    enhance = sub.add_parser("contrast", help="contrast phases and shifted HU: score, check")
    enhance.add_argument("--write", action="store_true", help="store the references in the zoo")
    enhance.add_argument("--offsets", type=int, nargs="*", default=[-100, -50, 50, 100, 200])
    enhance.add_argument("--first", type=int, default=66, help="first native slice (organs)")
    fine = sub.add_parser("grid", help="the uncertain fraction of resampled native slices")
    fine.add_argument("--sizes", type=float, nargs="+", default=[3.0, 1.0, 0.98, 0.8])
    cal = sub.add_parser("natives", help="the probe's limits on the whole scan; confusion")
    cal.add_argument("--write", action="store_true", help="store the limits in the zoo")
    cal.add_argument("--first", type=int, default=2, help="first native slice judged")
    cal.add_argument("--slices", action="store_true", help="also judge every slice alone")
    cal.add_argument("--offsets", type=int, nargs="*", default=[-500, -200, -100, 100, 200])
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    parts = {"smoothing": smoothing, "contrast": contrast, "grid": grid, "natives": natives}
    parts[args.part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
