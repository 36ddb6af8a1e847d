"""``napari-unetpp info``: a checkpoint's configs and per-depth table, and ``--on IMAGE``."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..events import drive
from ..files import (
    check_image,
    collect_files,
    load_model,
    read_image_with_size,
    stem,
)
from ..locate import locate
from ..zoo import scale_line
from .common import ProgressBar, _note, _out, naming, warnings_once
from .tables import _human_count, format_table

if TYPE_CHECKING:  # engine imports are lazy: `napari-unetpp --help` must not load torch
    from pathlib import Path

    from ..checkpoint import CheckpointInfo
    from ..config import ModelConfig
    from ..image_check import ImageCheck
    from ..model import UNetPlusPlus


def read_model_info(spec: str) -> CheckpointInfo:
    """Configs and metrics without loading weights (``info`` must be instant)."""
    from ..checkpoint import read_info

    return read_info(locate(spec).path)


def depth_table(info: CheckpointInfo, timed: dict[int, dict[str, float]] | None = None) -> str:
    """The per-depth table: what each pruning depth costs (parameters, GFLOP, time) and scores.

    GFLOP/Mpx is exact (counted from the architecture); ms/Mpx is the one stored at
    training time, or, with ``timed`` (``pruning.depth_costs``), measured just now.
    """
    metrics = info.metrics or {}
    rows_in = metrics.get("depths", {}) or {}
    score_name = metrics.get("score_name", "score")
    best = metrics.get("best_depth")
    depths = range(1, info.model.depth + 1) if info.model.deep_supervision else [info.model.depth]
    params = _parameters_by_depth(info.model)
    gflops = _gflop_by_depth(info.model)
    rows = []
    for d in depths:
        row = rows_in.get(str(d), rows_in.get(d, {})) or {}
        label = f"L{d}" + (" *" if best is not None and int(best) == d else "")
        score = row.get(score_name, row.get("score"))
        ms = timed[d]["ms_per_mpx"] if timed else row.get("ms_per_mpx")
        rows.append(
            [label, _human_count(row.get("parameters", params.get(d))), score, gflops.get(d), ms]
        )
    ms_header = "ms/Mpx (now, median)" if timed else "ms/Mpx (stored)"
    table = format_table(["depth", "parameters", score_name, "GFLOP/Mpx", ms_header], rows)
    if best is not None:
        table += f"\n* recommended depth (smallest within tolerance of the best {score_name})"
    return table


def _gflop_by_depth(config: ModelConfig) -> dict[int, float]:
    """Exact GFLOP per megapixel per depth, from the architecture alone (no weights needed)."""
    try:
        from ..pruning import gflop_per_mpx

        heads = range(1, config.depth + 1) if config.deep_supervision else [config.depth]
        return {d: round(gflop_per_mpx(config, d), 2) for d in heads}
    except (ValueError, RuntimeError):
        return {}


def _parameters_by_depth(config: ModelConfig) -> dict[int, int]:
    """Parameter counts from the architecture alone (no weights needed)."""
    try:
        from ..model import UNetPlusPlus

        net = UNetPlusPlus.from_config(config)
        return {d: net.num_parameters(d) for d in net.head_depths}
    except (ValueError, RuntimeError):
        return {}


def _info_dict(info: CheckpointInfo) -> dict[str, Any]:
    return {
        "version": info.version,
        "model": info.model.to_dict(),
        "data": info.data.to_dict(),
        "train": info.train.to_dict() if info.train is not None else None,
        "metrics": info.metrics,
        "provenance": info.provenance,
        "card": info.card,
    }


def cmd_info(args: argparse.Namespace) -> int:
    """Print the configs and the per-depth table (or everything as JSON); ``--on IMAGE`` checks
    the model on the user's image (depth advice, "unlike the training data" warning)."""
    if args.on:
        return _info_on(args)
    info = read_model_info(args.checkpoint)
    if args.json:
        _out(json.dumps(_info_dict(info), indent=2, default=str))
        return 0
    m = info.model
    _out(
        f"model: UNet++ {m.spatial_dims}D, depth {m.depth}, widths {list(m.widths)}, "
        f"{m.in_channels} input channel(s), {m.num_classes} output(s), norm {m.norm}"
        + (f", classes {list(m.class_names)}" if m.class_names else "")
    )
    # predict's --pixel-size is "in the model's unit (see `info`)": say it here
    _out(f"scale: {scale_line(m) or 'none recorded (predict runs at the image as it is)'}")
    d = info.data
    _out(
        f"data: label mode {d.label_mode}, target {d.target}, channel axis {d.channel_axis}, "
        f"normalization {d.normalization.mode} {d.normalization.low}..{d.normalization.high}"
    )
    if info.train is not None:
        t = info.train
        _out(
            f"train: {t.iterations} iterations, batch {t.batch_size}, patch "
            f"{list(t.patch_size)}, lr {t.learning_rate}, seed {t.seed}"
        )
    if info.provenance:
        _out("provenance:")
        for key, value in info.provenance.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            _out(f"  {key}: {text}")
    _out(f"plugin version: {info.version}")
    _out("")
    timed = None
    if args.time:
        from ..pruning import depth_costs

        model, _ = load_model(args.checkpoint, device="cpu")
        timed = depth_costs(model, "cpu")
    _out(depth_table(info, timed))
    if timed:
        from ..devices import inference_dtype

        precision = str(inference_dtype("cpu")).removeprefix("torch.")
        _out(f"times measured now on this CPU, in {precision} as predict runs it")
    return 0


