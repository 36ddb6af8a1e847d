"""Pruning UNet++ by depth: what each depth scores and costs, and which one to use.

Why: a deeply supervised UNet++ trains every depth at once; a biologist then
picks the smallest network that is still good enough (paper, Sec. III-C). This
module measures, per depth, the validation score, the parameter count and the
time per megapixel *on this device*, and recommends the shallowest depth whose
score is within a tolerance of the best. The trainer fills the checkpoint's
per-depth table with the same helpers.

Cost is shown two ways: :func:`gflop_per_mpx` is exact and the same on every
machine (the arithmetic of the pruned network, counted once per architecture);
:func:`measure_ms_per_mpx` is what it costs here, the median of several timed
runs after a warm-up, so one disturbed run does not move it.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .config import IGNORE_INDEX, DataConfig, ModelConfig
from .labels import resolve_class_values
from .metrics import confusion_counts
from .model import UNetPlusPlus, unwrap_model
from .patches import prepare_volumes, validation_tiles

__all__ = [
    "prune",
    "evaluate_depths",
    "recommend_depth",
    "measure_ms_per_mpx",
    "timing_tile",
    "score_tiles",
    "gflop_per_mpx",
    "median_seconds",
    "depth_costs",
]

Tile = tuple[np.ndarray, np.ndarray]
LossFn = Callable[[dict[int, torch.Tensor], torch.Tensor], Any]


def prune(model: UNetPlusPlus, d: int) -> UNetPlusPlus:
    """The sub-network of depth ``d`` (nodes ``i + j <= d``, one head): exact and smaller."""
    return model.prune(d)


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
        return {
            "iou": float(np.mean(ious)) if ious else 1.0,
            "dice": float(np.mean(dices)) if dices else 1.0,
        }


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
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    depths = list(net.head_depths)
    classes = [1] if num_classes == 1 or foreground_only else list(range(1, num_classes))
    counts = _Counts(depths, classes)
    losses: list[tuple[float, int]] = []
    try:
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start : start + batch_size]
            x = torch.from_numpy(np.stack([t[0] for t in chunk])).to(device)
            y = np.stack([t[1] for t in chunk])
            logits = {d: v.float() for d, v in net(x).items()}
            if loss_fn is not None:
                loss, _ = loss_fn(logits, torch.from_numpy(y).to(device))
                losses.append((float(loss), len(chunk)))
            truth = (y > 0).astype(np.int64) if foreground_only else y
            ignore = y == IGNORE_INDEX
            for d in depths:
                counts.add(
                    d, _predicted_classes(logits[d], num_classes, foreground_only), truth, ignore
                )
    finally:
        net.train(was_training)
    mean_loss = (sum(v * n for v, n in losses) / sum(n for _, n in losses)) if losses else None
    return {d: counts.scores(d) for d in depths}, mean_loss


@torch.no_grad()
def timing_tile(spatial_dims: int) -> tuple[int, ...]:
    """The tile every ms/Mpx figure is measured on, so checkpoints and the slider compare."""
    return (256, 256) if spatial_dims == 2 else (64, 64, 64)


@functools.lru_cache(maxsize=64)
def _gflop_per_mpx(
    in_channels: int,
    num_classes: int,
    widths: tuple[int, ...],
    spatial_dims: int,
    depth: int,
    tile: tuple[int, ...],
) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):  # shapes only: no memory, no arithmetic, any size
        net = UNetPlusPlus(
            in_channels, num_classes, widths, depth, spatial_dims, deep_supervision=False
        )
        x = torch.zeros(1, in_channels, *tile)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() / (float(np.prod(tile)) / 1e6) / 1e9


def gflop_per_mpx(
    model: UNetPlusPlus | ModelConfig, depth: int, tile_shape: Sequence[int] | None = None
) -> float:
    """Exact GFLOP per megapixel (or megavoxel) of the pruned depth-``depth`` network.

    Counted by ``torch.utils.flop_counter`` (2 FLOP per multiply-add of every
    convolution, transposed ones included) on a shape-only copy, once per
    architecture (cached): deterministic, the same on every machine, and it needs
    no weights (a checkpoint's config is enough). Convolutions cost the same per
    pixel at any size, so the tile (default :func:`timing_tile`) only matters
    through padding to a multiple of ``2**depth``.
    """
    config = model if isinstance(model, ModelConfig) else unwrap_model(model).config
    heads = range(1, config.depth + 1) if config.deep_supervision else (config.depth,)
    if depth not in heads:
        raise ValueError(f"no head at depth {depth}; this model has heads {list(heads)}")
    tile = tuple(int(t) for t in tile_shape) if tile_shape else timing_tile(config.spatial_dims)
    return _gflop_per_mpx(
        config.in_channels,
        config.num_classes,
        tuple(config.widths),
        config.spatial_dims,
        depth,
        tile,
    )


def median_seconds(
    run: Callable[[], Any],
    repeats: int = 5,
    warmup: int = 1,
    synchronize: Callable[[], Any] | None = None,
) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls after ``warmup`` untimed ones.

    Why the median: on a shared machine single runs vary 2-5x; the median of a
    handful moves little from one call to the next, where the best or a single run
    jumps. ``synchronize`` (e.g. ``torch.cuda.synchronize``) waits for a GPU.
    """
    sync = synchronize or (lambda: None)
    for _ in range(max(0, warmup)):
        run()
    times = []
    for _ in range(max(1, repeats)):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_ms_per_mpx(
    model: UNetPlusPlus,
    depth: int,
    tile_shape: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    repeats: int = 5,
    mixed_precision: bool = True,
) -> float:
    """Milliseconds per megapixel of the pruned depth-``depth`` network on this device.

    Measured, not estimated: the median (:func:`median_seconds`) of ``repeats``
    timed runs on one tile (default :func:`timing_tile`) after a warm-up, with the
    network prepared as inference runs it (BatchNorm folded, fastest memory layout,
    the precision ``PredictConfig.mixed_precision`` gives), so it includes this
    machine's real overheads. Measure when the machine is idle (not during
    training): the number is as stable as the machine is.
    """
    from .devices import inference_dtype, memory_format, mixed_precision_on
    from .predictor import inference_autocast, prepare_for_inference

    net = unwrap_model(model)
    tile_shape = tuple(tile_shape) if tile_shape else timing_tile(net.config.spatial_dims)
    device = torch.device(device)
    mixed_precision = mixed_precision_on(device, mixed_precision, net.config.spatial_dims)
    dtype = inference_dtype(device, mixed_precision)
    pruned = prepare_for_inference(net.prune(depth), device, dtype)
    x = torch.zeros(1, net.config.in_channels, *tile_shape, device=device, dtype=dtype)
    x = x.contiguous(memory_format=memory_format(net.config.spatial_dims, device))
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with torch.inference_mode(), inference_autocast(pruned, device, mixed_precision):
        seconds = median_seconds(lambda: pruned(x), repeats, 1, sync)
    return 1000.0 * seconds / (float(np.prod(tile_shape)) / 1e6)


def depth_costs(
    model: UNetPlusPlus,
    device: torch.device | str = "cpu",
    tile_shape: Sequence[int] | None = None,
    repeats: int = 5,
) -> dict[int, dict[str, float]]:
    """Per depth: exact ``gflop_per_mpx``, measured ``ms_per_mpx`` and ``gflop_s`` here.

    What the pruning panel and ``napari-unetpp info --time`` show: the exact cost
    beside a stable measured time (and the rate they imply, to compare machines).
    """
    net = unwrap_model(model)
    costs = {}
    for d in net.head_depths:
        gflop = gflop_per_mpx(net, d, tile_shape)
        ms = measure_ms_per_mpx(net, d, tile_shape, device, repeats)
        costs[d] = {"gflop_per_mpx": gflop, "ms_per_mpx": ms, "gflop_s": gflop / (ms / 1000)}
    return costs


def depth_table(
    model: UNetPlusPlus,
    scores: dict[int, dict[str, float]] | None,
    tile_shape: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> dict[int, dict[str, Any]]:
    """Per depth: scores (or None), parameters and measured ms per megapixel."""
    net = unwrap_model(model)
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
    net = unwrap_model(model)
    dims = net.config.spatial_dims
    tile = tuple(tile_size) if tile_size else ((256, 256) if dims == 2 else (64, 128, 128))
    resolved = data_config.replace(class_values=resolve_class_values(data_config, labels))
    volumes = prepare_volumes(images, labels, resolved, dims)
    tiles = validation_tiles(volumes, tile, dims)
    net = net.to(device)
    scores, _ = score_tiles(
        net,
        tiles,
        net.config.num_classes,
        device,
        foreground_only=data_config.target == "instance",
        batch_size=batch_size,
    )
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
