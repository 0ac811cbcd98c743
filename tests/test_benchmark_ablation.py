"""tools/benchmark_ablation.py and tbd.experiments.ablation: the planned commands (those recorded
in docs/results/synthetic.json among them), the ablation configs of both regimes (they build and
differ from TBD by their switches only, at full and at toy size), and the whole benchmark at toy
size in both regimes (json, markdown, figure, reuse of finished runs, carry-over). The targets on
hand-made numbers: tests/test_experiments.py."""

import dataclasses
import json
import os
import shutil
import sys

import pytest
from conftest import REPO, load_cfg
from detectron2.modeling import RetinaNet, build_model
from PIL import Image

from tbd import TBDRetinaNet
from tbd.config import distills
from tbd.experiments import ablation, runs
from tbd.experiments.regimes import CONVERGED, REGIMES, SWITCHES, SYNTHETIC

sys.path.insert(0, os.path.join(REPO, "tools"))
import benchmark_ablation as bench  # noqa: E402


def _opt(opts, key):
    i = opts.index(key)
    return opts[i + 1]


def test_plan_of_the_full_benchmark():
    args = bench.parse_args([])
    assert args.regime is SYNTHETIC
    assert (args.seeds, args.iters, args.teacher_iters) == ([0, 1, 2], 1000, 3000)
    assert args.rows == SYNTHETIC.row_names and args.results == "docs/results/synthetic"
    assert args.output == "output/ablation"
    teacher, planned = ablation.plan(args)
    tbd = load_cfg(os.path.join(REPO, SYNTHETIC.configs["tbd"]))
    assert teacher["config"] == tbd.MODEL.TBD.TEACHER.CONFIG_FILE  # the teacher TBD names
    assert _opt(teacher["opts"], "SEED") == "0"
    assert _opt(teacher["opts"], "SOLVER.MAX_ITER") == "3000"
    assert len(planned) == 6 * 3
    assert len({_opt(r["opts"], "OUTPUT_DIR") for r in planned}) == 18
    for run in planned:
        opts = run["opts"]
        assert run["config"] == SYNTHETIC.configs[run["row"]]
        assert _opt(opts, "SEED") == str(run["seed"])
        assert _opt(opts, "SOLVER.STEPS") == "(750, 900)"
        assert _opt(opts, "OUTPUT_DIR") == f"output/ablation/{run['row']}/seed_{run['seed']}"
        assert "TEST.EVAL_PERIOD" not in opts
        if run["row"] == "baseline":
            assert "MODEL.TBD.TEACHER.WEIGHTS" not in opts
        else:
            weights = _opt(opts, "MODEL.TBD.TEACHER.WEIGHTS")
            assert weights == "output/ablation/teacher/model_final.pth"
        assert "DATASETS.SYNTHETIC.ROOT" not in opts  # the real dataset


def test_planned_commands_are_those_docs_results_synthetic_json_recorded():
    """Carry-over from the committed results keeps working: the planned commands (and the
    teacher's) are, character for character, the ones recorded."""
    with open(os.path.join(REPO, "docs", "results", "synthetic.json")) as f:
        recorded = json.load(f)
    settings = bench.parse_args(recorded["generated_by"].split()[2:])
    teacher, planned = ablation.plan(settings)
    assert runs.command_line(teacher) == recorded["teacher"]["command"]
    for run in planned:
        seeds = recorded["rows"][run["row"]]["seeds"]
        assert runs.command_line(run) == seeds[str(run["seed"])]["command"], run["name"]


