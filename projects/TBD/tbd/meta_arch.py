import logging
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.structures import Boxes
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import Tensor

from .harmony import (
    classification_quality,
    foreground_anchors,
    harmonious,
    harmony_score,
    localization_quality,
    matched_anchors,
)
from .losses import (
    HarmonyDistillationLoss,
    TaskDecoupledFeatureLoss,
    balance_weights,
    mean_over_processes,
    task_masks,
)
from .teacher import (
    FrozenTeacher,
    check_same_anchors,
    check_teacher_config,
    load_teacher_config,
    teacher_config_file,
)

__all__ = ["TBDRetinaNet"]

logger = logging.getLogger(__name__)


def _choice(key: str, value: str, options):
    if value not in options:
        raise ValueError(f"{key} must be one of {list(options)}, got {value!r}")
    return value


def _check_finite(losses: Dict[str, Tensor]) -> None:
    """Stop with the names of the non-finite loss terms (one host sync per step)."""
    if bool(torch.isfinite(torch.stack([v.detach().float() for v in losses.values()])).all()):
        return
    bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
    raise FloatingPointError(
        f"TBD: {', '.join(bad)} became infinite or NaN at iteration {get_event_storage().iter} "
        f"(losses: { {k: float(v.detach()) for k, v in losses.items()} })"
    )


