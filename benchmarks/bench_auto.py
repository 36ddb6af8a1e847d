"""``rescale="auto"`` on whole held-back DSB images, native and upsampled 2x, per tolerance.

Why: benchmarks/bench_shift.py scores centre crops; the model card scores whole images,
where a few large images weigh most in the pixel-counted foreground IoU. This runs the
card's scores (foreground IoU over all pixels, DSB AP@0.5 per image; L3 and L4) with no
rescale and with ``rescale="auto"`` at each ``AUTO_TOLERANCE`` given (objects larger than
the training median by more than it are shrunk to the median).

Run (CPU, 1 thread; about 5 min native, 15 min 2x on 2 shared cores)::

    PYTHONPATH=src python benchmarks/bench_auto.py native 0.12 0.3 0.5
    PYTHONPATH=src python benchmarks/bench_auto.py 2x 0.12 0.3 0.5

``2x``: the even-numbered held-back images (22), upsampled 2x (``bench_shift.zoom_pair``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import zoo_specs as Z  # noqa: E402  (the held-back split and the card's scores)
from bench_shift import zoom_pair  # noqa: E402

from napari_unetpp import scale as S  # noqa: E402
from napari_unetpp import zoo  # noqa: E402
from napari_unetpp.config import PredictConfig  # noqa: E402
from napari_unetpp.inference import predict_array  # noqa: E402
from napari_unetpp.postprocess import probabilities_to_labels  # noqa: E402


def score(images: list, rescale: str | None) -> dict:
    """The card's scores at L3 and L4, and how many images were resampled."""
    model, info = zoo.load_pretrained("nuclei")
    config = PredictConfig(device="cpu", tile_size=(256, 256), rescale=rescale)
    labels: dict[int, list] = {3: [], 4: []}
    resampled = 0
    for image, _ in images:
        probs = predict_array(model, image, config, info.data)
        zoom = (getattr(probs, "scale", None) or {}).get("zoom") or [1.0]
        resampled += any(z != 1.0 for z in zoom)
        for d in labels:
            labels[d].append(np.asarray(probabilities_to_labels(probs[d], info.model, info.data)))
    scores = {f"L{d}": Z._nuclei_score(found, images) for d, found in labels.items()}
    return {
        "resampled": resampled,
        **{k: {n: round(v, 4) for n, v in s.items()} for k, s in scores.items()},
    }


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    which, tolerances = argv[0], [float(t) for t in argv[1:]]
    images = Z._nuclei_test()
    if which == "2x":
        images = [zoom_pair(image, labels, 2.0) for image, labels in images[::2]]
    print(json.dumps({"set": which, "images": len(images), "rescale": None, **score(images, None)}))
    for tolerance in tolerances:
        S.AUTO_TOLERANCE = tolerance  # read by rescaled.py's half-size probe
        S.auto_rescale.__kwdefaults__["tolerance"] = tolerance  # type: ignore[index]
        row = {"set": which, "tolerance": tolerance, "rescale": "auto", **score(images, "auto")}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
