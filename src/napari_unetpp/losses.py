"""Segmentation losses: (BCE or CE) + soft Dice, with an ignore label and deep supervision.

The UNet++ paper (Zhou et al., TMI 2020, eq. 1) trains every deep-supervision
head with binary cross-entropy plus Dice and averages over the heads; this
module does that for one output channel (sigmoid) and for several mutually
exclusive classes (softmax), in 2D ``(N, C, H, W)`` and 3D ``(N, C, D, H, W)``.

Ignored pixels (``target == ignore_index``: unlabelled pixels of sparse
scribbles, borders of a crop) are removed from *both* terms: their logits are
replaced by a constant through ``torch.where`` before any arithmetic, so their
gradient is exactly zero and even ``inf``/``NaN`` logits there change nothing.

Dice design choices (and why)
-----------------------------
* *Batch Dice*: intersections and sums run over the whole batch and all spatial
  axes, per class, not per sample. Sparse scribbles and random patches often
  hold a class in only some samples; per-sample Dice of those is 0/0, noisy and
  dominated by the smoothing constant.
* *Mean over the classes present in the batch* (among non-ignored pixels): a
  class absent from the batch has no defined Dice. Smoothing would either
  charge a full penalty for any tiny probability (fighting the cross-entropy,
  which already pushes absent classes down) or a meaningless zero. Averaging
  over present classes keeps the Dice term on the scale of 0..1 and comparable
  between batches. For one output channel the foreground is the only Dice
  class, so a batch without foreground has a Dice term of 0 (BCE still
  penalises false positives there).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import IGNORE_INDEX

__all__ = ["segmentation_loss", "soft_dice_loss", "DeepSupervisionLoss", "preservation_loss"]

#: Keeps Dice finite and differentiable; tiny because absent classes are excluded anyway.
_SMOOTH = 1e-5


def _check_shapes(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Validate shapes; accept ``(N, 1, *spatial)`` targets too (returns ``(N, *spatial)``)."""
    if logits.ndim not in (4, 5):
        raise ValueError(
            f"logits must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(logits.shape)}"
        )
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} channel(s) but num_classes={num_classes}; "
            "the model's num_classes and the loss's must agree"
        )
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            f"expected {(logits.shape[0], *logits.shape[2:])} (one class id per pixel)"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        target = target.long()
    return target


def _check_values(target: torch.Tensor, valid: torch.Tensor, n_ids: int, ignore_index: int) -> None:
    """Refuse class ids out of range (on CUDA they would be a cryptic device-side assert)."""
    bad = valid & ((target < 0) | (target >= n_ids))
    if bool(bad.any()):
        found = torch.unique(target[bad])[:10].tolist()
        raise ValueError(
            f"target holds class id(s) {found} outside 0..{n_ids - 1} "
            f"(ignore_index is {ignore_index}); map labels with data.labels_to_targets, "
            "or raise num_classes"
        )


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``1 - Dice`` averaged over the classes present (batch Dice; see the module notes).

    Parameters
    ----------
    probs, onehot
        ``(N, K, *spatial)`` probabilities and one-hot targets.
    weight
        ``(N, 1, *spatial)``: 1 for pixels that count, 0 for ignored ones.
    """
    dims = (0, *range(2, probs.ndim))
    probs = probs * weight
    onehot = onehot * weight
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + _SMOOTH) / (denominator + _SMOOTH)
    present = (onehot.sum(dims) > 0).to(dice.dtype)
    # sum/clamp rather than a boolean index: no host sync, and a graph even if none is present
    return ((1 - dice) * present).sum() / present.sum().clamp(min=1)


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    dice_weight: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Cross-entropy + ``dice_weight`` * soft Dice for one head.

    Parameters
    ----------
    logits
        ``(N, C, *spatial)`` raw scores, ``C == num_classes``; computed in
        float32 whatever the autocast dtype, for a stable log/exp.
    target
        int64 ``(N, *spatial)``: class ids ``0..C-1`` (``0/1`` when
        ``num_classes == 1``), ``ignore_index`` for pixels that must not count.
    num_classes
        1: BCE-with-logits + Dice of the sigmoid (foreground). More: CE + Dice
        of the softmax (mean over the classes present in the batch).
    dice_weight
        Weight of the Dice term (0 gives plain cross-entropy).

    Returns
    -------
    Tensor
        A scalar. If every pixel is ignored it is 0, still attached to the graph
        (so ``backward()`` works and gives zero gradients instead of NaN).
    """
    if dice_weight < 0:
        raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
    target = _check_shapes(logits, target, num_classes)
    valid = target != ignore_index
    _check_values(target, valid, 2 if num_classes == 1 else num_classes, ignore_index)

    weight = valid.unsqueeze(1).to(torch.float32)
    count = weight.sum().clamp(min=1)
    # replace ignored logits before any arithmetic: exact zero gradient, NaN-proof
    logits = torch.where(valid.unsqueeze(1), logits.float(), torch.zeros((), device=logits.device))
    safe_target = torch.where(valid, target, torch.zeros_like(target))

    if num_classes == 1:
        truth = safe_target.unsqueeze(1).to(torch.float32)
        per_pixel = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
        cross_entropy = (per_pixel * weight).sum() / count
        if dice_weight == 0:
            return cross_entropy
        dice = soft_dice_loss(torch.sigmoid(logits), truth, weight)
    else:
        per_pixel = F.cross_entropy(logits, safe_target, reduction="none")
        cross_entropy = (per_pixel * weight[:, 0]).sum() / count
        if dice_weight == 0:
            return cross_entropy
        probs = torch.softmax(logits, dim=1)
        # scatter straight into float32: F.one_hot would allocate an int64 copy first
        onehot = torch.zeros_like(probs).scatter_(1, safe_target.unsqueeze(1), 1.0)
        dice = soft_dice_loss(probs, onehot, weight)
    return cross_entropy + dice_weight * dice


