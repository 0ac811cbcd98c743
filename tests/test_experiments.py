"""tbd.experiments, the machinery of the tools, on hand-made inputs: the LR and evaluation
schedules, what a run leaves in its directory (metrics, AP curve, command), carry-over decisions,
numbers in reports, the targets of both regimes, the plateau judgement and the figure."""

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tbd.experiments import ablation_report, carry_over, figures, regimes, runs, tables
from tbd.experiments import targets as T

NAN = float("nan")


# ---------------------------------------------------------------- runs


def test_schedule_steps():
    assert runs.schedule(1500) == ["SOLVER.MAX_ITER", "1500", "SOLVER.STEPS", "(1125, 1350)"]
    # detectron2 refuses a repeated milestone: short schedules keep one step
    assert runs.schedule(4) == ["SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)"]
    assert runs.schedule(1) == ["SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()"]


def test_eval_period_gives_the_number_of_evaluations():
    # detectron2 evaluates at every multiple of the period below MAX_ITER, and at the end
    for iters, k in ((2000, 6), (6, 6), (1000, 3), (7, 2), (5, 6)):
        period = runs.eval_period(iters, k)
        evaluations = len([i for i in range(period, iters, period)]) + 1
        assert evaluations == min(k, iters), (iters, k, period)


def _metrics(tmp_path, rows):
    with open(tmp_path / "metrics.json", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(tmp_path)


def test_metrics_and_ap_curve_as_detectron2_records_them(tmp_path):
    # periodic evaluations at the index of their last step, the final one at MAX_ITER
    stage = _metrics(
        tmp_path,
        [
            {"iteration": 19, "time": 0.5, "loss": 1.0},
            {"iteration": 333, "bbox/AP": 10.0, "bbox/AP50": 20.0},
            {"iteration": 999, "time": 0.7},
            {"iteration": 1000, **{f"bbox/{m}": 12.0 for m in runs.METRICS}},
        ],
    )
    assert runs.read_eval_curve(stage, 1000) == [
        {"iter": 334, "AP": 10.0},
        {"iter": 1000, "AP": 12.0},
    ]
    metrics = runs.read_metrics(stage)
    assert metrics["bbox"]["AP"] == 12.0 and set(metrics["bbox"]) == set(runs.METRICS)
    assert metrics["s_per_iter"] == pytest.approx(0.6)
    assert not runs.finished(stage)  # no model_final.pth
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert runs.finished(stage)


def test_stage_commands_are_recorded_checked_and_cleared(tmp_path):
    stage = {"name": "tbd/seed_0", "config": "c.yaml", "opts": ["SEED", "0"]}
    assert runs.command(stage) == ["train_net.py", "--config-file", "c.yaml", "SEED", "0"]
    assert runs.command_line(stage) == "python train_net.py --config-file c.yaml SEED 0"
    directory = str(tmp_path)
    assert runs.recorded_command(directory) is None
    runs.check_same_command(stage, directory, "--force")  # nothing recorded: fine
    with open(tmp_path / "command.json", "w") as f:
        json.dump({"command": runs.command(stage), "wall_seconds": 3.0}, f)
    runs.check_same_command(stage, directory, "--force")
    assert runs.recorded_wall_seconds(directory) == 3.0
    with pytest.raises(SystemExit, match="different command"):
        runs.check_same_command(dict(stage, opts=["SEED", "1"]), directory, "--force")
    for name in runs.STAGE_FILES:
        (tmp_path / name).write_text("x")
    (tmp_path / "train.log").write_text("kept")
    runs.clear_stage(directory)
    assert sorted(os.listdir(directory)) == ["train.log"]


def test_thread_env_shares_the_cores():
    assert runs.thread_env(1) is None
    env = runs.thread_env(2)
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))


# ---------------------------------------------------------------- carry-over


def _teacher(**kw):
    teacher = {"command": "python train_net.py T", "weights_sha256": "a" * 64, "bbox": {}}
    teacher.update(kw)
    return teacher


