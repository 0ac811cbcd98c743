"""
How harmonious a trained RetinaNet's predictions are on a labelled dataset
(docs/harmony_analysis.md).

Two sets of predictions are measured, each as pairs (s, u) of a classification score and an IoU:

* foreground anchors (dense): anchors are matched to the ground truth with the model's own
  ``label_anchors``; on foreground anchors s(a) = p(a, c(a)) and u(a) = IoU(B(a), G(a))
  (docs/method.md, "Harmony Score");
* final detections: the top-k detections of each image by score, s = the detection score and
  u = the largest IoU with a ground-truth box of the detected class (0 when there is none).
  Most of the top 100 are background boxes with s and u both near 0, which count as harmonious
  whatever the model; the detections that matter are the subsets :func:`detection_subsets`
  selects: those matched to a ground-truth box (u >= :data:`MATCH_IOU`) and the confident ones
  (s >= :data:`CONFIDENT_SCORE`).

A prediction is harmonious when |s - u| <= delta. :func:`harmony_statistics` summarizes a set of
pairs (harmonious proportion, Pearson and Spearman correlation, mean Harmony Score).
"""

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_test_loader
from detectron2.data import detection_utils as utils
from detectron2.layers import cat
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from torch import Tensor

from .harmony import (
    classification_quality,
    foreground_anchors,
    harmonious_fraction,
    harmony_score,
    localization_quality,
    matched_anchors,
)
from .losses import task_masks

STATISTICS = (
    "count",
    "num_harmonious",
    "harmonious_fraction",
    "pearson",
    "spearman",
    "mean_harmony_score",
    "mean_score",
    "mean_iou",
)
_CHUNK = 1 << 20
# A detection is matched to a ground-truth box when its IoU with one of the detected class reaches
# MATCH_IOU (COCO's loosest threshold, AP50); it is confident when its score reaches
# CONFIDENT_SCORE. The subsets of HarmonyAnalysis.statistics.
MATCH_IOU = 0.5
CONFIDENT_SCORE = 0.3


def labelled_test_loader(cfg, dataset_name, max_images: Optional[int] = None):
    """
    A test-time loader (test resize, no flip) that keeps the annotations (crowd boxes dropped, as
    ``DatasetMapper(is_train=True)`` does). ``max_images``: only the first images of the split.
    """
    mapper = DatasetMapper(
        is_train=True,
        augmentations=utils.build_augmentation(cfg, is_train=False),
        image_format=cfg.INPUT.FORMAT,
    )
    if max_images is None:
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
    dicts = DatasetCatalog.get(dataset_name)[:max_images]
    return build_detection_test_loader(dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)


@dataclass
class DenseOutputs:
    """
    One forward pass of a RetinaNet over a labelled batch, in the layout of docs/method.md
    (N images, R anchors over all levels, K classes).

    Attributes:
        images: the preprocessed ImageList; features: per level N x C x Hl x Wl;
        predictions: the head's raw outputs (for ``forward_inference``);
        logits: N x R x K; deltas: N x R x 4; anchors: R x 4 (XYXY);
        gt_labels: N x R (-1 ignore, K background); gt_boxes: N x R x 4, from ``label_anchors``;
        gt_instances: the batch's ground truth (input frame); level_shapes: (Hl, Wl) per level.
    """

    images: ImageList
    features: List[Tensor]
    predictions: list
    logits: Tensor
    deltas: Tensor
    anchors: Tensor
    gt_labels: Tensor
    gt_boxes: Tensor
    gt_instances: List[Instances]
    level_shapes: List[Tuple[int, int]]


@torch.no_grad()
def dense_forward(model, batched_inputs) -> DenseOutputs:
    """Run ``model``'s backbone and head on a labelled batch and match its anchors to the ground
    truth with the model's own ``label_anchors``."""
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    predictions = model.head(features)
    logits, deltas = model._transpose_dense_predictions(predictions, [model.num_classes, 4])
    anchors = model.anchor_generator(features)
    gt_instances = [x["instances"].to(model.device) for x in batched_inputs]
    gt_labels, gt_boxes = model.label_anchors(anchors, gt_instances)
    return DenseOutputs(
        images=images,
        features=features,
        predictions=predictions,
        logits=cat(logits, dim=1),
        deltas=cat(deltas, dim=1),
        anchors=Boxes.cat(anchors).tensor,
        gt_labels=torch.stack(gt_labels),
        gt_boxes=torch.stack(gt_boxes),
        gt_instances=gt_instances,
        level_shapes=[tuple(f.shape[-2:]) for f in features],
    )


