"""tools/tune_distillation.py (tbd.experiments.tuning) never scores on the benchmark's test split,
in either regime, and plans the commands docs/results/tuning.json recorded."""

import json
import os
import sys

import pytest
from conftest import REPO, load_cfg

from tbd.experiments import runs, tuning
from tbd.experiments.regimes import REGIMES

sys.path.insert(0, os.path.join(REPO, "tools"))
import tune_distillation as tune  # noqa: E402


@pytest.mark.parametrize("regime", list(REGIMES))
def test_every_candidate_trains_on_train_and_scores_on_the_heldout_split_only(regime):
    args = tune.parse_args(["--regime", regime])
    r = REGIMES[regime]
    assert (args.iters, args.output, args.results) == (
        r.tuning.iters,
        r.tuning.output,
        r.tuning.results,
    )
    assert args.teacher_weights == r.tuning.teacher_weights
    planned = tune.plan(args)
    assert [name for name, _, _ in planned] == list(tune.CANDIDATES)
    assert "baseline" in tune.CANDIDATES
    root = r.tuning.heldout_root
    for name, config, opts in planned:
        row = tune.CANDIDATES[name][0]
        assert config == r.configs[row], name  # the regime's own configs
        cfg = load_cfg(config, opts)
        test_split = load_cfg(r.configs["tbd"]).DATASETS.TEST[0]
        assert cfg.DATASETS.TRAIN == load_cfg(r.configs["tbd"]).DATASETS.TRAIN, name
        assert cfg.DATASETS.TEST == (tuning.HELDOUT_NAME,), name
        assert test_split not in " ".join(opts)
        assert cfg.DATASETS.COCO_SPECS == [
            f"{tuning.HELDOUT_NAME}={root}/annotations/val.json:{root}/val"
        ]
        assert cfg.OUTPUT_DIR == os.path.join(args.output, name)
        assert cfg.SOLVER.MAX_ITER == tuning.candidate_iters(tune.CANDIDATES[name], args.iters)
        assert cfg.SOLVER.STEPS == tuple(int(cfg.SOLVER.MAX_ITER * f) for f in (0.75, 0.9))
        if cfg.MODEL.META_ARCHITECTURE == "TBDRetinaNet":
            assert cfg.MODEL.TBD.TEACHER.WEIGHTS == args.teacher_weights


def test_synthetic_defaults_plan_the_recorded_commands():
    # docs/results/tuning.md was made from the demo's teacher of the time (a synthetic-regime
    # teacher_R18_wide); the demo now trains the converged regime's models, so the default
    # teacher is the synthetic benchmark's, and the recorded run is rerun by naming its teacher.
    with open(os.path.join(REPO, "docs", "results", "tuning.json")) as f:
        recorded = json.load(f)
    argv = recorded["command"].split()[2:]
    assert tune.parse_args(argv).teacher_weights == REGIMES["synthetic"].tuning.teacher_weights
    assert REGIMES["synthetic"].tuning.teacher_weights.startswith(REGIMES["synthetic"].output)
    argv += ["--teacher-weights", recorded["teacher_weights"], "--only", *recorded["candidates"]]
    args = tune.parse_args(argv)
    assert args.iters == recorded["iters"] == 500
    for name, config, opts in tune.plan(args):
        stage = {"name": name, "config": config, "opts": opts}
        assert runs.command_line(stage) == recorded["candidates"][name]["command"], name


@pytest.mark.parametrize("regime", list(REGIMES))
def test_heldout_split_is_generated_with_another_seed_than_the_benchmark(regime, monkeypatch):
    import tbd.synthetic

    calls = []
    monkeypatch.setattr(
        tbd.synthetic, "make_synthetic_coco", lambda root, **kw: calls.append((root, kw))
    )
    r = REGIMES[regime]
    tuning.make_heldout(r)
    data = load_cfg(r.configs["baseline"], []).DATASETS.SYNTHETIC
    assert len(calls) == 1
    root, kw = calls[0]
    assert kw["seed"] != data.SEED and kw["num_val"] == 300
    assert kw["image_size"] == data.IMAGE_SIZE  # the regime's data, other images
    assert root == runs.in_repo(r.tuning.heldout_root)
    assert os.path.abspath(root) != os.path.abspath(runs.in_repo(data.ROOT))


def test_results_without_the_baseline_show_no_gain(tmp_path, monkeypatch):
    # `--only` may leave the baseline out: the gain column is then "-", never "+nan"
    monkeypatch.setattr(tuning, "in_repo", lambda p: str(tmp_path / p))
    record = {"AP": 12.5, "AP50": 28.0, "AP75": 9.0, "s_per_iter": 0.06, "extra_opts": []}
    text = tuning.write_results(
        REGIMES["converged"], "cmd", "teacher.pth", 10, {"logit_kd": record}, "results/t"
    )
    assert "nan" not in text
    assert "| logit_kd | `(config as is)` | 12.50 | 28.00 | 9.00 | - | 0.060 |" in text
    with_baseline = {"baseline": {**record, "AP": 10.0}, "logit_kd": record}
    text = tuning.write_results(
        REGIMES["converged"], "cmd", "teacher.pth", 10, with_baseline, "results/t"
    )
    assert "| 12.50 | 28.00 | 9.00 | +2.50 |" in text


def test_a_candidate_with_its_own_schedule_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "in_repo", lambda p: str(tmp_path / p))
    name = "batch32_lr0.08_1500"
    row, opts, iters = tune.CANDIDATES[name]
    ((_, _, planned),) = tuning.plan(
        REGIMES["converged"], tune.CANDIDATES, [name], 6000, "t.pth", "o"
    )
    assert load_cfg(REGIMES["converged"].configs[row], planned).SOLVER.MAX_ITER == iters == 1500
    record = {"AP": 9.0, "AP50": 20.0, "AP75": 6.0, "s_per_iter": 0.1, "extra_opts": opts}
    same = {**record, "extra_opts": [], "iters": 6000}
    results = {"baseline": same, name: {**record, "iters": iters}}
    text = tuning.write_results(REGIMES["converged"], "cmd", "t.pth", 6000, results, "results/t")
    assert "| baseline | `(config as is)` | 9.00 |" in text  # the common schedule: not repeated
    assert f"| {name} | `{' '.join(opts)}`, 1500 iterations | 9.00 |" in text
