"""Task-Balanced Distillation (TBD) for object detection, as a detectron2 project."""

from .backbone import build_retinanet_basic_resnet_fpn_backbone  # registers the backbone
from .config import add_tbd_config
from .harmony import harmony_score
from .losses import HarmonyDistillationLoss, TaskDecoupledFeatureLoss
from .meta_arch import TBDRetinaNet  # registers "TBDRetinaNet" in META_ARCH_REGISTRY
from .teacher import FrozenTeacher

__all__ = [
    "add_tbd_config",
    "build_retinanet_basic_resnet_fpn_backbone",
    "harmony_score",
    "HarmonyDistillationLoss",
    "TaskDecoupledFeatureLoss",
    "TBDRetinaNet",
    "FrozenTeacher",
]
