#!/usr/bin/env python
"""
The ablation benchmark: every row of docs/method.md's "Baselines are switches" table, trained for
several seeds and evaluated with COCOEvaluator on the test split, in one of two regimes:

    synthetic   configs/Synthetic/*_R18.yaml, results docs/results/synthetic (the default)
    converged   configs/Converged/*.yaml, results docs/results/converged: students trained until
                the baseline has plateaued (AP curves; the baseline and TBD also at 2x and 4x the
                schedule), harmony statistics of every run and of the teacher, a score-vs-IoU
                figure

    baseline        no distillation
    feature_mimic   FitNet: HD off, TFD over every location, fixed balance
    logit_kd        TFD off, HD with the teacher's raw scores, uniform regression
    hd_only         Harmony Distillation only
    tfd_only        Task-decoupled Feature Distillation only
    tbd             HD + TFD (the full method)

One teacher (the one the regime's tbd config names; seed 0) is trained first, or reused when its
model_final.pth exists. Every run is, in a subprocess,

    python train_net.py --config-file ROW.yaml SEED s SOLVER.MAX_ITER n
        SOLVER.STEPS (0.75 n, 0.9 n) OUTPUT_DIR <output>/ROW/seed_s
        MODEL.TBD.TEACHER.WEIGHTS <output>/teacher/model_final.pth   (distilled rows)

Finished runs (same command) are reused, so an interrupted benchmark continues where it stopped
(``--force`` trains them again); runs recorded in an earlier ``<results>.json`` are carried over
when made by the same command from the same teacher (identical weights). It writes
``<results>.json`` (every number, the command line, versions, machine, date, git commit, where
each run came from) and ``<results>.md`` (generated, never edited by hand). The val split is the
test data: this tool only reports on it and tunes nothing. See docs/benchmark.md.

    python tools/benchmark_ablation.py --jobs 2                     # synthetic: 6 rows x 3 seeds
    python tools/benchmark_ablation.py --regime converged --jobs 2
    python tools/benchmark_ablation.py --rows baseline tbd --seeds 0
    python tools/benchmark_ablation.py --toy --seeds 0 1            # seconds: tiny data and models

Relative paths (--output, --results) are relative to the repo root, like the paths in configs.
"""

import argparse
import sys

from tbd.experiments import ablation
from tbd.experiments.regimes import REGIMES, SYNTHETIC
from tbd.experiments.runs import in_repo


def parse_args(argv=None) -> ablation.Settings:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--regime", choices=list(REGIMES), default="synthetic", help="default synthetic")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    p.add_argument(
        "--iters", type=int, default=None, help="student schedule (default: the regime's)"
    )
    p.add_argument("--teacher-iters", type=int, default=None, help="default: the regime's")
    p.add_argument("--rows", nargs="+", choices=SYNTHETIC.row_names, default=None, help="all")
    p.add_argument("--output", default=None, help="default: the regime's (toy: ..._toy)")
    p.add_argument(
        "--results",
        default=None,
        help="path of the results without extension: writes .json and .md "
        "(default docs/results/<regime>; toy: <output>/ablation)",
    )
    p.add_argument("--toy", action="store_true", help="tiny data, models and schedule (tests)")
    p.add_argument("--force", action="store_true", help="train finished runs again")
    p.add_argument(
        "--retrain-teacher",
        action="store_true",
        help="train the teacher again even when its model_final.pth exists (implies --force)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="student runs trained at once, each with cores / jobs torch threads (default 1)",
    )
    p.add_argument(
        "--no-carry-over",
        action="store_true",
        help="train every run not finished in --output, even when <results>.json records it",
    )
    args = p.parse_args(argv)
    try:
        return ablation.make_settings(
            **vars(args),
            argv=list(sys.argv[1:] if argv is None else argv),
        )
    except ValueError as e:
        p.error(str(e))


def main(argv=None):
    settings = parse_args(argv)
    ablation.run(settings)
    with open(in_repo(settings.results) + ".md") as f:
        print(f.read())
    print(f"[ablation] results: {settings.results}.md, {settings.results}.json")


if __name__ == "__main__":
    main()
