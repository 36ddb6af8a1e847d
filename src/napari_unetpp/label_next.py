"""Where to label next: blocks of the image ranked by the deepest head's doubt.

Why apart from :mod:`disagreement`: the maps there say how the heads differ per pixel and
which depth holds; this module turns one head's doubt into a short list of blocks for a
person to paint ("label here next": the Segment dock's numbered Shapes layer and
``predict --disagreement``'s ``_regions.json``). Everything takes per-depth probabilities
as :func:`inference.predict` returns them (``{depth: (C?, *shape)}``), or any per-pixel
score map, so the blocks come from the pass that produced the segmentation.

Example
-------
>>> import numpy as np
>>> from napari_unetpp.disagreement import disagreement_map
>>> probs = {1: np.full((8, 8), 0.2, "float32"), 2: np.full((8, 8), 0.6, "float32")}
>>> rank_regions(disagreement_map(probs, 1), (4, 4), top=1)[0].score > 0.39
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .config import NormalizationConfig

__all__ = [
    "LABEL_NEXT_COUNT",
    "NEGLIGIBLE_DOUBT",
    "Ranking",
    "Region",
    "label_here_next",
    "margin_doubt",
    "rank_regions",
    "region_size",
]


@dataclass(frozen=True)
class Region:
    """A block of the image to label next: ``item`` (leading index, e.g. slice), where, score."""

    item: tuple[int, ...]
    start: tuple[int, ...]
    size: tuple[int, ...]
    score: float

    @property
    def index(self) -> tuple[Any, ...]:
        """Index of the block into an array of the image's shape (without channels)."""
        return self.item + tuple(
            slice(s, s + n) for s, n in zip(self.start, self.size, strict=True)
        )


def margin_doubt(prob: Any, num_classes: int) -> np.ndarray:
    """Per pixel, 1 - (top class - runner-up) of one head: 1 on its decision boundary, 0 when sure.

    Why: the head the user keeps makes the mistakes that labels must fix; its
    margin is the classic uncertainty-sampling score and tracks its errors.
    """
    p = np.asarray(prob, np.float32)
    if num_classes == 1:
        return (1 - np.abs(2 * p - 1)).astype(np.float32)
    top2 = np.partition(p, p.shape[0] - 2, axis=0)[-2:]
    return (1 - (top2[1] - top2[0])).astype(np.float32)


#: How many blocks "label here next" gives, in the Segment dock and ``predict --disagreement``
#: alike: the count measured in ``bench_depth.py labelling`` (at 16 it lost to random on EM).
#: Why one number: the blocks are the best of ``top`` strata, so the dock's 8 were not the
#: first 8 of the command line's 10 (QA session 12: on a 720 x 720 nuclei image, 3 of the
#: dock's 8 were not among them; on 3 EM slices, 1).
LABEL_NEXT_COUNT = 8


def region_size(spatial_dims: int) -> tuple[int, ...]:
    """The block size "label here next" ranks: about what one paints in a minute."""
    return (128,) * spatial_dims if spatial_dims == 2 else (32, 64, 64)


#: Below this mean doubt in its most doubtful block, the deepest head is sure of the whole
#: image and no block is worth labelling more than another: the nuclei model's best block on
#: an empty field scored 0.0002, on each of 40 DSB images (every 10th, 128-px blocks) at
#: least 0.0068 (``benchmarks/bench_label_floor.py``, docs/benchmarks.md).
NEGLIGIBLE_DOUBT = 0.002


class Ranking(list[Region]):
    """:func:`label_here_next`'s blocks, best first; empty with :attr:`note` saying why when
    nothing in the image is worth labelling (a list, so every caller of the blocks works)."""

    note: str = ""

    @classmethod
    def refused(cls, why: str) -> Ranking:
        """No blocks, and why (the dock's status and the CLI's ``_regions.json`` say it)."""
        ranking = cls()
        ranking.note = f"nothing worth labelling here: {why}"
        return ranking


