"""``napari-unetpp train``: train or fine-tune from files, or ``--resume`` an interrupted run.

The run is recorded in ``--out/run.json`` (:mod:`napari_unetpp.runs`) before the first
step, so ``--resume`` alone continues it, and again at the end beside ``best/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..events import drive
from ..files import (
    UserError,
    check_image,
    check_labels,
    collect_files,
    pair_files,
    read_array,
    read_image_with_size,
)
from ..locate import CONFIG_NAME, is_zoo, locate
from ..runs import (
    PATH_KEYS,
    RUN_FILE,
    absolute_paths,
    check_same_architecture,
    read_run_file,
    recorded_inputs,
    train_record,
    write_run_file,
)
from .common import TrainProgress, _note, _out, _override
from .info import depth_table, read_model_info

if TYPE_CHECKING:
    from ..checkpoint import CheckpointInfo
    from ..config import DataConfig, ModelConfig, TrainConfig
    from ..training import Trainer


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
    from ..config import DataConfig, ModelConfig, TrainConfig

    run = read_run_file(args.config)
    model_base = base.model.to_dict() if base is not None else run.get("model", {})
    if base is not None and (args.widths or args.depth is not None):
        if not resuming:
            raise UserError(
                "--widths/--depth cannot change the architecture of a model being "
                "fine-tuned; export a pruned depth first, or train from scratch"
            )
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
    recorded = dict(run.get("train", {}))
    if base is not None and not resuming:  # the Train dock's fine-tune, unless told otherwise
        recorded = {**fine_tune_defaults(int(model.get("spatial_dims", 2))), **recorded}
    learning_rate = args.lr
    train = _override(
        recorded,
        iterations=args.iterations,
        batch_size=args.batch_size,
        learning_rate=learning_rate,
        device=args.device,
        seed=args.seed,
        validate_every=args.validate_every,
        patch_size=tuple(args.patch_size) if args.patch_size else None,
        freeze_norm=getattr(args, "freeze_norm", None),
        preserve_weight=getattr(args, "preserve", None),
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
    unset = args.label_mode is None and "label_mode" not in data_base and not resuming
    auto_label = args.label_mode == "auto" or unset  # as the dock: guessed, and said so
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


def fine_tune_defaults(spatial_dims: int) -> dict[str, Any]:
    """A fine-tune's training settings where none are given: the Train dock's.

    Why: ``train --from`` ran 2000 steps at batch 8 and patch 256, the dock 200 at batch 4
    and patch 128, so the same labels gave two different models (issue 16: the CLI and the
    dock give the same run)."""
    from ..config import (
        FINE_TUNE_BATCH_SIZE,
        FINE_TUNE_ITERATIONS,
        FINE_TUNE_LEARNING_RATE,
        FINE_TUNE_PATCH,
    )

    defaults: dict[str, Any] = {
        "iterations": FINE_TUNE_ITERATIONS,
        "batch_size": FINE_TUNE_BATCH_SIZE,
        "learning_rate": FINE_TUNE_LEARNING_RATE,
    }
    if spatial_dims == 2:
        defaults["patch_size"] = (FINE_TUNE_PATCH,) * 2
    return defaults


def _run_record(
    args: argparse.Namespace, model: ModelConfig, train: TrainConfig, data: DataConfig
) -> dict[str, Any]:
    """The run's ``run.json``: configs, input files (absolute) and starting point."""
    start = getattr(args, "from_", None)
    if start and not is_zoo(start):
        start = str(Path(start).resolve())
    inputs = {key: absolute_paths(getattr(args, key, None)) for key in PATH_KEYS}
    return train_record(model, train, data, inputs, start)


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
        from ..outputs import check_writable_folder

        check_writable_folder(out)  # before reading data or building anything
        _check_checkpoint_folders(out)
        if not args.resume:
            _check_no_earlier_model(out)
    initial = _initial_model(args, out, resuming)
    base = None
    if resuming:
        base = read_model_info(str(out / "last"))
    elif initial is not None:
        base = read_model_info(args.from_)
    configs = build_train_configs(args, base, resuming)
    # a one-channel starting model takes RGB(A) files as grey, as predict does (else a dead end:
    # --channel-axis -1 makes 3 channels, which the model's first layer cannot take)
    channels = base.model.in_channels if base is not None else None
    if args.dry_run:
        return _train(args, out, initial, *configs, main_process=True, channels=channels)
    from ..ddp import join_torchrun, process_rank, world_size

    leave = join_torchrun(configs[1].device)
    try:
        return _train(
            args, out, initial, *configs, main_process=process_rank() == 0, channels=channels
        )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: say how to go on from the last save
        if process_rank() == 0 and (out / "last").is_dir():
            from ..runs import format_command

            command = format_command("train", out=str(out), resume=True)
            if world_size() > 1:  # resumed alone, each step would see 1/N of the patches
                launcher = f"torchrun --nproc_per_node {world_size()} -m napari_unetpp.cli"
                command = command.replace("napari-unetpp", launcher, 1)
            _note(f"to continue from the last saved step: {command}")
        raise
    finally:
        leave()


