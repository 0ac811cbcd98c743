"""
The distillation losses of TBD (docs/method.md, "Harmony Distillation" and "Task-decoupled Feature
Distillation").

Layout: N images, R anchors over all FPN levels (R = sum_l Hl x Wl x A), K classes. Teacher inputs
are expected without gradient; every loss returns a 0-dim float32 tensor.
"""

import functools
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.layers import ciou_loss, diou_loss
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils import comm
from fvcore.nn import giou_loss
from torch import Tensor, nn
from torch.nn import functional as F

from .harmony import foreground_anchors, reencode_deltas

_BOX_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


def mean_over_processes(x: Tensor) -> Tensor:
    """The mean of the detached ``x`` over the training processes (``x`` itself in one process).

    For normalizers: a loss that each of N processes divides by this mean (rather than by its own
    value), averaged by DDP, equals the loss of the whole batch in one process.
    """
    x = x.detach()
    world = comm.get_world_size()
    if world == 1:
        return x
    x = x.float().clone()
    dist.all_reduce(x)
    return x / world


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float) -> Tensor:
    """
    Elementwise quality focal loss: BCE(sigmoid(z), t) * |sigmoid(z) - t|^beta.

    Zero exactly where sigmoid(z) == t. Any shape; returns the same shape. The reference
    definition (autograd differentiates it); training uses :func:`quality_focal_loss_sum`.
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    gap = logits.sigmoid() - targets
    return bce * (gap.square() if beta == 2 else gap.abs().pow(beta))


class _QualityFocalLossSum(torch.autograd.Function):
    """
    sum over valid anchors a and classes k of QFL(z, t; beta), with the gradient computed in the
    forward pass. With p = sigmoid(z), g = p - t, BCE = softplus(z) - z t::

        L      = sum_{a valid, k} BCE |g|^beta
        dL/dz  = g |g|^beta + beta BCE |g|^(beta - 1) sign(g) p (1 - p)     (dBCE/dz = g)

    Ignored anchors are masked explicitly: they add 0 to L and get dL/dz = 0, for every beta
    (|0|^0 = 1 would count them with beta = 0). Where g = 0 on a valid anchor, the second term of
    dL/dz is taken as 0 (sign(0) = 0): for beta < 1, |g|^(beta - 1) is infinite there and the
    derivative of |g|^beta does not exist (autograd of :func:`quality_focal_loss` gives NaN).

    Dense over N x R x K, this is the largest tensor computation of a TBD step. Autograd of
    :func:`quality_focal_loss` would keep four N x R x K intermediates (p, g, g^2, BCE) for a
    backward with passes of its own; here the forward computes dL/dz along with L and keeps only
    it (the backward is one multiplication). With ``compiled``, torch.compile fuses the passes
    over N x R x K into one loop (:func:`_compiled_kernel`).
    Targets get no gradient (they come from the teacher).
    """

    @staticmethod
    def forward(
        ctx, logits: Tensor, targets: Tensor, valid: Tensor, beta: float, compiled: bool
    ) -> Tensor:
        kernel = _compiled_kernel() if compiled else _quality_focal_loss_sum_and_grad
        loss, grad = kernel(logits, targets, valid, beta, True)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None


def _quality_focal_loss_sum_and_grad(
    logits: Tensor, targets: Tensor, valid: Tensor, beta: float, with_grad: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """L and dL/dz of :class:`_QualityFocalLossSum` (dL/dz None unless ``with_grad``)."""
    p = logits.sigmoid()
    bce = torch.addcmul(F.softplus(logits), logits, targets, value=-1.0)
    gap = p - targets
    valid = valid.unsqueeze(-1)
    # ignored anchors: g = 0 zeroes the first term of dL/dz, and the focal factor below (0 there)
    # zeroes L and the second term
    gap.masked_fill_(~valid, 0.0)
    if beta == 2:
        focal = gap.square()  # already 0 where g = 0
    else:
        focal = gap.abs().pow(beta).mul_(valid)  # |0|^0 = 1: the mask itself for beta = 0
    grad = None
    if with_grad:
        p.addcmul_(p, p, value=-1.0)  # p (1 - p)
        if beta == 2:
            grad = torch.addcmul(focal, bce, p, value=2.0).mul_(gap)
        else:
            # d|g|^beta / dg = beta |g|^(beta - 1) sign(g), taken as 0 where g = 0 (infinite
            # |g|^(beta - 1) for beta < 1; sign(0) = 0 otherwise)
            slope = gap.abs().pow(beta - 1).masked_fill_(gap == 0, 0.0)
            slope = slope.mul_(gap.sign()).mul_(bce).mul_(p)
            grad = torch.add(focal * gap, slope, alpha=beta)
    # Tensor.sum adds pairwise; a float32 running sum (torch.dot on the CPU) loses precision over
    # the ~10^7 elements of N x R x K at COCO scale (tests/test_losses.py checks 1e-5)
    return bce.mul_(focal).sum(), grad


@functools.lru_cache(maxsize=None)
def _compiled_kernel():
    """:func:`_quality_focal_loss_sum_and_grad` compiled by torch.compile, with dynamic shapes (the
    number of anchors changes with the image size). Built on first use; the first call compiles
    (tens of seconds; a C++ compiler on the CPU, triton on CUDA)."""
    return torch.compile(_quality_focal_loss_sum_and_grad, dynamic=True)


def quality_focal_loss_sum(
    logits: Tensor, targets: Tensor, valid: Tensor, beta: float, compiled: bool = False
) -> Tensor:
    """
    sum_{a valid, k} QFL(z(a, k), t(a, k); beta) (see :func:`quality_focal_loss`), fused.

    Args:
        logits, targets: N x R x K; valid: N x R bool (anchors to count).
        compiled: compute it with torch.compile's fused kernel (training only).
    Returns:
        a 0-dim tensor; differentiable in ``logits``.
    """
    targets = targets.detach().to(logits.dtype)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _QualityFocalLossSum.apply(logits, targets, valid, float(beta), compiled)
    # no gradient wanted (evaluation of the loss): skip computing it
    with torch.no_grad():
        return _quality_focal_loss_sum_and_grad(logits, targets, valid, float(beta), False)[0]


class HarmonyDistillationLoss(nn.Module):
    """
    Harmony Distillation: the teacher's predictions, reweighted by their harmony, as targets.

    Classification (``loss_hd_cls``)::

        t(a, k) = p_T(a, k), except t(a, c(a)) = sqrt(s(a) u(a)) on foreground anchors
        L = sum_{a valid, k} QFL(z_S(a, k), t(a, k); beta) / max(1, #fg)

    (foreground: ``harmony.foreground_anchors``, the matched anchors that are not ignored).
    Regression (``loss_hd_reg``), on foreground anchors::

        L = sum_a w(a) l(S(a), T(a)) / sum_a w(a),  w(a) = HS(a) (or 1 for "uniform")

    with l the student's box regression loss type: smooth-L1 between the student's deltas and the
    teacher's boxes encoded by the student's transform, or GIoU / DIoU / CIoU between the boxes
    each model decodes with its own transform.

    The targets and the smooth-L1 regression are dense over the N x R anchors (masks and
    ``scatter``, no ``nonzero``): no host sync.
    """

    def __init__(
        self,
        *,
        beta: float,
        target: str,
        reg_weighting: str,
        box2box_transform: Box2BoxTransform,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        compiled: bool = False,
    ):
        super().__init__()
        if target not in ("harmony", "teacher"):
            raise ValueError(f"MODEL.TBD.HD.TARGET must be 'harmony' or 'teacher', got {target!r}")
        if reg_weighting not in ("harmony", "uniform"):
            raise ValueError(
                f"MODEL.TBD.HD.REG_WEIGHTING must be 'harmony' or 'uniform', got {reg_weighting!r}"
            )
        if box_reg_loss_type != "smooth_l1" and box_reg_loss_type not in _BOX_LOSSES:
            raise ValueError(f"unsupported box regression loss type {box_reg_loss_type!r}")
        if not beta >= 0:
            raise ValueError(f"MODEL.TBD.HD.BETA must be >= 0, got {beta}")
        self.beta = beta
        self.target = target
        self.reg_weighting = reg_weighting
        self.box2box_transform = box2box_transform
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta
        self.compiled = compiled

    def classification_targets(
        self, teacher_logits: Tensor, gt_labels: Tensor, harmonized_score: Tensor
    ) -> Tensor:
        """
        Args:
            teacher_logits: N x R x K; gt_labels: N x R (-1 ignore, K background);
            harmonized_score: N x R, sqrt(s * u) of the teacher.
        Returns:
            N x R x K targets t in [0, 1].
        """
        targets = teacher_logits.sigmoid()
        if self.target == "teacher":
            return targets
        # labels -1 (ignore) and K (background) have no class: only foreground anchors change
        num_classes = targets.shape[-1]
        foreground = foreground_anchors(gt_labels, num_classes).unsqueeze(-1)
        classes = gt_labels.clamp(0, num_classes - 1).unsqueeze(-1)  # N x R x 1
        harmonized = harmonized_score.unsqueeze(-1).to(targets.dtype)
        return targets.scatter_(
            -1, classes, torch.where(foreground, harmonized, targets.gather(-1, classes))
        )

    def classification_loss(
        self,
        student_logits: Tensor,
        targets: Tensor,
        gt_labels: Tensor,
        num_foreground: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            student_logits, targets: N x R x K; gt_labels: N x R.
            num_foreground: the mean number of foreground anchors per process (see
                :func:`mean_over_processes`); computed here when None.
        """
        if num_foreground is None:
            num_foreground = mean_over_processes(
                foreground_anchors(gt_labels, student_logits.shape[-1]).sum()
            )
        # over all processes: sum over the whole batch / max(#foreground of the whole batch, 1)
        num_foreground = num_foreground.clamp(min=1 / comm.get_world_size())
        valid = gt_labels >= 0
        loss = quality_focal_loss_sum(student_logits, targets, valid, self.beta, self.compiled)
        return loss / num_foreground

    def regression_weights(self, foreground: Tensor, harmony: Tensor) -> Tensor:
        """w(a): N x R, HS(a) (or 1 for "uniform") on foreground anchors, 0 elsewhere."""
        weights = harmony if self.reg_weighting == "harmony" else torch.ones_like(harmony)
        return torch.where(foreground, weights, weights.new_zeros(()))

    def regression_loss(
        self,
        student_deltas: Tensor,
        teacher_deltas: Tensor,
        anchors: Tensor,
        foreground: Tensor,
        harmony: Tensor,
        weight_sum: Optional[Tensor] = None,
        teacher_transform: Optional[Box2BoxTransform] = None,
    ) -> Tensor:
        """
        Args:
            student_deltas, teacher_deltas: N x R x 4; anchors: R x 4 (XYXY);
            foreground: N x R bool; harmony: N x R teacher Harmony Scores.
            weight_sum: the mean over processes of sum_a w(a); computed here when None.
            teacher_transform: the teacher's ``Box2BoxTransform`` (that of its own
                ``BBOX_REG_WEIGHTS``), which decodes ``teacher_deltas``; None: the student's.
        """
        teacher_transform = teacher_transform or self.box2box_transform
        weights = self.regression_weights(foreground, harmony)
        if weight_sum is None:
            weight_sum = mean_over_processes(weights.sum())
        if self.box_reg_loss_type == "smooth_l1":
            # Dense over all N x R anchors, weighted by w(a) (0 off the foreground): no host sync.
            # The teacher's boxes as the student's deltas (teacher_deltas when the transforms
            # agree); torch's fused kernels, fvcore's smooth_l1_loss values (L1 for beta < 1e-5).
            target = reencode_deltas(teacher_deltas, teacher_transform, self.box2box_transform)
            if self.smooth_l1_beta < 1e-5:
                per_coordinate = F.l1_loss(student_deltas, target, reduction="none")
            else:
                per_coordinate = F.smooth_l1_loss(
                    student_deltas, target, reduction="none", beta=self.smooth_l1_beta
                )
            total = (per_coordinate * weights.unsqueeze(-1)).sum()
        else:
            # GIoU / DIoU / CIoU on the F foreground anchors only: decoding and the IoU losses
            # over all anchors would cost ~20x more, and these losses synchronize with the host
            # anyway (they assert that boxes are valid).
            image, anchor = foreground.nonzero(as_tuple=True)
            boxes = anchors[anchor]
            per_anchor = _BOX_LOSSES[self.box_reg_loss_type](
                self.box2box_transform.apply_deltas(student_deltas[image, anchor], boxes),
                teacher_transform.apply_deltas(teacher_deltas[image, anchor], boxes),
                reduction="none",
            )
            total = (weights[image, anchor] * per_anchor).sum()
        return total / weight_sum.clamp(min=1e-6)


def task_masks(
    teacher_logits: Tensor,
    loc_quality: Tensor,
    matched: Tensor,
    level_shapes: Sequence[Tuple[int, int]],
    eps: float = 1e-6,
) -> Tuple[List[Tensor], List[Tensor]]:
    """
    The two TFD region masks per FPN level, each normalized to average 1 per image and level::

        M_cls(h, w) = max_{a at (h, w), k} p_T(a, k)
        M_reg(h, w) = max_{a at (h, w)} u(a) [matched(a)]
        M <- M / (mean_{h, w} M + eps)

    Args:
        teacher_logits: N x R x K; loc_quality: N x R teacher IoUs u(a);
        matched: N x R bool, the anchors with a matched ground truth
            (``harmony.matched_anchors``: not background);
        level_shapes: (Hl, Wl) per level, in the order of the anchors.
    Returns:
        two lists (cls, reg) of N x Hl x Wl masks.
    """
    n, r, k = teacher_logits.shape
    sizes = [h * w for h, w in level_shapes]
    num_anchors = r // sum(sizes)
    if num_anchors * sum(sizes) != r:
        raise ValueError(f"{r} anchors do not tile levels of sizes {list(level_shapes)}")
    sizes = [s * num_anchors for s in sizes]
    reg_quality = torch.where(matched, loc_quality, loc_quality.new_zeros(()))
    cls_masks, reg_masks = [], []
    for logits_l, reg_l, (h, w) in zip(
        teacher_logits.split(sizes, dim=1), reg_quality.split(sizes, dim=1), level_shapes
    ):
        # sigmoid is monotonic: take the max over logits, then one sigmoid per location.
        m_cls = logits_l.reshape(n, h, w, num_anchors * k).amax(-1).sigmoid()
        m_reg = reg_l.reshape(n, h, w, num_anchors).amax(-1)
        cls_masks.append(m_cls / (m_cls.mean((1, 2), keepdim=True) + eps))
        reg_masks.append(m_reg / (m_reg.mean((1, 2), keepdim=True) + eps))
    return cls_masks, reg_masks


def balance_weights(
    loss_cls: Tensor, loss_reg: Tensor, mode: str, cls_ratio: float = 0.5
) -> Tuple[Tensor, Tensor]:
    """
    TFD task balance (w_cls, w_reg), with w_cls + w_reg = 2.

    "dynamic": w_cls = 2 L_cls / (L_cls + L_reg), w_reg = 2 L_reg / (L_cls + L_reg) from the
    student's detached task losses (1, 1 when both are 0). "fixed": 2 cls_ratio, 2 (1 - cls_ratio).
    """
    if mode == "fixed":
        return loss_cls.new_tensor(2.0 * cls_ratio), loss_cls.new_tensor(2.0 * (1.0 - cls_ratio))
    if mode != "dynamic":
        raise ValueError(f"MODEL.TBD.TFD.BALANCE must be 'dynamic' or 'fixed', got {mode!r}")
    loss_cls, loss_reg = loss_cls.detach().float(), loss_reg.detach().float()
    total = loss_cls + loss_reg
    safe_total = torch.where(total > 0, total, total.new_ones(()))
    w_cls = torch.where(total > 0, 2.0 * loss_cls / safe_total, total.new_ones(()))
    return w_cls, 2.0 - w_cls


class TaskDecoupledFeatureLoss(nn.Module):
    """
    Task-decoupled Feature Distillation over FPN levels l::

        L_TFD = sum_l [ w_cls mean(M_cls D) + w_reg mean(M_reg D) ],  D = (phi(F_S) - F_T)^2

    where the mean runs over N x C x H x W and phi is the student-to-teacher adapter (identity, or a
    1x1 conv shared by all levels).
    """

    def __init__(self, student_channels: int, teacher_channels: int, adapter: str = "auto"):
        super().__init__()
        if adapter not in ("auto", "conv"):
            raise ValueError(f"MODEL.TBD.TFD.ADAPTER must be 'auto' or 'conv', got {adapter!r}")
        if adapter == "conv" or student_channels != teacher_channels:
            self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        else:
            self.adapter = nn.Identity()

    def forward(
        self,
        student_features: Sequence[Tensor],
        teacher_features: Sequence[Tensor],
        cls_masks: Sequence[Tensor],
        reg_masks: Sequence[Tensor],
        w_cls: Tensor,
        w_reg: Tensor,
    ) -> Tensor:
        """
        Args:
            student_features: per level N x Cs x Hl x Wl; teacher_features: N x Ct x Hl x Wl;
            cls_masks, reg_masks: per level N x Hl x Wl; w_cls, w_reg: 0-dim.
        """
        loss = student_features[0].new_zeros((), dtype=torch.float32)
        for f_s, f_t, m_cls, m_reg in zip(student_features, teacher_features, cls_masks, reg_masks):
            if f_s.shape[-2:] != f_t.shape[-2:]:
                raise ValueError(
                    f"student and teacher FPN levels differ in size: {tuple(f_s.shape)} vs "
                    f"{tuple(f_t.shape)}; they must share strides and padding"
                )
            squared_error = (self.adapter(f_s.float()) - f_t.float()).pow(2).mean(1)  # N x H x W
            loss = loss + ((w_cls * m_cls + w_reg * m_reg) * squared_error).mean()
        return loss
