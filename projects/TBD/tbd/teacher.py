"""
The frozen teacher: built from its own config, loaded with :class:`SafeCheckpointer`, and held
outside the student's module tree so that it is never in ``state_dict()``, ``parameters()``, the
optimizer, DDP or a traced export.

Teacher and student must mean the same thing by every output HD and TFD compare. What differs
between their configs is either converted exactly or refused when the model is built
(docs/method.md, "Teacher and student"): :func:`check_teacher_config` (config keys),
:func:`_check_built_teacher` (the built models), :class:`FrozenTeacher` (input normalization and
the box transform) and :func:`check_same_anchors` (every step, shapes only).
"""

import logging
import os
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from detectron2.layers import cat
from detectron2.modeling import RetinaNet, build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import ImageList
from detectron2.utils.file_io import PathManager
from torch import Tensor

from .checkpoint import SafeCheckpointer
from .config import distills, load_tbd_config, resolve_config_file

logger = logging.getLogger(__name__)

# Input formats the teacher's input can be converted between (a channel flip).
_CONVERTIBLE_FORMATS = {"RGB", "BGR"}


def teacher_config_file(student_cfg) -> str:
    """
    The teacher's config file, ``MODEL.TBD.TEACHER.CONFIG_FILE`` resolved (a path or a detectron2
    model-zoo name). Raises ValueError when the key is empty, FileNotFoundError when it names
    nothing.
    """
    config_file = student_cfg.MODEL.TBD.TEACHER.CONFIG_FILE
    if not config_file:
        raise ValueError("MODEL.TBD.TEACHER.CONFIG_FILE is empty: TBD needs a teacher config")
    return resolve_config_file(config_file, "MODEL.TBD.TEACHER.CONFIG_FILE")


def load_teacher_config(student_cfg):
    """
    The teacher's config: :func:`teacher_config_file` with ``MODEL.TBD.TEACHER.OPTS`` applied and
    the student's device. A ``TBDRetinaNet`` teacher (a TBD student used as a teacher) is built as
    the plain ``RetinaNet`` it is at inference. Reads no weights.
    """
    teacher = student_cfg.MODEL.TBD.TEACHER
    cfg = load_tbd_config(teacher_config_file(student_cfg), teacher.OPTS)
    cfg.MODEL.DEVICE = student_cfg.MODEL.DEVICE
    cfg.MODEL.WEIGHTS = teacher.WEIGHTS
    if cfg.MODEL.META_ARCHITECTURE == "TBDRetinaNet":
        cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.freeze()
    return cfg


def check_teacher_config(student_cfg, teacher_cfg):
    """
    Refuse a teacher whose classes, anchor layout or input format differ from the student's in a
    way that cannot be converted: HD and TFD compare predictions anchor by anchor. (Box transforms
    and pixel normalization are converted by :class:`FrozenTeacher`; strides, cell anchors and
    padding are checked on the built models by :func:`_check_built_teacher`.)
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
    formats = {student_cfg.INPUT.FORMAT, teacher_cfg.INPUT.FORMAT}
    if len(formats) > 1 and not formats <= _CONVERTIBLE_FORMATS:
        raise ValueError(
            f"cannot convert the student's INPUT.FORMAT {student_cfg.INPUT.FORMAT!r} to the "
            f"teacher's ({student_cfg.MODEL.TBD.TEACHER.CONFIG_FILE}) {teacher_cfg.INPUT.FORMAT!r}"
            f": only {sorted(_CONVERTIBLE_FORMATS)} convert into each other"
        )


def _check_built_teacher(student: RetinaNet, teacher) -> None:
    """Refuse a built teacher whose anchors or padding differ from the student's."""
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
    # The teacher runs on the student's padded batch: padded to a multiple of the student's
    # size divisibility, which must be one of the teacher's.
    s_div, t_div = student.backbone.size_divisibility, teacher.backbone.size_divisibility
    if t_div > 1 and (s_div < 1 or s_div % t_div != 0):
        raise ValueError(
            f"the teacher's backbone needs inputs padded to a multiple of {t_div}, the student "
            f"pads its batch to a multiple of {s_div}: the teacher cannot run on it"
        )
    s_square = student.backbone.padding_constraints.get("square_size", 0)
    t_square = teacher.backbone.padding_constraints.get("square_size", 0)
    if t_square > 0 and t_square != s_square:
        raise ValueError(
            f"the teacher's backbone pads to {t_square} x {t_square} squares, the student's "
            f"batch to {s_square or 'no square'}: the teacher cannot run on it"
        )


def check_same_anchors(
    student_levels: Sequence[Tuple[int, int]],
    teacher_levels: Sequence[Tuple[int, int]],
    num_student: int,
    num_teacher: int,
) -> None:
    """
    Refuse teacher predictions that are not on the student's anchors: the levels' sizes (Hl, Wl)
    and the number of anchors R must agree. Python integers only (no host sync).
    """
    if list(student_levels) != list(teacher_levels) or num_student != num_teacher:
        raise ValueError(
            f"teacher and student predict on different anchors: the student has {num_student} "
            f"anchors on levels of size {list(student_levels)}, the teacher {num_teacher} on "
            f"{list(teacher_levels)}; they must share IN_FEATURES, strides, cell anchors and the "
            "padded input"
        )


def check_teacher_weights_file(weights: str) -> str:
    """``MODEL.TBD.TEACHER.WEIGHTS`` as a local file (downloaded when it is a URL); raises
    ValueError when empty and FileNotFoundError when there is no such file."""
    if not weights:
        raise ValueError(
            "MODEL.TBD.TEACHER.WEIGHTS is empty: a randomly initialized teacher teaches noise"
        )
    local = PathManager.get_local_path(weights)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"MODEL.TBD.TEACHER.WEIGHTS={weights!r}: no such file")
    return local