def _qualities(model, out: DenseOutputs):
    s = classification_quality(out.logits, out.gt_labels)
    u = localization_quality(out.deltas, out.anchors, out.gt_boxes, model.box2box_transform)
    return s, u, foreground_anchors(out.gt_labels, model.num_classes)


@torch.no_grad()
def dense_quality(model, batched_inputs):
    """
    Per-anchor qualities of ``model``'s predictions for one batch.

    Returns:
        (s, u, foreground): N x R classification quality, localization quality and foreground mask.
    """
    return _qualities(model, dense_forward(model, batched_inputs))


@torch.no_grad()
def foreground_harmony(model, data_loader, delta=0.2):
    """
    Returns:
        dict with ``harmonious_fraction`` (over all foreground anchors of the dataset),
        ``mean_harmony_score`` and ``num_foreground``.
    """
    was_training = model.training
    model.eval()
    harmonious, total, hs_sum = 0.0, 0, 0.0
    for batched_inputs in data_loader:
        s, u, fg = dense_quality(model, batched_inputs)
        n = int(fg.sum())
        harmonious += float(harmonious_fraction(s, u, fg, delta)) * n
        hs_sum += float(harmony_score(s, u)[fg].sum())
        total += n
    model.train(was_training)
    return {
        "harmonious_fraction": harmonious / max(total, 1),
        "mean_harmony_score": hs_sum / max(total, 1),
        "num_foreground": total,
    }


@torch.no_grad()
def detection_quality(
    detections: Instances, gt_instances: Instances, topk: int
) -> Tuple[Tensor, Tensor]:
    """
    Scores and IoUs of an image's top-k detections::

        D = the min(topk, #detections) detections of highest score
        s(d) = score(d),  u(d) = max_{g : class(g) = class(d)} IoU(box(d), box(g))  (0 if no such g)

    Args:
        detections: Instances with ``pred_boxes``, ``scores`` (D0) and ``pred_classes``;
        gt_instances: Instances with ``gt_boxes`` and ``gt_classes`` (G), in the same frame.
    Returns:
        (s, u): two tensors of shape (min(topk, D0),), in decreasing order of score.
    """
    order = detections.scores.argsort(descending=True)[: max(int(topk), 0)]
    detections = detections[order]
    ious = pairwise_iou(detections.pred_boxes, gt_instances.gt_boxes.to(detections.scores.device))
    same_class = detections.pred_classes[:, None] == gt_instances.gt_classes.to(ious.device)[None]
    ious = torch.where(same_class, ious, ious.new_zeros(()))
    best = ious.amax(dim=1) if ious.shape[1] else ious.new_zeros(len(detections))
    return detections.scores, best


def detection_subsets(
    scores: Tensor,
    ious: Tensor,
    match_iou: float = MATCH_IOU,
    confident_score: float = CONFIDENT_SCORE,
) -> Dict[str, Tensor]:
    """
    The detections that matter among the top-k of :func:`detection_quality` (1-d tensors s, u of
    shape (D,)), as boolean masks of shape (D,)::

        matched   = u >= match_iou         matched to a ground-truth box of the detected class
        confident = s >= confident_score

    A background box (s and u both near 0) is in neither: it is "harmonious" (|s - u| small)
    whatever the model, and the top 100 per image are mostly such boxes.
    """
    if scores.shape != ious.shape:
        raise ValueError(f"scores and ious differ in shape: {scores.shape} vs {ious.shape}")
    return {"matched": ious >= match_iou, "confident": scores >= confident_score}


def average_ranks(x: Tensor) -> Tensor:
    """
    1-based ranks of the values of a 1-d tensor, ties sharing the average of their ranks (the
    ranks of Spearman's correlation): rank(x_i) = #{j : x_j < x_i} + (#{j : x_j = x_i} + 1) / 2.
    """
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    return (counts.cumsum(0) - (counts - 1) / 2)[inverse]


