"""The step-cost benchmark (tbd.experiments.cost, tools/benchmark_step.py): the interleaved timing
loop, the ratios and their verdicts, the memory meter, the shared weights of the compared models,
the model-zoo code path, and the whole tool at toy size (its json and markdown). No assertion
depends on how fast anything runs."""

import importlib.util
import json
import math
import os
import platform
import statistics
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_cfg
from detectron2.modeling import RetinaNet, build_model
from detectron2.utils.events import EventStorage

from tbd import TBDRetinaNet
from tbd.config import resolve_config_file
from tbd.experiments.cost import benchmark as cost
from tbd.experiments.cost import memory as cost_memory
from tbd.experiments.cost import report as cost_report
from tbd.experiments.cost import timing, workloads
from tbd.teacher import load_teacher_config

TOOL = os.path.join(REPO, "tools", "benchmark_step.py")
_spec = importlib.util.spec_from_file_location("benchmark_step", TOOL)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

TOY_ARGS = [
    "--student-config",
    STUDENT_CONFIG,
    "--teacher-config",
    TEACHER_CONFIG,
    "--size",
    "64",
    "--batch",
    "2",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--memory-steps",
    "1",
]
TOP_LEVEL = {
    "schema",
    "date",
    "command",
    "settings",
    "machine",
    "versions",
    "kernel",
    "models",
    "times",
    "memory",
    "ratios",
    "all_pass",
}
MEMORY_FIELDS = {
    "method",
    "peak_reset",
    "baseline_bytes",
    "ready_bytes",
    "ready_anon_bytes",
    "ready_file_bytes",
    "peak_bytes",
    "run_peak_bytes",
}


def toy_spec(teacher_weights, **overrides):
    spec = {
        "student_config": STUDENT_CONFIG,
        "teacher_config": TEACHER_CONFIG,
        "teacher_weights": teacher_weights,
        "opts": [],
        "device": "cpu",
        "seed": 0,
        "boxes": 3,
        "memory_steps": 1,
        "batch": 2,
        "size": [64, 64],
        "num_classes": 6,
        "malloc": "keep",
    }
    spec.update(overrides)
    return spec


# ---------------------------------------------------------------- pure parts


def test_parse_size_and_argument_checks():
    assert tool.parse_size("128") == (128, 128)
    assert tool.parse_size("800x1333") == (800, 1333)
    for bad in ("abc", "16", "1x2x3"):
        with pytest.raises(Exception):
            tool.parse_size(bad)
    for bad in (["--steps", "0"], ["--warmup", "-1"], ["--batch", "0"], ["MODEL.DEVICE"]):
        with pytest.raises(SystemExit):
            tool.parse_args(bad)
    args = tool.parse_args(["--size", "96x128", "MODEL.TBD.HD.BETA", "1.5"])
    assert args.size == (96, 128) and args.opts == ["MODEL.TBD.HD.BETA", "1.5"]
    assert args.steps == 20 and args.student_config == tool.DEFAULT_STUDENT


def _times(**medians):
    return {name: {"median_s": value} for name, value in medians.items()}


def test_ratios_and_verdicts_hand_case():
    times = _times(
        student_step=1.0,
        teacher_forward=0.5,
        tbd_step=1.6,
        tbd_losses=0.06,
        tbd_inference=1.03,
        retinanet_inference=1.0,
    )
    memory = {"tbd_peak_bytes": 105, "floor_bytes": 100}
    ratios = cost_report.compute_ratios(times, memory)
    assert set(ratios) == {"overhead", "loss_share", "eval_parity", "memory"}
    assert ratios["overhead"]["value"] == pytest.approx(1.6 / 1.5)
    assert ratios["overhead"]["pass"] is True
    assert ratios["loss_share"]["value"] == pytest.approx(0.12)
    assert ratios["loss_share"]["pass"] is False
    assert ratios["eval_parity"]["value"] == pytest.approx(1.03)
    assert ratios["eval_parity"]["pass"] is False
    assert ratios["memory"]["value"] == pytest.approx(1.05) and ratios["memory"]["pass"] is True
    assert [r["target"] for r in ratios.values()] == [1.10, 0.10, 1.02, 1.10]
    skipped = cost_report.compute_ratios(times, None)["memory"]
    assert skipped["value"] is None and skipped["pass"] is None


