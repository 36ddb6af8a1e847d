"""Adaptive depth: per tile, run the shallow heads first and go deeper only where they disagree.

Why: a deeply supervised UNet++ holds four predictions of one image, and the
nested graph makes them incremental: head ``d + 1`` needs every node of head
``d`` plus the nodes with ``i + j = d + 1``. :class:`NestedForward` caches the
node outputs ``X[i, j]`` of a tile batch and computes only the new nodes when a
deeper head is asked for, so going from L2 to L3 costs exactly the L3-only nodes.
:class:`AdaptivePredictor` stops a tile at depth ``d`` when the labels of L(d-1)
and L(d) differ on fewer than ``tolerance`` of its pixels (strictly fewer: a
tolerance of 0 never stops early, so it reproduces the deepest head exactly);
tiles that keep changing go on to the deepest head. Past L2 a tile runs only on
its box (:func:`tiling.owned_boxes`: where its blending weight outweighs every
neighbour's) and keeps L2 elsewhere: :class:`RegionForward` computes the deeper
nodes there with the halos their convolutions need, so the head's values on the
box are the whole tile's (on the EM test slices, tiles of 256, this halved the
deeper heads' work; docs/benchmarks.md). The decisions are taken on the box too.

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
from .postprocess import label_threshold
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


Box = tuple[tuple[int, int], ...]  # (start, stop) per spatial axis


def _grow(box: Box, k: int, sizes: tuple[int, ...]) -> Box:
    """``box`` grown by ``k`` on every side, clipped to the level's ``sizes``, rounded out to
    even bounds (so its half is the box of the level below, and ``up`` doubles it back)."""
    out = []
    for (a, b), n in zip(box, sizes, strict=True):
        a, b = max(a - k, 0), min(b + k, n)
        out.append((a - a % 2, min(b + b % 2, n)))
    return tuple(out)


def _inside(inner: Box, outer: Box) -> bool:
    return all(a >= c and b <= d for (a, b), (c, d) in zip(inner, outer, strict=True))


def _union(a: Box, b: Box) -> Box:
    return tuple((min(x, z), max(y, w)) for (x, y), (z, w) in zip(a, b, strict=True))


def _cut(t: torch.Tensor, box: Box) -> torch.Tensor:
    """``t[:, :, box]``: a view of a batch's spatial ``box``."""
    index = (slice(None), slice(None)) + tuple(slice(a, b) for a, b in box)
    return t[index]


def _area(box: Box) -> int:
    return int(np.prod([b - a for a, b in box]))


