"""Depth features of issue 17, measured: adaptive depth on EM, and the "unlike the training
data" warning calibrated on shifted copies of the zoo's held-back splits.

Why: adaptive depth promises the deepest head's accuracy at a fraction of its time,
and the warning promises to fire on images the model was not trained for and to stay
quiet otherwise; both claims are only as good as these measurements.

Run (CPU; the machine may be shared, so timings are interleaved and repeated)::

    NAPARI_UNETPP_DATA=/work/shared/data python benchmarks/bench_depth.py adaptive \
        --tolerances 0.04 0.05 0.06 --tiles 256 128 --repeats 2
    NAPARI_UNETPP_DATA=/work/shared/data python benchmarks/bench_depth.py warning \
        --object-diameter 18.1 --json /tmp/signals.json
    NAPARI_UNETPP_DATA=/work/shared/data python benchmarks/bench_depth.py scale-gain-low --crop 256
    NAPARI_UNETPP_DATA=/work/shared/data python benchmarks/bench_depth.py labelling \
        --regions 8 --seeds 0 1 2 3 4 5    # --model nuclei --seeds 0 1 2

Prints markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the zoo's data loaders and held-back splits

import zoo_data as D  # noqa: E402
import zoo_specs as Z  # noqa: E402

from napari_unetpp import metrics as M  # noqa: E402
from napari_unetpp import zoo  # noqa: E402
from napari_unetpp.config import PredictConfig  # noqa: E402
from napari_unetpp.disagreement import check_image  # noqa: E402
from napari_unetpp.events import drive  # noqa: E402
from napari_unetpp.image_check import THRESHOLDS, calibrate, judge  # noqa: E402
from napari_unetpp.image_signals import labels_anything  # noqa: E402
from napari_unetpp.inference import predict_array  # noqa: E402
from napari_unetpp.locate import CONFIG_NAME  # noqa: E402
from napari_unetpp.postprocess import probabilities_to_labels  # noqa: E402

# --------------------------------------------------------------------------- adaptive


def bench_adaptive(tolerances: list[float], tiles: list[int], repeats: int) -> None:
    """EM held-back slices: IoU and wall time of L4 (pruned) vs adaptive depth, interleaved."""
    model, info = zoo.load_pretrained("em")
    image, membranes = D.load_em()
    t0, t1 = zoo.EM_TEST_SLICES
    image, truth = image[t0:t1], membranes[t0:t1].astype(bool)
    print(
        f"torch threads {torch.get_num_threads()}; EM slices {t0}-{t1 - 1}, "
        f"{image.shape[1]}x{image.shape[2]}"
    )
    print(
        "| tile | run | tolerance | IoU | IoU - L4 | tiles L2/L3/L4 | MAC fraction "
        "| time s | time / L4 | CPU s | CPU / L4 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tile in tiles:
        runs: dict[Any, list[float]] = {}
        cpus: dict[Any, list[float]] = {}  # 1 thread: the process's own time, load or not
        scores: dict[Any, tuple[float, str, float]] = {}
        for _ in range(repeats):  # interleaved: L4, then each tolerance, again
            for tol in [None, *tolerances]:
                config = (
                    PredictConfig(device="cpu", tile_size=(tile, tile), pruned_depth=4)
                    if tol is None
                    else PredictConfig(
                        device="cpu",
                        tile_size=(tile, tile),
                        adaptive_depth=True,
                        depth_tolerance=tol,
                    )
                )
                start, cpu = time.perf_counter(), time.process_time()
                probs = predict_array(model, image, config, info.data)
                runs.setdefault(tol, []).append(time.perf_counter() - start)
                cpus.setdefault(tol, []).append(time.process_time() - cpu)
                counts = getattr(probs, "tiles_per_depth", {4: 0})
                scores[tol] = (
                    M.iou(probs[4] > 0.5, truth),
                    "/".join(str(counts.get(d, 0)) for d in (2, 3, 4)),
                    getattr(probs, "cost_fraction", 1.0),
                )
        base_t, base_cpu, base_iou = min(runs[None]), min(cpus[None]), scores[None][0]
        for tol in [None, *tolerances]:
            iou, counts, cost = scores[tol]
            t, c = min(runs[tol]), min(cpus[tol])
            name = "L4 (pruned)" if tol is None else "auto"
            print(
                f"| {tile} | {name} | {'-' if tol is None else tol} | {iou:.4f} | "
                f"{iou - base_iou:+.4f} | {counts} | {cost:.2f} | {t:.1f} | "
                f"{t / base_t:.2f} | {c:.1f} | {c / base_cpu:.2f} |",
                flush=True,
            )


# --------------------------------------------------------------------------- warning


def _center(image: np.ndarray, size: int) -> tuple[slice, slice]:
    y, x = image.shape[:2]
    cy, cx = max((y - size) // 2, 0), max((x - size) // 2, 0)
    return slice(cy, cy + size), slice(cx, cx + size)


def _rescale(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, ...]:
    from skimage.transform import rescale

    up = rescale(image.astype(np.float32), factor, order=1, preserve_range=True)
    lab = rescale(labels, factor, order=0, preserve_range=True, anti_aliasing=False)
    return up.astype(image.dtype), lab.astype(labels.dtype)


def shifted(
    image: np.ndarray, labels: np.ndarray, shift: str, crop: int
) -> tuple[np.ndarray, np.ndarray]:
    """One held-back image under a shift; ``crop`` bounds the CPU time (centre crop)."""
    from scipy import ndimage

    if shift == "rescaled 2x":  # objects twice as large: the centre half, upsampled
        index = _center(image, crop // 2)
        return _rescale(image[index], labels[index], 2.0)
    if shift == "rescaled 0.5x":  # objects half as large: twice the crop, downsampled
        index = _center(image, 2 * crop)
        return _rescale(image[index], labels[index], 0.5)
    index = _center(image, crop)
    image, labels = image[index], labels[index]
    if shift == "native":
        return image, labels
    if shift == "darkened":  # low exposure: a quarter of the signal, gamma 2, 8-bit noise
        dark = 255.0 * (image.astype(np.float32) / 255.0) ** 2 * 0.25
        rng = np.random.default_rng(0)
        return np.clip(dark + rng.normal(0, 2, dark.shape), 0, 255).astype(np.uint8), labels
    if shift == "blurred":
        return ndimage.gaussian_filter(image.astype(np.float32), 2.0).astype(image.dtype), labels
    raise ValueError(shift)


def _truth_score(name: str, probs: np.ndarray, truth: np.ndarray, info: Any) -> float:
    """The zoo card's score of the deepest head on one image (IoU)."""
    if name == "em":
        return M.iou(probs > 0.5, truth.astype(bool))
    labels = probabilities_to_labels(probs, info.model, info.data)
    if name == "nuclei":
        return M.iou(labels > 0, truth > 0)
    present = [k for k in range(1, info.model.num_classes) if (truth == k).any()]
    return float(np.mean([M.iou(labels == k, truth == k) for k in present])) if present else 1.0


