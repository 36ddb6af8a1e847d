"""``napari-unetpp predict``: segment image files with a checkpoint or a shipped model.

Results are staged and renamed into ``--out`` (:class:`~napari_unetpp.outputs.OutputFolder`);
each image gets ``<name>_run.json`` (:func:`napari_unetpp.runs.write_image_record`), which
``predict --config`` replays.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..events import drive
from ..files import (
    UserError,
    check_image,
    collect_files,
    create_zarr,
    is_zarr,
    load_model,
    read_image_with_size,
    spacing_attrs,
    stem,
    write_array,
)
from ..runs import diameter_record, read_run_file, write_image_record
from .common import ProgressBar, _note, _out, _override, naming, warnings_once

if TYPE_CHECKING:
    from ..checkpoint import CheckpointInfo
    from ..config import DataConfig, ModelConfig, PredictConfig
    from ..model import UNetPlusPlus
    from ..outputs import OutputFolder


def _scale_flags(args: argparse.Namespace, object_diameter: float | None) -> dict[str, Any]:
    """``--pixel-size/--pixel-unit/--rescale/--diameter`` as PredictConfig fields (None: unset)."""
    from ..scale import rescale_from_diameter

    rescale, diameter = getattr(args, "rescale", None), getattr(args, "diameter", None)
    if rescale is not None and diameter is not None:
        raise UserError("give either --rescale or --diameter, not both")
    if diameter is not None:
        rescale = (
            "auto"
            if diameter == "auto"
            else rescale_from_diameter(object_diameter, _positive_float(diameter, "--diameter"))
        )
    elif rescale is not None and rescale != "auto":
        rescale = _positive_float(rescale, "--rescale")
    pixel_size = getattr(args, "pixel_size", None)
    if getattr(args, "pixel_unit", None) and not pixel_size:
        raise UserError("--pixel-unit says the unit of --pixel-size: give --pixel-size too")
    return {
        "pixel_size": tuple(pixel_size) if pixel_size else None,
        "rescale": rescale,
        "pixel_unit": getattr(args, "pixel_unit", None),
    }


def _positive_float(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{flag} takes a number or 'auto', got {text!r}") from None
    if not value > 0:
        raise UserError(f"{flag} must be > 0, got {text}")
    return value


def build_predict_config(
    args: argparse.Namespace,
    info_data: DataConfig,
    spatial_dims: int,
    object_diameter: float | None = None,
) -> tuple[PredictConfig, DataConfig]:
    """``--config``'s "predict"/"data" sections, the checkpoint's data config, then the flags.

    ``object_diameter``: the model's training object diameter, for ``--diameter D``.
    """
    from ..config import DataConfig, PredictConfig

    run = read_run_file(args.config)
    if args.depth is not None and args.depths:
        raise UserError("give either --depth (pruned fast path) or --depths, not both")
    auto = args.depth == "auto"
    predict = _override(
        run.get("predict", {}),
        pruned_depth=None if auto else args.depth,
        adaptive_depth=True if auto else None,
        depth_tolerance=args.depth_tolerance,
        depths=tuple(args.depths) if args.depths else None,
        tile_size=tuple(args.tile) if args.tile else None,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        threshold=args.threshold,
        min_size=args.min_size,
        **_scale_flags(args, object_diameter),
    )
    if args.tta:
        predict["tta"] = True
    if args.full_precision:
        predict["mixed_precision"] = False
    if getattr(args, "int8", False):
        predict["int8"] = True
    tile = tuple(predict.get("tile_size", ()))
    if len(tile) == 1:
        predict["tile_size"] = tile * spatial_dims
    elif not tile and spatial_dims == 3:
        predict["tile_size"] = (64, 128, 128)
    data = info_data.to_dict()
    if "normalization" in run.get("data", {}):
        data["normalization"] = run["data"]["normalization"]
    if args.channel_axis is not None:
        data["channel_axis"] = None if args.channel_axis == "none" else int(args.channel_axis)
    return PredictConfig.from_dict(predict), DataConfig.from_dict(data)


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment images; write ``<name>_labels.tif`` (+ ``<name>_L{d}.tif``) or zarr.

    Results are staged and renamed into ``--out`` (:class:`~napari_unetpp.outputs.OutputFolder`):
    files this package did not write are never replaced without ``--overwrite``.
    """
    from ..outputs import OutputFolder

    files = _once_each(collect_files(args.images, "image"))
    model, info = load_model(args.checkpoint, device="cpu")
    predict_config, data_config = build_predict_config(
        args, info.data, model.config.spatial_dims, model.config.object_diameter
    )
    formats = {path: args.format or ("zarr" if is_zarr(path) else "tif") for path in files}
    depths = _predicted_depths(predict_config, model.head_depths)
    names = {
        path: _output_names(path, fmt, args.probabilities, depths, args.disagreement)
        for path, fmt in formats.items()
    }
    _check_unique(names)
    client = None
    with OutputFolder(args.out, overwrite=args.overwrite) as outputs:
        outputs.check_free([n for listed in names.values() for n in listed])
        if args.distributed:
            from ..distributed import start_client

            client = start_client(args.distributed)
        try:
            for path in files:
                with naming(path), warnings_once():  # the check repeats the run's warnings
                    written = _predict_path(
                        path, (model, info), (predict_config, data_config), outputs,
                        formats[path], args, client,
                    )  # fmt: skip
                _out(f"{path} -> {', '.join(str(p) for p in written)}")
        finally:
            if client is not None:
                from ..distributed import close_client

                close_client(client)
    return 0


