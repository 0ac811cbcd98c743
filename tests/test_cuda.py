"""
The code on a CUDA GPU, which the machines it is developed on do not have. On a GPU machine:

    .venv/bin/python -m pytest -q -m cuda tests/test_cuda.py

Every test marked ``cuda`` is skipped, with the reason, where ``torch.cuda.is_available()`` is
False (the two-GPU test also below two GPUs). The tests parametrized by device also run their CPU
variant in the normal suite, so that their code is exercised where it is developed. What each test
checks and what to do when one fails: docs/cost.md, "On a GPU".
"""

import math
import os
import sys

import pytest
import torch
from conftest import REPO, STUDENT_CONFIG, student_cfg
from detectron2.engine import AMPTrainer
from detectron2.modeling.box_regression import Box2BoxTransform
from test_distributed import TERMS, check_two_processes_train_like_one
from test_export import detecting_student, teacher_opts

import tbd.export as tbd_export
from tbd.datasets import register_synthetic
from tbd.losses import HarmonyDistillationLoss

sys.path.insert(0, REPO)
import train_net  # noqa: E402

NEEDS_CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
ON_CUDA = (pytest.mark.cuda, NEEDS_CUDA)
DEVICES = ["cpu", pytest.param("cuda", marks=ON_CUDA)]
DATASETS = ("tbd_cuda_train", "tbd_cuda_val")


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_synthetic")
    register_synthetic(str(root), names=DATASETS, num_train=4, num_val=2, image_size=64, seed=3)
    return DATASETS[0]


@pytest.mark.parametrize(
    "device, amp",
    [
        pytest.param("cpu", False, id="cpu"),  # detectron2's AMPTrainer refuses the CPU
        pytest.param("cuda", False, marks=ON_CUDA, id="cuda"),
        pytest.param("cuda", True, marks=ON_CUDA, id="cuda-amp"),
    ],
)
def test_training_step(device, amp, teacher_weights, train_set, tmp_path):
    """
    One iteration of train_net's Trainer on ``device``, with ``SOLVER.AMP.ENABLED amp``
    (detectron2's AMPTrainer: float16 autocast and a GradScaler). The logged losses are finite,
    student and teacher are on the device, the optimizer holds exactly the student's trainable
    parameters and every one of them got a gradient.
    """
    opts = ["MODEL.DEVICE", device, "SOLVER.AMP.ENABLED", str(amp), "SOLVER.MAX_ITER", "1"]
    opts += ["DATASETS.TRAIN", (train_set,), "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)]
    cfg = student_cfg(teacher_weights, opts)
    cfg.freeze()
    trainer = train_net.Trainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer) == amp
    model = trainer.model
    head_dtypes = []
    model.head.register_forward_hook(lambda m, i, out: head_dtypes.append(out[0][0].dtype))
    trainer.train()

    assert head_dtypes == [torch.float16 if amp else torch.float32]  # autocast was on (or off)
    for term in TERMS:
        value = trainer.storage.history(term).latest()
        assert math.isfinite(value), (term, value)
    teacher = model._teacher
    for module in (model, teacher.model):
        tensors = list(module.parameters()) + list(module.buffers())
        assert {t.device.type for t in tensors} == {device}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == trainable
    assert not in_optimizer & {id(p) for p in teacher.model.parameters()}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.cuda
@pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason=f"needs 2 CUDA GPUs (torch.cuda.device_count() is {torch.cuda.device_count()})",
)
def test_two_gpus_train_like_one(teacher_weights, tmp_path):
    """tests/test_distributed.py's comparison on GPUs: ``train_net.py --num-gpus 2`` (NCCL, one GPU
    per process) against one process on one GPU, with the same total batch: every logged loss term
    within LOSS_RTOL at every iteration, the final parameters within PARAM_RTOL, the teacher outside
    DDP."""
    check_two_processes_train_like_one(teacher_weights, tmp_path, "cuda", backend="nccl")


@pytest.mark.cuda
@NEEDS_CUDA
def test_compiled_hd_classification_loss_equals_eager():
    """``MODEL.TBD.HD.COMPILE True`` on CUDA (triton kernels): the HD classification loss and its
    gradient equal the eager loss's, on two anchor counts (dynamic shapes)."""
    from torch.utils._triton import has_triton

    if not has_triton():
        pytest.skip(
            "torch.compile cannot run on this GPU: triton is missing or does not support it"
        )
    box2box = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    losses = {
        compiled: HarmonyDistillationLoss(
            beta=2.0,
            target="harmony",
            reg_weighting="harmony",
            box2box_transform=box2box,
            compiled=compiled,
        )
        for compiled in (False, True)
    }
    torch.manual_seed(0)
    for anchors in (300, 517):
        logits = (torch.randn(2, anchors, 80) * 3).cuda().requires_grad_()
        teacher_logits = (torch.randn(2, anchors, 80) * 3).cuda()
        labels = torch.randint(-1, 81, (2, anchors)).cuda()  # -1 ignored, 80 background
        targets = losses[False].classification_targets(
            teacher_logits, labels, torch.rand(2, anchors).cuda()
        )
        value, grad = {}, {}
        for compiled, loss in losses.items():
            value[compiled] = loss.classification_loss(logits, targets, labels)
            (grad[compiled],) = torch.autograd.grad(value[compiled], logits)
        assert value[True].item() == pytest.approx(value[False].item(), rel=1e-5)
        assert torch.allclose(grad[True], grad[False], rtol=1e-4, atol=1e-6)
        assert torch.all(grad[True][labels < 0] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_export_on_the_device(device, tmp_path):
    """tools/export_model.py's TorchScript path (``tbd.export``: TracingAdapter, torch.jit.trace,
    save, reload) with the student on ``device``: the reloaded file gives the eager student's
    detections on two image shapes (``export`` raises VerificationError otherwise), and never
    builds the teacher."""
    missing = str(tmp_path / "no_teacher.pth")
    cfg = tbd_export.setup_cfg(STUDENT_CONFIG, teacher_opts(missing) + ["MODEL.DEVICE", device])
    student = detecting_student(cfg).eval()
    image = tbd_export.sample_image(cfg)
    out = tmp_path / "export"
    report = tbd_export.export(student, cfg, image, str(out), "torchscript", runs=0)
    assert [v["image_size"] for v in report["verified"]] == [[64, 64], [48, 64]]
    assert all(v["detections"] > 50 and v["classes"] == 0 for v in report["verified"])
    loaded = torch.jit.load(str(out / "model.ts"))
    assert {p.device.type for p in loaded.parameters()} == {device}
    assert student._teacher is None and not os.path.exists(missing)
