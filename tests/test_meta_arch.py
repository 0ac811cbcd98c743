import copy
import os

import pytest
import torch
from conftest import REPO, TEACHER_CONFIG, load_cfg, make_batch, save_random_teacher, student_cfg
from detectron2.modeling import RetinaNet, build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from tbd import FrozenTeacher, TBDRetinaNet
from tbd.analysis import dense_forward, teacher_task_masks
from tbd.config import distills
from tbd.harmony import (
    anchor_iou,
    classification_quality,
    foreground_anchors,
    harmonious,
    harmony_score,
    localization_quality,
    matched_anchors,
)
from tbd.losses import (
    HarmonyDistillationLoss,
    TaskDecoupledFeatureLoss,
    balance_weights,
    task_masks,
)
from tbd.teacher import TeacherPredictions

CONFIGS = [
    "configs/Synthetic/teacher_R18_wide.yaml",
    "configs/quick_schedules/teacher_instant_test.yaml",
]


@pytest.mark.parametrize("config_file", CONFIGS)
def test_detectron2_builds_retinanet_from_repo_configs(config_file):
    model = build_model(load_cfg(os.path.join(REPO, config_file)))
    assert type(model) is RetinaNet
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 64, 64)}])
    assert "instances" in out[0]


def test_tbd_config_builds_student_only(teacher_weights):
    model = build_model(student_cfg(teacher_weights))
    assert isinstance(model, TBDRetinaNet) and model.distills
    assert model._teacher is None  # built lazily by the first training step


def train_step(model, batch, iteration=0):
    model.train()
    with EventStorage(iteration) as storage:
        losses = model(batch)
        sum(losses.values()).backward()
    return losses, storage


def test_losses_logged_and_all_parameters_get_gradients(teacher_weights):
    torch.manual_seed(0)
    opts = ["MODEL.TBD.WARMUP_ITERS", "10", "MODEL.TBD.DIAGNOSTICS_PERIOD", "1"]
    model = build_model(student_cfg(teacher_weights, opts))
    losses, storage = train_step(model, make_batch(), iteration=0)  # warm-up factor 0
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_hd_cls", "loss_hd_reg", "loss_tfd"}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    for name in ("loss_hd_cls", "loss_hd_reg", "loss_tfd"):
        assert losses[name].item() == 0.0
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert any(n.startswith("tfd_loss.adapter") for n, _ in model.named_parameters())
    scalars = storage.latest()
    for key in ("tbd/harmony_teacher", "tbd/harmony_student", "tbd/w_cls", "tbd/w_reg"):
        assert key in scalars
    assert scalars["tbd/w_cls"][0] + scalars["tbd/w_reg"][0] == pytest.approx(2.0)


def test_harmony_diagnostics_only_on_the_last_iteration_of_each_period(teacher_weights):
    model = build_model(student_cfg(teacher_weights, ["MODEL.TBD.DIAGNOSTICS_PERIOD", "20"]))
    batch = make_batch()
    logged = {}
    for iteration in (0, 18, 19, 39):
        _, storage = train_step(model, batch, iteration=iteration)
        logged[iteration] = set(storage.latest())
    keys = {"tbd/harmony_teacher", "tbd/harmony_student"}
    assert not keys & logged[0] and not keys & logged[18]
    assert keys <= logged[19] and keys <= logged[39]
    assert "tbd/w_cls" in logged[0]  # the balance weights are logged every step


def test_teacher_outside_module_tree_and_frozen(teacher_weights):
    model = build_model(student_cfg(teacher_weights))
    n_student = sum(p.numel() for p in model.parameters())
    keys = set(model.state_dict())
    train_step(model, make_batch())
    teacher = model._teacher
    assert teacher is not None
    assert sum(p.numel() for p in model.parameters()) == n_student
    assert set(model.state_dict()) == keys
    assert not any(k.startswith("_teacher") or "teacher" in k for k in keys)
    teacher_params = {id(p) for p in teacher.model.parameters()}
    assert not teacher_params & {id(p) for p in model.parameters()}
    model.train()
    assert not teacher.model.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.model.parameters())
    # the teacher's weights are the checkpoint's, unchanged by a training step
    reference = build_model(load_cfg(TEACHER_CONFIG))
    from detectron2.checkpoint import DetectionCheckpointer

    DetectionCheckpointer(reference).load(teacher_weights)
    for (name, a), b in zip(reference.state_dict().items(), teacher.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_eval_builds_no_teacher_and_equals_retinanet(tmp_path):
    cfg = student_cfg(str(tmp_path / "does_not_exist.pth"))
    model = build_model(cfg).eval()
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    plain = build_model(plain_cfg).eval()
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("tfd_loss.")}
    )
    inputs = [{"image": b["image"]} for b in make_batch()]
    with torch.no_grad():
        out, ref = model(inputs), plain(inputs)
    assert model._teacher is None
    for a, b in zip(out, ref):
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
        assert torch.equal(a["instances"].scores, b["instances"].scores)


