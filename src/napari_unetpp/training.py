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
:func:`ddp.join_torchrun`), the model is wrapped in ``DistributedDataParallel``, each
rank samples its own patches (seed + rank), every rank validates on the same data
(split from the seed alone, so all agree on "best"), and only rank 0 writes
checkpoints and emits ``"checkpoint"`` events; the checkpoint's provenance records
the ``world_size``.
BatchNorm statistics are per rank (no SyncBatchNorm).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .augmentation import AugmentOptions
from .checkpoint import CheckpointInfo, load_checkpoint, read_info, save_checkpoint
from .config import DataConfig, ModelConfig, TrainConfig
from .ddp import gather_json, join_torchrun, process_rank, rank_device, world_size, wrap_ddp
from .devices import autocast, autocast_dtype, memory_format, mixed_precision_on, place_model
from .events import EtaClock, Event, Stopper
from .finetune import (
    build_model,
    inherited_card,
    inherited_references,
    preservation_teacher,
    resolve_freeze_norm,
    set_train_mode,
    starting_depth,
)
from .losses import DeepSupervisionLoss, preservation_loss
from .model import UNetPlusPlus
from .nonfinite import check_loss, check_weights
from .patches import patch_shape_zyx
from .pruning import depth_table, recommend_depth, score_tiles
from .resume import (
    load_resume_state,
    optimizer_from_files,
    rank_rng_state,
    save_resume_state,
    started_from,
)
from .train_data import NO_VALIDATION, TrainData, prepare_data

__all__ = ["NO_VALIDATION", "TrainEvent", "TrainResult", "Trainer", "join_torchrun"]


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


