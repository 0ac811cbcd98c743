"""
The frozen teacher: built from its own config, loaded with DetectionCheckpointer, and held outside
the student's module tree so that it is never in ``state_dict()``, ``parameters()``, the optimizer,
DDP or a traced export.
"""

import logging
import os
from dataclasses import dataclass
from typing import List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import cat
from detectron2.modeling import RetinaNet, build_model
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.utils.file_io import PathManager
from torch import Tensor

from .config import load_tbd_config, resolve_config_file

logger = logging.getLogger(__name__)


def load_teacher_config(student_cfg):
    """
    The teacher's config: ``MODEL.TBD.TEACHER.CONFIG_FILE`` (a path, or a detectron2 model-zoo name)
    with ``MODEL.TBD.TEACHER.OPTS`` applied and the student's device. Reads no weights.
    """
    teacher = student_cfg.MODEL.TBD.TEACHER
    config_file = teacher.CONFIG_FILE
    if not config_file:
        raise ValueError("MODEL.TBD.TEACHER.CONFIG_FILE is empty: TBD needs a teacher config")
    config_file = resolve_config_file(config_file, "MODEL.TBD.TEACHER.CONFIG_FILE")
    cfg = load_tbd_config(config_file, teacher.OPTS)
    cfg.MODEL.DEVICE = student_cfg.MODEL.DEVICE
    cfg.MODEL.WEIGHTS = teacher.WEIGHTS
    cfg.freeze()
    return cfg


def check_teacher_config(student_cfg, teacher_cfg):
    """
    Refuse a teacher whose classes or anchor layout differ from the student's: HD and TFD compare
    predictions anchor by anchor.
    """
    pairs = {
        "MODEL.RETINANET.NUM_CLASSES": lambda c: c.MODEL.RETINANET.NUM_CLASSES,
        "MODEL.RETINANET.IN_FEATURES": lambda c: list(c.MODEL.RETINANET.IN_FEATURES),
        "MODEL.ANCHOR_GENERATOR.SIZES": lambda c: [list(s) for s in c.MODEL.ANCHOR_GENERATOR.SIZES],
        "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": lambda c: [
            list(r) for r in c.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS
        ],
        "MODEL.ANCHOR_GENERATOR.OFFSET": lambda c: c.MODEL.ANCHOR_GENERATOR.OFFSET,
        "MODEL.ANCHOR_GENERATOR.NAME": lambda c: c.MODEL.ANCHOR_GENERATOR.NAME,
    }
    for key, get in pairs.items():
        student_value, teacher_value = get(student_cfg), get(teacher_cfg)
        if student_value != teacher_value:
            raise ValueError(
                f"teacher and student must share {key}: student has {student_value}, "
                f"teacher ({student_cfg.MODEL.TBD.TEACHER.CONFIG_FILE}) has {teacher_value}"
            )


def _check_built_teacher(student, teacher):
    if not isinstance(teacher, RetinaNet):
        raise TypeError(f"the teacher must be a RetinaNet, got {type(teacher).__name__}")
    s_gen, t_gen = student.anchor_generator, teacher.anchor_generator
    if list(s_gen.strides) != list(t_gen.strides):
        raise ValueError(
            f"teacher and student anchor strides differ: student {list(s_gen.strides)}, "
            f"teacher {list(t_gen.strides)}"
        )
    for level, (a, b) in enumerate(zip(s_gen.cell_anchors, t_gen.cell_anchors)):
        if a.shape != b.shape or not torch.allclose(a.cpu(), b.cpu()):
            raise ValueError(f"teacher and student cell anchors differ on level {level}")