def test_plan_of_the_converged_regime():
    args = bench.parse_args(["--regime", "converged", "--jobs", "2"])
    assert args.regime is CONVERGED
    assert (args.iters, args.teacher_iters) == (CONVERGED.student_iters, CONVERGED.teacher_iters)
    assert (args.output, args.results) == ("output/converged", "docs/results/converged")
    teacher, planned = ablation.plan(args)
    assert teacher["config"] == "configs/Converged/teacher.yaml"
    assert _opt(teacher["opts"], "OUTPUT_DIR") == "output/converged/teacher"
    assert len(planned) == 6 * 3 + 4
    period = str(runs.eval_period(args.iters, CONVERGED.evaluations))
    for run in planned[:-4]:
        assert run["config"] == CONVERGED.configs[run["row"]]
        evaluated = run["row"] in ("baseline", "tbd")
        assert (
            (_opt(run["opts"], "TEST.EVAL_PERIOD") == period)
            if evaluated
            else ("TEST.EVAL_PERIOD" not in run["opts"])
        )
    # the longer schedules, the longest first (two at a time finish together)
    longer = planned[-4:]
    assert [r["name"] for r in longer] == [
        "baseline_4x/seed_0",
        "tbd_4x/seed_0",
        "baseline_2x/seed_0",
        "tbd_2x/seed_0",
    ]
    for run, row, k in zip(longer, ("baseline", "tbd") * 2, (4, 4, 2, 2)):
        assert run["row"] == f"{row}_{k}x" and run["seed"] == 0
        assert run["config"] == CONVERGED.configs[row]
        assert _opt(run["opts"], "SOLVER.MAX_ITER") == str(k * args.iters)
        assert _opt(run["opts"], "SOLVER.STEPS") == str(
            (int(0.75 * k * args.iters), int(0.9 * k * args.iters))
        )
        assert _opt(run["opts"], "OUTPUT_DIR") == f"output/converged/{row}_{k}x/seed_0"
        assert "TEST.EVAL_PERIOD" not in run["opts"]
        # TBD at a longer schedule learns from the same teacher as every distilled row
        teacher = "output/converged/teacher/model_final.pth"
        if row == "tbd":
            assert _opt(run["opts"], "MODEL.TBD.TEACHER.WEIGHTS") == teacher
        else:
            assert "MODEL.TBD.TEACHER.WEIGHTS" not in run["opts"]
    # no baseline row: only TBD's longer runs
    _, planned = ablation.plan(bench.parse_args(["--regime", "converged", "--rows", "tbd"]))
    assert [r["name"] for r in planned] == [
        "tbd/seed_0",
        "tbd/seed_1",
        "tbd/seed_2",
        "tbd_4x/seed_0",
        "tbd_2x/seed_0",
    ]


