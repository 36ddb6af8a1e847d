"""Pruning UNet++ by depth: what each depth scores and costs, and which one to use.

Why: a deeply supervised UNet++ trains every depth at once; a biologist then
picks the smallest network that is still good enough (paper, Sec. III-C). This
module measures, per depth, the validation score, the parameter count and the
time per megapixel *on this device*, and recommends the shallowest depth whose
score is within a tolerance of the best. The trainer fills the checkpoint's
per-depth table with the same helpers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from .config import IGNORE_INDEX, DataConfig
from .metrics import confusion_counts
from .model import UNetPlusPlus

__all__ = [
    "prune", "evaluate_depths", "recommend_depth", "measure_ms_per_mpx", "timing_tile", "score_tiles",
]

Tile = tuple[np.ndarray, np.ndarray]
LossFn = Callable[[dict[int, torch.Tensor], torch.Tensor], Any]


def prune(model: UNetPlusPlus, d: int) -> UNetPlusPlus:
    """The sub-network of depth ``d`` (nodes ``i + j <= d``, one head): exact and smaller."""
    return model.prune(d)


def _module(model: torch.nn.Module) -> UNetPlusPlus:
    """The UNet++ inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)  # type: ignore[return-value]


class _Counts:
    """Running tp/fp/fn per depth and class, summed over tiles (a global score)."""

    def __init__(self, depths: Sequence[int], classes: Sequence[int]) -> None:
        self.counts = {d: {c: np.zeros(3, np.int64) for c in classes} for d in depths}

    def add(self, depth: int, pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray) -> None:
        for c, acc in self.counts[depth].items():
            acc += confusion_counts(pred == c, truth == c, ignore)

    def scores(self, depth: int) -> dict[str, float]:
        """Mean IoU / Dice over the classes present in prediction or truth."""
        ious, dices = [], []
        for tp, fp, fn in self.counts[depth].values():
            if tp + fp + fn == 0:
                continue
            ious.append(tp / (tp + fp + fn))
            dices.append(2 * tp / (2 * tp + fp + fn))
        return {"iou": float(np.mean(ious)) if ious else 1.0,
                "dice": float(np.mean(dices)) if dices else 1.0}


def _predicted_classes(logits: torch.Tensor, num_classes: int, foreground_only: bool) -> np.ndarray:
    if num_classes == 1:
        pred = logits[:, 0] > 0
    else:
        pred = logits.argmax(dim=1)
        if foreground_only:
            pred = pred > 0
    return pred.cpu().numpy().astype(np.int64)


@torch.no_grad()
def score_tiles(
    model: torch.nn.Module,
    tiles: Sequence[Tile],
    num_classes: int,
    device: torch.device | str = "cpu",
    *,
    foreground_only: bool = False,
    loss_fn: LossFn | None = None,
    batch_size: int = 4,
) -> tuple[dict[int, dict[str, float]], float | None]:
    """Per-depth IoU and Dice (and the mean loss) of a model on labelled tiles.

    Binary models and ``foreground_only`` (instance targets) score the
    foreground; multi-class models the mean over foreground classes. Pixels
    with ``IGNORE_INDEX`` are left out, so scribbles can be scored too.
    """
    net = _module(model)
    was_training = net.training
    net.eval()
    depths = list(net.head_depths)
    classes = [1] if num_classes == 1 or foreground_only else list(range(1, num_classes))
    counts = _Counts(depths, classes)
    losses: list[tuple[float, int]] = []
    try:
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start:start + batch_size]
            x = torch.from_numpy(np.stack([t[0] for t in chunk])).to(device)
            y = np.stack([t[1] for t in chunk])
            logits = {d: v.float() for d, v in net(x).items()}
            if loss_fn is not None:
                loss, _ = loss_fn(logits, torch.from_numpy(y).to(device))
                losses.append((float(loss), len(chunk)))
            truth = (y > 0).astype(np.int64) if foreground_only else y
            ignore = y == IGNORE_INDEX
            for d in depths:
                counts.add(d, _predicted_classes(logits[d], num_classes, foreground_only),
                           truth, ignore)
    finally:
        net.train(was_training)
    mean_loss = (sum(v * n for v, n in losses) / sum(n for _, n in losses)) if losses else None
    return {d: counts.scores(d) for d in depths}, mean_loss


