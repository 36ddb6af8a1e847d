"""Bounded memory for labels (issue 18, items 5 and 6).

Label ids near 2**31 are remapped without a table indexed by id, and big 2D planes are
turned into labels band by band: semantic bands equal the whole-plane labels exactly,
instance bands equal them up to relabelling on a real nuclei image, and the peak
memory of a lazy 4000 x 4000 plane stays a small fraction of the plane.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from skimage import io

from napari_unetpp import postprocess
from napari_unetpp.checkpoint import load_checkpoint
from napari_unetpp.config import IGNORE_INDEX, DataConfig, ModelConfig, PredictConfig
from napari_unetpp.inference import predict_array
from napari_unetpp.labels import labels_to_targets, remap_values
from napari_unetpp.normalization import looks_rgb, rgb_to_grey
from napari_unetpp.postprocess import probabilities_to_labels, remove_small

BIG = 2**31 - 10
BINARY, SEMANTIC = ModelConfig(num_classes=1), DataConfig()
INSTANCE_MODEL, INSTANCE_DATA = ModelConfig(num_classes=3), DataConfig(target="instance")


def _peak_mb(function, *args, **kwargs):
    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return result, peak


# --------------------------------------------------------------------------- label ids


def test_label_ids_near_2_31_map_to_classes_in_bounded_memory():
    labels = np.zeros((64, 64), np.int64)
    labels[:10] = BIG
    labels[20:30] = BIG + 7
    labels[40:45] = 5
    config = DataConfig(class_values=(BIG + 7, BIG))  # order given by the user: class 1, 2
    targets, peak = _peak_mb(labels_to_targets, labels, config)
    print(f"peak {peak:.2f} MB for ids near 2**31")
    assert peak < 2  # a table indexed by id would take 16 GiB
    assert (targets[:10] == 2).all() and (targets[20:30] == 1).all()
    assert (targets[40:45] == 0).all() and (targets[50:] == 0).all()


def test_sparse_scribbles_with_huge_class_ids():
    labels = np.array([[0, 1, BIG], [BIG, 3, 1]], np.int64)
    targets = labels_to_targets(labels, DataConfig(label_mode="sparse", class_values=(BIG,)))
    assert targets.tolist() == [[IGNORE_INDEX, 0, 1], [1, IGNORE_INDEX, 0]]


def test_remap_values_keeps_the_given_order_and_default():
    array = np.array([7, 3, 9, 0, 3])
    assert remap_values(array, [9, 3], [1, 2], -5).tolist() == [-5, 2, 1, -5, 2]
    assert remap_values(array, [], [], 4).tolist() == [4] * 5


def test_remove_small_on_huge_instance_ids_is_bounded():
    labels = np.zeros((64, 64), np.int64)
    labels[:2, :2] = BIG  # 4 pixels: small
    labels[10:30, 10:30] = BIG - 3
    out, peak = _peak_mb(remove_small, labels, 10)
    print(f"remove_small peak {peak:.2f} MB")
    assert peak < 2
    assert not out[:2, :2].any() and (out[10:30, 10:30] != 0).all()


# --------------------------------------------------------------------------- bands


def test_semantic_bands_equal_the_whole_plane_on_em(em_stack):
    prob = em_stack[0][0].astype(np.float32) / 255  # a real, noisy "probability" map
    whole = probabilities_to_labels(prob, BINARY, SEMANTIC, min_size=30)
    banded = probabilities_to_labels(prob, BINARY, SEMANTIC, min_size=30, band_rows=37)
    print(f"binary: {int(whole.sum())} foreground pixels, {int((whole != banded).sum())} differ")
    np.testing.assert_array_equal(banded, whole)
    classes = np.stack([prob, 1 - prob, np.roll(prob, 5, axis=1)])
    three = ModelConfig(num_classes=3)
    whole = probabilities_to_labels(classes, three, SEMANTIC, min_size=12)
    banded = probabilities_to_labels(classes, three, SEMANTIC, min_size=12, band_rows=50)
    np.testing.assert_array_equal(banded, whole)


@pytest.fixture(scope="module")
def nuclei_probabilities(data_dir: Path) -> np.ndarray:
    """The shipped nuclei model's instance probabilities on a 256 x 384 crop of a DSB image."""
    image = io.imread(data_dir / "nuclei_dsb2018" / "images" / "07fb37aafa662660.png")
    if looks_rgb(image.shape):
        image = rgb_to_grey(image)
    model, info = load_checkpoint(Path(postprocess.__file__).parent / "models" / "nuclei")
    result = predict_array(
        model, np.asarray(image)[:256, :384], PredictConfig(device="cpu"), info.data
    )
    return np.asarray(result[max(result)])