def _nuclei(ids: list[str], shifts: tuple[str, ...], crop: int) -> list[tuple]:
    cases = []
    for image_id in ids:
        image, labels = D.load_nucleus(image_id)
        cases += [("nuclei", shift, *shifted(image, labels, shift, crop)) for shift in shifts]
    return cases


def _em(slices: range, shifts: tuple[str, ...], crop: int) -> list[tuple]:
    em, membranes = D.load_em()
    return [
        ("em", shift, *shifted(em[z], membranes[z], shift, crop))
        for z in slices
        for shift in shifts
    ]


#: The CT shifts: in-plane factor from the model's 3 mm, no pixel size given (1 mm: organs
#: 3x larger in pixels; 6 mm: half as large).
CT_RESAMPLED = {"resampled 1 mm": 3.0, "resampled 6 mm": 0.5}


def _ct(slices: range, shifts: tuple[str, ...] = ("native",)) -> list[tuple]:
    ct, organs = D.load_ct()
    classes = Z._ct_labels(organs)
    cases = []
    for z in slices:
        for shift in shifts:
            if shift == "native":
                cases.append(("ct", shift, ct[z], classes[z]))
            else:
                cases.append(("ct", shift, *_rescale(ct[z], classes[z], CT_RESAMPLED[shift])))
    return cases