def _check_checkpoint_folders(out: Path) -> None:
    """``best/`` and ``last/`` in ``--out`` are ours to replace, or the run does not start
    (it used to write ``best/`` and then fail on another tool's ``last/``)."""
    from ..locate import has_marker

    for name in ("best", "last"):
        folder = out / name
        foreign = folder.is_dir() and any(folder.iterdir()) and not has_marker(folder)
        if folder.is_file() or foreign:
            raise UserError(
                f"{folder} exists and is not a napari-unetpp checkpoint; refusing to replace "
                "it. Choose a new or empty --out folder"
            )


def _check_no_earlier_model(out: Path) -> None:
    """A new run into the ``--out`` of a trained one would replace its model at the first
    validation: repeating a command without ``--resume`` silently threw away the model
    of a finished (or long interrupted) run."""
    from ..locate import is_checkpoint_folder

    held = [name for name in ("best", "last") if is_checkpoint_folder(out / name)]
    if held:
        raise UserError(
            f"{out} already holds a trained model ({', '.join(f'{n}/' for n in held)}), which "
            "a new run would replace: continue it with --resume, or give another --out "
            f"(or delete {' and '.join(str(out / n) for n in held)} to start over)"
        )


def _train(
    args: argparse.Namespace,
    out: Path,
    initial: Any,
    model_config: ModelConfig,
    train_config: TrainConfig,
    data_config: DataConfig,
    auto: bool,
    main_process: bool,
    channels: int | None = None,
) -> int:
    """Read the files, finish the configs from the data, train; rank 0 reports and writes.

    ``channels``: the starting model's input channels (RGB(A) images become luminance for
    one, see ``normalization.as_model_input``); None for a new model, which takes them as given.
    """
    pairs = pair_files(collect_files(args.images, "image"), collect_files(args.labels, "labels"))
    val_pairs: list[tuple[Path, Path]] = []
    if args.val_images or args.val_labels:
        if not (args.val_images and args.val_labels):
            raise UserError("give both --val-images and --val-labels (or neither)")
        val_pairs = pair_files(
            collect_files(args.val_images, "validation image"),
            collect_files(args.val_labels, "validation labels"),
        )
    images, labels, sizes = _read_pairs(pairs, data_config.channel_axis, channels, main_process)
    val_images, val_labels, val_sizes = _read_pairs(
        val_pairs, data_config.channel_axis, channels, main_process
    )
    model_config, (images, labels), (val_images, val_labels) = _at_model_scale(
        args,
        model_config,
        data_config,
        (images, labels, sizes),
        (val_images, val_labels, val_sizes),
    )

    from ..labels import guess_label_mode, num_output_channels

    if auto:
        mode, why = guess_label_mode(labels[0])
        data_config = data_config.replace(label_mode=mode)
        if main_process:
            _note(f"label mode: {mode} ({why})")
    channels = (
        1 if data_config.channel_axis is None else int(images[0].shape[data_config.channel_axis])
    )
    if initial is not None:  # scribbles of some of its classes keep its heads (as the dock)
        from ..finetune import kept_class_values

        kept = kept_class_values(labels, model_config, data_config)
        data_config = data_config.replace(class_values=kept) if kept else data_config
    classes = num_output_channels(data_config, labels)
    if initial is not None and main_process:
        _note_class_mapping(labels, model_config, data_config, classes)
    if initial is not None and not args.dry_run and not args.train_anyway:
        _refuse_harmful_labels(initial, (images, labels), data_config, classes, train_config)
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
            from ..outputs import OutputFolder

            stack.enter_context(OutputFolder(out))  # one run at a time writes into --out
            write_run_file(out, record)  # before the first step: `--resume` alone continues it
        from ..training import Trainer

        trainer = Trainer(
            model_config,
            train_config,
            data_config,
            initial=initial,
            output_dir=out,
            resume=bool(args.resume),
        )
        arrays = (images, labels, val_images, val_labels)
        return _run_trainer(args, trainer, arrays, len(pairs), len(val_pairs), main_process)


