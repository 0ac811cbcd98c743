"""Harmony analysis: the statistics against hand computations and numpy, the top-k detection IoUs,
and tools/analyze_harmony.py end to end on a toy model and a tiny synthetic dataset."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, STUDENT_CONFIG, TEACHER_CONFIG, load_cfg, save_random_teacher
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from PIL import Image

from tbd.analysis import (
    CONFIDENT_SCORE,
    MATCH_IOU,
    STATISTICS,
    HarmonyAnalysis,
    average_ranks,
    detection_quality,
    detection_subsets,
    foreground_harmony,
    harmony_statistics,
    labelled_test_loader,
)
from tbd.datasets import register_synthetic

TOOL = os.path.join(REPO, "tools", "analyze_harmony.py")
NAMES = ("tbd_analysis_train", "tbd_analysis_val")


def _pearson(x, y):
    """Pearson's r from its definition, in plain Python."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    vx = sum((a - mx) ** 2 for a in x)
    vy = sum((b - my) ** 2 for b in y)
    return cov / math.sqrt(vx * vy)


def _ranks(x):
    """rank(x_i) = #{x_j < x_i} + (#{x_j == x_i} + 1) / 2, quadratic and obvious."""
    x = np.asarray(x)
    return np.array([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x])


# ---------------------------------------------------------------- the pure statistics


def test_harmony_statistics_hand_case():
    # Dyadic values: |s - u| is exact in float32, so the boundary case 0.25 <= delta is exact.
    s = [0.75, 0.5, 0.25, 1.0, 0.0, 0.5]
    u = [0.5, 0.5, 0.75, 0.25, 0.125, 0.5]
    # |s - u| = 0.25 (boundary, harmonious), 0, 0.5, 0.75, 0.125, 0  ->  4 of 6
    stats = harmony_statistics(torch.tensor(s), torch.tensor(u), delta=0.25)
    assert set(stats) == set(STATISTICS)
    assert stats["count"] == 6 and stats["num_harmonious"] == 4
    assert stats["harmonious_fraction"] == pytest.approx(4 / 6, abs=1e-12)
    assert stats["pearson"] == pytest.approx(_pearson(s, u), abs=1e-9)
    assert stats["pearson"] == pytest.approx(np.corrcoef(s, u)[0, 1], abs=1e-9)
    # ranks with ties written out by hand: s -> 5, 3.5, 2, 6, 1, 3.5; u -> 4, 4, 6, 2, 1, 4
    rank_s, rank_u = [5, 3.5, 2, 6, 1, 3.5], [4, 4, 6, 2, 1, 4]
    assert stats["spearman"] == pytest.approx(_pearson(rank_s, rank_u), abs=1e-9)
    hs = [math.sqrt(a * b) * (1 - abs(a - b)) for a, b in zip(s, u)]
    assert stats["mean_harmony_score"] == pytest.approx(sum(hs) / 6, abs=1e-7)
    assert stats["mean_score"] == pytest.approx(sum(s) / 6)
    assert stats["mean_iou"] == pytest.approx(sum(u) / 6)
    # a tighter delta drops the boundary pair
    assert harmony_statistics(torch.tensor(s), torch.tensor(u), 0.2)["num_harmonious"] == 3


def test_spearman_is_rank_correlation():
    s = torch.tensor([0.1, 0.2, 0.3, 0.4])
    u = torch.tensor([0.01, 0.04, 0.09, 0.9])  # monotone, far from linear
    stats = harmony_statistics(s, u, 0.2)
    assert stats["spearman"] == pytest.approx(1.0)
    assert stats["pearson"] < 0.95
    assert harmony_statistics(s, u.flip(0), 0.2)["spearman"] == pytest.approx(-1.0)