def calibration_cases(crop: int) -> list[tuple]:
    """Native images like the training data, disjoint from the evaluation: the EM and CT
    validation slices, and the even-numbered half of the held-back nuclei ids."""
    return (
        _nuclei(list(zoo.NUCLEI_HELD_OUT_IDS[0::2]), ("native",), crop)
        + _em(range(*zoo.EM_VAL_SLICES), ("native",), crop)
        + _ct(range(*zoo.CT_VAL_SLICES))
    )


def evaluation_cases(crop: int) -> list[tuple]:
    """The held-back test splits (odd-numbered nuclei ids), native and shifted."""
    return (
        _nuclei(
            list(zoo.NUCLEI_HELD_OUT_IDS[1::2]),
            ("native", "rescaled 2x", "rescaled 0.5x", "darkened", "blurred"),
            crop,
        )
        + _em(
            range(*zoo.EM_TEST_SLICES), ("native", "rescaled 2x", "rescaled 0.5x", "blurred"), crop
        )
        + _ct(range(*zoo.CT_TEST_SLICES), ("native", *CT_RESAMPLED))
    )


def _signals(cases: list[tuple], models: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, shift, image, truth in cases:
        model, info = models[name]
        best = (info.metrics or {}).get("best_depth")
        check, probs = drive(
            check_image(model, image, info.data, PredictConfig(device="cpu"), recommended=best)
        )
        score = _truth_score(name, probs[max(probs)], truth, info)
        c = info.model.num_classes
        rows.append(
            {
                "model": name,
                "shift": shift,
                "iou": score,
                # the check's own verdict besides the signals: "found nothing" fires too
                "found_nothing": not labels_anything(probs[max(probs)], c),
                **check.signals,
                "advice": check.advice.suggested if check.advice else None,
            }
        )
        print(
            f"{name:7s} {shift:15s} iou {score:.3f} "
            + " ".join(f"{k} {v:.3f}" for k, v in check.signals.items() if isinstance(v, float)),
            flush=True,
        )
    return rows


def bench_warning(
    crop: int, out: Path | None, object_diameter: float | None, write: bool = False
) -> None:
    """Calibrate per-model thresholds on native validation images, then evaluate on the
    held-back test splits: fire rate per shift, correlation of the signals with the IoU.

    ``write``: store each model's thresholds as ``metrics["image_check"]`` in the shipped
    model's config.json (what ``check_image`` reads), e.g. after retraining a zoo model.
    """
    models = {name: zoo.load_pretrained(name) for name in ("nuclei", "em", "ct")}
    if object_diameter and getattr(models["nuclei"][0].config, "object_diameter", None) is None:
        models["nuclei"][0].config.object_diameter = object_diameter  # before "scale" lands
    calibration = _signals(calibration_cases(crop), models)
    thresholds = {
        name: calibrate([r for r in calibration if r["model"] == name]) for name in models
    }
    print("calibrated thresholds:", json.dumps(thresholds))
    if write:
        for name, values in thresholds.items():
            _write_thresholds(zoo.models_dir() / name / CONFIG_NAME, values)
    rows = _signals(evaluation_cases(crop), models)
    if out is not None:
        out.write_text(
            json.dumps(
                {"thresholds": thresholds, "calibration": calibration, "evaluation": rows}, indent=1
            )
        )
    summarise(rows, thresholds)


def _write_thresholds(config_file: Path, thresholds: dict[str, float]) -> None:
    """Put the calibrated thresholds into a shipped model's config.json (weights untouched)."""
    config = json.loads(config_file.read_text())
    kept = {  # measured by benchmarks/bench_noise.py and bench_ct_user.py, not calibrated here
        k: v
        for k, v in (config["metrics"].get("image_check") or {}).items()
        if k == "noise" or k.startswith("intensity_")
    }
    config["metrics"]["image_check"] = {**thresholds, **kept}
    tmp = config_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(config_file)
    print(f"wrote metrics.image_check into {config_file}")


def _corners(image: np.ndarray, crop: int) -> list[tuple[slice, slice]]:
    """The four corner crops and the centre crop of one plane."""
    y, x = image.shape[:2]
    starts = [(0, 0), (0, x - crop), (y - crop, 0), (y - crop, x - crop)]
    return [(slice(a, a + crop), slice(b, b + crop)) for a, b in starts] + [_center(image, crop)]


def bench_scale_gain_low(crop: int, write: bool) -> None:
    """EM's ``scale_gain_low`` from every corner and the centre of its validation slices
    (the check after Segment on each crop, as the dock runs it), then its fire rate on the
    test slices' crops at 4 nm and on whole test slices at 8 nm (0.5x: crop-sized).

    Why: calibrated on three centre crops (0.968-1.176), the limit (0.88) fired on 2 of 20
    native 4 nm corner crops of the test slices (0.782, 0.864), telling the user to
    "rescale the image by 2.00", which lost them 0.09-0.10 IoU (QA session 13).
    ``write``: store the new limit in the shipped EM model's config.json.
    """
    from napari_unetpp.disagreement import check_result
    from napari_unetpp.inference import predict

    model, info = zoo.load_pretrained("em")
    image, membranes = D.load_em()
    config = PredictConfig(device="cpu")

    def gain_and_iou(plane: np.ndarray, truth: np.ndarray, rescale: bool) -> tuple[float, ...]:
        probs = drive(predict(model, plane, config, info.data))
        check = drive(check_result(model, plane, probs, info.data, config, info.metrics))
        iou = M.iou(np.asarray(probs[model.depth]) > 0.5, truth.astype(bool))
        if not rescale:
            return check.signals["scale_gain"], iou, float("nan")
        twice = predict_array(model, plane, config.replace(rescale=2.0), info.data)
        return check.signals["scale_gain"], iou, M.iou(twice[model.depth] > 0.5, truth > 0)

    calibration = [
        gain_and_iou(image[z][i], membranes[z][i], False)[0]
        for z in range(*zoo.EM_VAL_SLICES)
        for i in _corners(image[z], crop)
    ]
    low = calibrate([{"scale_gain": g} for g in calibration])["scale_gain_low"]
    old = info.metrics["image_check"]["scale_gain_low"]
    print(f"validation crops {crop}: scale gain {min(calibration):.3f}-{max(calibration):.3f}")
    print(f"scale_gain_low: {old} -> {low}\n")
    print("| test images | count | scale gain | fires at old / new | IoU (L4) | IoU at 2x |")
    print("|---|---|---|---|---|---|")
    tests = {"native 4 nm crops": [], "8 nm (whole slice at 0.5x)": []}
    for z in range(*zoo.EM_TEST_SLICES):
        for i in _corners(image[z], crop):
            tests["native 4 nm crops"].append(gain_and_iou(image[z][i], membranes[z][i], True))
        small, truth = _rescale(image[z], membranes[z], crop / image.shape[-1])
        tests["8 nm (whole slice at 0.5x)"].append(gain_and_iou(small, truth, False))
    for name, rows in tests.items():
        gains, ious, twice = (np.asarray(v) for v in zip(*rows, strict=True))
        print(
            f"| {name} | {len(rows)} | {gains.min():.3f}-{gains.max():.3f} "
            f"| {(gains < old).sum()} / {(gains < low).sum()} | {ious.mean():.3f} "
            f"| {'-' if np.isnan(twice).all() else f'{np.nanmean(twice):.3f}'} |"
        )
    if write:
        path = zoo.models_dir() / "em" / CONFIG_NAME
        stored = json.loads(path.read_text())
        stored["metrics"]["image_check"]["scale_gain_low"] = low
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=2) + "\n")
        tmp.replace(path)
        print(f"\nwrote metrics.image_check.scale_gain_low {low} into {path}")


