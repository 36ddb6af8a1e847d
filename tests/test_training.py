"""Trainer: events every step, stop, resume, reproducibility, fine-tuning; real-data training.

Fast tests use a tiny UNet++ on synthetic blobs; the ``slow`` tests train on the
real EM and DSB data for a few hundred iterations on the CPU and compare the
validation score with a trivial baseline (run with ``-s`` to see the numbers).
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi
from skimage import io
from skimage.draw import disk
from skimage.measure import label as connected_components
from skimage.morphology import disk as disk_footprint
from skimage.morphology import skeletonize

from napari_unetpp import metrics
from napari_unetpp.checkpoint import load_checkpoint
from napari_unetpp.config import DataConfig, ModelConfig, NormalizationConfig, TrainConfig
from napari_unetpp.events import Stopper, drive
from napari_unetpp.finetune import build_model
from napari_unetpp.model import UNetPlusPlus
from napari_unetpp.normalization import normalize
from napari_unetpp.training import Trainer, TrainEvent

TINY = ModelConfig(widths=(4, 8, 16), depth=2)


def _blobs(n: int = 3, size: int = 48, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        label = np.zeros((size, size), np.uint8)
        for _ in range(4):
            label[disk(rng.integers(8, size - 8, 2), rng.integers(4, 8), shape=label.shape)] = 1
        image = (label * 0.6 + rng.normal(0.2, 0.1, label.shape)).astype(np.float32)
        images.append(image)
        labels.append(label)
    return images, labels


def _config(**changes) -> TrainConfig:
    base = dict(
        iterations=6,
        batch_size=2,
        patch_size=(32, 32),
        validate_every=3,
        validation_fraction=0.34,
        device="cpu",
        seed=0,
    )
    base.update(changes)
    return TrainConfig(**base)


def _run(trainer: Trainer, images, labels, **kwargs) -> tuple[list[TrainEvent], object]:
    events: list[TrainEvent] = []
    result = drive(trainer.run(images, labels, **kwargs), events.append)
    return events, result


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------- fast


def test_events_every_step_validation_checkpoints_and_table(tmp_path: Path):
    images, labels = _blobs()
    trainer = Trainer(TINY, _config(), DataConfig(), output_dir=tmp_path)
    events, result = _run(trainer, images, labels)
    kinds = [e.kind for e in events]
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, 7))
    assert all(e.loss is not None and set(e.head_losses) == {1, 2} for e in steps)
    assert steps[-1].eta_s is not None
    validations = [e for e in events if e.kind == "validation"]
    assert [e.step for e in validations] == [3, 6]
    assert set(validations[0].val_scores) == {1, 2} and set(validations[0].val_dice) == {1, 2}
    assert validations[0].val_loss is not None
    assert "checkpoint" in kinds and kinds[-1] == "done"
    # a step event is yielded right after every training step (nothing batched)
    step_positions = [i for i, k in enumerate(kinds) if k == "step"]
    assert all(kinds[i + 1] in ("step", "validation", "done") for i in step_positions)
    assert (tmp_path / "best" / "config.json").is_file()
    assert (tmp_path / "last" / "trainer_state.json").is_file()
    table = result.info.metrics["depths"]
    assert set(table) == {"1", "2"}
    assert all(row["parameters"] > 0 and row["ms_per_mpx"] > 0 for row in table.values())
    assert table["1"]["parameters"] < table["2"]["parameters"]
    assert result.info.metrics["best_depth"] in (1, 2)
    assert result.checkpoint == tmp_path / "best"


def test_stop_mid_run_returns_a_usable_model():
    images, labels = _blobs()
    trainer = Trainer(TINY, _config(iterations=50), DataConfig())
    events = []
    gen = trainer.run(images, labels)
    try:
        while True:
            event = next(gen)
            events.append(event)
            if event.kind == "step" and event.step == 2:
                trainer.stop()
    except StopIteration as stop:
        result = stop.value
    assert max(e.step for e in events) == 2
    assert events[-1].kind == "done" and events[-1].message == "stopped"
    out = result.model(torch.zeros(1, 1, 32, 32))
    assert set(out) == {1, 2}
    assert result.info.provenance["stopped_early"] is True


def test_same_seed_same_losses_and_other_seed_differs():
    images, labels = _blobs()

    def losses(seed: int) -> list[float]:
        events, _ = _run(Trainer(TINY, _config(seed=seed), DataConfig()), images, labels)
        return [e.loss for e in events if e.kind == "step"]

    first, second = losses(0), losses(0)
    assert first == second
    assert losses(1) != first


def test_resume_continues_from_last_step(tmp_path: Path):
    images, labels = _blobs()
    config = _config(iterations=6, validate_every=10)
    full, _ = _run(Trainer(TINY, config, DataConfig(), output_dir=tmp_path / "a"), images, labels)
    full_losses = [e.loss for e in full if e.kind == "step"]

    stopper = Stopper()
    trainer = Trainer(TINY, config, DataConfig(), output_dir=tmp_path / "b", stopper=stopper)
    first = []
    for event in trainer.run(images, labels):
        first.append(event)
        if event.kind == "step" and event.step == 3:
            stopper.stop()
    assert (tmp_path / "b" / "last" / "optimizer.safetensors").is_file()
    resumed = Trainer(TINY, config, DataConfig(), output_dir=tmp_path / "b", resume=True)
    rest, result = _run(resumed, images, labels)
    rest_steps = [e for e in rest if e.kind == "step"]
    assert [e.step for e in rest_steps] == [4, 5, 6]
    np.testing.assert_allclose([e.loss for e in rest_steps], full_losses[3:], rtol=1e-5)
    assert result.info.provenance["iterations"] == 6


def test_each_ddp_rank_resumes_its_own_patch_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torchrun rank 0 alone writes ``last/`` and saved only its own RNG state: a
    resumed run gave every rank rank 0's stream, so all ranks trained on the same patches
    (2 processes on CPU, stopped at step 50 of 300 and resumed: weights 0.26 away from the
    uninterrupted run; now equal). Every rank's state is gathered and saved, and each rank
    continues its own; a rank the save did not know keeps its own seed's stream."""
    from napari_unetpp import resume, training

    images, labels = _blobs()
    other = np.random.default_rng(123).bit_generator.state
    monkeypatch.setattr(training, "gather_json", lambda own: [own, other], raising=False)
    config = _config(iterations=2, validate_every=10)
    _run(Trainer(TINY, config, DataConfig(), output_dir=tmp_path), images, labels)
    monkeypatch.setattr(training, "process_rank", lambda: 1)
    resumed = Trainer(TINY, config, DataConfig(), output_dir=tmp_path, resume=True)
    run, _ = resumed._setup(np.random.default_rng(config.seed + 1))
    assert run.rng.bit_generator.state == other  # was rank 0's state
    saved = {"numpy_rng": np.random.default_rng(0).bit_generator.state}
    assert resume.rank_rng_state(saved, 0) == saved["numpy_rng"]
    assert resume.rank_rng_state(saved, 1) is None