class DeepSupervisionLoss(nn.Module):
    """Mean of :func:`segmentation_loss` over the deep-supervision heads.

    Every head predicts at full resolution, so all share one target (no
    down-sampled targets as in nnU-Net). Equal weights follow the paper; a
    pruned network (one head) gets exactly its head's loss.

    Example
    -------
    >>> loss_fn = DeepSupervisionLoss(num_classes=1)
    >>> logits = {1: torch.zeros(1, 1, 8, 8), 2: torch.zeros(1, 1, 8, 8)}
    >>> total, per_head = loss_fn(logits, torch.ones(1, 8, 8, dtype=torch.long))
    >>> sorted(per_head)
    [1, 2]
    """

    def __init__(
        self, num_classes: int, dice_weight: float = 1.0, ignore_index: int = IGNORE_INDEX
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index

    def forward(
        self, logits: Mapping[int, torch.Tensor], target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Return ``(mean over heads, {depth: loss})``; per-head losses stay on the graph.

        Call ``.item()`` / ``.detach()`` on the per-head values for logging.
        """
        if isinstance(logits, torch.Tensor) or not logits:
            raise ValueError(
                "DeepSupervisionLoss expects the model output {depth: logits} "
                f"with at least one head, got {type(logits).__name__}"
            )
        per_head = {
            int(depth): segmentation_loss(
                head, target, self.num_classes, self.dice_weight, self.ignore_index
            )
            for depth, head in logits.items()
        }
        total = torch.stack(list(per_head.values())).mean()
        return total, per_head

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dice_weight={self.dice_weight}, "
            f"ignore_index={self.ignore_index}"
        )


def preservation_loss(
    logits: Mapping[int, torch.Tensor],
    teacher: Mapping[int, torch.Tensor],
    target: torch.Tensor,
    everywhere: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """KL divergence from the starting model's own predictions on the *unlabelled* pixels
    (``everywhere``: on every pixel, labelled too).

    Why: a fine-tune on a few scribbles sees only the painted pixels; with
    nothing to hold the rest, the network drifts wherever the scribbles are
    unrepresentative (a thick brush teaches thick membranes everywhere). Asking
    each head to keep the starting model's probabilities where the user painted
    nothing ("learning without forgetting", Li & Hoiem 2017) keeps what it knew
    and lets the labels change only what they contradict. Labelled pixels are
    left to :func:`segmentation_loss`, and the term is 0 while the network still
    predicts what its starting copy does.

    Dense labels (``everywhere``): a slab of correct masks is a narrow sample of the data
    (organs on CT slices 90-105), and fitted alone it moved the model on slices nobody
    painted (unseen liver Dice 0.912 -> 0.801); held to its starting predictions on the
    same pixels too, the labels move it only as far as they outweigh what it knew.

    ``logits`` and ``teacher`` are ``{depth: (N, C, *spatial)}`` logits of the
    network being trained and of its frozen starting copy (same heads).
    """
    target = target[:, 0] if target.ndim == next(iter(logits.values())).ndim else target
    free = torch.ones_like(target, dtype=torch.bool) if everywhere else target == ignore_index
    free = free.unsqueeze(1).to(torch.float32)
    count = free.sum().clamp(min=1)
    total = torch.zeros((), device=target.device)
    for depth, head in logits.items():
        head = head.float()
        soft = teacher[depth].float().detach()
        if head.shape[1] == 1:  # KL of two Bernoullis: BCE minus the teacher's own entropy
            wanted = torch.sigmoid(soft)
            per_pixel = F.binary_cross_entropy_with_logits(
                head, wanted, reduction="none"
            ) - F.binary_cross_entropy_with_logits(soft, wanted, reduction="none")
        else:
            wanted_log = torch.log_softmax(soft, 1)
            per_pixel = (wanted_log.exp() * (wanted_log - torch.log_softmax(head, 1))).sum(
                1, keepdim=True
            )
        total = total + (per_pixel * free).sum() / count
    return total / max(len(logits), 1)