@META_ARCH_REGISTRY.register()
class TBDRetinaNet(RetinaNet):
    """
    A RetinaNet student trained with Task-Balanced Distillation (HD + TFD) from a frozen teacher.

    Training adds ``loss_hd_cls``, ``loss_hd_reg`` and ``loss_tfd`` to RetinaNet's ``loss_cls`` and
    ``loss_box_reg``. Inference, tracing and checkpoints are RetinaNet's own: the teacher is built
    lazily by the first training step (or :meth:`load_teacher`), and is never a submodule.

    With HD and TFD disabled it is the plain RetinaNet student, except for the loss normalizer,
    which is the whole batch's under several processes (:meth:`_ema_update`): the baseline configs
    use it so that baseline and TBD are normalized alike.

    When the teacher's config file cannot be read (a student shipped without its teacher), the
    model is built for inference only, with a warning and without the TFD adapter; training it
    raises (docs/deploy.md).
    """

    @configurable
    def __init__(
        self,
        *,
        teacher_cfg=None,
        teacher_unavailable: Optional[Exception] = None,
        hd_loss: Optional[HarmonyDistillationLoss] = None,
        tfd_loss: Optional[TaskDecoupledFeatureLoss] = None,
        loss_weights: Optional[Dict[str, float]] = None,
        tfd_mask: str = "task",
        tfd_balance: str = "dynamic",
        tfd_cls_ratio: float = 0.5,
        harmony_delta: float = 0.2,
        diagnostics_period: int = 20,
        warmup_iters: int = 0,
        **kwargs,
    ):
        """
        Args:
            teacher_cfg: the teacher's frozen config (see :func:`load_teacher_config`); None when
                both HD and TFD are disabled (a plain RetinaNet student), or when it cannot be read.
            teacher_unavailable: why the teacher's config could not be read (inference only).
            hd_loss, tfd_loss: the HD and TFD loss modules, None when disabled.
            loss_weights: weights of "loss_hd_cls", "loss_hd_reg" and "loss_tfd".
            tfd_mask: "task" or "uniform" TFD regions; tfd_balance, tfd_cls_ratio: the TFD balance.
            harmony_delta: |s - u| threshold of a harmonious prediction (logged diagnostic).
            diagnostics_period: compute the logged harmonious proportions every this many
                iterations (the last of each period, when detectron2's writers print).
            warmup_iters: linear ramp of all distillation weights.
            kwargs: arguments of :class:`RetinaNet`.
        """
        super().__init__(**kwargs)
        self.teacher_cfg = teacher_cfg
        self.teacher_unavailable = teacher_unavailable
        self.hd_loss = hd_loss
        self.tfd_loss = tfd_loss
        self.loss_weights = dict(loss_weights or {})
        self.tfd_mask = tfd_mask
        self.tfd_balance = tfd_balance
        self.tfd_cls_ratio = tfd_cls_ratio
        self.harmony_delta = harmony_delta
        self.diagnostics_period = diagnostics_period
        self.warmup_iters = warmup_iters
        self._teacher: Optional[FrozenTeacher] = None

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        tbd = cfg.MODEL.TBD
        if not (tbd.HD.ENABLED or tbd.TFD.ENABLED):
            return ret
        teacher_cfg = None
        try:
            teacher_config_file(cfg)
        except (ValueError, FileNotFoundError) as e:
            ret["teacher_unavailable"] = e
            logger.warning(
                f"{e}. Built the student for inference only, without its TFD adapter (checkpoint "
                "keys tfd_loss.* will be unused); it cannot train without the teacher's config."
            )
        else:
            teacher_cfg = load_teacher_config(cfg)
            check_teacher_config(cfg, teacher_cfg)
        ret.update(
            teacher_cfg=teacher_cfg,
            loss_weights={
                "loss_hd_cls": tbd.HD.CLS_WEIGHT,
                "loss_hd_reg": tbd.HD.REG_WEIGHT,
                "loss_tfd": tbd.TFD.WEIGHT,
            },
            tfd_mask=_choice("MODEL.TBD.TFD.MASK", tbd.TFD.MASK, ("task", "uniform")),
            tfd_balance=_choice("MODEL.TBD.TFD.BALANCE", tbd.TFD.BALANCE, ("dynamic", "fixed")),
            tfd_cls_ratio=tbd.TFD.CLS_RATIO,
            harmony_delta=tbd.HARMONY_DELTA,
            diagnostics_period=tbd.DIAGNOSTICS_PERIOD,
            warmup_iters=tbd.WARMUP_ITERS,
        )
        if tbd.HD.ENABLED:
            ret["hd_loss"] = HarmonyDistillationLoss(
                beta=tbd.HD.BETA,
                target=tbd.HD.TARGET,
                reg_weighting=tbd.HD.REG_WEIGHTING,
                box2box_transform=ret["box2box_transform"],
                box_reg_loss_type=ret["box_reg_loss_type"],
                smooth_l1_beta=ret["smooth_l1_beta"],
                compiled=tbd.HD.COMPILE,
            )
        if tbd.TFD.ENABLED and teacher_cfg is not None:
            first_level = cfg.MODEL.RETINANET.IN_FEATURES[0]
            student_channels = ret["backbone"].output_shape()[first_level].channels
            ret["tfd_loss"] = TaskDecoupledFeatureLoss(
                student_channels, teacher_cfg.MODEL.FPN.OUT_CHANNELS, tbd.TFD.ADAPTER
            )
        return ret

    @property
    def distills(self) -> bool:
        """Whether training distills (HD or TFD enabled), whether or not the teacher is readable."""
        return self.teacher_cfg is not None or self.teacher_unavailable is not None

    def load_teacher(self) -> FrozenTeacher:
        """Build and load the teacher now (it is otherwise built by the first training step)."""
        if self._teacher is None:
            if self.teacher_cfg is None:
                e = self.teacher_unavailable
                raise type(e)(
                    f"{e}; this TBDRetinaNet was built without its teacher, for inference only, "
                    "and cannot train"
                ) from e
            self._teacher = FrozenTeacher.build(self.teacher_cfg, self)
        return self._teacher

    def _ema_update(self, name: str, value: float, initial_value: float, momentum: float = 0.9):
        """
        RetinaNet's loss normalizer (an EMA of the number of foreground anchors, starting at 100),
        made independent of the number of processes. In detectron2 each of N processes averages its
        own count and divides its share of the batch's losses by it, so while the EMA is near its
        initial value the losses, and their gradients, are up to N times smaller than one process's
        on the same total batch. Here the EMA follows the count of the whole batch and each process
        divides by 1/N of it: the mean of the processes' losses (what DDP averages and what is
        logged) is the one-process loss.
        """
        world = comm.get_world_size()
        if name != "loss_normalizer" or world == 1:
            return super()._ema_update(name, value, initial_value, momentum)
        total = mean_over_processes(torch.tensor(float(value), device=self.device)) * world
        return super()._ema_update(name, total.item(), initial_value, momentum) / world

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        if not self.distills:
            return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        # concatenated once, shared by RetinaNet's losses (cat of one tensor is that tensor) and TBD
        logits, deltas = cat(pred_logits, dim=1), cat(pred_anchor_deltas, dim=1)
        losses = self.losses(anchors, [logits], gt_labels, [deltas], gt_boxes)
        teacher = self.load_teacher()(images)
        with torch.autocast(self.device.type, enabled=False):
            losses.update(
                self.distillation_losses(
                    features,
                    logits.float(),
                    deltas.float(),
                    Boxes.cat(anchors).tensor,
                    torch.stack(gt_labels),
                    torch.stack(gt_boxes),
                    teacher,
                    losses,
                )
            )
        _check_finite(losses)
        return losses

    def distillation_losses(
        self,
        features: List[Tensor],
        logits: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
        teacher,
        task_losses: Dict[str, Tensor],
    ) -> Dict[str, Tensor]:
        """
        Args:
            features: the student's FPN features, per level N x C x Hl x Wl.
            logits: N x R x K and deltas: N x R x 4, the student's head outputs.
            anchors: R x 4. gt_labels: N x R and gt_boxes: N x R x 4 from ``label_anchors``.
            teacher: :class:`TeacherPredictions` for the same batch, on the same anchors
                (checked: :func:`check_same_anchors`).
            task_losses: the student's RetinaNet losses of this step (for the TFD balance).
        Returns:
            the weighted distillation losses, float32.
        """
        check_same_anchors(
            [tuple(f.shape[-2:]) for f in features],
            [tuple(f.shape[-2:]) for f in teacher.features],
            logits.shape[1],
            teacher.logits.shape[1],
        )
        t_logits, t_deltas = teacher.logits.float(), teacher.deltas.float()
        matched = matched_anchors(gt_labels, self.num_classes)
        foreground = foreground_anchors(gt_labels, self.num_classes)
        t_cls_quality = classification_quality(t_logits, gt_labels)
        t_loc_quality = localization_quality(t_deltas, anchors, gt_boxes, teacher.box2box_transform)
        scale = self._warmup_factor()
        weights = {k: scale * v for k, v in self.loss_weights.items()}
        storage = get_event_storage()
        diagnose = self._diagnostics_step(storage.iter)
        # every normalizer and count over the whole batch (all processes), in one all-reduce
        harmony = harmony_score(t_cls_quality, t_loc_quality)
        local = {
            "num_foreground": foreground.sum(),
            "loss_cls": task_losses["loss_cls"],
            "loss_box_reg": task_losses["loss_box_reg"],
        }
        if self.hd_loss is not None:
            local["hd_weight_sum"] = self.hd_loss.regression_weights(foreground, harmony).sum()
        if diagnose:
            s_cls_quality = classification_quality(logits.detach(), gt_labels)
            s_loc_quality = localization_quality(
                deltas.detach(), anchors, gt_boxes, self.box2box_transform
            )
            for name, s, u in (
                ("teacher", t_cls_quality, t_loc_quality),
                ("student", s_cls_quality, s_loc_quality),
            ):
                local[f"harmonious_{name}"] = (
                    harmonious(s, u, self.harmony_delta) & foreground
                ).sum()
        reduced = dict(
            zip(local, mean_over_processes(torch.stack([x.float() for x in local.values()])))
        )
        num_foreground = reduced["num_foreground"]

        losses, diagnostics = {}, {}
        if self.hd_loss is not None:
            targets = self.hd_loss.classification_targets(
                t_logits, gt_labels, (t_cls_quality * t_loc_quality).sqrt()
            )
            losses["loss_hd_cls"] = weights["loss_hd_cls"] * self.hd_loss.classification_loss(
                logits, targets, gt_labels, num_foreground
            )
            losses["loss_hd_reg"] = weights["loss_hd_reg"] * self.hd_loss.regression_loss(
                deltas,
                t_deltas,
                anchors,
                foreground,
                harmony,
                reduced["hd_weight_sum"],
                teacher.box2box_transform,
            )
        if self.tfd_loss is not None:
            level_shapes = [tuple(f.shape[-2:]) for f in features]
            if self.tfd_mask == "task":
                cls_masks, reg_masks = task_masks(t_logits, t_loc_quality, matched, level_shapes)
            else:
                cls_masks = [logits.new_ones((logits.shape[0], h, w)) for h, w in level_shapes]
                reg_masks = cls_masks
            w_cls, w_reg = balance_weights(
                reduced["loss_cls"], reduced["loss_box_reg"], self.tfd_balance, self.tfd_cls_ratio
            )
            losses["loss_tfd"] = weights["loss_tfd"] * self.tfd_loss(
                features, teacher.features, cls_masks, reg_masks, w_cls, w_reg
            )
            diagnostics.update({"tbd/w_cls": w_cls, "tbd/w_reg": w_reg})
        periodic = {}
        if diagnose:
            # harmonious proportions among the foreground anchors of the whole batch
            denominator = num_foreground.clamp(min=1 / comm.get_world_size())
            for name in ("teacher", "student"):
                periodic[f"tbd/harmony_{name}"] = reduced[f"harmonious_{name}"] / denominator
        # one host sync for all logged tensors
        logged = {**diagnostics, **periodic}
        values = torch.stack(list(logged.values())).float().tolist() if logged else []
        values = dict(zip(logged, values))
        storage.put_scalars(**{k: values[k] for k in diagnostics}, **{"tbd/warmup_factor": scale})
        # computed once per period: logged as they are, not as a median over the last 20 values
        storage.put_scalars(**{k: values[k] for k in periodic}, smoothing_hint=False)
        return losses

    def _diagnostics_step(self, iteration: int) -> bool:
        """Whether this iteration computes the harmony diagnostics: the last of every period."""
        return self.diagnostics_period <= 1 or (iteration + 1) % self.diagnostics_period == 0

    def _warmup_factor(self) -> float:
        """Linear ramp 0 -> 1 of the distillation weights over ``warmup_iters`` iterations."""
        if self.warmup_iters <= 0:
            return 1.0
        return min(1.0, get_event_storage().iter / self.warmup_iters)