def test_finetune_new_class_count_creates_new_heads_keeps_encoder(tmp_path: Path):
    source = UNetPlusPlus.from_config(TINY)
    three = TINY.replace(num_classes=3)
    model, origin, new_heads = build_model(three, source)
    assert new_heads == ["head_1", "head_2"]
    assert model.heads["head_1"].weight.shape[0] == 3
    for a, b in zip(source.encoder_parameters(), model.encoder_parameters(), strict=False):
        assert torch.equal(a, b)
    assert torch.equal(source.nodes["x_0_1"].block[0].weight, model.nodes["x_0_1"].block[0].weight)
    with pytest.raises(ValueError, match="does not match"):
        build_model(ModelConfig(widths=(8, 16, 32), depth=2), source)


def test_freeze_encoder_keeps_encoder_weights_and_finetunes_from_checkpoint(tmp_path: Path):
    images, labels = _blobs()
    _, base = _run(
        Trainer(TINY, _config(iterations=2), DataConfig(), output_dir=tmp_path / "base"),
        images,
        labels,
    )
    before = [p.detach().clone() for p in base.model.encoder_parameters()]
    buffers = base.model.nodes["x_0_0"][1].running_mean.clone()
    head_before = base.model.heads["head_2"].weight.detach().clone()
    trainer = Trainer(
        TINY,
        _config(iterations=3, freeze_encoder=True),
        DataConfig(),
        initial=tmp_path / "base" / "best",
    )
    _, tuned = _run(trainer, images, labels)
    after = tuned.model.encoder_parameters()
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=False))
    assert torch.equal(buffers, tuned.model.nodes["x_0_0"][1].running_mean)
    assert not torch.equal(head_before, tuned.model.heads["head_2"].weight)
    assert tuned.info.provenance["started_from"].endswith("best")


def test_wrong_num_classes_is_a_value_error_with_fix():
    images, labels = _blobs()
    trainer = Trainer(TINY.replace(num_classes=3), _config(), DataConfig())
    with pytest.raises(ValueError, match="num_classes=1"):
        next(trainer.run(images, labels))