def test_same_teacher_needs_the_command_and_the_weights():
    assert carry_over.same_teacher(_teacher(), _teacher())[0]
    same, why = carry_over.same_teacher(_teacher(command="other"), _teacher())
    assert not same and "another command" in why
    same, why = carry_over.same_teacher(_teacher(weights_sha256="b" * 64), _teacher())
    assert not same and "different teacher weights" in why
    # a json without a hash: the evaluation to the last digit
    bbox = {m: 1.5 for m in runs.SEED_METRICS}
    old = _teacher(weights_sha256=None, bbox=bbox)
    assert carry_over.same_teacher(old, _teacher(bbox=dict(bbox)))[0]
    assert not carry_over.same_teacher(old, _teacher(bbox=dict(bbox, APm=1.4)))[0]


def test_carry_over_takes_recorded_runs_of_the_planned_commands(tmp_path, capsys):
    planned = [
        {"name": f"{row}/seed_0", "row": row, "seed": 0, "config": "c.yaml", "opts": [row]}
        for row in ("baseline", "tbd")
    ]
    planned.append(dict(planned[0], name="baseline_2x/seed_0", row="baseline_2x", opts=["2x"]))
    record = {"AP": 1.0}
    previous = {
        "generated_by": "python tools/benchmark_ablation.py",
        "date": "then",
        "git_commit": "c0ffee",
        "git_dirty": False,
        "teacher": _teacher(),
        "rows": {
            "baseline": {"seeds": {"0": dict(record, command=runs.command_line(planned[0]))}},
            "tbd": {"seeds": {"0": dict(record, command="python train_net.py other")}},
        },
        "extra_runs": {
            "baseline_2x/seed_0": dict(record, command=runs.command_line(planned[2])),
        },
        "wall_seconds": {"baseline/seed_0": 60.0},
    }
    output = str(tmp_path)
    carried = carry_over.carry_over(previous, _teacher(), planned, output, "r")
    assert sorted(carried) == ["baseline/seed_0", "baseline_2x/seed_0"]  # tbd: another command
    assert carried["baseline/seed_0"]["wall_seconds"] == 60.0
    origin = carried["baseline/seed_0"]["carried_over_from"]
    assert origin["date"] == "then" and "sha256" in origin["teacher"]
    assert "2 runs carried over" in capsys.readouterr().out
    # a run finished in the output directory is read from there
    (tmp_path / "baseline" / "seed_0").mkdir(parents=True)
    _metrics(tmp_path / "baseline" / "seed_0", [{f"bbox/{m}": 1.0 for m in runs.METRICS}])
    (tmp_path / "baseline" / "seed_0" / "model_final.pth").write_bytes(b"")
    assert "baseline/seed_0" not in carry_over.carry_over(
        previous, _teacher(), planned, output, "r"
    )
    # another teacher: nothing
    assert carry_over.carry_over(previous, _teacher(command="x"), planned, output, "r") == {}
    assert "nothing carried over" in capsys.readouterr().out


def test_weights_sha256_sees_every_tensor(tmp_path):
    a = {"model": {"w": torch.ones(3), "b": torch.zeros(2)}}
    torch.save(a, tmp_path / "a.pth")
    torch.save({"model": {"b": torch.zeros(2), "w": torch.ones(3)}}, tmp_path / "b.pth")
    torch.save({"model": {"w": torch.ones(3), "b": torch.tensor([0.0, 1e-7])}}, tmp_path / "c.pth")
    h = [carry_over.weights_sha256(str(tmp_path / f"{n}.pth")) for n in "abc"]
    assert h[0] == h[1] != h[2]


# ---------------------------------------------------------------- numbers in reports


def test_tables():
    assert tables.fmt(None) == tables.fmt(NAN) == "n/a"
    assert tables.fmt(1.234, "+.1f") == "+1.2"
    assert tables.mean([1.0, None, NAN, 3.0]) == 2.0 and math.isnan(tables.mean([None]))
    assert math.isnan(tables.std([1.0, None]))  # one seed: unknown, not 0
    assert tables.std([1.0, 3.0]) == pytest.approx(math.sqrt(2))
    assert tables.nan_to_none({"a": [NAN, 1.0], "b": {"c": NAN}}) == {
        "a": [None, 1.0],
        "b": {"c": None},
    }
    assert tables.markdown_table(["a", "b"], [[1, "x"]]) == ["| a | b |", "|---|---|", "| 1 | x |"]


