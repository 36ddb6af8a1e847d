"""Tile positions, blending weights and stitching, with injected predictors (no network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unetpp.stitching import StackedOutputs
from napari_unetpp.tiling import (
    MIN_WEIGHT,
    TileProgress,
    blending_weights,
    iter_sliding_window,
    pad_to,
    sliding_window,
    tile_grid,
    tile_starts,
)


def plus_one(batch: np.ndarray) -> dict[str, np.ndarray]:
    """The identity-like predictor (as in MONAI's tests): any blend of it must give x + 1."""
    return {"same": batch + 1, "first_twice": batch[:, :1] * 2}


# --------------------------------------------------------------------------- tile_starts


@pytest.mark.parametrize("size", [1, 31, 64, 65, 100, 257, 1000])
@pytest.mark.parametrize("tile, overlap", [(64, 0.0), (64, 0.25), (64, 0.5), (48, 0.75)])
def test_tile_starts_cover_evenly_and_end_flush(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if size <= tile:
        assert starts == [0]
        return
    assert starts[-1] + tile == size  # flush with the border, never past it
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    gaps = np.diff(starts)
    assert gaps.max() <= np.ceil(tile * (1 - overlap))  # overlap at least as asked
    assert gaps.max() - gaps.min() <= 1  # evenly spread


@pytest.mark.parametrize("size, tile, overlap", [(160, 64, 0.5), (512, 256, 0.25), (500, 96, 0.3)])
def test_aligned_starts_lie_on_the_grid(size, tile, overlap):
    starts = tile_starts(size, tile, overlap, align=16)
    aligned = [s for s in starts if s % 16 == 0]
    assert aligned == starts[: len(aligned)] and len(starts) - len(aligned) <= 1
    assert starts[-1] + tile == size
    # padded up to a multiple, every start (the last included) is aligned
    assert all(s % 16 == 0 for g in tile_grid((size,), (tile,), overlap, 16) for s in g)


def test_tile_starts_rejects_bad_input_with_a_fix():
    with pytest.raises(ValueError, match="overlap must lie in"):
        tile_starts(100, 32, 1.0)
    with pytest.raises(ValueError, match="tile size must be >= 1"):
        tile_starts(100, 0, 0.5)
    with pytest.raises(ValueError, match="one tile size per spatial axis"):
        tile_grid((10, 10), (4,), 0.5)


# --------------------------------------------------------------------------- weights


def test_gaussian_weights_are_cached_read_only_and_positive():
    w = blending_weights((33, 40))
    assert w is blending_weights([33, 40])  # cached
    assert not w.flags.writeable
    assert w.dtype == np.float32 and w.shape == (33, 40)
    assert w.max() == pytest.approx(1.0, abs=1e-3) and w[16, 19:21].min() > 0.99
    assert w.min() > 0  # corners never divide by zero
    np.testing.assert_allclose(w, w[::-1, ::-1], rtol=1e-6)  # centred
    # sigma = tile / 8: a tile border weighs exp(-8) of the centre along that axis
    assert w[0, 19] == pytest.approx(np.exp(-0.5 * (16 / (33 / 8)) ** 2), rel=1e-3)
    tiny = blending_weights((2, 2, 2))
    assert tiny.min() >= MIN_WEIGHT**3
    np.testing.assert_array_equal(blending_weights((5, 5), "constant"), np.ones((5, 5)))
    with pytest.raises(ValueError, match="gaussian"):
        blending_weights((5, 5), "cosine")  # type: ignore[arg-type]


def test_pad_to_reflects_at_the_end_and_crops_back():
    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    padded, crop = pad_to(a, (4, 5))
    assert padded.shape == (1, 4, 5)
    np.testing.assert_array_equal(padded[crop], a)
    np.testing.assert_array_equal(padded[0, 0], [0, 1, 2, 1, 0])
    single, _ = pad_to(np.ones((1, 1, 1)), (3, 3))  # one pixel cannot be reflected
    assert single.shape == (1, 3, 3) and (single == 1).all()


# --------------------------------------------------------------------------- sliding window


@pytest.mark.parametrize(
    "shape, tile, overlap, align",
    [
        ((2, 47, 61), (16, 32), 0.25, 1),
        ((1, 33, 35), (16, 16), 0.5, 8),
        ((3, 9, 7), (32, 32), 0.5, 1),  # smaller than a tile: padded
        ((2, 13, 17, 19), (8, 8, 8), 0.5, 1),
        ((1, 33, 34, 35), (16, 16, 16), 0.25, 4),  # MONAI's odd 3D shape
    ],
)
@pytest.mark.parametrize("blending", ["gaussian", "constant"])
def test_identity_predictor_is_reproduced_exactly(shape, tile, overlap, align, blending):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    out = sliding_window(
        plus_one, image, tile, overlap, batch_size=3, blending=blending, align=align
    )
    assert set(out) == {"same", "first_twice"}
    np.testing.assert_array_equal(out["same"], image + 1)  # exact, not approximately
    np.testing.assert_array_equal(out["first_twice"], image[:1] * 2)
    assert out["same"].dtype == np.float32


@pytest.mark.parametrize("shape, tile", [((2, 47, 61), (16, 32)), ((1, 13, 17, 19), (8, 8, 8))])
def test_blending_on_a_torch_device_gives_the_same_result(shape, tile):
    """The accumulation device (a GPU in inference; here torch on the CPU) changes nothing."""
    image = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    on_torch = sliding_window(
        lambda b: {"same": torch.from_numpy(b) + 1},
        image,
        tile,
        0.5,
        3,
        accumulate_on=torch.device("cpu"),
    )
    np.testing.assert_array_equal(on_torch["same"], image + 1)
    assert isinstance(on_torch["same"], np.ndarray)


class TorchTiles:
    """An image that serves torch tensors, as inference's device-resident bands do."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape = torch.from_numpy(data), data.shape

    def __getitem__(self, index):
        return self.data[index]


@pytest.mark.parametrize(
    "shape, tile, align",
    [
        ((2, 47, 61), (16, 32), 1),
        ((1, 33, 35), (16, 16), 8),
        ((1, 9, 7), (16, 16), 1),
        ((1, 13, 17, 19), (8, 8, 8), 4),
    ],
)
def test_tiles_cut_on_a_torch_device_are_those_numpy_cuts(shape, tile, align):
    """The device-resident path (here torch on the CPU): same tiles, padding, blend, bits."""
    image = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    seen: list[type] = []

    def stacked(batch):
        seen.append(type(batch))
        x = torch.as_tensor(batch)
        return StackedOutputs(torch.cat([x * 2 + 1, x[:, :1] - 3], dim=1), {"a": shape[0], "b": 1})

    reference = sliding_window(stacked, image, tile, 0.5, 3, align=align)
    on_device = sliding_window(
        stacked, TorchTiles(image), tile, 0.5, 3, align=align, accumulate_on=torch.device("cpu")
    )
    assert set(seen) == {np.ndarray, torch.Tensor}  # numpy tiles, then torch tiles
    for key in ("a", "b"):
        np.testing.assert_array_equal(on_device[key], reference[key])  # bit for bit
    np.testing.assert_array_equal(reference["a"], image * 2 + 1)  # exact: one value per pixel
    np.testing.assert_array_equal(reference["b"], image[:1] - 3)


def test_torch_tiles_are_stacked_in_the_predictors_dtype():
    """``tile_dtype``: the batch arrives in the network's dtype (bf16 on a CPU that has it),
    cast in the stacking copy, with the values of casting the float32 batch afterwards."""
    image = np.random.default_rng(6).normal(size=(1, 47, 61)).astype(np.float32)
    seen: list[torch.Tensor] = []

    def cast_here(batch):
        seen.append(batch)
        return {"y": torch.as_tensor(batch).to(torch.bfloat16).float()}

    reference = sliding_window(cast_here, TorchTiles(image), (16, 32), 0.5, 3, align=8)
    float_batches, seen[:] = [b.clone() for b in seen], []
    gen = iter_sliding_window(
        cast_here, TorchTiles(image), (16, 32), 0.5, 3, align=8, tile_dtype=torch.bfloat16
    )
    with pytest.raises(StopIteration) as end:
        while True:
            next(gen)
    assert {b.dtype for b in seen} == {torch.bfloat16}
    for cast, full in zip(seen, float_batches, strict=True):
        assert torch.equal(cast, full.to(torch.bfloat16))
    np.testing.assert_array_equal(end.value.value["y"], reference["y"])


def test_stacked_outputs_read_as_a_mapping_and_check_their_channels():
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    out = StackedOutputs(data, {1: 1, 2: 2})
    assert list(out) == [1, 2] and len(out) == 2
    np.testing.assert_array_equal(out[2], data[:, 1:3])
    with pytest.raises(ValueError, match="add up"):
        StackedOutputs(data, {1: 1})


def test_blending_is_a_weighted_mean_of_the_tiles():
    """Two overlapping tiles with different constant outputs: the Gaussian-weighted mean."""
    image = np.zeros((1, 16, 24), np.float32)
    calls = iter(
        [np.full((1, 1, 16, 16), 1.0, np.float32), np.full((1, 1, 16, 16), 3.0, np.float32)]
    )
    out = sliding_window(lambda b: next(calls), image, (16, 16), 0.5, batch_size=1)[0][0]
    w = blending_weights((16, 16))
    left, right = w[:, 8:], w[:, :8]  # columns 8..15 are seen by both tiles
    expected = (1.0 * left + 3.0 * right) / (left + right)
    np.testing.assert_allclose(out[:, 8:16], expected, rtol=1e-6)
    assert (out[:, :8] == 1).all() and (out[:, 16:] == 3).all()


def test_torch_and_sequence_outputs_are_accepted():
    image = np.random.default_rng(1).random((1, 20, 30), dtype=np.float32)
    out = sliding_window(lambda b: (torch.from_numpy(b) * 3,), image, (16, 16), 0.5, 2)
    np.testing.assert_allclose(out[0], image * 3, rtol=1e-6)


def test_lazy_input_is_read_one_tile_at_a_time():
    """A dask/zarr image must never be read whole: record what each read asks for."""

    class Recording:
        def __init__(self, data: np.ndarray) -> None:
            self.data, self.shape, self.reads = data, data.shape, []

        def __getitem__(self, index):
            block = self.data[index]
            self.reads.append(block.size)
            return block

    data = np.random.default_rng(2).random((1, 100, 90), dtype=np.float32)
    recording = Recording(data)
    out = sliding_window(plus_one, recording, (32, 32), 0.25, batch_size=2)
    np.testing.assert_array_equal(out["same"], data + 1)
    assert max(recording.reads) <= 32 * 32 and len(recording.reads) == len(
        tile_grid((100, 90), (32, 32), 0.25)
    )


def test_progress_generator_and_callback():
    image = np.zeros((1, 40, 40), np.float32)
    progress = []
    gen = iter_sliding_window(plus_one, image, (16, 16), 0.5, batch_size=4)
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    total = len(tile_grid((40, 40), (16, 16), 0.5))
    assert progress[-1] == TileProgress(total, total)
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    np.testing.assert_array_equal(result["same"], image + 1)
    calls = []
    sliding_window(plus_one, image, (16, 16), 0.5, 4, on_batch=lambda d, t: calls.append((d, t)))
    assert calls == [tuple(p) for p in progress]


def test_stop_returns_the_rows_done_so_far():
    image = np.ones((1, 64, 20), np.float32)
    gen = iter_sliding_window(
        plus_one, image, (16, 20), 0.0, batch_size=1, should_stop=lambda: True
    )
    assert next(gen) == TileProgress(1, 4)
    with pytest.raises(StopIteration) as stop:
        next(gen)
    out = stop.value.value["same"]
    np.testing.assert_array_equal(out[:, :16], 2.0)  # the first tile row is done
    assert (out[:, 16:] == 0).all()  # nothing else was predicted


def test_outputs_can_go_to_any_writable_array(tmp_path):
    import zarr

    image = np.random.default_rng(3).random((1, 50, 40), dtype=np.float32)
    stores = {}

    def allocate(key, shape):
        stores[key] = zarr.open_array(
            str(tmp_path / f"{key}.zarr"),
            mode="w",
            shape=shape,
            chunks=(1, 16, 16),
            dtype="float32",
        )
        return stores[key]

    out = sliding_window(plus_one, image, (16, 16), 0.5, 2, allocate=allocate)
    assert out["same"] is stores["same"]
    np.testing.assert_array_equal(out["same"][:], image + 1)


def test_predictor_changing_the_tile_shape_is_explained():
    image = np.zeros((1, 20, 20), np.float32)
    with pytest.raises(ValueError, match="must keep the tile's spatial shape"):
        sliding_window(lambda b: {"x": b[..., :-1]}, image, (16, 16), 0.5, 2)


@pytest.mark.parametrize("accumulate_on", [None, torch.device("cpu")])
def test_blending_into_the_results_in_place_matches_the_band(accumulate_on):
    """In-memory results are blended where they live: same bits as the band, rows unreached 0."""
    rng = np.random.default_rng(7)
    image = rng.normal(size=(2, 70, 45)).astype(np.float32)
    noise = {}

    def heads(batch):  # tiles disagree where they overlap, so the weights matter
        x = torch.as_tensor(batch)
        k = len(noise)
        noise[k] = torch.from_numpy(rng.normal(size=x.shape).astype(np.float32))
        return StackedOutputs(torch.cat([x + noise[k], x[:, :1] * 3], dim=1), {"a": 2, "b": 1})

    band = sliding_window(heads, image, (32, 32), 0.5, 2, accumulate_on=accumulate_on)
    replay = iter(list(noise.values()))
    noise.clear()

    def same_heads(batch):
        x = torch.as_tensor(batch)
        return StackedOutputs(torch.cat([x + next(replay), x[:, :1] * 3], dim=1), {"a": 2, "b": 1})

    into = np.zeros((3, 70, 45), np.float32)
    gen = iter_sliding_window(
        same_heads, image, (32, 32), 0.5, 2, accumulate_on=accumulate_on, into=into
    )
    for _ in gen:
        pass
    np.testing.assert_array_equal(into[:2], band["a"])
    np.testing.assert_array_equal(into[2:], band["b"])

    stopped = np.zeros((1, 64, 20), np.float32)
    gen = iter_sliding_window(
        plus_one_only,
        np.ones((1, 64, 20), np.float32),
        (16, 20),
        0.0,
        1,
        should_stop=lambda: True,
        accumulate_on=accumulate_on,
        into=stopped,
    )
    next(gen)
    with pytest.raises(StopIteration):
        next(gen)
    np.testing.assert_array_equal(stopped[:, :16], 2.0)
    assert (stopped[:, 16:] == 0).all()


@pytest.mark.parametrize("accumulate_on", [None, torch.device("cpu")])
@pytest.mark.parametrize(
    "shape, tile", [((2, 150, 1000), (64, 96)), ((1, 40, 30, 50), (16, 16, 16))]
)
def test_blending_in_place_matches_the_band_on_wide_rows_and_in_3d(shape, tile, accumulate_on):
    """Tile targets cut from the results in place (numpy views of the torch results on the
    CPU) blend the band's bits, on rows wider than a page and on 3D volumes."""
    rng = np.random.default_rng(11)
    image = rng.normal(size=shape).astype(np.float32)
    noise = [rng.normal(size=(3, shape[0] + 1, *tile)).astype(np.float32) for _ in range(200)]

    def run(into):
        calls = iter(range(10**6))

        def heads(batch):  # the same noise, call by call, in both runs: tiles disagree
            k = next(calls) % len(noise)
            x = torch.as_tensor(batch) + torch.from_numpy(noise[k][: len(batch), : shape[0]])
            return StackedOutputs(torch.cat([x, x[:, :1] * 3], dim=1), {"a": shape[0], "b": 1})

        gen = iter_sliding_window(
            heads, image, tile, 0.25, 3, accumulate_on=accumulate_on, into=into
        )
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    band = run(None)
    into = np.zeros((shape[0] + 1, *shape[1:]), np.float32)  # fresh: mapped lazily
    run(into)
    np.testing.assert_array_equal(into[:-1], band["a"])
    np.testing.assert_array_equal(into[-1:], band["b"])


def plus_one_only(batch):
    return {"same": np.asarray(batch) + 1}


def test_blending_in_place_refuses_a_copy():
    with pytest.raises(ValueError, match="writable float32"):
        for _ in iter_sliding_window(
            plus_one_only, np.ones((1, 8, 8), np.float32), (8, 8), into=np.zeros((1, 8, 8))
        ):
            pass


@pytest.mark.parametrize("max_values", [0, 16 * 2**20])
def test_blend_shares_replayed_across_items_give_the_same_bits(max_values):
    """The shares recorded on one item are replayed on the next of the same tiling only."""
    from napari_unetpp.stitching import RatioCache

    rng = np.random.default_rng(11)
    items = [rng.normal(size=(1, 70, 45)).astype(np.float32) for _ in range(3)]
    items.append(rng.normal(size=(1, 40, 45)).astype(np.float32))  # another tiling
    cache = RatioCache(max_values=max_values)
    counts: list[int] = []

    def noisy(batch):  # overlapping tiles disagree: the shares matter
        return {"a": np.asarray(batch) * 2 + rng.normal(size=np.shape(batch)).astype(np.float32)}

    for image in items:
        state = rng.bit_generator.state
        reference = sliding_window(
            noisy, image, (32, 32), 0.5, 2, accumulate_on=torch.device("cpu")
        )
        rng.bit_generator.state = state  # the same noise again
        gen = iter_sliding_window(
            noisy, image, (32, 32), 0.5, 2, accumulate_on=torch.device("cpu"), ratios=cache
        )
        with pytest.raises(StopIteration) as end:
            while True:
                next(gen)
        np.testing.assert_array_equal(end.value.value["a"], reference["a"])
        assert cache.complete == (max_values > 0)
        counts.append(cache.replayed)
    if max_values:  # items 2 and 3 replay every tile; the 4th (another tiling) records anew
        tiles = counts[1]
        assert counts[0] == 0 and tiles > 0 and counts[2] == 2 * tiles and counts[3] == 0
    else:
        assert counts == [0, 0, 0, 0]


def test_tiles_with_equal_blend_shares_keep_one_stored_copy():
    """The shares of an evenly spaced grid repeat: one copy is kept for tiles whose shares
    are equal, and it is each such tile's own share, bit for bit (edge tiles cut short too)."""
    from napari_unetpp.stitching import RatioCache

    class EveryTile(RatioCache):  # a copy for every tile, whatever its key
        def record(self, start, ratio, like=None):
            super().record(start, ratio)

    image = np.zeros((1, 150, 161), np.float32)
    caches = {"shared": RatioCache(), "every tile": EveryTile()}
    for cache in caches.values():
        for _ in iter_sliding_window(
            plus_one, image, (32, 32), 0.5, 4, accumulate_on=torch.device("cpu"), ratios=cache
        ):
            pass
    shared, every = caches["shared"]._ratios, caches["every tile"]._ratios
    assert shared.keys() == every.keys() and len(shared) > 50
    for start, ratio in every.items():
        assert torch.equal(shared[start], ratio), start
    copies = len({id(r) for r in shared.values()})
    assert copies < len(shared) / 2  # most tiles see the same neighbours
    assert len({id(r) for r in every.values()}) == len(every)