def check_teacher_files(student_cfg) -> None:
    """
    What training a distilling config needs of its teacher, checked in seconds, before any dataset
    is prepared: the teacher config can be read and matches the student
    (:func:`check_teacher_config`), and ``TEACHER.WEIGHTS`` is a file. Nothing for a config that
    does not distill.
    """
    if not distills(student_cfg):
        return
    check_teacher_config(student_cfg, load_teacher_config(student_cfg))
    check_teacher_weights_file(student_cfg.MODEL.TBD.TEACHER.WEIGHTS)


class _RecordingCheckpointer(SafeCheckpointer):
    """A SafeCheckpointer that keeps the incompatible keys of the last load."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_teacher_weights(model, weights: str):
    """
    Load ``weights`` into the teacher and refuse a teacher that would be partly random.
    """
    local = check_teacher_weights_file(weights)
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

    features: per FPN level, N x C_T x Hl x Wl; logits: N x R x K; deltas: N x R x 4, encoded by
    ``box2box_transform``, the teacher's own (decode them with it, never with the student's).
    """

    features: List[Tensor]
    logits: Tensor
    deltas: Tensor
    box2box_transform: Box2BoxTransform


class FrozenTeacher:
    """
    Holds a frozen teacher RetinaNet. Not an ``nn.Module``: assigning it to a module attribute does
    not register it, so the student's ``train()``, ``state_dict()``, ``parameters()`` and ``to()``
    never reach it. It follows the student's device when called.

    It runs on the student's normalized, padded batch. When the two normalize their inputs
    differently (``MODEL.PIXEL_MEAN``, ``PIXEL_STD``, ``INPUT.FORMAT`` RGB/BGR), decided once here,
    each call maps the batch to the teacher's normalization and pads it with the teacher's zero::

        x_T = P(x_S) * P(std_S) / std_T + (P(mean_S) - mean_T) / std_T   on each image,
        x_T = 0                                                          on its padding

    with P the channel flip when the formats differ (identity otherwise): exactly the batch the
    teacher would make of the same images itself.
    """

    def __init__(
        self, model: RetinaNet, cfg, *, pixel_mean: Tensor, pixel_std: Tensor, input_format: str
    ):
        """
        Args:
            model: the teacher; cfg: its config.
            pixel_mean, pixel_std (3 x 1 x 1), input_format: the student's input normalization.
        """
        self.model = model.eval().requires_grad_(False)
        self.cfg = cfg
        self._renormalize = self._input_conversion(
            pixel_mean.detach().cpu(), pixel_std.detach().cpu(), input_format
        )

    def _input_conversion(self, mean: Tensor, std: Tensor, fmt: str):
        """(flip, scale, shift) of the docstring's equation, or None when the inputs agree."""
        t = self.model
        t_mean, t_std = t.pixel_mean.detach().cpu(), t.pixel_std.detach().cpu()
        flip = fmt != t.input_format
        if not flip and torch.equal(mean, t_mean) and torch.equal(std, t_std):
            return None
        if flip and {fmt, t.input_format} != _CONVERTIBLE_FORMATS:
            raise ValueError(f"cannot convert student input {fmt} to teacher {t.input_format}")
        if flip:
            mean, std = mean.flip(0), std.flip(0)
        return flip, std / t_std, (mean - t_mean) / t_std

    @property
    def box2box_transform(self) -> Box2BoxTransform:
        return self.model.box2box_transform

    @classmethod
    def build(cls, cfg, student: RetinaNet):
        """Build the teacher of ``cfg`` (from :func:`load_teacher_config`), check that it shares the
        student's anchors and padding, and load its weights."""
        model = build_model(cfg)
        _check_built_teacher(student, model)
        load_teacher_weights(model, cfg.MODEL.WEIGHTS)
        return cls(
            model,
            cfg,
            pixel_mean=student.pixel_mean,
            pixel_std=student.pixel_std,
            input_format=student.input_format,
        )

    def _teacher_input(self, images: ImageList) -> Tensor:
        """The student's batch in the teacher's normalization, padded with the teacher's zero."""
        if self._renormalize is None:
            return images.tensor
        flip, scale, shift = self._renormalize
        x = images.tensor.flip(1) if flip else images.tensor
        device, dtype = x.device, x.dtype
        x = torch.addcmul(shift.to(device, dtype), x, scale.to(device, dtype))
        height, width = x.shape[-2:]
        for i, (h, w) in enumerate(images.image_sizes):
            if h < height:
                x[i, :, h:, :] = 0
            if w < width:
                x[i, :, :, w:] = 0
        return x

    @torch.no_grad()
    def __call__(self, images: ImageList) -> TeacherPredictions:
        """
        Args:
            images: the student's normalized and padded batch (``preprocess_image``), N x 3 x H x W
                with each image's size in ``image_sizes``.
        """
        t = self.model
        if t.device != images.tensor.device:
            t.to(images.tensor.device)
        t.eval()
        features = t.backbone(self._teacher_input(images))
        features = [features[f] for f in t.head_in_features]
        logits, deltas = t.head(features)
        return TeacherPredictions(
            features=features,
            logits=cat([permute_to_N_HWA_K(x, t.num_classes) for x in logits], dim=1),
            deltas=cat([permute_to_N_HWA_K(x, 4) for x in deltas], dim=1),
            box2box_transform=t.box2box_transform,
        )