def _once_each(files: list[Path]) -> list[Path]:
    """One prediction per file, however often it was named (``a.tif a.tif``, ``dir dir/a.tif``)."""
    first: dict[Path, Path] = {}
    for path in files:
        first.setdefault(path.resolve(), path)
    return list(first.values())


def _predict_path(
    path: Path,
    loaded: tuple[UNetPlusPlus, CheckpointInfo],
    configs: tuple[PredictConfig, DataConfig],
    outputs: OutputFolder,
    fmt: str,
    args: argparse.Namespace,
    client: Any,
) -> list[Path]:
    """Read one image file, predict, check and write its results; the paths written."""
    from ..normalization import as_model_input

    model, info = loaded
    predict_config, data_config = configs
    image, file_size, file_unit = read_image_with_size(path, lazy=True)
    check_image(image, path)
    if args.channel_axis is None:
        data_config = _file_channel_axis(path, image.shape, data_config, model.config.in_channels)
    # before anything reads its axes: the check's probes flip and halve the image itself
    image, grey = as_model_input(image, model.config.in_channels, data_config.channel_axis)
    if grey:
        _note(f"{path}: RGB -> grey (luminance) for this one-channel model")
    config = with_file_pixel_size(predict_config, model.config, args, path, file_size, file_unit)
    return _predict_file(
        path,
        image,
        model,
        config,
        data_config,
        outputs,
        fmt,
        args,
        client,
        (file_size, file_unit),
        info.metrics or {},
    )


def _file_channel_axis(
    path: Path, shape: tuple[int, ...], data: DataConfig, in_channels: int
) -> DataConfig:
    """A TIFF whose metadata names a channel axis (ImageJ or OME ``C``) and no --channel-axis:
    its channels are the model's input when their number fits; else each is segmented as its
    own plane, and said so (a two-channel ImageJ file came out as a two-slice "stack" silently).
    """
    if path.suffix.lower() not in (".tif", ".tiff"):
        return data
    from ..readers import array_axes, tiff_spacing

    axes = array_axes(tiff_spacing(path)[0], len(shape))
    count = shape[axes.index("C")] if "C" in axes else 1
    if count == 1:
        return data
    axis = axes.index("C")
    if count == in_channels:
        _note(f"{path}: its {count} channels (axes {axes}) are the model's input channels")
        return data.replace(channel_axis=axis)
    _note(
        f"{path}: the file's axes are {axes}: its {count} channels are segmented each as its "
        f"own plane (this model takes {in_channels} channel(s)); --channel-axis {axis} is "
        f"for a model trained on {count}"
    )
    return data


