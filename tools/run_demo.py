#!/usr/bin/env python
"""
The embedded default demo: on the synthetic dataset in its plain look (64 px images, see
DEMO_DATA), train a teacher (reused when already trained), then a baseline student and a TBD
student at once (one core each), with the models of the converged regime (configs/Converged/) on
short schedules; evaluate all three with COCOEvaluator, and write ``<output>/report.md`` with AP,
the harmony of each model's predictions on the val split (tbd.analysis, as
tools/analyze_harmony.py), train time per iteration, and a picture of the three models'
detections.

    python tools/run_demo.py                 # the default demo (the README's first command)
    python tools/run_demo.py --toy           # seconds: a tiny dataset, models and schedule
"""

import argparse
import json
import os
import shlex
import time
from datetime import datetime, timezone

import torch

from tbd.experiments.ablation import teacher_config, toy_switches
from tbd.experiments.environment import cpu_name
from tbd.experiments.figures import detection_picture
from tbd.experiments.harmony_runs import register_test_split, run_harmony
from tbd.experiments.regimes import CONVERGED, TOY_STUDENT_CONFIG, TOY_TEACHER_CONFIG
from tbd.experiments.runs import load_cfg, read_metrics, run_stage, schedule, toy_data, train_stages
from tbd.experiments.tables import fmt

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
NAMES = {
    "teacher": "teacher R18 width 32",
    "baseline": "student R18 width 16",
    "tbd": "student R18 width 16 + TBD",
}
PICTURE_SCORE = 0.3  # detections drawn: score >= this
# The demo's data: the synthetic generator at 64 px with its easier look (tbd/synthetic.py): no
# background clutter or distractors, objects from 16 px, at most 4 per image. The benchmarks'
# data (the defaults) is too hard for models trained a few minutes to be mostly right.
DEMO_DATA = [
    "DATASETS.SYNTHETIC.ROOT",
    "datasets/tbd_synthetic_64_plain",
    "DATASETS.SYNTHETIC.CLUTTER",
    "False",
    "DATASETS.SYNTHETIC.MIN_OBJECT_SIZE",
    "16",
    "DATASETS.SYNTHETIC.MAX_OBJECTS",
    "4",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="output/demo")
    p.add_argument("--teacher-iters", type=int, default=None, help="default 1200 (toy: 4)")
    p.add_argument("--student-iters", type=int, default=None, help="default 600 (toy: 4)")
    p.add_argument(
        "--batch",
        type=int,
        default=32,
        help="images per step of all three trainings, with the configs' learning rate scaled by "
        "batch / SOLVER.IMS_PER_BATCH (default 32; the converged baseline at batch 32: "
        "docs/results/tuning_converged_solver.md)",
    )
    p.add_argument("--toy", action="store_true", help="tiny data, models and schedule (tests)")
    p.add_argument("--retrain-teacher", action="store_true")
    args = p.parse_args(argv)
    if args.teacher_iters is None:
        args.teacher_iters = 4 if args.toy else 1200
    if args.student_iters is None:
        args.student_iters = 4 if args.toy else 600
    return args


def batch_opts(config_file, batch):
    """SOLVER.IMS_PER_BATCH ``batch`` and the config's learning rate scaled linearly with it."""
    cfg = load_cfg(config_file)
    lr = cfg.SOLVER.BASE_LR * batch / cfg.SOLVER.IMS_PER_BATCH
    return ["SOLVER.IMS_PER_BATCH", str(batch), "SOLVER.BASE_LR", f"{lr:g}"]