def _note_class_mapping(
    labels: list[Any], model_config: ModelConfig, data_config: DataConfig, classes: int
) -> None:
    """A fine-tune: say which label value trains which of the starting model's classes, or
    that its output heads start anew (``finetune.class_mapping``, as the Train dock)."""
    from ..finetune import class_mapping

    warning, mapping = class_mapping(labels, model_config, data_config, classes)
    if warning or mapping:
        _note(f"warning: {warning}" if warning else str(mapping))


def _refuse_harmful_labels(
    initial: Any,
    pairs: tuple[list[Any], list[Any]],
    data_config: DataConfig,
    classes: int,
    train_config: TrainConfig,
) -> None:
    """Stop before the first step when the labels would make the starting model worse
    (``finetune_checks.harmful_labels``, as the Train dock); ``--train-anyway`` goes on.

    Why before: said as a warning while the run went on, it was missed, and a fine-tune of
    the EM model on membrane strokes read as dense labels ended at IoU 0.015."""
    from ..finetune_checks import TRAIN_ANYWAY, harmful_labels

    reason = harmful_labels(initial, *pairs, data_config, classes, train_config.device)
    if reason:
        raise UserError(f"{reason}; {TRAIN_ANYWAY.format(how='add --train-anyway')}")


def _run_trainer(
    args: argparse.Namespace,
    trainer: Trainer,
    arrays: tuple[Any, ...],
    n_pairs: int,
    n_val: int,
    main_process: bool,
) -> int:
    """Drive the trainer with a progress bar; rank 0 records the run and prints the table."""
    images, labels, val_images, val_labels = arrays
    out, train_config = Path(args.out), trainer.train_config
    if main_process:
        _note(
            f"training on {n_pairs} image(s)"
            + (f", validating on {n_val}" if n_val else "")
            + f"; checkpoint -> {out}"
        )
    with (
        TrainProgress(train_config.iterations, enabled=main_process and not args.quiet) as bar,
        _stop_at_a_signal(trainer) as stopped_by,
    ):
        result = drive(trainer.run(images, labels, val_images or None, val_labels or None), bar)
    if not main_process:
        return 0
    saved = result.info
    # run.json beside best/ and last/: `train --config RUN/run.json` replays the run
    write_run_file(out, _run_record(args, saved.model, saved.train or train_config, saved.data))
    _out(f"checkpoint: {result.checkpoint}")
    _out(depth_table(saved))
    if stopped_by:
        from ..runs import format_command

        step = saved.provenance.get("iterations")
        command = format_command("train", out=str(out), resume=True)
        _note(f"stopped at step {step}, saved in {out / 'last'}; to continue: {command}")
        return 128 + stopped_by[0]
    return 0


