"""tools/benchmark_ablation.py: the targets on hand-made numbers, the planned commands, the ablation
configs (they build and differ from TBD by their switches only, at full and at toy size), and the
whole benchmark at toy size (json, markdown, reuse of finished runs)."""

import json
import os
import shutil
import sys

import pytest
from conftest import REPO, load_cfg
from detectron2.modeling import build_model

from tbd import TBDRetinaNet

sys.path.insert(0, os.path.join(REPO, "tools"))
import benchmark_ablation as bench  # noqa: E402

NAN = float("nan")


def _rows(**aps):
    """{row: {"mean", "std"}} from row=(mean, std) keyword arguments."""
    return {row: {"mean": m, "std": s} for row, (m, s) in aps.items()}


GOOD = dict(
    baseline=(30.0, 0.4),
    feature_mimic=(31.0, 0.5),
    logit_kd=(32.0, 0.3),
    hd_only=(33.0, 0.2),
    tfd_only=(32.5, 0.6),
    tbd=(35.0, 0.5),
)


def _status(targets):
    assert len(targets) == 7
    return [t["status"] for t in targets]


def test_targets_all_pass():
    targets = bench.evaluate_targets(_rows(**GOOD), teacher_ap=38.0)
    assert _status(targets) == ["PASS"] * 7
    # the numbers are in the details: gain +5, gap closed 5 / 8 = 62%, 3 x max std = 1.5
    assert "+5.00" in targets[0]["detail"]
    assert "62%" in targets[1]["detail"]
    assert "= 1.50" in targets[2]["detail"]


def test_targets_fail_with_numbers():
    rows = dict(GOOD, tbd=(31.0, 0.5), hd_only=(29.0, 0.2), feature_mimic=(32.0, 0.1))
    targets = bench.evaluate_targets(_rows(**rows), teacher_ap=38.0)
    status = dict(zip(["gain", "gap", "noise", "hd", "tfd", "fm", "kd"], _status(targets)))
    assert status == {
        "gain": "FAIL",  # +1.0 < +3.0
        "gap": "FAIL",  # 1 / 8 = 12% < 50%
        "noise": "FAIL",  # 1.0 < 3 x 0.5
        "hd": "FAIL",  # 29 < 30
        "tfd": "PASS",  # 32.5 > 30
        "fm": "FAIL",  # 32 > 31
        "kd": "FAIL",  # 32 > 31
    }


def test_targets_boundaries_and_the_larger_std():
    # gain exactly 3.0 and exactly half the gap pass (>=)
    rows = dict(GOOD, baseline=(30.0, 0.1), tbd=(33.0, 0.1))
    targets = bench.evaluate_targets(_rows(**rows), teacher_ap=36.0)
    assert _status(targets)[:3] == ["PASS", "PASS", "PASS"]
    # TBD's own std would pass (3 x 0.2 = 0.6 < 3.5) but the baseline's does not (3.6 > 3.5)
    rows = dict(GOOD, baseline=(30.0, 1.2), tbd=(33.5, 0.2))
    targets = bench.evaluate_targets(_rows(**rows), teacher_ap=36.0)
    assert _status(targets)[2] == "FAIL" and "3.60" in targets[2]["detail"]
    # gain equal to 3 x std is not "greater than"
    rows = dict(GOOD, baseline=(30.0, 1.0), tbd=(33.0, 0.5))
    assert _status(bench.evaluate_targets(_rows(**rows), teacher_ap=36.0))[2] == "FAIL"


@pytest.mark.parametrize("teacher_ap", [30.0, 29.0, -1.0])
def test_targets_no_gap_to_close_fails_without_dividing(teacher_ap):
    targets = bench.evaluate_targets(_rows(**GOOD), teacher_ap=teacher_ap)  # baseline 30
    assert targets[1]["status"] == "FAIL"
    assert "no gap" in targets[1]["detail"]
    assert _status(targets)[0] == "PASS"  # the other targets are unaffected


def test_targets_missing_numbers_are_not_applicable():
    # one seed: no std, so the noise target cannot be judged; the others can
    one_seed = {k: (m, NAN) for k, (m, _) in GOOD.items()}
    expected = ["PASS", "PASS", "N/A", "PASS", "PASS", "PASS", "PASS"]
    assert _status(bench.evaluate_targets(_rows(**one_seed), teacher_ap=38.0)) == expected
    # a subset of rows, an unknown teacher AP
    subset = {k: GOOD[k] for k in ("baseline", "tbd")}
    expected = ["PASS", "N/A", "PASS", "N/A", "N/A", "N/A", "N/A"]
    assert _status(bench.evaluate_targets(_rows(**subset), teacher_ap=NAN)) == expected
    # a row whose evaluation produced no AP (None in a reloaded json)
    rows = _rows(**GOOD)
    rows["hd_only"]["mean"] = None
    assert _status(bench.evaluate_targets(rows, teacher_ap=38.0))[3] == "N/A"


