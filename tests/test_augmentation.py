"""Transfer augmentation: random scale, gamma, blur, noise; labels survive, seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetpp.augmentation import AugmentOptions, augment, zoom_patch
from napari_unetpp.config import IGNORE_INDEX, DataConfig, TrainConfig
from napari_unetpp.patches import PatchSampler, Volume, prepare_volumes

ALL_ON = AugmentOptions(scale=(0.5, 2.0), gamma=0.4, blur=0.5, noise=0.05, elastic=True)


def _disc_volume(radius: int = 8, size: int = 200) -> list[Volume]:
    yy, xx = np.mgrid[:size, :size]
    labels = ((yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= radius**2).astype(np.uint8)
    image = labels.astype(np.float32) + 0.1
    return prepare_volumes(image, labels, DataConfig(class_values=(1,)))


def _sampler(volumes: list[Volume], seed: int, patch=(64, 64), dims: int = 2) -> PatchSampler:
    return PatchSampler(volumes, patch, dims, 1.0, np.random.default_rng(seed))


@pytest.mark.parametrize("scale, expected", [(2.0, 4.0), (0.5, 0.25)])
def test_scaled_patches_show_objects_scaled(scale: float, expected: float) -> None:
    """A disc of area ~201 px covers ~4x (zoom 2) or ~1/4 (zoom 0.5) of that in the patches."""
    volumes = _disc_volume()
    native = _sampler(volumes, 0).sample(24, augment_patches=False)[1]
    options = AugmentOptions(scale=(scale, scale), contrast=0.0, brightness=0.0)
    _, zoomed = _sampler(volumes, 0).sample(24, options=options)
    # the largest disc seen: the whole disc fits in the patch in some samples
    ratio = (zoomed == 1).sum((1, 2)).max() / (native == 1).sum((1, 2)).max()
    print(f"zoom {scale}: disc area ratio {ratio:.2f}")
    assert ratio == pytest.approx(expected, rel=0.15)


def test_all_augmentations_keep_shapes_and_label_values() -> None:
    labels = np.zeros((6, 80, 90), np.uint16)
    labels[:, 10:30, 10:30], labels[:, 40:70, 50:85] = 7, 300  # instance ids
    labels[:, :, :5] = 0
    config = DataConfig(target="semantic", class_values=(7, 300))
    image = np.random.default_rng(1).random(labels.shape).astype(np.float32)
    for dims, patch in ((2, (48, 48)), (3, (4, 32, 32))):
        volumes = prepare_volumes(image, labels, config, dims)
        x, y = _sampler(volumes, 2, patch, dims).sample(6, options=ALL_ON)
        assert x.shape == (6, 1, *patch) and y.shape == (6, *patch)
        assert x.dtype == np.float32 and np.isfinite(x).all()
        assert set(np.unique(y)) <= {IGNORE_INDEX, 0, 1, 2}


def test_zoom_keeps_instance_ids_and_ignore() -> None:
    target = np.full((20, 20), IGNORE_INDEX, np.int64)
    target[5:15, 5:15] = 0
    target[8:12, 8:12] = 123456
    image = np.random.default_rng(0).random((2, 20, 20)).astype(np.float32)
    for size in ((40, 40), (10, 10), (33, 17)):
        zoomed_image, zoomed = zoom_patch(image, target, size)
        assert zoomed_image.shape == (2, *size) and zoomed.shape == size
        assert set(np.unique(zoomed)) == {IGNORE_INDEX, 0, 123456}


def test_same_seed_same_batches_other_seed_differs() -> None:
    volumes = _disc_volume()
    a = _sampler(volumes, 5).sample(4, options=ALL_ON)
    b = _sampler(volumes, 5).sample(4, options=ALL_ON)
    c = _sampler(volumes, 6).sample(4, options=ALL_ON)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_gamma_blur_noise_change_the_image_only() -> None:
    labels = np.zeros((32, 32), np.int64)
    labels[8:24, 8:24] = 1
    ramp = np.linspace(0, 0.3, 32)[None, :]  # grey levels between the ends (gamma moves them)
    image = np.stack([np.where(labels, 0.6, 0.1) + ramp]).astype(np.float32)
    plain_opts = AugmentOptions(contrast=0.0, brightness=0.0)
    plain = augment(image, labels, np.random.default_rng(0), options=plain_opts)
    for extra in (dict(gamma=1.0), dict(blur=1.0), dict(noise=0.2)):
        options = AugmentOptions(contrast=0.0, brightness=0.0, **extra)
        seen = [augment(image, labels, np.random.default_rng(s), options=options) for s in range(4)]
        assert any(not np.allclose(x, plain[0]) for x, _ in seen), extra
        for x, y in seen:  # geometry only from flips / rotations: the labels are intact
            assert y.sum() == labels.sum() and x.shape == image.shape


def test_train_config_fields_validate_and_old_configs_load() -> None:
    old = TrainConfig().to_dict()
    for key in [k for k in old if k.startswith("augment_")]:
        del old[key]
    loaded = TrainConfig.from_dict(old)
    options = AugmentOptions.from_train_config(loaded)
    assert options == AugmentOptions()  # old runs: the old light augmentation
    assert TrainConfig(augment_scale=[0.5, 2]).augment_scale == (0.5, 2.0)
    for bad in (
        dict(augment_scale=(2.0, 0.5)),
        dict(augment_scale=(0, 1)),
        dict(augment_blur=1.5),
        dict(augment_noise=-0.1),
    ):
        with pytest.raises(ValueError, match="TrainConfig.augment_"):
            TrainConfig(**bad)


def test_training_runs_with_transfer_augmentation() -> None:
    """Two steps of the real trainer with every augmentation on."""
    from napari_unetpp.config import ModelConfig
    from napari_unetpp.events import drive
    from napari_unetpp.training import Trainer

    volumes_image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    labels = np.zeros((64, 64), np.uint8)
    labels[20:40, 20:40] = 1
    train = TrainConfig(
        iterations=2,
        batch_size=2,
        patch_size=(32, 32),
        validate_every=2,
        device="cpu",
        mixed_precision=False,
        augment_scale=(0.5, 2.0),
        augment_gamma=0.4,
        augment_blur=0.3,
        augment_noise=0.05,
    )
    trainer = Trainer(ModelConfig(widths=(4, 8, 16), depth=2), train, DataConfig())
    result = drive(trainer.run([volumes_image], [labels]))
    assert result.info.train.augment_scale == (0.5, 2.0)


def test_zoo_specs_use_transfer_augmentation_and_an_honest_ct_split(
    data_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CT trains on the whole scan but never on the held-back test block or its neighbours."""
    import importlib.util
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    zoo_data = importlib.import_module("zoo_data")
    zoo_specs = importlib.import_module("zoo_specs")
    monkeypatch.setattr(zoo_data, "DATA", data_dir)
    for zoo_spec in zoo_specs.specs().values():
        config = TrainConfig(**zoo_spec.train_config)
        assert config.augment_scale == (0.5, 2.0) and config.augment_gamma > 0, zoo_spec.name
    images, labels, val_images, val_labels = zoo_specs._ct_train()
    assert [len(i) for i in images] == [79, 20] and len(val_images[0]) == 4
    full, _ = zoo_data.load_ct_full()
    test = [
        z for z in range(112) if any(np.array_equal(full[z], t) for t, _ in zoo_specs._ct_test())
    ]
    used = [
        z
        for z in range(112)
        if any(np.array_equal(full[z], s) for stack in images + val_images for s in stack)
    ]
    print(
        f"CT test slices {test}, nearest training/validation slices "
        f"{max(z for z in used if z < test[0])} and {min(z for z in used if z > test[-1])}"
    )
    assert test == list(range(82, 88)) and not set(test) & set(used)
    assert sum((lab > 0).any() for stack in labels for lab in stack) >= 30  # organ slices


def test_scale_probability_keeps_a_share_of_patches_at_the_data_scale() -> None:
    from napari_unetpp.augmentation import AugmentOptions, draw_scale

    def draws(probability: float, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        options = AugmentOptions(scale=(0.5, 2.0), scale_probability=probability)
        return np.array([draw_scale(options, rng) for _ in range(2000)])

    always, half, never = draws(1.0), draws(0.5), draws(0.0)
    assert np.all(never == 1.0) and not np.any(always == 1.0)
    assert 0.45 < np.mean(half == 1.0) < 0.55
    zoomed = half[half != 1.0]
    assert zoomed.min() >= 0.5 and zoomed.max() <= 2.0
    # probability 1 draws exactly as before the option existed (resumed runs stay identical)
    rng = np.random.default_rng(0)
    before = np.exp(rng.uniform(np.log(0.5), np.log(2.0), 2000))
    np.testing.assert_allclose(always, before)
