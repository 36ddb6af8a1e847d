"""Sample crops: shapes, dtypes, attribution, napari LayerData, provenance from held-back data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_unetpp import zoo
from napari_unetpp._sample_data import (
    SAMPLES,
    SAMPLES_DIR,
    ct_sample,
    em_sample,
    load_sample,
    nuclei_sample,
    sample_names,
)

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "nuclei": ((256, 256), np.uint8, (256, 256), np.uint16),
    "em": ((3, 256, 256), np.uint8, (3, 256, 256), np.uint8),
    "ct": ((30, 101, 122), np.int16, (30, 101, 122), np.uint8),
}


def test_sample_names_match_zoo_names() -> None:
    # the CLI demo pairs zoo:<name> with load_sample(<name>)
    assert sample_names() == zoo.known_models()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_load_sample_shapes_dtypes_meta(name: str) -> None:
    image, labels, meta = load_sample(name)
    image_shape, image_dtype, labels_shape, labels_dtype = EXPECTED[name]
    assert image.shape == image_shape and image.dtype == image_dtype
    assert labels.shape == labels_shape and labels.dtype == labels_dtype
    assert len(meta["scale"]) == image.ndim
    assert meta["units"] and meta["licence"] and meta["source"]
    assert meta["class_names"]
    assert labels.max() > 0 and (labels == 0).any()


def test_sample_label_contents() -> None:
    _, nuclei, _ = load_sample("nuclei")
    assert len(np.unique(nuclei)) - 1 > 50  # instance ids, many nuclei
    _, membranes, _ = load_sample("em")
    assert set(np.unique(membranes)) == {0, 1}
    assert 0.1 < membranes.mean() < 0.4  # membranes are a minority of pixels
    ct, organs, meta = load_sample("ct")
    assert meta["scale"] == (3.0, 3.0, 3.0) and meta["units"] == "mm"
    assert set(np.unique(organs)) == set(range(len(meta["class_names"])))
    assert meta["classes"] == {str(k): n for k, n in enumerate(meta["class_names"]) if k}
    liver = organs == meta["class_names"].index("liver")
    assert 0 < float(np.median(ct[liver])) < 150  # soft tissue in Hounsfield units
    assert ct.min() < -500  # air outside the body: real HU, not rescaled


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("em", "Cardona"),
        ("em", "Arganda-Carreras"),
        ("em", "non-commercial"),
        ("nuclei", "Caicedo"),
        ("nuclei", "CC0"),
        ("ct", "Wasserthal"),
        ("ct", "Apache-2.0"),
    ],
)
def test_attribution_in_meta_and_file(name: str, needle: str) -> None:
    _, _, meta = load_sample(name)
    assert needle in meta["attribution"] + meta["licence"]
    assert needle in (SAMPLES_DIR / "ATTRIBUTION.md").read_text(encoding="utf-8")


def test_sample_files_are_small_and_compressed() -> None:
    import tifffile

    for spec in SAMPLES.values():
        for file in (spec.image_file, spec.labels_file):
            path = SAMPLES_DIR / file
            assert path.stat().st_size < 1_000_000, path
            with tifffile.TiffFile(path) as tif:
                assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


@pytest.mark.parametrize("function", [nuclei_sample, em_sample, ct_sample])
def test_napari_sample_functions_return_layer_data(function) -> None:
    layers = function()
    assert [layer_type for _, _, layer_type in layers] == ["image", "labels"]
    (image, image_kwargs, _), (labels, labels_kwargs, _) = layers
    assert image.shape[-2:] == labels.shape[-2:]
    assert len(image_kwargs["scale"]) == image.ndim
    low, high = image_kwargs["contrast_limits"]
    assert low < high
    assert "attribution" in image_kwargs["metadata"]
    assert image_kwargs["name"] != labels_kwargs["name"]


def test_manifest_points_at_sample_functions() -> None:
    import re

    import napari_unetpp._sample_data as module

    manifest = ROOT / "src" / "napari_unetpp" / "napari.yaml"
    if not manifest.is_file():
        pytest.skip("napari.yaml not written yet")
    named = re.findall(r"napari_unetpp\._sample_data:(\w+)", manifest.read_text("utf-8"))
    assert sorted(named) == ["ct_sample", "em_sample", "nuclei_sample"]
    for function in named:
        assert callable(getattr(module, function))


def test_unknown_sample_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        load_sample("mitochondria")


def test_sample_module_imports_no_napari_or_qt() -> None:
    code = (
        "import sys, napari_unetpp._sample_data as s; s.em_sample(); "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PySide2', 'PyQt6', 'PySide6', 'magicgui')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_samples_come_from_held_back_data() -> None:
    assert SAMPLES["nuclei"].crop["id"] in zoo.NUCLEI_HELD_OUT_IDS
    z0, z1 = SAMPLES["em"].crop["z"]
    assert zoo.EM_TEST_SLICES[0] <= z0 < z1 <= zoo.EM_TEST_SLICES[1]
    _, _, meta = load_sample("ct")
    assert tuple(meta["held_out_slices"]) == zoo.CT_TEST_SLICES


def test_make_samples_reproduces_the_shipped_crops(data_dir: Path, tmp_path: Path) -> None:
    """The shipped crops are exactly what scripts/make_samples.py cuts from the shared data."""
    import tifffile

    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make_samples.py"),
            "--data",
            str(data_dir),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for spec in SAMPLES.values():
        for file in (spec.image_file, spec.labels_file):
            np.testing.assert_array_equal(
                tifffile.imread(tmp_path / file), tifffile.imread(SAMPLES_DIR / file)
            )
    assert (tmp_path / "ct_classes.json").read_text() == (
        SAMPLES_DIR / "ct_classes.json"
    ).read_text()