def test_toy_arguments_never_default_into_docs():
    args = bench.parse_args(["--toy", "--output", "somewhere", "--rows", "tbd", "baseline"])
    assert args.results == os.path.join("somewhere", "ablation")
    assert args.rows == ["baseline", "tbd"]  # the table's order
    assert bench.parse_args(["--toy"]).output != bench.parse_args([]).output
    converged = bench.parse_args(["--toy", "--regime", "converged"])
    assert converged.output == "output/converged_toy"
    assert converged.results == os.path.join("output/converged_toy", "ablation")
    for bad in (["--seeds", "0", "0"], ["--iters", "0"], ["--jobs", "0"], ["--regime", "x"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


# row: (class, HD target or None when HD is off, HD regression weighting, TFD mask or None,
# TFD balance); the baseline is a TBDRetinaNet that does not distill (the same loss normalizer)
EXPECTED = {
    "baseline": (TBDRetinaNet, None, None, None, None),
    "feature_mimic": (TBDRetinaNet, None, None, "uniform", "fixed"),
    "logit_kd": (TBDRetinaNet, "teacher", "uniform", None, None),
    "hd_only": (TBDRetinaNet, "harmony", "harmony", None, None),
    "tfd_only": (TBDRetinaNet, None, None, "task", "dynamic"),
    "tbd": (TBDRetinaNet, "harmony", "harmony", "task", "dynamic"),
}
ROWS = [(regime, row) for regime in REGIMES for row in SYNTHETIC.row_names]


def _check_switches(model, row):
    cls, hd_target, hd_weighting, tfd_mask, tfd_balance = EXPECTED[row]
    assert type(model) is cls
    if row == "baseline":
        assert not model.distills and model.teacher_cfg is None
        assert model.hd_loss is None and model.tfd_loss is None
        return
    assert model.distills
    if hd_target is None:
        assert model.hd_loss is None
    else:
        assert model.hd_loss.target == hd_target
        assert model.hd_loss.reg_weighting == hd_weighting
    if tfd_mask is None:
        assert model.tfd_loss is None
    else:
        assert model.tfd_loss is not None
        assert (model.tfd_mask, model.tfd_balance) == (tfd_mask, tfd_balance)


@pytest.mark.parametrize("regime,row", ROWS)
def test_row_configs_build_with_their_switches(regime, row, teacher_weights, monkeypatch):
    monkeypatch.chdir(REPO)  # the teacher config path in tbd_R18.yaml is relative to the repo
    opts = ["MODEL.TBD.TEACHER.WEIGHTS", teacher_weights]
    cfg = load_cfg(os.path.join(REPO, REGIMES[regime].configs[row]), opts)
    _check_switches(build_model(cfg), row)


@pytest.mark.parametrize("regime,row", ROWS)
def test_toy_rows_build_with_the_same_switches(regime, row, teacher_weights, monkeypatch):
    monkeypatch.chdir(REPO)
    args = bench.parse_args(["--regime", regime, "--toy", "--rows", row, "--seeds", "3"])
    _, (run, *extra) = ablation.plan(args)
    opts = list(run["opts"])
    if row == "baseline":
        assert "MODEL.TBD.TEACHER.WEIGHTS" not in opts
        assert [r["name"] for r in extra] == (
            ["baseline_4x/seed_3", "baseline_2x/seed_3"] if regime == "converged" else []
        )
    else:
        opts[opts.index("MODEL.TBD.TEACHER.WEIGHTS") + 1] = teacher_weights
    _check_switches(build_model(load_cfg(os.path.join(REPO, run["config"]), opts)), row)


@pytest.mark.parametrize("regime", list(REGIMES))
def test_the_baseline_is_a_tbd_retinanet_with_distillation_off(regime, tmp_path, monkeypatch):
    """The baseline of both regimes is a TBDRetinaNet with HD and TFD disabled (the same loss
    normalizer as the distilled rows): it does not distill (``tbd.config.distills``) and trains
    without a teacher, at full and at toy size (where its switches turn HD and TFD off). A plain
    RetinaNet baseline config still works: its toy switch is its meta-architecture."""
    monkeypatch.chdir(REPO)
    fair = REGIMES[regime]
    assert not distills(load_cfg(os.path.join(REPO, fair.configs["baseline"])))
    off = ["MODEL.TBD.HD.ENABLED", "False", "MODEL.TBD.TFD.ENABLED", "False"]
    assert ablation.toy_switches(fair, "baseline") == off
    config = tmp_path / "retinanet.yaml"
    config.write_text(f'_BASE_: "{os.path.join(REPO, "configs", "Base-TBD-RetinaNet.yaml")}"\n')
    rows = tuple(
        dataclasses.replace(r, config=str(config)) if r.name == "baseline" else r for r in fair.rows
    )
    plain = dataclasses.replace(fair, rows=rows)
    assert ablation.toy_switches(plain, "baseline") == ["MODEL.META_ARCHITECTURE", "RetinaNet"]
    assert ablation.teacher_config(plain) == ablation.teacher_config(fair)
    for r, cls in ((fair, TBDRetinaNet), (plain, RetinaNet)):
        for toy in (False, True):
            args = bench.parse_args(["--regime", regime, "--rows", "baseline", "--seeds", "0"])
            _, planned = ablation.plan(dataclasses.replace(args, regime=r, toy=toy))
            assert all("MODEL.TBD.TEACHER.WEIGHTS" not in run["opts"] for run in planned)
            model = build_model(load_cfg(planned[0]["config"], planned[0]["opts"]))
            assert type(model) is cls and not getattr(model, "distills", False)


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("row", ["feature_mimic", "logit_kd", "hd_only", "tfd_only"])
def test_ablation_configs_differ_from_tbd_by_their_switches_only(regime, row):
    configs = REGIMES[regime].configs
    tbd = _flat(load_cfg(os.path.join(REPO, configs["tbd"])))
    other = _flat(load_cfg(os.path.join(REPO, configs[row])))
    differ = {k for k in tbd if tbd[k] != other[k]}
    assert "OUTPUT_DIR" in differ  # its own output directory
    assert differ - {"OUTPUT_DIR"} <= set(SWITCHES), differ
    assert differ - {"OUTPUT_DIR"}, f"{row} is TBD itself"


def test_the_rows_of_both_regimes_have_the_same_switches():
    """configs/Converged/ has the structure of configs/Synthetic/: every ablation row switches
    the same keys to the same values relative to its regime's tbd config."""

    def switches(regime, row):
        tbd = _flat(load_cfg(os.path.join(REPO, regime.configs["tbd"])))
        other = _flat(load_cfg(os.path.join(REPO, regime.configs[row])))
        return {k: other[k] for k in SWITCHES if tbd[k] != other[k]}

    for row in ["feature_mimic", "logit_kd", "hd_only", "tfd_only"]:
        assert switches(SYNTHETIC, row) == switches(CONVERGED, row), row
    converged_tbd = load_cfg(os.path.join(REPO, CONVERGED.configs["tbd"]))
    assert converged_tbd.MODEL.TBD.TEACHER.CONFIG_FILE == "configs/Converged/teacher.yaml"
    for config in list(CONVERGED.configs.values()) + ["configs/Converged/teacher.yaml"]:
        assert load_cfg(os.path.join(REPO, config)).OUTPUT_DIR.startswith("output/converged/")


@pytest.mark.slow
def test_toy_benchmark_writes_results_and_reuses_runs(tmp_path, capsys):
    out = str(tmp_path / "ablation")
    docs = os.path.join(REPO, "docs", "results", "synthetic.json")
    docs_before = os.path.getmtime(docs) if os.path.exists(docs) else None
    argv = ["--toy", "--seeds", "0", "1", "--rows", "baseline", "tbd", "--output", out]
    bench.main(argv)

    printed = capsys.readouterr().out
    assert "[ablation] tbd/seed_1 (run 4 of 4), elapsed" in printed
    assert "ETA" in printed
    report = json.load(open(os.path.join(out, "ablation.json")))
    for key in ("generated_by", "date", "git_commit", "versions", "machine", "teacher", "targets"):
        assert key in report, key
    assert report["generated_by"].startswith("python tools/benchmark_ablation.py --toy")
    assert {"torch", "detectron2"} <= set(report["versions"])
    assert report["machine"]["cores"] == os.cpu_count() and report["machine"]["cpu"]
    assert "AP" in report["teacher"]
    assert list(report["rows"]) == ["baseline", "tbd"]
    for row in report["rows"].values():
        assert list(row["seeds"]) == ["0", "1"]
        for seed in row["seeds"].values():
            assert set(runs.SEED_METRICS) <= set(seed)
            assert "SEED" in seed["command"]
        assert {"AP_mean", "AP_std", "AP50_mean", "gain_over_baseline"} <= set(row)
    assert [t["status"] in ("PASS", "FAIL", "N/A") for t in report["targets"]] == [True] * 7
    assert report["settings"]["seeds"] == [0, 1]

    md = open(os.path.join(out, "ablation.md")).read()
    assert "do not edit by hand" in md
    assert report["generated_by"] in md
    assert "| baseline (no distillation) |" in md and "| TBD (HD + TFD) |" in md
    assert "## Targets" in md and md.count("| **") == 7
    # the toy run never writes into docs/
    assert (os.path.getmtime(docs) if os.path.exists(docs) else None) == docs_before

    # a second run reuses every finished run and the teacher
    finals = [os.path.join(out, r, "seed_1", "model_final.pth") for r in ("baseline", "tbd")]
    finals.append(os.path.join(out, "teacher", "model_final.pth"))
    mtimes = [os.path.getmtime(f) for f in finals]
    bench.main(argv)
    assert [os.path.getmtime(f) for f in finals] == mtimes
    assert "finished before, reused" in capsys.readouterr().out
    # ... but refuses to mix runs made with another schedule into the results
    with pytest.raises(SystemExit, match="different command"):
        bench.main(argv + ["--iters", "5"])
    capsys.readouterr()

    # output/ is gone, the results json is not: the teacher is trained again, deterministically
    # (the same weights hash), so the runs made by the same command from it are carried over,
    # marked, not retrained
    results = os.path.join(out, "ablation.json")
    written = json.load(open(results))["date"]  # by the rerun, maybe a minute past the first run
    for stage in ("baseline", "tbd", "teacher"):
        shutil.rmtree(os.path.join(out, stage))
    bench.main(argv)
    assert "4 runs carried over" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, "tbd", "seed_0"))
    carried = json.load(open(results))
    for name, row in report["rows"].items():
        for seed, record in row["seeds"].items():
            again = dict(carried["rows"][name]["seeds"][seed])
            origin = again.pop("carried_over_from")
            assert again == record  # every number as first recorded
            assert origin["date"] == written and "sha256" in origin["teacher"]
    md = open(os.path.join(out, "ablation.md")).read()
    assert md.count("†") == 4 + 1 and "Carried over, not retrained" in md

    # another teacher (here: a recorded hash that differs): nothing is carried over; the runs
    # train again, two at a time
    carried["teacher"]["weights_sha256"] = "0" * 64
    with open(results, "w") as f:
        json.dump(carried, f)
    bench.main(argv + ["--rows", "tbd", "--jobs", "2"])
    printed = capsys.readouterr().out
    assert "nothing carried over (different teacher weights (sha256))" in printed
    assert printed.count("[ablation] tbd/seed_") >= 2
    assert runs.finished(os.path.join(out, "tbd", "seed_1"))
    retrained = json.load(open(results))
    assert "carried_over_from" not in retrained["rows"]["tbd"]["seeds"]["0"]
    assert retrained["settings"]["jobs"] == 2 and retrained["settings"]["threads_per_run"] >= 1