def label_here_next(
    probs: Mapping[int, Any],
    num_classes: int,
    region_size: Sequence[int],
    top: int = LABEL_NEXT_COUNT,
    threshold: float = 0.5,
    *,
    image: Any = None,
    normalization: NormalizationConfig | None = None,
) -> Ranking:
    """The ``top`` blocks to label next: doubt of the deepest head, spread over kinds of content.

    Each block scores by the deepest head's mean :func:`margin_doubt`. The blocks
    are split into ``top`` strata and the most doubtful block of each is taken (best
    first). On a stack of at least ``top`` items (slices, images) the strata are
    groups of items of similar predicted foreground fraction, so every pick lies in
    another item, the least-foreground items included; on fewer items, equal-count
    strata of the blocks' own foreground fraction.
    Why not the depths' disagreement: it is highest where the *shallow* heads
    fail and the deepest is right (on EM, dark organelles the shallow heads call
    membrane), and its top blocks repeat one structure on neighbouring slices;
    labels there taught the deepest head less than random blocks did
    (``benchmarks/bench_depth.py labelling``, docs/benchmarks.md). Why strata of
    items: doubt cannot see confident mistakes (darkened nuclei the model misses are
    sure background); strata of blocks crowded the picks into the few images the
    model half-sees, and random blocks taught more than they did.
    ``probs``: per-depth probabilities as :func:`inference.predict` returns them
    (only the deepest is used, so a pruned or adaptive result works too).

    Nothing is ranked (an empty :class:`Ranking` whose ``note`` says why) when nothing is
    worth labelling: ``image`` (with the model's ``normalization``) has no contrast
    (:func:`normalization.contrast_problem`: a constant field, where the EM model is unsure
    everywhere alike, 0.72-0.76 per block), or the deepest head is sure of every block
    (:data:`NEGLIGIBLE_DOUBT`: pure background). Ranked, such blocks were noise.
    """
    from .normalization import contrast_problem

    if image is not None and normalization is not None and top >= 1:
        problem = contrast_problem(image, normalization)
        if problem is not None:
            return Ranking.refused(problem)
    deepest = np.asarray(probs[max(probs)], np.float32)
    if num_classes == 1:
        foreground = deepest > threshold
    else:
        foreground = deepest.argmax(axis=0) > 0
    doubt = margin_doubt(deepest, num_classes)
    size = _block_size(region_size, doubt.shape)
    lead = doubt.shape[: doubt.ndim - len(size)]
    if top < 1 or int(np.prod(lead)) < top:  # one item (np.prod of () is 1) or a few
        ranked = rank_regions(doubt, size, top, strata=foreground)
    else:
        found, _ = _blocks(doubt, size, None)
        ranked = _stratified_items(found, foreground, lead, top)
    # the best block of the image is the best of its stratum: first, whatever the strata
    if ranked and ranked[0].score < NEGLIGIBLE_DOUBT:
        return Ranking.refused(
            f"the model is sure of every pixel (its most doubtful block's mean doubt is "
            f"{ranked[0].score:.4f}, below {NEGLIGIBLE_DOUBT}), so no block stands out; if its "
            "labels are wrong somewhere, paint there"
        )
    return Ranking(ranked)


def _stratified_items(
    found: list[Region], foreground: np.ndarray, lead: tuple[int, ...], count: int
) -> list[Region]:
    """The best block of each of ``count`` groups of items of similar foreground fraction."""
    items = sorted(np.ndindex(*lead), key=lambda item: float(foreground[item].mean()))
    groups = [{items[i] for i in g} for g in np.array_split(np.arange(len(items)), count)]
    best = [max((r for r in found if r.item in group), key=lambda r: r.score) for group in groups]
    return sorted(best, key=lambda r: -r.score)


