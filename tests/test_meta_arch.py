import copy
import os

import pytest
import torch
from conftest import REPO, TEACHER_CONFIG, load_cfg, make_batch, save_random_teacher, student_cfg
from detectron2.modeling import RetinaNet, build_model
from detectron2.utils.events import EventStorage

from tbd import TBDRetinaNet
from tbd.config import distills

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