def test_memory_floor_sums_student_teacher_weights_and_forward():
    per_variant = {
        "student_step": {"peak_bytes": 300, "run_peak_bytes": 100},
        "teacher_forward": {"peak_bytes": 900, "run_peak_bytes": 40},
        "tbd_step": {"peak_bytes": 420, "run_peak_bytes": 150},
    }
    summary = cost_memory.memory_summary(per_variant, teacher_weights_bytes=70)
    # the teacher forward counts by what it adds over loaded models (40), not its peak (900)
    assert summary["floor_bytes"] == 300 + 70 + 40
    assert summary["tbd_peak_bytes"] == 420 and summary["teacher_forward_peak_bytes"] == 40


class _StubWorkloads:
    """Runners that record the call order; tbd_step records a loss time as the real one does."""

    def __init__(self):
        self.calls = []
        self.loss_times = []
        self.sync = lambda: None
        self.tbd_cfg = SimpleNamespace(MODEL=SimpleNamespace(TBD=SimpleNamespace(WARMUP_ITERS=0)))

    def runner(self, name):
        def run():
            self.calls.append(name)
            if name == "tbd_step":
                self.loss_times.append(0.001 * len(self.calls))

        return run


def test_round_orders_are_permutations_that_vary_neighbours():
    orders = timing.round_orders(50, seed=0)
    assert orders == timing.round_orders(50, seed=0)  # deterministic
    assert all(sorted(order) == sorted(workloads.VARIANTS) for order in orders)
    calls = [name for order in orders for name in order]
    neighbours = {(a, b) for a, b in zip(calls, calls[1:])}
    # every variant runs right after every other one at some point (a rotated order would not)
    assert neighbours >= {(a, b) for a in workloads.VARIANTS for b in workloads.VARIANTS if a != b}


def test_time_variants_interleaves_and_drops_warmup():
    stub = _StubWorkloads()
    times, kernel = timing.time_variants(stub, steps=3, warmup=2, seed=1)
    n = len(workloads.VARIANTS)
    assert stub.calls == [name for order in timing.round_orders(5, seed=1) for name in order]
    assert set(times) == set(workloads.TIMED)
    assert all(len(times[name]) == 3 and min(times[name]) >= 0 for name in workloads.TIMED)
    # the loss times are those of the 3 measured TBD steps, not of the warm-up rounds
    measured_tbd_calls = [
        k + 1 for k, name in enumerate(stub.calls) if name == "tbd_step" and k >= 2 * n
    ]
    assert len(measured_tbd_calls) == 3
    assert times["tbd_losses"] == pytest.approx([0.001 * c for c in measured_tbd_calls])
    assert set(kernel) == set(workloads.VARIANTS)
    for name in workloads.VARIANTS:
        assert len(kernel[name]["system_s"]) == len(kernel[name]["minor_faults"]) == 3
        assert min(kernel[name]["system_s"]) >= 0 and min(kernel[name]["minor_faults"]) >= 0


def test_memory_meter_sees_an_allocation():
    meter = cost_memory.MemoryMeter("cpu")
    meter.mark_ready()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written, so resident
    result = meter.result()
    del block
    assert set(result) == MEMORY_FIELDS
    assert result["run_peak_bytes"] >= 60 * 2**20
    assert result["peak_bytes"] == result["ready_bytes"] + result["run_peak_bytes"]


