"""Tiled inference with a real (tiny) UNet++ on real EM / nuclei / CT crops.

The networks are random but *calibrated*: their BatchNorm statistics are measured
on the image (as training would leave them). With the default statistics (mean 0,
variance 1) a random UNet++ barely depends on its input, and "tiled equals whole"
would hold trivially.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from napari_unetpp import devices, inference, predictor
from napari_unetpp.config import DataConfig, NormalizationConfig, PredictConfig
from napari_unetpp.devices import memory_format
from napari_unetpp.events import Stopper, drive
from napari_unetpp.inference import PredictEvent, PredictResult, predict, predict_array
from napari_unetpp.layout import ItemView, image_layout
from napari_unetpp.model import UNetPlusPlus, node_name
from napari_unetpp.normalization import normalize
from napari_unetpp.predictor import fold_batchnorm, prepare_for_inference
from napari_unetpp.tiling import tile_grid

TINY = (4, 8, 16)
RAW = NormalizationConfig(mode="window", low=0, high=255)  # same scaling for a stack and a slice


def calibrated(image: np.ndarray, seed: int = 0, **kwargs) -> UNetPlusPlus:
    """A random UNet++ (eval) whose BatchNorm statistics are those of ``image``."""
    torch.manual_seed(seed)
    kwargs.setdefault("widths", TINY)
    kwargs.setdefault("depth", len(kwargs["widths"]) - 1)
    net = UNetPlusPlus(**kwargs)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average: one pass gives the batch statistics
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()


def whole_image(net: UNetPlusPlus, image: np.ndarray) -> dict[int, np.ndarray]:
    """Probabilities of the untiled network on the whole (normalised) image."""
    with torch.no_grad():
        logits = net(torch.from_numpy(image)[None, None])
    return {d: torch.sigmoid(v)[0, 0].numpy() for d, v in logits.items()}


def receptive_radius(net: UNetPlusPlus, size: int = 96) -> int:
    """How far (pixels) an input change reaches in the output, over every pooling phase.

    Measured by perturbation, not by gradients: a max-pool's gradient misses inputs that
    are not the current maximum, but changing them can change the output.
    """
    x = torch.rand(1, 1, size, size)
    radius, centre, phases = 0, size // 2, 2**net.depth
    with torch.no_grad():
        base = net(x)[net.depth]
        for dy in range(phases):
            for dx in range(phases):
                y = x.clone()
                y[0, 0, centre + dy, centre + dx] += 10.0
                ys, xs = np.nonzero((net(y)[net.depth] != base)[0, 0].numpy())
                radius = max(radius, abs(ys - centre - dy).max(), abs(xs - centre - dx).max())
    return int(radius)


@pytest.fixture(scope="module")
def em_crop(em_stack) -> np.ndarray:
    """A 192 x 192 real EM crop (uint8)."""
    return em_stack[0][3, 100:292, 150:342]


@pytest.fixture(scope="module")
def em_net(em_crop) -> UNetPlusPlus:
    return calibrated(normalize(em_crop, DataConfig().normalization)[None, None])


def _config(**changes) -> PredictConfig:
    return PredictConfig(device="cpu", **changes)


# --------------------------------------------------------------------------- model preparation


def test_cpu_bf16_follows_the_hardware_and_the_config():
    """bf16 on a CPU only where it has bf16 instructions and mixed precision is on."""
    wanted = torch.bfloat16 if devices.cpu_computes_bf16() else torch.float32
    assert devices.inference_dtype("cpu", True) == wanted
    assert devices.inference_dtype("cpu", False) == torch.float32
    assert devices.inference_dtype("meta", True) == torch.float32  # CPUs only (CUDA: autocast)


def test_bf16_inference_keeps_the_shipped_em_models_score(em_stack, monkeypatch):
    """The bf16 copy (forced here, so any CPU runs the path) scores as float32 does on
    real held-back EM: membrane IoU within 0.005 and 99 % of the pixels' labels equal."""
    from napari_unetpp import zoo

    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    model, info = zoo.load_pretrained("em")
    image, membranes = em_stack[0][15, :256, :256], em_stack[1][15, :256, :256] > 0
    labels, scores = {}, {}
    for mixed in (False, True):
        config = _config(tile_size=(128, 128), mixed_precision=mixed, depths=(4,))
        start = next(iter(predict(model, image, config, info.data)))
        assert ("(bfloat16)" in start.message) == mixed  # the start says the precision
        prob = predict_array(model, image, config, info.data)[4]
        labels[mixed] = prob > 0.5  # one class (membrane): probabilities (Y, X)
        scores[mixed] = (labels[mixed] & membranes).sum() / (labels[mixed] | membranes).sum()
    prepared, _, _ = predictor.prepare_on(model, torch.device("cpu"), True)
    assert predictor.network_dtype(prepared) == torch.bfloat16
    assert (labels[True] == labels[False]).mean() > 0.99
    assert abs(scores[True] - scores[False]) < 0.005
    assert scores[False] > 0.6  # the comparison is on a real segmentation, not on noise


