"""The noise a shipped model tolerates, and the "noisier than this model tolerates" warning.

Why: on a noisy scan the heads agree and are sure of themselves while being wrong, so the
output signals of the image check stay quiet (issue 14: a user's scanner is not ours).
This measures, per model and without labels, how much added noise its validation images
take before its deepest head's labels move away from its own labels on the clean image,
stores that level as ``metrics["image_check"]["noise"]`` (``--write``), and scores the
warning on the held-back test images, native and with added noise (against the truth).

Run (CPU, a few minutes)::

    NAPARI_UNETPP_DATA=/work/shared/data python benchmarks/bench_noise.py [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_depth import _truth_score, calibration_cases, evaluation_cases  # noqa: E402

from napari_unetpp import zoo  # noqa: E402
from napari_unetpp.config import PredictConfig  # noqa: E402
from napari_unetpp.inference import predict_array  # noqa: E402
from napari_unetpp.locate import CONFIG_NAME  # noqa: E402
from napari_unetpp.noise import noise_level  # noqa: E402
from napari_unetpp.normalization import intensity_range  # noqa: E402
from napari_unetpp.postprocess import probabilities_to_labels  # noqa: E402

#: Added Gaussian noise, in normalised units (a fraction of the normalisation's range).
LADDER = (0.0, 0.02, 0.04, 0.06, 0.08, 0.11, 0.15, 0.2)
#: A level is tolerated while the labels keep this IoU with the clean image's labels.
AGREEMENT = 0.8
#: Test images get these levels of added noise (normalised units) for the evaluation.
TEST_LEVELS = (0.05, 0.1)


def noisy(image: np.ndarray, level: float, config: Any, seed: int = 0) -> np.ndarray:
    """``image`` with Gaussian noise of ``level`` x its normalisation range, in its dtype."""
    if level == 0:
        return image
    low, high = intensity_range(image, config.data.normalization)
    rng = np.random.default_rng(seed)
    out = image.astype(np.float32) + rng.normal(0, level * (high - low), image.shape)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(image.dtype)


def labels_of(model: Any, info: Any, image: np.ndarray) -> np.ndarray:
    """The deepest head's labels (what a user gets), on the CPU in float32."""
    config = PredictConfig(device="cpu", depths=(model.config.depth,), mixed_precision=False)
    probs = predict_array(model, image, config, info.data)
    return np.asarray(probabilities_to_labels(probs[model.config.depth], info.model, info.data))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean IoU over the classes of ``a`` (foreground for instances): 1 = the same labels."""
    classes = [k for k in np.unique(a) if k > 0]
    if len(classes) > 8:  # instances: compare the foreground
        a, b, classes = a > 0, b > 0, [True]
    if not classes:
        return 1.0 if not (b > 0).any() else 0.0
    ious = []
    for k in classes:
        x, y = a == k, b == k
        ious.append((x & y).sum() / max((x | y).sum(), 1))
    return float(np.mean(ious))


def tolerated(model: Any, info: Any, image: np.ndarray) -> tuple[float, list[tuple]]:
    """The measured noise of the noisiest ladder level whose labels still agree."""
    clean = labels_of(model, info, image)
    steps, best = [], noise_level(image, info.data) or 0.0
    for level in LADDER[1:]:
        shaken = noisy(image, level, info)
        measured = noise_level(shaken, info.data) or 0.0
        agree = agreement(clean, labels_of(model, info, shaken))
        steps.append((level, round(measured, 4), round(agree, 3)))
        if agree < AGREEMENT:
            break
        best = measured
    return best, steps


def calibrate_noise(models: dict[str, Any], crop: int) -> dict[str, float]:
    """Per model: the median tolerated noise over its native validation images."""
    levels: dict[str, list[float]] = {name: [] for name in models}
    for name, _, image, _ in calibration_cases(crop):
        model, info = models[name]
        value, steps = tolerated(model, info, image)
        levels[name].append(value)
        print(f"{name:7s} tolerated {value:.4f}  (level, noise, agreement) {steps}", flush=True)
    return {name: round(float(np.median(v)), 4) for name, v in levels.items() if v}


def evaluate(models: dict[str, Any], limits: dict[str, float], crop: int) -> None:
    """Fire rate and true score per model and added noise on the held-back test images."""
    rows: dict[tuple[str, float], list[tuple[float, bool]]] = {}
    for name, shift, image, truth in evaluation_cases(crop):
        if shift != "native":
            continue
        model, info = models[name]
        for level in (0.0, *TEST_LEVELS):
            shaken = noisy(image, level, info, seed=1)
            config = PredictConfig(device="cpu", mixed_precision=False)
            probs = predict_array(model, shaken, config, info.data)
            score = _truth_score(name, probs[max(probs)], truth, info)
            measured = noise_level(shaken, info.data)
            rows.setdefault((name, level), []).append(
                (score, measured is not None and measured > limits[name])
            )
    print("\n| model | added noise (of the range) | images | mean IoU | warning fires |")
    print("|---|---|---|---|---|")
    for (name, level), values in rows.items():
        scores, fired = zip(*values, strict=True)
        print(
            f"| {name} | {level:g} | {len(values)} | {np.mean(scores):.3f} "
            f"| {sum(fired)}/{len(values)} |"
        )


def write_limit(name: str, limit: float) -> None:
    """Add the model's tolerated noise to its shipped config.json (weights untouched)."""
    path = zoo.models_dir() / name / CONFIG_NAME
    config = json.loads(path.read_text())
    config["metrics"].setdefault("image_check", {})["noise"] = limit
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote metrics.image_check.noise {limit} into {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crop", type=int, default=256, help="centre crop (CPU time)")
    parser.add_argument("--write", action="store_true", help="store the limits in the zoo")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {name: zoo.load_pretrained(name) for name in ("nuclei", "em", "ct")}
    limits = calibrate_noise(models, args.crop)
    print("tolerated noise:", json.dumps(limits))
    if args.write:
        for name, limit in limits.items():
            write_limit(name, limit)
    evaluate(models, limits, args.crop)


if __name__ == "__main__":
    main()