def _nothing_found(row: dict[str, Any]) -> bool:
    """The check's "found nothing" verdict (``check_prediction``): no class pixel, and the
    heads sure of it. Rows saved before this key was recorded count as found."""
    unsure = row.get("uncertain_fraction")
    return bool(row.get("found_nothing")) and (
        unsure is None or unsure <= THRESHOLDS["uncertain_fraction"]
    )


def summarise(rows: list[dict[str, Any]], thresholds: dict[str, dict[str, float]]) -> None:
    """Fire rate per model and shift; per-image correlation of each signal with the IoU."""
    print("\n| model | shift | images | mean IoU | warning fires |")
    print("|---|---|---|---|---|")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["shift"]), []).append(row)
    for (name, shift), group in groups.items():
        limits = {**THRESHOLDS, **thresholds.get(name, {})}
        fired = sum(judge(r, limits)[0] or _nothing_found(r) for r in group)
        print(
            f"| {name} | {shift} | {len(group)} | {np.mean([r['iou'] for r in group]):.3f} "
            f"| {fired}/{len(group)} |"
        )
    print("\n| model | signal | Pearson r with per-image IoU (all shifts) |")
    print("|---|---|---|")
    for name in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == name]
        for signal in ("depth_disagreement", "flip_disagreement", "uncertain_fraction"):
            values = [(r[signal], r["iou"]) for r in sub if r.get(signal) is not None]
            if len(values) > 2:
                a, b = np.array(values).T
                print(f"| {name} | {signal} | {np.corrcoef(a, b)[0, 1]:+.2f} |")


