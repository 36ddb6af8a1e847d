"""Command line: ``napari-unetpp train | predict | info | export | demo``.

The CLI is thin on purpose: it reads files, builds the config dataclasses, drives
the same engine generators the widgets drive (``training.Trainer.run``,
``inference.predict``) and writes files. Reading and writing files lives in
``files.py`` and cluster prediction (``--distributed``) in ``distributed.py``, so
this module is only the command line. Everything a user can get wrong (a
missing file, mismatched shapes, a bad checkpoint) ends as one line
``napari-unetpp: error: ...`` and exit status 2, never a traceback.

Examples
--------
::

    napari-unetpp train --images em/image.tif --labels em/membranes.tif --out runs/em \\
        --widths 16 32 64 128 256 --iterations 2000
    napari-unetpp info runs/em
    napari-unetpp predict runs/em stack.tif --out results --depth 2
    napari-unetpp export runs/em --depth 2 --out models/em_L2 --zip
    napari-unetpp demo --model em
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__
from .files import (
    UserError,
    check_image,
    check_labels,
    collect_files,
    create_zarr,
    is_zarr,
    load_model,
    pair_files,
    read_array,
    read_image_with_size,
    stem,
    write_array,
)
from .locate import is_zoo, locate

if TYPE_CHECKING:  # engine imports are lazy: `napari-unetpp --help` must not load torch
    from .checkpoint import CheckpointInfo
    from .config import DataConfig, ModelConfig, PredictConfig, TrainConfig
    from .model import UNetPlusPlus
    from .outputs import OutputFolder

PROG = "napari-unetpp"

# --------------------------------------------------------------------------- output


def _out(text: str = "", stream: TextIO | None = None) -> None:
    """The only place the CLI writes results (stdout), so tests and pipes see one stream."""
    print(text, file=stream or sys.stdout, flush=True)


def _note(text: str) -> None:
    """Progress notes go to stderr, keeping stdout for tables and JSON."""
    print(text, file=sys.stderr, flush=True)


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (copy-pasteable into a notebook or an issue)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]
    lines = [
        "  ".join(
            c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths, strict=False))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3f}"
    return str(value)


def _human_count(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return str(n)


# --------------------------------------------------------------------------- configs


def read_run_json(path: str | Path | None) -> dict[str, Any]:
    """Read a ``run.json`` as saved by the widgets: ``{"model", "train", "data", "predict"}``."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    from .stores import read_regular_file

    try:
        data = json.loads(read_regular_file(path, 16 * 2**20, "run.json"))
    except RecursionError:
        raise UserError(f"config file {path} is nested too deeply; not a run.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a JSON object")
    known = {"model", "train", "data", "predict"}
    # provenance the widgets record beside the configs (not settings the CLI reads)
    unknown = (
        set(data)
        - known
        - {"version", "images", "labels", "val_images", "val_labels", "from", "checkpoint", "scope"}
    )
    if unknown:
        raise UserError(
            f"config file {path}: unknown section(s) {sorted(unknown)}; known: {sorted(known)}"
        )
    return data