def test_harmony_statistics_match_numpy_with_ties():
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(500, generator=g) * 20).round() / 20  # many ties
    u = (0.6 * s + 0.4 * torch.rand(500, generator=g)).clamp(0, 1)
    stats = harmony_statistics(s, u, 0.1)
    s64, u64 = s.double().numpy(), u.double().numpy()
    assert stats["pearson"] == pytest.approx(np.corrcoef(s64, u64)[0, 1], abs=1e-9)
    expected = np.corrcoef(_ranks(s64), _ranks(u64))[0, 1]
    assert stats["spearman"] == pytest.approx(expected, abs=1e-9)
    assert stats["num_harmonious"] == int((np.abs(s.numpy() - u.numpy()) <= 0.1).sum())
    assert 0.3 < stats["spearman"] < 1


def test_spearman_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    s, u = (torch.rand(200, generator=g) * 10).round() / 10, torch.rand(200, generator=g)
    expected = scipy_stats.spearmanr(s.numpy(), u.numpy()).correlation
    assert harmony_statistics(s, u, 0.2)["spearman"] == pytest.approx(expected, abs=1e-9)


def test_average_ranks_ties():
    ranks = average_ranks(torch.tensor([10.0, 20.0, 20.0, 5.0, 20.0]))
    assert ranks.tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]


def test_harmony_statistics_degenerate():
    empty = harmony_statistics(torch.zeros(0), torch.zeros(0), 0.2)
    assert empty["count"] == 0 and empty["num_harmonious"] == 0
    assert all(empty[k] is None for k in STATISTICS if k not in ("count", "num_harmonious"))
    constant = harmony_statistics(torch.full((3,), 0.5), torch.tensor([0.4, 0.6, 0.9]), 0.2)
    assert constant["pearson"] is None and constant["spearman"] is None
    assert constant["num_harmonious"] == 2
    with pytest.raises(ValueError):
        harmony_statistics(torch.zeros(3), torch.zeros(2), 0.2)


# ---------------------------------------------------------------- top-k detections


def _instances(boxes, classes, scores=None):
    inst = Instances((40, 40))
    if scores is None:
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    else:
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inst.scores = torch.tensor(scores, dtype=torch.float32)
    return inst


def test_detection_quality_same_class_max_iou_topk():
    gt = _instances([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])
    dets = _instances(
        [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 35], [0, 0, 5, 10]],
        [0, 1, 1, 0],
        [0.9, 0.8, 0.3, 0.95],
    )
    # by score: 0.95 (IoU 0.5 with gt 0), 0.9 (exact gt 0), 0.8 (gt 0's box but class 1: 0),
    # 0.3 (class 1, 100 / 150 with gt 1)
    s, u = detection_quality(dets, gt, topk=10)
    assert s.tolist() == pytest.approx([0.95, 0.9, 0.8, 0.3])
    assert u.tolist() == pytest.approx([0.5, 1.0, 0.0, 2 / 3])
    s, u = detection_quality(dets, gt, topk=3)
    assert s.tolist() == pytest.approx([0.95, 0.9, 0.8]) and len(u) == 3
    s, u = detection_quality(dets, _instances([], []), topk=10)
    assert u.tolist() == [0.0] * 4
    s, u = detection_quality(dets[torch.zeros(4, dtype=torch.bool)], gt, topk=10)
    assert len(s) == len(u) == 0