def test_sparse_scribbles_and_multiclass_train():
    images, labels = _blobs()
    scribbles = []
    for label in labels:
        s = np.zeros_like(label)
        s[::6][label[::6] == 0] = 1  # background lines
        s[::6][label[::6] == 1] = 2
        s[3::12][label[3::12] == 1] = 3  # a second class
        scribbles.append(s)
    config = DataConfig(label_mode="sparse")
    trainer = Trainer(TINY.replace(num_classes=3), _config(), config)
    events, result = _run(trainer, images, scribbles)
    assert [e.kind for e in events].count("validation") == 2
    assert result.info.data.class_values == (2, 3)


def test_3d_model_with_instance_targets_trains_on_a_volume():
    rng = np.random.default_rng(0)
    labels = np.zeros((12, 24, 24), np.uint16)
    for k, (z, y, x) in enumerate([(6, 8, 8), (6, 8, 16), (5, 17, 12)], start=1):
        zz, yy, xx = np.ogrid[:12, :24, :24]
        labels[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= 16] = k
    image = (labels > 0) + rng.normal(0, 0.1, labels.shape)
    model = ModelConfig(widths=(4, 8, 16), depth=2, spatial_dims=3, num_classes=3)
    config = _config(patch_size=(8, 16, 16), validation_fraction=0.25)
    events, result = _run(Trainer(model, config, DataConfig(target="instance")), image, labels)
    assert [e.kind for e in events].count("step") == 6
    assert result.model(torch.zeros(1, 1, 8, 16, 16))[2].shape == (1, 3, 8, 16, 16)


# ---------------------------------------------------------------- slow: real data

SMALL = ModelConfig(widths=(8, 16, 32, 64), depth=3)


def _predict(model: UNetPlusPlus, image: np.ndarray, depth: int) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(image[None, None].astype(np.float32))
        return model(x, depths=[depth])[depth][0, 0].numpy()


def _normalized(image: np.ndarray) -> np.ndarray:
    return normalize(image, NormalizationConfig())


def _em_scores(model: UNetPlusPlus, image: np.ndarray, membranes: np.ndarray, depth: int):
    normed = _normalized(image)
    pred = np.stack([_predict(model, s, depth) > 0 for s in normed])
    return metrics.iou(pred, membranes == 1), metrics.iou(~pred, membranes == 0)


@pytest.mark.slow
def test_em_training_beats_trivial_baseline(em_stack, tmp_path: Path):
    image, membranes = em_stack
    config = TrainConfig(
        iterations=300,
        batch_size=4,
        patch_size=(128, 128),
        validate_every=100,
        device="cpu",
        seed=0,
        learning_rate=3e-3,
    )
    trainer = Trainer(SMALL, config, DataConfig(), output_dir=tmp_path)
    events, result = _run(
        trainer,
        list(image[:15]),
        list(membranes[:15]),
        val_images=list(image[15:]),
        val_labels=list(membranes[15:]),
    )
    depth = SMALL.depth
    membrane_iou, interior_iou = _em_scores(result.model, image[15:], membranes[15:], depth)
    base_membrane = metrics.iou(np.ones_like(membranes[15:]), membranes[15:] == 1)
    base_interior = metrics.iou(np.ones_like(membranes[15:]), membranes[15:] == 0)
    print(
        f"\nEM slices 15-19, L{depth}: membrane IoU {membrane_iou:.3f} (all-membrane baseline "
        f"{base_membrane:.3f}); interior IoU {interior_iou:.3f} (all-interior baseline "
        f"{base_interior:.3f}); per-depth val IoU "
        f"{[e.val_scores for e in events if e.kind == 'validation'][-1]}; "
        f"table {result.info.metrics['depths']}"
    )
    assert membrane_iou > base_membrane + 0.25
    assert interior_iou > base_interior + 0.04