def test_calibrated_norms_normalize_their_input(teacher_weights):
    torch.manual_seed(0)
    model = build_model(load_cfg(TEACHER_CONFIG))
    batch = workloads.make_batch(2, 64, 64, num_classes=6, boxes=3, seed=0)
    workloads.calibrate_norms(model, batch)
    assert model.training  # the mode is restored
    outputs = []
    norm = model.backbone.bottom_up.stem.conv1.norm
    handle = norm.register_forward_hook(lambda m, i, o: outputs.append(o.clone()))  # relu_ next
    with torch.no_grad():
        model.eval()
        model.backbone(model.preprocess_image(batch).tensor)
    handle.remove()
    out = outputs[0]
    assert out.mean((0, 2, 3)).abs().max() < 1e-3  # BN weight 1, bias 0 at initialization
    assert (out.var((0, 2, 3)) - 1).abs().max() < 1e-2


def test_model_zoo_pair_resolves_offline():
    spec = toy_spec(
        "unused.pth",
        student_config="COCO-Detection/retinanet_R_50_FPN_3x.yaml",
        teacher_config="COCO-Detection/retinanet_R_101_FPN_3x.yaml",
    )
    tbd_cfg, plain_cfg = workloads.build_cfgs(spec)
    assert tbd_cfg.MODEL.META_ARCHITECTURE == "TBDRetinaNet"
    assert plain_cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
    assert tbd_cfg.MODEL.DEVICE == "cpu" and tbd_cfg.MODEL.RESNETS.DEPTH == 50
    assert load_teacher_config(tbd_cfg).MODEL.RESNETS.DEPTH == 101
    with pytest.raises(FileNotFoundError):
        resolve_config_file("COCO-Detection/no_such_config.yaml")


# ---------------------------------------------------------------- the workloads


def test_workloads_share_weights_and_time_the_real_losses(teacher_weights):
    spec = toy_spec(teacher_weights)
    batch = workloads.make_batch(**workloads.batch_args(spec))
    loads = workloads.Workloads(spec, batch)
    tbd_eval, plain_eval = loads.model("tbd_eval"), loads.model("plain_eval")
    assert type(tbd_eval) is TBDRetinaNet and type(plain_eval) is RetinaNet
    assert not tbd_eval.training and loads.model("tbd_train").training
    plain_state = plain_eval.state_dict()
    for key, value in tbd_eval.state_dict().items():
        if not key.startswith(workloads.TBD_ONLY_PREFIXES):
            assert torch.equal(value, plain_state[key]), key
    a, b = loads.runner("tbd_inference")(), loads.runner("retinanet_inference")()
    for x, y in zip(a, b):
        assert torch.equal(x["instances"].scores, y["instances"].scores)
        assert torch.equal(x["instances"].pred_boxes.tensor, y["instances"].pred_boxes.tensor)

    teacher_out = loads.runner("teacher_forward")()
    num_anchors = sum(
        len(a) for a in loads.model("tbd_train").anchor_generator(teacher_out.features)
    )
    assert teacher_out.logits.shape == (2, num_anchors, 6)
    assert not teacher_out.logits.requires_grad

    step = loads.runner("tbd_step")
    with EventStorage(0):
        losses = [step() for _ in range(2)]
    assert {"loss_hd_cls", "loss_hd_reg", "loss_tfd"} <= set(losses[-1])
    assert len(loads.loss_times) == 2 and min(loads.loss_times) > 0


# ---------------------------------------------------------------- end to end at toy size


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    report = tool.main(
        TOY_ARGS + ["--output", str(out / "cost.json"), "--markdown", str(out / "cost.md")]
    )
    with open(out / "cost.json") as f:
        saved = json.load(f)
    return report, saved, out