@torch.no_grad()
def timing_tile(spatial_dims: int) -> tuple[int, ...]:
    """The tile every ms/Mpx figure is measured on, so checkpoints and the slider compare."""
    return (256, 256) if spatial_dims == 2 else (64, 64, 64)


def measure_ms_per_mpx(
    model: UNetPlusPlus,
    depth: int,
    tile_shape: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    repeats: int = 3,
) -> float:
    """Milliseconds per megapixel of the pruned depth-``depth`` network on this device.

    Measured, not estimated: the best of ``repeats`` timed inference runs on one
    tile (default :func:`timing_tile`) after a warm-up, so it includes this
    machine's real overheads; the best run is the least disturbed by other load.
    """
    net = _module(model)
    tile_shape = tuple(tile_shape) if tile_shape else timing_tile(net.config.spatial_dims)
    pruned = net.prune(depth).eval().to(device)
    x = torch.zeros(1, net.config.in_channels, *tile_shape, device=device)
    cuda = torch.device(device).type == "cuda"
    best = float("inf")
    with torch.inference_mode():
        pruned(x)
        for _ in range(max(1, repeats)):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            pruned(x)
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return 1000.0 * best / (float(np.prod(tile_shape)) / 1e6)


def depth_table(
    model: UNetPlusPlus,
    scores: dict[int, dict[str, float]] | None,
    tile_shape: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> dict[int, dict[str, Any]]:
    """Per depth: scores (or None), parameters and measured ms per megapixel."""
    net = _module(model)
    table: dict[int, dict[str, Any]] = {}
    for d in net.head_depths:
        row: dict[str, Any] = dict(scores.get(d, {})) if scores else {"iou": None, "dice": None}
        row["parameters"] = int(net.num_parameters(d))
        row["ms_per_mpx"] = measure_ms_per_mpx(net, d, tile_shape, device)
        table[d] = row
    return table


def evaluate_depths(
    model: UNetPlusPlus,
    images: Any,
    labels: Any,
    data_config: DataConfig,
    *,
    tile_size: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
) -> dict[int, dict[str, Any]]:
    """Score every depth of a model on labelled images, with its cost.

    Returns ``{depth: {"iou", "dice", "parameters", "ms_per_mpx"}}`` (the
    checkpoint's ``metrics["depths"]`` layout). ``images`` / ``labels``: one
    array or lists of arrays, as for training; non-overlapping tiles of
    ``tile_size`` (default 256 per axis, 64 along Z for 3D) are scored.
    """
    net = _module(model)
    dims = net.config.spatial_dims
    tile = tuple(tile_size) if tile_size else ((256, 256) if dims == 2 else (64, 128, 128))
    resolved = data_config.replace(
        class_values=data_mod.resolve_class_values(data_config, labels))
    volumes = data_mod.prepare_volumes(images, labels, resolved, dims)
    tiles = data_mod.validation_tiles(volumes, tile, dims)
    net = net.to(device)
    scores, _ = score_tiles(net, tiles, net.config.num_classes, device,
                            foreground_only=data_config.target == "instance",
                            batch_size=batch_size)
    return depth_table(net, scores, None, device)


def recommend_depth(
    table: dict[Any, dict[str, Any]], tolerance: float = 0.01, score: str = "iou"
) -> int:
    """The shallowest depth whose score is within ``tolerance`` of the best one.

    Depth keys may be ints or strings (as read back from JSON). Without scores
    the deepest depth is recommended (nothing says a smaller one is as good).
    """
    if not table:
        raise ValueError("empty per-depth table: evaluate the depths first (evaluate_depths)")
    rows = {int(d): row for d, row in table.items()}
    scored = {d: row[score] for d, row in rows.items() if row.get(score) is not None}
    if not scored:
        return max(rows)
    best = max(scored.values())
    return min(d for d, value in scored.items() if value >= best - tolerance)