def test_schedule_steps():
    assert bench.schedule(1500) == ["SOLVER.MAX_ITER", "1500", "SOLVER.STEPS", "(1125, 1350)"]
    # detectron2 refuses a repeated milestone: short schedules keep one step
    assert bench.schedule(4) == ["SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)"]
    assert bench.schedule(1) == ["SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()"]


def _opt(opts, key):
    i = opts.index(key)
    return opts[i + 1]


def test_plan_of_the_full_benchmark():
    args = bench.parse_args([])
    assert (args.seeds, args.iters, args.teacher_iters) == ([0, 1, 2], 1000, 3000)
    assert args.rows == bench.ROW_NAMES and args.results == "docs/results/synthetic"
    teacher, runs = bench.plan(args)
    tbd = load_cfg(os.path.join(REPO, bench.CONFIGS["tbd"]))
    assert teacher["config"] == tbd.MODEL.TBD.TEACHER.CONFIG_FILE  # the teacher TBD names
    assert _opt(teacher["opts"], "SEED") == "0"
    assert _opt(teacher["opts"], "SOLVER.MAX_ITER") == "3000"
    assert len(runs) == 6 * 3
    assert len({_opt(r["opts"], "OUTPUT_DIR") for r in runs}) == 18
    for run in runs:
        opts = run["opts"]
        assert run["config"] == bench.CONFIGS[run["row"]]
        assert _opt(opts, "SEED") == str(run["seed"])
        assert _opt(opts, "SOLVER.STEPS") == "(750, 900)"
        assert _opt(opts, "OUTPUT_DIR") == f"output/ablation/{run['row']}/seed_{run['seed']}"
        if run["row"] == "baseline":
            assert "MODEL.TBD.TEACHER.WEIGHTS" not in opts
        else:
            weights = _opt(opts, "MODEL.TBD.TEACHER.WEIGHTS")
            assert weights == "output/ablation/teacher/model_final.pth"
        assert "DATASETS.SYNTHETIC.ROOT" not in opts  # the real dataset


def test_toy_arguments_never_default_into_docs():
    args = bench.parse_args(["--toy", "--output", "somewhere", "--rows", "tbd", "baseline"])
    assert args.results == os.path.join("somewhere", "ablation")
    assert args.rows == ["baseline", "tbd"]  # the table's order
    assert bench.parse_args(["--toy"]).output != bench.parse_args([]).output
    with pytest.raises(SystemExit):
        bench.parse_args(["--seeds", "0", "0"])


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


@pytest.mark.parametrize("row", bench.ROW_NAMES)
def test_row_configs_build_with_their_switches(row, teacher_weights, monkeypatch):
    monkeypatch.chdir(REPO)  # the teacher config path in tbd_R18.yaml is relative to the repo
    opts = ["MODEL.TBD.TEACHER.WEIGHTS", teacher_weights]
    cfg = load_cfg(os.path.join(REPO, bench.CONFIGS[row]), opts)
    _check_switches(build_model(cfg), row)


@pytest.mark.parametrize("row", bench.ROW_NAMES)
def test_toy_rows_build_with_the_same_switches(row, teacher_weights, monkeypatch):
    monkeypatch.chdir(REPO)
    args = bench.parse_args(["--toy", "--rows", row, "--seeds", "3"])
    _, (run,) = bench.plan(args)
    opts = list(run["opts"])
    if row == "baseline":
        assert "MODEL.TBD.TEACHER.WEIGHTS" not in opts
    else:
        opts[opts.index("MODEL.TBD.TEACHER.WEIGHTS") + 1] = teacher_weights
    _check_switches(build_model(load_cfg(os.path.join(REPO, run["config"]), opts)), row)


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("row", ["feature_mimic", "logit_kd", "hd_only", "tfd_only"])
def test_ablation_configs_differ_from_tbd_by_their_switches_only(row):
    tbd = _flat(load_cfg(os.path.join(REPO, bench.CONFIGS["tbd"])))
    ablation = _flat(load_cfg(os.path.join(REPO, bench.CONFIGS[row])))
    differ = {k for k in tbd if tbd[k] != ablation[k]}
    assert "OUTPUT_DIR" in differ  # its own output directory
    assert differ - {"OUTPUT_DIR"} <= set(bench.SWITCHES), differ
    assert differ - {"OUTPUT_DIR"}, f"{row} is TBD itself"


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
            assert set(bench.SEED_METRICS) <= set(seed)
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
            assert origin["date"] == report["date"] and "sha256" in origin["teacher"]
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
    assert bench.finished(os.path.join(out, "tbd", "seed_1"))
    retrained = json.load(open(results))
    assert "carried_over_from" not in retrained["rows"]["tbd"]["seeds"]["0"]
    assert retrained["settings"]["jobs"] == 2 and retrained["settings"]["threads_per_run"] >= 1