def test_bf16_tiles_are_cast_as_they_are_stacked_with_the_same_result(em_crop, em_net, monkeypatch):
    """On a bf16 CPU (forced here) the tiles are stacked straight into bf16 (one copy, not
    a float32 batch and then a cast) and the probabilities keep their bits."""
    monkeypatch.setattr(devices, "cpu_computes_bf16", lambda: True)
    run, dtypes = predictor.TileRunner.__call__, []

    def recording(self, batch):  # what the tiling hands the network's runner
        dtypes.append(batch.dtype)
        return run(self, batch)

    monkeypatch.setattr(predictor.TileRunner, "__call__", recording)
    config = _config(tile_size=(64, 64), depths=(2,))
    stacked_in_bf16 = predict_array(em_net, em_crop, config, DataConfig())[2]
    assert set(dtypes) == {torch.bfloat16}
    dtypes.clear()
    monkeypatch.setattr(predictor.TileRunner, "input_dtype", property(lambda self: None))
    cast_by_the_runner = predict_array(em_net, em_crop, config, DataConfig())[2]
    assert set(dtypes) == {torch.float32}
    np.testing.assert_array_equal(stacked_in_bf16, cast_by_the_runner)


def test_prepare_folds_batchnorm_into_a_copy(em_crop):
    net = calibrated(normalize(em_crop[:64, :64], RAW)[None, None]).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prepared = prepare_for_inference(net)
    assert net.training and not prepared.training  # the training model is untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
    assert not any(p.requires_grad for p in prepared.parameters())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = net.eval()(x)
        got = prepared(x)
    for d in expected:
        torch.testing.assert_close(got[d], expected[d], atol=1e-5, rtol=1e-4)


def test_fold_skips_batchnorm_without_running_statistics():
    block = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2, track_running_stats=False)
    )
    fold_batchnorm(block)
    assert isinstance(block[1], torch.nn.BatchNorm2d)


# --------------------------------------------------------------------------- tiled == whole


def test_tiled_equals_whole_image_inside_tiles(em_crop, em_net):
    """Tiles match the whole image exactly wherever no tile sees its own zero padding.

    Why this region: the depth-2 UNet++ has a receptive-field radius r of 23 px
    (measured below). A tile's prediction at a pixel equals the whole image's iff
    the pixel is at least r from every tile border that is not an image border
    (tiles on the 4-px pooling grid: same inputs, same pooling windows). The
    blended value is a weighted mean of the covering tiles' values, so it is exact
    wherever *all* covering tiles are. Tile 128 with overlap 0.5 on 192 px leaves
    such pixels in every tile row and column (about a third of the image); there
    the difference is float rounding (< 1e-4 asserted, ~1e-6 seen).

    Elsewhere a bound of 1e-4 is not attainable with sigma = tile / 8: right at a
    tile border the Gaussian weighs that tile exp(-8) = 3.4e-4 of the tile centred
    there, and a border prediction can be off by 0.2, so ~1e-4 is the floor; a few
    pixels inside the border the weight grows faster than the error shrinks. What
    Gaussian blending guarantees there is tested too: errors ~100x smaller than plain
    averaging, and a mean error below 1e-4.
    """
    radius = receptive_radius(em_net)
    assert 16 <= radius <= 32  # depth 2: a few 3x3 convs at 1x, 2x and 4x down-sampling
    x = normalize(em_crop, DataConfig().normalization)
    whole = whole_image(em_net, x)
    shape, tile = em_crop.shape, (128, 128)
    exact = np.ones(shape, bool)
    for start in tile_grid(shape, tile, 0.5, align=4):
        inside = tuple(
            slice(s + (radius if s > 0 else 0), s + t - (radius if s + t < n else 0))
            for s, t, n in zip(start, tile, shape, strict=False)
        )
        seen_badly = np.zeros(shape, bool)
        seen_badly[tuple(slice(s, s + t) for s, t in zip(start, tile, strict=False))] = True
        seen_badly[inside] = False
        exact &= ~seen_badly
    assert exact.mean() > 0.25

    errors = {}
    for blending in ("gaussian", "constant"):
        config = _config(  # float32: the bound is float rounding
            tile_size=tile, overlap=0.5, blending=blending, mixed_precision=False
        )
        probs = predict_array(em_net, em_crop, config, DataConfig())
        errors[blending] = {d: np.abs(probs[d] - whole[d]) for d in whole}
    for d in whole:
        gaussian, constant = errors["gaussian"][d], errors["constant"][d]
        assert gaussian[exact].max() < 1e-4
        assert constant[exact].max() < 1e-4  # any blend of exact values is exact
        assert constant[~exact].max() > 1e-3  # ...but tile borders really differ
        assert gaussian.max() < constant.max() / 30
        assert gaussian.mean() < 1e-4


