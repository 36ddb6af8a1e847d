"""Starting a run from a model: weights copied by name, new heads, frozen parts.

Why apart from the trainer: the CLI and tests build the same model the trainer
will train (``build_model``), and fine-tuning policy (what stays frozen) is one
decision made in one place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .checkpoint import load_checkpoint
from .config import DataConfig, ModelConfig, TrainConfig
from .locate import is_zoo
from .model import UNetPlusPlus, unwrap_model

__all__ = [
    "build_model",
    "class_mapping",
    "frozen_copy",
    "inherited_card",
    "inherited_references",
    "origin_of",
    "preservation_teacher",
    "resolve_freeze_norm",
    "resolve_preserve_weight",
    "set_train_mode",
    "starting_depth",
    "transfer_weights",
]


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
    if is_zoo(str(initial)):  # a resumed fine-tune of a shipped model names it zoo:NAME
        from .files import load_model

        return load_model(str(initial), device="cpu")[0], str(initial)
    model, _ = load_checkpoint(initial, device="cpu")
    return model, origin_of(initial)


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


#: What a model made from another keeps of its card: the terms its weights come under.
INHERITED_CARD_KEYS = ("licence", "license", "spdx", "citation", "cite", "authors")


def inherited_card(initial: Any) -> dict[str, Any]:
    """The starting model's licence and citations, for the new model's card.

    Why: a fine-tune derives from its start's weights (the shipped EM model's are for
    non-commercial use only); with an empty card a bioimage.io export called them
    CC-BY-4.0. What it was trained and scored on is the new run's, not inherited.
    """
    from .checkpoint import read_info
    from .locate import locate

    if initial is None or isinstance(initial, nn.Module):
        return {}
    try:
        card = read_info(locate(str(initial)).path).card
    except (OSError, ValueError):
        return {}
    return {k: card[k] for k in INHERITED_CARD_KEYS if card.get(k)}


def inherited_references(
    initial: Any,
    model_config: ModelConfig,
    data_config: DataConfig,
    images: Any,
    labels: Any,
) -> dict[str, float]:
    """The starting model's intensity references (``metrics["image_check"]``'s
    ``intensity_<class>`` medians and ``intensity_shift`` limit) for the fine-tuned model's
    card, the classes painted in this fine-tune's ``labels`` re-measured on ``images``.

    Why: a fine-tune's card is calibrated on its own validation tiles, which gave the depth
    signals only: a CT model fine-tuned from ``zoo:ct`` lost its organs' training medians, so
    its check could no longer tell a contrast-enhanced or shifted scan. Only a start with
    references, read through the same intensity window and class names, passes them on;
    an organ painted here reads as this scan does (a fine-tune on a contrast phase has
    learned its brightness), the others keep the start's.
    """
    from .checkpoint import read_info
    from .image_check import calibrate_intensity
    from .labels import labels_to_targets
    from .locate import locate

    if initial is None or isinstance(initial, nn.Module) or data_config.target != "semantic":
        return {}
    try:
        start = read_info(locate(str(initial)).path)
    except (OSError, ValueError):
        return {}
    if start.data.normalization != data_config.normalization:
        return {}
    names = list(model_config.class_names)
    kept = {
        key: float(value)
        for key, value in (start.metrics.get("image_check") or {}).items()
        if key == "intensity_shift"
        or (key.startswith("intensity_") and key[len("intensity_") :] in names)
    }
    if "intensity_shift" not in kept or len(kept) < 2:
        return {}
    pairs = list(zip(images, labels, strict=True)) if isinstance(images, list) else []
    pairs = [(np.asarray(i), t) for i, t in pairs or [(images, labels)]]
    pairs = [(i, t) for i, t in pairs if i.shape == np.shape(t)]  # no channel axis: CT
    dims = model_config.spatial_dims
    targets = [labels_to_targets(t, data_config, spatial_dims=dims) for _, t in pairs]
    painted = calibrate_intensity([i for i, _ in pairs], targets, names)
    painted.pop("intensity_shift", None)
    return {**kept, **painted}


def kept_class_values(
    labels: list[Any], start: ModelConfig, data_config: DataConfig
) -> tuple[int, ...]:
    """The starting model's class values (sparse: 2..N) when a fine-tune's scribbles name only
    some of its classes (or none: background strokes against false positives), else ().

    Why: class values were counted, not read: a radiologist's liver strokes (value 2, the
    CT model's liver) made a 2-output model, so the model's heads were replaced by untrained
    ones and every other organ was lost (spleen, kidneys, stomach Dice 0.7-0.8 -> 0, liver
    0.89 -> 0.66 on unseen slices). Sparse only: unpainted pixels say nothing, so the
    classes no stroke names are kept (``preserve_weight`` holds them); dense labels claim
    every pixel, and a dense 0/1 mask may well mean a new binary task.
    """
    from .labels import resolve_class_values

    if (
        data_config.class_values
        or data_config.target != "semantic"
        or data_config.label_mode != "sparse"
        or start.num_classes < 2
    ):
        return ()
    model_values = tuple(range(2, start.num_classes + 1))
    try:
        values = resolve_class_values(data_config, labels)
    except ValueError:  # background strokes only
        values = ()
    return model_values if set(values) <= set(model_values) else ()


def class_mapping(
    labels: list[Any], start: ModelConfig, data_config: DataConfig, classes: int
) -> tuple[str | None, str | None]:
    """A fine-tune from ``start``: a warning when the labels' ``classes`` outputs replace its
    heads by untrained ones, else which label value trains which of its named classes.

    Why: label values are taken in sorted order as classes 1..K; another tool's ids
    (TotalSegmentator's, where 1 is the spleen and the shipped CT model's class 1 the
    liver) would silently train the wrong organ, and 41 ids (or one stray stroke of
    another value) replace the model's heads by untrained ones: its IoU fell to 0 after
    a short fine-tune, without a word why. The CLI and the Train dock say the same.
    """
    from .labels import resolve_class_values

    if data_config.target != "semantic":
        return None, None
    values = resolve_class_values(data_config, labels)
    if classes != start.num_classes:
        shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
        return (
            f"the labels hold {len(values)} class value(s) ({shown}), "
            f"the starting model {start.num_classes} output(s): its output heads are "
            "replaced by new, untrained ones (give the labels the model's class values to "
            "keep what it knows)"
        ), None
    names = start.class_names[-len(values) :] if start.class_names else ()
    if len(names) != len(values):
        return None, None
    pairs = ", ".join(f"{v} -> {n}" for v, n in zip(values, names, strict=True))
    own = tuple(range(1, len(values) + 1))  # dense values of classes 1..K, as trained
    if data_config.label_mode == "dense" and len(values) > 1 and tuple(values) != own:
        return (
            f"the label values ({', '.join(map(str, values))}) are not the model's own "
            f"({', '.join(map(str, own))}): they train its classes in sorted order, {pairs}; "
            "if your values mean other classes (another tool's ids), relabel them first"
        ), None
    return None, f"label values train the model's classes: {pairs}"


def set_train_mode(model: nn.Module, freeze_encoder: bool, freeze_norm: bool = False) -> None:
    """Train mode, except frozen parts keep their BatchNorm statistics (eval).

    ``freeze_norm``: every normalisation layer keeps the statistics it was trained
    with; batches of a few scribbled patches would otherwise re-estimate them from
    unrepresentative pixels and shift every feature (the cause of fine-tunes that
    made a good model worse).
    """
    model.train()
    net = unwrap_model(model)
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


def origin_of(initial: Any) -> str:
    """How the provenance names where weights started: scratch, model, ``zoo:NAME`` or the path.

    Why ``zoo:NAME`` for a shipped model's folder (the Train dock passes the folder): an
    install path changes with every environment, and a resume looks the start up again.
    """
    if initial is None:
        return "scratch"
    if isinstance(initial, nn.Module):
        return "model"
    if not is_zoo(str(initial)):
        from .zoo import available_models

        here = Path(initial).resolve()
        for entry in available_models():
            if entry.path.resolve() == here:
                return entry.spec
    return str(initial)


#: The default weight of the preservation term with dense labels (held on every pixel).
#: Why 5: correct masks of the CT model's organs on slices 90-105 (the dock's 200 steps)
#: took unseen slices 70-85 from L4 liver Dice 0.912 to 0.801 without the term, 0.872 at
#: weight 1 and 0.913 at 5, where the painted slab still gained (liver 0.953 -> 0.962);
#: at 20 the slab gained less (``benchmarks/bench_finetune_dense.py``, docs/benchmarks.md).
DENSE_PRESERVE_WEIGHT = 5.0


def resolve_preserve_weight(
    train_config: TrainConfig, initial: Any, new_heads: list[str], dense: bool = False
) -> float:
    """``TrainConfig.preserve_weight``, with None meaning 1 when fine-tuning a model's heads
    (:data:`DENSE_PRESERVE_WEIGHT` with ``dense`` labels, where the term holds every pixel).

    Heads created anew (another class count) have no prediction to keep, so the term
    is off for them whatever was asked.
    """
    if initial is None or new_heads:
        return 0.0
    if train_config.preserve_weight is not None:
        return float(train_config.preserve_weight)
    return DENSE_PRESERVE_WEIGHT if dense else 1.0


def starting_depth(origin: str) -> int | None:
    """The depth the starting model recommends (its card's ``best_depth``), or None.

    Why a fine-tune recommends no shallower depth: its validation is a few painted slices,
    too few to tell depths apart within the 0.01 tolerance. The CT model fine-tuned on
    dense organ masks of 16 slices (the dock's defaults) scored L2 0.861 and L4 0.869 on
    its 3 held-back slices, so L2 was recommended and segmented with; on unseen slices 70-85
    its liver Dice was 0.726 at L2 and 0.801 at L4 (the start's recommended depth).
    """
    from .checkpoint import read_info
    from .locate import locate

    if origin in ("scratch", "model"):
        return None
    try:
        depth = read_info(locate(origin).path).metrics.get("best_depth")
    except (OSError, ValueError):
        return None
    return int(depth) if depth else None


def frozen_copy(net: UNetPlusPlus) -> UNetPlusPlus:
    """The starting network, fixed: the reference ``losses.preservation_loss`` holds to."""
    import copy

    teacher = copy.deepcopy(net).eval()
    teacher.requires_grad_(False)
    return teacher


def preservation_teacher(
    net: UNetPlusPlus,
    model_config: ModelConfig,
    train_config: TrainConfig,
    initial: Any,
    resume_from: Path | None,
    new_heads: list[str],
    dense: bool = False,
) -> tuple[UNetPlusPlus | None, float]:
    """The frozen starting model for the "keep what you knew" term, and its weight
    (``dense``: the labels are dense, see :func:`resolve_preserve_weight`).

    ``net`` is the network about to be trained, already on its device. A resumed run
    rebuilds the reference from the model the run first started from (the weights in
    ``last/`` have moved on); if that is gone, the term is off.
    """
    from .resume import started_from

    weight = resolve_preserve_weight(train_config, initial, new_heads, dense)
    if resume_from is not None and initial is None:
        start = started_from(resume_from, "scratch")
        if start in ("scratch", "model"):
            return None, 0.0
        try:
            source, _, fresh = build_model(model_config, start)
        except (OSError, ValueError):
            return None, 0.0
        weight = resolve_preserve_weight(train_config, start, fresh, dense)
        net = source.to(next(net.parameters()).device)
    return (frozen_copy(net), weight) if weight > 0 else (None, 0.0)
