import pytest
import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from torch.nn import functional as F

from tbd.losses import (
    HarmonyDistillationLoss,
    TaskDecoupledFeatureLoss,
    balance_weights,
    quality_focal_loss,
    quality_focal_loss_sum,
    task_masks,
)

K = 3
TRANSFORM = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
ANCHORS = torch.tensor(
    [[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 24.0, 24.0], [0, 0, 32, 32], [4, 4, 8, 8]]
)
LABELS = torch.tensor([[0, K, -1, 2], [K, 1, K, K]])  # 2 images x 4 anchors; 3 foreground


def hd(**kw):
    args = dict(beta=2.0, target="teacher", reg_weighting="harmony", box2box_transform=TRANSFORM)
    args.update(kw)
    return HarmonyDistillationLoss(**args)


def test_quality_focal_loss_reference():
    z = torch.tensor([0.3, -1.0, 2.0])
    t = torch.tensor([0.2, 0.9, 0.5])
    p = torch.sigmoid(z)
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    assert torch.allclose(quality_focal_loss(z, t, 2.0), bce * (p - t).abs() ** 2, atol=1e-6)
    assert quality_focal_loss(torch.logit(t), t, 2.0).abs().max() < 1e-6


def _qfl_case(seed=0, n=3, r=50, k=4):
    """Logits, targets with many exact zeros, ignored anchors (valid False), and valid entries
    where the student's score equals the target exactly (g = 0)."""
    torch.manual_seed(seed)
    z = torch.randn(n, r, k, dtype=torch.float64) * 3
    t = torch.rand(n, r, k, dtype=torch.float64) * (torch.rand(n, r, k) < 0.3)
    valid = torch.rand(n, r) > 0.2
    exact = torch.rand(n, r, k) < 0.05
    t = torch.where(exact, z.sigmoid(), t)
    return z, t, valid, exact & valid.unsqueeze(-1)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 1.5, 2.0])
def test_fused_quality_focal_loss_sum_matches_autograd_of_the_definition(beta):
    """The fused sum and gradient against autograd of quality_focal_loss over the valid anchors
    only, for beta below, at and above 1, with ignored anchors present; where g = sigmoid(z) - t = 0
    on a valid anchor the gradient is 0 (the convention for beta < 1, where the derivative does
    not exist)."""
    z, t, valid, exact = _qfl_case()
    z = z.requires_grad_()
    reference = quality_focal_loss(z[valid], t[valid], beta).sum()
    (grad_reference,) = torch.autograd.grad(reference, z)
    fused = quality_focal_loss_sum(z, t, valid, beta)
    (grad_fused,) = torch.autograd.grad(3.0 * fused, z)  # the backward scales by the upstream grad
    assert fused.item() == pytest.approx(reference.item(), rel=1e-10)
    assert torch.isfinite(grad_fused).all()
    assert torch.all(grad_fused[~valid] == 0) and torch.all(grad_fused[exact] == 0)
    ok = ~exact  # autograd of the definition is NaN there for beta < 1
    assert torch.allclose(grad_fused[ok], 3.0 * grad_reference[ok], rtol=1e-9, atol=1e-12)
    with torch.no_grad():  # no gradient wanted: the same value, and no graph
        value = quality_focal_loss_sum(z, t, valid, beta)
    assert value.item() == pytest.approx(fused.item()) and value.grad_fn is None
    if beta >= 1:  # differentiable everywhere
        z_small = z[:1, :6].detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda x: quality_focal_loss_sum(x, t[:1, :6], valid[:1, :6], beta), (z_small,)
        )


def test_quality_focal_loss_sum_beta_zero_ignores_ignored_anchors():
    # |g|^0 = 1: without the explicit mask the ignored anchors' BCE would count
    z, t = torch.zeros(1, 2, 1), torch.full((1, 2, 1), 0.25)
    valid = torch.tensor([[True, False]])
    expected = F.binary_cross_entropy_with_logits(z[0, 0], t[0, 0], reduction="sum")
    assert quality_focal_loss_sum(z, t, valid, 0.0).item() == pytest.approx(expected.item())


def test_quality_focal_loss_sum_is_accurate_over_many_elements():
    # a float32 sum over millions of anchor x class entries, against float64: a plain running
    # float32 accumulation (torch.dot on the CPU, used before) misses this tolerance
    torch.manual_seed(0)
    z = torch.randn(1, 60000, 80) * 2 - 4
    t = torch.sigmoid(torch.randn(1, 60000, 80) * 2 - 4)
    valid = torch.rand(1, 60000) > 0.05
    reference = (quality_focal_loss(z.double(), t.double(), 2.0).sum(-1) * valid).sum()
    with torch.no_grad():
        assert quality_focal_loss_sum(z, t, valid, 2.0).item() == pytest.approx(
            reference.item(), rel=1e-5
        )
    assert quality_focal_loss_sum(z.requires_grad_(), t, valid, 2.0).item() == pytest.approx(
        reference.item(), rel=1e-5
    )


