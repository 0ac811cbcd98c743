"""
How harmonious a trained RetinaNet's dense predictions are on a labelled dataset.

For every image, anchors are matched to the ground truth with the model's own ``label_anchors``;
on foreground anchors the model's classification quality s and localization quality u
(docs/method.md) give the proportion of harmonious predictions (|s - u| <= delta) and the mean
Harmony Score.
"""

import torch
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import detection_utils as utils
from detectron2.layers import cat
from detectron2.structures import Boxes

from .harmony import (
    classification_quality,
    harmonious_fraction,
    harmony_score,
    localization_quality,
)


def labelled_test_loader(cfg, dataset_name):
    """A test-time loader (test resize, no flip) that keeps the annotations."""
    mapper = DatasetMapper(
        is_train=True,
        augmentations=utils.build_augmentation(cfg, is_train=False),
        image_format=cfg.INPUT.FORMAT,
    )
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)


@torch.no_grad()
def dense_quality(model, batched_inputs):
    """
    Per-anchor qualities of ``model``'s predictions for one batch.

    Returns:
        (s, u, foreground): N x R classification quality, localization quality and foreground mask.
    """
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    logits, deltas = model._transpose_dense_predictions(
        model.head(features), [model.num_classes, 4]
    )
    anchors = model.anchor_generator(features)
    gt_instances = [x["instances"].to(model.device) for x in batched_inputs]
    gt_labels, gt_boxes = model.label_anchors(anchors, gt_instances)
    gt_labels, gt_boxes = torch.stack(gt_labels), torch.stack(gt_boxes)
    logits, deltas = cat(logits, dim=1), cat(deltas, dim=1)
    s = classification_quality(logits, gt_labels)
    u = localization_quality(deltas, Boxes.cat(anchors).tensor, gt_boxes, model.box2box_transform)
    return s, u, (gt_labels >= 0) & (gt_labels < model.num_classes)


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