def stages(args):
    """(name, config file, extra opts) of the three trainings."""
    out = args.output
    teacher_weights = os.path.join(out, "teacher", "model_final.pth")
    if args.toy:
        configs = {
            "teacher": TOY_TEACHER_CONFIG,
            "baseline": TOY_STUDENT_CONFIG,
            "tbd": TOY_STUDENT_CONFIG,
        }
        data = toy_data(out)
    else:
        configs = {
            "teacher": teacher_config(CONVERGED),
            "baseline": CONVERGED.configs["baseline"],
            "tbd": CONVERGED.configs["tbd"],
        }
        data = DEMO_DATA

    result = []
    for name in ("teacher", "baseline", "tbd"):
        iters = args.teacher_iters if name == "teacher" else args.student_iters
        opts = data + schedule(iters) + ["OUTPUT_DIR", os.path.join(out, name)]
        if not args.toy:
            opts = batch_opts(configs[name], args.batch) + opts
        if name == "baseline" and args.toy:  # the quick TBD config made the baseline (HD, TFD off)
            opts += toy_switches(CONVERGED, "baseline")
        if name == "tbd":
            opts += ["MODEL.TBD.TEACHER.CONFIG_FILE", configs["teacher"]]
            opts += ["MODEL.TBD.TEACHER.WEIGHTS", teacher_weights]
            opts += ["MODEL.TBD.WARMUP_ITERS", str(max(1, iters // 6))]
        result.append((name, configs[name], opts))
    return result


def load_model(config_file, opts, weights):
    from tbd.checkpoint import load_eval_model

    cfg = load_cfg(config_file, opts)
    cfg.MODEL.WEIGHTS = weights
    return cfg, load_eval_model(cfg)


def data_description(cfg) -> str:
    """What the synthetic data of ``cfg`` looks like, in words."""
    syn = cfg.DATASETS.SYNTHETIC
    return (
        f"{syn.IMAGE_SIZE} px, {'cluttered' if syn.CLUTTER else 'plain'} backgrounds, 1 to "
        f"{syn.MAX_OBJECTS} objects per image, {syn.MIN_OBJECT_SIZE} px to 60% of the side"
    )


def write_report(args, results, commands, harmony, elapsed, data):
    import detectron2

    path = os.path.join(args.output, "report.md")
    lines = [
        "# TBD demo report",
        "",
        f"Made by `python tools/run_demo.py{' --toy' if args.toy else ''}` on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} in {elapsed / 60:.1f} min; "
        f"{cpu_name()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, detectron2 {detectron2.__version__}.",
        "",
        f"COCO box AP on the synthetic val split ({data}; COCOEvaluator). Harmony of the "
        "foreground anchors on val (tbd.analysis, as tools/analyze_harmony.py): harmonious = "
        "proportion with "
        "|score - IoU| <= 0.2, Spearman = rank correlation of score and IoU, mean HS = mean "
        "Harmony Score; s/iter = median train step time.",
        "",
        "| model | " + " | ".join(METRICS) + " | harmonious | Spearman | mean HS | s/iter |",
        "|---|" + "---|" * (len(METRICS) + 4),
    ]
    for name in ("teacher", "baseline", "tbd"):
        r, h = results[name], harmony[name]["statistics"]["anchors"]
        aps = " | ".join(f"{r['bbox'].get(m, float('nan')):.1f}" for m in METRICS)
        lines.append(
            f"| {NAMES[name]} | {aps} | {fmt(h['harmonious_fraction'], '.3f')} | "
            f"{fmt(h['spearman'], '.2f')} | {fmt(h['mean_harmony_score'], '.3f')} | "
            f"{r['s_per_iter']:.2f} |"
        )
    ap = {k: results[k]["bbox"].get("AP", float("nan")) for k in results}
    gap = ap["teacher"] - ap["baseline"]
    closed = (ap["tbd"] - ap["baseline"]) / gap * 100 if gap > 0 else float("nan")
    lines += [
        "",
        f"TBD - baseline: {ap['tbd'] - ap['baseline']:+.1f} AP; "
        f"teacher-student gap closed: {closed:.0f}%.",
        "",
        "![teacher, baseline and TBD detections](detections.png)",
        "",
        "Rows: ground truth, teacher, baseline student, TBD student, on the first val images "
        f"(detections with score >= {PICTURE_SCORE}).",
        "",
        "## Commands",
        "",
    ]
    lines += [f"    {c}" for c in commands]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    os.makedirs(args.output, exist_ok=True)
    plan = stages(args)
    (_, teacher_config_file, teacher_opts), students = plan[0], plan[1:]
    commands = []
    teacher_weights = os.path.join(args.output, "teacher", "model_final.pth")
    recorded = os.path.join(args.output, "teacher", "command.json")
    if os.path.isfile(teacher_weights) and not args.retrain_teacher:
        print(f"[demo] teacher: reusing {teacher_weights} (--retrain-teacher to train it again)")
        if os.path.isfile(recorded):
            commands.append(shlex.join(["python"] + json.load(open(recorded))["command"]))
    else:
        commands.append(run_stage("teacher", teacher_config_file, teacher_opts, args.output))
    # the two students at once, one core each
    train_stages(
        [{"name": n, "config": c, "opts": o} for n, c, o in students],
        os.path.abspath(args.output),
        jobs=2,
        force=True,
        prefix="demo",
    )
    for name, config_file, opts in students:
        commands.append(shlex.join(["python", "train_net.py", "--config-file", config_file, *opts]))

    results, harmony, models = {}, {}, []
    for name, config_file, opts in plan:
        stage_dir = os.path.abspath(os.path.join(args.output, name))
        results[name] = read_metrics(stage_dir)
        harmony[name] = run_harmony(stage_dir, config_file, opts, name, prefix="demo")
        cfg, model = load_model(config_file, opts, os.path.join(stage_dir, "model_final.pth"))
        models.append(({"teacher": "teacher", "baseline": "baseline", "tbd": "TBD"}[name], model))
    dataset = register_test_split(cfg)
    detection_picture(
        models,
        dataset,
        os.path.join(args.output, "detections.png"),
        num_images=6,
        score=PICTURE_SCORE,
    )
    path = write_report(
        args, results, commands, harmony, time.time() - start, data_description(cfg)
    )
    print(open(path).read())
    print(f"[demo] report: {path}")


if __name__ == "__main__":
    main()