# ---------------------------------------------------------------- the synthetic targets


def _rows(**aps):
    """{row: {"mean", "std"}} from row=(mean, std) keyword arguments."""
    return {row: {"mean": m, "std": s} for row, (m, s) in aps.items()}


def synthetic_targets(rows, teacher_ap):
    return T.evaluate(regimes.SYNTHETIC.targets, T.Evidence(rows, teacher_ap))


GOOD = dict(
    baseline=(30.0, 0.4),
    feature_mimic=(31.0, 0.5),
    logit_kd=(32.0, 0.3),
    hd_only=(33.0, 0.2),
    tfd_only=(32.5, 0.6),
    tbd=(35.0, 0.5),
)


def _status(targets, n=7):
    assert len(targets) == n
    return [t["status"] for t in targets]


def test_targets_all_pass():
    targets = synthetic_targets(_rows(**GOOD), teacher_ap=38.0)
    assert _status(targets) == ["PASS"] * 7
    # the numbers are in the details: gain +5, gap closed 5 / 8 = 62%, 3 x max std = 1.5
    assert "+5.00" in targets[0]["detail"]
    assert "62%" in targets[1]["detail"]
    assert "= 1.50" in targets[2]["detail"]
    # the statements of docs/results/synthetic.md
    assert [t["target"] for t in targets] == [
        "TBD AP >= baseline AP + 3.0",
        "TBD closes >= 50% of the teacher - baseline gap",
        "TBD's gain > 3 x the seed std (larger of TBD's and baseline's)",
        "HD only AP > baseline AP",
        "TFD only AP > baseline AP",
        "feature mimic AP < TBD AP",
        "logit KD AP < TBD AP",
    ]


def test_targets_fail_with_numbers():
    rows = dict(GOOD, tbd=(31.0, 0.5), hd_only=(29.0, 0.2), feature_mimic=(32.0, 0.1))
    targets = synthetic_targets(_rows(**rows), teacher_ap=38.0)
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
    targets = synthetic_targets(_rows(**rows), teacher_ap=36.0)
    assert _status(targets)[:3] == ["PASS", "PASS", "PASS"]
    # TBD's own std would pass (3 x 0.2 = 0.6 < 3.5) but the baseline's does not (3.6 > 3.5)
    rows = dict(GOOD, baseline=(30.0, 1.2), tbd=(33.5, 0.2))
    targets = synthetic_targets(_rows(**rows), teacher_ap=36.0)
    assert _status(targets)[2] == "FAIL" and "3.60" in targets[2]["detail"]
    # gain equal to 3 x std is not "greater than"
    rows = dict(GOOD, baseline=(30.0, 1.0), tbd=(33.0, 0.5))
    assert _status(synthetic_targets(_rows(**rows), teacher_ap=36.0))[2] == "FAIL"


@pytest.mark.parametrize("teacher_ap", [30.0, 29.0, -1.0])
def test_targets_no_gap_to_close_fails_without_dividing(teacher_ap):
    targets = synthetic_targets(_rows(**GOOD), teacher_ap=teacher_ap)  # baseline 30
    assert targets[1]["status"] == "FAIL"
    assert "no gap" in targets[1]["detail"]
    assert _status(targets)[0] == "PASS"  # the other targets are unaffected


def test_targets_missing_numbers_are_not_applicable():
    # one seed: no std, so the noise target cannot be judged; the others can
    one_seed = {k: (m, NAN) for k, (m, _) in GOOD.items()}
    expected = ["PASS", "PASS", "N/A", "PASS", "PASS", "PASS", "PASS"]
    assert _status(synthetic_targets(_rows(**one_seed), teacher_ap=38.0)) == expected
    # a subset of rows, an unknown teacher AP
    subset = {k: GOOD[k] for k in ("baseline", "tbd")}
    expected = ["PASS", "N/A", "PASS", "N/A", "N/A", "N/A", "N/A"]
    assert _status(synthetic_targets(_rows(**subset), teacher_ap=NAN)) == expected
    # a row whose evaluation produced no AP (None in a reloaded json)
    rows = _rows(**GOOD)
    rows["hd_only"]["mean"] = None
    assert _status(synthetic_targets(rows, teacher_ap=38.0))[3] == "N/A"