def _one_to_one(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(objects in a, pixels not explained by a one-to-one map of ids between a and b)."""
    pairs, counts = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1, return_counts=True)
    fg = (pairs[0] > 0) | (pairs[1] > 0)
    pairs, counts = pairs[:, fg], counts[fg]
    ids_a, n_a = np.unique(pairs[0], return_counts=True)
    ids_b, n_b = np.unique(pairs[1], return_counts=True)
    bad_a, bad_b = set(ids_a[n_a > 1]) | {0}, set(ids_b[n_b > 1]) | {0}
    bad = [k for k, (x, y) in enumerate(pairs.T) if x in bad_a or y in bad_b]
    return len(set(a.ravel()) - {0}), int(counts[bad].sum())


def test_instance_bands_match_the_whole_plane_up_to_relabelling(nuclei_probabilities):
    prob = nuclei_probabilities
    whole = probabilities_to_labels(prob, INSTANCE_MODEL, INSTANCE_DATA, min_size=10)
    for rows in (32, 75):
        banded = probabilities_to_labels(
            prob, INSTANCE_MODEL, INSTANCE_DATA, min_size=10, band_rows=rows
        )
        objects, differing = _one_to_one(whole, banded)
        print(f"bands of {rows} rows: {objects} nuclei, {differing} pixels differ")
        assert objects > 30 and differing == 0
        assert len(np.unique(banded)) - 1 == int(banded.max())  # ids 1..N, no gaps


def test_instance_ids_are_unique_across_bands_and_slices(nuclei_probabilities):
    upside_down = nuclei_probabilities[:, ::-1]
    stack = np.stack([nuclei_probabilities, upside_down], axis=1)
    out = zarr.zeros((2, *stack.shape[2:]), chunks=(1, 64, 64), dtype="int32")
    probabilities_to_labels(stack, INSTANCE_MODEL, INSTANCE_DATA, out=out, band_rows=40)
    first, second = out[0], out[1]
    assert first.max() > 30 and second.min() == 0
    assert set(np.unique(first)) & set(np.unique(second)) == {0}
    _, differing = _one_to_one(first, second[::-1])
    assert differing == 0


def test_big_planes_are_banded_automatically_and_3d_volumes_never():
    assert postprocess._band_plan((20000, 20000), True, 0, None) == (209, 96)
    assert postprocess._band_plan((20000, 20000), False, 50, None) == (209, 50)
    assert postprocess._band_plan((1024, 1024), True, 0, None) is None
    assert postprocess._band_plan((64, 9000, 9000), True, 0, None) is None
    with pytest.raises(ValueError, match="band_rows"):
        probabilities_to_labels(np.zeros((4, 4), np.float32), BINARY, SEMANTIC, band_rows=0)


def _fake_probabilities(block: np.ndarray, block_info=None) -> np.ndarray:
    (y0, _), (x0, _) = block_info[None]["array-location"]
    rows = np.sin(np.arange(y0, y0 + block.shape[0], dtype=np.float32) / 9)
    columns = np.sin(np.arange(x0, x0 + block.shape[1], dtype=np.float32) / 7)
    return np.float32(0.5) + np.float32(0.5) * np.outer(rows, columns)


def _banded_peak(height: int, folder: Path) -> tuple[float, np.ndarray, da.Array]:
    shape = (height, 4000)
    prob = da.zeros(shape, dtype=np.float32, chunks=(250, 4000)).map_blocks(
        _fake_probabilities, dtype=np.float32
    )
    out = zarr.open_array(
        str(folder / f"labels{height}.zarr"),
        mode="w",
        shape=shape,
        chunks=(512, 1024),
        dtype="int32",
    )
    with dask.config.set(scheduler="synchronous"):  # one block at a time, as zarr reads
        _, peak = _peak_mb(
            probabilities_to_labels, prob, BINARY, SEMANTIC, min_size=20, out=out, band_rows=256
        )
    return peak, out[:], prob


def test_lazy_4000_plane_is_labelled_in_memory_that_does_not_grow_with_it(tmp_path: Path):
    small, _, _ = _banded_peak(1000, tmp_path)
    peak, labels, prob = _banded_peak(4000, tmp_path)
    plane_mb = 4 * labels.size / 2**20
    print(
        f"peak {peak:.1f} MB for a 4000 x 4000 plane ({plane_mb:.0f} MB as float32), "
        f"{small:.1f} MB for 1000 x 4000"
    )
    assert peak < 1.15 * small + 2  # bands: memory does not grow with the plane's height
    assert peak < plane_mb  # whole-plane labelling held 366 MB here (6 x the plane)
    expected = (np.asarray(prob[:300]) > 0.5).astype(np.int32)
    np.testing.assert_array_equal(
        labels[:250],  # away from the crop's edge
        remove_small(expected, 20, by_component=True)[:250],
    )
    assert labels.any() and labels[-1].any()
