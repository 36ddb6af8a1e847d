"""Raw image intensities to network input: checks, normalisation, channels, colour.

Why one module: inference must normalise exactly as training did (the same
percentiles, window and grey), so the widget, the CLI, the trainer and tiled
inference all call these. Plain numpy (no torch): cheap to import, easy to test.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .config import NormalizationConfig
from .defects import Defects, find_defects, repair_rows, tails

__all__ = [
    "as_list",
    "as_model_input",
    "check_numeric",
    "check_pair",
    "contrast_problem",
    "intensity_range",
    "range_and_defects",
    "repaired",
    "looks_rgb",
    "normalize",
    "repair_image",
    "rgb_to_grey",
    "spatial_shape",
    "subsample",
    "TileNormaliser",
    "to_channels_first",
]

#: Percentiles of images larger than this are computed on a strided subsample.
PERCENTILE_SAMPLE_SIZE = 1_000_000

ArrayLike = Any  # numpy, dask or zarr arrays: anything np.asarray accepts


# --------------------------------------------------------------------------- input checks


def check_numeric(array: ArrayLike, what: str) -> None:
    """Refuse complex, object or string arrays with a hint, before any conversion."""
    # never np.asarray a dask/zarr array just to read its dtype (it would load it whole)
    dtype = getattr(array, "dtype", None)
    dtype = np.dtype(dtype) if dtype is not None else np.asarray(array).dtype
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{what} has unsupported dtype {dtype}; convert it to an integer or float "
            "array (e.g. image.astype('float32'))"
        )


def as_list(arrays: ArrayLike | Sequence[ArrayLike]) -> list[ArrayLike]:
    """One array, or a sequence of them, as a list (callers accept both)."""
    if hasattr(arrays, "shape"):
        return [arrays]
    return list(arrays)


# --------------------------------------------------------------------------- normalisation


def _plane_key(index: list[slice], axis: int, i: int) -> tuple[slice | int, ...]:
    """``index`` with plane ``i`` picked on ``axis``."""
    return (*index[:axis], i, *index[axis + 1 :])


def subsample(image: ArrayLike, limit: int = PERCENTILE_SAMPLE_SIZE) -> np.ndarray:
    """A strided subsample of at most ~``limit`` values, read one plane at a time.

    Axes of at most 4 elements (colour channels) are kept whole, so an RGB image
    keeps every colour; a dask or zarr stack is read plane by plane (a strided
    view of a whole dask stack at once held about twice the stack in memory).
    Training and tiled inference both call this, so they see the same percentiles.
    """
    shape = tuple(int(n) for n in image.shape)
    size = int(np.prod(shape))
    big = [axis for axis, n in enumerate(shape) if n > 4]
    if size <= limit or not big:
        return np.asarray(image).ravel()
    step = int(np.ceil((size / limit) ** (1.0 / len(big))))
    index = [slice(None, None, step) if axis in big else slice(None) for axis in range(len(shape))]
    first = big[0]
    if isinstance(image, np.ndarray):  # in memory: one strided copy, in the planes' order
        return np.moveaxis(image[tuple(index)], first, 0).ravel()
    planes = [
        np.asarray(image[_plane_key(index, first, i)]).ravel() for i in range(0, shape[first], step)
    ]
    return np.concatenate(planes)


def intensity_range(image: ArrayLike, config: NormalizationConfig) -> tuple[float, float]:
    """The ``(low, high)`` intensities that map to 0 and 1.

    Exposed separately so that tiled inference can compute it once on the whole
    image (or a subsample of it) and apply it to every tile. Camera defect pixels
    (:mod:`defects`) are left out of it.
    """
    return range_and_defects(image, config)[0]


def range_and_defects(
    image: ArrayLike, config: NormalizationConfig
) -> tuple[tuple[float, float], Defects | None]:
    """:func:`intensity_range` and the image's hot / dead pixels (None: none, the usual case).

    Why together: the range must leave the defects out (0.5 % hot pixels at 65535 put the
    99.8th percentile on them), and the tiles must then repair the same pixels
    (:class:`TileNormaliser`); one subsample and one count serve both. Percentile mode only:
    a fixed window keeps its meaning on any image.
    """
    check_numeric(image, "image")
    if config.mode == "window":
        return (float(config.low), float(config.high)), None
    if config.mode == "none":
        return (0.0, 1.0), None
    raw = subsample(image)
    counts = LevelCounts.of(raw)
    defects = _sample_defects(raw, counts, _pixel_stride(image.shape))
    if defects is not None:
        raw = raw[defects.keep(raw)]
        if counts is not None:
            kept = defects.keep(counts.levels)
            counts = LevelCounts(counts.levels[kept], counts.counts[kept])
    if counts is not None:  # integer levels: counted, exact, without sorting
        low, high = counts.percentile([config.low, config.high])
        if not _objects_missed(counts, config.min_foreground, (low, high)):
            return (float(low), float(high)), defects
    sample = raw.astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise ValueError("image has no finite values to normalise; check the input data")
    low, high = np.percentile(sample, [config.low, config.high])
    thinned = _with_min_foreground(sample, config.min_foreground, (low, high))
    if thinned is not None:
        low, high = np.percentile(thinned, [config.low, config.high])
    return (float(low), float(high)), defects


def repaired(image: ArrayLike, config: NormalizationConfig, channel_axis: int | None) -> ArrayLike:
    """``image`` with its camera defects repaired (in memory, with the user's warning), or
    ``image`` itself when it has none (the usual case).

    Why: an image resampled before prediction (``rescaled.py``) smears each hot pixel over
    its neighbours' levels, where it is no longer recognisable: at 0.5x, 0.5 % hot pixels
    cost the nuclei model 0.04 foreground IoU.
    """
    _, defects = range_and_defects(image, config)
    if defects is None:
        return image
    defects.warn(int(np.prod(image.shape)))
    return repair_image(image, defects, channel_axis)


def repair_image(image: ArrayLike, defects: Defects, channel_axis: int | None) -> np.ndarray:
    """``image`` with the pixels ``defects`` describes repaired along its rows (x), in its
    own layout (a dask worker's slice of a stack whose defects were found on the whole)."""
    fixed = repair_rows(to_channels_first(image, channel_axis), defects)  # rows along x
    return fixed[0] if channel_axis is None else np.moveaxis(fixed, 0, channel_axis)


def _pixel_stride(shape: Sequence[int]) -> int:
    """How many values of a :func:`subsample` lie between one pixel and the next of the same
    channel: the product of the trailing axes it keeps whole (channels last), else 1."""
    stride = 1
    for n in reversed(tuple(int(n) for n in shape)[1:]):
        if n > 4:
            break
        stride *= n
    return stride


def _sample_defects(raw: np.ndarray, counts: LevelCounts | None, stride: int = 1) -> Defects | None:
    """:func:`defects.find_defects` on a subsample: from its level counts when it has them
    (exact, no sort), else from its finite values' two tails."""
    if counts is not None:
        if counts.size < 64:
            return None
        return find_defects(raw, counts.levels, counts.counts, stride)
    sample = raw if raw.dtype.kind == "f" else raw.astype(np.float64)  # no copy of floats
    finite = np.isfinite(sample)
    if sample.size < 64 or not finite.any():
        return None
    if finite.all():
        return find_defects(sample, *tails(sample), stride)
    levels, number = tails(sample[finite])
    return find_defects(np.where(finite, sample, np.nan), levels, number, stride)


#: An integer image of at most this many neighbouring grey levels (1, 2, 3) holds too little
#: signal to segment (an under-exposed frame, a dark empty crop): its normalisation range
#: stretches the few steps to 0..1 and the model reads them as objects.
FEW_LEVELS = 3


def contrast_problem(
    image: ArrayLike,
    config: NormalizationConfig,
    value_range: tuple[float, float] | None = None,
) -> str | None:
    """Why ``image`` has too little contrast to segment, in words, or None when it has enough.

    Percentile mode only (a fixed window keeps its meaning on any image). A constant image
    (one sampled value), or an integer image of at most :data:`FEW_LEVELS` neighbouring grey
    levels (a crop of values 1..3 was segmented into 101 "nuclei"; a dim image in a big
    empty field keeps its objects' levels, and two far apart levels are contrast). Both
    inference's warning and the image check say this sentence.
    ``value_range``: the image's :func:`intensity_range` when already computed.
    """
    if config.mode != "percentile":
        return None
    low, high = value_range if value_range is not None else intensity_range(image, config)
    if low == high:
        return f"the image has no contrast (every sampled pixel is {low:g})"
    if high - low >= FEW_LEVELS:  # the levels in all span at least the range: not flat
        return None
    counts = LevelCounts.of(subsample(image))
    if counts is None:  # floats: their levels say nothing
        return None
    levels = int(counts.levels.size)  # in all: dim objects above the range still count
    span = float(counts.levels[-1] - counts.levels[0])
    if levels > FEW_LEVELS or span >= FEW_LEVELS:  # bright discs on a dark field: contrast
        return None
    shown = ", ".join(f"{v:g}" for v in counts.levels)
    return (
        f"the image has no contrast to speak of: only {levels} grey levels in all ({shown}; "
        "under-exposed, or an empty region)"
    )


class LevelCounts:
    """An integer sample as its distinct levels and their counts: order statistics in O(n).

    Why: ``np.percentile`` partitions a float64 copy of the ~1M-value sample, which
    took longer (tens of ms) than all the other host work of a tiled prediction of a
    few megapixels. uint8 / uint16 microscopy and int16 CT have few distinct levels,
    so one ``bincount`` gives the same percentiles, median and deviations, bit for bit.
    """

    #: integer samples spanning more levels than this are left to ``np.percentile``
    MAX_LEVELS = 1 << 20

    def __init__(self, levels: np.ndarray, counts: np.ndarray) -> None:
        self.levels = levels.astype(np.float64)
        self.counts = counts.astype(np.int64)
        self.cumulative = np.cumsum(self.counts)
        self.size = int(self.cumulative[-1]) if self.cumulative.size else 0

    @classmethod
    def of(cls, sample: np.ndarray) -> LevelCounts | None:
        """The counts of an integer sample with a small range; ``None`` otherwise."""
        if sample.dtype.kind not in "biu" or sample.size == 0:
            return None
        low, high = int(sample.min()), int(sample.max())
        if high - low >= cls.MAX_LEVELS:
            return None
        if sample.dtype.kind == "b":
            sample = sample.view(np.uint8)
        if sample.dtype.kind == "i":  # in the unsigned type of the same width the
            # difference wraps around to the exact offset (int8 127 - -128 = 255 overflowed)
            unsigned = sample.dtype.str.replace("i", "u")
            offset = sample.view(unsigned) - np.array(low, sample.dtype).view(unsigned)
        else:
            offset = sample - sample.dtype.type(low)  # exact, < MAX_LEVELS
        counts = _bincount(offset.ravel(), high - low + 1)
        present = np.flatnonzero(counts)
        levels = present.astype(sample.dtype) + sample.dtype.type(low)  # wraps back exactly
        return cls(levels, counts[present])

    def _order_statistic(self, ranks: np.ndarray) -> np.ndarray:
        return self.levels[np.searchsorted(self.cumulative, ranks, side="right")]

    def percentile(self, qs: Sequence[float]) -> np.ndarray:
        """``np.percentile(sample, qs)`` (method ``linear``), with numpy's own rounding."""
        virtual = (self.size - 1) * np.true_divide(np.asarray(qs, dtype=np.float64), 100)
        below = np.floor(virtual)
        gamma = virtual - below
        rank = below.astype(np.int64)
        a = self._order_statistic(rank)
        b = self._order_statistic(np.minimum(rank + 1, self.size - 1))
        out = a + (b - a) * gamma
        upper = gamma >= 0.5
        out[upper] = (b - (b - a) * (1 - gamma))[upper]
        return out

    def median_distance(self, centre: float) -> float:
        """``np.median(np.abs(sample - centre))``."""
        distance = np.abs(self.levels - centre)
        order = np.argsort(distance, kind="stable")
        return float(LevelCounts(distance[order], self.counts[order]).percentile([50])[0])

    def count_beyond(self, centre: float, margin: float) -> tuple[int, int]:
        """How many values lie more than ``margin`` above and below ``centre``."""
        distance = self.levels - centre
        return int(self.counts[distance > margin].sum()), int(self.counts[distance < -margin].sum())


def _bincount(offsets: np.ndarray, length: int) -> np.ndarray:
    """``np.bincount(offsets, minlength=length)`` of unsigned offsets, by torch when loaded.

    Why: numpy widens every value to 64 bits first; a 4 x 1024 x 1024 uint8 stack's
    subsample (468 k values) took 2.5 ms, torch's count of the bytes as they are 1.2 ms
    (uint16 through int32: 3.6 -> 2.1 ms), every prediction. Counts are exact either way.
    """
    torch = sys.modules.get("torch")
    if torch is None or offsets.dtype.itemsize > 2 or not offsets.dtype.isnative:
        return np.bincount(offsets.astype(np.intp), minlength=length)
    values = offsets if offsets.dtype == np.uint8 else offsets.astype(np.int32)
    return torch.bincount(torch.from_numpy(values), minlength=length).numpy()


def _objects_missed(counts: LevelCounts, fraction: float, plain: tuple[float, float]) -> bool:
    """Whether :func:`_with_min_foreground` would change the ``plain`` percentiles.

    The same test, on the level counts: most images answer no, without a float copy.
    """
    if fraction <= 0 or counts.size < 64:
        return False
    centre = float(counts.percentile([50])[0])
    margin = max(OBJECT_SIGMAS * 1.4826 * counts.median_distance(centre), 1.0)
    bright, dark = counts.count_beyond(centre, margin)
    misses = (bright > 0 and plain[1] <= centre + margin) or (
        dark > 0 and plain[0] >= centre - margin
    )
    return bool(misses) and bright + dark < fraction * counts.size


#: A pixel stands out from the background when it is this many robust standard deviations
#: (1.4826 x the median absolute deviation) away from the median.
OBJECT_SIGMAS = 5.0


def _with_min_foreground(
    sample: np.ndarray, fraction: float, plain: tuple[float, float]
) -> np.ndarray | None:
    """``sample`` with background values thinned until the objects are ``fraction`` of it,
    or None when the ``plain`` percentiles already reach the objects.

    Why: in a mostly empty field (a few nuclei in a big frame, or a dim image
    padded with zeros) the 99.8th percentile is background, so the scale blows up
    (a constant field: x 1e8) or dim objects end up far from the 0..1 the model
    was trained on. Objects are the pixels more than :data:`OBJECT_SIGMAS` robust
    standard deviations (and, for integer data, more than one grey level) from
    the median, bright or dark. Only when they are rarer than ``fraction`` *and*
    the percentile on their side (high for bright objects, low for dark ones)
    stays inside the background band is anything changed: typical images, and
    noise with a long tail, keep plain percentiles.
    """
    if fraction <= 0 or sample.size < 64:
        return None
    centre = float(np.median(sample))
    distance = sample - centre
    spread = 1.4826 * float(np.median(np.abs(distance)))
    integral = bool(np.all(sample == np.round(sample)))
    margin = max(OBJECT_SIGMAS * spread, 1.0 if integral else 0.0)
    bright, dark = distance > margin, distance < -margin
    misses = (bright.any() and plain[1] <= centre + margin) or (
        dark.any() and plain[0] >= centre - margin
    )
    objects = bright | dark
    count = int(objects.sum())
    if not misses or count >= fraction * sample.size:
        return None
    background = sample[~objects]
    keep = max(int(count * (1 - fraction) / fraction), 1)
    chosen = background[np.linspace(0, background.size - 1, keep).astype(np.int64)]
    return np.concatenate([sample[objects], chosen])


def normalize(
    image: ArrayLike,
    config: NormalizationConfig,
    *,
    value_range: tuple[float, float] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Raw intensities -> float32 network input.

    ``percentile``: per image, the ``low``/``high`` percentiles (computed on a
    subsample for big inputs) map to 0/1, robust to hot pixels. ``window``:
    ``(x - low) / (high - low)`` with the fixed window (CT Hounsfield units).
    ``none``: cast only. ``clip`` clips to 0..1 afterwards. ``value_range``
    overrides the computed range (tiles of one image must share it); without it, camera
    defect pixels are also repaired (:mod:`defects`), as :class:`TileNormaliser` does.
    ``out``: a float32 array of the image's shape to write into (with ``value_range``,
    a tile goes straight into its place in a batch: no array of its own, no copy).
    """
    check_numeric(image, "image")
    if out is not None and (value_range is None or config.mode == "none"):
        np.copyto(out, normalize(image, config, value_range=value_range))
        return out
    if config.mode == "none":
        data = np.asarray(image, dtype=np.float32)
        return np.clip(data, 0, 1) if config.clip else data
    if value_range is None:
        data = np.asarray(image, dtype=np.float32)
        (low, high), defects = range_and_defects(data, config)
        if defects is not None:  # as TileNormaliser repairs a band: in the stored type
            data = repair_rows(np.asarray(image), defects)
    else:  # tiles and bands: cast inside the subtraction (the same float32 values, one pass)
        data, (low, high) = np.asarray(image), value_range
    return _to_unit(data, *_offset_scale(low, high), config.clip, out)


def _offset_scale(low: float, high: float) -> tuple[np.float32, np.float32]:
    """``low`` and ``1 / (high - low)`` in float32: constant images become 0, not NaN."""
    return np.float32(low), np.float32(1.0 / max(high - low, 1e-8))


def _to_unit(
    data: np.ndarray, low: np.float32, scale: np.float32, clip: bool, out: np.ndarray | None
) -> np.ndarray:
    """``(data - low) * scale`` in float32, each step rounded: one new array (or ``out``),
    then in place. The one place this arithmetic lives (whole images, bands, tiles)."""
    out = np.subtract(data, low, out=out, dtype=np.float32)
    out *= scale
    if clip:
        _clip_unit(out)
    return out


def _clip_unit(values: np.ndarray) -> None:
    """``np.clip(values, 0, 1)`` in place, by torch's ``clamp_`` when torch is loaded.

    Why: numpy's float clip is slow here (49 us on a 256 x 256 tile of which 30 % is out of
    range, torch 17 us), and with ``clip`` on (off by default) every tile of a prediction is
    clipped. The same bits (NaN and -0.0 included: a maximum and a minimum either way).
    Torch is only used once something else loaded it, so this module stays cheap to import.
    """
    torch = sys.modules.get("torch")
    flags = values.flags
    if torch is None or not (flags.c_contiguous and flags.writeable and values.dtype.isnative):
        np.clip(values, 0.0, 1.0, out=values)
        return
    torch.from_numpy(values).clamp_(0.0, 1.0)


class TileNormaliser:
    """:func:`normalize` with one intensity range for a whole image, band by band.

    Why a class: tiled inference normalises each band of rows as it reads it, with the
    range computed once for the image (``fill``: what to do with its non-finite pixels,
    see :func:`nonfinite.non_finite_filler`). An integer band can also be moved raw and
    normalised where the network runs (:meth:`on_device`): a GPU then receives 1-2
    bytes per pixel instead of 4 and the host does no float pass. Both ways give the same
    float32 values (a subtraction and a product, each rounded once to float32).
    ``defects``: the image's hot / dead pixels (:func:`range_and_defects`), repaired in each
    band on the host (bands are whole rows, so a band is repaired as the whole image).
    """

    def __init__(
        self,
        config: NormalizationConfig,
        value_range: tuple[float, float],
        fill: Callable[[np.ndarray], np.ndarray] | None = None,
        defects: Defects | None = None,
    ) -> None:
        self.config = config
        self.value_range = value_range
        self.fill = fill
        self.defects = defects
        self._constants = _offset_scale(*value_range)

    def __call__(self, band: np.ndarray) -> np.ndarray:
        return self.scale(self.prepare(band))

    def prepare(self, band: np.ndarray) -> np.ndarray:
        """The band's non-finite pixels filled and its defect pixels repaired, as stored:
        what :meth:`scale` then normalises (per band, or tile by tile into a batch)."""
        band = band if self.fill is None else self.fill(band)
        return band if self.defects is None else repair_rows(band, self.defects)

    def scale(self, band: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """A :meth:`prepare`-d band (or a tile of it) normalised, into ``out`` if given.

        :func:`normalize`'s arithmetic without its checks (the image was checked once):
        called for every tile, where those checks cost as much as a small tile's work.
        """
        if self.config.mode == "none":
            return normalize(band, self.config, value_range=self.value_range, out=out)
        return _to_unit(band, *self._constants, self.config.clip, out)

    def on_device(self, band: np.ndarray, device: Any) -> Any:
        """``self(band)`` as a float32 torch tensor on ``device``, computed there from the
        raw integers (moved as stored), or ``None`` where only the host can normalise
        (floats may hold NaN to fill; 64-bit and uint32 integers; non-native byte order;
        an image with defect pixels to repair).

        uint16 travels as its int16 bits and is widened on the device: torch's unsigned
        16-bit type lacks arithmetic on some devices.
        """
        import torch  # only here: this module stays plain numpy

        dtype = np.dtype(band.dtype)
        if not dtype.isnative or dtype not in _RAW_TYPES or self.defects is not None:
            return None
        data = np.ascontiguousarray(band)
        if dtype == np.uint16:
            raw = torch.from_numpy(data.view(np.int16)).to(device)
            raw = raw.to(torch.int32).bitwise_and_(0xFFFF)
        else:
            raw = torch.from_numpy(data).to(device)
        out = raw.to(torch.float32)  # exact for these types, then float32 arithmetic
        if self.config.mode != "none":
            low, high = self.value_range
            scale = 1.0 / max(high - low, 1e-8)
            out.sub_(float(np.float32(low))).mul_(float(np.float32(scale)))
        return out.clamp_(0.0, 1.0) if self.config.clip else out


#: Integer types a band may travel raw in (:meth:`TileNormaliser.on_device`): exact in float32
#: as numpy converts them (int32 rounds to nearest above 2**24 in both).
_RAW_TYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.uint16, np.int32))


def to_channels_first(image: ArrayLike, channel_axis: int | None) -> np.ndarray:
    """Move the channel axis first, or add a length-1 one when there is none.

    Why: the network wants ``(C, *spatial)``; users hand over YXC (RGB), CYX,
    ZCYX... and say where the channels are with ``DataConfig.channel_axis``.
    """
    array = np.asarray(image)
    if channel_axis is None:
        return array[np.newaxis]
    if not -array.ndim <= channel_axis < array.ndim:
        raise ValueError(
            f"channel_axis {channel_axis} is out of range for an image of shape "
            f"{array.shape}; set DataConfig.channel_axis to None or to one of its axes"
        )
    return np.moveaxis(array, channel_axis, 0)


#: ITU-R BT.709 luminance weights, as ``skimage.color.rgb2gray``: the grey the shipped
#: one-channel nuclei model was trained on.
LUMINANCE_WEIGHTS = (0.2125, 0.7154, 0.0721)


def looks_rgb(shape: Sequence[int]) -> bool:
    """A colour image or stack, channels last: ``(..., Y, X, 3 or 4)`` with a real X axis.

    Why: PNG/JPEG readers return RGB(A) as a last axis of 3 or 4, which a one-channel
    model would otherwise take for a spatial axis.
    """
    return len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4


def rgb_to_grey(image: ArrayLike) -> ArrayLike:
    """Luminance of an RGB(A) image, channels last (alpha ignored), as float32.

    Why: one-channel models (the shipped nuclei model) were trained on luminance, so the
    widget, the CLI and the training script must hand them the same grey. Dask arrays
    stay lazy; uint8 input gives 0..255 (intensity normalisation follows anyway).
    """
    red, green, blue = (image[..., k].astype(np.float32) for k in range(3))
    w_red, w_green, w_blue = LUMINANCE_WEIGHTS
    return red * np.float32(w_red) + green * np.float32(w_green) + blue * np.float32(w_blue)


def as_model_input(
    image: ArrayLike, in_channels: int, channel_axis: int | None, *, rgb: bool | None = None
) -> tuple[ArrayLike, bool]:
    """``(image, True)`` as its luminance when an RGB(A) image meets a one-channel model,
    else ``(image, False)`` unchanged: the one place that decision is made.

    Why: the shipped nuclei model (one channel) was trained on luminance, and a colour
    axis read as a spatial one gives silent nonsense. ``rgb``: what the caller knows (a
    napari layer's ``rgb``); None guesses it from the shape (:func:`looks_rgb`), only when
    no ``channel_axis`` was named (a named axis is the user's own channels).
    """
    if rgb is None:
        rgb = channel_axis is None and looks_rgb(np.shape(image))
    if in_channels != 1 or not rgb:
        return image, False
    return rgb_to_grey(image), True


def spatial_shape(image_shape: Sequence[int], channel_axis: int | None) -> tuple[int, ...]:
    """The image shape without its channel axis (what labels must match)."""
    shape = list(image_shape)
    if channel_axis is not None:
        if not -len(shape) <= channel_axis < len(shape):  # del would raise an IndexError
            raise ValueError(
                f"DataConfig.channel_axis {channel_axis} is out of range for an image of shape "
                f"{tuple(image_shape)}; set it to None (no channels) or to one of its axes"
            )
        del shape[channel_axis]
    return tuple(shape)


def check_pair(image: ArrayLike, labels: ArrayLike, channel_axis: int | None) -> None:
    """Raise a ``ValueError`` naming both shapes when labels do not cover the image."""
    expected = spatial_shape(image.shape, channel_axis)
    if tuple(labels.shape) != expected:
        hint = (
            " (is the image RGB? set DataConfig.channel_axis=-1)"
            if channel_axis is None and len(image.shape) == len(labels.shape) + 1
            else ""
        )
        raise ValueError(
            f"image shape {tuple(image.shape)} and labels shape {tuple(labels.shape)} do not "
            f"match: labels must have the image's shape without its channel axis "
            f"({expected}){hint}"
        )
