"""The zoo's data, read from the shared data folder: EM, CT (whole scan and held-back block), DSB.

Why apart from the specs: benchmarks load the same images the cards were scored
on. ``DATA`` is read at call time, so a test can point it elsewhere
(``monkeypatch.setattr(zoo_data, "DATA", ...)``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_unetpp import zoo
from napari_unetpp.datasets import shared_data_dir
from napari_unetpp.normalization import rgb_to_grey

ROOT = Path(__file__).resolve().parents[1]
DATA = shared_data_dir() or ROOT.parent / "shared" / "data"

Pair = tuple[np.ndarray, np.ndarray]


def load_em() -> tuple[np.ndarray, np.ndarray]:
    """ISBI 2012 stack (Z, Y, X) uint8 and membranes (1 = membrane)."""
    folder = DATA / "em_isbi2012"
    return tifffile.imread(folder / "image.tif"), tifffile.imread(folder / "membranes.tif")


#: ``ct.tif`` is slices 82-111 of ``ct_full.tif`` (the data README): the held-back test and
#: validation blocks (``zoo.CT_TEST_SLICES`` / ``CT_VAL_SLICES``, indices into ``ct.tif``)
#: are full-scan slices 82-87 and 88-91.
CT_FULL_OFFSET = 82
#: Full-scan slices left out of training right below the test block (3 slices = 9 mm), so
#: no training slice is a direct neighbour of a test slice.
CT_GAP = 3


def load_ct() -> tuple[np.ndarray, np.ndarray]:
    """CT volume (Z, Y, X) int16 HU and TotalSegmentator organ ids (the 30 held-back slices)."""
    folder = DATA / "ct_totalseg"
    return tifffile.imread(folder / "ct.tif"), tifffile.imread(folder / "organs.tif")


def load_ct_full() -> tuple[np.ndarray, np.ndarray]:
    """The whole scan (112 slices, Z, Y, X) and its organ ids (TotalSegmentator v1 ids; the
    five organs trained have the same ids as ``classes.json``)."""
    folder = DATA / "ct_totalseg"
    return tifffile.imread(folder / "ct_full.tif"), tifffile.imread(folder / "organs_full.tif")


def ct_train_slices() -> tuple[range, range]:
    """Full-scan training slices: below the test block (minus a gap) and above validation."""
    (t0, _), (_, v1) = zoo.CT_TEST_SLICES, zoo.CT_VAL_SLICES
    return range(0, CT_FULL_OFFSET + t0 - CT_GAP), range(CT_FULL_OFFSET + v1, 112)


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """DSB images are gray or RGB(A); the nuclei model takes one channel (luminance, as the
    widget and the CLI compute it for a one-channel model)."""
    if image.ndim == 3:
        image = np.clip(np.round(rgb_to_grey(image)), 0, 255).astype(np.uint8)
    return image


def nuclei_ids() -> list[str]:
    """All DSB image ids, sorted."""
    return sorted(p.stem for p in (DATA / "nuclei_dsb2018" / "images").glob("*.png"))


def load_nucleus(image_id: str) -> Pair:
    """One DSB image as grayscale uint8 and its instance labels."""
    from skimage import io

    folder = DATA / "nuclei_dsb2018"
    image = to_gray_uint8(io.imread(folder / "images" / f"{image_id}.png"))
    return image, tifffile.imread(folder / "labels" / f"{image_id}.tif")


def nuclei_split() -> tuple[list[str], list[str]]:
    """DSB image ids for training, and the held-back ones (``zoo.NUCLEI_HELD_OUT_IDS``)."""
    held = set(zoo.NUCLEI_HELD_OUT_IDS)
    ids = nuclei_ids()
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def scale_metadata(name: str) -> dict[str, Any]:
    """The ``ModelConfig`` scale fields a zoo model ships with (``PredictConfig.pixel_size`` /
    ``rescale`` use them): the training pixel size per model axis (EM 4 nm in-plane, CT 3 mm,
    from the data README), or for nuclei the training split's object diameter: the median
    over training images of each image's median equivalent diameter (what ``rescale="auto"``
    measures on one image)."""
    from napari_unetpp.scale import median_object_diameter

    if name == "em":
        return {"pixel_size": (4.0, 4.0), "pixel_unit": "nm"}
    if name == "ct":
        return {"pixel_size": (3.0, 3.0), "pixel_unit": "mm"}
    folder = DATA / "nuclei_dsb2018" / "labels"
    medians = [
        median_object_diameter(tifffile.imread(folder / f"{i}.tif")) for i in nuclei_split()[0]
    ]
    return {"object_diameter": round(float(np.nanmedian(medians)), 2)}


def log(message: str) -> None:
    """A time-stamped progress line (the zoo runs take hours)."""
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)
