"""Anchor labeling (spec §4.2, §4.3): IoU, ArgMaxMatcher thresholds, force match and its tie rule, padding."""

import math

import numpy as np
import pytest
import torch

from spinenet.modeling.anchors import Anchors
from spinenet.modeling.box_coder import encode_boxes
from spinenet.modeling.labeler import (
    LabelerParams,
    box_iou_yxyx,
    label_anchors,
    label_batch,
    match,
)

NO_FORCE = LabelerParams(force_match=False)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def _match(iou, params=None, valid=None):
    valid = None if valid is None else torch.tensor(valid)
    return match(_t(iou), params or LabelerParams(), valid).tolist()


# --- IoU ---------------------------------------------------------------------------------------------------

def test_iou_simple_boxes():
    a = _t([[0, 0, 10, 10]])
    b = _t([
        [5, 5, 15, 15],    # inter 5·5 = 25, union 100 + 100 - 25 = 175 -> 1/7
        [0, 0, 10, 10],    # identical -> 1
        [0, 0, 5, 10],     # contained: 50 / 100 = 0.5
        [10, 0, 20, 10],   # touching edge: intersection 0 -> 0
        [30, 30, 40, 40],  # disjoint -> 0
    ])
    iou = box_iou_yxyx(a, b)
    assert iou.shape == (1, 5)
    torch.testing.assert_close(iou, _t([[1 / 7, 1.0, 0.5, 0.0, 0.0]]))


def test_iou_shape_and_zero_area_is_zero_not_nan():
    # Two identical zero-area boxes: intersection 0 and union 0; TF's where(inter == 0, 0, ...) gives 0.
    a = _t([[3, 3, 3, 3], [0, 0, 4, 2]])
    b = _t([[3, 3, 3, 3], [0, 0, 2, 4], [1, 0, 3, 2]])
    iou = box_iou_yxyx(a, b)
    assert iou.shape == (2, 3)
    # [0,0,4,2] vs [0,0,2,4]: inter 2·2 = 4, union 8 + 8 - 4 = 12 -> 1/3; vs [1,0,3,2]: inter 2·2 = 4, union 8 -> 0.5.
    torch.testing.assert_close(iou, _t([[0, 0, 0], [0, 1 / 3, 0.5]]))


def test_iou_agrees_with_torchvision_on_random_boxes():
    # IoU does not depend on the coordinate order, so torchvision's xyxy box_iou applies to yxyx boxes unchanged.
    from torchvision.ops import box_iou

    def boxes(n):
        corner = torch.rand(n, 2) * 100
        return torch.cat([corner, corner + torch.rand(n, 2) * 50 + 0.5], dim=1)

    a, b = boxes(7), boxes(300)
    torch.testing.assert_close(box_iou_yxyx(a, b), box_iou(a, b))


# --- ArgMaxMatcher on hand-made IoU matrices ---------------------------------------------------------------

def test_threshold_exactly_half_is_positive():
    # One GT, no force match: 0.5 >= 0.5 -> positive (GT 0); 0.49 < 0.5 -> negative; nothing is ignored.
    assert _match([[0.5, 0.49, 0.2, 0.0]], NO_FORCE) == [0, -1, -1, -1]


def test_ignore_band_between_thresholds():
    # match 0.5, unmatched 0.4: 0.6 positive; 0.45 and 0.4 in [0.4, 0.5) -> -2; 0.39 < 0.4 -> -1.
    params = LabelerParams(match_threshold=0.5, unmatched_threshold=0.4, force_match=False)
    assert _match([[0.6, 0.45, 0.4, 0.39]], params) == [0, -2, -2, -1]


def test_each_anchor_takes_its_argmax_gt_and_equal_iou_goes_to_lower_gt():
    # Anchor 0: GT1 (0.7 > 0.6). Anchor 1: 0.55 for both GTs -> the lower index, GT 0. Anchor 2: max 0.3 -> -1.
    assert _match([[0.6, 0.55, 0.3], [0.7, 0.55, 0.1]], NO_FORCE) == [1, 0, -1]