def test_zero_distillation_weights_equal_plain_retinanet(teacher_weights):
    opts = ["MODEL.TBD.HD.CLS_WEIGHT", "0.0", "MODEL.TBD.HD.REG_WEIGHT", "0.0"]
    cfg = student_cfg(teacher_weights, opts + ["MODEL.TBD.TFD.WEIGHT", "0.0"])
    torch.manual_seed(0)
    model = build_model(cfg)
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    plain = build_model(plain_cfg)
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("tfd_loss.")}
    )
    batch = make_batch()
    losses, _ = train_step(model, copy.deepcopy(batch))
    ref, _ = train_step(plain, copy.deepcopy(batch))
    for k in ("loss_cls", "loss_box_reg"):
        assert losses[k].item() == pytest.approx(ref[k].item(), rel=1e-5)
    for k in ("loss_hd_cls", "loss_hd_reg", "loss_tfd"):
        assert losses[k].item() == 0.0
    # and the student's gradients are RetinaNet's
    grads = dict(plain.named_parameters())
    for name, p in model.named_parameters():
        if name in grads and p.grad is not None:
            assert torch.allclose(p.grad, grads[name].grad, atol=1e-6), name


@pytest.mark.slow
def test_compiled_hd_loss_trains_like_the_eager_one(teacher_weights):
    # MODEL.TBD.HD.COMPILE: the same losses and student gradients, through the real training step
    torch.manual_seed(0)
    model = build_model(student_cfg(teacher_weights))
    compiled = build_model(student_cfg(teacher_weights, ["MODEL.TBD.HD.COMPILE", "True"]))
    compiled.load_state_dict(model.state_dict())
    assert compiled.hd_loss.compiled and not model.hd_loss.compiled
    batch = make_batch()
    losses, _ = train_step(model, copy.deepcopy(batch), iteration=50)
    ref, _ = train_step(compiled, copy.deepcopy(batch), iteration=50)
    assert set(losses) == set(ref)
    for k in losses:
        assert losses[k].item() == pytest.approx(ref[k].item(), rel=1e-5), k
    grads = dict(compiled.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6), name


def test_disabled_distillation_is_plain_student():
    cfg = load_cfg(
        os.path.join(REPO, "configs/quick_schedules/tbd_instant_test.yaml"),
        ["MODEL.TBD.HD.ENABLED", "False", "MODEL.TBD.TFD.ENABLED", "False"],
    )
    cfg.MODEL.TBD.TEACHER.CONFIG_FILE = "/nonexistent.yaml"  # never read
    model = build_model(cfg)
    assert not model.distills
    losses, _ = train_step(model, make_batch())
    assert set(losses) == {"loss_cls", "loss_box_reg"}


def test_empty_ground_truth_gives_finite_losses(teacher_weights):
    model = build_model(student_cfg(teacher_weights))
    losses, _ = train_step(model, make_batch(num_boxes=(0, 0)))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_hd_reg"].item() == 0.0


def test_distillation_pulls_student_toward_teacher(teacher_weights):
    """A student that is an exact copy of the teacher (same widths) has zero HD/TFD losses."""
    cfg = student_cfg(
        teacher_weights,
        ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.TBD.HD.TARGET", "teacher"],
    )
    model = build_model(cfg)
    from detectron2.checkpoint import DetectionCheckpointer

    DetectionCheckpointer(model).load(teacher_weights)
    model.train()
    # BatchNorm in train mode would differ from the eval-mode teacher: compare in eval-mode BN.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    with EventStorage(0):
        losses = model(make_batch())
    assert losses["loss_tfd"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_hd_cls"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_hd_reg"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.RETINANET.NUM_CLASSES", "5"], "NUM_CLASSES"),
        (["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0]]"], "ASPECT_RATIOS"),
    ],
)
def test_build_refuses_mismatched_teacher(tmp_path, opts, message):
    weights = save_random_teacher(str(tmp_path / "t.pth"))
    cfg = student_cfg(weights, opts)
    with pytest.raises(ValueError, match=message) as e:
        build_model(cfg)
    assert "student has" in str(e.value) and "teacher" in str(e.value)