def _pearson(x: Tensor, y: Tensor) -> Optional[float]:
    if x.numel() < 2 or x.std() == 0 or y.std() == 0:
        return None  # undefined
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def harmony_statistics(scores: Tensor, ious: Tensor, delta: float) -> Dict[str, Optional[float]]:
    """
    Summary of n predictions with classification scores s and IoUs u (1-d tensors of shape (n,))::

        num_harmonious      = #{i : |s_i - u_i| <= delta}       (harmony.harmonious_fraction)
        harmonious_fraction = num_harmonious / n
        pearson             = cov(s, u) / (std(s) std(u))       (torch.corrcoef)
        spearman            = pearson(average_ranks(s), average_ranks(u))
        mean_harmony_score  = mean_i sqrt(s_i u_i) (1 - |s_i - u_i|)  (harmony.harmony_score)
        mean_score          = mean_i s_i,  mean_iou = mean_i u_i

    Returns:
        dict with ``count`` (n), ``num_harmonious`` and the values above as floats (all of
        ``STATISTICS``); a value is None when undefined
        (n = 0; correlations also when n < 2 or s or u is constant).
    """
    s = scores.detach().flatten().to("cpu", torch.float64)
    u = ious.detach().flatten().to("cpu", torch.float64)
    if s.shape != u.shape:
        raise ValueError(f"scores and ious differ in size: {s.numel()} vs {u.numel()}")
    n = s.numel()
    stats = dict.fromkeys(STATISTICS)
    stats.update(count=n, num_harmonious=0)
    if n == 0:
        return stats
    # harmonious_fraction divides in the default dtype (float32): chunks of at most 2^20 keep
    # fraction x size an exact integer count after rounding, for any n.
    num_harmonious = 0
    for s_chunk, u_chunk in zip(s.split(_CHUNK), u.split(_CHUNK)):
        everywhere = torch.ones_like(s_chunk, dtype=torch.bool)
        fraction = harmonious_fraction(s_chunk, u_chunk, everywhere, delta)
        num_harmonious += round(float(fraction) * s_chunk.numel())
    stats.update(
        num_harmonious=num_harmonious,
        harmonious_fraction=num_harmonious / n,
        pearson=_pearson(s, u),
        spearman=_pearson(average_ranks(s), average_ranks(u)),
        mean_harmony_score=float(harmony_score(s, u).mean()),
        mean_score=float(s.mean()),
        mean_iou=float(u.mean()),
    )
    return stats


@torch.no_grad()
def teacher_task_masks(model, out: DenseOutputs) -> Tuple[List[Tensor], List[Tensor]]:
    """
    The TFD masks (``losses.task_masks``) that ``model``, used as a teacher, gives the batch of
    ``out``: its scores and its IoUs u(a) on the anchors with a matched ground truth
    (``harmony.matched_anchors``) of its own anchor matching, as
    ``TBDRetinaNet.distillation_losses`` does with the student's.

    Returns:
        two lists (cls, reg), per level, of N x Hl x Wl masks.
    """
    _, u, _ = _qualities(model, out)
    return task_masks(
        out.logits.float(), u, matched_anchors(out.gt_labels, model.num_classes), out.level_shapes
    )


@dataclass
class HarmonyAnalysis:
    """
    What :func:`analyze_harmony` measured for one model on one dataset.

    Attributes:
        anchor_scores, anchor_ious: (F,) s and u of the F foreground anchors of all images.
        detection_scores, detection_ious: (D,) s and u of the top-k detections of all images.
        num_images, num_gt: images and ground-truth boxes seen.
        coco: COCOEvaluator's bbox results (AP in percent), empty without an evaluator.
        mask_samples: for the first images, dicts with ``image`` (C x H x W, the model's input
            format), ``gt_boxes`` (G x 4, input frame), ``cls_masks`` and ``reg_masks`` (per level
            Hl x Wl), ``padded_size`` (H, W of the padded batch).
    """

    anchor_scores: Tensor
    anchor_ious: Tensor
    detection_scores: Tensor
    detection_ious: Tensor
    num_images: int = 0
    num_gt: int = 0
    coco: Dict[str, float] = field(default_factory=dict)
    mask_samples: List[dict] = field(default_factory=list)

    def statistics(
        self,
        delta: float,
        match_iou: float = MATCH_IOU,
        confident_score: float = CONFIDENT_SCORE,
    ) -> Dict[str, Dict[str, Optional[float]]]:
        """
        :func:`harmony_statistics` of the foreground ``anchors``, of the top-k detections that
        matter (:func:`detection_subsets`): ``detections_matched`` (u >= ``match_iou``) and
        ``detections_confident`` (s >= ``confident_score``), and of all top-k ``detections``
        (mostly background boxes with s ~ u ~ 0, harmonious by construction: read the subsets).
        """
        s, u = self.detection_scores, self.detection_ious
        subsets = detection_subsets(s, u, match_iou, confident_score)
        return {
            "anchors": harmony_statistics(self.anchor_scores, self.anchor_ious, delta),
            "detections_matched": harmony_statistics(
                s[subsets["matched"]], u[subsets["matched"]], delta
            ),
            "detections_confident": harmony_statistics(
                s[subsets["confident"]], u[subsets["confident"]], delta
            ),
            "detections": harmony_statistics(s, u, delta),
        }