def _border_energy(prob: np.ndarray, borders: list[int]) -> float:
    """Mean squared jump between the two columns and the two rows at each tile border."""
    jumps = [np.diff(prob[:, b - 1 : b + 1], axis=1) for b in borders]
    jumps += [np.diff(prob[b - 1 : b + 1, :], axis=0) for b in borders]
    return float(np.mean([np.mean(j**2) for j in jumps]))


def test_no_seams_at_tile_borders(em_crop, em_net):
    """The output is not rougher at tile borders than the whole-image output is there."""
    x = normalize(em_crop, DataConfig().normalization)
    whole = whole_image(em_net, x)[2]
    tile = 64
    starts = tile_grid(em_crop.shape, (tile, tile), 0.5, align=4)
    borders = sorted(
        {s for st in starts for s in st if s > 0}
        | {s + tile for st in starts for s in st if s + tile < 192}
    )
    smooth = predict_array(
        em_net, em_crop, _config(tile_size=(tile, tile), overlap=0.5, depths=(2,)), DataConfig()
    )[2]
    ratio = _border_energy(smooth, borders) / _border_energy(whole, borders)
    assert abs(ratio - 1) < 0.02
    # the same measure sees the seams of abutting tiles (no overlap, no blending)
    seamed = predict_array(
        em_net,
        em_crop,
        _config(tile_size=(tile, tile), overlap=0.0, blending="constant", depths=(2,)),
        DataConfig(),
    )[2]
    seams = [b for b in borders if b % tile == 0]
    assert _border_energy(seamed, seams) / _border_energy(whole, seams) > 1.1


# --------------------------------------------------------------------------- depths


def test_all_depths_in_one_pass_equal_separate_calls(em_crop, em_net):
    image = em_crop[:96, :128]
    config = _config(tile_size=(64, 64), overlap=0.25, batch_size=2)
    calls = {name: 0 for name in (node_name(0, 0), node_name(0, 2))}
    hooks = [
        em_net.nodes[name].register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )
        for name in calls
    ]
    try:
        together = predict_array(em_net, image, config, DataConfig())
        batches = -(-len(tile_grid(image.shape, (64, 64), 0.25, align=4)) // 2)
        assert calls == {node_name(0, 0): batches, node_name(0, 2): batches}  # once per batch
        alone = {
            d: predict_array(em_net, image, config.replace(depths=(d,)), DataConfig())
            for d in (1, 2)
        }
        assert calls[node_name(0, 2)] == 2 * batches  # depth 1 alone never ran X[0,2]
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(together) == [1, 2]
    for d in (1, 2):
        assert list(alone[d]) == [d]
        np.testing.assert_allclose(together[d], alone[d][d], atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2])
def test_pruned_depth_equals_its_head(em_crop, em_net, depth):
    image = em_crop[:80, :112]
    config = _config(tile_size=(64, 64), overlap=0.25)
    full = predict_array(em_net, image, config, DataConfig())
    pruned = predict_array(em_net, image, config.replace(pruned_depth=depth), DataConfig())
    assert list(pruned) == [depth]
    np.testing.assert_allclose(pruned[depth], full[depth], atol=1e-6)


