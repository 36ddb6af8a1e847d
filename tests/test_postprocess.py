"""Probabilities -> labels: threshold, argmax, seeded watershed for touching objects, min_size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from napari_unetpp.config import DataConfig, ModelConfig
from napari_unetpp.labels import instance_targets
from napari_unetpp.postprocess import (
    instances_from_probabilities,
    label_threshold,
    probabilities_to_labels,
    remove_small,
)

BINARY, SEMANTIC = ModelConfig(num_classes=1), DataConfig()
INSTANCE_MODEL, INSTANCE_DATA = ModelConfig(num_classes=3), DataConfig(target="instance")


def two_touching_discs(shape=(64, 96)) -> np.ndarray:
    """Instance labels of two discs of radius 16 whose borders touch over a few pixels."""
    labels = np.zeros(shape, np.int32)
    labels[disk((32, 30), 16, shape=shape)] = 1
    labels[disk((32, 60), 16, shape=shape)] = 2  # centres 30 px apart: they overlap by 2 px
    return labels


def soft_probabilities(labels: np.ndarray, blur: float = 1.0) -> np.ndarray:
    """Background / interior / boundary probabilities a good network would give: the one-hot
    targets of ``labels`` (as training builds them), blurred and renormalised."""
    target = instance_targets(labels, boundary_width=2)
    onehot = np.stack([(target == k).astype(np.float32) for k in range(3)])
    soft = np.stack([ndi.gaussian_filter(c, blur) for c in onehot]) + 1e-3
    return (soft / soft.sum(axis=0)).astype(np.float32)


def test_binary_threshold_and_min_size():
    prob = np.zeros((20, 20), np.float32)
    prob[2:10, 2:10] = 0.9  # 64 px object
    prob[15:17, 15:17] = 0.8  # 4 px speck
    prob[12, 2] = 0.5  # exactly at the threshold: background
    labels = probabilities_to_labels(prob, BINARY, SEMANTIC)
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1}
    assert labels.sum() == 68 and labels[12, 2] == 0
    cleaned = probabilities_to_labels(prob, BINARY, SEMANTIC, min_size=5)
    assert cleaned.sum() == 64
    assert probabilities_to_labels(prob, BINARY, SEMANTIC, threshold=0.85).sum() == 64


def test_multiclass_argmax_gives_class_ids():
    prob = np.zeros((3, 4, 5), np.float32)
    prob[0] = 0.5
    prob[1, :2] = 0.7
    prob[2, :, 4] = 0.9
    labels = probabilities_to_labels(prob, ModelConfig(num_classes=3), SEMANTIC)
    expected = np.zeros((4, 5), np.int32)
    expected[:2] = 1
    expected[:, 4] = 2
    np.testing.assert_array_equal(labels, expected)
    # min_size works per connected component of each class, not per class id
    assert not (
        probabilities_to_labels(prob, ModelConfig(num_classes=3), SEMANTIC, min_size=5) == 2
    ).any()


def test_watershed_separates_two_touching_discs():
    truth = two_touching_discs()
    prob = soft_probabilities(truth)
    # a plain foreground threshold merges them: that is why instance models exist
    merged, count = ndi.label(prob[0] < 0.5)
    assert count == 1
    labels = probabilities_to_labels(prob, INSTANCE_MODEL, INSTANCE_DATA)
    assert labels.dtype == np.int32 and labels.max() == 2
    for k in (1, 2):  # each predicted object matches one disc
        best = max(
            np.sum((labels == k) & (truth == t)) / np.sum((labels == k) | (truth == t))
            for t in (1, 2)
        )
        assert best > 0.9


def test_instances_keep_unseeded_blobs_and_drop_small_ones():
    truth = two_touching_discs()
    truth[5:7, 85:87] = 3  # a 4 px object: too small for an interior (all boundary)
    prob = soft_probabilities(truth, blur=0.5)
    labels = instances_from_probabilities(prob)
    assert labels.max() == 3 and labels[5, 85] > 0
    assert instances_from_probabilities(prob, min_size=10).max() == 2


def test_stacks_of_a_2d_model_are_split_slice_by_slice():
    truth = two_touching_discs((40, 96))
    stack = np.stack([soft_probabilities(truth), soft_probabilities(truth[:, ::-1])], axis=1)
    labels = probabilities_to_labels(stack, INSTANCE_MODEL, INSTANCE_DATA)
    assert labels.shape == (2, 40, 96)
    # two objects per slice, ids unique over the stack (napari shows them as different objects)
    assert [len(np.unique(s[s > 0])) for s in labels] == [2, 2]
    assert len(np.unique(labels[labels > 0])) == 4
    # a binary stack: the same object in two slices is not merged into one 3D component
    prob = np.zeros((2, 10, 10), np.float32)
    prob[:, 2:5, 2:5] = 1
    assert probabilities_to_labels(prob, BINARY, SEMANTIC, min_size=10).sum() == 0


def test_remove_small_by_id_and_by_component():
    labels = np.zeros((10, 10), np.int32)
    labels[0:3, 0:3] = 1  # 9 px
    labels[5:6, 5:9] = 2  # 4 px
    labels[9, 9] = 1  # id 1 also has a 1 px piece elsewhere
    by_id = remove_small(labels, 5)
    assert set(np.unique(by_id)) == {0, 1} and by_id[9, 9] == 1
    by_component = remove_small(labels, 5, by_component=True)
    assert by_component[9, 9] == 0 and by_component[0, 0] == 1
    assert remove_small(labels, 0) is not labels  # always a new array
    with pytest.raises(ValueError, match="integers"):
        remove_small(labels.astype(float), 3)


def test_shape_mistakes_are_explained():
    with pytest.raises(ValueError, match="3 classes on axis 0"):
        probabilities_to_labels(
            np.zeros((2, 8, 8), np.float32), ModelConfig(num_classes=3), SEMANTIC
        )
    with pytest.raises(ValueError, match="instance model predicts 3 channels"):
        probabilities_to_labels(np.zeros((8, 8), np.float32), BINARY, INSTANCE_DATA)
    with pytest.raises(ValueError, match="threshold"):
        probabilities_to_labels(np.zeros((8, 8), np.float32), BINARY, SEMANTIC, threshold=1.5)


def test_labels_stream_into_out_one_slice_at_a_time(em_stack, tmp_path):
    """With ``out`` (a zarr array) a stack's labels are written slice by slice: the same labels
    as in memory, and never a whole-stack array in Python's memory."""
    import tracemalloc

    import zarr

    from napari_unetpp.postprocess import labels_shape

    membranes = em_stack[1]  # real ISBI membrane labels (20 slices) as probabilities
    prob = np.where(membranes > 0, 0.8, 0.1).astype(np.float32)
    model, data = ModelConfig(), DataConfig()
    whole_bytes = np.zeros(labels_shape(prob.shape, model), np.int32).nbytes

    tracemalloc.start()
    in_memory = probabilities_to_labels(prob, model, data, min_size=5)
    _, peak_in_memory = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    out = zarr.open_array(
        str(tmp_path / "labels.zarr"),
        mode="w",
        shape=prob.shape,
        dtype="int32",
        chunks=(1, *prob.shape[1:]),
    )
    tracemalloc.start()
    returned = probabilities_to_labels(prob, model, data, min_size=5, out=out)
    _, peak_streamed = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert returned is out
    np.testing.assert_array_equal(out[...], in_memory)
    assert peak_in_memory >= whole_bytes
    # a few slices of working memory (labelling, sizes), far from the whole stack
    assert peak_streamed < whole_bytes / 2, (peak_streamed, whole_bytes)
    with pytest.raises(ValueError, match="out has shape"):
        probabilities_to_labels(prob, model, data, out=np.zeros((2, 2), np.int32))


