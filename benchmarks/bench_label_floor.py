"""The floor below which 'label here next' ranks nothing (``label_next.NEGLIGIBLE_DOUBT``).

Why: on an image the deepest head is sure of everywhere (an empty field), the blocks' doubt
is noise, and ranking it sent the user to paint nothing in particular. This prints the best
128-px block's mean doubt (the score of the first block ranked) on real held-out DSB images
(every 10th of the shared set, the nuclei model) and on flat / empty fields for the nuclei
and EM models, so the floor can sit between them.

Run (CPU, about a minute)::

    NAPARI_UNETPP_DATA=/work/shared/data python benchmarks/bench_label_floor.py
"""

from __future__ import annotations

import numpy as np
import tifffile
import torch
from skimage import io

from napari_unetpp.config import PredictConfig
from napari_unetpp.datasets import shared_data_dir
from napari_unetpp.files import load_model
from napari_unetpp.inference import predict_array
from napari_unetpp.label_next import NEGLIGIBLE_DOUBT, margin_doubt, rank_regions, region_size
from napari_unetpp.normalization import rgb_to_grey


def best_block(model: torch.nn.Module, data_config: object, image: np.ndarray) -> float:
    """The most doubtful 128-px block's mean doubt of the deepest head."""
    config = PredictConfig(device="cpu", tile_size=(256, 256))
    probs = predict_array(model, image, config, data_config)
    doubt = margin_doubt(probs[max(probs)], model.config.num_classes)
    return rank_regions(doubt, region_size(2), top=1)[0].score


def main() -> None:
    torch.set_num_threads(1)
    root = shared_data_dir()
    assert root is not None, "set NAPARI_UNETPP_DATA"
    nuclei, nuclei_info = load_model("zoo:nuclei")
    em, em_info = load_model("zoo:em")
    names = sorted(p.name for p in (root / "nuclei_dsb2018" / "images").iterdir())[::10][:40]
    real = []
    for name in names:
        image = io.imread(root / "nuclei_dsb2018" / "images" / name)
        if image.ndim == 3:
            image = np.clip(np.round(rgb_to_grey(image[..., :3])), 0, 255).astype(np.uint8)
        real.append(best_block(nuclei, nuclei_info.data, image))
    scores = np.sort(np.asarray(real))
    print(f"nuclei model, {scores.size} DSB images: lowest {np.round(scores[:5], 4).tolist()}")
    print(f"  median {np.median(scores):.4f}")
    em_image = tifffile.imread(root / "em_isbi2012" / "image.tif")[3, :384, :384]
    print(f"EM model, an ISBI slice (384 px): {best_block(em, em_info.data, em_image):.4f}")
    for value in (0, 128, 200):
        flat = np.full((384, 384), value, np.uint8)
        nuclei_flat = best_block(nuclei, nuclei_info.data, flat)
        em_flat = best_block(em, em_info.data, flat)
        print(f"constant {value:3d}: nuclei model {nuclei_flat:.4f}, EM model {em_flat:.4f}")
    print(f"floor (label_next.NEGLIGIBLE_DOUBT): {NEGLIGIBLE_DOUBT}")


if __name__ == "__main__":
    main()