@pytest.mark.slow
def test_toy_converged_regime_end_to_end_and_carried_over(tmp_path, capsys, monkeypatch):
    """The converged regime at toy size: harmony of every run and of the teacher, AP curves of
    the baseline and TBD rows, the 2x-schedule baseline, the figure; then a rerun that measures
    nothing again (harmony.json cached in the run directories), and one without the run
    directories that carries every new field over from the json."""
    out = str(tmp_path / "converged")
    argv = ["--regime", "converged", "--toy", "--seeds", "0", "--rows", "baseline", "tbd"]
    argv += ["--output", out, "--jobs", "2"]
    # the commit and worktree state are recorded before the runs and the figure are written
    events, real = [], (ablation.environment, runs.train_stages, ablation.write_figure)
    monkeypatch.setattr(ablation, "environment", lambda: events.append("env") or real[0]())
    monkeypatch.setattr(
        runs, "train_stages", lambda *a, **k: events.append("runs") or real[1](*a, **k)
    )
    monkeypatch.setattr(ablation, "write_figure", lambda *a: events.append("figure") or real[2](*a))
    bench.main(argv)
    assert events == ["env", "runs", "figure"]
    printed = capsys.readouterr().out
    assert "[ablation] baseline_4x/seed_0 (run 3 of 6)" in printed
    assert "[ablation] tbd_2x/seed_0 (run 6 of 6)" in printed
    assert printed.count(": harmony on tbd_synthetic_val") == 3  # teacher, baseline, tbd
    results = os.path.join(out, "ablation")
    report = json.load(open(results + ".json"))
    assert report["settings"]["regime"] == "converged"
    assert report["generated_by"].startswith("python tools/benchmark_ablation.py --regime")

    subsets = ("anchors", "detections_matched", "detections_confident", "detections")
    for harmony in [report["teacher"]["harmony"]] + [
        row["seeds"]["0"]["harmony"] for row in report["rows"].values()
    ]:
        assert harmony["dataset"] == "tbd_synthetic_val" and harmony["num_images"] == 4
        assert (harmony["match_iou"], harmony["confident_score"]) == (0.5, 0.3)
        assert list(harmony["statistics"]) == list(subsets)
        assert harmony["statistics"]["anchors"]["count"] > 0
        assert len(harmony["anchor_histogram"]["rows"]) == 40
    for name, row in report["rows"].items():
        assert set(row["harmony"]) == {"anchors", "detections_matched", "detections_confident"}
        anchors = row["harmony"]["anchors"]
        assert (
            anchors["harmonious_fraction"]
            == row["seeds"]["0"]["harmony"]["statistics"]["anchors"]["harmonious_fraction"]
        )
        curve = row["seeds"]["0"]["ap_curve"]  # both rows are evaluated periodically
        assert curve[-1]["iter"] == 6 and len(curve) >= 2  # the writer keeps 1 per 20 iterations
        assert all(p["iter"] <= 6 for p in curve)
    doubled = report["extra_runs"]["baseline_2x/seed_0"]
    assert "SOLVER.MAX_ITER 12" in doubled["command"] and "harmony" not in doubled
    assert "SOLVER.MAX_ITER 24" in report["extra_runs"]["tbd_4x/seed_0"]["command"]
    conv = report["convergence"]
    assert conv["evaluations"] == 6 and conv["eval_period"] == 1
    assert conv["curve_rows"] == ["baseline", "tbd"] and conv["plateau"]["max_range"] == 1.0
    assert conv["doubling"]["seed"] == "0" and conv["doubling"]["iters"] == 6
    sched = conv["schedules"]
    assert (sched["seed"], sched["iters"], sched["multiples"]) == ("0", 6, [1, 2, 4])
    assert sched["AP"]["baseline"].get("2") == conv["doubling"]["AP_2x"]
    assert sched["AP"]["tbd"].get("4") == report["extra_runs"]["tbd_4x/seed_0"]["AP"]
    assert report["figure"] == results + "_score_vs_iou.png"
    with Image.open(report["figure"]) as image:
        assert image.size[0] >= 3 * 400
    assert len(report["targets"]) == 15
    assert all(t["status"] in ("PASS", "FAIL", "N/A") for t in report["targets"])
    assert {"runs", "analysis", "run_median", "runs_trained"} <= set(report["wall_seconds"])

    md = open(results + ".md").read()
    assert md.startswith("# Ablation in the converged regime (toy size)")
    assert report["generated_by"] in md and "Regime `converged`" in md
    for section in ("## Harmony on `tbd_synthetic_val`", "## Did the baseline converge?"):
        assert section in md
    assert "## Wall time" in md and "The whole benchmark took" in md
    assert "![score vs IoU of foreground anchors](ablation_score_vs_iou.png)" in md
    assert "| teacher |" in md and "matched: n" in md and "score >= 0.3" in md
    assert "Baseline at twice the schedule (seed 0)" in md
    assert "AP of seed 0 at longer schedules" in md and "| 1x (6) | 2x (12) | 4x (24) |" in md
    assert md.count("| **") == 15

    # a rerun reuses the runs and their cached harmony: nothing is trained or measured again
    bench.main(argv)
    printed = capsys.readouterr().out
    assert ": harmony on" not in printed and printed.count("finished before, reused") == 6
    again = json.load(open(results + ".json"))
    assert again["rows"] == report["rows"] and again["teacher"] == report["teacher"]

    # the run directories are gone (the teacher stays): everything is carried over from the json,
    # the harmony records, AP curves and the 2x run with it, and the figure is drawn again
    for stage in ("baseline", "tbd", "baseline_2x", "baseline_4x", "tbd_2x", "tbd_4x"):
        shutil.rmtree(os.path.join(out, stage))
    os.remove(report["figure"])
    bench.main(argv)
    printed = capsys.readouterr().out
    assert "6 runs carried over" in printed and ": harmony on" not in printed
    carried = json.load(open(results + ".json"))
    for name, row in report["rows"].items():
        record = dict(carried["rows"][name]["seeds"]["0"])
        # from the json the rerun wrote (its date may be a minute past the first invocation's)
        assert record.pop("carried_over_from")["date"] == again["date"]
        assert record == row["seeds"]["0"]
        assert carried["rows"][name]["harmony"] == row["harmony"]
    record = dict(carried["extra_runs"]["baseline_2x/seed_0"])
    record.pop("carried_over_from")
    assert record == doubled
    assert carried["convergence"] == report["convergence"]
    assert carried["targets"] == report["targets"]
    assert os.path.isfile(report["figure"])
    md = open(results + ".md").read()
    assert "Carried over, not retrained" in md and "The whole benchmark took longer" in md


