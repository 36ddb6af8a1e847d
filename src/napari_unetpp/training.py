"""Training and fine-tuning as a generator of events that returns the result.

Why a generator: napari's ``thread_worker``, the CLI progress bar and the tests
all drive the same loop; a ``"step"`` event is yielded after *every* iteration,
so the GUI stays responsive and a stop request is honoured within one step.

Usage
-----
>>> trainer = Trainer(ModelConfig(widths=(8, 16, 32)), TrainConfig(iterations=200), DataConfig())
>>> result = drive(trainer.run(images, labels))          # doctest: +SKIP
>>> result.model, result.info.metrics["best_depth"]      # doctest: +SKIP

Events: ``"step"`` (loss, head losses, ETA), ``"validation"`` every
``validate_every`` steps and at the end (validation loss, IoU and Dice per
depth), ``"checkpoint"`` when a better model was saved to ``output_dir/best``,
``"done"``. ``output_dir/last`` (weights + optimizer + RNG state, no pickle) is
written at every validation and when the run stops or ends, so a run can be
resumed with ``Trainer(..., resume=True)`` and continues with identical losses.

Fine-tuning: ``initial`` is a checkpoint path or a :class:`UNetPlusPlus`;
weights are copied by name, heads whose class count differs are created anew.

Distributed: when ``torch.distributed`` is initialised (``torchrun``; see
:func:`join_torchrun`), the model is wrapped in ``DistributedDataParallel``, each
rank samples its own patches (seed + rank), every rank validates on the same data
(split from the seed alone, so all agree on "best"), and only rank 0 writes
checkpoints and emits ``"checkpoint"`` events; the checkpoint's provenance records
the ``world_size``.
BatchNorm statistics are per rank (no SyncBatchNorm).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from . import data as data_mod
from .checkpoint import CheckpointInfo, load_checkpoint, read_info, save_checkpoint
from .config import DataConfig, ModelConfig, TrainConfig
from .devices import autocast, autocast_dtype, memory_format, resolve_device
from .events import EtaClock, Event, Stopper
from .losses import DeepSupervisionLoss
from .model import UNetPlusPlus
from .nonfinite import NonFiniteError, all_finite, non_finite_names
from .pruning import depth_table, recommend_depth, score_tiles

__all__ = [
    "NO_VALIDATION",
    "TrainEvent",
    "TrainResult",
    "Trainer",
    "join_torchrun",
    "process_rank",
    "resolve_freeze_norm",
    "transfer_weights",
]

#: Files beside ``output_dir/last`` that make a run resumable (safetensors + JSON, no pickle).
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
#: Validation tiles are this many times the patch size in-plane (fewer, larger tiles).
VALIDATION_TILE_FACTOR = 2
#: At most this many validation tiles (evenly spaced) keep validation cheap on CPU.
MAX_VALIDATION_TILES = 64
#: Fewer labelled validation pixels than this, or only one class among them, give no
#: trustworthy score (a few scribbled pixels scored 1.000): then nothing is held back for
#: validation and all labels train.
MIN_VALIDATION_PIXELS = 200
#: What the run says (a "note" event, and the checkpoint's provenance) without validation.
NO_VALIDATION = "no validation: paint on more of the image (training loss shown instead)"


@dataclass
class TrainEvent(Event):
    """Progress of a training run (see the module docstring for the kinds)."""

    loss: float | None = None
    head_losses: dict[int, float] = field(default_factory=dict)
    learning_rate: float | None = None
    val_loss: float | None = None
    val_scores: dict[int, float] = field(default_factory=dict)
    val_dice: dict[int, float] = field(default_factory=dict)
    score_name: str = "iou"
    best_depth: int | None = None
    path: Path | None = None


@dataclass
class TrainResult:
    """The best model (or the current one when nothing was validated), its info, its folder."""

    model: UNetPlusPlus
    info: CheckpointInfo
    checkpoint: Path | None


# --------------------------------------------------------------------------- model setup


def transfer_weights(source: nn.Module, target: UNetPlusPlus) -> list[str]:
    """Copy weights by name where shapes agree; return the target keys left as initialised.

    Only heads may differ (a new class count means new heads); any other
    missing or mismatched weight means a different architecture: ``ValueError``.
    """
    source_state = source.state_dict()
    target_state = target.state_dict()
    fresh = [
        k
        for k, v in target_state.items()
        if k not in source_state or source_state[k].shape != v.shape
    ]
    foreign = [k for k in fresh if not k.startswith("heads.")]
    if foreign:
        raise ValueError(
            f"the initial model does not match ModelConfig {target.config.widths} depth "
            f"{target.config.depth} in_channels {target.config.in_channels} (e.g. {foreign[:3]}); "
            "fine-tune with the initial model's widths/in_channels and a depth <= its depth"
        )
    target.load_state_dict(
        {k: v for k, v in source_state.items() if k in target_state and k not in fresh},
        strict=False,
    )
    return fresh


def _load_initial(initial: str | os.PathLike[str] | nn.Module) -> tuple[nn.Module, str]:
    if isinstance(initial, nn.Module):
        return initial, "model"
    model, _ = load_checkpoint(initial, device="cpu")
    return model, str(initial)


def build_model(
    model_config: ModelConfig, initial: str | os.PathLike[str] | nn.Module | None
) -> tuple[UNetPlusPlus, str, list[str]]:
    """A fresh model, or one started from ``initial``; returns it, its origin and new heads."""
    model = UNetPlusPlus.from_config(model_config)
    if initial is None:
        return model, "scratch", []
    source, origin = _load_initial(initial)
    fresh = transfer_weights(source, model)
    return model, origin, sorted({k.split(".")[1] for k in fresh})


def _set_train_mode(model: nn.Module, freeze_encoder: bool, freeze_norm: bool = False) -> None:
    """Train mode, except frozen parts keep their BatchNorm statistics (eval).

    ``freeze_norm``: every normalisation layer keeps the statistics it was trained
    with; batches of a few scribbled patches would otherwise re-estimate them from
    unrepresentative pixels and shift every feature (the cause of fine-tunes that
    made a good model worse).
    """
    model.train()
    net = getattr(model, "module", model)
    if freeze_encoder:
        for i in range(net.depth + 1):
            net.nodes[f"x_{i}_0"].eval()
    if freeze_norm:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def resolve_freeze_norm(train_config: TrainConfig, initial: Any) -> bool:
    """``TrainConfig.freeze_norm``, with None meaning "on when starting from a model"."""
    if train_config.freeze_norm is not None:
        return bool(train_config.freeze_norm)
    return initial is not None


def _lr_at(step: int, config: TrainConfig) -> float:
    """Polynomial decay (nnU-Net): a pure function of the step, so resuming reproduces it."""
    return config.learning_rate * (1 - step / (config.iterations + 1)) ** 0.9


# --------------------------------------------------------------------------- data setup


@dataclass
class _Data:
    sampler: data_mod.PatchSampler
    val_tiles: list[tuple[np.ndarray, np.ndarray]]
    data_config: DataConfig
    description: dict[str, Any]


def _check_model_fits(
    model_config: ModelConfig, data_config: DataConfig, labels: list[Any], channels: int
) -> None:
    needed = data_mod.num_output_channels(data_config, labels)
    if model_config.num_classes != needed and not (needed == 1 and model_config.num_classes == 2):
        raise ValueError(
            f"ModelConfig.num_classes is {model_config.num_classes} but these labels need "
            f"{needed} output channel(s) (data.num_output_channels); set num_classes={needed}"
        )
    if model_config.in_channels != channels:
        raise ValueError(
            f"ModelConfig.in_channels is {model_config.in_channels} but the images have "
            f"{channels} channel(s); set in_channels={channels} or DataConfig.channel_axis"
        )


def _evenly(items: list[Any], limit: int) -> list[Any]:
    if len(items) <= limit:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def prepare_data(
    images: Any,
    labels: Any,
    val_images: Any,
    val_labels: Any,
    model_config: ModelConfig,
    train_config: TrainConfig,
    data_config: DataConfig,
    rng: np.random.Generator,
) -> _Data:
    """Resolve classes once, build volumes, split, and set up the sampler and validation tiles."""
    images, labels = data_mod._as_list(images), data_mod._as_list(labels)
    extra = data_mod._as_list(val_labels) if val_labels is not None else []
    if (val_images is None) != (val_labels is None):
        raise ValueError("give both val_images and val_labels, or neither")
    data_config = data_config.replace(
        class_values=data_mod.resolve_class_values(data_config, labels + extra)
    )
    dims = model_config.spatial_dims
    first = data_mod.to_channels_first(images[0], data_config.channel_axis)
    _check_model_fits(model_config, data_config, labels + extra, first.shape[0])
    volumes = data_mod.prepare_volumes(images, labels, data_config, dims)
    degenerate = data_mod.degenerate_labels(volumes)
    if degenerate:
        warnings.warn(degenerate, data_mod.DegenerateLabelsWarning, stacklevel=2)
    if val_images is not None:
        train, val = volumes, data_mod.prepare_volumes(val_images, val_labels, data_config, dims)
    else:
        # the split comes from the seed alone: every rank validates on the same data
        split_rng = np.random.default_rng(train_config.seed)
        train, val = data_mod.split_validation(volumes, train_config.validation_fraction, split_rng)
    tile = [
        p * (VALIDATION_TILE_FACTOR if k >= len(train_config.patch_size) - 2 else 1)
        for k, p in enumerate(train_config.patch_size)
    ]
    tiles = _evenly(data_mod.validation_tiles(val, tile, dims), MAX_VALIDATION_TILES)
    if val and val_images is None and not _can_score(tiles):
        train, val, tiles = volumes, [], []  # too few to score: every label trains
    sampler = data_mod.PatchSampler(
        train,
        train_config.patch_size,
        dims,
        train_config.foreground_fraction,
        rng,
        sparse=data_config.label_mode == "sparse",
    )
    description: dict[str, Any] = {
        "train": [v.name + f" {v.spatial}" for v in train],
        "validation": [v.name + f" {v.spatial}" for v in val] if tiles else NO_VALIDATION,
    }
    if degenerate:
        description["degenerate_labels"] = degenerate  # saved with the checkpoint
    return _Data(sampler, tiles, data_config, description)


def _can_score(tiles: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """Enough labelled validation pixels, of at least two classes, for a meaningful score."""
    labelled = [t[t != data_mod.IGNORE_INDEX] for _, t in tiles]
    count = sum(int(v.size) for v in labelled)
    classes = set().union(*(np.unique(v).tolist() for v in labelled)) if labelled else set()
    return count >= MIN_VALIDATION_PIXELS and len(classes) >= 2


# --------------------------------------------------------------------------- resumable state


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors (safetensors) plus JSON for everything else."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_resume_state(
    folder: Path,
    optimizer: torch.optim.Optimizer,
    step: int,
    rng: np.random.Generator,
    best: dict[str, Any],
) -> None:
    """Optimizer, RNG and progress beside the ``last`` checkpoint (no pickle anywhere)."""
    tensors, meta = _optimizer_to_files(optimizer)
    tensors["__torch_rng__"] = torch.get_rng_state()
    _write_atomic(folder / OPTIMIZER_FILE, lambda p: save_file(tensors, str(p)))
    state = {"step": step, "numpy_rng": rng.bit_generator.state, "best": best, "optimizer": meta}
    _write_atomic(folder / STATE_FILE, lambda p: p.write_text(json.dumps(state)))


def load_resume_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON state and the tensors written by :func:`save_resume_state`."""
    state_file, tensor_file = folder / STATE_FILE, folder / OPTIMIZER_FILE
    if not state_file.is_file() or not tensor_file.is_file():
        raise ValueError(
            f"cannot resume: {folder} has no {STATE_FILE}/{OPTIMIZER_FILE}; train without "
            "resume, or point resume at an output_dir/last folder of an earlier run"
        )
    return json.loads(state_file.read_text()), load_file(str(tensor_file))


