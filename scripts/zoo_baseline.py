"""The classical baseline a zoo model must beat: a random-forest pixel classifier.

Multiscale intensity / edge / texture features (ilastik / napari-apoc style),
trained on the same images as the UNet++ and scored on the same held-back split
(``zoo_specs``); the scores are cached per run folder (deterministic, but slow).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from zoo_data import Pair, log
from zoo_specs import CPU_WIDTHS, SEED, ZooSpec, postprocess

from napari_unetpp.config import DataConfig, NormalizationConfig
from napari_unetpp.labels import labels_to_targets, resolve_class_values
from napari_unetpp.normalization import normalize


def rf_features(image: np.ndarray, normalization: NormalizationConfig) -> np.ndarray:
    """Multiscale intensity / edge / texture features (ilastik-style), ``(*spatial, F)``."""
    from skimage.feature import multiscale_basic_features

    normed = normalize(image, normalization)
    return multiscale_basic_features(
        normed, intensity=True, edges=True, texture=True, sigma_min=1, sigma_max=16
    ).astype(np.float32)


def train_random_forest(
    images: list[np.ndarray],
    targets: list[np.ndarray],
    normalization: NormalizationConfig,
    *,
    pixels_per_image: int = 3000,
    n_estimators: int = 50,
    seed: int = SEED,
) -> Any:
    """A random-forest pixel classifier on a class-balanced pixel subsample of 2D images.

    ``targets`` are class ids per pixel (negative = ignore). This is the classical
    baseline a UNet++ must beat to be worth its training time.
    """
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for image, target in zip(images, targets, strict=False):
        feats = rf_features(image, normalization)
        flat_t = target.ravel()
        chosen = []
        classes = [c for c in np.unique(flat_t) if c >= 0]
        for c in classes:  # balanced: rare classes (boundaries, small organs) are not drowned
            where = np.flatnonzero(flat_t == c)
            take = min(where.size, max(pixels_per_image // len(classes), 1))
            chosen.append(rng.choice(where, take, replace=False))
        index = np.concatenate(chosen)
        xs.append(feats.reshape(-1, feats.shape[-1])[index])
        ys.append(flat_t[index])
    forest = RandomForestClassifier(
        n_estimators=n_estimators, min_samples_leaf=2, n_jobs=1, random_state=seed
    )
    forest.fit(np.concatenate(xs), np.concatenate(ys))
    return forest


def rf_predict(forest: Any, image: np.ndarray, normalization: NormalizationConfig) -> np.ndarray:
    """Class probabilities ``(C, *spatial)`` of a trained forest on one 2D image."""
    feats = rf_features(image, normalization)
    prob = forest.predict_proba(feats.reshape(-1, feats.shape[-1]))
    full = np.zeros((prob.shape[0], int(max(forest.classes_)) + 1), np.float32)
    full[:, forest.classes_.astype(int)] = prob
    return np.moveaxis(full.reshape(*image.shape[:2], -1), -1, 0)


def baseline_scores(
    spec: ZooSpec, train_images: list, train_labels: list, test: list[Pair], data_config: DataConfig
) -> dict[str, Any]:
    """Train the random-forest baseline on the training images and score it like the UNet++."""
    resolved = data_config.replace(class_values=resolve_class_values(data_config, train_labels))
    images, targets = [], []
    for image, labels in zip(train_images, train_labels, strict=False):
        if image.ndim == 3 and labels.ndim == 3:  # a stack: its slices are 2D training images
            images += list(image)
            targets += [labels_to_targets(s, resolved) for s in labels]
        else:
            images.append(image)
            targets.append(labels_to_targets(labels, resolved))
    if spec.baseline_images and len(images) > spec.baseline_images:
        keep = np.random.default_rng(SEED).choice(len(images), spec.baseline_images, replace=False)
        images, targets = [images[i] for i in keep], [targets[i] for i in keep]
    start = time.perf_counter()
    forest = train_random_forest(images, targets, resolved.normalization)
    fit_s = time.perf_counter() - start
    outputs, n_px = [], 0
    start = time.perf_counter()
    model_config = spec.model_config(CPU_WIDTHS)
    for image, _ in test:
        prob = rf_predict(forest, image, resolved.normalization)
        if spec.name == "em":
            prob = prob[1:2]
        outputs.append(postprocess(spec, prob, model_config, resolved))
        n_px += image.shape[0] * image.shape[1]
    predict_s = time.perf_counter() - start
    scores = {k: float(v) for k, v in spec.score(outputs, test).items()}
    return {
        "method": f"random forest (50 trees) on skimage multiscale_basic_features, "
        f"{len(images)} training images, ~3000 class-balanced pixels each",
        **scores,
        "ms_per_mpx": round(1000 * predict_s / (n_px / 1e6), 1),
        "fit_s": round(fit_s, 1),
    }


def cached_baseline(
    spec: ZooSpec,
    folder: Path,
    images: list | None = None,
    labels: list | None = None,
    test: list[Pair] | None = None,
) -> dict[str, Any]:
    """The baseline's scores, computed once per run ``folder`` (deterministic, but slow)."""
    baseline_file = folder / "baseline.json"
    if baseline_file.is_file():
        return json.loads(baseline_file.read_text())
    log(f"{spec.name}: random-forest baseline")
    if images is None or labels is None:
        images, labels, _, _ = spec.train_data()
    baseline = baseline_scores(spec, images, labels, test or spec.test_data(), spec.data_config)
    baseline_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = baseline_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(baseline, indent=2))
    os.replace(tmp, baseline_file)
    log(f"{spec.name}: baseline {json.dumps(baseline)}")
    return baseline
