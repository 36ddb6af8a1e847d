"""Property-based tests (hypothesis) of the data and tiling entry points.

Why: hand-picked examples miss the odd shapes, dtypes and values a careless or hostile
user brings (a 1-pixel axis, a bool mask as image, NaN and inf, a constant image, ids
near 2**31). Each property holds for every generated case, or the entry point refuses
with a ValueError that says how to fix the input: never a crash, never a NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_unetpp.config import IGNORE_INDEX, DataConfig, NormalizationConfig
from napari_unetpp.labels import guess_label_mode, instance_targets, labels_to_targets
from napari_unetpp.nonfinite import NonFiniteError, NonFiniteWarning, non_finite_filler
from napari_unetpp.normalization import normalize, to_channels_first
from napari_unetpp.tiling import blending_weights, sliding_window, tile_grid, tile_starts

FAST = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
IMAGE_DTYPES = [np.uint8, np.uint16, np.int16, np.float32, np.float64, np.bool_]
LABEL_DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.int64, np.bool_]


def _elements(dtype: type, finite: bool) -> st.SearchStrategy:
    if np.dtype(dtype).kind != "f":
        return hnp.from_dtype(np.dtype(dtype))
    # |x| <= 2**100 for "finite": float64 values beyond float32's range count as non-finite
    values = st.floats(-(2.0**100), 2.0**100, width=np.dtype(dtype).itemsize * 8)
    if finite:
        return values
    extremes = [np.nan, np.inf, -np.inf] + ([1e300, -1e300] if dtype is np.float64 else [])
    return st.one_of(values, st.sampled_from(extremes))


@st.composite
def images(draw: st.DrawFn, finite: bool = True, max_dims: int = 3) -> np.ndarray:
    dtype = draw(st.sampled_from(IMAGE_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=max_dims, min_side=1, max_side=20))
    constant = draw(st.booleans())
    if constant:  # constant images (all zeros, all one value) are a classic division by zero
        value = draw(_elements(dtype, finite=True))
        return np.full(shape, value, dtype=dtype)
    return draw(hnp.arrays(dtype, shape, elements=_elements(dtype, finite)))


# --------------------------------------------------------------------------- data


@FAST
@given(image=images(), mode=st.sampled_from(["percentile", "window", "none"]), clip=st.booleans())
def test_normalize_of_finite_images_is_finite_float32_of_the_same_shape(image, mode, clip):
    config = NormalizationConfig(
        mode=mode,
        low=1.0 if mode == "percentile" else -5.0,
        high=99.0 if mode == "percentile" else 300.0,
        clip=clip,
    )
    out = normalize(image, config)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.isfinite(out).all()
    if clip:
        assert out.min() >= 0 and out.max() <= 1
    if mode == "percentile" and np.unique(image).size == 1:
        assert not out.any()  # a constant image becomes 0, not NaN


@FAST
@given(image=images(finite=False))
def test_non_finite_pixels_are_filled_or_refused_never_passed_on(image):
    with np.errstate(over="ignore"):  # as float32, the network's input type
        bad = int((~np.isfinite(image.astype(np.float32))).sum()) if image.dtype.kind == "f" else 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fill = non_finite_filler(image)
        except NonFiniteError as error:
            assert bad > image.size / 2 and f"{bad} non-finite" in str(error)
            return
    assert bad <= image.size / 2
    said = [str(w.message) for w in caught if issubclass(w.category, NonFiniteWarning)]
    assert (said and f"{bad} non-finite" in said[0]) if bad else not said
    filled = fill(image)
    assert np.isfinite(filled.astype(np.float32)).all()
    with np.errstate(over="ignore"):
        kept = np.isfinite(image.astype(np.float32))
    np.testing.assert_array_equal(filled[kept], image[kept])  # finite pixels untouched
    out = normalize(filled, NormalizationConfig())
    assert np.isfinite(out).all()


@FAST
@given(image=images(max_dims=4), data=st.data())
def test_to_channels_first_moves_exactly_one_axis(image, data):
    axis = data.draw(st.one_of(st.none(), st.integers(-image.ndim, image.ndim - 1)))
    out = to_channels_first(image, axis)
    if axis is None:
        assert out.shape == (1, *image.shape)
        np.testing.assert_array_equal(out[0], image)
    else:
        assert out.shape[0] == image.shape[axis]
        np.testing.assert_array_equal(np.moveaxis(out, 0, axis), image)


@FAST
@given(image=images(), axis=st.integers(4, 9))
def test_to_channels_first_refuses_an_axis_out_of_range(image, axis):
    with pytest.raises(ValueError, match="channel_axis"):
        to_channels_first(image, axis)


@st.composite
def label_arrays(draw: st.DrawFn, max_value: int | None = None) -> np.ndarray:
    dtype = draw(st.sampled_from(LABEL_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=16))
    info = np.iinfo(dtype) if dtype is not np.bool_ else None
    top = 1 if info is None else min(info.max, max_value or info.max)
    if info is not None and dtype is np.int64 and draw(st.booleans()):
        values = st.sampled_from([0, 1, 2, 2**31 - 3, 2**31 + 5, 2**40])  # huge ids
    else:
        values = st.integers(0, min(top, draw(st.sampled_from([1, 3, 8, top]))))
    return draw(hnp.arrays(dtype, shape, elements=values))


@FAST
@given(labels=label_arrays(), sparse=st.booleans())
def test_labels_to_targets_maps_each_value_to_its_class(labels, sparse):
    config = DataConfig(label_mode="sparse" if sparse else "dense")
    try:
        targets = labels_to_targets(labels, config)
    except ValueError as error:  # no class pixels, or too many values to be classes
        assert "no class pixels" in str(error) or "instance" in str(error), error
        return
    values = labels.astype(np.int64)
    classes = sorted(set(np.unique(values).tolist()) - ({0, 1} if sparse else {0}))
    assert targets.shape == labels.shape and targets.dtype == np.int64
    for k, value in enumerate(classes, start=1):
        assert (targets[values == value] == k).all()
    if sparse:
        assert (targets[values == 0] == IGNORE_INDEX).all()
        assert (targets[values == 1] == 0).all()
    else:
        assert (targets[values == 0] == 0).all()


@FAST
@given(labels=label_arrays())
def test_guess_label_mode_answers_or_refuses_empty_labels(labels):
    if not labels.any():
        with pytest.raises(ValueError, match="empty"):
            guess_label_mode(labels)
        return
    mode, why = guess_label_mode(labels)
    assert mode in ("dense", "sparse") and why


@FAST
@given(labels=label_arrays(), width=st.integers(1, 3))
@example(labels=np.array([[2**63 - 512, 1], [1, 1]], np.int64), width=1)  # ids past 2**52
def test_instance_targets_are_background_interior_boundary(labels, width):
    ids = labels.astype(np.int64)
    target = instance_targets(ids, width, spatial_dims=2)
    assert target.shape == ids.shape and set(np.unique(target)) <= {0, 1, 2}
    np.testing.assert_array_equal(target == 0, ids == 0)
    # an interior pixel has no other id within `width` pixels in its plane
    padded = np.pad(ids, [(0, 0)] * (ids.ndim - 2) + [(width, width)] * 2, mode="edge")
    for index in zip(*np.nonzero(target == 1), strict=True):
        lead, (y, x) = index[:-2], index[-2:]
        window = padded[(*lead, slice(y, y + 2 * width + 1), slice(x, x + 2 * width + 1))]
        assert (window == ids[index]).all()


# --------------------------------------------------------------------------- tiling


@FAST
@given(
    size=st.integers(1, 300),
    tile=st.integers(1, 96),
    overlap=st.floats(0, 0.9),
    align=st.sampled_from([1, 2, 4, 8, 16]),
)
def test_tile_starts_cover_every_pixel_and_stay_inside(size, tile, overlap, align):
    starts = tile_starts(size, tile, overlap, align)
    assert starts == sorted(set(starts)) and starts[0] == 0
    assert all(0 <= s <= max(size - tile, 0) for s in starts)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


@FAST
@given(
    shape=hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=70),
    data=st.data(),
    overlap=st.floats(0, 0.75),
)
def test_tile_grid_covers_the_whole_image(shape, data, overlap):
    tile = data.draw(st.tuples(*[st.integers(1, 40) for _ in shape]))
    covered = np.zeros(shape, bool)
    for start in tile_grid(shape, tile, overlap):
        covered[tuple(slice(s, s + t) for s, t in zip(start, tile, strict=True))] = True
    assert covered.all()


@FAST
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=64),
    mode=st.sampled_from(["gaussian", "constant"]),
)
def test_blending_weights_are_positive_and_at_most_one(shape, mode):
    weights = blending_weights(shape, mode)
    assert weights.shape == shape and (weights > 0).all() and (weights <= 1).all()


@FAST
@given(
    data=st.data(),
    channels=st.integers(1, 3),
    overlap=st.sampled_from([0.0, 0.25, 0.5]),
    blending=st.sampled_from(["gaussian", "constant"]),
    align=st.sampled_from([1, 2, 4]),
    batch=st.integers(1, 5),
)
def test_sliding_window_with_an_identity_predictor_reproduces_the_input(
    data, channels, overlap, blending, align, batch
):
    spatial = data.draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=40))
    tile = data.draw(st.tuples(*[st.integers(1, 24).map(lambda t: t * align) for _ in spatial]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    image = rng.normal(size=(channels, *spatial)).astype(np.float32)
    out = sliding_window(
        lambda x: {"same": x, "plus": x + 1}, image, tile, overlap, batch, blending, align=align
    )
    np.testing.assert_allclose(out["same"], image, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["plus"], image + 1, rtol=1e-5, atol=1e-5)
