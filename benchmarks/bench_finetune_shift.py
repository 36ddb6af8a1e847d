"""Fine-tuning on another lab's EM: the Train dock's defaults against variants (issue 16).

Why: the dock's fine-tuning defaults (learning rate 1e-4, 200 steps, BatchNorm statistics
kept, unpainted predictions kept) were chosen on data like the EM model's own, where a
fine-tune must above all do no harm. A user fine-tunes because their data is *not* ours.
This builds "another lab's EM" from the ISBI stack: 3 nm pixels instead of 4 (zoom 4/3,
no pixel size given), blur (sigma 1), gamma 0.7 and noise (sd 8 grey levels); paints the
slow test's ten round scribble dabs (tests/test_finetune.py) on slice 16 of that domain,
fine-tunes the shipped EM model from the same start per arm, and scores membrane IoU
(L3 and L4, pooled over pixels) on the unseen slices 17-19 of the same domain.

Run (CPU, 1 torch thread; about 5 min per 200-step arm on 2 shared cores)::

    PYTHONPATH=src python benchmarks/bench_finetune_shift.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_finetune import _scribbles  # noqa: E402  (the slow test's dabs)

from napari_unetpp import zoo  # noqa: E402
from napari_unetpp.config import (  # noqa: E402
    FINE_TUNE_ITERATIONS,
    FINE_TUNE_LEARNING_RATE,
    PredictConfig,
    TrainConfig,
)
from napari_unetpp.events import drive  # noqa: E402
from napari_unetpp.inference import predict_array  # noqa: E402
from napari_unetpp.metrics import confusion_counts  # noqa: E402
from napari_unetpp.training import Trainer  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "em_isbi2012"
ARMS: dict[str, dict] = {
    "dock defaults": {},
    "30 steps": {"iterations": 30},
    "unpainted predictions not kept (preserve 0)": {"preserve_weight": 0.0},
    "BatchNorm statistics re-estimated": {"freeze_norm": False},
}


def other_lab(image: np.ndarray, membranes: np.ndarray, seed: int = 0) -> dict:
    """Slices 16-19 as another lab's EM would show them (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = {}
    for z in (16, 17, 18, 19):
        im = ndi.gaussian_filter(ndi.zoom(image[z].astype(np.float32), 4 / 3, order=1), 1.0)
        im = 255 * (im / 255) ** 0.7 + rng.normal(0, 8, im.shape)
        out[z] = (np.clip(im, 0, 255).astype(np.uint8), ndi.zoom(membranes[z], 4 / 3, order=0))
    return out


def score(net: torch.nn.Module, pairs: dict, data_config) -> dict[str, float]:
    """Membrane IoU over the pixels of slices 17-19, per depth."""
    out = {}
    for depth in (3, 4):
        tp = fp = fn = 0
        config = PredictConfig(depths=(depth,), tile_size=(256, 256), device="cpu")
        for z in (17, 18, 19):
            image, membranes = pairs[z]
            pred = np.asarray(predict_array(net.eval(), image, config, data_config)[depth]) > 0.5
            a, b, c = confusion_counts(pred, membranes == 1)
            tp, fp, fn = tp + a, fp + b, fn + c
        out[f"L{depth}"] = round(float(tp / (tp + fp + fn)), 4)
    return out


def main() -> None:
    torch.set_num_threads(1)
    pairs = other_lab(tifffile.imread(DATA / "image.tif"), tifffile.imread(DATA / "membranes.tif"))
    model, info = zoo.load_pretrained("em")
    entry = next(e for e in zoo.available_models() if e.name == "em")
    start = str(getattr(entry, "folder", None) or entry.path)
    print(json.dumps({"arm": "start (no fine-tune)", **score(model, pairs, info.data)}), flush=True)
    image, membranes = pairs[16]
    strokes = _scribbles(membranes, strokes=10, radius=12)
    print(f"scribbled pixels: {int((strokes > 0).sum())} of {strokes.size}", flush=True)
    data = info.data.replace(label_mode="sparse", class_values=())
    base = dict(
        iterations=FINE_TUNE_ITERATIONS,
        batch_size=4,
        patch_size=(128, 128),
        learning_rate=FINE_TUNE_LEARNING_RATE,
        validate_every=10_000,
        device="cpu",
        seed=0,
    )
    for name, change in ARMS.items():
        t = time.time()
        trainer = Trainer(info.model, TrainConfig(**{**base, **change}), data, initial=start)
        tuned = drive(trainer.run([image], [strokes])).model
        row = {"arm": name, **score(tuned, pairs, info.data), "s": round(time.time() - t)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