def test_detection_subsets_leave_background_boxes_out():
    # two matched (u >= 0.5), one confident false positive, one confident and matched, and many
    # background boxes with s and u near 0: harmonious, but in neither subset
    s = torch.tensor([0.9, 0.2, 0.8, 0.6] + [0.01] * 12)
    u = torch.tensor([0.85, 0.7, 0.0, 0.5] + [0.0] * 12)
    subsets = detection_subsets(s, u)
    assert subsets["matched"].tolist() == [True, True, False, True] + [False] * 12
    assert subsets["confident"].tolist() == [True, False, True, True] + [False] * 12
    assert (MATCH_IOU, CONFIDENT_SCORE) == (0.5, 0.3)  # the thresholds the docs state
    tight = detection_subsets(s, u, match_iou=0.75, confident_score=0.85)
    assert tight["matched"].sum() == 1 and tight["confident"].sum() == 1
    with pytest.raises(ValueError):
        detection_subsets(s, u[:3])

    analysis = HarmonyAnalysis(
        anchor_scores=torch.tensor([0.5, 0.75]),
        anchor_ious=torch.tensor([0.5, 0.25]),
        detection_scores=s,
        detection_ious=u,
    )
    stats = analysis.statistics(0.2)
    assert list(stats) == ["anchors", "detections_matched", "detections_confident", "detections"]
    # all 16 top-k detections: the 12 background boxes make them look harmonious
    assert stats["detections"]["count"] == 16 and stats["detections"]["num_harmonious"] == 14
    # matched: 0.9/0.85 and 0.6/0.5 harmonious, 0.2/0.7 not
    assert stats["detections_matched"]["count"] == 3
    assert stats["detections_matched"]["num_harmonious"] == 2
    # confident: 0.9/0.85 and 0.6/0.5 harmonious, the false positive 0.8/0.0 not
    assert stats["detections_confident"]["count"] == 3
    assert stats["detections_confident"]["num_harmonious"] == 2
    assert stats["anchors"]["count"] == 2 and stats["anchors"]["num_harmonious"] == 1
    assert analysis.statistics(0.2, match_iou=0.8)["detections_matched"]["count"] == 1
    # no detection at all: every subset is empty, with undefined values
    empty = HarmonyAnalysis(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0))
    for entry in empty.statistics(0.2).values():
        assert entry["count"] == 0 and entry["harmonious_fraction"] is None


# ---------------------------------------------------------------- the tool, end to end


