"""Regenerate the sample crops in src/napari_unetpp/samples/ from /work/shared/data.

Why a script: the shipped crops must be reproducible and traceable to their
sources. What is cut, and from where, is defined once in
``napari_unetpp._sample_data.SAMPLES``; this script only executes it, writes
zlib-compressed tifs (each well under 1 MB) and ``ATTRIBUTION.md``.

    python scripts/make_samples.py [--data /work/shared/data]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
from skimage import io

from napari_unetpp import zoo
from napari_unetpp._sample_data import SAMPLES, SAMPLES_DIR
from napari_unetpp.datasets import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000

ATTRIBUTION = """\
# Sample data: sources, licences, citations

These small crops are shipped as napari sample data (File > Open Sample > napari-unetpp)
and used by the tests and `napari-unetpp demo`. They are cut by `scripts/make_samples.py`
from parts of each data set that the shipped zoo model of the same name never trained on.

## nuclei_image.tif, nuclei_labels.tif
- Source: Kaggle Data Science Bowl 2018, stage 1 training set with community label fixes
  (BBBC038, Broad Bioimage Benchmark Collection), image `d6a880b1f6056f30` (fluorescence,
  256 x 256, uint8) and its instance labels (uint16, 0 = background).
- Licence: CC0 (public domain dedication).
- Cite: Caicedo, J. C. et al. (2019) Nucleus segmentation across imaging experiments:
  the 2018 Data Science Bowl. Nature Methods 16, 1247-1253.
  Ljosa, V., Sokolnicki, K. L. & Carpenter, A. E. (2012) Annotated high-throughput
  microscopy image sets for validation. Nature Methods 9, 637.

## em_image.tif, em_membranes.tif
- Source: ISBI 2012 EM segmentation challenge training stack (serial-section TEM of the
  Drosophila first instar larva ventral nerve cord, 4 x 4 x 50 nm), slices 16-18,
  rows and columns 128-383; membranes: 1 = membrane, 0 = cell interior.
- Terms: the challenge data may be used for non-commercial research only, citing:
  Cardona, A. et al. (2010) An integrated micro- and macroarchitectural analysis of the
  Drosophila brain by computer-assisted serial section electron microscopy.
  PLoS Biology 8(10), e1000502.
  Arganda-Carreras, I. et al. (2015) Crowdsourcing the creation of image segmentation
  algorithms for connectomics. Frontiers in Neuroanatomy 9, 142.

## ct_image.tif, ct_organs.tif, ct_classes.json
- Source: one abdominal CT volume at 3 mm (30 x 101 x 122, int16 Hounsfield units) from the
  test files of the TotalSegmentator repository, with TotalSegmentator's organ labels,
  reduced to the CT model's classes and renumbered (ct_classes.json: 1 liver, 2 spleen,
  3 kidney_right, 4 kidney_left, 5 stomach; every other structure is 0).
- Licence: Apache-2.0 (TotalSegmentator, https://github.com/wasserth/TotalSegmentator).
- Cite: Wasserthal, J. et al. (2023) TotalSegmentator: robust segmentation of 104 anatomic
  structures in CT images. Radiology: Artificial Intelligence 5(5), e230024.
"""


def _write(path: Path, array: np.ndarray) -> int:
    tifffile.imwrite(path, array, compression="zlib")
    size = path.stat().st_size
    if size >= MAX_BYTES:
        raise SystemExit(f"{path} is {size} bytes; samples must stay under {MAX_BYTES}")
    return size


def make_nuclei(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """A held-back DSB image (grayscale, as the nuclei model takes it) and its instances."""
    crop = SAMPLES["nuclei"].crop
    if crop["id"] not in zoo.NUCLEI_HELD_OUT_IDS:
        raise SystemExit(f"nuclei sample {crop['id']} is not a held-back id of the nuclei model")
    image = io.imread(data / "nuclei_dsb2018" / "images" / f"{crop['id']}.png")
    if image.ndim == 3:
        from skimage.color import rgb2gray

        image = np.round(rgb2gray(image[..., :3]) * 255).astype(np.uint8)
    labels = tifffile.imread(data / "nuclei_dsb2018" / "labels" / f"{crop['id']}.tif")
    window = (slice(*crop["y"]), slice(*crop["x"]))
    return image[window], labels[window].astype(np.uint16)


def make_em(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Three held-back slices, 256 x 256 from the centre, and membranes."""
    crop = SAMPLES["em"].crop
    t0, t1 = zoo.EM_TEST_SLICES
    if not (t0 <= crop["z"][0] and crop["z"][1] <= t1):
        raise SystemExit("EM sample slices must lie in the EM model's held-back block")
    window = (slice(*crop["z"]), slice(*crop["y"]), slice(*crop["x"]))
    image = tifffile.imread(data / "em_isbi2012" / "image.tif")[window]
    membranes = tifffile.imread(data / "em_isbi2012" / "membranes.tif")[window]
    return image.astype(np.uint8), membranes.astype(np.uint8)


def make_ct(data: Path) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """The whole (tiny) CT volume, its organs renumbered as the CT model's classes."""
    crop = SAMPLES["ct"].crop
    window = (slice(*crop["z"]), slice(*crop["y"]), slice(*crop["x"]))
    ct = tifffile.imread(data / "ct_totalseg" / "ct.tif")[window]
    organs = tifffile.imread(data / "ct_totalseg" / "organs.tif")[window]
    names = json.loads((data / "ct_totalseg" / "classes.json").read_text())
    labels = np.zeros(organs.shape, np.uint8)
    classes: dict[str, str] = {}
    for k, (organ, value) in enumerate(zoo.CT_ORGANS, start=1):
        if names.get(str(value)) != organ:
            raise SystemExit(
                f"classes.json says id {value} is {names.get(str(value))}, expected {organ}"
            )
        labels[organs == value] = k
        classes[str(k)] = organ
    return ct.astype(np.int16), labels, classes


def main(argv: list[str] | None = None) -> int:
    """Write every sample and the attribution file; print the sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=shared_data_dir() or ROOT.parent / "shared" / "data"
    )
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for name, (image, labels) in (("nuclei", make_nuclei(args.data)), ("em", make_em(args.data))):
        spec = SAMPLES[name]
        written[spec.image_file] = _write(out / spec.image_file, image)
        written[spec.labels_file] = _write(out / spec.labels_file, labels)
    ct, organs, classes = make_ct(args.data)
    spec = SAMPLES["ct"]
    written[spec.image_file] = _write(out / spec.image_file, ct)
    written[spec.labels_file] = _write(out / spec.labels_file, organs)
    (out / "ct_classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION)
    for name, size in written.items():
        print(f"{out / name}: {size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