# --------------------------------------------------------------------------- the trainer


@dataclass
class _Run:
    """Mutable state of one run (kept out of the Trainer so helpers stay small)."""

    model: nn.Module
    net: UNetPlusPlus
    optimizer: torch.optim.Optimizer
    scaler: Any
    loss_fn: DeepSupervisionLoss
    device: torch.device
    rng: np.random.Generator
    step: int = 0
    best_score: float = -math.inf
    best_scores: dict[int, dict[str, float]] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    best_step: int = 0
    eta: EtaClock = field(default_factory=EtaClock)


class Trainer:
    """Train or fine-tune a UNet++ on images and labels; see the module docstring.

    Parameters
    ----------
    model_config, train_config, data_config
        What to build, how to optimise, how to read the data.
    initial
        Checkpoint path or model to start from (fine-tuning), or None.
    output_dir
        Where ``best/`` and ``last/`` checkpoints go (None: keep in memory only).
    stopper
        A shared :class:`~napari_unetpp.events.Stopper`; ``stop()`` sets it.
    resume
        True: continue from ``output_dir/last``; a path: continue from that folder.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        data_config: DataConfig,
        *,
        initial: str | os.PathLike[str] | nn.Module | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        stopper: Stopper | None = None,
        resume: bool | str | os.PathLike[str] = False,
    ) -> None:
        self.model_config = model_config
        self.train_config = train_config
        self.data_config = data_config
        self.initial = initial
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.stopper = stopper if stopper is not None else Stopper()
        if resume is True and self.output_dir is None:
            raise ValueError("resume=True needs output_dir (the folder holding last/)")
        self.resume_from: Path | None = (
            self.output_dir / "last" if resume is True else Path(resume) if resume else None
        )
        data_mod.patch_shape_zyx(train_config.patch_size, model_config.spatial_dims)

    def stop(self) -> None:
        """Ask the run to stop after the current step; it returns the best model so far."""
        self.stopper.stop()

    # ------------------------------------------------------------------ run

    def run(
        self,
        images: Any,
        labels: Any,
        val_images: Any = None,
        val_labels: Any = None,
    ) -> Generator[TrainEvent, None, TrainResult]:
        """Train, yielding events; returns a :class:`TrainResult` (also when stopped)."""
        tc = self.train_config
        rank = process_rank()
        torch.manual_seed(tc.seed)
        rng = np.random.default_rng(tc.seed + rank)
        data = prepare_data(
            images, labels, val_images, val_labels, self.model_config, tc, self.data_config, rng
        )
        run, origin, new_heads = self._setup(rng)
        total = tc.iterations
        data.description["new_heads"] = new_heads
        if not data.val_tiles:
            yield TrainEvent("note", 0, total, NO_VALIDATION)
        while run.step < total and not self.stopper.stopped:
            loss, heads = self._train_step(run, data)
            event = self._step_event(run, loss, heads)
            if new_heads and run.step == 1:
                event.message += f" (new heads: {', '.join(new_heads)})"
            if run.step == 1 and data.description.get("degenerate_labels"):
                event.message += f" (warning: {data.description['degenerate_labels']})"
            yield event
            if self.stopper.stopped:
                break
            if data.val_tiles and (run.step % tc.validate_every == 0 or run.step == total):
                yield from self._validate(run, data)
                if self.stopper.stopped:
                    break
        result = self._finish(run, data, origin)
        yield TrainEvent(
            "done",
            run.step,
            total,
            "stopped" if self.stopper.stopped else "finished",
            best_depth=result.info.metrics.get("best_depth"),
            path=result.checkpoint,
        )
        return result

    # ------------------------------------------------------------------ setup

    def _setup(self, rng: np.random.Generator) -> tuple[_Run, str, list[str]]:
        tc = self.train_config
        device = _device(tc)
        initial = self.initial
        if self.resume_from is not None:
            initial = self.resume_from
        net, origin, new_heads = build_model(self.model_config, initial)
        if self.resume_from is not None:
            origin = _started_from(self.resume_from, origin)
        net = net.to(device, memory_format=memory_format(net.spatial_dims, device))
        if tc.freeze_encoder:
            for p in net.encoder_parameters():
                p.requires_grad_(False)
        model = _maybe_ddp(net, device)
        optimizer = torch.optim.AdamW(
            [p for p in net.parameters() if p.requires_grad],
            lr=tc.learning_rate,
            weight_decay=tc.weight_decay,
        )
        fp16 = autocast_dtype(device, tc.mixed_precision) == torch.float16  # bf16 needs no scaling
        scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        loss_fn = DeepSupervisionLoss(net.config.num_classes, dice_weight=tc.dice_weight)
        run = _Run(model, net, optimizer, scaler, loss_fn, device, rng)
        if self.resume_from is not None:
            self._restore(run)
        return run, origin, new_heads

    def _restore(self, run: _Run) -> None:
        """Continue a run: optimizer, step, RNG streams and the best so far."""
        assert self.resume_from is not None
        state, tensors = load_resume_state(self.resume_from)
        saved_step = read_info(self.resume_from).provenance.get("iterations")
        if saved_step is not None and int(saved_step) != int(state["step"]):
            raise ValueError(
                f"{self.resume_from}: weights are from step {saved_step} but the optimizer "
                f"state from step {state['step']} (an interrupted save); resume from "
                "best/ as a fine-tune (initial=...) or start again"
            )
        torch.set_rng_state(tensors.pop("__torch_rng__"))
        run.optimizer.load_state_dict(_optimizer_from_files(tensors, state["optimizer"]))
        run.rng.bit_generator.state = state["numpy_rng"]
        run.step = int(state["step"])
        best = state.get("best", {})
        score = best.get("score")
        run.best_score = -math.inf if score is None else float(score)
        run.best_scores = {int(d): v for d, v in best.get("scores", {}).items()}
        run.best_step = int(best.get("step", 0))
        best_dir = self.resume_from.parent / "best"
        if run.best_scores and (best_dir / "config.json").is_file():
            model, _ = load_checkpoint(best_dir, device="cpu")
            run.best_state = {k: v.clone() for k, v in model.state_dict().items()}

    # ------------------------------------------------------------------ steps

    def _train_step(self, run: _Run, data: _Data) -> tuple[float, dict[int, float]]:
        tc = self.train_config
        _set_train_mode(run.model, tc.freeze_encoder, resolve_freeze_norm(tc, self.initial))
        x, y = data.sampler.sample(
            tc.batch_size,
            augment_patches=tc.augment,
            options=data_mod.AugmentOptions.from_train_config(tc),
        )
        x_t = torch.from_numpy(x).to(run.device, non_blocking=True)
        x_t = x_t.contiguous(memory_format=memory_format(x_t.ndim - 2, run.device))
        y_t = torch.from_numpy(y).to(run.device, non_blocking=True)
        lr = _lr_at(run.step, tc)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        run.optimizer.zero_grad(set_to_none=True)
        with autocast(run.device, tc.mixed_precision):
            logits = run.model(x_t)
        loss, heads = run.loss_fn({d: v.float() for d, v in logits.items()}, y_t)
        _check_loss(loss, run.step + 1, lr)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.step += 1
        return float(loss.detach()), {d: float(v.detach()) for d, v in heads.items()}

    def _step_event(self, run: _Run, loss: float, heads: dict[int, float]) -> TrainEvent:
        total = self.train_config.iterations
        eta = run.eta.update(run.step, total)
        return TrainEvent(
            "step",
            run.step,
            total,
            f"loss {loss:.4f}",
            eta_s=eta,
            loss=loss,
            head_losses=heads,
            learning_rate=_lr_at(run.step - 1, self.train_config),
        )

    def _validate(self, run: _Run, data: _Data) -> Generator[TrainEvent, None, None]:
        """Score all depths; keep and save the best; save ``last`` for resuming."""
        num_classes = run.net.config.num_classes
        scores, val_loss = score_tiles(
            run.model,
            data.val_tiles,
            num_classes,
            run.device,
            foreground_only=data.data_config.target == "instance",
            loss_fn=run.loss_fn,
            batch_size=self.train_config.batch_size,
        )
        best_depth = max(scores, key=lambda d: scores[d]["iou"])
        total = self.train_config.iterations
        yield TrainEvent(
            "validation",
            run.step,
            total,
            f"val IoU {scores[best_depth]['iou']:.3f} at L{best_depth}"
            + (
                " (meaningless: the labels hold one class only)"
                if data.description.get("degenerate_labels")
                else ""
            ),
            val_loss=val_loss,
            val_scores={d: s["iou"] for d, s in scores.items()},
            val_dice={d: s["dice"] for d, s in scores.items()},
            best_depth=best_depth,
        )
        improved = scores[best_depth]["iou"] > run.best_score
        if improved:
            run.best_score = scores[best_depth]["iou"]
            run.best_scores, run.best_step = scores, run.step
            run.best_state = {k: v.detach().cpu().clone() for k, v in run.net.state_dict().items()}
        if self.output_dir is None or process_rank() != 0:
            return
        if improved:
            path = self._save(run.net, data, run, "best", scores)
            yield TrainEvent(
                "checkpoint",
                run.step,
                total,
                f"best model saved to {path}",
                path=path,
                best_depth=best_depth,
            )
        self._save_last(run, data)

    # ------------------------------------------------------------------ saving

    def _info(
        self, data: _Data, run: _Run, metrics: dict[str, Any], origin: str = ""
    ) -> CheckpointInfo:
        provenance = {
            "data": data.description,
            "started_from": origin or _origin(self.initial),
            "iterations": run.step,
            "best_step": run.best_step,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seed": self.train_config.seed,
            "device": str(run.device),
            "world_size": _world_size(),
            "stopped_early": bool(self.stopper.stopped and run.step < self.train_config.iterations),
        }
        return CheckpointInfo(
            model=run.net.config,
            data=data.data_config,
            train=self.train_config,
            metrics=metrics,
            provenance=provenance,
            card={},
            version=__version__,
        )

    def _save(
        self,
        net: UNetPlusPlus,
        data: _Data,
        run: _Run,
        name: str,
        scores: dict[int, dict[str, float]] | None,
        metrics: dict | None = None,
        extra: Callable[[Path], None] | None = None,
    ) -> Path:
        assert self.output_dir is not None
        if metrics is None:
            metrics = {
                "depths": {str(d): dict(s) for d, s in (scores or {}).items()},
                "score_name": "iou",
            }
        _check_weights(net, name)
        path = save_checkpoint(
            self.output_dir / name, net, self._info(data, run, metrics), extra=extra
        )
        return Path(path)

    def _save_last(self, run: _Run, data: _Data) -> None:
        """Weights and resume state in one atomic rename: a kill never leaves a mix."""
        best = {
            "score": None if run.best_score == -math.inf else run.best_score,
            "scores": {str(d): s for d, s in run.best_scores.items()},
            "step": run.best_step,
        }
        self._save(
            run.net,
            data,
            run,
            "last",
            run.best_scores,
            extra=lambda folder: save_resume_state(folder, run.optimizer, run.step, run.rng, best),
        )

    def _finish(self, run: _Run, data: _Data, origin: str) -> TrainResult:
        """Best model, per-depth table (scores, parameters, measured ms/Mpx), final saves."""
        if self.output_dir is not None and process_rank() == 0:
            self._save_last(run, data)
        best = UNetPlusPlus.from_config(run.net.config)
        best.load_state_dict(run.best_state or run.net.state_dict())
        best = best.to(run.device).eval()
        table = depth_table(best, run.best_scores or None, None, run.device)
        metrics = {
            "depths": {str(d): row for d, row in table.items()},
            "score_name": "iou",
            "best_depth": recommend_depth(table),
        }
        if data.description.get("degenerate_labels"):
            metrics["warning"] = data.description["degenerate_labels"]
        info = self._info(data, run, metrics, origin)
        checkpoint = None
        if self.output_dir is not None and process_rank() == 0:
            _check_weights(best, "best")
            checkpoint = Path(save_checkpoint(self.output_dir / "best", best, info))
        return TrainResult(best.cpu(), info, checkpoint)


# --------------------------------------------------------------------------- small helpers


def _check_loss(loss: torch.Tensor, step: int, lr: float) -> None:
    """Stop a diverged run before its NaN gradients reach the weights."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteError(
            f"training diverged at step {step}: the loss is {value} (learning rate {lr:g}); "
            "lower the learning rate (--lr, TrainConfig.learning_rate; 1e-3 is the usual) or "
            "check the images for extreme values. Checkpoints saved before (best/, last/) "
            "keep the last finite weights"
        )


