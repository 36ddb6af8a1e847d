"""Adaptive depth: per tile, run the shallow heads first and go deeper only where they disagree.

Why: a deeply supervised UNet++ holds four predictions of one image, and the
nested graph makes them incremental: head ``d + 1`` needs every node of head
``d`` plus the nodes with ``i + j = d + 1``. :class:`NestedForward` caches the
node outputs ``X[i, j]`` of a tile batch and computes only the new nodes when a
deeper head is asked for, so going from L2 to L3 costs exactly the L3-only nodes.
:class:`AdaptivePredictor` stops a tile at depth ``d`` when the labels of L(d-1)
and L(d) differ on fewer than ``tolerance`` of its pixels (strictly fewer: a
tolerance of 0 never stops early, so it reproduces the deepest head exactly);
tiles that keep changing go on to the deepest head.

It is a predictor of :func:`tiling.iter_sliding_window`, so tiling, blending,
cancellation and progress are those of ordinary prediction; besides the
probabilities it stitches a per-pixel "depth used" map and a per-pixel depth
disagreement (the range of the computed heads' probabilities, see
:mod:`napari_unetpp.disagreement`). ``PredictConfig(adaptive_depth=True)``
makes :func:`inference.predict` call :func:`predict_adaptive`.

Example
-------
>>> import numpy as np
>>> from napari_unetpp.config import DataConfig, PredictConfig
>>> from napari_unetpp.model import UNetPlusPlus
>>> from napari_unetpp.events import drive
>>> net = UNetPlusPlus(widths=(4, 8, 16), depth=2)
>>> cfg = PredictConfig(device="cpu", adaptive_depth=True, depth_tolerance=0.0)
>>> result = drive(predict_adaptive(net, np.zeros((40, 50), "uint8"), cfg, DataConfig()))
>>> sorted(result), result.depth_map.shape, sorted(result.tiles_per_depth)
([2], (40, 50), [2])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import stores, tiling
from .config import DataConfig, ModelConfig, PredictConfig
from .devices import resolve_device
from .events import EtaClock, Stopper
from .inference import PredictResult
from .layout import ItemSink, ItemView, image_layout, output_shape
from .model import UNetPlusPlus, head_name, node_name, nodes_for_depth
from .predictor import inference_autocast, network_dtype, precision_note, prepare_on
from .stores import mark_complete

__all__ = [
    "AdaptivePredictor",
    "AdaptiveResult",
    "NestedForward",
    "depth_cost_fractions",
    "label_change",
    "predict_adaptive",
]


# --------------------------------------------------------------------------- incremental forward


class NestedForward:
    """The heads of one input batch, one depth at a time, every node ``X[i, j]`` computed once.

    ``head(d)`` runs only the nodes of depth ``d`` not yet computed (``i + j <= d``
    minus the cache), so asking for L1, L2, L3, L4 in turn costs what L4 alone
    costs. ``keep(rows)`` drops the batch rows that stopped, so deeper nodes run
    only on the tiles that still disagree. The input is padded to ``2**net.depth``
    once (as :func:`inference.predict`'s tiles already are), so every head sees
    the padding that the full network's forward pass gives the deepest head.
    """

    def __init__(self, net: UNetPlusPlus, x: torch.Tensor) -> None:
        self.net = net
        self.x, self._crop = net._pad_to_multiple(x, 2**net.depth)
        self.features: dict[tuple[int, int], torch.Tensor] = {}

    def head(self, depth: int) -> torch.Tensor:
        """Logits of head ``depth`` for the rows kept so far."""
        if depth not in self.net.head_depths:
            raise ValueError(f"no head at depth {depth}; heads: {self.net.head_depths}")
        for i, j in nodes_for_depth(depth):
            if (i, j) not in self.features:
                self.features[i, j] = self._node(i, j)
        return self._crop(self.net.heads[head_name(depth)](self.features[0, depth]))

    def _node(self, i: int, j: int) -> torch.Tensor:
        node = self.net.nodes[node_name(i, j)]
        if j == 0:
            return node(self.x if i == 0 else self.net.pool(self.features[i - 1, 0]))
        return node([self.features[i, k] for k in range(j)], self.features[i + 1, j - 1])

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only batch ``rows`` (an index tensor) of the input and the cached nodes."""
        self.x = self.x[rows]
        self.features = {key: value[rows] for key, value in self.features.items()}


def _node_macs(config: ModelConfig, i: int, j: int) -> float:
    """Multiply-adds of node ``X[i, j]`` per full-resolution input pixel (its share of the cost)."""
    w, dims = config.widths, config.spatial_dims
    kernel = 3**dims
    scale = 1.0 / (2**dims) ** i
    if j == 0:
        source = config.in_channels if i == 0 else w[i - 1]
        return scale * kernel * (source * w[i] + w[i] * w[i])
    up = w[i + 1] * w[i]  # stride-2 transposed conv: one w[i+1] x w[i] product per output pixel
    return scale * (up + kernel * ((j + 1) * w[i] * w[i] + w[i] * w[i]))


def depth_cost_fractions(config: ModelConfig) -> dict[int, float]:
    """Cost of heads ``1..d`` (all their nodes) as a fraction of the deepest head's cost.

    Counted in multiply-adds, so it says what adaptive depth skips independently
    of the machine's load; the benchmark measures wall time next to it.
    """
    total = {
        d: sum(_node_macs(config, i, j) for i, j in nodes_for_depth(d))
        + config.widths[0] * config.num_classes * d
        for d in range(1, config.depth + 1)
    }
    return {d: total[d] / total[config.depth] for d in total}


# --------------------------------------------------------------------------- decision


def _activate(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Probabilities as :func:`inference.predict` computes them (float32, sigmoid / softmax)."""
    logits = logits.float()
    return torch.sigmoid(logits) if num_classes == 1 else torch.softmax(logits, dim=1)


def _labels(prob: torch.Tensor, num_classes: int, threshold: float) -> torch.Tensor:
    return prob[:, 0] > threshold if num_classes == 1 else prob.argmax(dim=1)


def label_change(
    before: torch.Tensor, after: torch.Tensor, num_classes: int, threshold: float = 0.5
) -> torch.Tensor:
    """Per batch row: the fraction of pixels whose label differs between two heads."""
    changed = _labels(before, num_classes, threshold) != _labels(after, num_classes, threshold)
    return changed.flatten(1).float().mean(dim=1)


def _spread(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Per-pixel disagreement ``(N, 1, *tile)``: the largest per-class range over the heads."""
    return (high - low).amax(dim=1, keepdim=True)


class AdaptivePredictor:
    """Tile predictor: shallow heads first, deeper only for tiles whose labels still change.

    Returns ``{"probabilities": ..., "disagreement": ...}`` per batch (the stopped
    head's probabilities and the range of the computed heads' probabilities per
    pixel); ``depths_used`` lists the depth of every tile in the order the tiles
    came (the depth map is painted from it: blending it would cost a third key).
    """

    def __init__(
        self,
        net: UNetPlusPlus,
        device: torch.device,
        num_classes: int,
        *,
        tolerance: float,
        threshold: float = 0.5,
        mixed_precision: bool = False,
        min_depth: int = 2,
    ) -> None:
        heads = net.head_depths
        if len(heads) < 2 or heads != tuple(range(1, net.depth + 1)):
            raise ValueError(
                "adaptive depth needs a deeply supervised network (a head at every depth); "
                f"this one has heads {heads}: predict at a fixed depth instead"
            )
        self.net = net
        self.device = device
        self.num_classes = num_classes
        self.tolerance = tolerance
        self.threshold = threshold
        self.mixed_precision = mixed_precision
        self.min_depth = max(2, min(min_depth, net.depth))
        self.depths_used: list[int] = []

    def __call__(self, batch: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, network_dtype(self.net))
        with (
            torch.inference_mode(),
            inference_autocast(self.net, self.device, self.mixed_precision),
        ):
            return self._adapt(NestedForward(self.net, x), len(batch))

    def _adapt(self, forward: NestedForward, n: int) -> dict[str, torch.Tensor]:
        active = torch.arange(n, device=self.device)
        prob = _activate(forward.head(1), self.num_classes)
        low, high = prob.clone(), prob.clone()
        final = torch.empty_like(prob)
        used = torch.full((n,), self.net.depth, dtype=torch.int64, device=self.device)
        spread = torch.empty((n, 1, *prob.shape[2:]), dtype=prob.dtype, device=self.device)
        for d in range(2, self.net.depth + 1):
            previous, prob = prob, _activate(forward.head(d), self.num_classes)
            low, high = torch.minimum(low, prob), torch.maximum(high, prob)
            if d == self.net.depth:
                stop = torch.ones(len(active), dtype=torch.bool, device=self.device)
            elif d < self.min_depth:
                stop = torch.zeros(len(active), dtype=torch.bool, device=self.device)
            else:
                stop = (
                    label_change(previous, prob, self.num_classes, self.threshold) < self.tolerance
                )
            rows = active[stop]
            final[rows], used[rows] = prob[stop], d
            spread[rows] = _spread(low[stop], high[stop])
            if bool(stop.all()):
                break
            go = ~stop
            if not bool(stop.any()):
                continue  # no row stopped: nothing to drop (and no batch-size change)
            active, prob, low, high = active[go], prob[go], low[go], high[go]
            forward.keep(torch.nonzero(go).flatten())
        self.depths_used.extend(int(d) for d in used.cpu())
        return {"probabilities": final, "disagreement": spread}


# --------------------------------------------------------------------------- predict


class AdaptiveResult(PredictResult):
    """``{deepest depth: probabilities}`` of an adaptive run, plus its maps and costs.

    Keyed by the deepest depth so every consumer of :class:`inference.PredictResult`
    (labels, the CLI's files) takes the adaptive probabilities as "the" result.
    ``depth_map``: depth used per pixel (the deepest tile where tiles overlap), the image
    shape without channels; ``tile_depths``: per item (slice), the depth of each
    tile on the tile grid; ``disagreement``: per pixel, the range of the computed
    heads' probabilities (0 = all heads agree); ``tiles_per_depth``: tile counts;
    ``cost_fraction``: multiply-adds used relative to the deepest head everywhere
    (so ``1 - cost_fraction`` is the saving); ``seconds``: wall time.
    """

    def __init__(
        self, arrays: dict[int, Any], complete: bool, path: Path | None = None, **extra: Any
    ) -> None:
        super().__init__(arrays, complete, path)
        self.depth_map: np.ndarray = extra.get("depth_map", np.zeros(0))
        self.disagreement: np.ndarray = extra.get("disagreement", np.zeros(0))
        self.tile_depths: dict[tuple[int, ...], np.ndarray] = extra.get("tile_depths", {})
        self.tiles_per_depth: dict[int, int] = extra.get("tiles_per_depth", {})
        self.cost_fraction: float = extra.get("cost_fraction", 1.0)
        self.seconds: float = extra.get("seconds", 0.0)

    def summary(self) -> str:
        """One line: tiles per depth and the share of the deepest head's work saved."""
        counts = ", ".join(f"L{d}: {n}" for d, n in sorted(self.tiles_per_depth.items()))
        return (
            f"adaptive depth: tiles {counts or 'none'}; "
            f"{100 * (1 - self.cost_fraction):.0f}% of the deepest head's work saved"
        )


def _allocator(sinks: dict[str, Any]) -> Callable[[Hashable, tuple[int, ...]], Any]:
    """The tiling generator's ``allocate``: the item's sink for each output key."""

    def allocate(key: Hashable, _shape: tuple[int, ...]) -> Any:
        return sinks[str(key)]

    return allocate


def _paint(
    target: np.ndarray,
    starts: list[tuple[int, ...]],
    used: list[int],
    tile: tuple[int, ...],
    sizes: tuple[int, ...],
) -> np.ndarray:
    """Paint each tile's depth over its pixels (the deeper tile wins where tiles overlap).

    Returns the same depths on the tile grid (``int8``, 0 for tiles not reached).
    """
    grid_shape = tuple(len({s[k] for s in starts}) for k in range(len(starts[0])))
    grid = np.zeros(grid_shape, np.int8)
    grid.flat[: len(used)] = used
    for start, depth in zip(starts, used, strict=False):  # a stopped run has fewer
        region = tuple(slice(s, min(s + t, n)) for s, t, n in zip(start, tile, sizes, strict=True))
        np.maximum(target[region], depth, out=target[region])
    return grid


def predict_adaptive(
    model: UNetPlusPlus,
    image: Any,
    predict_config: PredictConfig,
    data_config: DataConfig,
    *,
    out: str | Path | None = None,
    stopper: Stopper | None = None,
) -> Generator[Any, None, AdaptiveResult]:
    """:func:`inference.predict` with adaptive depth per tile; a generator of ``PredictEvent``.

    Tiles, overlap, batch size, blending, normalisation and the layout of the
    input are those of ordinary prediction (the same helpers), so
    ``depth_tolerance=0`` returns the deepest head's probabilities exactly.
    TTA is not combined with adaptive depth (flips are a separate check, see
    :func:`napari_unetpp.disagreement.check_image`).
    """
    from . import inference as inf  # the helpers of ordinary prediction: one way to tile

    started = time.perf_counter()
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        image = np.asarray(image)
    shape = tuple(int(s) for s in image.shape)
    layout = image_layout(shape, data_config.channel_axis, model)
    multiple = 2**model.depth
    tile = inf._tile_shape(predict_config, layout.spatial_shape, multiple)
    device = resolve_device(predict_config.device)
    num_classes = model.config.num_classes
    deepest = model.depth
    stopped = (lambda: stopper.stopped) if stopper is not None else (lambda: False)
    prepared, device, notes = prepare_on(model, device, predict_config.mixed_precision)
    predictor = AdaptivePredictor(
        prepared,
        device,
        num_classes,
        tolerance=predict_config.depth_tolerance,
        threshold=predict_config.threshold,
        mixed_precision=predict_config.mixed_precision,
    )
    items = list(np.ndindex(*layout.lead_shape))
    starts = tiling.tile_grid(layout.spatial_shape, tile, predict_config.overlap, multiple)
    total = len(starts) * len(items)

    def event(kind: str, step: int, item: int, message: str = "", eta: float | None = None):
        return inf.PredictEvent(
            kind,
            step,
            total,
            message,
            eta,
            (deepest,),
            str(device),
            item,
            len(items),
            predict_config.batch_size,
        )

    yield event(
        "start",
        0,
        0,
        f"adaptive depth (tolerance {predict_config.depth_tolerance}) "
        f"on {device}{precision_note(prepared, device, predict_config.mixed_precision)}, "
        f"{total} tile(s) of {tile}",
    )
    for message in notes:
        yield event("fallback", 0, 0, message)
    if stopped():
        return AdaptiveResult({}, complete=False)
    normalise = inf._normaliser(image, data_config)
    arrays, group = stores.allocate_outputs(
        (deepest,), output_shape(shape, layout.channel_axis, num_classes), tile, out
    )
    maps: dict[str, np.ndarray] = {  # depths are small integers: uint8, as the CLI writes them
        "depth": np.zeros(layout.shape_without_channels, np.uint8),
        "disagreement": np.zeros(layout.shape_without_channels, np.float32),
    }
    sizes = layout.spatial_shape
    blend_on = device if device.type == "cpu" else None  # torch on the host, as predict
    tile_depths: dict[tuple[int, ...], np.ndarray] = {}
    clock, done, complete = EtaClock(), 0, True
    for n, lead in enumerate(items):
        sinks = {
            "probabilities": ItemSink(arrays[deepest], lead, num_classes == 1),
            "disagreement": ItemSink(maps["disagreement"], lead, True),
        }
        first = len(predictor.depths_used)
        gen = tiling.iter_sliding_window(
            predictor,
            ItemView(image, layout, lead, normalise),
            tile,
            predict_config.overlap,
            predict_config.batch_size,
            predict_config.blending,
            align=multiple,
            allocate=_allocator(sinks),
            should_stop=stopped,
            accumulate_on=blend_on,  # as ordinary prediction: tolerance 0 gives its bits
        )
        for progress in gen:
            step = done + progress.done
            yield event("tiles", step, n, eta=clock.update(step, total))
        done += len(starts)
        used = predictor.depths_used[first:]
        tile_depths[lead] = _paint(maps["depth"][lead], starts, used, tile, sizes)
        if stopped():
            complete = False
            break
    if group is not None:
        mark_complete(group, complete)  # the mark readers check (stores.py)
    result = _result(
        arrays,
        maps,
        tile_depths,
        predictor.depths_used,
        model.config,
        complete,
        out,
        time.perf_counter() - started,
    )
    yield event(
        "done" if complete else "stopped",
        min(done, total),
        len(items) - 1,
        result.summary() if complete else "stopped: the result is partial",
    )
    return result


def _result(
    arrays: dict[int, Any],
    maps: dict[str, np.ndarray],
    tile_depths: dict[tuple[int, ...], np.ndarray],
    used: list[int],
    config: ModelConfig,
    complete: bool,
    out: str | Path | None,
    seconds: float,
) -> AdaptiveResult:
    fractions = depth_cost_fractions(config)
    counts = {d: used.count(d) for d in sorted(set(used))}
    cost = float(np.mean([fractions[d] for d in used])) if used else 1.0
    return AdaptiveResult(
        arrays,
        complete,
        Path(out) if out is not None else None,
        depth_map=maps["depth"],
        disagreement=maps["disagreement"],
        tile_depths=tile_depths,
        tiles_per_depth=counts,
        cost_fraction=cost,
        seconds=seconds,
    )