def test_labels_use_the_models_own_threshold_unless_one_is_given():
    """A model's validation-chosen threshold (``ModelConfig.threshold``) cuts its labels when
    the caller gives none (``PredictConfig.threshold`` None); a given one wins."""
    prob = np.linspace(0.05, 0.95, 10 * 10, dtype=np.float32).reshape(10, 10)
    own = ModelConfig(num_classes=1, threshold=0.7)
    labels = probabilities_to_labels(prob, own, SEMANTIC)
    assert label_threshold(own) == 0.7 and label_threshold(own, 0.4) == 0.4
    assert label_threshold(BINARY) == 0.5  # a model that records none
    np.testing.assert_array_equal(labels, prob > 0.7)
    np.testing.assert_array_equal(probabilities_to_labels(prob, own, SEMANTIC, 0.5), prob > 0.5)
    np.testing.assert_array_equal(probabilities_to_labels(prob, BINARY, SEMANTIC), prob > 0.5)
    # an instance model: seeds and foreground at its own threshold
    soft = soft_probabilities(two_touching_discs(), blur=2.0)
    model = INSTANCE_MODEL.replace(threshold=0.7)
    ours = probabilities_to_labels(soft, model, INSTANCE_DATA)
    np.testing.assert_array_equal(ours, instances_from_probabilities(soft, 0.7))
    assert (ours > 0).sum() < (instances_from_probabilities(soft, 0.5) > 0).sum()