def with_file_pixel_size(
    config: PredictConfig,
    model_config: ModelConfig,
    args: argparse.Namespace,
    path: Path,
    file_size: tuple[float, ...] | None,
    file_unit: str | None,
) -> PredictConfig:
    """The file's own pixel size (NIfTI, DICOM, OME-TIFF, tif resolution) when the user gave
    none and the model knows its training pixel size: a CT at 0.8 mm then runs at the model's
    3 mm. A size without a unit (a bare tif ``spacing``) is only reported, never guessed.
    ``--pixel-size`` for a model that records no training pixel size (``zoo:nuclei``) is
    dropped with a note that names the flags that do set its scale."""
    if args.pixel_size is not None and not model_config.pixel_size:
        _note(
            f"{path}: --pixel-size ignored: this model was trained without a pixel size; its "
            "scale is the objects' size: give --diameter D (their diameter in pixels), "
            "--diameter auto, or --rescale F"
        )
        return config.replace(pixel_size=None, pixel_unit="")
    if args.pixel_size is not None or config.rescale is not None or not model_config.pixel_size:
        return config
    if not file_size and config.pixel_size:  # --config's (a dock run's run.json): used
        given = " x ".join(f"{s:g}" for s in config.pixel_size)
        _note(
            f"{path}: the file gives no pixel size; using the pixel size {given} "
            f"{config.pixel_unit} from --config"
        )
        return config
    if not file_size:  # a CT at 1 mm in a .npy would run as if at 3 mm, silently
        trained = " x ".join(f"{s:g}" for s in model_config.pixel_size)
        _note(
            f"{path}: the file gives no pixel size; segmenting it as if it had the model's "
            f"{trained} {model_config.pixel_unit}: pass --pixel-size if it has not"
        )
        return config
    sizes = " x ".join(f"{s:g}" for s in file_size)
    if not file_unit:
        _note(
            f"{path}: the file gives a pixel size of {sizes} without a unit; pass "
            f"--pixel-size (in {model_config.pixel_unit or 'the model unit'}) to use it"
        )
        return config
    from ..scale import check_zoom, model_axes_pixel_size, zoom_from_pixel_size

    if len(file_size) < model_config.spatial_dims:
        _note(
            f"{path}: the file gives only the in-plane pixel size {sizes} {file_unit}; this "
            f"{model_config.spatial_dims}D model needs one per axis: pass --pixel-size Z Y X"
        )
        return config
    try:
        check_zoom(
            zoom_from_pixel_size(
                model_axes_pixel_size(file_size, model_config.spatial_dims),
                model_config.pixel_size,
                file_unit,
                model_config.pixel_unit,
            )
        )
    except ValueError:  # print-resolution tags and the like: not a microscope's pixel size
        _note(
            f"{path}: ignored the file's pixel size {sizes} {file_unit}: it is too far from "
            f"the model's {model_config.pixel_size} {model_config.pixel_unit} to be real; "
            "pass --pixel-size if it is"
        )
        return config
    _note(f"{path}: pixel size {sizes} {file_unit} from the file (--pixel-size overrides)")
    return config.replace(pixel_size=tuple(file_size), pixel_unit=file_unit)


def _predicted_depths(config: PredictConfig, heads: tuple[int, ...]) -> list[int]:
    """The heads a run returns (as ``inference.predict`` plans them), to name the outputs."""
    if config.pruned_depth is not None:
        return [config.pruned_depth]
    return sorted(set(config.depths)) or list(heads)


def _output_names(
    path: Path, fmt: str, probabilities: bool, depths: list[int], disagreement: bool = False
) -> list[str]:
    """Every name a prediction of ``path`` writes into ``--out`` (checked before any work)."""
    name = stem(path)
    names = [f"{name}_labels.{fmt}", f"{name}_run.json"]
    if _nifti_copy(path):
        names.append(f"{name}_labels.nii.gz")
    if probabilities:
        names += (
            [f"{name}_probabilities.zarr"]
            if fmt == "zarr"
            else [f"{name}_L{d}.tif" for d in depths]
        )
    if disagreement:
        names += [f"{name}_disagreement.{fmt}", f"{name}_depth_used.{fmt}", f"{name}_regions.json"]
    return names


def _check_unique(names: dict[Path, list[str]]) -> None:
    """Two inputs must not write the same result (``a.tif`` and ``a.png``)."""
    seen: dict[str, Path] = {}
    for path, listed in names.items():
        for name in listed:
            if name in seen:
                raise UserError(
                    f"{seen[name]} and {path} would both write {name}; "
                    "predict them into different --out folders"
                )
            seen[name] = path


