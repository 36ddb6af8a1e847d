"""Prediction of big stacks mapped over a dask.distributed cluster.

Why a module of its own: one machine predicts a stack slice by slice with
``inference.predict``; a cluster does the same slices in parallel, one task each.
The tasks run in other processes (maybe on other machines), so everything they
need travels as a small picklable :class:`PredictJob`, each worker reads only its
own slice from the file and loads the model once. ``napari-unetpp predict
--distributed`` drives it; a notebook can call :func:`predict_distributed` with
its own ``distributed.Client``.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .files import UserError, load_model, read_array
from .locate import portable_spec

if TYPE_CHECKING:  # dask, numpy and torch are imported when a job runs, not on import
    from .config import DataConfig
    from .model import UNetPlusPlus


@dataclass
class PredictJob:
    """What every block of a prediction needs (picklable: it travels to dask workers).

    ``model_spec`` must be readable from the workers: ``zoo:NAME`` or an absolute
    checkpoint path on a shared disk (:func:`predict_distributed` makes it so with
    :func:`napari_unetpp.locate.portable_spec`).
    """

    model_spec: str
    predict: dict[str, Any]
    data: dict[str, Any]
    #: the whole image's camera defect pixels (``defects.Defects`` as a dict), repaired in
    #: each slice: a slice's fixed window (see :func:`_fixed_normalization`) finds none
    defects: dict[str, Any] | None = None


_WORKER_MODELS: dict[tuple[str, str], Any] = {}
_WORKER_LOCK = threading.Lock()


def _worker_model(spec: str, device: str) -> Any:
    """The model, loaded once per worker process (threads of a worker share it)."""
    key = (spec, device)
    with _WORKER_LOCK:
        if key not in _WORKER_MODELS:
            _WORKER_MODELS[key] = load_model(spec, device=device)[0]
        return _WORKER_MODELS[key]


_WORKER_IMAGES: dict[str, Any] = {}


def _worker_image(source: str) -> Any:
    """The image, read lazily; a NIfTI or DICOM volume (read whole, to orient it) is kept for
    the worker's next slices: it was decompressed and read again for every slice."""
    from .medical import is_medical

    if not is_medical(source):
        return read_array(Path(source), lazy=True)
    with _WORKER_LOCK:
        if source not in _WORKER_IMAGES:
            _WORKER_IMAGES.clear()  # one volume per worker at a time
            _WORKER_IMAGES[source] = read_array(Path(source), lazy=True)
        return _WORKER_IMAGES[source]


def predict_block(
    job: PredictJob, source: str, axis: int | None, index: int
) -> tuple[int, dict[int, Any], dict[str, Any] | None]:
    """One distributed task: ``inference.predict`` on one slice with the worker's model.

    ``source`` is the image file; the worker reads only its slice (lazily).
    Returns the slice index with the per-depth probabilities of that slice, and what
    resampling it used (``PredictResult.scale``, None when none).
    """
    import numpy as np

    from .config import DataConfig, PredictConfig
    from .events import drive
    from .inference import predict

    config = PredictConfig.from_dict(job.predict)
    model = _worker_model(job.model_spec, config.device)
    image = _worker_image(source)
    block = np.asarray(image if axis is None else np.take(image, index, axis=axis))
    data = DataConfig.from_dict(job.data)
    if job.defects is not None:
        from .defects import Defects
        from .normalization import repair_image

        block = repair_image(block, Defects(**job.defects), data.channel_axis)
    result = drive(predict(model, block, config, data))
    return index, dict(result), getattr(result, "scale", None)


def start_client(address: str) -> Any:
    """A client of the scheduler at ``address``, or of a new LocalCluster for ``"local"``.

    Local workers are processes (torch holds the GIL in places) with one thread each;
    ``NAPARI_UNETPP_WORKERS`` sets how many (default: up to 2, so a laptop stays usable).
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise UserError(
            "--distributed needs dask.distributed: pip install 'napari-unetpp[distributed]'"
        ) from exc
    if address == "local":
        workers = int(os.environ.get("NAPARI_UNETPP_WORKERS", "0")) or min(2, os.cpu_count() or 1)
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return Client(cluster)
    try:
        return Client(address, timeout="20s")
    except OSError as exc:
        raise UserError(f"cannot reach dask scheduler at {address}: {exc}") from exc
    except ValueError as exc:  # dask's "missing port number in address 'x'" named no fix
        raise UserError(
            f"--distributed {address}: not a scheduler address ({exc}); give 'local' for a "
            "cluster on this machine, or the scheduler's address, e.g. tcp://host:8786"
        ) from exc


def close_client(client: Any) -> None:
    """Close the client and, when :func:`start_client` made one, its LocalCluster."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _fixed_normalization(image: Any, data: DataConfig) -> tuple[DataConfig, dict[str, Any] | None]:
    """The stack's percentile range as a fixed window, so every slice is normalised alike,
    and its camera defect pixels (as a dict for :class:`PredictJob`; None: none).

    ``inference.predict`` computes one intensity range per image (a stack is one
    image); a task sees one slice, so it gets the whole stack's range instead. With a
    window a slice looks for no defects, so the stack's are found here (and the user
    told, once) and each task repairs them in its slice.
    """
    from dataclasses import asdict

    from .normalization import range_and_defects

    norm = data.normalization
    if norm.mode != "percentile":
        return data, None
    (low, high), defects = range_and_defects(image, norm)
    high = max(high, low + 1e-8)  # a constant image: normalize() guards the scale the same way
    fixed = data.replace(normalization=norm.replace(mode="window", low=low, high=high))
    if defects is None:
        return fixed, None
    defects.warn(math.prod(int(n) for n in image.shape))
    return fixed, asdict(defects)


