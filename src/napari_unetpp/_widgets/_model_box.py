"""What the Segment dock's model box offers: shipped models, the one made for an image, names.

Why apart from the dock: choosing a model is a rule about images and specs
(``zoo:<name>`` or a checkpoint folder), not about widgets; here it is a few pure
functions the dock calls and tests can call without a viewer.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..locate import is_zoo, zoo_name, zoo_spec

SOURCES = ["shipped", "just trained", "from file"]


def zoo_choices() -> list[tuple[str, str]]:
    """(title, spec) of each shipped model present here."""
    from .. import zoo

    return [(entry.title, entry.spec) for entry in zoo.available_models()]


def model_name(spec: str | None) -> str:
    """A short name of a model spec, for folders and layer metadata."""
    spec = spec or "model"
    if is_zoo(spec):
        return zoo_name(spec)
    path = Path(spec)  # a training run's best/ or last/ is named after its run
    return f"{path.parent.name}-{path.name}" if path.name in ("best", "last") else path.stem


def guess_zoo_model(layer: Any) -> str | None:
    """``zoo:<name>`` of the shipped model made for this image (EM, CT or nuclei), or None.

    From what napari knows: the sample's or file's name, the pixel size (under 0.1 um
    is electron microscopy, over 0.1 mm a CT scan), then the pixel values (Hounsfield
    units below -500 are CT; an 8-bit RGB image is a nuclei stain; a grey image whose
    median lies mid-range is an EM section, unless its pixel size is a light
    microscope's: then it gets the nuclei model).
    """
    text = " ".join(
        str(v)
        for v in (
            layer.name,
            layer.metadata.get("source", ""),
            getattr(layer.source, "path", "") or "",
        )
    ).lower()
    words = set(text.replace("/", " ").replace("_", " ").replace(".", " ").split())
    for name, hints in (
        ("em", {"em", "isbi2012", "sstem", "tem", "membranes"}),
        ("ct", {"ct", "totalseg", "hu"}),
        ("nuclei", {"nuclei", "dsb2018", "nucleus", "dapi", "hoechst"}),
    ):
        if words & hints:
            return zoo_spec(name)
    from ..scale import UNITS
    from ._pixel_size import layer_pixel_size

    size, unit = layer_pixel_size(layer)
    light = False  # a light microscope's pixel size: never EM (see below)
    if size and unit in UNITS:  # pixels under 0.1 um are electron microscopy, over 0.1 mm CT
        um = float(size[-1]) * UNITS[unit]
        if um < 0.1 or um > 100:
            return zoo_spec("em" if um < 0.1 else "ct")
        light = True
    data = layer.data[-1] if layer.multiscale else layer.data  # the smallest level: cheap
    if not isinstance(data, np.ndarray) and np.ndim(data) > 2 and not layer.rgb:
        # a lazy volume (dask, zarr): its middle plane; the whole was read three times, the
        # GUI thread waiting, whenever the dock opened or chose it (air is in every CT slice)
        data = np.asarray(data[tuple(n // 2 for n in data.shape[:-2])])  # read once
    # floats too: a scan read as float (nibabel's get_fdata, most NIfTI readers) got the
    # nuclei model; NaN-free minimum, as a masked scan may hold NaN outside the body
    signed = np.issubdtype(data.dtype, np.signedinteger) or np.issubdtype(data.dtype, np.floating)
    if signed and data.size:
        with warnings.catch_warnings():  # an all-NaN image: no minimum, no CT
            warnings.simplefilter("ignore", RuntimeWarning)
            if np.nanmin(data) < -500:
                return zoo_spec("ct")
    if layer.rgb or light:
        # light: a dim fluorescence image of 0.16 um pixels (camera offset and noise over a
        # mostly empty field, so its median lies mid-range) got the EM model (QA session 14)
        return zoo_spec("nuclei")
    return zoo_spec("em") if _mid_grey(data) else None


#: Where the median of a grey image lies between its 1st and 99th percentiles, for EM: TEM
#: sections are textured grey throughout (ISBI 2012: 0.54-0.58), fluorescence is mostly
#: dark background (DSB: median 0.04) and brightfield mostly bright (0.93); 10 of DSB's
#: 500 grey images fall inside.
EM_MEDIAN_BAND = (0.35, 0.7)


def _mid_grey(data: Any) -> bool:
    """Whether a grey image's median lies mid-range (:data:`EM_MEDIAN_BAND`): an EM section.

    Why: an EM stack without a telling name or pixel size (an "em10" array, a tif from a
    microscope that writes no resolution) got the nuclei model.
    """
    from ..normalization import subsample

    plane = np.asarray(data[tuple(n // 2 for n in np.shape(data)[:-2])])  # the middle plane
    sample = subsample(plane).astype(np.float64, copy=False)  # as the percentiles are taken
    sample = sample[np.isfinite(sample)]
    if sample.size < 64:
        return False
    low, median, high = np.percentile(sample, [1, 50, 99])
    if high <= low:
        return False
    return EM_MEDIAN_BAND[0] < (median - low) / (high - low) < EM_MEDIAN_BAND[1]


def could_be_ct(layer: Any) -> bool:
    """Whether the layer's values could be Hounsfield units: not RGB, not unsigned or bool.

    Why: CT values go below zero (air is -1000 HU); an 8- or 16-bit microscope image cannot
    hold them, so the CT model kept from a scan opened before would segment it as a body.
    """
    data = layer.data[-1] if layer.multiscale else layer.data
    return (
        not layer.rgb and not np.issubdtype(data.dtype, np.unsignedinteger) and (data.dtype != bool)
    )


def device_choices() -> list[str]:
    """``auto`` plus the device types present here (what PredictConfig.device accepts)."""
    from ..devices import available_devices

    kinds = [name.split(":")[0] for name in available_devices()]
    return ["auto"] + [k for k in ("cuda", "mps", "cpu") if k in kinds]