def test_bad_option_values_are_refused(teacher_weights):
    with pytest.raises(ValueError, match="TFD.MASK"):
        build_model(student_cfg(teacher_weights, ["MODEL.TBD.TFD.MASK", "everywhere"]))


def test_non_finite_distillation_loss_is_named(teacher_weights):
    model = build_model(student_cfg(teacher_weights))
    model.load_teacher().model.head.cls_score.bias.data.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss_hd_cls.* at iteration 7"):
        train_step(model, make_batch(), iteration=7)


def test_coco_paper_config_builds_with_model_zoo_teacher():
    cfg = load_cfg(os.path.join(REPO, "configs/COCO/tbd_R50_from_R101_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert isinstance(model, TBDRetinaNet) and model.distills
    assert model.teacher_cfg.MODEL.RESNETS.DEPTH == 101
    assert isinstance(model.tfd_loss.adapter, torch.nn.Identity)  # both FPNs are 256 wide


# --------------------------------------------------------------------------------------------
# Baselines: a TBDRetinaNet with HD and TFD off
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "baseline, distilled",
    [
        ("configs/Synthetic/student_R18.yaml", "configs/Synthetic/tbd_R18.yaml"),
        ("configs/COCO/retinanet_R50_1x_baseline.yaml", "configs/COCO/tbd_R50_from_R101_1x.yaml"),
    ],
)
def test_baseline_configs_are_students_without_a_teacher(baseline, distilled):
    """The baselines train with TBDRetinaNet's process-independent loss normalizer and build and
    read no teacher; the TBD configs that inherit them distill."""
    cfg = load_cfg(os.path.join(REPO, baseline), ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.META_ARCHITECTURE == "TBDRetinaNet" and not distills(cfg)
    assert distills(load_cfg(os.path.join(REPO, distilled)))
    cfg.MODEL.TBD.TEACHER.CONFIG_FILE = "/nonexistent.yaml"  # never read
    model = build_model(cfg)
    assert type(model) is TBDRetinaNet and not model.distills
    assert model.hd_loss is None and model.tfd_loss is None and model.teacher_cfg is None


def test_baseline_trains_exactly_like_plain_retinanet_in_one_process():
    opts = ["MODEL.TBD.HD.ENABLED", "False", "MODEL.TBD.TFD.ENABLED", "False"]
    cfg = load_cfg(os.path.join(REPO, "configs/quick_schedules/tbd_instant_test.yaml"), opts)
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    torch.manual_seed(3)
    model = build_model(cfg)
    torch.manual_seed(3)
    plain = build_model(plain_cfg)
    assert type(plain) is RetinaNet
    state, plain_state = model.state_dict(), plain.state_dict()
    assert list(state) == list(plain_state)
    assert all(torch.equal(state[k], plain_state[k]) for k in state)  # the same initialization
    batch = make_batch()
    for iteration in range(2):  # the loss normalizer's EMA moves between the steps
        losses, _ = train_step(model, copy.deepcopy(batch), iteration)
        ref, _ = train_step(plain, copy.deepcopy(batch), iteration)
        assert set(losses) == set(ref) == {"loss_cls", "loss_box_reg"}
        assert all(torch.equal(losses[k], ref[k]) for k in ref)
        grads = dict(plain.named_parameters())
        for name, p in model.named_parameters():
            # equal up to the order of the CPU kernels' float sums: two runs of RetinaNet alone
            # differ by up to 1.6e-6 of the largest gradient of a tensor
            ref_grad = grads[name].grad
            assert (p.grad - ref_grad).abs().max() <= 1e-5 * ref_grad.abs().max(), name
        model.zero_grad()
        plain.zero_grad()


# --------------------------------------------------------------------------------------------
# Teacher and student that differ: converted exactly, or refused
# --------------------------------------------------------------------------------------------
def _copy_pair(tmp_path, teacher_weights, teacher_opts=(), edit=None, opts=()):
    """A student that is the teacher's exact copy (same widths and weights), and a teacher whose
    config differs by ``teacher_opts`` and whose checkpoint is changed by ``edit(state)``."""
    state = torch.load(teacher_weights, map_location="cpu", weights_only=True)
    student_state = dict(state["model"])
    if edit is not None:
        state = dict(state, model=dict(state["model"]))
        edit(state["model"])
    path = str(tmp_path / "edited_teacher.pth")
    torch.save(state, path)
    cfg = student_cfg(
        path,
        [
            "MODEL.FPN.OUT_CHANNELS",
            "32",
            "MODEL.TBD.TEACHER.OPTS",
            repr(list(teacher_opts)),
            "MODEL.TBD.DIAGNOSTICS_PERIOD",
            "1",
            *opts,
        ],
    )
    model = build_model(cfg)
    model.load_state_dict(student_state, strict=False)
    model.train()
    for m in model.modules():  # the teacher's eval-mode BatchNorm
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return model


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou"])
def test_teacher_box_weights_are_decoded_with_the_teachers_transform(
    teacher_weights, tmp_path, loss_type
):
    """A teacher with BBOX_REG_WEIGHTS (10, 10, 5, 5) whose head predicts exactly the student's
    boxes: its deltas are the student's times the weights. Decoded with its own transform (and
    re-encoded for the student), HD sees identical boxes: no regression loss, and the teacher's
    IoUs u (hence harmony) equal the student's."""
    weights = torch.tensor([10.0, 10.0, 5.0, 5.0])

    def scale(state):
        num_anchors = state["head.bbox_pred.bias"].numel() // 4
        factor = weights.repeat(num_anchors)  # channel a * 4 + k: coordinate k of anchor a
        state["head.bbox_pred.weight"] = (
            state["head.bbox_pred.weight"] * factor[:, None, None, None]
        )
        state["head.bbox_pred.bias"] = state["head.bbox_pred.bias"] * factor

    model = _copy_pair(
        tmp_path,
        teacher_weights,
        ["MODEL.RETINANET.BBOX_REG_WEIGHTS", "(10.0, 10.0, 5.0, 5.0)"],
        scale,
        ["MODEL.RETINANET.BBOX_REG_LOSS_TYPE", loss_type, "MODEL.TBD.HD.TARGET", "teacher"],
    )
    teacher = model.load_teacher()
    assert tuple(teacher.box2box_transform.weights) == (10.0, 10.0, 5.0, 5.0)
    assert tuple(model.box2box_transform.weights) == (1.0, 1.0, 1.0, 1.0)
    with EventStorage(0) as storage:
        losses = model(make_batch())
    assert losses["loss_hd_reg"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_hd_cls"].item() == pytest.approx(0.0, abs=1e-6)
    scalars = storage.latest()
    assert scalars["tbd/harmony_teacher"][0] == scalars["tbd/harmony_student"][0]


def test_teacher_with_another_normalization_sees_its_own_padded_batch(teacher_weights):
    """Student RGB with mean 0 and std 1, teacher BGR with ImageNet statistics; two images of
    different sizes, so the batch is padded: the teacher's features and predictions on the
    student's batch are those on the batch it makes of the same images itself."""
    cfg = student_cfg(
        teacher_weights,
        ["INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", "[0.0, 0.0, 0.0]"],
    )
    cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
    model = build_model(cfg)
    teacher = model.load_teacher()
    g = torch.Generator().manual_seed(0)
    rgb = [torch.rand(3, 64, 64, generator=g) * 255, torch.rand(3, 40, 56, generator=g) * 255]
    images = model.preprocess_image([{"image": x} for x in rgb])
    assert tuple(images.tensor.shape[-2:]) == (64, 64)  # the second image is padded
    got = teacher(images)
    t = teacher.model
    own = t.preprocess_image([{"image": x.flip(0)} for x in rgb])  # BGR, its own normalization
    assert own.tensor.shape == images.tensor.shape and torch.all(own.tensor[1, :, 40:] == 0)
    with torch.no_grad():
        features = t.backbone(own.tensor)
        features = [features[f] for f in t.head_in_features]
        logits, _ = t.head(features)
    for a, b in zip(got.features, features):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-3), (a - b).abs().max()
    expected = torch.cat([x.permute(0, 2, 3, 1).reshape(2, -1, 6) for x in logits], dim=1)
    assert torch.allclose(got.logits, expected, rtol=1e-4, atol=1e-3)


def test_same_normalization_is_decided_at_build_time(teacher_weights):
    model = build_model(student_cfg(teacher_weights))
    teacher = model.load_teacher()
    assert teacher._renormalize is None
    images = model.preprocess_image(make_batch())
    assert teacher._teacher_input(images) is images.tensor  # the student's batch as it is


def test_teacher_on_other_anchors_is_refused_naming_both(teacher_weights):
    """HD alone (no TFD level check): teacher predictions on fewer anchors than the student's are
    refused by name, not broadcast or truncated."""
    model = build_model(student_cfg(teacher_weights, ["MODEL.TBD.TFD.ENABLED", "False"]))
    teacher = model.load_teacher()

    def without_last_level(images):
        out = teacher(images)
        last = out.features[-1]
        dropped = last.shape[-2] * last.shape[-1] * 9
        return TeacherPredictions(
            out.features[:-1],
            out.logits[:, :-dropped],
            out.deltas[:, :-dropped],
            out.box2box_transform,
        )

    model._teacher = without_last_level
    with pytest.raises(ValueError, match=r"different anchors: the student has \d+ anchors on"):
        train_step(model, make_batch())


def _per_anchor(masks, num_anchors=9):
    """Per-level N x Hl x Wl masks as N x R: each location's value on each of its anchors."""
    return torch.cat([m.flatten(1).repeat_interleave(num_anchors, dim=1) for m in masks], dim=1)


def test_low_quality_matches_are_one_set_for_hd_and_the_regression_mask():
    """A 3 x 3 px box overlaps every anchor with IoU < 0.4, yet RetinaNet's matcher makes its best
    anchors foreground (low-quality matches). HD harmonizes their targets and M_reg uses their u:
    one rule, harmony.matched_anchors (not background), for both and for the analysis."""
    opts = ["MODEL.TBD.HD.ENABLED", "False", "MODEL.TBD.TFD.ENABLED", "False"]
    model = build_model(
        load_cfg(os.path.join(REPO, "configs/quick_schedules/tbd_instant_test.yaml"), opts)
    )
    batch = make_batch(num_images=1, num_boxes=(0,))
    instances = Instances((64, 64))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 13.0, 13.0]]))
    instances.gt_classes = torch.tensor([2])
    batch[0]["instances"] = instances
    out = dense_forward(model.eval(), batch)
    labels, k = out.gt_labels, model.num_classes
    matched = matched_anchors(labels, k)
    assert torch.equal(foreground_anchors(labels, k), matched & (labels >= 0))
    assert foreground_anchors(labels, k).any()
    assert anchor_iou(out.anchors, out.gt_boxes)[matched].max() < 0.4  # all low-quality

    # HD: the anchors whose gt-class target is harmonized (teacher p ~ 0, harmonized score 1)
    hd = HarmonyDistillationLoss(
        beta=2.0,
        target="harmony",
        reg_weighting="harmony",
        box2box_transform=model.box2box_transform,
    )
    targets = hd.classification_targets(
        torch.full_like(out.logits, -30.0), labels, torch.ones(labels.shape)
    )
    harmonized = targets.amax(-1) > 0.5
    assert torch.equal(harmonized, matched & (labels >= 0))

    # M_reg with u = 1: nonzero at the locations of matched anchors, which include the harmonized
    _, reg_masks = task_masks(out.logits, torch.ones(labels.shape), matched, out.level_shapes)
    in_reg_mask = _per_anchor(reg_masks) > 0
    assert torch.all(in_reg_mask[matched]) and torch.all(in_reg_mask[harmonized])

    # tools/analyze_harmony.py's masks (analysis.teacher_task_masks) are the training masks
    u = localization_quality(out.deltas, out.anchors, out.gt_boxes, model.box2box_transform)
    expected = task_masks(out.logits, u, matched, out.level_shapes)
    for got, want in zip(teacher_task_masks(model, out), expected):
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_negative_hd_beta_is_refused_at_build(teacher_weights):
    with pytest.raises(ValueError, match=r"MODEL\.TBD\.HD\.BETA must be >= 0, got -0\.5"):
        build_model(student_cfg(teacher_weights, ["MODEL.TBD.HD.BETA", "-0.5"]))


