"""
Prediction quality and the Harmony Score (docs/method.md, "Harmony Score").

All tensors are dense over anchors, in RetinaNet's layout: N images x R anchors (R = sum over FPN
levels of Hi x Wi x A), with class logits N x R x K and box deltas N x R x 4.
"""

import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from torch import Tensor


@torch.no_grad()
def classification_quality(logits: Tensor, gt_labels: Tensor) -> Tensor:
    """
    s(a) = sigmoid(z(a, c(a))): the score a detector gives anchor a's matched ground-truth class.

    Args:
        logits: N x R x K class logits.
        gt_labels: N x R labels from ``RetinaNet.label_anchors`` (-1 ignore, K background).
    Returns:
        N x R scores in [0, 1]; meaningful only where 0 <= gt_labels < K (foreground).
    """
    num_classes = logits.shape[-1]
    classes = gt_labels.clamp(min=0, max=num_classes - 1)
    return logits.gather(-1, classes.unsqueeze(-1)).squeeze(-1).sigmoid()


def decode_boxes(deltas: Tensor, anchors: Tensor, box2box_transform: Box2BoxTransform) -> Tensor:
    """
    B(a) = box2box_transform.apply_deltas(deltas(a), a) for a batch.

    Args:
        deltas: N x R x 4; anchors: R x 4 (XYXY).
    Returns:
        N x R x 4 boxes (XYXY).
    """
    n, r, _ = deltas.shape
    boxes = box2box_transform.apply_deltas(deltas.reshape(n * r, 4), anchors.repeat(n, 1))
    return boxes.view(n, r, 4)


@torch.no_grad()
def localization_quality(
    deltas: Tensor, anchors: Tensor, gt_boxes: Tensor, box2box_transform: Box2BoxTransform
) -> Tensor:
    """
    u(a) = IoU(B(a), G(a)): overlap of the decoded box with anchor a's matched ground truth.

    Args:
        deltas: N x R x 4 predicted deltas; anchors: R x 4; gt_boxes: N x R x 4 matched boxes
            (the second output of ``RetinaNet.label_anchors``, stacked).
    Returns:
        N x R IoUs in [0, 1].
    """
    boxes = decode_boxes(deltas.float(), anchors, box2box_transform)
    iou = matched_pairwise_iou(Boxes(boxes.reshape(-1, 4)), Boxes(gt_boxes.reshape(-1, 4)))
    return iou.view(gt_boxes.shape[:2])


@torch.no_grad()
def anchor_iou(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """
    IoU(a, G(a)) of each anchor with its matched ground truth.

    Args:
        anchors: R x 4; gt_boxes: N x R x 4.
    Returns:
        N x R IoUs.
    """
    n = gt_boxes.shape[0]
    iou = matched_pairwise_iou(Boxes(anchors.repeat(n, 1)), Boxes(gt_boxes.reshape(-1, 4)))
    return iou.view(gt_boxes.shape[:2])


@torch.no_grad()
def harmony_score(cls_quality: Tensor, loc_quality: Tensor) -> Tensor:
    """
    HS = sqrt(s * u) * (1 - |s - u|), elementwise, in [0, 1].

    High only where the prediction is confident (s), well localized (u) and the two agree.
    Computed without gradient. Inputs of any (equal) shape; values are clamped to [0, 1].
    """
    s = cls_quality.clamp(0.0, 1.0)
    u = loc_quality.clamp(0.0, 1.0)
    return (s * u).sqrt() * (1.0 - (s - u).abs())


@torch.no_grad()
def harmonious_fraction(cls_quality: Tensor, loc_quality: Tensor, mask: Tensor, delta: float):
    """
    Proportion of predictions in ``mask`` with |s - u| <= delta.

    Returns:
        a 0-dim tensor (0 when ``mask`` is empty).
    """
    harmonious = ((cls_quality - loc_quality).abs() <= delta) & mask
    return harmonious.sum() / mask.sum().clamp(min=1)