def test_force_match_gives_low_iou_gt_its_best_anchor():
    # GT0's best IoU is 0.3 (anchor 0): without force match anchor 0 is a negative; with it, anchor 0 -> GT0.
    iou = [[0.3, 0.1, 0.0], [0.0, 0.2, 0.7]]
    assert _match(iou, NO_FORCE) == [-1, -1, 1]
    assert _match(iou) == [0, -1, 1]


def test_force_match_also_overrides_the_ignore_band():
    # match 0.5, unmatched 0.4: GT0's best anchor (IoU 0.45) would be ignored (-2); force match makes it positive.
    params = LabelerParams(match_threshold=0.5, unmatched_threshold=0.4)
    assert _match([[0.45, 0.42]], params) == [0, -2]


def test_force_match_tie_two_gts_same_best_anchor_lowest_gt_index_wins():
    # Both GTs' best anchor is anchor 0 (GT0: 0.3, GT1: 0.4). TF builds one_hot([0, 0], 3) = [[1,0,0],[1,0,0]]
    # and takes argmax over GTs of column 0 = [1, 1] -> index 0: GT0 wins although GT1's IoU there is higher.
    # GT1 gets no forced anchor (no fallback to its second best, anchor 2 at 0.2).
    assert _match([[0.3, 0.1, 0.0], [0.4, 0.0, 0.2]]) == [0, -1, -1]


def test_force_match_tie_overrides_a_positive_of_the_higher_index_gt():
    # Anchor 0 is positive for GT1 (0.9 >= 0.5) by the argmax; both GTs force-claim it; GT0 (lowest) wins.
    iou = [[0.6, 0.1], [0.9, 0.0]]
    assert _match(iou, NO_FORCE) == [1, -1]
    assert _match(iou) == [0, -1]


def test_force_match_steals_an_anchor_positive_for_another_gt():
    # GT0's best anchor is 0 (0.3). Anchor 0's argmax is GT1 (0.6, positive), but the force match assigns it to
    # GT0. GT1 keeps anchor 1 (its own best, 0.8).
    assert _match([[0.3, 0.0, 0.0], [0.6, 0.8, 0.0]]) == [0, 1, -1]
    # The same with the stealing GT at the higher index: the only claimer wins, whatever its index.
    assert _match([[0.6, 0.8, 0.0], [0.3, 0.0, 0.0]]) == [1, 0, -1]


def test_force_match_anchor_tie_for_one_gt_takes_the_lowest_anchor():
    # GT0's IoU is 0.3 at anchors 0 and 1: argmax over anchors -> anchor 0.
    assert _match([[0.3, 0.3, 0.0]]) == [0, -1, -1]


def test_no_gt_rows_all_negative():
    assert match(torch.zeros(0, 4), LabelerParams()).tolist() == [-1, -1, -1, -1]
    assert _match([[0.9, 0.2]], valid=[False]) == [-1, -1]


def test_padding_rows_never_match_or_force_match():
    # Row 0 is padding (IoU 0 everywhere). Unmasked, its argmax anchor 0 would be force-matched to it.
    iou = [[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]]
    assert _match(iou) == [0, 1, -1]
    assert _match(iou, valid=[False, True]) == [-1, 1, -1]


def _tf_argmax_matcher(sim, matched, unmatched, force):
    """A literal numpy transcription of TF1 ArgMaxMatcher._match (np.argmax keeps the first maximum)."""
    if sim.shape[0] == 0:
        return -np.ones(sim.shape[1], dtype=np.int64)
    matches = np.argmax(sim, 0)
    vals = np.max(sim, 0)
    below = unmatched > vals
    between = (vals >= unmatched) & (matched > vals)
    matches = matches * (1 - below) + -1 * below
    matches = matches * (1 - between) + -2 * between
    if force:
        ids = np.argmax(sim, 1)
        ind = np.zeros(sim.shape, dtype=np.float32)  # one_hot(ids, N), (G, N), without an (N, N) eye
        ind[np.arange(sim.shape[0]), ids] = 1.0
        rows = np.argmax(ind, 0)
        mask = ind.max(0) > 0
        matches = np.where(mask, rows, matches)
    return matches


