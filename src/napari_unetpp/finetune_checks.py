"""Labels that would make a fine-tune worse, found before it starts.

Why apart from :mod:`.finetune` (how a run starts from a model): these checks hold the
user's labels against the starting model's own labels of a painted slice, and the CLI
(``train --from``) and the Train dock stop on what they find unless told to train anyway.
The three harmful cases, each measured in the dock (``benchmarks/bench_dock_finetune.py``):
label values that are not the model's own (another tool's ids train the wrong class),
strokes wider than the objects (thicker objects learnt), dense labels marking far less of a
class than the model finds (the class unlearnt: the EM model's membrane IoU 0.725 -> 0.015).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .config import DataConfig
from .remedies import Remedy

__all__ = [
    "TRAIN_ANYWAY",
    "harmful_labels",
    "most_painted_plane",
    "shrinking_classes",
    "wide_strokes",
]

#: What the CLI and the dock add to a refusal: how to go on anyway.
TRAIN_ANYWAY = "not started; to train anyway, {how}"

#: Class strokes with more than this share of their pixels where the starting model sees
#: another class ...
WIDE_STROKE_SHARE = 0.25
#: ... nearly all of them (:data:`WIDE_STROKE_BESIDE`) within this many pixels of what it
#: calls that class, are wider than the objects (a brush wider than a membrane).
WIDE_STROKE_MARGIN = 3
WIDE_STROKE_BESIDE = 0.7
#: Strokes of fewer pixels are not judged.
WIDE_STROKE_MIN_PIXELS = 50


def wide_strokes(
    strokes: Any, before: Any, class_names: tuple[str, ...] = (), where: str = "the slice shown"
) -> str | None:
    """Why scribbles look wider than the objects the starting model finds, or None.

    ``strokes``: sparse labels of a slice (1 = background, 2.. = classes); ``before``: the
    starting model's class labels of the same slice (0 = background, 1.. = classes).

    Why: painted with napari's default brush (10 px), membrane strokes on an EM slice
    covered the interior beside each membrane; the dock's fine-tune then taught thicker
    membranes, and the shipped EM model's membrane IoU on unseen slices fell from 0.725 to
    0.647 (thin strokes: 0.736). Strokes where the model is wrong (a correction) disagree
    with it along their whole length; strokes wider than the objects disagree beside them.
    """
    from scipy import ndimage as ndi

    strokes, before = np.asarray(strokes), np.asarray(before)
    if strokes.shape != before.shape:
        return None
    for value in np.unique(strokes[strokes >= 2]):
        painted = strokes == value
        if painted.sum() < WIDE_STROKE_MIN_PIXELS:
            continue
        found = before == value - 1
        off = painted & ~found
        beside = off & ndi.binary_dilation(found, iterations=WIDE_STROKE_MARGIN)
        share = off.sum() / painted.sum()
        if share > WIDE_STROKE_SHARE and beside.sum() > WIDE_STROKE_BESIDE * off.sum():
            names = class_names[1:] if len(class_names) > 1 else class_names
            name = names[value - 2] if value - 2 < len(names) else f"class {value - 1}"
            return (
                f"your strokes of '{name}' (value {value}) on {where} are wider than "
                f"what the starting model finds there: {100 * share:.0f}% of their pixels lie "
                "beside it, where it sees another class, so the model will learn thicker "
                f"'{name}' and may get worse. Paint thinner strokes (a smaller brush size in "
                "the layer controls) and start again"
            )
    return None


#: Dense labels marking a class on less than this share of the pixels where the starting
#: model finds it ...
SHRINK_RATIO = 0.25
#: ... on a slice where it finds the class on at least this share, would unteach it.
SHRINK_MIN_SHARE = 0.05


def shrinking_classes(
    labels: Any,
    before: Any,
    data_config: DataConfig,
    class_names: tuple[str, ...] = (),
    where: str = "the slice shown",
) -> str | None:
    """Why dense labels would teach the starting model to find far less of a class, or None.

    ``labels``: dense labels of a slice; ``before``: the starting model's class labels of
    it (0 = background, 1.. = classes).

    Why: membrane strokes painted with napari's default label 1 read as dense labels, every
    unpainted pixel background; on a single EM slice they covered 2 % of it where the model
    finds 23 %, too many to be called rare (``patches.rare_classes``), and the dock's
    fine-tune taught the EM model that membranes are rare.
    """
    from .labels import labels_to_targets

    labels, before = np.asarray(labels), np.asarray(before)
    if labels.shape != before.shape or data_config.label_mode != "dense":
        return None
    try:
        target = labels_to_targets(labels, data_config, spatial_dims=labels.ndim)
    except ValueError:  # no class painted on this slice: nothing to compare
        return None
    names = class_names[1:] if len(class_names) > 1 else class_names
    for cls in range(1, int(before.max(initial=0)) + 1):
        found, marked = float((before == cls).mean()), float((target == cls).mean())
        if found >= SHRINK_MIN_SHARE and marked < SHRINK_RATIO * found:
            name = names[cls - 1] if cls - 1 < len(names) else f"class {cls}"
            name = name.replace("{", "{{").replace("}", "}}")  # text of a template
            return Remedy(  # in the reader's words: the CLI's flag, the dock's field
                f"your labels mark {100 * marked:.1f}% of {where} as '{name}', where "
                f"the starting model finds {100 * found:.0f}%: with dense labels every "
                f"unpainted pixel is background, so the model will learn to find far less "
                f"'{name}'. If you painted only some of them (strokes), paint background "
                f"with 1 and '{name}' with 2 and {{sparse_mode}}"
            )
    return None


#: The starting model's labels are computed on the painted slice cropped to its labels,
#: with this margin (pixels) of context around them.
CHECK_MARGIN = 64


def most_painted_plane(
    image: Any, labels: Any, channel_axis: int | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """The 2D plane of a stack holding the most labelled pixels, cropped to them (with
    :data:`CHECK_MARGIN`): ``(image (C, Y, X), labels (Y, X), where)``.

    Why the most painted: the CLI shows no slice, and a plane with a few pixels says
    little about how the user paints; cropped, a big image costs a crop's prediction.
    """
    from .normalization import to_channels_first

    channels = to_channels_first(image, channel_axis)
    planes = np.asarray(labels).reshape(-1, *np.shape(labels)[-2:])
    k = int(np.argmax((planes > 0).reshape(len(planes), -1).sum(1)))
    plane = planes[k]
    rows, cols = (np.flatnonzero(plane.any(axis)) for axis in (1, 0))
    box = tuple(
        slice(max(int(r[0]) - CHECK_MARGIN, 0), int(r[-1]) + CHECK_MARGIN + 1) for r in (rows, cols)
    )
    picture = np.asarray(channels.reshape(channels.shape[0], -1, *channels.shape[-2:])[:, k])
    where = f"slice {k}" if len(planes) > 1 else "the image"
    return picture[:, box[0], box[1]], plane[box], where


#: The starting model's labels are judged against only where it is sure of them: at least
#: this share of the checked plane's pixels with a class probability >= :data:`SURE`.
#: Why: a barely trained start (2 dock steps) called every pixel of an EM crop membrane at
#: p ~ 0.5, and correct membrane masks were refused as "unteaching" them; the shipped EM
#: model is sure of 83-85 % of an EM slice's pixels, 2-50 step scratch models of none
#: (their recorded validation IoU, up to 0.58 on a few pixels, does not tell them apart).
SURE_SHARE = 0.5
SURE = 0.9


def _starting_labels(
    model: Any, info: Any, image: np.ndarray, device: str
) -> tuple[np.ndarray, float]:
    """The starting model's class labels of ``image (C, Y, X)`` at its recommended depth,
    and the share of pixels it is sure of (a class probability >= :data:`SURE`)."""
    from .config import PredictConfig
    from .events import drive
    from .inference import predict
    from .postprocess import probabilities_to_labels

    depth = int(info.metrics.get("best_depth") or model.config.depth)
    data = info.data.replace(channel_axis=0)
    config = PredictConfig(depths=(depth,), device=device, tile_size=(256, 256))  # type: ignore[arg-type]
    probabilities = drive(predict(model, image, config, data))
    prob = np.asarray(probabilities[depth])
    top = prob.max(axis=0) if prob.ndim > image.ndim - 1 else np.maximum(prob, 1 - prob)
    labels = np.asarray(probabilities_to_labels(prob, info.model, data))
    return labels, float((top >= SURE).mean())


def harmful_labels(
    start: str | os.PathLike[str],
    images: list[Any],
    labels: list[Any],
    data_config: DataConfig,
    classes: int,
    device: str = "cpu",
) -> str | None:
    """Why a fine-tune of ``start`` (a checkpoint or ``zoo:NAME``) on these labels would make
    it worse, or None. The reason names the command line's options; a dock shows
    ``remedies.phrased(reason, "dock")``.

    ``data_config``: the run's (its label mode decided); ``classes``: the outputs these
    labels need. Label values that are not the model's own are found from the values
    alone; wide strokes (sparse) and shrinking classes (dense) on the first pair's most
    painted plane, against the starting model's labels of it, where the model is sure of
    them (:data:`SURE_SHARE`: else not judged). 3D models and instance
    targets are judged by their values only. Another class count (new heads) is a new task,
    not refused (``class_mapping`` says what it costs).
    """
    from .files import load_model
    from .finetune import class_mapping
    from .labels import resolve_class_values

    model, info = load_model(str(start), device="cpu")
    warning, _ = class_mapping(labels, info.model, data_config, classes)
    if warning and classes == info.model.num_classes:  # another tool's ids: wrong classes
        return warning
    if info.model.spatial_dims != 2 or data_config.target != "semantic" or not labels:
        return None
    image, plane, where = most_painted_plane(images[0], labels[0], data_config.channel_axis)
    if not plane.any():
        return None
    before, sure = _starting_labels(model, info, image, device)
    if sure < SURE_SHARE:  # a barely trained start: its labels are no yardstick
        return None
    names = tuple(info.model.class_names)
    if data_config.label_mode == "sparse":
        return wide_strokes(plane, before, names, where)
    if not data_config.class_values:  # every slice's values, as the training resolves them
        data_config = data_config.replace(class_values=resolve_class_values(data_config, labels))
    return shrinking_classes(plane, before, data_config, names, where)