@pytest.mark.slow
@pytest.mark.parametrize("beta", [2.0, 1.5, 0.5, 0.0])
def test_compiled_quality_focal_loss_sum_equals_the_eager_one(beta):
    # MODEL.TBD.HD.COMPILE: torch.compile's fused kernel, with dynamic shapes (two anchor counts)
    torch.manual_seed(0)
    for anchors in (300, 517):
        z = (torch.randn(2, anchors, 5) * 3).requires_grad_()
        t = torch.rand(2, anchors, 5) * (torch.rand(2, anchors, 5) < 0.3)
        valid = torch.rand(2, anchors) > 0.2
        eager = quality_focal_loss_sum(z, t, valid, beta)
        (grad_eager,) = torch.autograd.grad(eager, z)
        compiled = quality_focal_loss_sum(z, t, valid, beta, compiled=True)
        (grad_compiled,) = torch.autograd.grad(compiled, z)
        assert compiled.item() == pytest.approx(eager.item(), rel=1e-5)
        assert torch.allclose(grad_compiled, grad_eager, rtol=1e-5, atol=1e-7)
        assert torch.all(grad_compiled[~valid] == 0) and torch.isfinite(grad_compiled).all()


def test_hd_cls_zero_when_student_equals_teacher():
    logits = torch.randn(2, 4, K)
    loss_fn = hd()
    targets = loss_fn.classification_targets(logits, LABELS, torch.rand(2, 4))
    assert loss_fn.classification_loss(logits, targets, LABELS).item() == pytest.approx(0, abs=1e-6)
    assert loss_fn.classification_loss(logits + 1.0, targets, LABELS).item() > 1e-3


def test_hd_cls_harmonized_target_and_normalization():
    logits = torch.zeros(2, 4, K)
    q = torch.full((2, 4), 0.9)
    targets = hd(target="harmony").classification_targets(logits, LABELS, q)
    # foreground anchors get q at their gt class and keep p_T = 0.5 elsewhere
    assert targets[0, 0].tolist() == pytest.approx([0.9, 0.5, 0.5])
    assert targets[0, 3].tolist() == pytest.approx([0.5, 0.5, 0.9])
    assert targets[1, 1].tolist() == pytest.approx([0.5, 0.9, 0.5])
    assert torch.all(targets[0, 1] == 0.5) and torch.all(targets[0, 2] == 0.5)
    # student logits 0: QFL is nonzero only at the 3 harmonized entries (ignored anchor skipped)
    per_entry = quality_focal_loss(torch.zeros(()), torch.tensor(0.9), 2.0)
    loss = hd(target="harmony").classification_loss(logits, targets, LABELS)
    assert loss.item() == pytest.approx(3 * per_entry.item() / 3, rel=1e-5)


def test_hd_reg_weighting_and_zero():
    s = torch.randn(2, 4, 4) * 0.1
    fg = (LABELS >= 0) & (LABELS < K)
    harmony = torch.tensor([[0.5, 0.9, 0.9, 0.1], [0.2, 0.4, 0.0, 0.0]])
    for loss_type in ("smooth_l1", "giou", "diou", "ciou"):
        loss_fn = hd(box_reg_loss_type=loss_type)
        assert loss_fn.regression_loss(s, s, ANCHORS, fg, harmony).item() == pytest.approx(
            0, abs=1e-5
        )
        assert loss_fn.regression_loss(s, s + 0.3, ANCHORS, fg, harmony).item() > 1e-3
    # smooth-L1 (beta 0 = L1): only the first foreground anchor differs, by 1 per coordinate
    t = s.clone()
    t[0, 0] += 1.0
    loss = hd().regression_loss(s, t, ANCHORS, fg, harmony)
    assert loss.item() == pytest.approx(0.5 * 4 / (0.5 + 0.1 + 0.4), rel=1e-5)
    uniform = hd(reg_weighting="uniform").regression_loss(s, t, ANCHORS, fg, harmony)
    assert uniform.item() == pytest.approx(4 / 3, rel=1e-5)


def test_hd_finite_without_foreground():
    none = torch.full((2, 4), K)
    loss_fn = hd(target="harmony")
    logits = torch.randn(2, 4, K)
    targets = loss_fn.classification_targets(logits, none, torch.rand(2, 4))
    cls = loss_fn.classification_loss(logits + 0.5, targets, none)
    reg = loss_fn.regression_loss(
        torch.randn(2, 4, 4), torch.randn(2, 4, 4), ANCHORS, none < K, torch.rand(2, 4)
    )
    assert torch.isfinite(cls) and cls > 0
    assert torch.isfinite(reg) and reg == 0


