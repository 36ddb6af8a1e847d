"""The engine imports neither Qt nor napari; the package import itself loads nothing heavy."""

from __future__ import annotations

import subprocess
import sys

ENGINE = [
    "config",
    "model",
    "losses",
    "checkpoint",
    "devices",
    "events",
    "normalization",
    "labels",
    "patches",
    "train_data",
    "datasets",
    "metrics",
    "finetune",
    "resume",
    "ddp",
    "training",
    "tiling",
    "layout",
    "predictor",
    "inference",
    "postprocess",
    "pruning",
    "zoo",
    "locate",
    "files",
    "distributed",
    "export",
    "cli",
    "runs",
    "disagreement",
    "label_next",
    "image_check",
    "image_signals",
    "remedies",
]
#: Plain numpy: the widget checks labels and images with these without loading torch.
NUMPY_ONLY = [
    "normalization",
    "labels",
    "patches",
    "train_data",
    "datasets",
    "label_next",
    "remedies",
]
GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_engine_modules_do_not_load_gui_toolkits():
    imports = "; ".join(f"import napari_unetpp.{name}" for name in ENGINE)
    loaded = _loaded_after(imports)
    assert "torch" in loaded  # the statement really imported the engine
    assert not loaded & set(GUI), loaded & set(GUI)


def test_package_import_is_light():
    loaded = _loaded_after("import napari_unetpp")
    assert not loaded & {"torch", *GUI}


def test_data_preparation_does_not_load_torch():
    loaded = _loaded_after("; ".join(f"import napari_unetpp.{name}" for name in NUMPY_ONLY))
    assert "numpy" in loaded  # the statement really imported the modules
    assert not loaded & {"torch", *GUI}, loaded & {"torch", *GUI}
