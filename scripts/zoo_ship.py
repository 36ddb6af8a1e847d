"""Shipping a zoo run: score its best checkpoint on the held-back split, write it with its card.

Apart from ``train_zoo.py`` because it also runs on its own (``--ship-only``), on a
machine other than the one that trained, and because the card (what was trained,
how, how well, how to reproduce it) is the part of a run users read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from zoo_baseline import cached_baseline
from zoo_cards import augmentation_text, best_row, hardware, origin_text, verdict, write_docs
from zoo_data import log, scale_metadata
from zoo_specs import (
    SEED,
    THRESHOLD_GRID,
    THRESHOLD_MIN_GAIN,
    ZooSpec,
    choose_threshold,
    evaluate_model,
)

from napari_unetpp import zoo
from napari_unetpp.checkpoint import CheckpointInfo, save_checkpoint
from napari_unetpp.config import TrainConfig
from napari_unetpp.locate import WEIGHTS_NAME
from napari_unetpp.pruning import recommend_depth


def state_file(runs: Path, name: str) -> Path:
    """Where a zoo run keeps its wall time, stages and recipe (beside best/ and last/)."""
    return runs / name / "zoo_state.json"


def read_state(runs: Path, name: str) -> dict[str, Any]:
    """The run's recorded state (empty but for 0 seconds before the first write)."""
    try:
        return json.loads(state_file(runs, name).read_text())
    except (OSError, ValueError):
        return {"seconds": 0.0}