def test_hd_rejects_unknown_options():
    with pytest.raises(ValueError, match="HD.TARGET"):
        hd(target="bogus")
    with pytest.raises(ValueError, match="REG_WEIGHTING"):
        hd(reg_weighting="bogus")
    with pytest.raises(ValueError, match=r"HD\.BETA must be >= 0"):
        hd(beta=-1.0)


def _levels():
    return [(4, 4), (2, 2)]  # 16 + 4 locations, A = 2 anchors each -> R = 40


def test_task_masks_reference_and_mean_one():
    torch.manual_seed(0)
    n, a = 2, 2
    r = (16 + 4) * a
    logits = torch.randn(n, r, K)
    u = torch.rand(n, r)
    matched = torch.rand(n, r) >= 0.4
    cls_masks, reg_masks = task_masks(logits, u, matched, _levels())
    # reference for level 0 by explicit loops over locations
    p = logits.sigmoid()
    for img in range(n):
        for h in range(4):
            for w in range(4):
                idx = [(h * 4 + w) * a + j for j in range(a)]
                m_cls = p[img, idx].max()
                m_reg = max(float(u[img, i]) if matched[img, i] else 0.0 for i in idx)
                raw_cls = p[img, : 16 * a].view(16, a * K).max(1).values.mean()
                reg_all = torch.where(matched, u, torch.zeros(()))[img, : 16 * a]
                raw_reg = reg_all.view(16, a).max(1).values.mean()
                assert cls_masks[0][img, h, w].item() == pytest.approx(
                    (m_cls / (raw_cls + 1e-6)).item(), rel=1e-4
                )
                assert reg_masks[0][img, h, w].item() == pytest.approx(
                    m_reg / (raw_reg.item() + 1e-6), rel=1e-4
                )
    for m in cls_masks + reg_masks:
        assert torch.allclose(m.mean((1, 2)), torch.ones(n), atol=1e-4)


def test_task_masks_zero_regression_mask_without_matched_anchors():
    logits = torch.randn(1, 40, K)
    unmatched = torch.zeros(1, 40, dtype=torch.bool)
    _, reg_masks = task_masks(logits, torch.rand(1, 40), unmatched, _levels())
    assert all(torch.all(m == 0) for m in reg_masks)


def test_balance_weights():
    w_cls, w_reg = balance_weights(torch.tensor(3.0), torch.tensor(1.0), "dynamic")
    assert (w_cls.item(), w_reg.item()) == pytest.approx((1.5, 0.5))
    w_cls, w_reg = balance_weights(torch.tensor(0.0), torch.tensor(0.0), "dynamic")
    assert (w_cls.item(), w_reg.item()) == (1.0, 1.0)
    w_cls, w_reg = balance_weights(torch.tensor(3.0), torch.tensor(1.0), "fixed", cls_ratio=0.7)
    assert (w_cls.item(), w_reg.item()) == pytest.approx((1.4, 0.6))
    for a, b in torch.rand(20, 2) * 5:
        w_cls, w_reg = balance_weights(a, b, "dynamic")
        assert (w_cls + w_reg).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="BALANCE"):
        balance_weights(torch.tensor(1.0), torch.tensor(1.0), "bogus")


def test_tfd_zero_when_student_equals_teacher_and_positive_otherwise():
    torch.manual_seed(0)
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    masks = [torch.rand(2, 4, 4), torch.rand(2, 2, 2)]
    loss_fn = TaskDecoupledFeatureLoss(8, 8)
    assert isinstance(loss_fn.adapter, torch.nn.Identity)
    w = torch.tensor(1.0)
    assert loss_fn(feats, feats, masks, masks, w, w).item() == 0
    other = [f + 0.5 for f in feats]
    loss = loss_fn(feats, other, masks, masks, torch.tensor(1.5), torch.tensor(0.5))
    expected = sum((2.0 * m.unsqueeze(1) * 0.25).mean() for m in masks)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_tfd_adapter_choice():
    assert isinstance(TaskDecoupledFeatureLoss(8, 16).adapter, torch.nn.Conv2d)
    assert isinstance(TaskDecoupledFeatureLoss(8, 8, "conv").adapter, torch.nn.Conv2d)
    with pytest.raises(ValueError, match="ADAPTER"):
        TaskDecoupledFeatureLoss(8, 8, "bogus")
    loss_fn = TaskDecoupledFeatureLoss(8, 16)
    f_s = [torch.randn(1, 8, 4, 4)]
    f_t = [F.conv2d(f_s[0], loss_fn.adapter.weight, loss_fn.adapter.bias).detach()]
    ones = [torch.ones(1, 4, 4)]
    w = torch.tensor(1.0)
    assert loss_fn(f_s, f_t, ones, ones, w, w).item() == pytest.approx(0, abs=1e-10)
