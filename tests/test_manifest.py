"""The npe2 manifest validates, every command resolves, and the model reader keeps the contract."""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path

import pytest
from npe2 import PluginManifest

import napari_unetpp

MANIFEST = Path(napari_unetpp.__file__).parent / "napari.yaml"


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_file(MANIFEST)


def test_manifest_validates(manifest: PluginManifest) -> None:
    assert manifest.name == "napari-unetpp"
    installed = PluginManifest.from_distribution("napari-unetpp")  # the entry point finds it
    assert installed.name == manifest.name
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "Train / fine-tune UNet++",
        "Segment with UNet++ (predict, per-depth layers, pruning)",
    }
    assert {s.display_name for s in manifest.contributions.sample_data} == {
        "Nuclei (DSB 2018) crop",
        "EM (ISBI 2012) crop",
        "Abdominal CT (TotalSegmentator) volume",
    }


def test_every_python_name_resolves(manifest: PluginManifest) -> None:
    for command in manifest.contributions.commands:
        module, _, attribute = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), command.id


@pytest.fixture
def saved_model(tmp_path: Path) -> Path:
    from napari_unetpp.checkpoint import CheckpointInfo, save_checkpoint
    from napari_unetpp.config import DataConfig
    from napari_unetpp.model import UNetPlusPlus

    net = UNetPlusPlus(widths=(4, 8, 16), depth=2)
    return Path(
        save_checkpoint(
            tmp_path / "run" / "best", net, CheckpointInfo(model=net.config, data=DataConfig())
        )
    )


def test_reader_accepts_models_only(saved_model: Path, tmp_path: Path) -> None:
    from napari_unetpp._reader import get_reader

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"format": "something else"}')
    (tmp_path / "weights.zip").write_bytes(b"not a zip")
    for path in (tmp_path / "other", tmp_path / "weights.zip", tmp_path / "missing"):
        assert get_reader(str(path)) is None
    assert get_reader([str(saved_model), str(saved_model)]) is None  # one model at a time
    for path in (saved_model, saved_model.parent, saved_model / "config.json"):
        assert callable(get_reader(str(path)))
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in saved_model.iterdir():
            zf.write(file, f"best/{file.name}")
    assert callable(get_reader(str(archive)))


@pytest.mark.gui
def test_reader_docks_predict_widget(make_napari_viewer, saved_model: Path) -> None:
    from napari_unetpp._reader import PREDICT_WIDGET, get_reader
    from napari_unetpp._widgets import _state

    viewer = make_napari_viewer()
    layers = viewer.open(str(saved_model), plugin="napari-unetpp")
    assert layers == []  # the null-layer sentinel [(None,)] adds no layer
    assert _state.registered_models()["run/best"] == saved_model
    docked = [
        w for name, w in viewer.window.dock_widgets.items() if name.startswith(PREDICT_WIDGET)
    ]
    assert len(docked) == 1 and docked[0].model_spec == str(saved_model)  # the model is loaded
    assert get_reader(str(saved_model))(str(saved_model)) == [(None,)]