def rank_regions(
    disagreement: np.ndarray,
    region_size: Sequence[int],
    top: int = 10,
    spread: bool = False,
    strata: np.ndarray | None = None,
) -> list[Region]:
    """The ``top`` blocks of ``region_size`` (the last axes) with the highest mean score.

    ``disagreement``: any per-pixel score (the depths' disagreement, or
    :func:`margin_doubt`). Blocks tile each item (slice / volume) without
    overlap; partial blocks at the border count with their own mean.

    ``strata``: a per-pixel map of the same shape (e.g. the predicted
    foreground); the blocks are sorted by its block mean into ``top`` strata of
    equal count and the best block of each stratum is taken, so the picks cover
    every kind of content instead of one kind (uncertainty with
    representativeness, as in active learning). Returned best first.

    ``spread``: pick for coverage as well as doubt: no two chosen blocks touch,
    and the items (slices) take turns, each giving its best remaining block per
    round.
    """
    size = _block_size(region_size, disagreement.shape)
    if strata is not None and np.shape(strata) != disagreement.shape:
        raise ValueError(
            f"strata of shape {np.shape(strata)} must match the map's {disagreement.shape}"
        )
    count = max(int(top), 0)
    found, kinds = _blocks(disagreement, size, strata)
    if strata is not None:
        return _stratified(found, kinds, count)
    found.sort(key=lambda r: -r.score)
    return _spread_out(found, size, count) if spread else found[:count]


def _block_size(region_size: Sequence[int], shape: tuple[int, ...]) -> tuple[int, ...]:
    """``region_size`` as ints, or why it does not fit a map of ``shape``."""
    size = tuple(int(s) for s in region_size)
    if not size or len(size) > len(shape) or any(s < 1 for s in size):
        raise ValueError(
            f"region_size {tuple(region_size)}: give one positive size per "
            f"spatial axis of a map of shape {shape}, e.g. (128, 128)"
        )
    return size


def _blocks(
    score: np.ndarray, size: tuple[int, ...], strata: np.ndarray | None
) -> tuple[list[Region], list[float]]:
    """Every block as a :class:`Region` (mean score), and its mean of ``strata`` (if given)."""
    dims = len(size)
    lead_shape, spatial = score.shape[:-dims], score.shape[-dims:]
    found: list[Region] = []
    kinds: list[float] = []
    for item in np.ndindex(*lead_shape):
        plane = score[item]
        for start in np.ndindex(*(-(-n // s) for n, s in zip(spatial, size, strict=True))):
            corner = tuple(k * s for k, s in zip(start, size, strict=True))
            index = tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))
            block = plane[index]
            found.append(Region(item, corner, tuple(block.shape), float(block.mean())))
            if strata is not None:
                kinds.append(float(np.mean(strata[item][index])))
    return found, kinds


def _stratified(found: list[Region], kinds: list[float], count: int) -> list[Region]:
    """The best block of each of ``count`` equal-count strata of ``kinds``, best first."""
    if count == 0 or not found:
        return []
    order = np.argsort(np.asarray(kinds), kind="stable")
    groups = np.array_split(order, min(count, len(found)))
    best = [max((found[i] for i in g), key=lambda r: r.score) for g in groups]
    return sorted(best, key=lambda r: -r.score)


def _spread_out(ranked: list[Region], size: tuple[int, ...], count: int) -> list[Region]:
    """Best-first picks, items taking turns, never a block next to one already chosen."""
    by_item: dict[tuple[int, ...], list[Region]] = {}
    for region in ranked:
        by_item.setdefault(region.item, []).append(region)
    order = sorted(by_item, key=lambda item: -by_item[item][0].score)
    taken: dict[tuple[int, ...], list[tuple[int, ...]]] = {item: [] for item in order}
    chosen: list[Region] = []

    def touches(item: tuple[int, ...], block: tuple[int, ...]) -> bool:
        return any(max(abs(a - b) for a, b in zip(block, t, strict=True)) <= 1 for t in taken[item])

    while len(chosen) < count and any(by_item.values()):
        for item in order:
            queue = by_item[item]
            while queue:
                region = queue.pop(0)
                block = tuple(c // s for c, s in zip(region.start, size, strict=True))
                if not touches(item, block):
                    taken[item].append(block)
                    chosen.append(region)
                    break
            if len(chosen) == count:
                break
    return chosen