# --------------------------------------------------------------------------- labelling


def _finetune(
    model: Any, data: Any, images: np.ndarray, sparse: np.ndarray, iterations: int, seed: int
) -> Any:
    """Fine-tune from the same start on sparse labels (0 unlabelled, 1 background, 2.. classes)."""
    from napari_unetpp.config import TrainConfig
    from napari_unetpp.training import Trainer

    config = TrainConfig(
        iterations=iterations,
        batch_size=4,
        patch_size=(128, 128),
        learning_rate=1e-4,
        validation_fraction=0.0,
        validate_every=iterations,
        foreground_fraction=1.0,
        device="cpu",
        mixed_precision=False,
        seed=seed,
    )
    trainer = Trainer(model.config, config, data, initial=model)
    return drive(trainer.run(list(images), list(sparse))).model


#: The labelling arms: how each picks ``regions`` blocks of the shifted pool: at random, by
#: the depths' mean disagreement, by the deepest head's mean margin doubt, by label_here_next.
LABELLING_ARMS = ("random", "disagreement", "doubt", "label_here_next")


def _scan_blocks(shape: tuple[int, ...], size: int) -> list[Any]:
    """Every ``size`` x ``size`` block of a (images, y, x) stack, in scan order (random picks)."""
    from napari_unetpp.label_next import Region

    return [
        Region((z,), (y, x), (size, size), 0.0)
        for z in range(shape[0])
        for y in range(0, shape[1] - size + 1, size)
        for x in range(0, shape[2] - size + 1, size)
    ]


