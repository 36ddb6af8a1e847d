"""Small real sample crops (nuclei, EM, CT) with their labels and attribution.

Why real crops: a biologist should see the plugin work on data like theirs in
one click (File > Open Sample), and the tests and the CLI ``demo`` need the same
small, labelled, openly licensed images. Every crop is cut from the part of its
data set that the shipped zoo model of the same name never trained on
(``zoo.NUCLEI_HELD_OUT_IDS``, ``zoo.EM_TEST_SLICES``; the CT volume is shipped
whole, its held-back slices are named in ``meta["held_out_slices"]``).

The crops are written by ``scripts/make_samples.py`` from ``/work/shared/data``;
sources and licences are in ``samples/ATTRIBUTION.md`` and in each ``meta``.
This module imports neither napari nor Qt: the sample functions return plain
LayerData tuples ``(data, kwargs, layer_type)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SAMPLES",
    "SAMPLES_DIR",
    "SampleSpec",
    "load_sample",
    "sample_names",
    "nuclei_sample",
    "em_sample",
    "ct_sample",
]

#: Folder of the shipped crops (compressed tif) inside the package.
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

LayerData = tuple[Any, dict[str, Any], str]

EM_ATTRIBUTION = (
    "ISBI 2012 EM segmentation challenge (Drosophila first instar larva VNC, ssTEM; "
    "Cardona et al. 2010, PLoS Biol. 8(10):e1000502; Arganda-Carreras et al. 2015, "
    "Front. Neuroanat. 9:142). Non-commercial research use only."
)
NUCLEI_ATTRIBUTION = (
    "Kaggle Data Science Bowl 2018, BBBC038 (Caicedo et al. 2019, Nature Methods "
    "16:1247-1253; Broad Bioimage Benchmark Collection). CC0."
)
CT_ATTRIBUTION = (
    "TotalSegmentator test data and labels (Wasserthal et al. 2023, Radiology: Artificial "
    "Intelligence 5(5):e230024). Apache-2.0."
)


@dataclass(frozen=True)
class SampleSpec:
    """Where a sample comes from, how it is cut, and how to show it."""

    name: str
    title: str
    image_file: str
    labels_file: str
    source: str
    crop: dict[str, Any]
    scale: tuple[float, ...]
    units: str
    licence: str
    attribution: str
    class_names: tuple[str, ...] = ()
    contrast_limits: tuple[float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


SAMPLES: dict[str, SampleSpec] = {
    "nuclei": SampleSpec(
        name="nuclei",
        title="Nuclei, fluorescence (DSB 2018)",
        image_file="nuclei_image.tif",
        labels_file="nuclei_labels.tif",
        source="nuclei_dsb2018/images/d6a880b1f6056f30.png (a held-back id of the nuclei model)",
        crop={"id": "d6a880b1f6056f30", "y": [0, 256], "x": [0, 256]},
        scale=(1.0, 1.0),
        units="pixel",
        licence="CC0",
        attribution=NUCLEI_ATTRIBUTION,
        class_names=("background", "nucleus"),
        extra={"labels": "instance ids (0 = background), one per nucleus"},
    ),
    "em": SampleSpec(
        name="em",
        title="EM membranes, ssTEM (ISBI 2012)",
        image_file="em_image.tif",
        labels_file="em_membranes.tif",
        source="em_isbi2012/image.tif and membranes.tif, slices 16-18 "
        "(held back from the EM model)",
        crop={"z": [16, 19], "y": [128, 384], "x": [128, 384]},
        scale=(50.0, 4.0, 4.0),
        units="nm",
        licence="ISBI 2012 challenge terms: non-commercial research use, citing Cardona et al. "
        "2010 and Arganda-Carreras et al. 2015",
        attribution=EM_ATTRIBUTION,
        class_names=("cell interior", "membrane"),
        extra={"labels": "1 = membrane, 0 = cell interior"},
    ),
    "ct": SampleSpec(
        name="ct",
        title="Abdominal CT organs, 3 mm (TotalSegmentator)",
        image_file="ct_image.tif",
        labels_file="ct_organs.tif",
        source="ct_totalseg/ct.tif and organs.tif, whole volume; organ ids remapped to the "
        "CT model's classes (classes.json)",
        crop={"z": [0, 30], "y": [0, 101], "x": [0, 122]},
        scale=(3.0, 3.0, 3.0),
        units="mm",
        licence="Apache-2.0",
        attribution=CT_ATTRIBUTION,
        class_names=("background", "liver", "spleen", "kidney_right", "kidney_left", "stomach"),
        contrast_limits=(-160.0, 240.0),
        extra={
            "labels": "organ classes (see class_names), other structures 0",
            "held_out_slices": [0, 6],
            "intensity": "Hounsfield units (int16)",
        },
    ),
}


def sample_names() -> list[str]:
    """Names accepted by :func:`load_sample` (the same as the zoo model names)."""
    return list(SAMPLES)


def _read_tif(path: Path) -> np.ndarray:
    import tifffile

    if not path.is_file():
        raise FileNotFoundError(
            f"sample file {path} is missing from this installation; regenerate the samples "
            "with `python scripts/make_samples.py` or reinstall napari-unetpp"
        )
    return tifffile.imread(path)


def _meta(spec: SampleSpec) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": spec.name,
        "title": spec.title,
        "scale": spec.scale,
        "units": spec.units,
        "class_names": spec.class_names,
        "attribution": spec.attribution,
        "licence": spec.licence,
        "source": spec.source,
        "crop": spec.crop,
    }
    meta.update(spec.extra)
    if spec.name == "ct":
        classes_file = SAMPLES_DIR / "ct_classes.json"
        if classes_file.is_file():
            meta["classes"] = json.loads(classes_file.read_text(encoding="utf-8"))
    return meta


def load_sample(name: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(image, labels, meta)`` of one sample; meta holds scale, units, classes, attribution.

    ``name`` is ``"nuclei"``, ``"em"`` or ``"ct"`` (the zoo model names, so the CLI
    demo can pair each model with its sample).
    """
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; choose one of {sample_names()}")
    spec = SAMPLES[name]
    image = _read_tif(SAMPLES_DIR / spec.image_file)
    labels = _read_tif(SAMPLES_DIR / spec.labels_file)
    return image, labels, _meta(spec)


