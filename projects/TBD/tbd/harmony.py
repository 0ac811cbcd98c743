"""
Anchor matching, prediction quality and the Harmony Score (docs/method.md, "Notation" and
"Harmony Score").

All tensors are dense over anchors, in RetinaNet's layout: N images x R anchors (R = sum over FPN
levels of Hi x Wi x A), with class logits N x R x K and box deltas N x R x 4. ``gt_labels`` are
those of the student's ``RetinaNet.label_anchors``: the class c(a) in [0, K) for foreground
anchors (including RetinaNet's low-quality matches, whose IoU may be below the lower threshold),
-1 for ignored anchors (IoU between the two thresholds) and K for background.
"""

import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from torch import Tensor


def matched_anchors(gt_labels: Tensor, num_classes: int) -> Tensor:
    """
    matched(a): anchor a has a matched ground truth G(a), i.e. the student's anchor matcher did not
    label it background: foreground (low-quality matches included) or ignored. The one rule for
    "anchors with a ground truth" of docs/method.md: where HD harmonizes its target (on the valid
    ones, :func:`foreground_anchors`) and where M_reg uses u(a) (``losses.task_masks``).

    Args:
        gt_labels: N x R labels (-1 ignore, K background).
    Returns:
        N x R bool, ``gt_labels != K``.
    """
    return gt_labels != num_classes


def foreground_anchors(gt_labels: Tensor, num_classes: int) -> Tensor:
    """fg(a): matched and not ignored, 0 <= label < K (N x R bool). Ignored anchors (label -1)
    never count in a loss; their class is unknown."""
    return matched_anchors(gt_labels, num_classes) & (gt_labels >= 0)


def same_box_transform(a: Box2BoxTransform, b: Box2BoxTransform) -> bool:
    """Whether two transforms encode boxes identically (weights and scale clamp)."""
    return tuple(a.weights) == tuple(b.weights) and a.scale_clamp == b.scale_clamp


def reencode_deltas(deltas: Tensor, source: Box2BoxTransform, target: Box2BoxTransform) -> Tensor:
    """
    The boxes that ``source`` decodes from ``deltas``, encoded by ``target``, for any anchors::

        target.get_deltas(a, source.apply_deltas(d, a))
            = (wx_t dx / wx_s, wy_t dy / wy_s, ww_t min(dw / ww_s, c_s), wh_t min(dh / wh_s, c_s))

    with (wx, wy, ww, wh) the weights and c the scale clamp: exact, elementwise, no boxes needed.
    ``deltas`` itself when the two transforms are the same.

    Args:
        deltas: ... x 4.
    """
    if same_box_transform(source, target):
        return deltas
    scaled = deltas / deltas.new_tensor(source.weights)
    scaled = torch.cat([scaled[..., :2], scaled[..., 2:].clamp(max=source.scale_clamp)], dim=-1)
    return scaled * deltas.new_tensor(target.weights)


@torch.no_grad()
def classification_quality(logits: Tensor, gt_labels: Tensor) -> Tensor:
    """
    s(a) = sigmoid(z(a, c(a))): the score a detector gives anchor a's matched ground-truth class.

    Args:
        logits: N x R x K class logits.
        gt_labels: N x R labels from ``RetinaNet.label_anchors`` (-1 ignore, K background).
    Returns:
        N x R scores in [0, 1]; meaningful only on foreground anchors (:func:`foreground_anchors`).
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
    IoU(a, G(a)) of each anchor with its matched ground truth (for analyses and tests: training
    decides which anchors have a ground truth by the matcher's labels, :func:`matched_anchors`).

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
def harmonious(cls_quality: Tensor, loc_quality: Tensor, delta: float) -> Tensor:
    """harmonious(a) iff |s(a) - u(a)| <= delta, elementwise (bool)."""
    return (cls_quality - loc_quality).abs() <= delta


@torch.no_grad()
def harmonious_fraction(cls_quality: Tensor, loc_quality: Tensor, mask: Tensor, delta: float):
    """
    Proportion of predictions in ``mask`` with |s - u| <= delta.

    Returns:
        a 0-dim tensor (0 when ``mask`` is empty).
    """
    return (harmonious(cls_quality, loc_quality, delta) & mask).sum() / mask.sum().clamp(min=1)