def _check_weights(net: nn.Module, name: str) -> None:
    """Never write NaN or infinite weights as ``best/`` or ``last/``."""
    state = net.state_dict()
    if not all_finite(state):
        bad = non_finite_names(state)
        raise NonFiniteError(
            f"refusing to save {name}/: {len(bad)} weight tensor(s) are NaN or infinite "
            f"(e.g. {bad[0]}): the run diverged; lower the learning rate and train again"
        )


def join_torchrun(device: str | torch.device = "auto") -> Callable[[], None]:
    """Join torchrun's process group when torchrun started this process; returns the cleanup.

    ``napari-unetpp train`` calls it so that ``torchrun --nproc_per_node N -m
    napari_unetpp.cli train ...`` trains one model with DistributedDataParallel. Outside
    torchrun (no ``WORLD_SIZE`` > 1 with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``), or when a
    group already exists (the caller owns it), nothing happens and the cleanup does nothing.
    Backend: NCCL on CUDA (each rank on GPU ``LOCAL_RANK``), gloo otherwise.
    """
    env = os.environ
    dist = torch.distributed
    launched = int(env.get("WORLD_SIZE", "1")) > 1 and all(
        key in env for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR")
    )
    if not launched or not dist.is_available() or dist.is_initialized():
        return lambda: None
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(env["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.destroy_process_group


def process_rank() -> int:
    """This process's rank under torch.distributed (0 when not distributed): 0 alone writes."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _device(tc: TrainConfig) -> torch.device:
    device = resolve_device(tc.device)
    dist = torch.distributed
    if device.type == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per rank
    return device


def _maybe_ddp(net: UNetPlusPlus, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel under torchrun; the plain model otherwise."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)


def _origin(initial: Any) -> str:
    if initial is None:
        return "scratch"
    return "model" if isinstance(initial, nn.Module) else str(initial)


def _started_from(resume_from: Path, fallback: str) -> str:
    try:
        info_file = resume_from / "config.json"
        provenance = json.loads(info_file.read_text()).get("provenance", {})
        return str(provenance.get("started_from", fallback))
    except (OSError, ValueError):
        return fallback