# ---------------------------------------------------------------- the converged targets


def _curve(*aps, iters=(334, 668, 1002, 1336, 1670, 2000)):
    return [{"iter": i, "AP": ap} for i, ap in zip(iters, aps)]


def test_plateau_flat_rising_and_too_few_points():
    flat = {"0": _curve(20, 25, 28, 29.5, 30.0, 30.2), "1": _curve(21, 26, 29, 29.7, 30.4, 30.0)}
    judged = T.judge_plateau(flat, 2000, max_range=1.0)
    # the last third: 1336, 1670, 2000; means 29.6, 30.2, 30.1 -> range 0.6
    assert judged["status"] == "PASS" and judged["range"] == pytest.approx(0.6)
    assert [it for it, _ in judged["points"]] == [1336, 1670, 2000]
    assert "29.60, 30.20, 30.10" in judged["detail"] and "0.60" in judged["detail"]
    rising = {"0": _curve(10, 14, 18, 22, 25, 28)}
    judged = T.judge_plateau(rising, 2000, max_range=1.0)
    assert judged["status"] == "FAIL" and judged["range"] == pytest.approx(6.0)
    # exactly the range passes (<=)
    assert T.judge_plateau({"0": _curve(0, 0, 0, 5, 6, 5.5)}, 2000, 1.0)["status"] == "PASS"
    # one evaluation in the last third (only the final one): not judged
    few = {"0": [{"iter": 1000, "AP": 20.0}, {"iter": 2000, "AP": 21.0}]}
    assert T.judge_plateau(few, 2000, 1.0)["status"] == "N/A"
    # unknown APs (a toy model detects nothing) do not count
    unknown = {"0": _curve(1, 2, 3, NAN, NAN, 5)}
    assert T.judge_plateau(unknown, 2000, 1.0)["status"] == "N/A"
    # a seed that misses an evaluation: only the evaluations of every seed count
    partial = {"0": _curve(20, 25, 28, 29.5, 30.0, 30.2), "1": _curve(21, 26, 29, 30, 30.5)}
    assert [it for it, _ in T.judge_plateau(partial, 2000, 1.0)["points"]] == [1336, 1670]


CONVERGED_GOOD = dict(
    baseline=(30.0, 0.3),
    feature_mimic=(31.0, 0.5),
    logit_kd=(31.5, 0.3),
    hd_only=(32.0, 0.2),
    tfd_only=(32.5, 0.4),
    tbd=(33.5, 0.4),
)


def _converged_evidence(**changes):
    facts = dict(
        rows=_rows(**CONVERGED_GOOD),
        teacher_ap=38.0,
        harmony={
            "teacher": {"harmonious_fraction": 0.15, "spearman": 0.6, "count": 5000},
            "baseline": {"harmonious_fraction": 0.05, "spearman": 0.3},
            "tbd": {"harmonious_fraction": 0.09, "spearman": 0.45},
        },
        curves={"baseline": {"0": _curve(20, 25, 28, 29.6, 30.0, 30.1)}},
        max_iter=2000,
        doubling={"seed": "0", "iters": 2000, "AP": 30.1, "AP_2x": 30.6},
        schedules={"baseline": {1: 30.1, 2: 30.6, 4: 30.9}, "tbd": {1: 33.6, 2: 34.0, 4: 34.2}},
    )
    facts.update(changes)
    return T.Evidence(**facts)


