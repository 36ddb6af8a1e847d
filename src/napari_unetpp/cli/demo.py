"""``napari-unetpp demo``: segment a bundled sample crop with a shipped model and score it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..files import write_array
from ..locate import zoo_spec
from .common import _out
from .predict import _predict_local


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_demo(args: argparse.Namespace) -> int:
    """Segment the bundled sample crop with the shipped model and score it."""
    import numpy as np

    from .. import _sample_data, zoo
    from ..config import PredictConfig
    from ..postprocess import probabilities_to_labels

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
    from ..outputs import OutputFolder

    names = {f"{args.model}_image": np.asarray(image), f"{args.model}_labels": labels}
    with OutputFolder(args.out) as outputs:
        outputs.check_free([f"{name}.tif" for name in names])
        written = [
            outputs.commit(write_array(outputs.stage(name), array, "tif").name)
            for name, array in names.items()
        ]
    _out(
        f"demo: {meta.get('title', args.model)}, shape {tuple(image.shape)}, "
        f"model {zoo_spec(args.model)} (L{depth})"
    )
    _out(f"{score_name} against the crop's labels: {score:.3f}")
    _out(f"data: {meta.get('attribution', '')}")
    _out("wrote " + ", ".join(str(p) for p in written))
    if not args.no_viewer and _has_display():
        _show(image, labels, truth, args.model, meta)
    return 0


def _demo_score(labels: Any, truth: Any, num_classes: int, target: str) -> tuple[str, float]:
    """Instances: AP at IoU 0.5 (DSB 2018); classes: mean foreground IoU; binary: IoU."""
    from .. import metrics

    if target == "instance":
        return "AP@0.5", metrics.average_precision(labels, truth, 0.5)
    if num_classes > 1:
        return "mean IoU", float(metrics.per_class_scores(labels, truth, num_classes)["mean_iou"])
    return "IoU", metrics.iou(labels > 0, truth > 0)


def _show(
    image: Any, labels: Any, truth: Any, name: str, meta: dict[str, Any]
) -> None:  # pragma: no cover - needs a display
    """Open napari with the result; the GUI module is imported only here."""
    from .._widgets.demo_viewer import show_demo

    show_demo(image, labels, truth, name, meta)