def _lr_at(step: int, config: TrainConfig) -> float:
    """Polynomial decay (nnU-Net): a pure function of the step, so resuming reproduces it."""
    return config.learning_rate * (1 - step / (config.iterations + 1)) ** 0.9


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
    #: the starting network and the weight of keeping its predictions (fine-tuning)
    teacher: UNetPlusPlus | None = None
    preserve_weight: float = 0.0
    #: where the weights first came from (a resumed run's too): every save records it
    origin: str = "scratch"
    #: BatchNorm statistics kept (a fine-tune's default, resumed or not)
    freeze_norm: bool = False
    #: the starting model's licence and citations (``finetune.inherited_card``)
    card: dict[str, Any] = field(default_factory=dict)


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
        self.resume_from: Path | None = Path(resume) if resume and resume is not True else None
        if resume is True:
            if self.output_dir is None:
                raise ValueError("resume=True needs output_dir (the folder holding last/)")
            self.resume_from = self.output_dir / "last"
        patch_shape_zyx(train_config.patch_size, model_config.spatial_dims)

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
            images,
            labels,
            val_images,
            val_labels,
            self.model_config,
            tc,
            self.data_config,
            rng,
            fine_tune=self._fine_tune(),
        )
        run, new_heads = self._setup(rng)
        if run.teacher is not None and run.preserve_weight > 0:  # keep it on every slice
            data.sampler.anywhere = 1
        total = tc.iterations
        data.description["new_heads"] = new_heads
        if data.patch_size != tuple(tc.patch_size):
            asked, used = (" x ".join(map(str, p)) for p in (tc.patch_size, data.patch_size))
            yield TrainEvent(
                "note",
                0,
                total,
                f"patch {asked} is larger than the images: training on {used} patches",
            )
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
        references = inherited_references(
            self.initial, run.net.config, data.data_config, images, labels
        )
        result = self._finish(run, data, references)
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

    def _fine_tune(self) -> bool:
        """Whether the run starts from a model (a resumed run: whether its first start did)."""
        if self.resume_from is not None and self.initial is None:
            return started_from(self.resume_from, "scratch") != "scratch"
        return self.initial is not None

    def _setup(self, rng: np.random.Generator) -> tuple[_Run, list[str]]:
        """The model, optimizer and run state (a fine-tune's frozen start too)."""
        tc = self.train_config
        device = rank_device(tc.device)
        initial = self.initial
        if self.resume_from is not None:
            initial = self.resume_from
        net, origin, new_heads = build_model(self.model_config, initial)
        if self.resume_from is not None:
            origin = started_from(self.resume_from, origin)
        net = place_model(net, device)
        dense = self.data_config.label_mode == "dense"  # the term then holds every pixel
        teacher, preserve = preservation_teacher(
            net, self.model_config, tc, self.initial, self.resume_from, new_heads, dense
        )
        if tc.freeze_encoder:
            for p in net.encoder_parameters():
                p.requires_grad_(False)
        model = wrap_ddp(net, device)
        optimizer = torch.optim.AdamW(
            [p for p in net.parameters() if p.requires_grad],
            lr=tc.learning_rate,
            weight_decay=tc.weight_decay,
        )
        mixed = mixed_precision_on(device, tc.mixed_precision, net.config.spatial_dims)
        fp16 = autocast_dtype(device, mixed) == torch.float16  # bf16 needs no scaling
        scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        loss_fn = DeepSupervisionLoss(net.config.num_classes, dice_weight=tc.dice_weight)
        run = _Run(model, net, optimizer, scaler, loss_fn, device, rng)
        run.teacher, run.preserve_weight, run.origin = teacher, preserve, origin
        run.freeze_norm = resolve_freeze_norm(tc, None if origin == "scratch" else origin)
        run.card = inherited_card(initial)
        if self.resume_from is not None:
            self._restore(run)
        return run, new_heads

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
        run.optimizer.load_state_dict(optimizer_from_files(tensors, state["optimizer"]))
        own = rank_rng_state(state, process_rank())
        if own is not None:
            run.rng.bit_generator.state = own
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

    def _train_step(self, run: _Run, data: TrainData) -> tuple[float, dict[int, float]]:
        tc = self.train_config
        set_train_mode(run.model, tc.freeze_encoder, run.freeze_norm)
        x, y = data.sampler.sample(
            tc.batch_size,
            augment_patches=tc.augment,
            options=AugmentOptions.from_train_config(tc),
        )
        x_t = torch.from_numpy(x).to(run.device, non_blocking=True)
        x_t = x_t.contiguous(memory_format=memory_format(x_t.ndim - 2, run.device))
        y_t = torch.from_numpy(y).to(run.device, non_blocking=True)
        lr = _lr_at(run.step, tc)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        run.optimizer.zero_grad(set_to_none=True)
        mixed = mixed_precision_on(run.device, tc.mixed_precision, run.net.config.spatial_dims)
        with autocast(run.device, mixed):
            logits = run.model(x_t)
        loss, heads = run.loss_fn({d: v.float() for d, v in logits.items()}, y_t)
        if run.teacher is not None:
            with torch.no_grad(), autocast(run.device, mixed):
                kept = run.teacher(x_t)
            dense = self.data_config.label_mode == "dense"
            loss = loss + run.preserve_weight * preservation_loss(logits, kept, y_t, dense)
        check_loss(loss, run.step + 1, lr)
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

    def _validate(self, run: _Run, data: TrainData) -> Generator[TrainEvent, None, None]:
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
            + (" (meaningless: the labels hold one class only)" if data.one_class else ""),
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
        rank_rngs = gather_json(run.rng.bit_generator.state)  # every rank, before rank 0 saves
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
        self._save_last(run, data, rank_rngs)

    # ------------------------------------------------------------------ saving

    def _info(self, data: TrainData, run: _Run, metrics: dict[str, Any]) -> CheckpointInfo:
        provenance = {
            "data": data.description,
            "started_from": run.origin,
            "iterations": run.step,
            "best_step": run.best_step,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seed": self.train_config.seed,
            "device": str(run.device),
            "world_size": world_size(),
            "stopped_early": bool(self.stopper.stopped and run.step < self.train_config.iterations),
        }
        return CheckpointInfo(
            model=run.net.config,
            data=data.data_config,
            train=self.train_config,
            metrics=metrics,
            provenance=provenance,
            card={**run.card, **self._card(data, run)},
            version=__version__,
        )

    def _card(self, data: TrainData, run: _Run) -> dict[str, str]:
        """What this run trained on and how, in the model card's words (its scores are
        on the validation part of these labels, never held-back data)."""
        tc, dc, described = self.train_config, data.data_config, data.description
        validation = described.get("validation") or NO_VALIDATION
        held = f"none ({NO_VALIDATION})" if validation == NO_VALIDATION else ", ".join(validation)
        start = "from scratch" if run.origin == "scratch" else f"fine-tuned from {run.origin}"
        return {
            "data": f"{dc.label_mode} labels ({dc.target}) on {', '.join(described['train'])}; "
            f"validated on {held}",
            "training": f"{start}: {run.step} of {tc.iterations} iterations, batch "
            f"{tc.batch_size}, patches {list(data.patch_size or tc.patch_size)}, learning rate "
            f"{tc.learning_rate:g}, seed {tc.seed}, on {run.device}",
        }

    def _save(
        self,
        net: UNetPlusPlus,
        data: TrainData,
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
        check_weights(net, name)
        path = save_checkpoint(
            self.output_dir / name, net, self._info(data, run, metrics), extra=extra
        )
        return Path(path)

    def _save_last(
        self, run: _Run, data: TrainData, rank_rngs: list[dict[str, Any]] | None = None
    ) -> None:
        """Weights and resume state in one atomic rename: a kill never leaves a mix.

        ``rank_rngs``: every rank's RNG state under DDP (gathered by all ranks)."""
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
            extra=lambda folder: save_resume_state(
                folder, run.optimizer, run.step, run.rng, best, rank_rngs
            ),
        )

    def _finish(
        self, run: _Run, data: TrainData, references: dict[str, float] | None = None
    ) -> TrainResult:
        """Best model, per-depth table (scores, parameters, measured ms/Mpx), final saves;
        ``references``: the start's intensity references (``finetune.inherited_references``)."""
        rank_rngs = gather_json(run.rng.bit_generator.state)
        if self.output_dir is not None and process_rank() == 0:
            self._save_last(run, data, rank_rngs)
        best = UNetPlusPlus.from_config(run.net.config)
        best.load_state_dict(run.best_state or run.net.state_dict())
        best = best.to(run.device).eval()
        table = depth_table(best, run.best_scores or None, None, run.device)
        depth = recommend_depth(table)
        if not data.description.get("new_heads"):  # its heads carry the start's knowledge
            depth = max(depth, min(starting_depth(run.origin) or 0, run.net.config.depth))
        metrics = {
            "depths": {str(d): row for d, row in table.items()},
            "score_name": "iou",
            "best_depth": depth,
        }
        if data.description.get("degenerate_labels"):
            metrics["warning"] = data.description["degenerate_labels"]
        if data.val_tiles:  # this model's own "like the training data" (predict's check)
            from .image_check import calibrate_on_tiles

            metrics["image_check"] = calibrate_on_tiles(
                best, data.val_tiles, data.data_config, run.device
            )
        if references:
            calibrated = metrics.get("image_check")
            limits = dict(calibrated) if isinstance(calibrated, dict) else {}
            metrics["image_check"] = {**limits, **references}
        info = self._info(data, run, metrics)
        checkpoint = None
        if self.output_dir is not None and process_rank() == 0:
            check_weights(best, "best")
            checkpoint = Path(save_checkpoint(self.output_dir / "best", best, info))
        return TrainResult(best.cpu(), info, checkpoint)