# --------------------------------------------------------------------------- layouts


def test_multiclass_probabilities_are_a_softmax(em_crop):
    net = calibrated(normalize(em_crop[:64, :64], RAW)[None, None], num_classes=3)
    probs = predict_array(
        net, em_crop[:50, :70], _config(tile_size=(32, 32)), DataConfig(normalization=RAW)
    )
    for p in probs.values():
        assert p.shape == (3, 50, 70) and p.dtype == np.float32
        np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)


def test_in_memory_results_blended_in_place_match_a_zarr_band(em_stack, tmp_path):
    """Every head and class of a stack, blended straight into the results, has the bits of
    the band path that zarr outputs take (channel order, slices and classes kept apart)."""
    stack = em_stack[0][:2, :70, :50]
    net = calibrated(normalize(stack[:1], RAW)[None], widths=(4, 8, 16), num_classes=3)
    config, data = _config(tile_size=(32, 32)), DataConfig(normalization=RAW)
    memory = predict_array(net, stack, config, data)
    banded = predict_array(net, stack, config, data, out=tmp_path / "band.zarr")
    assert sorted(memory) == sorted(banded) == [1, 2]
    for depth, probs in memory.items():
        assert probs.shape == (3, 2, 70, 50) and probs.flags.c_contiguous
        np.testing.assert_array_equal(probs, banded[depth][:])
    assert not np.array_equal(memory[1], memory[2])  # each head its own values


def test_channel_axis_of_an_rgb_nuclei_image(data_dir):
    from skimage.io import imread

    rgb = imread(data_dir / "nuclei_dsb2018" / "images" / "01d44a26f6680c42.png")[:64, :96, :3]
    net = calibrated(normalize(np.moveaxis(rgb, -1, 0), RAW)[None], widths=(4, 8), in_channels=3)
    config = _config(tile_size=(64, 64))
    last = predict_array(net, rgb, config, DataConfig(normalization=RAW, channel_axis=-1))
    first = predict_array(
        net, np.moveaxis(rgb, -1, 0), config, DataConfig(normalization=RAW, channel_axis=0)
    )
    assert last[1].shape == (64, 96)
    np.testing.assert_array_equal(last[1], first[1])
    with pytest.raises(ValueError, match="channel_axis"):
        predict_array(net, rgb, config, DataConfig(normalization=RAW))


def test_2d_model_runs_a_stack_slice_by_slice(em_stack):
    stack = em_stack[0][:3, :64, :80]
    net = calibrated(normalize(stack[:1], RAW)[None], widths=(4, 8))
    data, config = DataConfig(normalization=RAW), _config(tile_size=(48, 48))
    events: list[PredictEvent] = []
    probs = predict_array(net, stack, config, data, callback=events.append)
    assert probs[1].shape == stack.shape
    for z in range(3):
        np.testing.assert_array_equal(probs[1][z], predict_array(net, stack[z], config, data)[1])
    assert [e.kind for e in events][0] == "start" and events[-1].kind == "done"
    assert events[-1].step == events[-1].total and {e.items for e in events} == {3}


def test_3d_model_on_a_ct_time_series(data_dir):
    import tifffile

    ct = tifffile.imread(data_dir / "ct_totalseg" / "ct.tif")[6:22, 30:70, 40:88]  # HU
    window = NormalizationConfig.ct_window()
    net = calibrated(
        normalize(ct, window)[None, None], widths=(2, 4, 8), spatial_dims=3, num_classes=2
    )
    series = np.stack([ct, ct[:, ::-1]])  # (T, Z, Y, X)
    data, config = DataConfig(normalization=window), _config(tile_size=(16, 32, 32))
    probs = predict_array(net, series, config, data)
    assert probs[2].shape == (2, *series.shape)
    alone = predict_array(net, ct, config, data)
    np.testing.assert_array_equal(probs[2][:, 0], alone[2])
    with pytest.raises(ValueError, match="tile_size"):
        predict_array(net, ct, _config(tile_size=(32, 32)), data)


def test_tta_averages_flipped_predictions(em_crop, em_net):
    image = em_crop[:64, :64]  # one tile: a flipped image gives the flipped tile
    config = _config(tile_size=(64, 64))
    tta = predict_array(em_net, image, config.replace(tta=True), DataConfig())
    flips = [(), (0,), (1,), (0, 1)]
    expected = np.mean(
        [
            np.flip(predict_array(em_net, np.flip(image, axes), config, DataConfig())[2], axes)
            for axes in flips
        ],
        axis=0,
    )
    np.testing.assert_allclose(tta[2], expected, atol=1e-6)