def _predict_file(
    path: Path,
    image: Any,
    model: UNetPlusPlus,
    config: PredictConfig,
    data: DataConfig,
    outputs: OutputFolder,
    fmt: str,
    args: argparse.Namespace,
    client: Any,
    grid: tuple[tuple[float, ...] | None, str | None] = (None, None),
    metrics: dict[str, Any] | None = None,
) -> list[Path]:
    """Probabilities (in memory for tif, streamed to zarr for zarr), then labels, then files.

    Everything is written into the staging folder and committed (renamed into
    ``--out``) only when complete. ``grid``: the input file's pixel size and unit,
    written with every image output so that it opens on the input's grid; a NIfTI or
    DICOM input also gets its labels as NIfTI in the scan's own voxel order and affine.
    ``metrics``: the model's (its image-check calibration, its recommended depth).
    """
    from ..postprocess import labels_shape, probabilities_to_labels
    from ..stores import mark_complete

    name = stem(path)
    store = outputs.stage(f"{name}_probabilities.zarr") if fmt == "zarr" else None
    if client is not None:
        from ..distributed import PredictJob, predict_distributed

        job = PredictJob(args.checkpoint, config.to_dict(), data.to_dict())
        probs = predict_distributed(client, job, path, image, model, store)
        scale = getattr(probs, "scale", None)
        if scale and scale.get("zoom"):  # the workers' scale events never reach this terminal
            zoom = " x ".join(f"{z:.3f}" for z in scale["zoom"])
            detail = f" ({scale['note']})" if scale.get("note") else ""
            _note(f"{path}: slices resampled by {zoom} to the model's scale{detail}")
    else:
        probs = _predict_local(
            model, image, config, data, desc=name, enabled=not args.quiet, out=store
        )
    run_json = outputs.stage(f"{name}_run.json")
    check = (
        None
        if args.no_check
        else _check_result(path, image, model, probs, config, data, args, metrics or {})
    )
    scale = getattr(probs, "scale", None)
    diameter = diameter_record(getattr(args, "diameter", None), scale)
    write_image_record(run_json, args.checkpoint, config, data, scale, check, path, diameter)
    depth = config.pruned_depth if config.pruned_depth is not None else max(probs)
    prob = probs[depth]
    if fmt == "zarr":  # streamed slice by slice: a big volume's labels never sit in memory
        labels_name = f"{name}_labels.zarr"
        target = create_zarr(
            outputs.stage(labels_name), labels_shape(prob.shape, model.config), "int32"
        )
        probabilities_to_labels(
            prob,
            model.config,
            data,
            threshold=config.threshold,
            min_size=config.min_size,
            out=target,
        )
        target.attrs.update(spacing_attrs(*grid))
        mark_complete(target)
        # the scan was read whole: its labels fit in memory too (read before the commit
        # moves the staged store: read after it, its chunks came back as zeros)
        whole = target[...] if _nifti_copy(path) else None
        written = [outputs.commit(labels_name)]
        if whole is not None:
            written += _write_nifti_labels(outputs, name, whole, path)
    else:
        labels = probabilities_to_labels(
            prob, model.config, data, threshold=config.threshold, min_size=config.min_size
        )
        staged = write_array(outputs.stage(f"{name}_labels"), labels, fmt, *grid)
        written = [outputs.commit(staged.name)]
        if _nifti_copy(path):
            written += _write_nifti_labels(outputs, name, labels, path)
    # the maps read the probabilities: before their store is committed (moved) or removed,
    # after which zarr read its chunks as zeros (an empty map, regions ranked on nothing)
    maps = (
        _write_disagreement(outputs.stage(name), probs, model.config, fmt, grid, (image, data))
        if args.disagreement
        else []
    )
    if store is not None:
        if args.probabilities:
            _store_spacing(store, grid)
            written.append(outputs.commit(store.name))
        else:
            shutil.rmtree(store)
    elif args.probabilities:
        for d in sorted(probs):
            staged = write_array(outputs.stage(f"{name}_L{d}"), probs[d], fmt, *grid)
            written.append(outputs.commit(staged.name))
    written += [outputs.commit(p.name) for p in maps]
    written.append(outputs.commit(run_json.name))
    return written


def _store_spacing(store: Path, grid: tuple[tuple[float, ...] | None, str | None]) -> None:
    """The probabilities' zarr (the group and each head's array) carries the input's pixel
    size, as the labels and the TIFF ``_L{d}`` files do: it carried none, so its heads
    opened on a grid of 1 unit per pixel beside labels at the scan's spacing."""
    attrs = spacing_attrs(*grid)
    if not attrs:
        return
    import zarr

    group = zarr.open_group(str(store), mode="r+")
    group.attrs.update(attrs)
    for _, array in group.arrays():
        array.attrs.update(attrs)