def _info_on(args: argparse.Namespace) -> int:
    """Without labels: each depth against the deepest on the image, and the image check."""
    model, info = load_model(args.checkpoint, device="cpu")
    status = 0
    for path in collect_files(args.on, "image"):
        with naming(path), warnings_once():  # the check's passes warn alike
            check = _check_file(args, path, model, info)
        if args.json:
            _out(json.dumps({"image": str(path), **check.to_dict()}, default=str))
        else:
            _out(f"{path}:\n{check.report()}")
        status = max(status, int(check.unlike_training))
    return 0 if not args.strict else status


def _check_file(
    args: argparse.Namespace, path: Path, model: UNetPlusPlus, info: CheckpointInfo
) -> ImageCheck:
    """The image check of one file, at its pixel size, on a bounded region of a big image."""
    from ..config import PredictConfig
    from ..disagreement import check_image as check_on_image
    from ..image_signals import check_region
    from ..normalization import as_model_input
    from .predict import with_file_pixel_size  # the file's pixel size, as predict uses it

    metrics = info.metrics or {}
    image, file_size, file_unit = read_image_with_size(path, lazy=True)
    check_image(image, path)
    image, _ = as_model_input(image, model.config.in_channels, info.data.channel_axis)
    config = PredictConfig(device=args.device or "auto")
    if model.config.spatial_dims == 3:
        config = config.replace(tile_size=(64, 128, 128))
    if args.pixel_size:  # at the model's scale, as predict would run it
        config = config.replace(pixel_size=tuple(args.pixel_size), pixel_unit=args.pixel_unit or "")
    config = with_file_pixel_size(config, model.config, args, path, file_size, file_unit)
    region = check_region(image.shape, model.config.spatial_dims, info.data.channel_axis)
    if region is not None:  # memory and time bounded, whatever the image's size
        image = image[region]
        _note(f"{path}: checked on a central region of shape {tuple(image.shape)}")
    with ProgressBar(stem(path), enabled=not args.quiet) as bar:
        check, _ = drive(
            check_on_image(
                model,
                image,
                info.data,
                config,
                recommended=metrics.get("best_depth"),
                tolerance=args.tolerance,
                thresholds=metrics.get("image_check"),
            ),
            bar,
        )
    assert check is not None  # judged: no stopper was given, so it never stops
    return check
