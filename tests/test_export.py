"""
The deployable student: a TBD student exports (TorchScript by tracing, ONNX) as the plain RetinaNet
it is at inference, its checkpoint loads into detectron2's RetinaNet, and ``train_net.py
--eval-only`` evaluates it, all without building or reading its teacher.
"""

import importlib.util
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.export import TracingAdapter
from detectron2.modeling import RetinaNet, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.testing import assert_instances_allclose
from PIL import Image

import tbd.export as tbd_export
from tbd import FrozenTeacher, TBDRetinaNet
from tbd.checkpoint import load_eval_model
from tbd.datasets import register_synthetic
from tbd.deploy import distillation_keys, retinanet_config, student_state_dict, to_retinanet

sys.path.insert(0, REPO)
import train_net  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "export_model", os.path.join(REPO, "tools", "export_model.py")
)
export_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_model)

ADAPTER_KEYS = {"tfd_loss.adapter.weight", "tfd_loss.adapter.bias"}
DATASETS = ("tbd_export_train", "tbd_export_val")


@pytest.fixture(autouse=True)
def teacher_forbidden(monkeypatch):
    """Any attempt to build the teacher fails the test (pytest.fail is not an Exception, so no
    ``except Exception`` on the way can swallow it)."""

    def build(cls, *args, **kwargs):
        pytest.fail("the teacher was built during inference, export or evaluation")

    monkeypatch.setattr(FrozenTeacher, "build", classmethod(build))


@pytest.fixture(scope="module")
def missing_teacher(tmp_path_factory):
    """A teacher checkpoint path that does not exist: reading it would raise."""
    path = str(tmp_path_factory.mktemp("no_teacher") / "teacher_final.pth")
    assert not os.path.exists(path)
    return path


def detecting_student(cfg):
    """
    A randomly initialized student of ``cfg`` (on its ``MODEL.DEVICE``) whose classification prior
    is reset to p = 0.5, so that it detects ~100 boxes per image: comparing empty predictions would
    prove nothing.
    """
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.head.cls_score.bias.zero_()
    return model


@pytest.fixture(scope="module")
def student_weights(tmp_path_factory, missing_teacher):
    """A TBD student checkpoint as training writes it (``DetectionCheckpointer(model).save``), with
    the TFD adapter: :func:`detecting_student`."""
    model = detecting_student(student_config("", missing_teacher))
    out = tmp_path_factory.mktemp("student")
    DetectionCheckpointer(model, save_dir=str(out)).save("model_final")
    return str(out / "model_final.pth")


def teacher_opts(missing_teacher):
    return [
        "MODEL.TBD.TEACHER.CONFIG_FILE",
        TEACHER_CONFIG,
        "MODEL.TBD.TEACHER.WEIGHTS",
        missing_teacher,
    ]


def student_config(weights, missing_teacher):
    return load_cfg(STUDENT_CONFIG, teacher_opts(missing_teacher) + ["MODEL.WEIGHTS", weights])


@pytest.fixture(scope="module")
def student(student_weights, missing_teacher):
    """The saved student, loaded as the export tool loads it, and its (frozen) config."""
    cfg = student_config(student_weights, missing_teacher)
    cfg.freeze()
    return load_eval_model(cfg), cfg


def num_parameters(named_parameters):
    return sum(p.numel() for _, p in named_parameters)


