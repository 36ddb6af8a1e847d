"""Shared test fixtures: where the real data lives, and small real crops of it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from napari_unetpp.datasets import shared_data_dir

#: None on a clone without the data: tests that need it skip with the reason (``data_dir``).
DATA_DIR = shared_data_dir()
NO_DATA = (
    "real test data not found: set NAPARI_UNETPP_DATA to the folder holding em_isbi2012/, "
    "nuclei_dsb2018/ and ct_totalseg/ (see ../shared/data/README.md)"
)


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread by default: on small shared CPUs, torch's thread pool spends most of its
    time waiting (a tiny forward/backward took 1.7 s with 2 threads, 9 ms with 1). Set
    NAPARI_UNETPP_TEST_THREADS to use more."""
    import torch

    torch.set_num_threads(int(os.environ.get("NAPARI_UNETPP_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if DATA_DIR is None:
        pytest.skip(NO_DATA)
    return DATA_DIR


@pytest.fixture(scope="session")
def em_stack(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """ISBI 2012 EM: image (20, 512, 512) uint8 and membranes (1 = membrane)."""
    image = tifffile.imread(data_dir / "em_isbi2012" / "image.tif")
    membranes = tifffile.imread(data_dir / "em_isbi2012" / "membranes.tif")
    return image, membranes


@pytest.fixture(autouse=True)
def _fresh_model_registry():
    """Each test starts with no 'just trained' models registered by an earlier test."""
    from napari_unetpp._widgets import _state

    saved = dict(_state._models)
    _state._models.clear()
    yield
    _state._models.clear()
    _state._models.update(saved)


@pytest.fixture
def patch_segment_dock(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``patch(name, func)``: replace a notification (``show_info``, ``show_warning``,
    ``show_error``) in every module of the Segment dock, which is split over ``predict``,
    ``_predict_form``, ``_predict_model`` and ``_predict_notes``."""
    from napari_unetpp._widgets import _predict_form, _predict_model, _predict_notes, predict

    def patch(name: str, func: Any) -> None:
        for module in (predict, _predict_form, _predict_model, _predict_notes):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, func)

    return patch