@pytest.mark.parametrize("force", [True, False])
@pytest.mark.parametrize("thresholds", [(0.5, 0.5), (0.5, 0.4)])
def test_match_equals_tf_transcription_on_random_tied_matrices(force, thresholds):
    gen = torch.Generator().manual_seed(1)
    params = LabelerParams(*thresholds, force_match=force)
    for _ in range(50):
        g, n = torch.randint(1, 6, (2,), generator=gen).tolist()
        # Quantised to tenths: many ties, both between GTs and between anchors.
        sim = (torch.randint(0, 11, (g, n), generator=gen) / 10.0).float()
        expected = _tf_argmax_matcher(sim.numpy(), *thresholds, force)
        assert match(sim, params).tolist() == expected.tolist()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("num_gt", [1, 7, 40])
def test_match_ties_at_training_size(num_gt, threads):
    # The vectorised (and, with 2 threads, split) max reductions must keep the first maximum on ties at the
    # size training uses: 76,725 anchors (640 input), IoUs quantised to tenths so that almost every column and
    # row has tied maxima; padding rows in the middle. The small matrices above exercise no vector tail.
    gen = torch.Generator().manual_seed(num_gt)
    sim = (torch.randint(0, 11, (num_gt, 76_725), generator=gen) / 10.0).float()
    valid = torch.ones(num_gt, dtype=torch.bool)
    valid[num_gt // 2 :: 3] = num_gt == 1  # a third of the rows are padding (never the only row)
    masked = sim.masked_fill(~valid[:, None], -1.0).numpy()
    expected = _tf_argmax_matcher(masked[valid.numpy()], 0.5, 0.4, True)
    rows = np.flatnonzero(valid.numpy())  # transcription row -> GT index
    expected = np.where(expected >= 0, rows[np.clip(expected, 0, None)], expected)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = match(sim, LabelerParams(0.5, 0.4), valid)
    finally:
        torch.set_num_threads(before)
    assert got.tolist() == expected.tolist()


# --- label_anchors -----------------------------------------------------------------------------------------

ANCHORS = _t([
    [0, 0, 10, 10],    # 0: IoU 1 with GT A
    [0, 0, 10, 20],    # 1: GT A: 100 / 200 = 0.5 exactly -> positive
    [0, 0, 10, 21],    # 2: GT A: 100 / 210 = 0.476 -> negative
    [20, 20, 30, 30],  # 3: GT B [20,20,30,32]: inter 100, union 100 + 120 - 100 = 120 -> 0.833
    [40, 40, 50, 50],  # 4: GT C [40,40,50,43]: 30 / 100 = 0.3, its best -> forced positive
    [60, 60, 70, 70],  # 5: nothing -> negative
])
GT_BOXES = _t([[0, 0, 10, 10], [20, 20, 30, 32], [40, 40, 50, 43]])
GT_CLASSES = torch.tensor([7, 3, 90])


def test_label_anchors_hand_values():
    cls, box, num_pos = label_anchors(GT_BOXES, GT_CLASSES, ANCHORS)
    assert cls.tolist() == [7, 7, -1, 3, 90, -1]
    assert cls.dtype == torch.long
    assert num_pos.item() == 4.0
    # Anchor 3 (h = w = 10, centre (25, 25)) for GT B (h 10, w 12, centre (25, 26)):
    # ty = 0, tx = 1/10, th = log(10/10) = 0, tw = log(12/10).
    torch.testing.assert_close(box[3], _t([0.0, 0.1, 0.0, math.log(1.2)]))
    # Anchor 4 (centre (45, 45)) for GT C (h 10, w 3, centre (45, 41.5)): tx = -3.5/10, tw = log(3/10).
    torch.testing.assert_close(box[4], _t([0.0, -0.35, 0.0, math.log(0.3)]))
    # Anchor 1 (h 10, w 20, centre (5, 10)) for GT A (centre (5, 5)): tx = -5/20, tw = log(10/20).
    torch.testing.assert_close(box[1], _t([0.0, -0.25, 0.0, math.log(0.5)]))
    torch.testing.assert_close(box[0], torch.zeros(4), atol=1e-6, rtol=0)  # identical box
    assert box[[2, 5]].abs().sum() == 0  # negatives: zero targets
    torch.testing.assert_close(box[[1, 3, 4]], encode_boxes(GT_BOXES[[0, 1, 2]], ANCHORS[[1, 3, 4]]))


def test_label_anchors_ignored_anchor_class_minus_two_and_zero_box():
    # match 0.5 / unmatched 0.4: anchor 2 (0.476) is ignored -> class -2, box 0, not counted as positive.
    cls, box, num_pos = label_anchors(GT_BOXES, GT_CLASSES, ANCHORS, LabelerParams(0.5, 0.4))
    assert cls.tolist() == [7, 7, -2, 3, 90, -1]
    assert box[2].abs().sum() == 0
    assert num_pos.item() == 4.0


@pytest.mark.parametrize("pad_box", [0.0, -1.0])
def test_label_anchors_ignores_padded_gts(pad_box):
    # Padding first and last (class -1; boxes of zeros, or of -1 as the reference pads groundtruths).
    pad = torch.full((1, 4), pad_box)
    boxes = torch.cat([pad, GT_BOXES, pad, torch.zeros(1, 4)])
    classes = torch.tensor([-1, 7, 3, 90, -1, 5])  # a zero box with a class is padding too
    cls, box, num_pos = label_anchors(boxes, classes, ANCHORS)
    ref_cls, ref_box, ref_num = label_anchors(GT_BOXES, GT_CLASSES, ANCHORS)
    assert cls.tolist() == ref_cls.tolist()
    torch.testing.assert_close(box, ref_box)
    assert num_pos.item() == ref_num.item()


@pytest.mark.parametrize("num_pad", [0, 3])
def test_label_anchors_empty_image_all_negative(num_pad):
    boxes, classes = torch.zeros(num_pad, 4), torch.full((num_pad,), -1)
    cls, box, num_pos = label_anchors(boxes, classes, ANCHORS)
    assert cls.tolist() == [-1] * 6
    assert box.shape == (6, 4) and box.abs().sum() == 0
    assert num_pos.item() == 0.0 and num_pos.dtype == torch.float32


def test_label_anchors_rejects_bad_shapes():
    with pytest.raises(ValueError, match="gt_boxes"):
        label_anchors(torch.zeros(2, 5), torch.zeros(2), ANCHORS)


def test_label_batch_stacks_per_image_results():
    gts = [(GT_BOXES, GT_CLASSES), (torch.zeros(2, 4), torch.full((2,), -1)), (GT_BOXES[1:], GT_CLASSES[1:])]
    cls, box, num_pos = label_batch(gts, ANCHORS)
    assert cls.shape == (3, 6) and box.shape == (3, 6, 4) and num_pos.shape == (3,)
    assert num_pos.tolist() == [4.0, 0.0, 2.0]
    for i, (b, c) in enumerate(gts):
        ref = label_anchors(b, c, ANCHORS)
        assert cls[i].tolist() == ref[0].tolist()
        torch.testing.assert_close(box[i], ref[1])


def test_label_real_anchors_every_gt_gets_an_anchor():
    # 128x128 input: 16·16 + 8·8 + 4·4 + 2·2 + 1 = 341 locations x 9 = 3069 anchors.
    anchors = Anchors((128, 128)).boxes
    assert anchors.shape == (3069, 4)
    boxes = _t([[10, 10, 40, 50], [60, 70, 64, 72], [0, 0, 127, 127], [5, 100, 100, 127]])
    classes = torch.tensor([1, 2, 3, 4])
    cls, box, num_pos = label_anchors(boxes, classes, anchors)
    for k in range(1, 5):
        # Guaranteed by the force match here (the four GTs have distinct best anchors).
        assert (cls == k).any(), f"GT of class {k} has no anchor"
    assert num_pos.item() == (cls >= 0).sum().item()
    assert torch.isfinite(box).all()
    assert ((box != 0).any(-1) <= (cls >= 0)).all()  # non-zero box targets only on positives