def _override(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Copy ``base`` with the flags the user actually gave (``None`` means not given)."""
    out = dict(base)
    out.update({k: v for k, v in changes.items() if v is not None})
    return out


def _normalization_from_args(base: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    norm = dict(base.get("normalization") or {})
    if args.normalization is not None:
        if args.normalization != norm.get("mode"):
            norm = {}  # the other mode's low/high mean something else
        norm["mode"] = args.normalization
    if args.norm_low is not None:
        norm["low"] = args.norm_low
    if args.norm_high is not None:
        norm["high"] = args.norm_high
    return norm


def build_train_configs(
    args: argparse.Namespace, base: CheckpointInfo | None = None, resuming: bool = False
) -> tuple[ModelConfig, TrainConfig, DataConfig, bool]:
    """Merge the starting checkpoint's configs, ``--config`` and the flags (in that order).

    ``resuming``: ``base`` is the run's own ``last/``, whose architecture
    ``--widths/--depth`` may repeat but not change.
    Returns the configs and whether the label mode is still to be guessed ("auto").
    """
    from .config import FINE_TUNE_LEARNING_RATE, DataConfig, ModelConfig, TrainConfig

    run = read_run_json(args.config)
    model_base = base.model.to_dict() if base is not None else run.get("model", {})
    if base is not None and (args.widths or args.depth is not None):
        if not resuming:
            raise UserError(
                "--widths/--depth cannot change the architecture of a model being "
                "fine-tuned; export a pruned depth first, or train from scratch"
            )
        from .runs import check_same_architecture

        check_same_architecture(base.model, args.widths, args.depth, Path(args.out))
        args.widths, args.depth = None, None  # the same as recorded: nothing to override
    model = _override(
        model_base,
        widths=tuple(args.widths) if args.widths else None,
        depth=args.depth,
        spatial_dims=args.spatial_dims,
    )
    if args.widths and args.depth is None and "depth" not in model_base:
        model["depth"] = min(len(args.widths) - 1, 4)
    learning_rate = args.lr
    if (
        base is not None
        and not resuming
        and learning_rate is None
        and "learning_rate" not in run.get("train", {})
    ):
        learning_rate = FINE_TUNE_LEARNING_RATE  # as the widget: a few labels must not undo it
    train = _override(
        run.get("train", {}),
        iterations=args.iterations,
        batch_size=args.batch_size,
        learning_rate=learning_rate,
        device=args.device,
        seed=args.seed,
        validate_every=args.validate_every,
        patch_size=tuple(args.patch_size) if args.patch_size else None,
        freeze_norm=getattr(args, "freeze_norm", None),
    )
    spatial_dims = int(model.get("spatial_dims", 2))
    if "patch_size" in train and len(train["patch_size"]) == 1:
        train["patch_size"] = tuple(train["patch_size"]) * spatial_dims
    elif "patch_size" not in train and spatial_dims == 3:
        train["patch_size"] = (32, 128, 128)
    data_base = run.get("data", {})
    if base is not None:  # normalise as the base model was trained (as the train widget does);
        # its label mapping (class_values) belongs to its own labels, not to these
        inherited = {"normalization": base.data.normalization.to_dict(), "target": base.data.target}
        data_base = {**inherited, **data_base}
    auto_label = args.label_mode == "auto"
    data = _override(
        data_base, label_mode=None if auto_label else args.label_mode, target=args.target
    )
    if args.channel_axis is not None:
        data["channel_axis"] = None if args.channel_axis == "none" else int(args.channel_axis)
    data["normalization"] = _normalization_from_args(data, args)
    return (
        ModelConfig.from_dict(model),
        TrainConfig.from_dict(train),
        DataConfig.from_dict(data),
        auto_label,
    )


def run_json(model: ModelConfig, train: TrainConfig, data: DataConfig) -> dict[str, Any]:
    """The ``run.json`` layout the widgets save, so a CLI run can be replayed in the GUI."""
    return {
        "version": __version__,
        "model": model.to_dict(),
        "train": train.to_dict(),
        "data": data.to_dict(),
    }


def _run_record(
    args: argparse.Namespace, model: ModelConfig, train: TrainConfig, data: DataConfig
) -> dict[str, Any]:
    """``run_json`` plus the input files and starting point, as the train widget records."""
    from .runs import absolute_paths

    record = run_json(model, train, data)
    for key in ("images", "labels", "val_images", "val_labels"):
        paths = absolute_paths(getattr(args, key, None))
        if paths:
            record[key] = paths
    start = getattr(args, "from_", None)
    if start:
        record["from"] = start if is_zoo(start) else str(Path(start).resolve())
    return record


# --------------------------------------------------------------------------- models


def read_model_info(spec: str) -> CheckpointInfo:
    """Configs and metrics without loading weights (``info`` must be instant)."""
    from .checkpoint import read_info

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
        from .pruning import gflop_per_mpx

        heads = range(1, config.depth + 1) if config.deep_supervision else [config.depth]
        return {d: round(gflop_per_mpx(config, d), 2) for d in heads}
    except (ValueError, RuntimeError):
        return {}


def _parameters_by_depth(config: ModelConfig) -> dict[int, int]:
    """Parameter counts from the architecture alone (no weights needed)."""
    try:
        from .model import UNetPlusPlus

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


# --------------------------------------------------------------------------- progress


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[Any]:
    """A tqdm bar on stderr; disabled (quietly) under ``--quiet`` or when not a terminal."""
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        unit="it",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        leave=True,
    )
    try:
        yield bar
    finally:
        bar.close()


def _advance(bar: Any, event: Any) -> None:
    """Move a bar to an event's step (events carry absolute step/total)."""
    total = getattr(event, "total", 0) or 0
    if total and bar.total != total:
        bar.total = total
        bar.refresh()
    step = getattr(event, "step", 0) or 0
    if step > bar.n:
        bar.update(step - bar.n)


# --------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or fine-tune) from files; writes the checkpoint and prints the per-depth table.

    Under ``torchrun`` every process runs this command: it joins the process group
    (DistributedDataParallel), rank 0 alone shows progress and writes files, and every
    rank leaves the group at the end, also after an error.
    """
    out = Path(args.out)
    resuming = _resume_inputs(args, out)
    if args.resume and not resuming:
        _note(f"--resume: {out} has no saved step yet; starting its recorded run from step 0")
        args.resume = False
    if not (args.images and args.labels):
        raise UserError(
            "train needs --images and --labels (or --resume with the --out of a "
            "run that recorded them in its run.json)"
        )
    if not args.dry_run:
        from .outputs import check_writable_folder

        check_writable_folder(out)  # before reading data or building anything
    initial = _initial_model(args, out, resuming)
    base = None
    if resuming:
        base = read_model_info(str(out / "last"))
    elif initial is not None:
        base = read_model_info(args.from_)
    configs = build_train_configs(args, base, resuming)
    if args.dry_run:
        return _train(args, out, initial, *configs, main_process=True)
    from .training import join_torchrun, process_rank

    leave = join_torchrun(configs[1].device)
    try:
        return _train(args, out, initial, *configs, main_process=process_rank() == 0)
    finally:
        leave()


def _train(
    args: argparse.Namespace,
    out: Path,
    initial: Any,
    model_config: ModelConfig,
    train_config: TrainConfig,
    data_config: DataConfig,
    auto: bool,
    main_process: bool,
) -> int:
    """Read the files, finish the configs from the data, train; rank 0 reports and writes."""
    pairs = pair_files(collect_files(args.images, "image"), collect_files(args.labels, "labels"))
    val_pairs: list[tuple[Path, Path]] = []
    if args.val_images or args.val_labels:
        if not (args.val_images and args.val_labels):
            raise UserError("give both --val-images and --val-labels (or neither)")
        val_pairs = pair_files(
            collect_files(args.val_images, "validation image"),
            collect_files(args.val_labels, "validation labels"),
        )
    images, labels = _read_pairs(pairs, data_config.channel_axis)
    val_images, val_labels = _read_pairs(val_pairs, data_config.channel_axis)

    from . import data as data_mod

    if auto:
        mode, why = data_mod.guess_label_mode(labels[0])
        data_config = data_config.replace(label_mode=mode)
        if main_process:
            _note(f"label mode: {mode} ({why})")
    channels = (
        1 if data_config.channel_axis is None else int(images[0].shape[data_config.channel_axis])
    )
    classes = data_mod.num_output_channels(data_config, labels)
    model_config = model_config.replace(
        in_channels=channels,
        num_classes=classes,
        # fine-tuning to another class count: new heads, so the old names do not apply
        class_names=model_config.class_names if classes == model_config.num_classes else (),
    )
    record = _run_record(args, model_config, train_config, data_config)
    if args.dry_run:
        _out(json.dumps(record, indent=2))
        return 0
    with contextlib.ExitStack() as stack:
        if main_process:
            from .outputs import OutputFolder
            from .runs import write_run_file

            stack.enter_context(OutputFolder(out))  # one run at a time writes into --out
            write_run_file(out, record)  # before the first step: `--resume` alone continues it
        return _run_trainer(
            args,
            out,
            initial,
            model_config,
            train_config,
            data_config,
            (images, labels, val_images, val_labels),
            len(pairs),
            len(val_pairs),
            main_process,
        )


def _run_trainer(
    args: argparse.Namespace,
    out: Path,
    initial: Any,
    model_config: ModelConfig,
    train_config: TrainConfig,
    data_config: DataConfig,
    arrays: tuple[Any, ...],
    n_pairs: int,
    n_val: int,
    main_process: bool,
) -> int:
    """Drive the trainer with a progress bar; rank 0 records the run and prints the table."""
    from .training import Trainer

    images, labels, val_images, val_labels = arrays
    trainer = Trainer(
        model_config,
        train_config,
        data_config,
        initial=initial,
        output_dir=out,
        resume=bool(args.resume),
    )
    if main_process:
        _note(
            f"training on {n_pairs} image(s)"
            + (f", validating on {n_val}" if n_val else "")
            + f"; checkpoint -> {out}"
        )
    result = _drive_training(
        trainer.run(images, labels, val_images or None, val_labels or None),
        train_config.iterations,
        enabled=main_process and not args.quiet,
    )
    if not main_process:
        return 0
    saved = result.info
    # run.json beside best/ and last/: `train --config RUN/run.json` replays the run
    from .runs import write_run_file

    write_run_file(out, _run_record(args, saved.model, saved.train or train_config, saved.data))
    _out(f"checkpoint: {result.checkpoint}")
    _out(depth_table(saved))
    return 0


def _resume_inputs(args: argparse.Namespace, out: Path) -> bool:
    """For ``--resume``: fill unset flags from ``out/run.json``; whether ``last/`` exists.

    ``run.json`` is written when a run starts, so a run killed before its first
    save restarts from step 0 with its recorded settings and inputs.
    """
    if not args.resume:
        return False
    if args.from_:
        raise UserError("give either --resume or --from, not both")
    from .runs import RUN_FILE, recorded_inputs

    run_file = out / RUN_FILE
    has_last = (out / "last" / "config.json").is_file()
    if not run_file.is_file():
        if not has_last:
            raise UserError(
                f"--resume: no interrupted run in {out} (no {run_file} and no {out / 'last'})"
            )
        return True
    if args.config is None:
        args.config = str(run_file)  # the interrupted run's settings
    record = read_run_json(run_file)
    for key, paths in recorded_inputs(record, run_file).items():
        if not getattr(args, key):
            setattr(args, key, paths)
    if not has_last and isinstance(record.get("from"), str):
        args.from_ = record["from"]  # killed before the first save: the same start again
    return has_last


def _initial_model(args: argparse.Namespace, out: Path, resuming: bool) -> Any:
    """What to fine-tune from: a checkpoint path, a zoo model, or None (``--resume`` is apart)."""
    if resuming or not args.from_:
        return None
    where = locate(args.from_)
    return load_model(args.from_, device="cpu")[0] if where.kind == "zoo" else str(where.path)


def _read_pairs(
    pairs: Sequence[tuple[Path, Path]], channel_axis: int | None
) -> tuple[list[Any], list[Any]]:
    images, labels = [], []
    for image_path, label_path in pairs:
        image = read_array(image_path)
        check_image(image, image_path)
        label = check_labels(read_array(label_path), image, label_path, channel_axis)
        images.append(image)
        labels.append(label)
    return images, labels


def _drive_training(gen: Any, total: int, enabled: bool) -> Any:
    """Drive the training generator (``events.drive``) with a bar showing loss and score."""
    from .events import drive

    postfix: dict[str, str] = {}
    with progress_bar(total, "train", enabled) as bar:

        def show(event: Any) -> None:
            kind = getattr(event, "kind", "")
            if kind == "step" and getattr(event, "loss", None) is not None:
                postfix["loss"] = f"{float(event.loss):.4f}"
            elif kind == "validation" and getattr(event, "val_scores", None):
                scores = event.val_scores
                best = max(scores, key=lambda d: scores[d])
                postfix["val"] = f"{scores[best]:.3f}@L{best}"
            elif kind == "note" and getattr(event, "message", ""):
                _note(event.message)  # e.g. "no validation: paint on more of the image"
            _advance(bar, event)
            if postfix:
                bar.set_postfix(postfix, refresh=False)

        return drive(gen, show)


# --------------------------------------------------------------------------- predict


def _scale_flags(args: argparse.Namespace, object_diameter: float | None) -> dict[str, Any]:
    """``--pixel-size/--pixel-unit/--rescale/--diameter`` as PredictConfig fields (None: unset)."""
    from .scale import rescale_from_diameter

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
    from .config import DataConfig, PredictConfig

    run = read_run_json(args.config)
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
    from .data import looks_rgb, rgb_to_grey
    from .outputs import OutputFolder

    files = collect_files(args.images, "image")
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
            from .distributed import start_client

            client = start_client(args.distributed)
        try:
            for path in files:
                image, file_size, file_unit = read_image_with_size(path, lazy=True)
                check_image(image, path)
                if (
                    model.config.in_channels == 1
                    and data_config.channel_axis is None
                    and looks_rgb(image.shape)
                ):
                    image = rgb_to_grey(image)  # as the widget does, as the zoo was trained
                    _out(f"{path}: RGB -> grey (luminance) for this one-channel model")
                config = _with_file_pixel_size(
                    predict_config, model.config, args, path, file_size, file_unit
                )
                written = _predict_file(
                    path, image, model, config, data_config, outputs, formats[path], args, client
                )
                _out(f"{path} -> {', '.join(str(p) for p in written)}")
        finally:
            if client is not None:
                from .distributed import close_client

                close_client(client)
    return 0


def _with_file_pixel_size(
    config: PredictConfig,
    model_config: ModelConfig,
    args: argparse.Namespace,
    path: Path,
    file_size: tuple[float, ...] | None,
    file_unit: str | None,
) -> PredictConfig:
    """The file's own pixel size (NIfTI, DICOM, OME-TIFF, tif resolution) when the user gave
    none and the model knows its training pixel size: a CT at 0.8 mm then runs at the model's
    3 mm. A size without a unit (a bare tif ``spacing``) is only reported, never guessed."""
    if (
        args.pixel_size is not None
        or config.rescale is not None
        or not model_config.pixel_size
        or not file_size
    ):
        return config
    sizes = " x ".join(f"{s:g}" for s in file_size)
    if not file_unit:
        _note(
            f"{path}: the file gives a pixel size of {sizes} without a unit; pass "
            f"--pixel-size (in {model_config.pixel_unit or 'the model unit'}) to use it"
        )
        return config
    from .scale import check_zoom, model_axes_pixel_size, zoom_from_pixel_size

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
) -> list[Path]:
    """Probabilities (in memory for tif, streamed to zarr for zarr), then labels, then files.

    Everything is written into the staging folder and committed (renamed into
    ``--out``) only when complete.
    """
    from .postprocess import labels_shape, probabilities_to_labels
    from .stores import mark_complete

    name = stem(path)
    store = outputs.stage(f"{name}_probabilities.zarr") if fmt == "zarr" else None
    if client is not None:
        from .distributed import PredictJob, predict_distributed

        job = PredictJob(args.checkpoint, config.to_dict(), data.to_dict())
        probs = predict_distributed(client, job, path, image, model, store)
    else:
        probs = _predict_local(
            model, image, config, data, desc=name, enabled=not args.quiet, out=store
        )
    run_json = outputs.stage(f"{name}_run.json")
    _write_predict_run_json(run_json, args.checkpoint, config, data, getattr(probs, "scale", None))
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
        mark_complete(target)
        written = [outputs.commit(labels_name)]
    else:
        labels = probabilities_to_labels(
            prob, model.config, data, threshold=config.threshold, min_size=config.min_size
        )
        staged = write_array(outputs.stage(f"{name}_labels"), labels, fmt)
        written = [outputs.commit(staged.name)]
    if store is not None:
        if args.probabilities:
            written.append(outputs.commit(store.name))
        else:
            shutil.rmtree(store)
    elif args.probabilities:
        for d in sorted(probs):
            staged = write_array(outputs.stage(f"{name}_L{d}"), probs[d], fmt)
            written.append(outputs.commit(staged.name))
    if args.disagreement:
        staged_maps = _write_disagreement(outputs.stage(name), probs, model.config, fmt)
        written += [outputs.commit(p.name) for p in staged_maps]
    written.append(outputs.commit(run_json.name))
    return written


def _write_disagreement(base: Path, probs: Any, config: ModelConfig, fmt: str) -> list[Path]:
    """``_disagreement`` (and ``_depth_used`` for --depth auto) maps, ``_regions.json`` ranking."""
    from .disagreement import disagreement_map, rank_regions
    from .outputs import TIFF_SOFTWARE

    adaptive = hasattr(probs, "depth_map")
    maps = {
        "disagreement": probs.disagreement
        if adaptive
        else disagreement_map(probs, config.num_classes)
    }
    if adaptive:
        maps["depth_used"] = probs.depth_map
        _out(probs.summary())
    written = [write_array(base.with_name(f"{base.name}_{k}"), v, fmt) for k, v in maps.items()]
    size = (128,) * config.spatial_dims if config.spatial_dims == 2 else (32, 64, 64)
    regions = [
        {
            "item": list(r.item),
            "start": list(r.start),
            "size": list(r.size),
            "score": round(r.score, 5),
        }
        for r in rank_regions(maps["disagreement"], size)
    ]
    path = base.with_name(f"{base.name}_regions.json")
    path.write_text(json.dumps({"written_by": TIFF_SOFTWARE, "label_here_next": regions}, indent=1))
    return [*written, path]


def _write_predict_run_json(
    path: Path,
    checkpoint: str,
    config: PredictConfig,
    data: DataConfig,
    scale: dict[str, Any] | None,
) -> None:
    """What one image was predicted with (replay: ``predict --config``): configs, and the
    scale used (pixel sizes, zoom per model axis, measured object diameter)."""
    from .outputs import TIFF_SOFTWARE

    record = {
        "written_by": TIFF_SOFTWARE,
        "checkpoint": checkpoint,
        "predict": config.to_dict(),
        "data": data.to_dict(),
        "scale": scale,
    }
    path.write_text(json.dumps(record, indent=2, default=str))


def _predict_local(
    model: UNetPlusPlus,
    image: Any,
    config: PredictConfig,
    data: DataConfig,
    desc: str = "predict",
    enabled: bool = True,
    out: Path | None = None,
) -> dict[int, Any]:
    """Drive ``inference.predict`` with a tqdm bar over tiles."""
    from .inference import predict

    gen = predict(model, image, config, data, out=out)
    with progress_bar(0, desc, enabled) as bar:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if event.kind in ("fallback", "scale"):
                bar.write(f"{PROG}: {event.message}", file=sys.stderr)
            _advance(bar, event)


# --------------------------------------------------------------------------- info / export


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
        from .pruning import depth_costs

        model, _ = load_model(args.checkpoint, device="cpu")
        timed = depth_costs(model, "cpu")
    _out(depth_table(info, timed))
    return 0


def _info_on(args: argparse.Namespace) -> int:
    """Without labels: each depth against the deepest on the image, and the image check."""
    from .config import PredictConfig
    from .data import looks_rgb, rgb_to_grey
    from .disagreement import check_image as check_on_image
    from .events import drive

    model, info = load_model(args.checkpoint, device="cpu")
    metrics = info.metrics or {}
    status = 0
    for path in collect_files(args.on, "image"):
        image = read_array(path, lazy=True)
        check_image(image, path)
        if (
            model.config.in_channels == 1
            and info.data.channel_axis is None
            and looks_rgb(image.shape)
        ):
            image = rgb_to_grey(image)
        config = PredictConfig(device=args.device or "auto")
        if model.config.spatial_dims == 3:
            config = config.replace(tile_size=(64, 128, 128))
        with progress_bar(0, stem(path), not args.quiet) as bar:
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
                lambda event: _advance(bar, event),
            )
        if args.json:
            advice = check.advice.__dict__ if check.advice else None
            _out(
                json.dumps(
                    {
                        "image": str(path),
                        "signals": check.signals,
                        "unlike_training": check.unlike_training,
                        "reasons": check.reasons,
                        "remedies": check.remedies,
                        "advice": advice,
                    },
                    default=str,
                )
            )
        else:
            _out(f"{path}:\n{check.report()}")
        status = max(status, int(check.unlike_training))
    return 0 if not args.strict else status


def cmd_export(args: argparse.Namespace) -> int:
    """Save the pruned network of one depth as its own, smaller checkpoint."""
    import dataclasses

    from .checkpoint import save_checkpoint

    model, info = load_model(args.checkpoint, device="cpu")
    if args.depth not in model.head_depths:
        raise UserError(f"no head at depth {args.depth}; this model has {list(model.head_depths)}")
    pruned = model.prune(args.depth)
    metrics = dict(info.metrics or {})
    row = (metrics.get("depths") or {}).get(str(args.depth))
    metrics["depths"] = {str(args.depth): row} if row else {}
    metrics["best_depth"] = args.depth
    provenance = {
        **(info.provenance or {}),
        "pruned_from": str(args.checkpoint),
        "pruned_depth": args.depth,
        "original_depth": model.depth,
    }
    new_info = dataclasses.replace(
        info, model=pruned.config, metrics=metrics, provenance=provenance
    )
    out = Path(args.out)
    path = Path(save_checkpoint(out, pruned, new_info, half=args.half))
    _out(
        f"exported L{args.depth}: {_human_count(pruned.num_parameters())} parameters "
        f"(of {_human_count(model.num_parameters())}) -> {path}"
    )
    if args.zip:
        from .checkpoint import export_zip

        _out(f"zip: {export_zip(path, Path(str(path) + '.zip'))}")
    return 0


# --------------------------------------------------------------------------- demo


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_demo(args: argparse.Namespace) -> int:
    """Segment the bundled sample crop with the shipped model and score it."""
    import numpy as np

    from . import _sample_data, zoo
    from .config import PredictConfig
    from .postprocess import probabilities_to_labels

    model, info = zoo.load_pretrained(args.model, device="cpu")
    image, truth, meta = _sample_data.load_sample(args.model)
    tile = (256, 256) if model.config.spatial_dims == 2 else (64, 128, 128)
    config = PredictConfig(device=args.device or "auto", tile_size=tile)
    probs = _predict_local(
        model, image, config, info.data, desc=f"demo {args.model}", enabled=not args.quiet
    )
    depth = max(probs)
    labels = probabilities_to_labels(probs[depth], model.config, info.data)
    score_name, score = _demo_score(
        labels, np.asarray(truth), model.config.num_classes, info.data.target
    )
    from .outputs import OutputFolder

    names = {f"{args.model}_image": np.asarray(image), f"{args.model}_labels": labels}
    with OutputFolder(args.out) as outputs:
        outputs.check_free([f"{name}.tif" for name in names])
        written = [
            outputs.commit(write_array(outputs.stage(name), array, "tif").name)
            for name, array in names.items()
        ]
    _out(
        f"demo: {meta.get('title', args.model)}, shape {tuple(image.shape)}, "
        f"model zoo:{args.model} (L{depth})"
    )
    _out(f"{score_name} against the crop's labels: {score:.3f}")
    _out(f"data: {meta.get('attribution', '')}")
    _out("wrote " + ", ".join(str(p) for p in written))
    if not args.no_viewer and _has_display():
        _show(image, labels, truth, args.model, meta)
    return 0


def _demo_score(labels: Any, truth: Any, num_classes: int, target: str) -> tuple[str, float]:
    """Instances: AP at IoU 0.5 (DSB 2018); classes: mean foreground IoU; binary: IoU."""
    from . import metrics

    if target == "instance":
        return "AP@0.5", metrics.average_precision(labels, truth, 0.5)
    if num_classes > 1:
        return "mean IoU", float(metrics.per_class_scores(labels, truth, num_classes)["mean_iou"])
    return "IoU", metrics.iou(labels > 0, truth > 0)


def _show(
    image: Any, labels: Any, truth: Any, name: str, meta: dict[str, Any]
) -> None:  # pragma: no cover - needs a display
    """Open napari with the result; the GUI module is imported only here."""
    from ._widgets.demo_viewer import show_demo

    show_demo(image, labels, truth, name, meta)


# --------------------------------------------------------------------------- parser


def _depth_arg(text: str) -> int | str:
    """``--depth``: a head depth (int) or ``auto`` (adaptive depth per tile)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a depth (1, 2, ...) or 'auto', got {text!r}"
        ) from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=["auto", "cuda", "mps", "cpu"],
        default=None,
        help="compute device (default: auto = cuda, else mps, else cpu)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so docs and tests can inspect it)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="UNet++ segmentation: train, predict, inspect, prune, demo."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train or fine-tune a UNet++ on image/label files")
    t.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="image files or folders (tif, tiff, png, npy, zarr); required "
        "unless --resume finds them in --out/run.json",
    )
    t.add_argument(
        "--labels",
        nargs="+",
        metavar="PATH",
        help="label files or folders, paired with images by name or sorted order",
    )
    t.add_argument("--val-images", nargs="+", metavar="PATH")
    t.add_argument("--val-labels", nargs="+", metavar="PATH")
    t.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="run folder: best/ (the checkpoint), last/ (to resume), run.json",
    )
    t.add_argument("--config", metavar="RUN_JSON", help="run.json (flags override it)")
    t.add_argument(
        "--from",
        dest="from_",
        metavar="CHECKPOINT|zoo:NAME",
        help="fine-tune from a checkpoint or a shipped model",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out with its recorded settings "
        "and files (--out/run.json, --out/last)",
    )
    t.add_argument("--widths", nargs="+", type=int, metavar="W")
    t.add_argument("--depth", type=int)
    t.add_argument("--spatial-dims", type=int, choices=[2, 3])
    t.add_argument("--iterations", type=int)
    t.add_argument("--patch-size", nargs="+", type=int, metavar="P")
    t.add_argument("--batch-size", type=int)
    t.add_argument(
        "--lr", type=float, help="learning rate (default 1e-3; 1e-4 when fine-tuning with --from)"
    )
    t.add_argument(
        "--freeze-norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep BatchNorm statistics fixed (default: on with --from, where a few "
        "labels must not re-estimate them; turn off to adapt to another "
        "modality)",
    )
    t.add_argument("--validate-every", type=int)
    t.add_argument("--label-mode", choices=["dense", "sparse", "auto"], default=None)
    t.add_argument("--target", choices=["semantic", "instance"])
    t.add_argument(
        "--channel-axis",
        metavar="AXIS|none",
        help="axis of the image holding channels (default: none)",
    )
    t.add_argument("--normalization", choices=["percentile", "window", "none"])
    t.add_argument("--norm-low", type=float)
    t.add_argument("--norm-high", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved run.json and exit without training",
    )
    _add_common(t)
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment images with a checkpoint or shipped model")
    p.add_argument("checkpoint", metavar="CHECKPOINT|zoo:NAME")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--config", metavar="RUN_JSON")
    p.add_argument(
        "--depth",
        type=_depth_arg,
        metavar="D|auto",
        help="run only the pruned network of this depth (fast); 'auto': per tile, "
        "shallow heads first, deeper only where they disagree",
    )
    p.add_argument(
        "--depth-tolerance",
        type=float,
        metavar="F",
        help="--depth auto: stop a tile when fewer than this fraction of its "
        "pixels change label between consecutive depths (0 = deepest, exact)",
    )
    p.add_argument(
        "--disagreement",
        action="store_true",
        help="also write the depth-disagreement map (and depth used for --depth "
        "auto) and <name>_regions.json, the regions to label next",
    )
    p.add_argument("--depths", nargs="+", type=int, help="heads to compute in one pass")
    p.add_argument("--tile", nargs="+", type=int, metavar="T")
    p.add_argument("--overlap", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--tta", action="store_true", help="test-time augmentation (flips)")
    p.add_argument(
        "--format",
        choices=["tif", "zarr"],
        default=None,
        help="output format (default: zarr for zarr inputs, else tif)",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <name>_L{d} probabilities per depth",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files in --out that napari-unetpp did not write "
        "(by default such files, e.g. your own *_labels.tif, are kept)",
    )
    p.add_argument("--threshold", type=float)
    p.add_argument("--min-size", type=int)
    p.add_argument("--channel-axis", metavar="AXIS|none")
    p.add_argument(
        "--pixel-size",
        nargs="+",
        type=float,
        metavar="S",
        help="the images' pixel size (one value, or one per spatial axis, e.g. Z Y X) "
        "in the model's unit (see `info`); resampled to the model's pixel size",
    )
    p.add_argument(
        "--pixel-unit",
        choices=["nm", "um", "mm"],
        default=None,
        help="unit of --pixel-size when it is not the model's",
    )
    p.add_argument(
        "--rescale",
        metavar="F|auto",
        help="zoom the images by F before predicting (0.5: objects twice the "
        "training size), or auto: measure the objects in a first pass",
    )
    p.add_argument(
        "--diameter",
        metavar="D|auto",
        help="typical object diameter in pixels (rescale = model's diameter / D), or "
        "auto; needs a model that records its object diameter (zoo:nuclei)",
    )
    p.add_argument(
        "--distributed",
        nargs="?",
        const="local",
        metavar="SCHEDULER|local",
        help="map slices over a dask.distributed cluster (default: a LocalCluster)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="show a checkpoint's configs and per-depth table")
    i.add_argument("checkpoint", metavar="CHECKPOINT|zoo:NAME")
    i.add_argument("--json", action="store_true", help="everything as JSON")
    i.add_argument(
        "--on",
        nargs="+",
        metavar="IMAGE",
        help="check the model on these images (no labels): does the recommended "
        "depth hold there, and do they look like the training data?",
    )
    i.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="--on: largest fraction of pixels a depth may label differently "
        "from the deepest (default 0.02)",
    )
    i.add_argument(
        "--strict",
        action="store_true",
        help="--on: exit with status 1 when an image looks unlike the training data",
    )
    i.add_argument(
        "--time",
        action="store_true",
        help="measure ms/Mpx per depth on this CPU now (median of 5 runs after a "
        "warm-up; run it when the machine is idle)",
    )
    _add_common(i)
    i.set_defaults(func=cmd_info)

    e = sub.add_parser("export", help="save the pruned network of one depth")
    e.add_argument("checkpoint", metavar="CHECKPOINT|zoo:NAME")
    e.add_argument("--depth", type=int, required=True)
    e.add_argument("--out", required=True, metavar="DIR")
    e.add_argument("--half", action="store_true", help="store weights as float16")
    e.add_argument("--zip", action="store_true", help="also write DIR.zip")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="segment a bundled sample with a shipped model")
    d.add_argument("--model", choices=["nuclei", "em", "ct"], default="nuclei")
    d.add_argument("--out", default="unetpp-demo", metavar="DIR")
    d.add_argument("--no-viewer", action="store_true", help="do not open napari")
    _add_common(d)
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-unetpp`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _note("interrupted")  # outputs are staged: nothing half-written is left in --out
        return 130
    except BrokenPipeError:
        # `napari-unetpp info ... | head -1`: the reader is gone, which is not an error;
        # point stdout at devnull so the interpreter's final flush stays quiet too
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except RecursionError:
        return _error("a file is nested too deeply to read (corrupt or hostile JSON)")
    except MemoryError:
        return _error("out of memory; use smaller inputs, tiles, batch or patch sizes")
    except (ValueError, OSError) as exc:
        # CheckpointError subclasses ValueError, FileNotFoundError OSError: user mistakes
        # and disk problems (read-only, full, missing) never show a traceback
        return _error(_one_line(exc))


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Engine warnings (NaN pixels filled, one-class labels...) as one line, not a source line."""
    _note(f"warning: {' '.join(str(message).split())}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