# --------------------------------------------------------------------------- out, stop


def test_zarr_out_and_stop_midway(em_stack, tmp_path):
    import zarr

    stack = em_stack[0][:5, :64, :64]
    net = calibrated(normalize(stack[:1], RAW)[None], widths=(4, 8))
    data, config = DataConfig(normalization=RAW), _config(tile_size=(32, 32), batch_size=2)
    reference = predict_array(net, stack, config, data)

    done = predict_array(net, stack, config, data, out=tmp_path / "all.zarr")
    assert done.complete and done.path == tmp_path / "all.zarr"
    assert isinstance(done[1], zarr.Array)
    np.testing.assert_array_equal(done[1][:], reference[1])
    assert zarr.open_group(str(tmp_path / "all.zarr"), mode="r").attrs["complete"] is True

    stopper, kinds = Stopper(), []

    def stop_in_slice_2(event: PredictEvent) -> None:
        kinds.append(event.kind)
        if event.kind == "tiles" and event.item == 2:
            stopper.stop()  # after the first tile batch of slice 2

    part = predict_array(
        net,
        stack,
        config,
        data,
        out=tmp_path / "part.zarr",
        stopper=stopper,
        callback=stop_in_slice_2,
    )
    assert isinstance(part, PredictResult) and not part.complete
    assert kinds[-1] == "stopped"
    values = part[1][:]
    np.testing.assert_array_equal(values[:2], reference[1][:2])  # finished slices kept
    assert values[2, :32].any() and not values[2, 32:].any()  # half a slice
    assert not values[3:].any()  # never reached
    assert zarr.open_group(str(tmp_path / "part.zarr"), mode="r").attrs["complete"] is False

    stopper = Stopper()
    stopper.stop()
    assert drive(predict(net, stack, config, data, stopper=stopper)).complete is False