def _load_tool():
    spec = importlib.util.spec_from_file_location("analyze_harmony", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toy(tmp_path_factory, teacher_weights):
    """A tiny val split, a RetinaNet (the quick teacher) and a TBDRetinaNet student checkpoint."""
    root = tmp_path_factory.mktemp("analysis")
    register_synthetic(str(root / "data"), names=NAMES, num_train=4, num_val=4, image_size=64)
    # the student's RetinaNet weights (FPN 16), BatchNorm calibrated like the teacher's
    student = save_random_teacher(str(root / "student.pth"), ["MODEL.FPN.OUT_CHANNELS", "16"], 1)
    return {"root": root, "teacher": teacher_weights, "student": student, "tool": _load_tool()}


def _run(toy, output, *extra, opts=()):
    argv = ["--config-file", TEACHER_CONFIG, "--weights", toy["teacher"], "--output", str(output)]
    argv += ["--dataset", NAMES[1], "--no-progress", *extra]
    # every model detects something (random weights score ~0.01); the student's teacher checkpoint
    # does not exist: evaluation never builds the teacher
    argv += ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    argv += ["MODEL.TBD.TEACHER.CONFIG_FILE", TEACHER_CONFIG]
    argv += ["MODEL.TBD.TEACHER.WEIGHTS", str(toy["root"] / "missing.pth"), *opts]
    return toy["tool"].main(argv)


@pytest.fixture(scope="module")
def compared(toy):
    output = toy["root"] / "out"
    _run(toy, output, "--compare-config", STUDENT_CONFIG, "--compare-weights", toy["student"])
    with open(output / "harmony.json") as f:
        return output, json.load(f)


def _in_unit(value):
    return value is not None and 0.0 <= value <= 1.0


def test_tool_writes_documented_harmony_json(compared):
    _, report = compared
    assert report["dataset"] == NAMES[1] and report["num_images"] == 4
    assert report["num_gt_boxes"] > 0
    assert report["delta"] == 0.2 and report["topk"] == 100
    assert (report["match_iou"], report["confident_score"]) == (MATCH_IOU, CONFIDENT_SCORE)
    names = list(report["models"])
    assert names == ["teacher_instant_test", "tbd_instant_test"]
    assert report["mask_model"] == names[0]
    assert report["models"][names[1]]["meta_architecture"] == "TBDRetinaNet"
    for name, entry in report["models"].items():
        kinds = ("anchors", "detections_matched", "detections_confident", "detections")
        assert {"config_file", "weights", "coco", *kinds} <= set(entry)
        for kind in kinds:
            stats = entry[kind]
            assert set(stats) == set(STATISTICS), (name, kind)
            if kind in ("anchors", "detections"):
                assert stats["count"] > 0, (name, kind)
            else:  # the subsets of the top-k detections
                assert stats["count"] <= entry["detections"]["count"], (name, kind)
                if stats["count"] == 0:
                    continue
            assert 0 <= stats["num_harmonious"] <= stats["count"]
            assert stats["harmonious_fraction"] == stats["num_harmonious"] / stats["count"]
            for key in ("mean_harmony_score", "mean_score", "mean_iou"):
                assert _in_unit(stats[key]), (name, kind, key, stats[key])
            for key in ("pearson", "spearman"):
                assert stats[key] is None or -1.0 <= stats[key] <= 1.0
        # at most topk detections per image; the score threshold is 0, so exactly topk here
        assert entry["detections"]["count"] == 4 * 100
        assert set(entry["coco"]) == {"AP", "AP50", "AP75"}
        assert all(v is None or 0.0 <= v <= 100.0 for v in entry["coco"].values())


def test_tool_anchor_statistics_match_foreground_harmony(compared, toy):
    """The tool's dense numbers agree with tbd.analysis.foreground_harmony (run_demo.py's path)."""
    _, report = compared
    cfg = load_cfg(TEACHER_CONFIG)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(toy["teacher"])
    expected = foreground_harmony(model, labelled_test_loader(cfg, NAMES[1]), 0.2)
    anchors = report["models"]["teacher_instant_test"]["anchors"]
    assert anchors["count"] == expected["num_foreground"]
    assert anchors["harmonious_fraction"] == pytest.approx(expected["harmonious_fraction"])
    assert anchors["mean_harmony_score"] == pytest.approx(expected["mean_harmony_score"], rel=1e-5)


def test_tool_writes_decodable_figures(compared):
    output, _ = compared
    for name, min_size in (("score_vs_iou.png", (600, 300)), ("masks.png", (600, 900))):
        with Image.open(output / name) as image:
            image.load()
            assert image.format == "PNG"
            assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
            # not a blank canvas
            assert len(image.convert("L").getcolors(1 << 24)) > 20


def test_tool_topk_max_images_single_model(toy, tmp_path):
    thresholds = ["--match-iou", "0", "--confident-score", "0"]  # every detection in both
    summary = _run(toy, tmp_path, "--topk", "2", "--max-images", "2", "--delta", "0.5", *thresholds)
    report = json.loads((tmp_path / "harmony.json").read_text())
    assert report == summary
    assert report["num_images"] == 2 and report["topk"] == 2 and report["delta"] == 0.5
    assert report["match_iou"] == 0 and report["confident_score"] == 0
    (entry,) = report["models"].values()
    assert entry["detections"]["count"] == 2 * 2
    assert entry["detections_matched"] == entry["detections_confident"] == entry["detections"]
    assert (tmp_path / "score_vs_iou.png").is_file() and (tmp_path / "masks.png").is_file()


def test_tool_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, TOOL, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--compare-config", "--delta", "--topk", "--max-images", "--dataset"):
        assert flag in result.stdout


def test_tool_needs_no_teacher_config_for_a_tbd_student(toy, tmp_path):
    """tools/analyze_harmony.py on a TBD student whose MODEL.TBD.TEACHER.CONFIG_FILE does not
    exist: the same numbers as with the teacher's config present."""
    reports = {}
    for name, teacher_config in (("with", TEACHER_CONFIG), ("without", str(tmp_path / "x.yaml"))):
        argv = ["--config-file", STUDENT_CONFIG, "--weights", toy["student"]]
        argv += ["--output", str(tmp_path / name), "--dataset", NAMES[1], "--no-progress"]
        argv += ["--max-images", "2", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
        argv += ["MODEL.TBD.TEACHER.CONFIG_FILE", teacher_config]
        argv += ["MODEL.TBD.TEACHER.WEIGHTS", str(toy["root"] / "missing.pth")]
        report = toy["tool"].main(argv)
        (entry,) = report["models"].values()
        reports[name] = {k: entry[k] for k in ("detections", "anchors", "coco")}
    assert reports["with"]["anchors"]["count"] > 0
    assert reports["with"] == reports["without"]