# --------------------------------------------------------------------------------------------
# A student without its teacher's files
# --------------------------------------------------------------------------------------------
def test_missing_teacher_config_builds_an_inference_only_student(tmp_path, teacher_weights):
    missing = str(tmp_path / "gone" / "teacher.yaml")
    cfg = student_cfg(teacher_weights, ["MODEL.TBD.TEACHER.CONFIG_FILE", missing])
    model = build_model(cfg)
    assert model.distills and model.teacher_cfg is None and model.tfd_loss is None
    reference = build_model(student_cfg(teacher_weights))
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("tfd_loss.")}
    model.load_state_dict(state, strict=True)
    inputs = [{"image": b["image"]} for b in make_batch()]
    with torch.no_grad():
        out, ref = model.eval()(inputs), reference.eval()(inputs)
    for a, b in zip(out, ref):
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
        assert torch.equal(a["instances"].scores, b["instances"].scores)
    with pytest.raises(FileNotFoundError, match=r"teacher\.yaml.*for inference only"):
        train_step(model, make_batch())


def test_distillation_hot_path_never_waits_for_the_device():
    """Everything a TBD step computes from the teacher's predictions, and the teacher's input
    conversion, runs on the meta device, which has shapes but no values: ``nonzero``,
    ``torch.equal``, ``.item()`` and the like (host syncs on a GPU) raise there."""
    meta = torch.device("meta")
    n, levels, a, k = 2, [(4, 4), (2, 2)], 9, 6
    r = sum(h * w for h, w in levels) * a
    anchors = torch.rand(r, 4).to(meta)
    logits, t_logits = torch.empty(n, r, k, device=meta), torch.empty(n, r, k, device=meta)
    deltas, t_deltas = torch.empty(n, r, 4, device=meta), torch.empty(n, r, 4, device=meta)
    gt_labels = torch.empty(n, r, dtype=torch.long, device=meta)
    gt_boxes = torch.empty(n, r, 4, device=meta)
    student_t, teacher_t = Box2BoxTransform((1.0,) * 4), Box2BoxTransform((10.0, 10.0, 5.0, 5.0))

    s = classification_quality(t_logits, gt_labels)
    u = localization_quality(t_deltas, anchors, gt_boxes, teacher_t)
    hs = harmony_score(s, u)
    harmonious(s, u, 0.2)
    foreground, matched = foreground_anchors(gt_labels, k), matched_anchors(gt_labels, k)
    hd = HarmonyDistillationLoss(
        beta=2.0, target="harmony", reg_weighting="harmony", box2box_transform=student_t
    )
    targets = hd.classification_targets(t_logits, gt_labels, (s * u).sqrt())
    hd.classification_loss(logits.requires_grad_(), targets, gt_labels, foreground.sum())
    hd.regression_loss(deltas.requires_grad_(), t_deltas, anchors, foreground, hs, None, teacher_t)
    cls_masks, reg_masks = task_masks(t_logits, u, matched, levels)
    w_cls, w_reg = balance_weights(
        torch.ones((), device=meta), torch.ones((), device=meta), "dynamic"
    )
    features = [torch.empty(n, 16, h, w, device=meta) for h, w in levels]
    t_features = [torch.empty(n, 32, h, w, device=meta) for h, w in levels]
    TaskDecoupledFeatureLoss(16, 32).to(meta)(
        features, t_features, cls_masks, reg_masks, w_cls, w_reg
    )

    teacher_cfg = load_cfg(TEACHER_CONFIG)
    teacher = FrozenTeacher(
        build_model(teacher_cfg),
        teacher_cfg,
        pixel_mean=torch.zeros(3, 1, 1),
        pixel_std=torch.ones(3, 1, 1),
        input_format="RGB",
    )
    assert teacher._renormalize is not None
    images = ImageList(torch.empty(n, 3, 64, 64, device=meta), [(64, 64), (40, 56)])
    assert teacher._teacher_input(images).shape == (n, 3, 64, 64)