def write_state(runs: Path, name: str, state: dict[str, Any]) -> None:
    """Write the run's state atomically (a killed run never leaves half a file)."""
    path = state_file(runs, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def soup_text(state: dict[str, Any]) -> str:
    """The card's training line of a weight average (``scripts/zoo_soup.py``), else ``""``."""
    soup = state.get("soup")
    if not soup:
        return ""
    total = sum(soup["weights"])
    parts = "; and ".join(
        f"{w / total:.2f} x the model at {path} ({training.split('; reproduce with')[0]})"
        for w, path, training in zip(soup["weights"], soup["of"], soup["trainings"], strict=True)
    )
    of, name = " ".join(soup["of"]), state.get("name", "NAME")
    return (
        f"weight average (model soup, Wortsman et al. 2022) of {parts}; reproduce with "
        f"`python scripts/zoo_soup.py {name} --of {of}` then "
        f"`python scripts/train_zoo.py {name} --ship-only --runs-dir runs/soup`"
    )


def continued_args(state: dict[str, Any]) -> str:
    """The flags of a run continued from a shipped model (empty for one from scratch)."""
    start = state.get("started_from")
    if not start:
        return ""
    keep = " --keep-norm" if state.get("keep_norm") else ""
    return f" --start-from {start} --learning-rate {state.get('learning_rate')}{keep}"


def _start_provenance(run: Path) -> dict[str, Any]:
    """How the model a continued run started from was itself trained (its card's record)."""
    try:
        config = json.loads((run / "start" / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    provenance, train = config.get("provenance", {}), config.get("train", {})
    return {
        "started_from": provenance.get("started_from"),
        "iterations": provenance.get("iterations"),
        "batch_size": train.get("batch_size"),
        "patch_size": train.get("patch_size"),
        "device": provenance.get("device"),
        "hardware": provenance.get("hardware"),
        "date": provenance.get("date"),
    }


def choose_postprocess(spec: ZooSpec, model: Any, data_config: Any) -> str:
    """Set ``model.config.threshold`` to the validation split's best; the card's words for it.

    Empty (and the threshold left unset) for a model whose labels take no threshold.
    """
    if spec.validation_data is None:
        return ""
    validation = spec.validation_data()
    log(f"{spec.name}: choosing the threshold on the {len(validation)} validation items")
    threshold, scores = choose_threshold(spec, model, data_config, validation)
    model.config = model.config.replace(threshold=threshold)
    key = next(iter(spec.targets))
    log(f"{spec.name}: threshold {threshold:.2f} ({key} per threshold: {scores})")
    top = max(scores, key=lambda t: scores[t])
    how = (
        f"{scores['0.50']:.3f} at 0.50, {scores[f'{threshold:.2f}']:.3f} at {threshold:.2f}"
        if threshold != 0.5
        else f"{scores['0.50']:.3f} at 0.50, best {scores[top]:.3f} at {top}: a gain below "
        f"{THRESHOLD_MIN_GAIN} keeps 0.50"
    )
    return (
        f"labels at probability threshold {threshold:.2f} (`ModelConfig.threshold`), chosen "
        f"on the training run's validation split ({len(validation)} "
        f"{'slices' if spec.name == 'em' else 'images'}, never the held-back one) among "
        f"{THRESHOLD_GRID[0]:.2f}-{THRESHOLD_GRID[-1]:.2f} by the mean {key} over the heads "
        f"({how}); `--threshold` / `PredictConfig.threshold` overrides it"
    )


def reship(spec: ZooSpec, docs: Path) -> Path:
    """Choose the shipped model's post-processing on validation, re-score it, rewrite its card.

    For the weights already shipped (no run folder needed): the training line, the
    baseline, the provenance and the image-check calibration stay; the held-back scores,
    the recommended depth and the verdict are measured again with the chosen threshold.
    The CPU times per megapixel are the card's (same weights, same network), not
    re-measured on a machine busy with other jobs.
    """
    from napari_unetpp.checkpoint import load_checkpoint

    folder = zoo.models_dir() / spec.name
    model, info = load_checkpoint(folder, device="cpu")
    postprocess_text = choose_postprocess(spec, model, info.data)
    old = dict(info.metrics or {})
    timing = {d: row["ms_per_mpx"] for d, row in old.get("depths", {}).items()}
    log(f"{spec.name}: evaluating on the held-back split")
    table = evaluate_model(spec, model, info.data, spec.test_data(), "cpu", timing=timing)
    baseline = old["baseline"]
    best = best_row(spec, table)
    met = all(best[key] >= goal for key, goal in spec.targets.items())
    beats = best[spec.score_name] > baseline.get(spec.score_name, -1)
    metrics = {**old, "depths": table, "best_depth": recommend_depth(table, score=spec.score_name)}
    card = dict(info.card or {})
    card.update(
        postprocess=postprocess_text,
        verdict=verdict(spec, table, best, baseline, met and beats),
        to_reach_target=_to_reach(spec, met and beats),
    )
    if not postprocess_text:
        card.pop("postprocess", None)
    updated = dataclasses.replace(info, model=model.config, metrics=metrics, card=card)
    save_checkpoint(folder, model, updated, half=True)
    log(f"{spec.name}: re-shipped {folder}; {card['verdict']}")
    write_docs(docs)
    return folder


def _to_reach(spec: ZooSpec, met: bool) -> str:
    """The card's "what would reach it" line."""
    if met:
        return "already met; wider networks and longer training would still gain"
    return spec.card.get("to_reach_target") or (
        "longer GPU training with the paper's widths (32..512, beyond the "
        "10 MB limit unless pruned) and elastic augmentation; or fine-tune "
        "on your own labels in napari"
    )


def ship(spec: ZooSpec, runs: Path, docs: Path) -> Path:
    """Score the run's best checkpoint on the held-back split on CPU; ship it fp16 with its card.

    Runs where the training ran, or later on another machine (``--ship-only``):
    the held-back scores and the CPU time per megapixel do not depend on where
    the weights were trained.
    """
    from napari_unetpp.checkpoint import load_checkpoint

    model, trained = load_checkpoint(runs / spec.name / "best", device="cpu")
    model.config = model.config.replace(**scale_metadata(spec.name))
    state = read_state(runs, spec.name)
    train_config, data_config = trained.train, trained.data
    postprocess_text = choose_postprocess(spec, model, data_config)
    log(
        f"{spec.name}: evaluating on the held-back split (CPU, {torch.get_num_threads()} "
        "torch threads)"
    )
    test = spec.test_data()
    table = evaluate_model(spec, model, data_config, test, "cpu")
    baseline = cached_baseline(spec, runs / spec.name, test=test)
    best_depth = recommend_depth(table, score=spec.score_name)
    best = best_row(spec, table)
    metrics = {
        "depths": table,
        "score_name": spec.score_name,
        "best_depth": best_depth,
        "baseline": baseline,
        "validation": trained.metrics,
        "split": "held-back test split (see card)",
    }
    met = {key: best[key] >= goal for key, goal in spec.targets.items()}
    beats = best[spec.score_name] > baseline.get(spec.score_name, -1)
    widths = tuple(model.config.widths)
    stages = state.get("stages") or [train_config.iterations]
    defaults = TrainConfig(**spec.train_config)
    gpu_args = "".join(
        f" --{flag} {' '.join(map(str, value)) if isinstance(value, tuple) else value}"
        for flag, value, default in (
            ("batch-size", train_config.batch_size, defaults.batch_size),
            ("patch-size", tuple(train_config.patch_size), tuple(defaults.patch_size)),
            ("validate-every", train_config.validate_every, defaults.validate_every),
        )
        if value != default
    )
    if train_config.elastic and not defaults.elastic:
        gpu_args += " --elastic"
    reproduce = " && ".join(
        f"python scripts/train_zoo.py {spec.name} --widths {' '.join(map(str, widths))} "
        f"--iterations {n} --device {state.get('device', 'cpu')}{gpu_args}"
        + (" --resume" if k else continued_args(state))
        for k, n in enumerate(stages)
    )
    staged = (
        ""
        if len(stages) < 2
        else f" in stages ({' -> '.join(map(str, stages))} iterations; each extension "
        "resumes the optimizer and restarts the poly learning-rate decay)"
    )
    done_steps = int(trained.provenance.get("iterations", train_config.iterations))
    cut = (
        ""
        if done_steps >= train_config.iterations
        else f" (stopped by the time budget at step {done_steps})"
    )
    paper = [32, 64, 128, 256, 512]
    width_note = (
        "the paper's widths"
        if list(widths) == paper
        else f"the paper uses {paper}, 9.0M parameters, 18 MB in fp16: over the "
        "10 MB a shipped model may take"
        if widths[0] >= 16
        else f"CPU-sized; the paper uses {paper}"
    )
    card = dict(spec.card)
    card.update(
        title=zoo._CATALOGUE[spec.name][0],
        summary=zoo._CATALOGUE[spec.name][1],
        training=soup_text(state)
        or (
            f"{origin_text(state, _start_provenance(runs / spec.name))}, seed {SEED}, "
            f"{train_config.iterations} "
            f"iterations{staged}{cut}, "
            f"batch {train_config.batch_size}, patches {list(train_config.patch_size)}, "
            f"AdamW lr {train_config.learning_rate} (poly decay), CE/BCE + Dice on every "
            f"head (deep supervision), {augmentation_text(train_config)}; widths "
            f"{list(widths)} ({width_note}); best of the validation checks at step "
            f"{trained.provenance.get('best_step')}; reproduce with `{reproduce}`"
        ),
        hardware=state.get("hardware") or hardware(state.get("device", "cpu")),
        time=f"{state.get('seconds', 0.0) / 60:.0f} min of training wall time "
        "(including validation)",
        timing=f"ms_per_mpx: {hardware('cpu')}, 256x256 tiles, best of 3",
        target=", ".join(f"{key} >= {goal:.2f}" for key, goal in spec.targets.items())
        + f" at the best depth (by {spec.score_name}) on the held-back split, and above the "
        "baseline",
        verdict=verdict(spec, table, best, baseline, all(met.values()) and beats),
        to_reach_target=_to_reach(spec, all(met.values()) and beats),
        columns=spec.columns,
    )
    if postprocess_text:
        card["postprocess"] = postprocess_text
    provenance = dict(trained.provenance)
    if state.get("soup"):  # the weights are an average: the last ingredient's run is not theirs
        provenance = {"soup": {k: state["soup"][k] for k in ("of", "weights")}}
    if state.get("started_from"):  # the spec the run was given, not its private copy
        provenance["started_from"] = state["started_from"]
        provenance["continued_from"] = _start_provenance(runs / spec.name)
    provenance.update(
        data=str(card["data"]),
        held_out=str(card["split"]),
        wall_time_s=round(state.get("seconds", 0.0)),
        hardware=card["hardware"],
        script="scripts/train_zoo.py",
    )
    info = CheckpointInfo(
        model=model.config,
        data=data_config,
        train=train_config,
        metrics=metrics,
        provenance=provenance,
        card=card,
    )
    target_dir = zoo.models_dir() / spec.name
    save_checkpoint(target_dir, model, info, half=True)
    size_mb = (target_dir / WEIGHTS_NAME).stat().st_size / 1e6
    log(f"{spec.name}: shipped to {target_dir} ({size_mb:.2f} MB); {card['verdict']}")
    write_docs(docs)
    return target_dir