@contextlib.contextmanager
def _stop_at_a_signal(trainer: Trainer) -> Iterator[list[int]]:
    """A first Ctrl-C (or SIGTERM) stops the run after its current step, which saves
    ``last/`` and ``best/`` as a finished run does; a second one interrupts at once.

    Why: an interrupt raised inside the training loop lost every step since the last
    save (``last/`` is written at each validation), up to ``--validate-every`` steps.
    The list yielded gets the signal's number. Torchrun's ranks keep the plain
    interrupt: one rank stopping alone would leave the others waiting for it.
    """
    import signal
    import threading

    from ..ddp import world_size

    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread() or world_size() > 1:
        yield caught
        return

    def stop(signum: int, frame: object) -> None:
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)
        trainer.stop()
        _note("stopping after this step and saving it (press Ctrl-C again to quit at once)")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _resume_inputs(args: argparse.Namespace, out: Path) -> bool:
    """For ``--resume``: fill unset flags from ``out/run.json``; whether ``last/`` exists.

    ``run.json`` is written when a run starts, so a run killed before its first
    save restarts from step 0 with its recorded settings and inputs.
    """
    if not args.resume:
        return False
    if args.from_:
        raise UserError("give either --resume or --from, not both")
    run_file = out / RUN_FILE
    has_last = (out / "last" / CONFIG_NAME).is_file()
    if not run_file.is_file():
        if not has_last:
            raise UserError(
                f"--resume: no interrupted run in {out} (no {run_file} and no {out / 'last'})"
            )
        return True
    if args.config is None:
        args.config = str(run_file)  # the interrupted run's settings
    record = read_run_file(run_file)
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
    return args.from_ if where.kind == "zoo" else str(where.path)  # zoo:NAME in the provenance


def _read_pairs(
    pairs: Sequence[tuple[Path, Path]],
    channel_axis: int | None,
    channels: int | None = None,
    say: bool = True,
) -> tuple[list[Any], list[Any], list[tuple[tuple[float, ...], str] | None]]:
    """Images, labels and each image file's pixel size with its unit (None: not known);
    RGB(A) images as luminance for a starting model of one input ``channels``
    (``normalization.as_model_input``)."""
    from ..normalization import as_model_input

    images, labels, sizes = [], [], []
    for image_path, label_path in pairs:
        image, size, unit = read_image_with_size(image_path)
        check_image(image, image_path)
        if channels is not None:
            image, grey = as_model_input(image, channels, channel_axis)
            if grey and say:
                _note(f"{image_path}: RGB -> grey (luminance) for this one-channel model")
        label = check_labels(read_array(label_path), image, label_path, channel_axis)
        images.append(image)
        labels.append(label)
        sizes.append((size, unit) if size and unit else None)
    return images, labels, sizes


def _at_model_scale(
    args: argparse.Namespace,
    model_config: ModelConfig,
    data_config: DataConfig,
    train: tuple[list[Any], list[Any], list[Any]],
    val: tuple[list[Any], list[Any], list[Any]],
) -> tuple[ModelConfig, tuple[list[Any], list[Any]], tuple[list[Any], list[Any]]]:
    """Resample the pairs to the model's pixel size (``scale.training_scale``); a new model
    records the images' pixel size, so that prediction later resamples to it."""
    from ..rescaled import training_shrink
    from ..scale import training_scale

    if args.pixel_size:
        unit = args.pixel_unit or model_config.pixel_unit
        if not unit:
            raise UserError("give --pixel-unit with --pixel-size (nm, um or mm)")
        given = (tuple(args.pixel_size), unit)
        train = (train[0], train[1], [given] * len(train[0]))
        val = (val[0], val[1], [given] * len(val[0]))
    dims, axis = model_config.spatial_dims, data_config.channel_axis
    shrink = training_shrink(model_config, data_config)  # as predict shrinks (smoothed if noisy)
    try:
        images, labels, size, unit, notes = training_scale(
            *train, model_config.pixel_size, model_config.pixel_unit, dims, axis, shrink
        )
        val_images, val_labels, _, _, val_notes = training_scale(
            *val, size, unit, dims, axis, shrink
        )
    except ValueError as exc:
        raise UserError(f"pixel size: {exc}") from exc
    for note in notes + [f"validation {n}" for n in val_notes]:
        _note(note)
    if size and not model_config.pixel_size:
        _note(f"the new model records the images' pixel size {size} {unit}")
    return (
        model_config.replace(pixel_size=size, pixel_unit=unit) if size else model_config,
        (images, labels),
        (val_images, val_labels),
    )