def _labelling_case(name: str) -> dict[str, Any]:
    """A shipped model, a shifted pool with its per-pixel classes, a fine-tune config, a scorer.

    em: the stack blurred (sigma 2), pool = validation slices, test = test slices, L4 IoU.
    nuclei: darkened 256 crops of the held-back DSB ids, pool = even-numbered, test =
    odd-numbered, mean foreground IoU of the instance labels (classes 0 bg, 1 interior,
    2 boundary, as the model was trained).
    """
    from scipy import ndimage

    from napari_unetpp.labels import instance_targets

    model, info = zoo.load_pretrained(name)
    config = PredictConfig(device="cpu")
    last = config.replace(pruned_depth=model.config.depth)
    if name == "em":
        image, membranes = D.load_em()
        blur = ndimage.gaussian_filter(image.astype(np.float32), (0, 2, 2)).astype(np.uint8)
        (v0, v1), (t0, t1) = zoo.EM_VAL_SLICES, zoo.EM_TEST_SLICES
        test, truth = blur[t0:t1], membranes[t0:t1].astype(bool)

        def score(net: Any) -> float:
            return M.iou(predict_array(net, test, last, info.data)[4] > 0.5, truth)

        return dict(
            model=model,
            pool=blur[v0:v1],
            classes=membranes[v0:v1],
            probs=predict_array(model, blur[v0:v1], config, info.data),
            data=info.data.replace(label_mode="sparse", class_values=(2,)),
            score=score,
            where=f"blurred EM, pool slices {v0}-{v1 - 1}, test slices {t0}-{t1 - 1}",
        )
    ids = list(zoo.NUCLEI_HELD_OUT_IDS)
    pool_pairs = [shifted(*D.load_nucleus(i), "darkened", 256) for i in ids[0::2]]
    tests = [shifted(*D.load_nucleus(i), "darkened", 256) for i in ids[1::2]]
    pool = np.stack([im for im, _ in pool_pairs])
    width = info.data.boundary_width
    per_image = [predict_array(model, im, config, info.data) for im in pool]
    probs = {d: np.stack([p[d] for p in per_image], axis=1) for d in per_image[0]}  # (C, N, y, x)

    def score_nuclei(net: Any) -> float:
        return float(
            np.mean(
                [
                    _truth_score("nuclei", predict_array(net, im, last, info.data)[4], lab, info)
                    for im, lab in tests
                ]
            )
        )

    return dict(
        model=model,
        pool=pool,
        classes=np.stack([instance_targets(lab, width) for _, lab in pool_pairs]),
        probs=probs,
        data=info.data.replace(target="semantic", label_mode="sparse", class_values=(2, 3)),
        score=score_nuclei,
        where=f"darkened DSB crops, pool {len(pool)} even held-back ids, test {len(tests)} odd",
    )