def predict_distributed(
    client: Any,
    job: PredictJob,
    path: Path,
    image: Any,
    model: UNetPlusPlus,
    store: Path | None,
) -> dict[int, Any]:
    """Map the slices of a stack over the cluster, one ``inference.predict`` per slice.

    Workers load the model once each and read their slice from the file (a remote
    cluster needs the file and checkpoint on a shared disk; a relative checkpoint
    path or a run folder is sent as the absolute path of the checkpoint). Results are written
    into the output (numpy, or zarr when ``store`` is given) as they arrive.
    """
    from distributed import as_completed

    from .config import DataConfig
    from .inference import PredictResult
    from .layout import image_layout, output_shape

    data = DataConfig.from_dict(job.data)
    # here, not on the workers: a wrong channel axis is one error, not one worker traceback
    # per slice in the cluster's log before it
    image_layout(tuple(image.shape), data.channel_axis, model)
    data, defects = _fixed_normalization(image, data)
    channel = None if data.channel_axis is None else data.channel_axis % image.ndim
    others = [a for a in range(image.ndim) if a != channel]
    axis = others[0] if len(others) > model.config.spatial_dims else None
    if axis is not None and channel is not None and channel > axis:
        channel -= 1  # the slice has one axis less before the channels
    data_dict = {**data.to_dict(), "channel_axis": channel}
    job = PredictJob(portable_spec(job.model_spec), job.predict, data_dict, defects)
    count = 1 if axis is None else image.shape[axis]
    source = str(path.resolve())  # workers read their own slice: nothing big leaves here
    tasks = as_completed(
        [client.submit(predict_block, job, source, axis, i, pure=False) for i in range(count)]
    )
    shape = output_shape(tuple(image.shape), data.channel_axis, model.config.num_classes)
    class_axes = 0 if model.config.num_classes == 1 else 1
    where = 0 if axis is None else others.index(axis)  # position among non-channel axes
    arrays: dict[int, Any] = {}
    group = None
    scales: dict[int, dict[str, Any] | None] = {}
    for future in tasks:
        index, result, scales[index] = future.result()
        # written here, so the worker may drop it: a kept future pins its slice's
        # probabilities in the cluster's memory until the last slice (a whole stack's worth)
        future.release()
        if not arrays:
            arrays, group = _allocate_outputs(sorted(result), shape, store)
        for d, prob in result.items():
            target = (slice(None),) * (class_axes + where) + ((index,) if axis is not None else ())
            arrays[d][target] = prob
    if group is not None:
        from .stores import mark_complete

        mark_complete(group)  # every slice arrived
    out = PredictResult(arrays, complete=True)
    out.scale = _stack_scale(scales)
    return out


def _stack_scale(scales: dict[int, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The slices' resampling as one record (run.json's "scale", the check's zoom).

    Why: the CLI recorded no scale for a distributed run, and the check then took a
    rescaled result for one at the image's own size. A pixel size or numeric rescale
    gives every slice the same zoom; ``rescale="auto"`` measures each slice on its own,
    so the record keeps each slice's zoom and diameter and the stack's median zoom.
    """
    import numpy as np

    known = [s for i in sorted(scales) if (s := scales[i]) is not None]
    if not known:
        return None
    first = known[0]
    if len(known) == len(scales) and all(s.get("zoom") == first.get("zoom") for s in known):
        return first
    zooms = [s.get("zoom") or [1.0] for s in known]
    measured = [d for s in known if (d := s.get("measured_diameter")) is not None]
    return {
        **first,
        "zoom": [float(z) for z in np.median(np.asarray(zooms, dtype=float), axis=0)],
        "measured_diameter": float(np.median(measured)) if measured else None,
        "objects": None,
        "auto_factor": None,
        "per_slice": {
            str(i): {"zoom": s.get("zoom"), "measured_diameter": s.get("measured_diameter")}
            for i, s in sorted(scales.items())
            if s is not None
        },
        "note": "measured slice by slice (--distributed): each slice at its own zoom",
    }


def _allocate_outputs(
    depths: list[int], shape: tuple[int, ...], store: Path | None
) -> tuple[dict[int, Any], Any]:
    """One output per depth, as ``inference.predict`` allocates them (numpy, zarr 2 or 3)."""
    from .stores import allocate_outputs

    return allocate_outputs(tuple(depths), shape, tuple(min(s, 1024) for s in shape[-2:]), store)