class _RecordingCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer that keeps the incompatible keys of the last load."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_teacher_weights(model, weights: str):
    """
    Load ``weights`` into the teacher and refuse a teacher that would be partly random.
    """
    if not weights:
        raise ValueError(
            "MODEL.TBD.TEACHER.WEIGHTS is empty: a randomly initialized teacher teaches noise"
        )
    local = PathManager.get_local_path(weights)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"MODEL.TBD.TEACHER.WEIGHTS={weights!r}: no such file")
    checkpointer = _RecordingCheckpointer(model)
    try:
        checkpointer.load(local, checkpointables=[])
    except Exception as e:
        if checkpointer.incompatible is not None:
            raise
        raise RuntimeError(
            f"MODEL.TBD.TEACHER.WEIGHTS={weights!r} is not a readable checkpoint: {e}"
        ) from e
    incompatible = checkpointer.incompatible
    missing = list(incompatible.missing_keys)
    shapes = [name for name, *_ in incompatible.incorrect_shapes]
    if missing or shapes:
        raise RuntimeError(
            f"MODEL.TBD.TEACHER.WEIGHTS={weights!r} does not match the teacher config: "
            f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"wrong shapes {shapes[:10]}; refusing to train against a partly random teacher"
        )
    unexpected = list(incompatible.unexpected_keys)
    if unexpected:
        logger.warning(f"Teacher checkpoint keys not used by the teacher: {unexpected[:10]}")
    num = sum(1 for _ in model.state_dict())
    logger.info(f"Loaded the teacher from {weights}: all {num} tensors matched")


@dataclass
class TeacherPredictions:
    """What the teacher predicts for the student's batch (all without gradient).

    features: per FPN level, N x C_T x Hl x Wl; logits: N x R x K; deltas: N x R x 4.
    """

    features: List[Tensor]
    logits: Tensor
    deltas: Tensor


class FrozenTeacher:
    """
    Holds a frozen teacher RetinaNet. Not an ``nn.Module``: assigning it to a module attribute does
    not register it, so the student's ``train()``, ``state_dict()``, ``parameters()`` and ``to()``
    never reach it. It follows the student's device when called.
    """

    def __init__(self, model: RetinaNet, cfg):
        self.model = model.eval().requires_grad_(False)
        self.cfg = cfg

    @classmethod
    def build(cls, cfg, student: RetinaNet):
        """Build the teacher of ``cfg`` (from :func:`load_teacher_config`), check that it shares the
        student's anchors, and load its weights."""
        model = build_model(cfg)
        _check_built_teacher(student, model)
        load_teacher_weights(model, cfg.MODEL.WEIGHTS)
        return cls(model, cfg)

    def _teacher_input(self, images: Tensor, pixel_mean: Tensor, pixel_std: Tensor, fmt: str):
        """Re-normalize the student's normalized batch for the teacher when their inputs differ."""
        t = self.model
        same = (
            fmt == t.input_format
            and torch.equal(pixel_mean, t.pixel_mean)
            and torch.equal(pixel_std, t.pixel_std)
        )
        if same:
            return images
        raw = images * pixel_std + pixel_mean
        if fmt != t.input_format:
            if {fmt, t.input_format} != {"RGB", "BGR"}:
                raise ValueError(f"cannot convert student input {fmt} to teacher {t.input_format}")
            raw = raw.flip(1)
        return (raw - t.pixel_mean) / t.pixel_std

    @torch.no_grad()
    def __call__(
        self, images: Tensor, pixel_mean: Tensor, pixel_std: Tensor, input_format: str
    ) -> TeacherPredictions:
        """
        Args:
            images: N x 3 x H x W, the student's normalized and padded batch.
            pixel_mean, pixel_std, input_format: the student's normalization.
        """
        t = self.model
        if t.device != images.device:
            t.to(images.device)
        t.eval()
        x = self._teacher_input(images, pixel_mean, pixel_std, input_format)
        features = t.backbone(x)
        features = [features[f] for f in t.head_in_features]
        logits, deltas = t.head(features)
        return TeacherPredictions(
            features=features,
            logits=cat([permute_to_N_HWA_K(x, t.num_classes) for x in logits], dim=1),
            deltas=cat([permute_to_N_HWA_K(x, 4) for x in deltas], dim=1),
        )