def bench_labelling(
    name: str, regions: int, size: int, iterations: int, seeds: list[int], arms: list[str]
) -> None:
    """A shifted domain: label the regions each arm picks on the pool (same area for every
    arm), fine-tune the shipped model from the same start, score the deepest head on the
    shifted test split. Every arm ranks the same prediction of the pool."""
    from napari_unetpp.disagreement import disagreement_map
    from napari_unetpp.label_next import label_here_next, margin_doubt, rank_regions

    case = _labelling_case(name)
    model, pool, classes, probs = case["model"], case["pool"], case["classes"], case["probs"]
    c, shape = model.config.num_classes, (size, size)
    blocks = _scan_blocks(pool.shape, size)
    ranked = {
        "disagreement": rank_regions(disagreement_map(probs, c), shape, regions),
        "doubt": rank_regions(margin_doubt(probs[max(probs)], c), shape, regions),
        "label_here_next": label_here_next(probs, c, shape, regions),
    }
    print(
        f"{case['where']}: start (no fine-tune) {case['score'](model):.4f}; {regions} regions "
        f"of {size}x{size} = {100 * regions * size * size / pool.size:.1f}% of the pool labelled"
    )
    results: dict[str, list[float]] = {arm: [] for arm in arms}
    print("| regions picked by | seed | foreground fraction | score after fine-tune |")
    print("|---|---|---|---|")
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for arm in arms:
            if arm == "random":
                chosen = [blocks[i] for i in rng.choice(len(blocks), regions, replace=False)]
            else:
                chosen = ranked[arm]
            sparse = np.zeros(pool.shape, np.uint8)
            for region in chosen:
                sparse[region.index] = classes[region.index] + 1
            foreground = float(np.mean([(classes[r.index] > 0).mean() for r in chosen]))
            tuned = _finetune(model, case["data"], pool, sparse, iterations, seed)
            results[arm].append(case["score"](tuned))
            print(f"| {arm} | {seed} | {foreground:.3f} | {results[arm][-1]:.4f} |", flush=True)
    print("\n| regions picked by | mean +- sd over seeds | min | max |\n|---|---|---|---|")
    for arm, values in results.items():
        v = np.asarray(values)
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        print(f"| {arm} | {v.mean():.4f} +- {sd:.4f} | {v.min():.4f} | {v.max():.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("adaptive")
    a.add_argument("--tolerances", nargs="+", type=float, default=[0.05])
    a.add_argument("--tiles", nargs="+", type=int, default=[256])
    a.add_argument("--repeats", type=int, default=2)
    w = sub.add_parser("warning")
    w.add_argument(
        "--object-diameter",
        type=float,
        default=None,
        help="nuclei training objects' median diameter (px) if the model lacks it",
    )
    w.add_argument("--crop", type=int, default=256, help="centre crop (CPU time)")
    w.add_argument("--json", type=Path, help="write the per-image signals here")
    w.add_argument(
        "--write",
        action="store_true",
        help="store the calibrated thresholds in the shipped models' config.json",
    )
    g = sub.add_parser("scale-gain-low", help="EM's scale_gain_low from corner crops")
    g.add_argument("--crop", type=int, default=256)
    g.add_argument("--write", action="store_true", help="store it in the EM model's config")
    lab = sub.add_parser("labelling")
    lab.add_argument("--model", choices=("em", "nuclei"), default="em")
    lab.add_argument("--regions", type=int, default=8)
    lab.add_argument("--size", type=int, default=64)
    lab.add_argument("--iterations", type=int, default=40)
    lab.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    lab.add_argument("--arms", nargs="+", choices=LABELLING_ARMS, default=list(LABELLING_ARMS))
    s = sub.add_parser("summary", help="recalibrate and re-judge a --json file")
    s.add_argument("json", type=Path)
    s.add_argument(
        "--without",
        nargs="+",
        default=[],
        metavar="SIGNAL",
        help="judge as if these signals were not measured (flip_disagreement: the check "
        "after every segmentation makes no flipped pass)",
    )
    s.add_argument(
        "--ignore-limit",
        nargs="+",
        default=[],
        metavar="KEY",
        help="judge without these calibrated limits (scale_gain_low: the check before "
        "it caught objects smaller than in training)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "adaptive":
        bench_adaptive(args.tolerances, args.tiles, args.repeats)
    elif args.what == "labelling":
        bench_labelling(args.model, args.regions, args.size, args.iterations, args.seeds, args.arms)
    elif args.what == "scale-gain-low":
        bench_scale_gain_low(args.crop, args.write)
    elif args.what == "warning":
        bench_warning(args.crop, args.json, args.object_diameter, args.write)
    else:
        saved = json.loads(args.json.read_text())  # recalibrated: the current rule
        dropped = dict.fromkeys(args.without)
        rows = [{**r, **dropped} for r in saved["calibration"]]
        names = dict.fromkeys(r["model"] for r in rows)
        summarise(
            [{**r, **dropped} for r in saved["evaluation"]],
            {
                n: {
                    k: v
                    for k, v in calibrate([r for r in rows if r["model"] == n]).items()
                    if k not in args.ignore_limit
                }
                for n in names
            },
        )


if __name__ == "__main__":
    main()