def test_out_refuses_to_overwrite_a_folder_that_is_not_zarr(em_crop, em_net, tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a zarr folder"):
        predict_array(
            em_net, em_crop[:32, :32], _config(tile_size=(32, 32)), DataConfig(), out=tmp_path
        )
    assert (tmp_path / "notes.txt").exists()


def test_bad_depth_settings_are_explained(em_crop, em_net):
    image = em_crop[:32, :32]
    with pytest.raises(ValueError, match="heads at depths"):
        predict_array(em_net, image, _config(depths=(3,)), DataConfig())
    with pytest.raises(ValueError, match="pruned_depth"):
        predict_array(em_net, image, _config(pruned_depth=1, depths=(2,)), DataConfig())
    with pytest.raises(ValueError, match="spatial axes"):
        predict_array(em_net, image[0], _config(), DataConfig())


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, tempfile
    from pathlib import Path
    import dask.array as da, numpy as np, tifffile, torch
    from napari_unetpp.config import DataConfig, PredictConfig
    from napari_unetpp.inference import predict_array
    from napari_unetpp.model import UNetPlusPlus

    def rss_mb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) / 1024

    torch.set_num_threads(1)
    torch.manual_seed(0)
    em = tifffile.imread(sys.argv[1])  # (20, 512, 512) uint8: 5 MB
    one = da.from_array(em, chunks=(1, 512, 512))
    stack = da.concatenate([one] * 4)[:64].astype(np.float32)  # lazy, 64 MB if computed
    net = UNetPlusPlus(widths=(1, 2), depth=1).eval()  # the cheapest real UNet++
    config = PredictConfig(tile_size=(256, 256), overlap=0.0, batch_size=2, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        predict_array(net, stack[:2], config, DataConfig(), out=Path(tmp) / "warm.zarr")
        before = rss_mb("VmRSS:")
        try:  # reset the peak so that imports and warm-up do not count
            Path("/proc/self/clear_refs").write_text("5")
            peak_field = "VmHWM:"
        except OSError:
            peak_field = None
        result = predict_array(net, stack, config, DataConfig(), out=Path(tmp) / "out.zarr")
        peak = rss_mb(peak_field) if peak_field else resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 1024
        last = np.asarray(result[1][-1])
        print(json.dumps({"growth_mb": peak - before, "stack_mb": stack.nbytes / 2**20,
                          "shape": list(result[1].shape), "complete": result.complete,
                          "last_slice_std": float(last.std())}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_dask_stack_runs_with_bounded_memory(data_dir):
    """64 x 512 x 512 float32 (64 MB) through predict: peak RSS grows by far less."""
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(data_dir / "em_isbi2012" / "image.tif")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["shape"] == [64, 512, 512] and report["complete"]
    assert report["last_slice_std"] > 0  # the last slice was really predicted and written
    # holding the input or the output whole would add >= 64 MB; ~5-12 MB seen (tile
    # batch, one band of input and of blended output, zarr buffers), the same for 32 slices
    assert report["growth_mb"] < report["stack_mb"] / 2, report


# --------------------------------------------------------------------------- out of memory


def test_out_of_memory_halves_the_batch_then_falls_back_to_cpu(monkeypatch):
    net = UNetPlusPlus(widths=(2, 4), depth=1).eval()
    runner = predictor.TileRunner(net, (1,), torch.device("cpu"), 1, False, False, chunk=8)
    runner.device = torch.device("cuda")  # pretend: no GPU is needed to test the policy
    sizes: list[int] = []
    freed: list[torch.device] = []
    monkeypatch.setattr(predictor, "empty_cache", freed.append)  # (a full gc takes ~1 s)

    def fake_forward(batch: np.ndarray) -> dict[int, torch.Tensor]:
        sizes.append(len(batch))
        if runner.device.type == "cuda" and len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {1: torch.zeros((len(batch), 1, 8, 8))}

    monkeypatch.setattr(runner, "_forward", fake_forward)
    out = runner(np.zeros((8, 1, 8, 8), np.float32))
    assert out[1].shape == (8, 1, 8, 8)
    assert runner.chunk == 2 and sizes == [8, 4, 2, 2, 2, 2]
    assert len(runner.messages) == 2 and "batch reduced to 2" in runner.messages[-1]
    assert len(freed) == 2  # the cache is emptied before each retry

    def always_oom(batch: np.ndarray) -> dict[int, torch.Tensor]:
        if runner.device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {1: torch.ones((len(batch), 1, 8, 8))}

    monkeypatch.setattr(runner, "_forward", always_oom)
    assert runner(np.zeros((3, 1, 8, 8), np.float32))[1].min() == 1
    assert runner.device.type == "cpu" and "on the CPU" in runner.messages[-1]
    assert inference._accumulate_on(torch.device("cpu"), 4, (64, 64), (512, 512)) is None

    monkeypatch.setattr(runner, "_forward", lambda b: (_ for _ in ()).throw(ValueError("bug")))
    with pytest.raises(ValueError, match="bug"):  # other errors are not swallowed
        runner(np.zeros((1, 1, 8, 8), np.float32))


def test_blending_out_of_memory_redoes_the_slice_on_the_host(em_stack, monkeypatch):
    """Blending on the GPU is an optimisation: when its band does not fit, the host takes over."""
    from napari_unetpp import stitching

    stack = em_stack[0][:2, :64, :64]
    net = calibrated(normalize(stack[:1], RAW)[None], widths=(4, 8))
    data, config = DataConfig(normalization=RAW), _config(tile_size=(32, 32))
    reference = predict_array(net, stack, config, data)
    monkeypatch.setattr(inference, "_accumulate_on", lambda *_: torch.device("cpu"))
    blended_on_torch = predict_array(net, stack, config, data)  # the torch code path, on the CPU
    np.testing.assert_allclose(blended_on_torch[1], reference[1], atol=1e-6)

    def no_memory(self, shape):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(stitching._TorchBackend, "zeros", no_memory)
    monkeypatch.setattr(inference, "empty_cache", lambda device: None)
    events: list[PredictEvent] = []
    result = predict_array(net, stack, config, data, callback=events.append)
    # the host's numpy blending rounds its three steps apart; torch's lerp_ fuses them
    np.testing.assert_allclose(result[1], reference[1], rtol=0, atol=1e-6)
    assert [e.message for e in events if e.kind == "fallback"] == [
        "out of GPU memory while blending tiles: blending in host memory from now on (slower)"
    ]
    assert events[-1].step == events[-1].total


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(em_crop, em_net):
    config = _config(tile_size=(64, 64), overlap=0.5)
    cpu = predict_array(em_net, em_crop, config, DataConfig())
    # float32 convolutions on Ampere and newer use TF32 (10-bit mantissa) by default
    for mixed, tolerance in ((False, 1e-2), (True, 5e-2)):
        gpu = predict_array(
            em_net, em_crop, config.replace(device="cuda", mixed_precision=mixed), DataConfig()
        )
        for d in cpu:
            worst = float(np.abs(gpu[d] - cpu[d]).max())
            assert worst < tolerance, (mixed, d, worst)
    assert next(em_net.parameters()).device.type == "cpu"  # the model itself stayed put


def test_prepared_networks_are_reused_until_the_weights_change(em_crop):
    """The pruned / folded copies are cached per model, and rebuilt when a weight changes."""
    net = calibrated(normalize(em_crop[:32, :32], RAW)[None, None], widths=(4, 8, 16))
    image, data = em_crop[:48, :48], DataConfig(normalization=RAW)
    config = _config(tile_size=(32, 32), pruned_depth=1)
    first = predict_array(net, image, config, data)
    cached = predictor._DERIVED[net]
    assert ("pruned", 1) in cached
    again = predict_array(net, image, config, data)
    assert predictor._DERIVED[net] is cached  # no rebuild: the same copies ran
    np.testing.assert_array_equal(again[1], first[1])
    with torch.no_grad():
        net.heads["head_1"].bias += 5.0  # an optimizer step does the same (in place)
    changed = predict_array(net, image, config, data)
    assert (changed[1] > first[1]).mean() > 0.99  # the new weights were used


def test_weights_version_sees_every_change_a_cached_copy_must_follow():
    """The cache key of the prepared copies: an in-place step, a replaced weight or buffer,
    and a forward hook added or removed anywhere in the tree each change it."""
    net = UNetPlusPlus(widths=(4, 8), depth=1)
    seen = {predictor._weights_version(net)}

    def changed() -> bool:
        version = predictor._weights_version(net)
        new = version not in seen
        seen.add(version)
        return new

    conv = net.nodes[node_name(0, 0)][0]
    with torch.no_grad():
        conv.weight.add_(1.0)
    assert changed()
    conv.weight = torch.nn.Parameter(conv.weight.detach().clone())
    assert changed()
    bn = net.nodes[node_name(0, 0)][1]
    bn.running_mean = torch.ones_like(bn.running_mean)
    assert changed()
    hook = bn.register_forward_hook(lambda *_: None)
    assert changed()
    hook.remove()
    assert predictor._weights_version(net) in seen and not changed()


def test_cpu_inference_runs_channels_last_in_2d_only():
    assert memory_format(2, torch.device("cpu")) == torch.channels_last
    assert memory_format(3, torch.device("cpu")) == torch.contiguous_format
    prepared = prepare_for_inference(UNetPlusPlus(widths=(4, 8), depth=1), "cpu")
    weight = prepared.nodes[node_name(0, 0)][0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_cpu_batches_run_in_passes_whose_feature_maps_stay_on_the_heap(em_stack):
    """Four 256 x 256 tiles at width 32 make 32 MiB feature maps, which glibc maps and
    faults in afresh on every layer: on the CPU they run in two passes of two (one pass at
    width 8), with the probabilities of one tile per pass."""
    image = em_stack[0][0, :512, :512]
    for widths, passes in (((32, 64), [2, 2, 2, 2, 1]), ((8, 16), [4, 4, 1])):
        net = calibrated(normalize(image, DataConfig().normalization)[None, None], widths=widths)
        sizes: list[int] = []
        net.register_forward_pre_hook(lambda _m, args, seen=sizes: seen.append(len(args[0])))
        config = _config(tile_size=(256, 256), batch_size=4)
        batched = predict_array(net, image, config, DataConfig())
        assert sizes == passes
        single = predict_array(net, image, config.replace(batch_size=1), DataConfig())
        np.testing.assert_allclose(batched[1], single[1], atol=1e-5)


def test_prefetching_view_reads_the_next_band_in_the_background(em_crop):
    """A GPU run reads band k+1 while band k is predicted: same tiles, read off the main thread."""
    import threading

    class Recording:
        def __init__(self, data: np.ndarray) -> None:
            self.data, self.shape, self.threads = data, data.shape, []

        def __getitem__(self, index):
            self.threads.append(threading.current_thread().name)
            return self.data[index]

    image = em_crop[:100, :90]
    layout = image_layout(image.shape, None, UNetPlusPlus(widths=(4, 8), depth=1))
    grid = tile_grid(image.shape, (32, 32), 0.25, 2)
    rows = sorted({s[0] for s in grid})
    norm = lambda band: normalize(band, RAW)  # noqa: E731
    plain = ItemView(image, layout, (), norm, torch.device("cpu"))
    recording = Recording(image)
    ahead = ItemView(
        recording, layout, (), norm, torch.device("cpu"), prefetch=True, row_starts=rows, height=32
    )
    for start in grid:
        index = (slice(None), *(slice(s, s + 32) for s in start))
        torch.testing.assert_close(ahead[index], plain[index], rtol=0, atol=0)
    assert len(recording.threads) == len(rows)  # each band read once
    assert recording.threads[0] == threading.current_thread().name
    assert all(name.startswith("unetpp-read") for name in recording.threads[1:])


def test_integer_bands_travel_raw_and_give_the_hosts_normalised_tiles(em_crop):
    """An 8-bit image's bands go to the inference device as bytes and are normalised there
    (a quarter of the copy to a GPU): the tiles must be those of host normalisation."""
    from napari_unetpp.inference import _normaliser

    image = em_crop[:100, :90]
    assert image.dtype == np.uint8
    layout = image_layout(image.shape, None, UNetPlusPlus(widths=(4, 8), depth=1))
    normaliser = _normaliser(image, DataConfig())
    on_device = ItemView(image, layout, (), normaliser, torch.device("cpu"), raw_to_device=True)
    on_host = ItemView(image, layout, (), normaliser)
    for start in tile_grid(image.shape, (32, 32), 0.25, 2):
        index = (slice(None), *(slice(s, s + 32) for s in start))
        np.testing.assert_array_equal(on_device[index].numpy(), on_host[index])


def test_cpu_tiles_are_normalised_straight_into_the_batch(em_crop):
    """On the CPU each tile is normalised as it is cut, into its slot of the batch: the
    values of the host's normalised band, for whole tiles and for tiles cut short."""
    from napari_unetpp.inference import _normaliser

    image = em_crop[:100, :90]
    layout = image_layout(image.shape, None, UNetPlusPlus(widths=(4, 8), depth=1))
    normaliser = _normaliser(image, DataConfig())
    on_cpu = ItemView(image, layout, (), normaliser, torch.device("cpu"))
    on_host = ItemView(image, layout, (), normaliser)  # normalised bands, as numpy
    assert on_cpu.read_into is not None and on_host.read_into is None
    slot, written = np.full((1, 32, 32), np.nan, np.float32), 0
    for start in tile_grid(image.shape, (32, 32), 0.25, 2):
        index = (slice(None), *(slice(s, s + 32) for s in start))
        expected = on_host[index]
        np.testing.assert_array_equal(on_cpu[index].numpy(), expected)
        if on_cpu.read_into(index, slot):
            np.testing.assert_array_equal(slot, expected)
            written += 1
        else:  # cut short by the border: read and padded instead
            assert expected.shape != (1, 32, 32)
    assert written > 0


def test_a_flat_image_is_flagged_before_its_labels_are_trusted(em_crop, em_net):
    """A blank frame (an empty channel, a dead camera) normalises to nothing: say so."""
    with pytest.warns(UserWarning, match="no contrast"):
        predict_array(em_net, np.full((64, 64), 7, np.uint8), _config(), DataConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a real image: no such warning
        predict_array(em_net, em_crop[:64, :64], _config(), DataConfig())


@pytest.mark.parametrize("shape", [(), (100,), (3, 100)])
def test_too_few_axes_never_suggest_a_model_that_cannot_exist(shape) -> None:
    """A 1-D signal (or RGB of one row with its channel axis) said "use a 1D model" (or
    "0D"): models are 2D or 3D only, so the message asks for the image's axes instead."""
    net = UNetPlusPlus(in_channels=3 if len(shape) == 2 else 1, widths=(4, 8), depth=1)
    data = DataConfig(channel_axis=0 if len(shape) == 2 else None)
    with pytest.raises(ValueError, match="models are 2D or 3D") as err:
        image_layout(shape, data.channel_axis, net)
    assert "D model or" not in str(err.value)
