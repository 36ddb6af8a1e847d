"""Losses: sane values, exact ignore semantics, binary / multi-class, 2D / 3D, deep supervision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_unetpp.config import IGNORE_INDEX
from napari_unetpp.losses import DeepSupervisionLoss, segmentation_loss
from napari_unetpp.model import UNetPlusPlus

SHAPES = {2: (2, 12, 10), 3: (2, 6, 8, 7)}  # (N, *spatial), odd sizes on purpose


def _target(spatial_dims: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, max(num_classes, 2), SHAPES[spatial_dims], generator=g)


def _perfect_logits(target: torch.Tensor, num_classes: int, scale: float = 20.0) -> torch.Tensor:
    safe = target.clamp(min=0)
    if num_classes == 1:
        return (safe.float() * 2 - 1).unsqueeze(1) * scale
    return F.one_hot(safe, num_classes).movedim(-1, 1).float() * 2 * scale - scale


def _with_ignored(target: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ignored = torch.rand(target.shape, generator=g) < 0.4
    return torch.where(ignored, torch.full_like(target, IGNORE_INDEX), target), ignored


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_perfect_prediction_is_near_zero_and_wrong_one_is_high(spatial_dims, num_classes):
    target = _target(spatial_dims, num_classes)
    perfect = _perfect_logits(target, num_classes)
    if num_classes == 1:
        wrong = -perfect
    else:  # every pixel confidently predicts the next class
        wrong = _perfect_logits((target + 1) % num_classes, num_classes)
    good = segmentation_loss(perfect, target, num_classes)
    bad = segmentation_loss(wrong, target, num_classes)
    chance = segmentation_loss(torch.zeros_like(perfect), target, num_classes)
    assert good.ndim == 0 and good.item() < 1e-3
    assert bad.item() > 10  # cross-entropy of confident mistakes (~40) plus Dice ~1
    assert good < chance < bad


def test_known_binary_value():
    # logits 0 -> p = 0.5 everywhere; half the pixels are foreground:
    # BCE = log 2, Dice = 2 * 0.5 * 8 / (0.5 * 16 + 8) = 0.5
    target = torch.tensor([[[0, 1] * 8]]).reshape(1, 4, 4)
    loss = segmentation_loss(torch.zeros(1, 1, 4, 4), target, 1)
    assert loss.item() == pytest.approx(math.log(2) + 0.5, abs=1e-5)


@pytest.mark.parametrize("num_classes", [1, 4])
def test_cross_entropy_term_matches_torch_with_ignore_index(num_classes):
    target, _ = _with_ignored(_target(2, num_classes))
    logits = torch.randn(target.shape[0], num_classes, *target.shape[1:])
    ours = segmentation_loss(logits, target, num_classes, dice_weight=0.0)
    if num_classes == 1:
        valid = target != IGNORE_INDEX
        ref = F.binary_cross_entropy_with_logits(logits[:, 0][valid], target[valid].float())
    else:
        ref = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_multiclass_dice_averages_only_the_classes_present():
    target = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 0]]])  # class 2 absent
    logits = torch.randn(1, 3, 2, 4)
    dice_part = segmentation_loss(logits, target, 3) - segmentation_loss(logits, target, 3, 0.0)
    probs = logits.softmax(1)
    onehot = F.one_hot(target, 3).movedim(-1, 1).float()
    per_class = [
        1
        - (2 * (probs[:, c] * onehot[:, c]).sum() + 1e-5)
        / (probs[:, c].sum() + onehot[:, c].sum() + 1e-5)
        for c in (0, 1)
    ]
    assert dice_part.item() == pytest.approx(sum(per_class).item() / 2, rel=1e-4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_ignored_pixels_get_exactly_zero_gradient(spatial_dims, num_classes):
    target, ignored = _with_ignored(_target(spatial_dims, num_classes))
    logits = torch.randn(target.shape[0], num_classes, *target.shape[1:], requires_grad=True)
    segmentation_loss(logits, target, num_classes).backward()
    grad = logits.grad
    assert grad is not None
    assert torch.all(grad.movedim(1, -1)[ignored] == 0)
    assert grad.movedim(1, -1)[~ignored].abs().sum() > 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_changing_ignored_logits_changes_nothing(spatial_dims, num_classes):
    target, ignored = _with_ignored(_target(spatial_dims, num_classes))
    base = torch.randn(target.shape[0], num_classes, *target.shape[1:])
    mask = ignored.unsqueeze(1).expand_as(base)
    results = []
    for fill in (None, 1e4, float("nan"), float("inf")):
        logits = base.clone() if fill is None else base.masked_fill(mask, fill)
        logits.requires_grad_(True)
        loss = segmentation_loss(logits, target, num_classes)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.all(logits.grad[mask] == 0)
        results.append((loss.detach(), logits.grad[~mask].clone()))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert torch.equal(grad, results[0][1])


@pytest.mark.parametrize("num_classes", [1, 3])
def test_an_ignored_sample_is_the_same_as_leaving_it_out(num_classes):
    target = _target(2, num_classes)
    logits = torch.randn(target.shape[0], num_classes, *target.shape[1:])
    masked = target.clone()
    masked[1] = IGNORE_INDEX
    both = segmentation_loss(logits, masked, num_classes)
    alone = segmentation_loss(logits[:1], target[:1], num_classes)
    assert both.item() == pytest.approx(alone.item(), rel=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_all_ignored_is_zero_with_a_graph_and_no_nan(spatial_dims, num_classes):
    target = torch.full(SHAPES[spatial_dims], IGNORE_INDEX)
    logits = torch.randn(target.shape[0], num_classes, *target.shape[1:], requires_grad=True)
    loss = segmentation_loss(logits, target, num_classes)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_custom_ignore_index_and_channel_dim_target():
    target = _target(2, 1)
    logits = torch.randn(target.shape[0], 1, *target.shape[1:])
    marked = target.clone()
    marked[:, :3] = 255
    default_marked = target.clone()
    default_marked[:, :3] = IGNORE_INDEX
    a = segmentation_loss(logits, marked, 1, ignore_index=255)
    b = segmentation_loss(logits, default_marked, 1)
    c = segmentation_loss(logits, default_marked.unsqueeze(1), 1)  # (N, 1, H, W) accepted
    assert a.item() == pytest.approx(b.item()) and b.item() == pytest.approx(c.item())


def test_half_precision_logits_give_a_float32_loss():
    target = _target(2, 3)
    logits = torch.randn(target.shape[0], 3, *target.shape[1:]).to(torch.bfloat16)
    loss = segmentation_loss(logits, target, 3)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_bad_inputs_raise_value_errors_that_say_what_to_do():
    target = _target(2, 3)
    with pytest.raises(ValueError, match="num_classes"):
        segmentation_loss(torch.randn(2, 2, 12, 10), target, 3)
    with pytest.raises(ValueError, match="does not match"):
        segmentation_loss(torch.randn(2, 3, 12, 11), target, 3)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        segmentation_loss(torch.randn(2, 1, 12, 10), target, 1)  # ids 0..2 for a binary head
    with pytest.raises(ValueError, match="dice_weight"):
        segmentation_loss(torch.randn(2, 3, 12, 10), target, 3, dice_weight=-1)
    with pytest.raises(ValueError, match="N, C, H, W"):
        segmentation_loss(torch.randn(3, 12, 10), target[0], 3)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_deep_supervision_is_the_mean_of_the_heads(num_classes):
    target, _ = _with_ignored(_target(2, num_classes))
    heads = {d: torch.randn(target.shape[0], num_classes, *target.shape[1:]) for d in (1, 2, 3)}
    loss_fn = DeepSupervisionLoss(num_classes, dice_weight=0.5)
    total, per_head = loss_fn(heads, target)
    assert sorted(per_head) == [1, 2, 3]
    for d, value in per_head.items():
        expected = segmentation_loss(heads[d], target, num_classes, dice_weight=0.5)
        assert value.item() == pytest.approx(expected.item())
    assert total.item() == pytest.approx(sum(v.item() for v in per_head.values()) / 3)
    single, only = loss_fn({2: heads[2]}, target)  # a pruned network: just its head
    assert single.item() == pytest.approx(per_head[2].item()) and list(only) == [2]
    with pytest.raises(ValueError, match="at least one head"):
        loss_fn({}, target)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_supervision_trains_a_real_model(spatial_dims):
    torch.manual_seed(0)
    net = UNetPlusPlus(widths=(4, 8, 16), depth=2, spatial_dims=spatial_dims, num_classes=2)
    size = (16, 16) if spatial_dims == 2 else (8, 8, 8)
    x = torch.randn(2, 1, *size)
    target = (x[:, 0] > 0).long()
    target[:, :2] = IGNORE_INDEX
    loss_fn = DeepSupervisionLoss(num_classes=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        total, _ = loss_fn(net(x), target)
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
