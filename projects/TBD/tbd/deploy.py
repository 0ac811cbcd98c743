"""
Deploy a TBD student as what it is at inference time: a plain detectron2 ``RetinaNet``.

A ``TBDRetinaNet`` checkpoint holds RetinaNet's tensors plus, when TFD uses a 1x1 adapter (student
and teacher FPN widths differ), ``tfd_loss.adapter.weight`` and ``tfd_loss.adapter.bias``. The
adapter only maps student features to the teacher's width for the training loss; inference never
runs it, and the teacher is never part of a checkpoint. So the same checkpoint loads into a plain
RetinaNet built from the same config with one change, ``MODEL.META_ARCHITECTURE "RetinaNet"``
(:func:`retinanet_config`); ``DetectionCheckpointer`` then logs the adapter keys as unused. The
helpers here drop those keys explicitly, for a strict load and for exports that carry no training
modules.
"""

from collections import OrderedDict
from typing import List, Mapping

import torch
from detectron2.modeling import RetinaNet, build_model

__all__ = ["DISTILLATION_PREFIXES", "distillation_keys", "student_state_dict"]
__all__ += ["retinanet_config", "to_retinanet"]

# State-dict prefixes of the training-only distillation modules of TBDRetinaNet.
DISTILLATION_PREFIXES = ("tfd_loss.", "hd_loss.")


def distillation_keys(state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """The keys of ``state_dict`` that belong to training-only distillation modules."""
    return [k for k in state_dict if k.startswith(DISTILLATION_PREFIXES)]


def student_state_dict(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """
    ``state_dict`` (a TBDRetinaNet's, or the ``"model"`` entry of its checkpoint) without the
    distillation modules' keys: exactly the state dict of a plain RetinaNet of the same config.
    """
    dropped = set(distillation_keys(state_dict))
    return OrderedDict((k, v) for k, v in state_dict.items() if k not in dropped)


def retinanet_config(cfg):
    """
    A copy of the student's config that builds a plain detectron2 RetinaNet: the only change is
    ``MODEL.META_ARCHITECTURE = "RetinaNet"``. The ``MODEL.TBD`` keys stay (RetinaNet ignores them).
    """
    if cfg.MODEL.META_ARCHITECTURE not in ("TBDRetinaNet", "RetinaNet"):
        raise ValueError(
            "expected a TBDRetinaNet or RetinaNet config, got MODEL.META_ARCHITECTURE="
            f"{cfg.MODEL.META_ARCHITECTURE!r}"
        )
    out = cfg.clone()
    out.defrost()
    out.MODEL.META_ARCHITECTURE = "RetinaNet"
    if cfg.is_frozen():
        out.freeze()
    return out


def to_retinanet(student: RetinaNet, cfg) -> RetinaNet:
    """
    A plain detectron2 RetinaNet with the student's weights, in eval mode on the student's device.

    Built from :func:`retinanet_config` of ``cfg`` (the student's config) and loaded strictly from
    :func:`student_state_dict`, so any key mismatch other than the distillation modules raises. The
    student and its teacher (if it was ever built) are left untouched; the result shares no tensor
    with them.
    """
    model = build_model(retinanet_config(cfg))
    if type(model) is not RetinaNet:
        raise TypeError(f"expected detectron2's RetinaNet, built {type(model).__name__}")
    model.load_state_dict(student_state_dict(student.state_dict()), strict=True)
    return model.to(student.device).eval()
