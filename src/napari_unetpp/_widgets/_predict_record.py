"""The Segment dock's run record: ``run.json``, ``command.sh`` and the saved labels.

Why apart from the job: these are the files a run leaves in its folder, the same as
``napari-unetpp predict`` writes, whichever job fills them in. :func:`record_predict`
writes ``run.json`` and ``command.sh`` at Start; :func:`save_labels` the labels, and
:func:`add_to_run_file` what the run measured, from the job (:mod:`._predict_job`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..runs import diameter_record, format_command, predict_record, replay_dir, save_run_record
from ._layers import LayerCopy, layer_file

if TYPE_CHECKING:
    from ..checkpoint import CheckpointInfo
    from ..config import DataConfig, PredictConfig


def scan_file(layer: Any) -> Path | None:
    """The NIfTI file or DICOM series a layer was read from by this plugin's reader, or None."""
    meta = getattr(layer, "metadata", {}) or {}
    path = meta.get("path")
    return Path(path) if meta.get("source") in ("nifti", "dicom") and path else None


def save_labels(
    run_dir: Path,
    labels: np.ndarray,
    grid: tuple[tuple[float, ...] | None, str],
    scan: Path | None = None,
) -> None:
    """``labels.tif`` with the image's pixel size, and for a scan ``labels.nii.gz`` on its own
    grid, as ``napari-unetpp predict`` writes them.

    Why: the dock's labels.tif had no pixel size, and a radiologist's labels of a NIfTI or
    DICOM scan were only in the reader's axis order: ITK-SNAP or 3D Slicer could not lay
    them on the scan (the CLI's run of the same command could).
    """
    from ..files import write_array
    from ..medical import write_nifti_like

    sizes, unit = grid
    sizes = None if sizes is None else tuple(sizes)[-min(len(sizes), labels.ndim) :]
    write_array(run_dir / "labels", labels, "tif", sizes, unit or None)
    if scan is not None:
        try:
            write_nifti_like(run_dir / "labels.nii.gz", labels, scan)
        except ValueError:  # unevenly spaced DICOM slices: no one grid (the CLI skips it too)
            pass


def add_to_run_file(run_dir: Path, fields: Mapping[str, Any]) -> None:
    """Merge ``fields`` into the run's ``run.json`` (written at Start)."""
    from ..runs import RUN_FILE, read_run_file, write_json

    record = run_dir / RUN_FILE
    write_json(record, {**read_run_file(record), **fields})


def record_predict(
    run_dir: Path,
    layer: Any,
    spec: str,
    info: CheckpointInfo,
    config: PredictConfig,
    data: DataConfig,
    scope: str,
    check: bool = True,
    part: Any = None,
    labels_depth: int | None = None,
    diameter: float | str | None = None,
) -> list[LayerCopy]:
    """``run.json`` and ``command.sh``: the same run as ``napari-unetpp predict``
    (``check``: the result is checked against the training data, as the CLI does unless
    ``--no-check``; ``part``: the slice a quick look segments, saved as the command's
    image: the layer's file made the command segment the whole stack).

    ``labels_depth``: the head the dock's labels come from (the Depth slider's). The CLI
    labels from the deepest head unless ``--depth`` names one, so a command without it
    gave other labels (EM: L4 for the dock's recommended L3). ``diameter``: the object
    size the user set (``runs.diameter_record``; an auto run adds what it estimated).

    Returns the image copy the command names, for :func:`._predict_job.segment_job` to
    write (off the GUI thread)."""
    image, copy = layer_file(layer, run_dir, "image", part)
    depth = config.pruned_depth
    if depth is None and not config.adaptive_depth and labels_depth != info.model.depth:
        depth = labels_depth
    model = info.model.to_dict()
    configs = predict_record(spec, config, data, model=model, images=[image], scope=scope)
    if diameter is not None:
        configs["diameter"] = diameter_record(diameter, None)
    command = format_command(
        "predict",
        spec,
        image,
        out=replay_dir(run_dir),  # never beside (or over) the dock's labels.tif
        config=run_dir / "run.json",
        depth=depth,
        channel_axis=data.channel_axis,
        probabilities=True,
        no_check=not check,
        int8=config.int8,  # run.json has it too: said here, where a reader looks
    )
    save_run_record(run_dir, "predict", configs, command)
    return [] if copy is None else [copy]