def test_trace_save_reload_matches_eager_student(student, tmp_path):
    """As detectron2's TestTracing.testRetinaNet: trace on one image, save, reload, and compare on
    another image of another shape with the eager model."""
    model, cfg = student
    assert isinstance(model, TBDRetinaNet) and model.distills
    assert ADAPTER_KEYS <= set(model.state_dict())
    image = tbd_export.sample_image(cfg)
    assert tuple(image.shape) == (3, 64, 64)
    small = image[:, :48, :].clone()

    plain = to_retinanet(model, cfg)
    adapter = TracingAdapter(plain, image, tbd_export.predict).eval()
    with torch.no_grad(), tbd_export.quiet_export_warnings():
        traced = torch.jit.trace(adapter, (small,))
        torch.jit.save(traced, str(tmp_path / "model.ts"))
        loaded = torch.jit.load(str(tmp_path / "model.ts"))
        traced_output = adapter.outputs_schema(loaded(image))
    expected = tbd_export.predict(model, image)
    assert len(expected) > 50
    assert_instances_allclose(expected, traced_output, size_as_tensor=True)
    assert model._teacher is None

    # The file holds exactly a RetinaNet's parameters: no teacher, no TFD adapter.
    names = {n for n, _ in loaded.named_parameters()}
    assert names == {"model." + n for n, _ in plain.named_parameters()}
    adapter_size = sum(model.state_dict()[k].numel() for k in ADAPTER_KEYS)
    assert adapter_size == 16 * 32 + 32  # student FPN 16 -> teacher FPN 32, 1x1 conv
    assert num_parameters(loaded.named_parameters()) == (
        num_parameters(model.named_parameters()) - adapter_size
    )


def test_export_tool_cli_torchscript(student_weights, missing_teacher, tmp_path):
    """``python tools/export_model.py`` from the repo root, with a sample image and a teacher
    checkpoint that does not exist: exports, verifies and times."""
    sample = tmp_path / "sample.png"
    Image.new("RGB", (80, 100), (90, 160, 30)).save(sample)  # W x H: resized to 64 x 51 (H x W)
    out = tmp_path / "export"
    cmd = [sys.executable, "tools/export_model.py", "--config-file", STUDENT_CONFIG]
    cmd += ["--output", str(out), "--sample-image", str(sample), "--runs", "3"]
    cmd += teacher_opts(missing_teacher) + ["MODEL.WEIGHTS", student_weights]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "eager/exported" in proc.stdout
    assert not os.path.exists(missing_teacher)

    report = json.loads((out / "export.json").read_text())
    assert report["format"] == "torchscript" and os.path.isfile(out / "model.ts")
    assert report["outputs"] == ["pred_boxes", "pred_classes", "scores", "image_size"]
    assert [v["image_size"] for v in report["verified"]] == [[64, 51], [48, 51]]
    for entry in report["verified"]:
        assert entry["detections"] > 0 and entry["classes"] == 0
        assert entry["box"] <= tbd_export.BOX_ATOL and entry["score"] <= tbd_export.SCORE_ATOL
    latency = report["latency"]
    assert latency["runs"] == 3 and latency["image_size"] == [64, 51]
    assert latency["eager_ms"] > 0 and latency["exported_ms"] > 0
    assert latency["eager_over_exported"] == pytest.approx(
        latency["eager_ms"] / latency["exported_ms"]
    )
    # the file written is a plain RetinaNet's parameters only
    plain = build_model(retinanet_config(load_cfg(STUDENT_CONFIG, teacher_opts(missing_teacher))))
    loaded = torch.jit.load(str(out / "model.ts"))
    assert num_parameters(loaded.named_parameters()) == num_parameters(plain.named_parameters())


def test_export_onnx_or_clear_report(student, tmp_path):
    """With ``onnx`` installed the ONNX export runs and matches the eager student on two image
    shapes (dynamic height and width); without it the tool says what to install."""
    model, cfg = student
    image = tbd_export.sample_image(cfg)
    if importlib.util.find_spec("onnx") is None:
        with pytest.raises(tbd_export.ExportError, match="pip install onnx"):
            tbd_export.export(model, cfg, image, str(tmp_path), "onnx", runs=0)
        return
    report = tbd_export.export(model, cfg, image, str(tmp_path), "onnx", runs=0)
    assert os.path.isfile(tmp_path / "model.onnx") and report["latency"] is None
    assert [v["image_size"] for v in report["verified"]] == [[64, 64], [48, 64]]
    assert all(v["detections"] > 0 and v["classes"] == 0 for v in report["verified"])
    assert model._teacher is None


