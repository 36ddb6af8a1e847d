"""Camera defect pixels (hot and dead): found from the intensity levels, repaired along rows.

Why (issue 14): sCMOS and CCD cameras have isolated pixels stuck far above (hot, often at
the dtype maximum 65535 or 4095) or below (dead) the rest. 0.5 % hot pixels at 65535 in
a uint16 fluorescence image put the 99.8th percentile on them, so every nucleus mapped
to ~0; and even with the clean image's range, the spikes themselves cut the shipped
nuclei model's foreground IoU from 0.89 to 0.17 (0.1 %: 0.50). Replacing them by their
row neighbours gave back 0.89 (docs/benchmarks.md, "Hostile camera data").

How they are told from real bright (or dark) objects, all of these needed:

- *far*: the defects' levels sit above the rest with a gap of empty levels at least
  :data:`FAR` of the rest's whole range and :data:`MIN_STEPS` of the image's level
  spacing (real objects form a continuous tail of levels; 12-bit data stored x16 has a
  spacing of 16, and a noise floor one step below the next level is no gap);
- *tight and stuck*: they span less than that gap, and one of their levels holds at least
  :data:`MIN_PIXELS` sampled pixels (noise extremes of a float image never repeat);
- *rare*: at most :data:`MAX_FRACTION` of the pixels;
- *isolated*: most of them have neither neighbour along the row (in the subsample, of
  the same channel) among them.
  Saturated nuclei, a binary mask or drawn discs are blobs and never count.

Plain numpy; :mod:`normalization` uses it for the intensity range and the tile input.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["Defects", "find_defects", "repair_rows", "tails"]

#: At most this fraction of the (sampled) pixels may be defects: more is the image itself.
MAX_FRACTION = 0.05
#: The gap below hot levels (above dead ones) must be at least this fraction of the rest's
#: range (without the other side's defects): a bright image's tail has no such hole. The
#: hostile copies' smallest were 0.1 (dead pixels at 0 below a camera bias of 100, nuclei
#: up to 1100) and 0.11 (hot pixels at 4095 above 12-bit nuclei reaching 3696).
FAR = 0.05
#: ... and at least this many times the image's level spacing (the median difference of
#: neighbouring levels).
MIN_STEPS = 4
#: One of the defects' levels must hold at least this many sampled pixels.
MIN_PIXELS = 3
#: At least this fraction of the defect pixels must have no defect neighbour.
MIN_ISOLATED = 0.5
#: Runs of defect pixels along a row up to this long are repaired; longer runs (a
#: saturated blob's row, a bad row) are kept as they are; a bad column is repaired.
MAX_RUN = 3
#: Pixels of rows repaired at once by :func:`repair_rows`.
REPAIR_BLOCK = 1 << 20


@dataclass(frozen=True)
class Defects:
    """Hot pixels lie above ``above``, dead ones below ``below`` (None: no such side).

    ``hot`` / ``dead``: how many of the ``sampled`` pixels they are.
    """

    above: float | None
    below: float | None
    hot: int
    dead: int
    sampled: int

    def keep(self, values: np.ndarray) -> np.ndarray:
        """True where ``values`` are not defects (NaN included: non-finite pixels are
        :mod:`nonfinite`'s to fill)."""
        return ~self.bad(values)

    def bad(self, values: np.ndarray) -> np.ndarray:
        """True where ``values`` are defects."""
        bad = np.zeros(values.shape, bool)
        if self.above is not None:
            bad |= values > self.above
        if self.below is not None:
            bad |= values < self.below
        return bad

    def describe(self, size: int) -> str:
        """What was found and done, for an image of ``size`` pixels (the user's warning)."""
        parts = []
        for count, kind, bound in ((self.hot, "hot", self.above), (self.dead, "dead", self.below)):
            if count:
                share = count / self.sampled
                where = "above" if kind == "hot" else "below"
                parts.append(
                    f"about {max(round(share * size), 1)} isolated {kind} pixels "
                    f"({100 * share:.2g} %, {where} {bound:g})"
                )
        return (
            f"the image has {' and '.join(parts)}, as from a camera's defect pixels: they were "
            "left out of the intensity range and replaced by their row neighbours"
        )

    def warn(self, size: int) -> None:
        """Tell the user (the widget shows engine warnings, the command line prints them)."""
        warnings.warn(self.describe(size), stacklevel=3)


def _cut(levels: np.ndarray, counts: np.ndarray, total: int, step: float) -> int | None:
    """Index ``j``: ``levels[j:]`` are far, tight, stuck and rare top levels, or None.

    ``levels``: ascending, the sample's lowest first; ``counts``: theirs.
    """
    at_or_above = np.cumsum(counts[::-1])[::-1]
    stuck = np.maximum.accumulate(counts[::-1])[::-1]  # the most pixels at one level from there up
    j = np.flatnonzero((at_or_above <= MAX_FRACTION * total) & (stuck >= MIN_PIXELS))
    j = j[j >= 1]
    if j.size == 0:
        return None
    gap = levels[j] - levels[j - 1]
    spread = levels[-1] - levels[j]
    extent = levels[j - 1] - levels[0]  # the rest's range (0 for a binary image: never)
    ok = (gap > spread) & (extent > 0) & (gap >= FAR * extent) & (gap >= MIN_STEPS * step)
    if not ok.any():
        return None
    return int(j[ok][np.argmax(gap[ok])])


def _sides(
    levels: np.ndarray, counts: np.ndarray, total: int, step: float
) -> tuple[int | None, int | None]:
    """``(top, bottom)``: hot levels are ``levels[top:]``, dead ones ``levels[:bottom]``.

    Each side's range is taken without the other side's defects (hot pixels at 65535 would
    make a gap below dead pixels look narrow), so the side found first is left out.
    """
    n = levels.size
    top = _cut(levels, counts, total, step)
    stop = n if top is None else top
    flipped = _cut(-levels[:stop][::-1], counts[:stop][::-1], total, step)
    bottom = None if flipped is None else stop - flipped
    if top is None and bottom is not None:
        top = _cut(levels[bottom:], counts[bottom:], total, step)
        top = None if top is None else bottom + top
    return top, bottom


def _isolated(mask: np.ndarray, stride: int) -> float:
    """The fraction of ``mask``'s pixels with neither neighbour (``stride`` values away in the
    flat ``mask``: the pixel's channel count when channels are last) in it."""
    alone = mask.copy()
    alone[stride:] &= ~mask[:-stride]
    alone[:-stride] &= ~mask[stride:]
    return float(alone.sum()) / max(int(mask.sum()), 1)


def find_defects(
    sample: np.ndarray, levels: np.ndarray, counts: np.ndarray, stride: int = 1
) -> Defects | None:
    """Hot and dead pixels of a flat ``sample`` whose distinct values and their counts are
    ``levels`` (ascending) and ``counts`` (all of them, or its two tails with one more level
    each, :func:`tails`). ``stride``: how far apart neighbouring pixels of one channel lie in
    ``sample`` (its channels when they are its last axis). None when there are none (the
    usual case)."""
    total = int(sample.size)
    if levels.size < 3:
        return None
    step = float(np.median(np.diff(levels)))
    top, bottom = _sides(levels, counts, total, step)
    above = float(levels[top - 1]) if top is not None else None
    below = float(levels[bottom]) if bottom is not None else None
    hot = dead = 0
    if above is not None:
        mask = sample > above
        if _isolated(mask, stride) >= MIN_ISOLATED:
            hot = int(mask.sum())
        else:
            above = None
    if below is not None:
        mask = sample < below
        if _isolated(mask, stride) >= MIN_ISOLATED:
            dead = int(mask.sum())
        else:
            below = None
    if above is None and below is None:
        return None
    return Defects(above, below, hot, dead, total)


def tails(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and counts of a float ``sample``'s two tails of :data:`MAX_FRACTION`
    (one value more each): what :func:`find_defects` reads, from one partition instead of a
    sort of the whole sample."""
    n = sample.size
    k = int(MAX_FRACTION * n) + 1
    if 2 * k + 2 >= n:
        return np.unique(sample, return_counts=True)
    part = np.partition(sample, [k, n - 1 - k])
    return np.unique(np.concatenate([part[: k + 1], part[n - 1 - k :]]), return_counts=True)


def repair_rows(band: np.ndarray, defects: Defects) -> np.ndarray:
    """``band`` with its defect pixels (runs of at most :data:`MAX_RUN` along the last axis)
    replaced by the mean of the nearest good pixels left and right in the row.

    Why rows: tiled inference reads bands of whole rows, so each band is repaired exactly
    as the whole image would be. A copy only when something is repaired; rows are worked
    on in blocks of about :data:`REPAIR_BLOCK` pixels, so the temporaries stay small.
    """
    bad = defects.bad(band)
    if not bad.any():
        return band
    out = np.array(band, copy=True, order="C")  # C order: the row view below is a view
    width = out.shape[-1]
    rows, bad_rows = out.reshape(-1, width), bad.reshape(-1, width)  # views of the copies
    step = max(REPAIR_BLOCK // max(width, 1), 1)
    for start in range(0, rows.shape[0], step):
        block = slice(start, start + step)
        if bad_rows[block].any():
            _repair_block(rows[block], bad_rows[block])
    return out


def _repair_block(rows: np.ndarray, bad: np.ndarray) -> None:
    """:func:`repair_rows` on a 2D block of rows, in place."""
    width = rows.shape[-1]
    long = bad.copy()  # pixels of runs longer than MAX_RUN stay: first mark their last pixels
    for shift in range(1, MAX_RUN + 1):
        long[:, shift:] &= bad[:, :-shift]
    long[:, :MAX_RUN] = False  # (no run that long ends this close to the row's start)
    for _ in range(MAX_RUN):
        long[:, :-1] |= long[:, 1:]
    index = np.arange(width)
    left = np.maximum.accumulate(np.where(bad, -1, index), axis=-1)
    right = np.minimum.accumulate(np.where(bad, width, index)[:, ::-1], axis=-1)[:, ::-1]
    fix = bad & ~long & ((left >= 0) | (right < width))
    y, x = np.nonzero(fix)
    lv = rows[y, np.maximum(left[y, x], 0)].astype(np.float64)
    rv = rows[y, np.minimum(right[y, x], width - 1)].astype(np.float64)
    lv, rv = np.where(left[y, x] >= 0, lv, rv), np.where(right[y, x] < width, rv, lv)
    mean = (lv + rv) / 2
    rows[y, x] = np.round(mean) if rows.dtype.kind in "biu" else mean
