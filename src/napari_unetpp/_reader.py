"""napari readers: saved UNet++ models, and images that keep their pixel size.

Images (:func:`get_image_reader`): NIfTI, DICOM series folders / files and TIFF
/ OME-TIFF open as an Image layer whose ``scale`` is the physical pixel size (mm
for CT, um or nm for microscopy) and whose ``metadata`` holds ``pixel_size``
(spatial axes), ``unit``, ``axes`` and the file's own spacing, read by the
engine's :mod:`napari_unetpp.readers` (napari's builtin TIFF reader drops the
resolution tags). Medical volumes come out in the shipped CT model's orientation.

Models (:func:`get_reader`): a model is not image data, so this reader adds no
layer: it registers the model for the predict widget, docks that widget with the
model selected, and returns npe2's null-layer sentinel ``[(None,)]``, the
documented value for "this reader handled the path but has no layer data"
(napari's own ``.py`` reader does the same). Returning ``[]`` would instead make
napari report "returned no data".

``get_reader`` must be cheap and must not import torch: napari calls it for every
dropped folder and ``.zip``. :func:`napari_unetpp.locate.find_checkpoint` decides,
reading only ``config.json`` for the format marker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .locate import find_checkpoint

__all__ = ["get_reader", "get_image_reader", "open_image", "PREDICT_WIDGET"]

PLUGIN = "napari-unetpp"
#: The predict widget's display name in napari.yaml.
PREDICT_WIDGET = "Segment with UNet++ (predict, per-depth layers, pruning)"

PathOrPaths = str | Sequence[str]
LayerData = tuple[Any, ...]


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """npe2 reader hook: a reader function if ``path`` is one saved model, else ``None``."""
    if not isinstance(path, (str, os.PathLike)):
        if len(path) != 1:
            return None
        path = path[0]
    checkpoint = find_checkpoint(path)
    if checkpoint is None:
        return None
    return lambda _path: open_model(checkpoint)


def _model_name(checkpoint: Path) -> str:
    """A readable name: the folder (or zip) name, with the run name for ``run/best``."""
    if checkpoint.name in ("best", "last"):
        return f"{checkpoint.parent.name}/{checkpoint.name}"
    return checkpoint.stem if checkpoint.suffix.lower() == ".zip" else checkpoint.name


def open_model(checkpoint: Path, viewer: Any = None) -> list[LayerData]:
    """Register ``checkpoint``, dock the predict widget with it selected; no layers.

    Returns npe2's null-layer sentinel ``[(None,)]``. Without a viewer (a script
    calling ``napari.utils.io`` headless) the model is still registered.
    """
    from napari import current_viewer

    from ._widgets import _state

    name = _model_name(checkpoint)
    _state.register_model(name, checkpoint)
    viewer = viewer if viewer is not None else current_viewer()
    if viewer is not None:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, PREDICT_WIDGET)
        for method, argument in (("load_model", checkpoint), ("select_model", name)):
            if callable(getattr(widget, method, None)):
                getattr(widget, method)(argument)
                break
    return [(None,)]


# --------------------------------------------------------------------------- images

#: A CT soft-tissue window (W400 L40) as the first contrast of a volume in Hounsfield units.
CT_CONTRAST = (-160.0, 240.0)


def get_image_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """npe2 reader hook: NIfTI, DICOM (file or series folder) and TIFF with their pixel size.

    Cheap: decides from the name and, for a folder, the first bytes of a few files.
    A saved model folder is left to :func:`get_reader`.
    """
    from .medical import is_medical
    from .readers import TIFF_SUFFIXES

    if not isinstance(path, (str, os.PathLike)):
        if len(path) != 1:
            return None
        path = path[0]
    file = Path(path)
    if file.is_dir() and find_checkpoint(file) is not None:
        return None
    if is_medical(file) or (file.is_file() and file.suffix.lower() in TIFF_SUFFIXES):
        return lambda _path: open_image(file)
    return None


def open_image(path: str | os.PathLike[str]) -> list[LayerData]:
    """One Image layer: ``scale`` from the file, ``metadata`` with pixel size and unit."""
    from . import readers
    from .files import stem

    path = Path(path)
    image = readers.read_image(path)
    axes, scale = image.axes, list(image.scale)
    kwargs: dict[str, Any] = {}
    if axes.endswith("S") and image.array.shape[-1] in (3, 4):  # RGB(A) samples
        kwargs["rgb"] = True
        axes, scale = axes[:-1], scale[:-1]
    elif "C" in axes:  # one layer per channel, each with the spatial scale
        kwargs["channel_axis"] = axes.index("C")
        del scale[axes.index("C")]
        axes = axes.replace("C", "")
    kwargs.update(
        name=stem(path),
        scale=tuple(scale),
        metadata={
            "pixel_size": image.pixel_size,
            "unit": image.unit,
            "axes": axes,
            "source": image.source,
            "path": str(path),
            "reader": dict(image.metadata),
        },
    )
    if image.unit is not None and _layer_takes_units():
        kwargs["units"] = tuple(_napari_unit(image.unit) if a in "ZYX" else "pixel" for a in axes)
    if image.source in ("nifti", "dicom") and image.array.size and image.array.min() < -500:
        return [_ct_windowed(image.array, kwargs)]  # Hounsfield units: show soft tissue
    return [(image.array, kwargs, "image")]


def _ct_windowed(array: Any, kwargs: dict[str, Any]) -> Any:
    """An Image layer of a scan in Hounsfield units shown through :data:`CT_CONTRAST`, whose
    contrast slider still spans the scan's whole range.

    Why a layer and not a layer-data tuple: napari makes the ``contrast_limits`` it is given
    the slider's range too, so a scan opened with its soft-tissue window could not be
    widened to bone or lung from the slider. A reader may return a built layer (napari >=
    0.5.6, napari PR 7443), whose range is then the data's; an older napari gets the tuple.
    """
    window = {**kwargs, "contrast_limits": CT_CONTRAST}
    if not _reader_takes_layers():
        return (array, window, "image")
    from napari.layers import Image

    low, high = float(array.min()), float(array.max())
    layer = Image(
        array,
        **{**kwargs, "contrast_limits": (min(low, CT_CONTRAST[0]), max(high, CT_CONTRAST[1]))},
    )
    layer.contrast_limits = CT_CONTRAST
    return layer


def _reader_takes_layers() -> bool:
    """napari >= 0.5.6 adds a Layer that a reader returns (earlier ones want tuples)."""
    from importlib.metadata import version

    from packaging.version import Version

    return Version(version("napari")) >= Version("0.5.6")


def _napari_unit(unit: str) -> str:
    return {"um": "micrometer", "nm": "nanometer", "mm": "millimeter"}.get(unit, unit)


def _layer_takes_units() -> bool:
    """napari >= 0.6 layers have ``units`` (the scale bar shows them); older ones do not."""
    import inspect

    from napari.layers import Image

    return "units" in inspect.signature(Image.__init__).parameters