def test_export_failures_exit_nonzero_with_a_message(
    student_weights, missing_teacher, tmp_path, monkeypatch, capsys
):
    """A failing exporter exits 2, an export whose predictions differ exits 1; both say why."""
    argv = ["--config-file", STUDENT_CONFIG, "--runs", "0"]
    opts = teacher_opts(missing_teacher) + ["MODEL.WEIGHTS", student_weights]

    def broken_exporter(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator nms")

    monkeypatch.setattr(torch.onnx, "export", broken_exporter)
    rc = export_model.main(argv + ["--output", str(tmp_path / "a"), "--format", "onnx"] + opts)
    err = capsys.readouterr().err
    assert rc == export_model.EXIT_EXPORT_FAILED
    assert "ERROR: onnx export failed" in err
    assert "pip install onnx" in err or "Unsupported: ONNX export of operator nms" in err

    def wrong_retinanet(student, cfg):  # an export that silently changed the weights
        model = to_retinanet(student, cfg)
        with torch.no_grad():
            model.head.bbox_pred.bias.add_(0.5)
        return model

    monkeypatch.setattr(tbd_export, "to_retinanet", wrong_retinanet)
    rc = export_model.main(argv + ["--output", str(tmp_path / "b")] + opts)
    err = capsys.readouterr().err
    assert rc == export_model.EXIT_MISMATCH
    assert "does not match the eager student" in err and "max box diff" in err
    report = json.loads((tmp_path / "b" / "export.json").read_text())
    assert all("error" in v for v in report["verified"])


def test_compare_tolerances():
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 20.0, 20.0]])
    a = Instances((64, 64), pred_boxes=Boxes(boxes), scores=torch.tensor([0.9, 0.4]))
    a.pred_classes = torch.tensor([1, 3])
    b = Instances((64, 64), pred_boxes=Boxes(boxes + 1e-4), scores=a.scores + 1e-6)
    b.pred_classes = a.pred_classes.clone()
    assert tbd_export.compare(a, b)["detections"] == 2
    b.pred_classes = torch.tensor([1, 2])
    with pytest.raises(tbd_export.VerificationError, match="1 of 2 classes differ"):
        tbd_export.compare(a, b)
    with pytest.raises(tbd_export.VerificationError, match="2 detections by the eager"):
        tbd_export.compare(a, a[:1])