def _nifti_copy(path: Path) -> bool:
    """A NIfTI scan's or DICOM series' labels also go out as NIfTI (``<name>_labels.nii.gz``),
    on the scan's grid: what medical viewers lay over the scan (a TIFF or zarr they cannot
    place; with ``--format zarr`` the NIfTI was silently left out)."""
    from ..medical import is_medical

    return is_medical(path)


def _write_nifti_labels(outputs: OutputFolder, name: str, labels: Any, source: Path) -> list[Path]:
    """``<name>_labels.nii.gz`` on the scan's own grid (see :func:`medical.write_nifti_like`)."""
    from ..medical import write_nifti_like

    target = f"{name}_labels.nii.gz"
    try:
        write_nifti_like(outputs.stage(target), labels, source)
    except ValueError as exc:  # no patient geometry (a secondary capture): the TIFF has them
        _note(f"{source}: labels not written as NIfTI ({exc})")
        return []
    return [outputs.commit(target)]


def _write_disagreement(
    base: Path,
    probs: Any,
    config: ModelConfig,
    fmt: str,
    grid: tuple[tuple[float, ...] | None, str | None] = (None, None),
    source: tuple[Any, DataConfig] | None = None,
) -> list[Path]:
    """``_disagreement`` (and ``_depth_used`` for --depth auto) maps, ``_regions.json`` ranking
    (``source``: the image and its data config; on an image with nothing worth labelling the
    ranking is empty and ``_regions.json`` says why, as the terminal does)."""
    from ..disagreement import disagreement_map, result_disagreement
    from ..label_next import label_here_next, region_size
    from ..outputs import TIFF_SOFTWARE

    adaptive = hasattr(probs, "depth_map")
    disagreement = result_disagreement(probs, config.num_classes)
    # one head (a pruned --depth d run): disagreement_map raises, saying how to get the map
    maps = {
        "disagreement": disagreement_map(probs, config.num_classes)
        if disagreement is None
        else disagreement
    }
    if adaptive:
        maps["depth_used"] = probs.depth_map
        _out(probs.summary())
    written = [
        write_array(base.with_name(f"{base.name}_{k}"), v, fmt, *grid) for k, v in maps.items()
    ]
    size = region_size(config.spatial_dims)
    image, data = source if source is not None else (None, None)
    norm = None if data is None else data.normalization
    ranking = label_here_next(probs, config.num_classes, size, image=image, normalization=norm)
    regions = [
        {
            "item": list(r.item),
            "start": list(r.start),
            "size": list(r.size),
            "score": round(r.score, 5),
        }
        for r in ranking
    ]
    record: dict[str, Any] = {"written_by": TIFF_SOFTWARE, "label_here_next": regions}
    if ranking.note:
        record["note"] = ranking.note
        _note(f"{base.name}: {ranking.note}")
    path = base.with_name(f"{base.name}_regions.json")
    path.write_text(json.dumps(record, indent=1))
    return [*written, path]


def _check_result(
    path: Path,
    image: Any,
    model: UNetPlusPlus,
    probs: Any,
    config: PredictConfig,
    data: DataConfig,
    args: argparse.Namespace,
    metrics: dict[str, Any],
) -> dict[str, Any] | None:
    """The image check of one result (``disagreement.check_prediction``): a warning on
    stderr when the image looks unlike the training data, else its remedies as a hint (the
    Segment dock's; the terminal stayed silent on nuclei 1.8x the training size); the
    record for run.json."""
    from ..disagreement import check_result

    with ProgressBar(f"{stem(path)} check", enabled=not args.quiet) as bar:
        check = drive(check_result(model, image, probs, data, config, metrics), bar)
    if check is None:
        _note(f"{path}: not checked against the training data (too large to hold in memory)")
        return None
    if check.unlike_training:
        _note(f"{path}: {check.report()}")
    elif check.remedies:  # passed, yet worth a try (objects 1.8x the training size)
        _note(f"{path}: hint: " + "; ".join(check.remedies))
    return check.to_dict()


def _predict_local(
    model: UNetPlusPlus,
    image: Any,
    config: PredictConfig,
    data: DataConfig,
    desc: str = "predict",
    enabled: bool = True,
    out: Path | None = None,
) -> dict[int, Any]:
    """Drive ``inference.predict`` with a bar over tiles; CPU fallbacks and the scale used
    are written above the bar."""
    from ..inference import predict

    with ProgressBar(desc, enabled=enabled, notes=("fallback", "scale")) as bar:
        return drive(predict(model, image, config, data, out=out), bar)
