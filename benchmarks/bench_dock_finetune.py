"""The Train dock's fine-tune defaults as a new user meets them, in a real napari viewer.

Why: a user paints labels in napari (napari's default brush is 10 px and its default label
1) and presses Start with the dock's defaults; whether that makes a good model worse is
measured on slices the user never painted. Each scenario opens a viewer (run it under
xvfb), paints like a user, sets only the Image, Labels, 'Start from' and Output folder
fields, clicks Start, waits, and scores the starting and the fine-tuned model at every
depth with the engine (``inference.predict``), printing the dock's status and its
notifications (the warnings the dock gives are part of the result):

- ``em-thin``: EM slices 8-11 (256 x 256), 8 membrane strokes (value 2, 3 px brush)
  along the membranes and 8 background strokes (value 1, 6 px) inside cells, on the slice
  shown (9), from ``shipped: em``; membrane IoU on unseen slices 15-19.
- ``em-wide``: the same strokes with napari's default brush (10 px) for the membranes.
- ``em-label1``: one slice (9) alone, the membrane strokes only, in napari's default
  label 1 (so dense labels: every unpainted pixel background).
- ``ct-dense``: the CT scan's slices 90-105 with dense masks of the shipped CT model's five
  organs in its own values, from ``shipped: ct``; organ Dice on unseen slices 70-85.

Run (CPU, 1 torch thread; 5-25 min per scenario on 2 busy shared cores)::

    xvfb-run -a -s "-screen 0 1600x1000x24" env PYTHONPATH=src OMP_NUM_THREADS=1 \\
        python benchmarks/bench_dock_finetune.py em-wide --out /tmp/dock_runs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_unetpp.datasets import shared_data_dir

MODEL_VALUES = {5: 1, 1: 2, 2: 3, 3: 4, 6: 5}  # TotalSegmentator id -> CT model value
ORGANS = ("liver", "spleen", "kidney_right", "kidney_left", "stomach")


def _pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def _stroke(array: np.ndarray, a: Any, b: Any, value: int, radius: float) -> None:
    """A brush stroke: disks of ``radius`` along the line from ``a`` to ``b``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    steps = int(max(2, np.linalg.norm(b - a) / max(radius / 2, 0.5)))
    yy, xx = np.ogrid[: array.shape[0], : array.shape[1]]
    for t in np.linspace(0, 1, steps):
        cy, cx = a + t * (b - a)
        array[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value


def em_strokes(membranes: np.ndarray, membrane_radius: float, seed: int = 0) -> np.ndarray:
    """8 membrane strokes (2) following the membranes and 8 background strokes (1) inside
    cells, on one 2D slice."""
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    rng = np.random.default_rng(seed)
    out = np.zeros(membranes.shape, np.uint8)
    skeleton = np.argwhere(skeletonize(membranes == 1))
    for _ in range(8):
        centre = skeleton[rng.integers(len(skeleton))]
        for point in skeleton[np.abs(skeleton - centre).max(1) < 15]:
            _stroke(out, point, point, 2, membrane_radius)
    distance = ndi.distance_transform_edt(membranes == 0)
    inside = np.argwhere(distance > 8)
    cells, _ = ndi.label(distance > 4)
    for _ in range(8):
        a = inside[rng.integers(len(inside))]
        same = inside[cells[tuple(inside.T)] == cells[tuple(a)]]
        _stroke(out, a, same[rng.integers(len(same))], 1, 3)
    return out


def _scores(checkpoint: str, image: np.ndarray, truth: np.ndarray, classes: int) -> dict:
    """IoU (one class) or Dice per class (several) of every depth on ``image``."""
    from napari_unetpp.checkpoint import load_checkpoint
    from napari_unetpp.config import PredictConfig
    from napari_unetpp.events import drive
    from napari_unetpp.inference import predict
    from napari_unetpp.locate import locate

    model, info = load_checkpoint(locate(checkpoint).path, device="cpu")
    depths = tuple(range(1, model.config.depth + 1))
    config = PredictConfig(depths=depths, device="cpu", tile_size=(256, 256))
    probabilities = drive(predict(model, image, config, info.data))
    table: dict[str, Any] = {"recommended": info.metrics.get("best_depth")}
    for depth, p in probabilities.items():
        p = np.asarray(p)
        if classes == 1:
            a, b = p > 0.5, truth == 1
            table[f"L{depth}"] = round(float((a & b).sum() / max(1, (a | b).sum())), 4)
        else:
            labels = p.argmax(0)
            table[f"L{depth}"] = [
                round(
                    float(2 * ((labels == c) & (truth == c)).sum())
                    / max(1, int((labels == c).sum() + (truth == c).sum())),
                    3,
                )
                for c in range(1, classes + 1)
            ]
    return table


def scenario(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str, int]:
    """The image and labels a user trains on, the unseen image and its truth, the model."""
    data = shared_data_dir()
    if data is None:
        raise SystemExit("set NAPARI_UNETPP_DATA to the shared data folder")
    if name.startswith("em"):
        image = tifffile.imread(data / "em_isbi2012" / "image.tif")
        truth = tifffile.imread(data / "em_isbi2012" / "membranes.tif")
        train, seen = image[8:12, :256, :256].copy(), truth[8:12, :256, :256]
        labels = np.zeros(seen.shape, np.uint8)
        labels[1] = em_strokes(seen[1], 5.0 if name == "em-wide" else 1.5)
        if name == "em-label1":  # napari's default label 1, membranes only, one slice
            train, labels = train[1].copy(), (labels[1] == 2).astype(np.uint8)
        return train, labels, image[15:20, :256, :256], truth[15:20, :256, :256], "zoo:em", 1
    scan = tifffile.imread(data / "ct_totalseg" / "ct_full.tif")
    ids = tifffile.imread(data / "ct_totalseg" / "organs_full.tif")
    organs = np.zeros(ids.shape, np.uint8)
    for tool, value in MODEL_VALUES.items():
        organs[ids == tool] = value
    return scan[90:106].copy(), organs[90:106], scan[70:86], organs[70:86], "zoo:ct", 5


def main(argv: list[str] | None = None) -> None:
    import napari
    from napari.utils.notifications import notification_manager

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["em-thin", "em-wide", "em-label1", "ct-dense"])
    parser.add_argument("--out", type=Path, default=Path("dock_runs"))
    args = parser.parse_args(argv)
    train, labels, unseen, truth, start, classes = scenario(args.scenario)
    told: list[str] = []
    viewer = napari.Viewer()
    notification_manager.notification_ready.connect(lambda n: told.append(str(n.message)))
    viewer.add_image(train, name="image")
    viewer.add_labels(labels, name="my labels")
    if train.ndim == 3:
        viewer.dims.set_point(0, 1)  # the slice painted is the one shown
    _, dock = viewer.window.add_plugin_dock_widget("napari-unetpp", "Train / fine-tune UNet++")
    _pump(1.0)
    dock._start_from.value = start  # everything else as the dock sets it
    dock._output.value = args.out
    _pump(0.5)
    print(f"label mode {dock._label_mode.value}: {dock._label_reason.value}", flush=True)
    began = time.time()
    dock._start.native.click()
    while dock._runner.running:
        _pump(1.0)
    print(f"{time.time() - began:.0f} s; status: {dock._status.value}", flush=True)
    for message in told:
        print(f"notification: {message}", flush=True)
    print("before", _scores(start, unseen, truth, classes), flush=True)
    print("after ", _scores(str(dock.last_checkpoint), unseen, truth, classes), flush=True)
    viewer.close()


if __name__ == "__main__":
    main()