class _RecordingCheckpointer(DetectionCheckpointer):
    """Keeps what DetectionCheckpointer found incompatible (and logs) on the last load."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def test_student_checkpoint_loads_into_plain_retinanet(student, student_weights):
    """The one-line config change: META_ARCHITECTURE "RetinaNet" loads the TBD checkpoint; only
    the TFD adapter keys are left over (and logged as unused); predictions are identical."""
    model, cfg = student
    plain_cfg = retinanet_config(cfg)
    assert plain_cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
    assert cfg.MODEL.META_ARCHITECTURE == "TBDRetinaNet"  # the student's config is unchanged
    plain = build_model(plain_cfg).eval()
    assert type(plain) is RetinaNet

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    fvcore_logger = logging.getLogger("fvcore.common.checkpoint")
    fvcore_logger.addHandler(handler)
    try:
        checkpointer = _RecordingCheckpointer(plain)
        checkpointer.load(student_weights)
    finally:
        fvcore_logger.removeHandler(handler)
    incompatible = checkpointer.incompatible
    assert set(incompatible.unexpected_keys) == ADAPTER_KEYS
    assert list(incompatible.missing_keys) == [] and list(incompatible.incorrect_shapes) == []
    assert any("tfd_loss.adapter" in r.getMessage() for r in records)
    assert set(model.state_dict()) - set(plain.state_dict()) == ADAPTER_KEYS
    assert set(plain.state_dict()) <= set(model.state_dict())

    image = tbd_export.sample_image(cfg, seed=1)
    expected, actual = tbd_export.predict(model, image), tbd_export.predict(plain, image)
    assert len(expected) > 0
    assert torch.equal(expected.pred_boxes.tensor, actual.pred_boxes.tensor)
    assert torch.equal(expected.scores, actual.scores)
    assert torch.equal(expected.pred_classes, actual.pred_classes)

    # the helper: a strict load of the checkpoint without the distillation keys
    checkpoint = torch.load(student_weights, map_location="cpu")
    assert set(distillation_keys(checkpoint["model"])) == ADAPTER_KEYS
    stripped = student_state_dict(checkpoint["model"])
    assert set(checkpoint["model"]) - set(stripped) == ADAPTER_KEYS
    build_model(plain_cfg).load_state_dict(stripped, strict=True)


@pytest.fixture(scope="module")
def eval_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_synthetic")
    register_synthetic(str(root), names=DATASETS, num_train=2, num_val=3, image_size=64, seed=5)
    return DATASETS


def test_eval_only_never_reads_the_teacher(
    student_weights, missing_teacher, eval_datasets, tmp_path
):
    """``train_net.main`` with ``--eval-only`` evaluates the TBD student's checkpoint with
    COCOEvaluator while MODEL.TBD.TEACHER.WEIGHTS points at a file that does not exist: as the
    student's own config, and with the documented one-line change to a plain RetinaNet, with the
    same detections."""
    detections = {}
    for meta_arch in ("TBDRetinaNet", "RetinaNet"):
        output = tmp_path / meta_arch
        args = train_net.argument_parser().parse_args(
            ["--config-file", STUDENT_CONFIG, "--eval-only"]
            + teacher_opts(missing_teacher)
            + ["MODEL.META_ARCHITECTURE", meta_arch]
            + ["MODEL.WEIGHTS", student_weights, "OUTPUT_DIR", str(output)]
            + ["DATASETS.TRAIN", f"('{DATASETS[0]}',)", "DATASETS.TEST", f"('{DATASETS[1]}',)"]
        )
        results = train_net.main(args)
        assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
        path = output / "inference" / DATASETS[1] / "coco_instances_results.json"
        detections[meta_arch] = json.loads(path.read_text())
    assert not os.path.exists(missing_teacher)
    assert len(detections["TBDRetinaNet"]) > 0
    assert detections["TBDRetinaNet"] == detections["RetinaNet"]


def test_no_teacher_config_needed_for_eval_export_and_the_same_detections(
    student_weights, missing_teacher, eval_datasets, tmp_path
):
    """A student shipped without its teacher's files: MODEL.TBD.TEACHER.CONFIG_FILE names a file
    that does not exist. ``--eval-only`` and the export tool work, without the (training-only) TFD
    adapter, and give the same detections as with the teacher's config present."""
    gone = str(tmp_path / "no_such_dir" / "teacher.yaml")
    without = ["MODEL.TBD.TEACHER.CONFIG_FILE", gone]

    # the export tool: load, export, verify; predictions as with the config present
    cfg_with = student_config(student_weights, missing_teacher)
    cfg_without = load_cfg(STUDENT_CONFIG, teacher_opts(missing_teacher) + without)
    cfg_without.MODEL.WEIGHTS = student_weights
    cfg_with.freeze()
    cfg_without.freeze()
    model = load_eval_model(cfg_without)
    assert model.distills and model.tfd_loss is None and not distillation_keys(model.state_dict())
    image = tbd_export.sample_image(cfg_without, seed=2)
    expected = tbd_export.predict(load_eval_model(cfg_with), image)
    assert len(expected) > 0
    assert_instances_allclose(expected, tbd_export.predict(model, image), rtol=0.0)
    report = tbd_export.export(model, cfg_without, image, str(tmp_path / "ts"), runs=0)
    assert all(v["detections"] > 0 for v in report["verified"])

    # train_net.py --eval-only
    detections = {}
    for name, opts in (("with", []), ("without", without)):
        output = tmp_path / name
        args = train_net.argument_parser().parse_args(
            ["--config-file", STUDENT_CONFIG, "--eval-only"]
            + teacher_opts(missing_teacher)
            + opts
            + ["MODEL.WEIGHTS", student_weights, "OUTPUT_DIR", str(output)]
            + ["DATASETS.TRAIN", f"('{DATASETS[0]}',)", "DATASETS.TEST", f"('{DATASETS[1]}',)"]
        )
        train_net.main(args)
        path = output / "inference" / DATASETS[1] / "coco_instances_results.json"
        detections[name] = json.loads(path.read_text())
    assert len(detections["with"]) > 0 and detections["with"] == detections["without"]
    assert not os.path.exists(gone)