def _layers(name: str) -> list[LayerData]:
    """Image and Labels LayerData tuples for napari (no napari import needed)."""
    image, labels, meta = load_sample(name)
    spec = SAMPLES[name]
    metadata = {k: meta[k] for k in ("attribution", "licence", "source", "units", "class_names")}
    placed: dict[str, Any] = {"scale": spec.scale}
    if spec.units != "pixel":  # a physical pixel size, as the readers give a file's
        metadata.update(pixel_size=spec.scale, unit=spec.units)
        placed["units"] = (spec.units,) * len(spec.scale)
    image_kwargs: dict[str, Any] = {"name": f"{name} sample", "metadata": metadata, **placed}
    if spec.contrast_limits is not None:
        image_kwargs["contrast_limits"] = list(spec.contrast_limits)
    else:
        low, high = np.percentile(image, [0.5, 99.8])
        image_kwargs["contrast_limits"] = [float(low), float(max(high, low + 1))]
    labels_kwargs: dict[str, Any] = {
        "name": f"{name} sample labels",
        "metadata": metadata,
        **placed,
        "opacity": 0.5 if name != "em" else 0.3,
    }
    return [(image, image_kwargs, "image"), (labels, labels_kwargs, "labels")]


def nuclei_sample() -> list[LayerData]:
    """DSB 2018 fluorescence nuclei (256 x 256) and their instance labels."""
    return _layers("nuclei")


def em_sample() -> list[LayerData]:
    """ISBI 2012 ssTEM, 3 slices of 256 x 256 (4 x 4 x 50 nm), and membrane labels."""
    return _layers("em")


def ct_sample() -> list[LayerData]:
    """Abdominal CT at 3 mm (30 x 101 x 122, HU) and liver/spleen/kidney/stomach labels."""
    return _layers("ct")