@pytest.mark.slow
def test_toy_run_writes_every_documented_field(toy_run):
    report, saved, _ = toy_run
    assert saved == json.loads(json.dumps(report))
    assert set(saved) == TOP_LEVEL and saved["schema"] == cost.SCHEMA
    settings = saved["settings"]
    assert settings["size"] == [64, 64] and settings["batch"] == 2 and settings["steps"] == 2
    assert settings["teacher_name"] == "teacher_instant_test"
    assert settings["malloc"] == "keep"  # as train_net.py trains on the CPU
    assert settings["malloc_keeps_freed_memory"] is (platform.libc_ver()[0] == "glibc")
    assert saved["machine"]["torch_num_threads"] == torch.get_num_threads()
    assert saved["versions"]["torch"] == torch.__version__
    assert saved["command"].startswith("python tools/benchmark_step.py --student-config")

    for name in workloads.TIMED:
        t = saved["times"][name]
        assert len(t["samples_s"]) == 2
        assert all(math.isfinite(s) and s > 0 for s in t["samples_s"])
        assert t["median_s"] == pytest.approx(statistics.median(t["samples_s"]))
        assert t["min_s"] <= t["median_s"] <= t["max_s"]

    assert set(saved["kernel"]) == set(workloads.VARIANTS)  # tbd_losses runs inside tbd_step
    for name, k in saved["kernel"].items():
        assert len(k["system_s"]) == len(k["minor_faults"]) == 2
        assert k["median_system_s"] == pytest.approx(statistics.median(k["system_s"]))
        assert k["median_minor_faults"] == statistics.median(k["minor_faults"])

    medians = {name: saved["times"][name]["median_s"] for name in workloads.TIMED}
    ratios = saved["ratios"]
    assert ratios["overhead"]["value"] == pytest.approx(
        medians["tbd_step"] / (medians["student_step"] + medians["teacher_forward"])
    )
    assert ratios["loss_share"]["value"] == pytest.approx(
        medians["tbd_losses"] / medians["teacher_forward"]
    )
    assert ratios["eval_parity"]["value"] == pytest.approx(
        medians["tbd_inference"] / medians["retinanet_inference"]
    )
    for entry in ratios.values():
        assert math.isfinite(entry["value"]) and entry["value"] > 0
        assert entry["pass"] == (entry["value"] <= entry["target"])
    assert saved["all_pass"] == all(entry["pass"] for entry in ratios.values())


@pytest.mark.slow
def test_toy_run_memory(toy_run):
    _, saved, _ = toy_run
    memory = saved["memory"]
    teacher = build_model(load_cfg(TEACHER_CONFIG))
    expected = sum(
        t.numel() * t.element_size() for t in [*teacher.parameters(), *teacher.buffers()]
    )
    assert memory["teacher_weights_bytes"] == expected == saved["models"]["teacher_weights_bytes"]
    assert saved["models"]["teacher_parameters"] > saved["models"]["student_parameters"] > 0
    variants = memory["variants"]
    assert set(variants) == set(workloads.VARIANTS)
    for name, result in variants.items():
        assert set(result) == MEMORY_FIELDS, name
        assert result["peak_bytes"] > 0 and result["ready_bytes"] > 0, name
    for name in ("student_step", "tbd_step", "teacher_forward"):
        assert variants[name]["run_peak_bytes"] > 0, name  # activations were seen
    # the TBD process holds the teacher's weights on top of what the student process holds
    extra = variants["tbd_step"]["ready_bytes"] - variants["student_step"]["ready_bytes"]
    assert extra > 0.5 * memory["teacher_weights_bytes"]
    floor = (
        variants["student_step"]["peak_bytes"]
        + memory["teacher_weights_bytes"]
        + variants["teacher_forward"]["run_peak_bytes"]
    )
    assert memory["floor_bytes"] == floor
    assert saved["ratios"]["memory"]["value"] == pytest.approx(memory["tbd_peak_bytes"] / floor)


@pytest.mark.slow
def test_toy_run_markdown_appends_sections_under_one_header(toy_run):
    report, _, out = toy_run
    path = out / "cost.md"
    text = path.read_text()
    assert text.startswith(cost_report.MARKDOWN_HEADER)
    for name, entry in report["ratios"].items():
        verdict = "PASS" if entry["pass"] else "FAIL"
        assert any(
            line.startswith(f"| {name} |") and line.rstrip().endswith(f"| {verdict} |")
            for line in text.splitlines()
        ), name
    assert report["command"] in text and torch.__version__ in text
    for description in workloads.DESCRIPTIONS.values():
        assert description in text
    cost_report.write_markdown(str(path), cost_report.format_report(report))
    text = path.read_text()
    assert text.count("# Cost of distillation: measured results") == 1
    assert text.count("\n## ") == 2
