"""Retrain the shipped zoo models (nuclei, EM, CT) from /work/shared/data, reproducibly.

Why a script: the weights inside the package must be reproducible by anyone
from the public data, with fixed seeds, and their cards must say honestly what
they achieve on data they never saw, next to a classical baseline (a random
forest pixel classifier on multiscale features, as in ilastik / napari-apoc).

    python scripts/train_zoo.py em                      # train, evaluate, ship
    python scripts/train_zoo.py all --resume            # continue interrupted runs
    python scripts/train_zoo.py nuclei --widths 16 32 64 128 256 --iterations 4000 --device cuda

Run files go to ``runs/zoo/<name>/`` (the trainer's ``best/`` and ``last/``
checkpoints, ``last/`` holding optimizer + RNG state, so ``--resume`` continues
exactly; ``zoo_state.json`` accumulates wall time; ``baseline.json`` caches the
baseline). When training ends the best model is scored per depth on the
held-back split, written in float16 to ``src/napari_unetpp/models/<name>/``
with its card, and ``docs/models.md`` is regenerated from all shipped cards.

A resumed run keeps its recorded widths and iterations; ``--resume --iterations N``
with a larger N extends a finished run (the card records the stages). To try an
extension without touching the package, train in a copy of the run folder:
``--runs-dir runs/zoo_next --models-dir runs/zoo_next/models --docs runs/zoo_next/models.md``,
then copy the model folder into the package if its validation score is better
and run ``--docs-only``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # its zoo_* modules lie beside it (run as a script or loaded by path)
    sys.path.insert(0, HERE)
from zoo_baseline import cached_baseline  # noqa: E402
from zoo_cards import (  # noqa: E402
    hardware,
    write_docs,
)
from zoo_data import ROOT, log  # noqa: E402
from zoo_ship import read_state, reship, ship, write_state  # noqa: E402
from zoo_specs import CPU_WIDTHS, SEED, ZooSpec, specs  # noqa: E402

from napari_unetpp import zoo  # noqa: E402
from napari_unetpp.config import ModelConfig, TrainConfig  # noqa: E402
from napari_unetpp.events import drive  # noqa: E402
from napari_unetpp.locate import CONFIG_NAME, locate  # noqa: E402
from napari_unetpp.training import Trainer, TrainEvent  # noqa: E402

RUNS = ROOT / "runs" / "zoo"
DOCS = ROOT / "docs" / "models.md"


# --------------------------------------------------------------------------- run


def _read_state(name: str) -> dict[str, Any]:
    return read_state(RUNS, name)


def _write_state(name: str, state: dict[str, Any]) -> None:
    write_state(RUNS, name, state)


def calibrate_iterations(
    spec: ZooSpec,
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: tuple[list, list, list, list],
    budget_s: float,
) -> int:
    """Iterations that fit ``budget_s`` of training, from a short timed probe run.

    Why: a lent GPU comes for minutes, and its speed (shared by the other zoo runs)
    is unknown beforehand; the poly learning-rate schedule needs the final count
    up front, so it is measured, not guessed. The probe includes one validation.
    """
    probe_steps, warmup = 40, 10
    probe = train_config.replace(iterations=probe_steps, validate_every=probe_steps)
    trainer = Trainer(model_config, probe, spec.data_config)
    marks: dict[str, float] = {}

    def on_event(event: TrainEvent) -> None:
        now = time.perf_counter()
        if event.kind == "step" and event.step in (warmup, probe_steps):
            marks[f"step{event.step}"] = now
        elif event.kind == "validation":
            marks["validation"] = now

    drive(trainer.run(*data), on_event)
    per_step = (marks[f"step{probe_steps}"] - marks[f"step{warmup}"]) / (probe_steps - warmup)
    per_validation = (
        marks.get("validation", marks[f"step{probe_steps}"]) - marks[f"step{probe_steps}"]
    )
    every = train_config.validate_every
    iterations = int(budget_s / (per_step + per_validation / every)) // every * every
    log(
        f"{spec.name}: {per_step * 1000:.0f} ms/step, {per_validation:.1f} s/validation "
        f"-> {max(iterations, every)} iterations fit {budget_s / 60:.1f} min"
    )
    return max(iterations, every)


def _starting_model(name: str, start_from: str | None, out: Path) -> Path | None:
    """A private copy of the model a run continues from (``--start-from``), or None.

    Why a copy: shipping overwrites the package's model, and a resumed or
    reproduced run must still find the weights it started from.
    """
    if not start_from:
        return None
    import shutil

    start = out / "start"
    if not (start / CONFIG_NAME).is_file():
        source = locate(start_from).path
        if not source.is_dir():
            raise SystemExit(f"--start-from {start_from}: give a checkpoint folder")
        start.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, start)
        log(f"{name}: starting from {start_from} (copied to {start})")
    return start


def train_one(spec: ZooSpec, args: argparse.Namespace) -> None:
    """Train (or resume) one model into ``runs/zoo/<name>/`` (``best/`` and ``last/``)."""
    out = RUNS / spec.name
    last = out / "last"
    resume = (last / CONFIG_NAME).is_file()
    if resume and not args.resume:
        raise SystemExit(
            f"{last} exists: pass --resume to continue it, or delete {out} to start again"
        )
    state = _read_state(spec.name)
    # a resumed run keeps its widths, batch, patches and iterations (the LR schedule needs them)
    recorded = state if resume else {}
    widths = tuple(args.widths or recorded.get("widths") or CPU_WIDTHS)
    tc_kwargs = dict(spec.train_config, device=args.device, seed=SEED, mixed_precision=True)
    if args.learning_rate or recorded.get("learning_rate"):
        tc_kwargs["learning_rate"] = args.learning_rate or recorded["learning_rate"]
    if args.start_from or recorded.get("started_from"):
        # continued training: the norms' statistics are re-estimated unless --keep-norm
        # (batches of 4 augmented patches give noisier statistics than the first training's)
        tc_kwargs["freeze_norm"] = bool(args.keep_norm or recorded.get("keep_norm"))
        tc_kwargs["preserve_weight"] = 0.0  # dense labels everywhere: nothing to preserve
    if args.batch_size or recorded.get("batch_size"):
        tc_kwargs["batch_size"] = args.batch_size or recorded["batch_size"]
    if args.patch_size or recorded.get("patch_size"):
        tc_kwargs["patch_size"] = tuple(args.patch_size or recorded["patch_size"])
    if args.validate_every or recorded.get("validate_every"):
        tc_kwargs["validate_every"] = args.validate_every or recorded["validate_every"]
    if args.iterations or recorded.get("iterations"):
        tc_kwargs["iterations"] = args.iterations or recorded["iterations"]
    if args.augment_noise is not None or recorded.get("augment_noise") is not None:
        noise = args.augment_noise if args.augment_noise is not None else recorded["augment_noise"]
        tc_kwargs["augment_noise"] = noise
    if args.elastic or recorded.get("elastic"):
        tc_kwargs["elastic"] = True
    train_config = TrainConfig(**tc_kwargs)
    model_config = spec.model_config(widths)
    log(f"{spec.name}: loading data")
    data = spec.train_data()
    if args.time_budget and not resume:
        train_config = train_config.replace(
            iterations=calibrate_iterations(
                spec, model_config, train_config, data, args.time_budget * 60
            )
        )
    initial = _starting_model(spec.name, args.start_from, out) if not resume else None
    if initial is not None:
        state["started_from"] = args.start_from
    trainer = Trainer(
        model_config,
        train_config,
        spec.data_config,
        output_dir=out,
        resume=resume,
        initial=initial,
    )
    stages = list(state.get("stages") or ([state["iterations"]] if "iterations" in state else []))
    if not stages or stages[-1] != train_config.iterations:
        stages.append(train_config.iterations)  # an extension restarts the poly schedule
    state.update(
        widths=list(widths),
        iterations=train_config.iterations,
        device=args.device,
        stages=stages,
        batch_size=train_config.batch_size,
        validate_every=train_config.validate_every,
        patch_size=list(train_config.patch_size),
        hardware=hardware(args.device),
        learning_rate=train_config.learning_rate,
        keep_norm=bool(train_config.freeze_norm),
        augment_noise=train_config.augment_noise,
        elastic=bool(train_config.elastic),
    )
    clock = [time.perf_counter()]
    deadline = time.perf_counter() + args.time_budget * 60 * 1.15 if args.time_budget else None

    def on_event(event: TrainEvent) -> None:
        if deadline is not None and time.perf_counter() > deadline:
            trainer.stop()  # the budget's hard edge: keep the best model so far
        if event.kind == "validation":
            now = time.perf_counter()
            state["seconds"] = state.get("seconds", 0.0) + now - clock[0]
            clock[0] = now
            state["step"] = event.step
            _write_state(spec.name, state)
            scores = " ".join(f"L{d} {s:.3f}" for d, s in sorted(event.val_scores.items()))
            log(
                f"{spec.name} step {event.step}/{event.total} val loss "
                f"{event.val_loss:.4f} IoU {scores}"
            )
        elif event.kind == "step" and event.step % 25 == 0:
            eta = f", eta {event.eta_s / 60:.0f} min" if event.eta_s else ""
            log(f"{spec.name} step {event.step}/{event.total} loss {event.loss:.4f}{eta}")
        elif event.kind == "done":
            log(f"{spec.name} training {event.message} at step {event.step}")

    log(
        f"{spec.name}: {'resuming' if resume else 'training'} widths {widths}, "
        f"{train_config.iterations} iterations, batch {train_config.batch_size}, patches "
        f"{train_config.patch_size} on {args.device}"
    )
    result = drive(trainer.run(*data), on_event)
    state["seconds"] = state.get("seconds", 0.0) + time.perf_counter() - clock[0]
    state["step"] = int(result.info.provenance.get("iterations", 0))
    _write_state(spec.name, state)
    if state["step"] < train_config.iterations and deadline is None:
        raise SystemExit(f"{spec.name}: stopped before the end; rerun with --resume")


def main(argv: list[str] | None = None) -> int:
    """Command line: which models, widths, iterations, resume, device."""
    global RUNS, DOCS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", choices=[*zoo.known_models(), "all"])
    parser.add_argument(
        "--widths",
        type=int,
        nargs=5,
        default=None,
        help=f"feature widths per level (default {CPU_WIDTHS}, CPU-sized)",
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="training iterations (default: per model)"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MIN",
        help="fit the iterations to MIN minutes of training (timed probe), "
        "and stop at 1.15x MIN whatever happens",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: per model")
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs="+",
        default=None,
        help="training patch (Y X), default: per model",
    )
    parser.add_argument("--validate-every", type=int, default=None, help="default: per model")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: per model")
    parser.add_argument(
        "--augment-noise",
        type=float,
        default=None,
        metavar="SD",
        help="largest added noise sd (normalised units; default: per model, 0.05); the CT "
        "noise study used 0.15 (60 HU), docs/benchmarks.md",
    )
    parser.add_argument(
        "--elastic",
        action="store_true",
        help="elastic deformation of the training patches (TrainConfig.elastic; the U-Net "
        "recipe for ISBI EM)",
    )
    parser.add_argument(
        "--keep-norm",
        action="store_true",
        help="with --start-from: keep the starting model's normalisation statistics",
    )
    parser.add_argument(
        "--start-from",
        default=None,
        metavar="MODEL",
        help="continue training from this checkpoint folder, run folder or zoo:NAME "
        "(e.g. src/napari_unetpp/models/em) "
        "instead of from scratch; "
        "normalisation statistics are trained too",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue runs/zoo/<name>/last if it exists"
    )
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--runs-dir", type=Path, default=RUNS, help="where run folders go (default runs/zoo)"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="where shipped models go (default: the package's models folder)",
    )
    parser.add_argument("--docs", type=Path, default=DOCS, help="model cards file to regenerate")
    parser.add_argument(
        "--baseline-only",
        action="store_true",
        help="only compute (and cache) the random-forest baselines",
    )
    parser.add_argument(
        "--docs-only",
        action="store_true",
        help="only regenerate docs/models.md from the shipped cards",
    )
    parser.add_argument(
        "--no-ship",
        action="store_true",
        help="train only (e.g. on a lent GPU); ship later with --ship-only",
    )
    parser.add_argument(
        "--reship",
        action="store_true",
        help="the shipped model as it is: choose its threshold on the validation split, "
        "score it on the held-back split, rewrite its card (no run folder needed)",
    )
    parser.add_argument(
        "--ship-only",
        action="store_true",
        help="score runs/zoo/<name>/best on the held-back split and ship it",
    )
    args = parser.parse_args(argv)
    RUNS, DOCS = args.runs_dir, args.docs
    if args.models_dir is not None:
        os.environ["NAPARI_UNETPP_ZOO"] = str(args.models_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.docs_only:
        write_docs(DOCS)
        return 0
    names = ["em", "nuclei", "ct"] if "all" in args.models else args.models
    all_specs = specs()
    for name in names:
        if args.baseline_only:
            cached_baseline(all_specs[name], RUNS / name)
            continue
        if args.reship:
            reship(all_specs[name], DOCS)
            continue
        if not args.ship_only:
            train_one(all_specs[name], args)
        if not args.no_ship:
            ship(all_specs[name], RUNS, DOCS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