def _dsb(data_dir: Path, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The first ``count`` grayscale DSB 2018 images (one modality) and their instance labels."""
    images, labels = [], []
    for path in sorted(glob.glob(str(data_dir / "nuclei_dsb2018" / "images" / "*.png"))):
        image = io.imread(path)
        if image.ndim != 2:
            continue
        images.append(image)
        labels.append(tifffile.imread(path.replace("images", "labels").replace(".png", ".tif")))
        if len(images) == count:
            break
    return images, labels


@pytest.mark.slow
def test_dsb_nuclei_training_beats_trivial_baseline(data_dir: Path, tmp_path: Path):
    images, instances = _dsb(data_dir, 14)
    masks = [(lab > 0).astype(np.uint8) for lab in instances]
    config = TrainConfig(
        iterations=200,
        batch_size=4,
        patch_size=(96, 96),
        validate_every=100,
        device="cpu",
        seed=0,
        learning_rate=3e-3,
    )
    trainer = Trainer(SMALL, config, DataConfig(), output_dir=tmp_path)
    _, result = _run(
        trainer, images[:10], masks[:10], val_images=images[10:], val_labels=masks[10:]
    )
    depth = SMALL.depth
    preds = [_predict(result.model, _normalized(im), depth) > 0 for im in images[10:]]
    truth = np.concatenate([m.ravel() for m in masks[10:]]).astype(bool)
    pred = np.concatenate([p.ravel() for p in preds])
    fg_iou = metrics.iou(pred, truth)
    baseline = metrics.iou(np.ones_like(truth), truth)
    ap = np.mean(
        [
            metrics.average_precision(connected_components(p), t)
            for p, t in zip(preds, instances[10:], strict=False)
        ]
    )
    print(
        f"\nDSB nuclei (4 held-out images), L{depth}: foreground IoU {fg_iou:.3f} "
        f"(all-foreground baseline {baseline:.3f}); AP@0.5 (connected components) {ap:.3f}"
    )
    assert fg_iou > baseline + 0.3


def _scribbles(membranes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sparse scribbles from real labels, drawn in six 96x96 boxes per slice.

    Membranes (2): the membrane pixels, as a brush of membrane width would paint
    them. Interior (1): lines 2 pixels inside each cell plus a 5-pixel stroke
    along its medial axis, as a user would scribble through cells.
    """
    scribbles = np.zeros(membranes.shape, np.uint8)
    for z, mask in enumerate(membranes == 1):
        inner = ndi.binary_erosion(~mask, disk_footprint(2))
        contour = inner & ~ndi.binary_erosion(inner)
        stroke = ndi.binary_dilation(skeletonize(inner), disk_footprint(2))
        keep = np.zeros(mask.shape, bool)
        for _ in range(6):
            y, x = rng.integers(0, mask.shape[0] - 96, 2)
            keep[y : y + 96, x : x + 96] = True
        scribbles[z][mask & keep] = 2
        scribbles[z][(contour | stroke) & inner & keep] = 1
    return scribbles


@pytest.mark.slow
def test_finetune_nuclei_model_on_em_scribbles_improves_held_back_score(
    em_stack, data_dir: Path, tmp_path: Path
):
    """Start from a (small) nuclei checkpoint, adapt it to EM membranes with scribbles only."""
    image, membranes = em_stack
    images, instances = _dsb(data_dir, 8)
    base_config = TrainConfig(
        iterations=40,
        batch_size=4,
        patch_size=(96, 96),
        validate_every=1000,
        validation_fraction=0.0,
        device="cpu",
        seed=0,
        learning_rate=3e-3,
    )
    _run(
        Trainer(SMALL, base_config, DataConfig(), output_dir=tmp_path / "nuclei"),
        images,
        [(lab > 0).astype(np.uint8) for lab in instances],
    )
    base, _ = load_checkpoint(tmp_path / "nuclei" / "best")
    depth = SMALL.depth
    before = _em_scores(base, image[15:], membranes[15:], depth)
    scribbles = _scribbles(membranes[5:15], np.random.default_rng(0))
    coverage = float((scribbles > 0).mean())
    # another modality: BatchNorm statistics must be re-estimated (the fine-tune default keeps
    # them, right for a few scribbles on data like the model's own, wrong from nuclei to EM)
    tune_config = base_config.replace(
        iterations=150,
        validate_every=75,
        learning_rate=1e-3,
        validation_fraction=0.2,
        freeze_norm=False,
    )
    trainer = Trainer(
        SMALL,
        tune_config,
        DataConfig(label_mode="sparse"),
        initial=tmp_path / "nuclei" / "best",
        output_dir=tmp_path / "tuned",
    )
    _, tuned = _run(trainer, image[5:15], scribbles)
    after = _em_scores(tuned.model, image[15:], membranes[15:], depth)
    print(
        f"\nnuclei checkpoint fine-tuned on EM scribbles ({100 * coverage:.1f}% of pixels of "
        f"slices 5-14): slices 15-19 membrane IoU {before[0]:.3f} -> {after[0]:.3f}, "
        f"interior IoU {before[1]:.3f} -> {after[1]:.3f}"
    )
    assert after[0] > before[0] + 0.1
    assert after[1] > before[1] + 0.2
