"""'Label here next': the deepest head's doubt, spread over strata of content (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetpp.config import NormalizationConfig
from napari_unetpp.disagreement import disagreement_map
from napari_unetpp.label_next import NEGLIGIBLE_DOUBT, label_here_next, margin_doubt, rank_regions


def _covered(regions: list, shape: tuple[int, ...]) -> np.ndarray:
    """How many chosen regions cover each pixel (overlap shows as 2 or more)."""
    count = np.zeros(shape, np.int32)
    for region in regions:
        count[region.index] += 1
    return count


def test_margin_doubt_is_one_on_the_decision_boundary_and_zero_when_sure() -> None:
    binary = np.array([0.0, 0.25, 0.5, 0.75, 1.0], "float32")
    assert margin_doubt(binary, 1) == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    three = np.array([[0.4, 1.0, 0.5], [0.4, 0.0, 0.3], [0.2, 0.0, 0.2]], "float32")
    assert margin_doubt(three, 3) == pytest.approx([1.0, 0.0, 0.8])


def test_strata_take_the_best_block_of_each_kind_of_content() -> None:
    score = np.zeros((1, 40, 40), "float32")
    foreground = np.zeros((1, 40, 40), bool)
    score[0, :10, :30] = 0.9  # the three most doubtful blocks: all background
    foreground[0, 30:, :] = True  # the bottom row of blocks: foreground
    score[0, 30:, 10:20] = 0.4  # the best foreground block, less doubtful
    plain = rank_regions(score, (10, 10), top=2)
    assert [r.start for r in plain] == [(0, 0), (0, 10)]
    mixed = rank_regions(score, (10, 10), top=2, strata=foreground)
    assert [r.start for r in mixed] == [(0, 0), (30, 10)]  # best first, one per stratum
    assert [r.score for r in mixed] == pytest.approx([0.9, 0.4])
    many = rank_regions(score, (10, 10), top=7, strata=foreground)
    assert len(many) == 7 and _covered(many, score.shape).max() == 1
    assert rank_regions(score, (10, 10), top=0, strata=foreground) == []
    assert len(rank_regions(score, (10, 10), top=99, strata=foreground)) == 16  # every block
    with pytest.raises(ValueError, match="strata"):
        rank_regions(score, (10, 10), strata=foreground[0])


def test_label_here_next_follows_the_deepest_head_not_the_shallow_ones() -> None:
    # Slice 0: the shallow heads call a dark patch foreground where the deepest is sure
    # (high depth disagreement, nothing for the deepest to learn); slice 1: the deepest
    # head sits on its decision boundary, the shallow heads agree with it.
    probs = {d: np.zeros((2, 32, 32), "float32") for d in (1, 2, 3, 4)}
    for d in (1, 2):
        probs[d][0, :8, :8] = 1.0
    for d in (1, 2, 3, 4):
        probs[d][1, 8:16, 8:16] = 0.5
        probs[d][1, 16:, :] = 0.9  # sure foreground: a quarter of the blocks, a stratum
    by_depths = rank_regions(disagreement_map(probs, 1), (8, 8), top=1)
    assert by_depths[0].item == (0,) and by_depths[0].start == (0, 0)
    chosen = label_here_next(probs, 1, (8, 8), top=4)
    assert chosen[0].item == (1,) and chosen[0].start == (8, 8)
    assert len(chosen) == 4 and _covered(chosen, (2, 32, 32)).max() == 1
    assert sum(np.mean(probs[4][r.index] > 0.5) for r in chosen) >= 1  # a foreground block too
    # Only the deepest head is read: an adaptive or pruned result ranks the same.
    assert label_here_next({4: probs[4]}, 1, (8, 8), top=4) == chosen


def test_label_here_next_with_classes() -> None:
    prob = np.zeros((3, 16, 16), "float32")
    prob[0] = 1.0
    prob[:, 8:, 8:] = np.array([0.1, 0.45, 0.45], "float32")[:, None, None]  # class 1 or 2?
    chosen = label_here_next({3: prob, 4: prob}, 3, (8, 8), top=1)
    assert chosen[0].start == (8, 8) and chosen[0].score == pytest.approx(1.0)


def test_label_here_next_on_a_stack_picks_every_block_in_another_item() -> None:
    # Image 0 is doubtful everywhere, at every foreground fraction; images 1-5 are sure
    # (nuclei the model misses are sure background too). Strata of blocks take the best
    # block of each stratum, all from image 0; strata of images spread the picks.
    prob = np.full((6, 32, 32), 0.05, "float32")
    prob[:, 16:, :] = 0.95
    prob[0, 16:, :] = 0.55
    prob[0, :8, :] = 0.55
    prob[0, 8:16, :] = 0.45
    probs = {4: prob}
    by_blocks = rank_regions(margin_doubt(prob, 1), (8, 8), top=3, strata=prob > 0.5)
    assert [r.item[0] for r in by_blocks].count(0) >= 2
    chosen = label_here_next(probs, 1, (8, 8), top=3)
    items = [r.item[0] for r in chosen]
    assert len(set(items)) == 3 and 0 in items
    assert [r.score for r in chosen] == sorted((r.score for r in chosen), reverse=True)
    # Fewer images than picks: strata of blocks, as on one image.
    assert label_here_next(probs, 1, (8, 8), top=7) == rank_regions(
        margin_doubt(prob, 1), (8, 8), top=7, strata=prob > 0.5
    )
    assert label_here_next(probs, 1, (8, 8), top=0) == []
    with pytest.raises(ValueError, match="region_size"):
        label_here_next(probs, 1, (8, 8, 8, 8), top=3)


def test_nothing_is_ranked_where_nothing_is_worth_labelling() -> None:
    """'Label here next' ranked noise on empty images: blocks of a field the model is sure
    of everywhere, or of a constant image (where the EM model is unsure everywhere alike).
    It now ranks nothing there and says why."""
    sure = {4: np.full((2, 32, 32), 0.0005, "float32")}  # doubt 0.001 everywhere
    refused = label_here_next(sure, 1, (8, 8), top=4)
    assert refused == [] and "nothing worth labelling" in refused.note
    assert "sure of every pixel" in refused.note
    unsure = {4: np.full((32, 32), 0.5, "float32")}
    constant = np.full((32, 32), 128, np.uint8)
    norm = NormalizationConfig()  # percentile mode: a constant image has no contrast
    flat = label_here_next(unsure, 1, (8, 8), top=4, image=constant, normalization=norm)
    assert flat == [] and "no contrast" in flat.note
    # the same doubt on an image with content is ranked, with no note
    content = np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8)
    ranked = label_here_next(unsure, 1, (8, 8), top=4, image=content, normalization=norm)
    assert len(ranked) == 4 and ranked.note == ""
    # just above the floor still counts: a block the model doubts a little stands out
    sure[4][1, 8:16, 8:16] = 0.01  # mean doubt 0.02 in that block
    assert NEGLIGIBLE_DOUBT < 0.02
    assert label_here_next(sure, 1, (8, 8), top=4)[0].start == (8, 8)
