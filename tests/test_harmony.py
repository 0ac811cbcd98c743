import math

import pytest
import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, pairwise_iou

from tbd.harmony import (
    anchor_iou,
    classification_quality,
    foreground_anchors,
    harmonious_fraction,
    harmony_score,
    localization_quality,
    matched_anchors,
    reencode_deltas,
    same_box_transform,
)


@pytest.mark.parametrize(
    "s, u, expected",
    [
        (1.0, 1.0, 1.0),  # perfect agreement
        (0.8, 0.8, 0.8),  # agreement: sqrt(0.64) * (1 - 0)
        (0.9, 0.1, math.sqrt(0.09) * (1 - 0.8)),  # confident but badly localized: 0.06
        (0.1, 0.9, math.sqrt(0.09) * (1 - 0.8)),  # well localized but unconfident: 0.06
        (0.0, 0.7, 0.0),  # no score, no harmony
        (0.5, 0.0, 0.0),
    ],
)
def test_harmony_score_hand_computed(s, u, expected):
    hs = harmony_score(torch.tensor([s]), torch.tensor([u]))
    assert hs.item() == pytest.approx(expected, abs=1e-6)


def test_harmony_score_range_and_no_gradient():
    s = torch.rand(1000, requires_grad=True)
    u = torch.rand(1000, requires_grad=True)
    hs = harmony_score(s, u)
    assert not hs.requires_grad
    assert hs.min() >= 0 and hs.max() <= 1
    # Agreeing pairs always beat a disagreeing pair with the same product s * u.
    agree = harmony_score(torch.tensor([0.5]), torch.tensor([0.5]))
    disagree = harmony_score(torch.tensor([1.0]), torch.tensor([0.25]))
    assert agree > disagree


def test_classification_quality_picks_matched_class():
    logits = torch.tensor([[[0.0, 2.0, -1.0], [3.0, 0.0, 0.0]]])  # 1 x 2 anchors x 3 classes
    labels = torch.tensor([[1, 0]])
    s = classification_quality(logits, labels)
    assert torch.allclose(s, torch.sigmoid(torch.tensor([[2.0, 3.0]])))


def test_localization_quality_matches_pairwise_iou():
    torch.manual_seed(0)
    transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0], [0, 0, 40, 40]])
    deltas = torch.randn(2, 3, 4) * 0.2
    gt = torch.tensor([[2.0, 1.0, 12.0, 9.0], [6.0, 4.0, 22.0, 18.0], [0, 0, 30, 40]])
    gt_boxes = torch.stack([gt, gt.flip(0)])
    u = localization_quality(deltas, anchors, gt_boxes, transform)
    for n in range(2):
        boxes = transform.apply_deltas(deltas[n], anchors)
        expected = pairwise_iou(Boxes(boxes), Boxes(gt_boxes[n])).diagonal()
        assert torch.allclose(u[n], expected, atol=1e-6)
    # zero deltas decode to the anchors themselves
    u0 = localization_quality(torch.zeros(2, 3, 4), anchors, gt_boxes, transform)
    assert torch.allclose(u0, anchor_iou(anchors, gt_boxes))


def test_harmonious_fraction():
    s = torch.tensor([0.9, 0.9, 0.5, 0.1, 0.8])
    u = torch.tensor([0.8, 0.3, 0.5, 0.9, 0.0])
    mask = torch.tensor([True, True, True, True, False])
    # |s - u| = 0.1, 0.6, 0.0, 0.8 (the fifth is masked): 2 of 4 within 0.2
    assert harmonious_fraction(s, u, mask, 0.2).item() == pytest.approx(0.5)
    assert harmonious_fraction(s, u, torch.zeros(5, dtype=torch.bool), 0.2).item() == 0.0


@pytest.mark.parametrize(
    "source, target",
    [
        (Box2BoxTransform((10.0, 10.0, 5.0, 5.0)), Box2BoxTransform((1.0, 1.0, 1.0, 1.0))),
        (Box2BoxTransform((1.0, 2.0, 3.0, 4.0), scale_clamp=1.0), Box2BoxTransform((2.0,) * 4)),
    ],
)
def test_reencode_deltas_is_get_deltas_of_apply_deltas(source, target):
    torch.manual_seed(0)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0], [0, 0, 40, 40]])
    deltas = torch.randn(2, 3, 4, dtype=torch.float64) * 4  # some beyond the scale clamp
    expected = torch.stack(
        [
            target.get_deltas(anchors.double(), source.apply_deltas(d, anchors.double()))
            for d in deltas
        ]
    )
    assert torch.allclose(reencode_deltas(deltas, source, target), expected, atol=1e-9)
    # the same transform: the deltas themselves, untouched
    assert (
        reencode_deltas(deltas, source, Box2BoxTransform(source.weights, source.scale_clamp))
        is deltas
    )
    assert same_box_transform(source, Box2BoxTransform(source.weights, source.scale_clamp))
    assert not same_box_transform(source, target)


def test_matched_and_foreground_anchors():
    labels = torch.tensor([[0, 3, -1, 2]])  # K = 3: foreground, background, ignored, foreground
    assert matched_anchors(labels, 3).tolist() == [[True, False, True, True]]
    assert foreground_anchors(labels, 3).tolist() == [[True, False, False, True]]