@torch.no_grad()
def analyze_harmony(
    model, data_loader: Iterable, *, topk: int = 100, evaluator=None, num_mask_images: int = 0
) -> HarmonyAnalysis:
    """
    One pass of ``model`` (in eval mode; a TBDRetinaNet never builds its teacher) over a labelled
    loader (:func:`labelled_test_loader`): every batch goes through backbone and head once, and
    gives the dense qualities of the foreground anchors, the model's final detections
    (``forward_inference``) and their qualities (:func:`detection_quality`, in the input frame),
    and, when ``evaluator`` (e.g. detectron2's ``COCOEvaluator``) is given, the detections rescaled
    to the original image size (``detector_postprocess``) for it. The TFD masks of the first
    ``num_mask_images`` images are kept (:func:`teacher_task_masks`).
    """
    was_training = model.training
    model.eval()
    if evaluator is not None:
        evaluator.reset()
    anchor_s, anchor_u, det_s, det_u, samples = [], [], [], [], []
    num_images = num_gt = 0
    for batched_inputs in data_loader:
        out = dense_forward(model, batched_inputs)
        s, u, fg = _qualities(model, out)
        anchor_s.append(s[fg].cpu())
        anchor_u.append(u[fg].cpu())
        if len(samples) < num_mask_images:
            cls_masks, reg_masks = teacher_task_masks(model, out)
            for i, x in enumerate(batched_inputs[: num_mask_images - len(samples)]):
                samples.append(
                    {
                        "image": x["image"].cpu(),
                        "gt_boxes": out.gt_instances[i].gt_boxes.tensor.cpu(),
                        "cls_masks": [m[i].cpu() for m in cls_masks],
                        "reg_masks": [m[i].cpu() for m in reg_masks],
                        "padded_size": tuple(out.images.tensor.shape[-2:]),
                    }
                )
        detections = model.forward_inference(out.images, out.features, out.predictions)
        outputs = []
        for x, dets, gt, size in zip(
            batched_inputs, detections, out.gt_instances, out.images.image_sizes
        ):
            scores, ious = detection_quality(dets, gt, topk)
            det_s.append(scores.cpu())
            det_u.append(ious.cpu())
            num_gt += len(gt)
            # detector_postprocess rescales the boxes in place: after detection_quality.
            height, width = x.get("height", size[0]), x.get("width", size[1])
            outputs.append({"instances": detector_postprocess(dets, height, width).to("cpu")})
        num_images += len(batched_inputs)
        if evaluator is not None:
            evaluator.process(batched_inputs, outputs)
    model.train(was_training)
    coco = {}
    if evaluator is not None:
        results = evaluator.evaluate() or {}
        coco = dict(results.get("bbox", {}))
    return HarmonyAnalysis(
        anchor_scores=torch.cat(anchor_s) if anchor_s else torch.zeros(0),
        anchor_ious=torch.cat(anchor_u) if anchor_u else torch.zeros(0),
        detection_scores=torch.cat(det_s) if det_s else torch.zeros(0),
        detection_ious=torch.cat(det_u) if det_u else torch.zeros(0),
        num_images=num_images,
        num_gt=num_gt,
        coco={k: (None if math.isnan(v) else float(v)) for k, v in coco.items()},
        mask_samples=samples,
    )