def test_converged_teacher_and_student_train_together(tmp_path, monkeypatch):
    """The converged regime's models as configured (64 px, P3-P5, narrow ResNet-18s): the TBD
    student accepts the teacher (anchors, classes) and one training step gives every loss term
    finite, with the 1x1 adapter from the student's FPN width to the teacher's."""
    from conftest import make_batch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils.events import EventStorage

    monkeypatch.chdir(REPO)
    teacher_cfg = load_cfg(os.path.join(REPO, ablation.teacher_config(CONVERGED)))
    DetectionCheckpointer(build_model(teacher_cfg), save_dir=str(tmp_path)).save("teacher")
    cfg = load_cfg(
        os.path.join(REPO, CONVERGED.configs["tbd"]),
        ["MODEL.TBD.TEACHER.WEIGHTS", str(tmp_path / "teacher.pth")],
    )
    student = build_model(cfg).train()
    assert student.tfd_loss.adapter.weight.shape[:2] == (
        teacher_cfg.MODEL.FPN.OUT_CHANNELS,
        cfg.MODEL.FPN.OUT_CHANNELS,
    )
    with EventStorage(0):
        losses = student(make_batch(num_images=2, size=64))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_hd_cls", "loss_hd_reg", "loss_tfd"}
    assert all(bool(v.isfinite()) for v in losses.values())