def test_converged_targets_pass_with_their_numbers():
    results = T.evaluate(regimes.CONVERGED.targets, _converged_evidence())
    assert _status(results, 15) == ["PASS"] * 15
    details = {r["target"]: r["detail"] for r in results}
    text = "\n".join(f"{k}: {v}" for k, v in details.items())
    assert "teacher 38.00 - baseline 30.00 = +8.00 AP (needs >= +6.0)" in text
    assert "teacher 15.0% of 5000 foreground anchors (needs >= 10%)" in text
    assert "max - min = 0.50 (needs <= 1.0)" in text
    assert "30.60 after 4000 (+0.50; needs < +1.0)" in text
    assert "TBD 33.50 - baseline 30.00 = +3.50 AP (needs >= +2.0)" in text
    assert "= 0.40)" in text  # TBD vs TFD only: max(std 0.4, 0.4)
    assert "|TBD 0.090 - teacher 0.150| = 0.060 vs |baseline 0.050 - teacher 0.150| = 0.100" in text
    assert "|TBD 0.450 - teacher 0.600| = 0.150" in text
    assert "30.60 at 2x the schedule, 30.90 at 4x (+0.30; needs < +1.0)" in text
    assert "TBD 33.50 (1x, mean over seeds) - baseline 30.90 (4x, first seed) = +2.60 AP" in text
    assert "4x the schedule, first seed: TBD 34.20 - baseline 30.90 = +3.30 AP" in text


def test_converged_targets_fail_honestly():
    rows = _rows(**dict(CONVERGED_GOOD, tbd=(32.8, 0.4), hd_only=(31.0, 0.2)))
    facts = _converged_evidence(
        rows=rows,
        teacher_ap=35.0,  # only +5 over the baseline
        harmony={
            "teacher": {"harmonious_fraction": 0.006, "spearman": 0.2, "count": 900},
            "baseline": {"harmonious_fraction": 0.005, "spearman": 0.25},
            "tbd": {"harmonious_fraction": 0.001, "spearman": 0.1},
        },
        curves={"baseline": {"0": _curve(10, 14, 18, 22, 25, 28)}},
        doubling={"seed": "0", "iters": 2000, "AP": 28.0, "AP_2x": 31.0},
        schedules={"baseline": {1: 28.0, 2: 31.0, 4: 33.0}, "tbd": {1: 32.8, 2: 33.9, 4: 34.5}},
    )
    status = _status(T.evaluate(regimes.CONVERGED.targets, facts), 15)
    assert status == [
        "FAIL",  # teacher +5.0 < +6.0
        "FAIL",  # teacher 0.6% harmonious < 10%
        "FAIL",  # rising: 22, 25, 28 over the last third
        "FAIL",  # 2x adds +3.0
        "FAIL",  # 4x adds +2.0 over 2x
        "PASS",  # TBD +2.8 >= +2.0
        "PASS",  # 2.8 > 3 x 0.4
        "PASS",  # TBD 32.8 > feature mimic 31.0
        "PASS",  # TBD 32.8 > logit KD 31.5
        "FAIL",  # HD only 31.0 < logit KD 31.5
        "FAIL",  # TBD - TFD only = 0.3, not > max std 0.4
        "FAIL",  # |0.001 - 0.006| = 0.005 is not < |0.005 - 0.006| = 0.001
        "FAIL",  # |0.1 - 0.2| = 0.1 is not < |0.25 - 0.2| = 0.05
        "FAIL",  # TBD 32.8 is below the baseline at 4x, 33.0
        "FAIL",  # at 4x TBD is only +1.5 ahead
    ]


def test_converged_targets_without_their_measurements_are_not_applicable():
    facts = T.Evidence(rows=_rows(baseline=(30.0, NAN), tbd=(33.0, NAN)), teacher_ap=38.0)
    results = T.evaluate(regimes.CONVERGED.targets, facts)
    status = _status(results, 15)
    assert status[0] == "PASS" and status[5] == "PASS"  # AP only
    assert status[1] == status[2] == status[3] == status[4] == "N/A"  # no harmony, curve, 2x run
    assert status[6] == "N/A" and status[10] == "N/A"  # one seed: no std
    assert status[11] == status[12] == status[13] == status[14] == "N/A"


def test_longer_schedule_targets_use_what_was_run():
    """Only the baseline at 2x: the last-doubling target needs 4x (N/A), TBD is compared with the
    baseline's longest (2x) run; TBD's own longer runs are needed for the gain at 2x."""
    targets = [
        T.last_doubling_adds_little(1.0),
        T.tbd_over_longest_baseline(2.0),
        T.gain_at_longest(2.0),
    ]
    facts = T.Evidence(
        rows=_rows(baseline=(10.0, 0.1), tbd=(14.0, 0.1)),
        schedules={"baseline": {1: 10.0, 2: 11.5}},
    )
    results = T.evaluate(targets, facts)
    assert [r["status"] for r in results] == ["N/A", "PASS", "N/A"]
    assert "baseline 11.50 (2x, first seed) = +2.50 AP" in results[1]["detail"]
    facts.schedules["tbd"] = {1: 14.2, 2: 13.0}
    facts.schedules["baseline"][4] = float("nan")  # a 4x run with no evaluation: not longest
    results = T.evaluate(targets, facts)
    assert [r["status"] for r in results] == ["N/A", "PASS", "FAIL"]
    assert (
        "2x the schedule, first seed: TBD 13.00 - baseline 11.50 = +1.50 AP" in results[2]["detail"]
    )