class RegionForward:
    """The heads of one tile on a box of it: the deeper nodes run on that box and a halo.

    Why: a tile's output counts only where its blending weight is the largest (its
    :func:`tiling.owned_boxes` box); elsewhere a neighbour outweighs it. The nodes that
    :class:`NestedForward` computed on the whole tile (``full``) are cut to what each new
    node needs; a new node ``X[i, j]`` runs on its box grown by 2 (its two 3x3
    convolutions), so it is exact there, and the box halves level by level down the
    graph. Where a grown box meets the tile's border the padding is the whole tile's
    padding: the head's values on the box equal the whole tile's, to float rounding.
    ``macs``: the multiply-adds run, per pixel of the tile, in :func:`_node_macs` units.
    """

    def __init__(self, net: UNetPlusPlus, full: dict[tuple[int, int], torch.Tensor]) -> None:
        self.net = net
        self.full = full  # whole-tile nodes, batch of one
        self.crops: dict[tuple[int, int], tuple[torch.Tensor, Box, Box]] = {}
        self.sizes = tuple(int(n) for n in full[0, 0].shape[2:])
        self.macs = 0.0

    def head(self, depth: int, box: Box, ahead: int | None = None) -> torch.Tensor:
        """Logits of head ``depth`` on ``box`` (tile coordinates), ``(1, C, *box)``.

        ``ahead``: a deeper head that may be asked for next on the same box; its nodes
        need wider halos of the shared ones, which are computed that wide now (else
        they would run again).
        """
        plan = self._plan(ahead or depth, box)
        for i, j in nodes_for_depth(depth):
            self._ensure(i, j, plan[i, j])
        return self.net.heads[head_name(depth)](self._get(0, depth, box))

    def _plan(self, depth: int, box: Box) -> dict[tuple[int, int], Box]:
        """Where each node must be exact for head ``depth`` on ``box`` (consumers first)."""
        need = {(0, depth): box}
        for i, j in reversed(nodes_for_depth(depth)):
            if (i, j) in self.full or (i, j) not in need:
                continue
            where = _grow(need[i, j], 2, self._level(i))
            if j == 0:
                inputs = [((i - 1, 0), tuple((2 * a, 2 * b) for a, b in where))]
            else:
                half = tuple((a // 2, (b + 1) // 2) for a, b in where)
                inputs = [((i, k), where) for k in range(j)] + [((i + 1, j - 1), half)]
            for key, region in inputs:
                need[key] = _union(need[key], region) if key in need else region
        return need

    def _level(self, i: int) -> tuple[int, ...]:
        return tuple(n >> i for n in self.sizes)

    def _get(self, i: int, j: int, box: Box) -> torch.Tensor:
        if (i, j) in self.full:
            return _cut(self.full[i, j], box)
        out, where, _ = self.crops[i, j]
        return _cut(out, tuple((a - c, b - c) for (a, b), (c, _) in zip(box, where, strict=True)))

    def _ensure(self, i: int, j: int, box: Box) -> None:
        """Compute ``X[i, j]`` so that it is exact on ``box`` (level-``i`` coordinates)."""
        if (i, j) in self.full:
            return
        if (i, j) in self.crops:
            exact = self.crops[i, j][2]
            if _inside(box, exact):
                return
            box = _union(box, exact)  # a deeper head asks for more: run it once on both
        sizes = self._level(i)
        where = _grow(box, 2, sizes)
        node = self.net.nodes[node_name(i, j)]
        if j == 0:  # encoder: pool of the level above, exact wherever its input is
            twice = tuple((2 * a, 2 * b) for a, b in where)
            self._ensure(i - 1, 0, twice)
            out = node(self.net.pool(self._get(i - 1, 0, twice)))
        else:
            half = tuple((a // 2, (b + 1) // 2) for a, b in where)
            for k in range(j):
                self._ensure(i, k, where)
            self._ensure(i + 1, j - 1, half)
            out = node([self._get(i, k, where) for k in range(j)], self._get(i + 1, j - 1, half))
        exact = tuple(
            (a if a == 0 else a + 2, b if b == n else b - 2)
            for (a, b), n in zip(where, sizes, strict=True)
        )
        self.crops[i, j] = (out, where, exact)
        share = _area(where) / float(np.prod(sizes))
        self.macs += _node_macs(self.net.config, i, j) * share


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

#: Pixels added around a tile's box (:func:`tiling.owned_boxes`) before its heads past L2
#: run there (rounded out to the pooling grid).
OWNED_MARGIN = 0


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
        boxes: list[Box] | None = None,
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
        self.boxes = list(boxes) if boxes else None
        self.depths_used: list[int] = []
        self.costs: list[float] = []  # per tile: multiply-adds run / the deepest head's

    def __call__(self, batch: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, network_dtype(self.net))
        with (
            torch.inference_mode(),
            inference_autocast(self.net, self.device, self.mixed_precision),
        ):
            forward = NestedForward(self.net, x)
            if self.boxes is not None and forward.x.shape == x.shape:  # no padding added
                return self._adapt_boxes(forward, len(batch))
            return self._adapt(forward, len(batch))

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
        depths = [int(d) for d in used.cpu()]
        self.depths_used.extend(depths)
        fractions = depth_cost_fractions(self.net.config)
        self.costs.extend(fractions[d] for d in depths)
        return {"probabilities": final, "disagreement": spread}

    def _adapt_boxes(self, forward: NestedForward, n: int) -> dict[str, torch.Tensor]:
        """:meth:`_adapt` with the heads past L2 run on each tile's box only (``boxes``).

        L1 and L2 run on the whole batch of tiles; a tile whose labels still change
        between them (on its box) goes on alone, its deeper heads computed by a
        :class:`RegionForward` on its box; outside the box it keeps L2, which the
        neighbouring tiles outweigh there.
        """
        assert self.boxes is not None
        first = len(self.depths_used)
        boxes = [self.boxes[(first + k) % len(self.boxes)] for k in range(n)]
        config = self.net.config
        unit = sum(_node_macs(config, i, j) for i, j in nodes_for_depth(config.depth))
        unit += config.widths[0] * config.num_classes * config.depth
        base = depth_cost_fractions(config)[2]
        p1 = _activate(forward.head(1), self.num_classes)
        prob = _activate(forward.head(2), self.num_classes)
        low, high = torch.minimum(p1, prob), torch.maximum(p1, prob)
        for k, box in enumerate(boxes):
            index = (slice(k, k + 1), slice(None), *(slice(a, b) for a, b in box))
            depth = 2
            change = label_change(p1[index], prob[index], self.num_classes, self.threshold)
            if self.min_depth > 2 or float(change) >= self.tolerance:
                depth, macs = self._deeper(forward, k, box, index, prob, low, high)
            else:
                macs = 0.0
            self.depths_used.append(depth)
            self.costs.append(base + macs / unit)
        return {"probabilities": prob, "disagreement": _spread(low, high)}

    def _deeper(
        self,
        forward: NestedForward,
        k: int,
        box: Box,
        index: tuple[slice, ...],
        prob: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
    ) -> tuple[int, float]:
        """Heads 3.. of tile ``k`` on its ``box``, written into ``prob`` / ``low`` / ``high``
        there; returns the depth it stopped at and the multiply-adds run for it."""
        region = RegionForward(self.net, {key: v[k : k + 1] for key, v in forward.features.items()})
        previous = prob[index].clone()  # prob[index] is overwritten below
        share = _area(box) / float(np.prod(region.sizes))
        heads = 0.0
        for d in range(3, self.net.depth + 1):
            current = _activate(region.head(d, box, self.net.depth), self.num_classes)
            heads += self.net.config.widths[0] * self.num_classes * share
            low[index] = torch.minimum(low[index], current)
            high[index] = torch.maximum(high[index], current)
            prob[index] = current
            if d == self.net.depth or (
                d >= self.min_depth
                and float(label_change(previous, current, self.num_classes, self.threshold))
                < self.tolerance
            ):
                return d, region.macs + heads
            previous = current
        return self.net.depth, region.macs + heads


# --------------------------------------------------------------------------- predict


class AdaptiveResult(PredictResult):
    """``{deepest depth: probabilities}`` of an adaptive run, plus its maps and costs.

    Keyed by the deepest depth so every consumer of :class:`inference.PredictResult`
    (labels, the CLI's files) takes the adaptive probabilities as "the" result.
    ``depth_map``: depth used per pixel (the deepest tile where tiles overlap; of the
    tile whose box holds it, when the heads past L2 ran on boxes), the image
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
    boxes: list[Box] | None = None,
) -> np.ndarray:
    """Paint each tile's depth over its pixels (the deeper tile wins where tiles overlap);
    with ``boxes``, over its box only (past L2 it ran there alone).

    Returns the same depths on the tile grid (``int8``, 0 for tiles not reached).
    """
    grid_shape = tuple(len({s[k] for s in starts}) for k in range(len(starts[0])))
    grid = np.zeros(grid_shape, np.int8)
    grid.flat[: len(used)] = used
    for k, (start, depth) in enumerate(zip(starts, used, strict=False)):  # a stopped run: fewer
        box = boxes[k] if boxes is not None else tuple((0, t) for t in tile)
        region = tuple(
            slice(s + a, min(s + b, n)) for s, (a, b), n in zip(start, box, sizes, strict=True)
        )
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
    items = list(np.ndindex(*layout.lead_shape))
    starts = tiling.tile_grid(layout.spatial_shape, tile, predict_config.overlap, multiple)
    # past L2 a tile runs only where its blending weight is the largest (a tolerance of 0
    # keeps whole tiles: the deepest head exactly; constant blending has no such box)
    boxes = (
        tiling.owned_boxes(starts, tile, layout.spatial_shape, OWNED_MARGIN, multiple)
        if predict_config.depth_tolerance > 0 and predict_config.blending == "gaussian"
        else None
    )
    predictor = AdaptivePredictor(
        prepared,
        device,
        num_classes,
        tolerance=predict_config.depth_tolerance,
        threshold=label_threshold(model.config, predict_config.threshold),
        mixed_precision=predict_config.mixed_precision,
        boxes=boxes,
    )
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
        tile_depths[lead] = _paint(maps["depth"][lead], starts, used, tile, sizes, boxes)
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
        predictor.costs,
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
    costs: list[float],
    complete: bool,
    out: str | Path | None,
    seconds: float,
) -> AdaptiveResult:
    counts = {d: used.count(d) for d in sorted(set(used))}
    cost = float(np.mean(costs)) if costs else 1.0
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