# ---------------------------------------------------------------- the regimes


def test_regimes_are_data_with_their_constants():
    assert list(regimes.REGIMES) == ["synthetic", "converged"]
    s, c = regimes.SYNTHETIC, regimes.CONVERGED
    assert (
        s.row_names
        == c.row_names
        == [
            "baseline",
            "feature_mimic",
            "logit_kd",
            "hd_only",
            "tfd_only",
            "tbd",
        ]
    )
    assert (s.student_iters, s.teacher_iters, s.output, s.results) == (
        1000,
        3000,
        "output/ablation",
        "docs/results/synthetic",
    )
    assert not (s.harmony or s.evaluations or s.longer or s.details)
    assert len(s.targets) == 7
    assert (c.student_iters, c.teacher_iters) == (
        regimes.CONVERGED_STUDENT_ITERS,
        regimes.CONVERGED_TEACHER_ITERS,
    )
    assert (c.output, c.results) == ("output/converged", "docs/results/converged")
    assert c.harmony and c.evaluations == regimes.CONVERGED_EVALUATIONS
    assert c.longer == regimes.CONVERGED_LONGER == (2, 4) and c.longer_rows == ("baseline", "tbd")
    assert c.curve_rows == ("baseline", "tbd") and len(c.targets) == 15
    assert c.tuning.iters == c.student_iters
    for regime in regimes.REGIMES.values():
        for config in regime.configs.values():
            assert os.path.isfile(runs.in_repo(config)), config
        assert regime.tuning.heldout_root != "datasets/tbd_synthetic"


# ---------------------------------------------------------------- figure and report


def test_histograms_round_trip_and_plot_n_models(tmp_path):
    g = torch.Generator().manual_seed(0)
    s, u = torch.rand(500, generator=g), torch.rand(500, generator=g)
    counts = figures.score_iou_histogram(s, u, bins=10)
    assert counts.shape == (10, 10) and counts.sum() == 500
    assert counts[int(s[0] * 10), int(u[0] * 10)] >= 1  # rows: score, columns: IoU
    assert figures.score_iou_histogram([1.0], [1.0], bins=4)[3, 3] == 1  # 1 is in the last bin
    encoded = figures.encode_histogram(counts)
    assert len(encoded["rows"]) == 10 and json.loads(json.dumps(encoded)) == encoded
    assert np.array_equal(figures.decode_histogram(encoded), counts)

    stats = {"count": 500, "harmonious_fraction": 0.3, "mean_harmony_score": 0.2, "spearman": 0.1}
    panels = [(name, counts, stats) for name in ("teacher", "baseline", "TBD")]
    panels.append(("empty", np.zeros((10, 10), dtype=np.int64), {"count": 0}))
    path = tmp_path / "deep" / "fig.png"
    figures.plot_score_vs_iou(panels, 0.2, str(path))
    with Image.open(path) as image:
        assert image.size[0] >= 4 * 400 and image.size[1] >= 300
        assert len(image.convert("L").getcolors(1 << 24)) > 20


def test_synthetic_markdown_is_made_from_its_json_alone():
    """docs/results/synthetic.md is what the library makes of docs/results/synthetic.json: the
    report format did not change (the committed file predates the "thread(s)" wording)."""
    with open(runs.in_repo("docs/results/synthetic.json")) as f:
        report = json.load(f)
    with open(runs.in_repo("docs/results/synthetic.md")) as f:
        committed = f.read().replace("1 threads each", "1 thread(s) each")
    assert ablation_report.markdown(report, "docs/results/synthetic") == committed
