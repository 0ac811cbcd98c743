#!/usr/bin/env python
"""
The embedded default demo: on the synthetic dataset, train a teacher (reused when already trained),
a baseline student and a TBD student, evaluate all three with COCOEvaluator, and write
``<output>/report.md`` with AP, the harmony of each model's predictions on the val split, train
time per iteration, and a picture comparing baseline and TBD detections.

    python tools/run_demo.py                 # the default demo (the README's first command)
    python tools/run_demo.py --toy           # seconds: a tiny dataset, models and schedule
"""

import argparse
import json
import os
import platform
import shlex
import time
from datetime import datetime, timezone

import torch

from tbd.experiments.ablation import toy_switches
from tbd.experiments.figures import detection_picture
from tbd.experiments.regimes import SYNTHETIC, TOY_STUDENT_CONFIG, TOY_TEACHER_CONFIG
from tbd.experiments.runs import load_cfg, read_metrics, run_stage, schedule, toy_data

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="output/demo")
    p.add_argument("--teacher-iters", type=int, default=None, help="default 1000 (toy: 4)")
    p.add_argument("--student-iters", type=int, default=None, help="default 500 (toy: 4)")
    p.add_argument("--toy", action="store_true", help="tiny data, models and schedule (tests)")
    p.add_argument("--retrain-teacher", action="store_true")
    args = p.parse_args(argv)
    if args.teacher_iters is None:
        args.teacher_iters = 4 if args.toy else 1000
    if args.student_iters is None:
        args.student_iters = 4 if args.toy else 500
    return args


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
            "teacher": "configs/Synthetic/teacher_R18_wide.yaml",
            "baseline": "configs/Synthetic/student_R18.yaml",
            "tbd": "configs/Synthetic/tbd_R18.yaml",
        }
        data = []

    result = []
    for name in ("teacher", "baseline", "tbd"):
        iters = args.teacher_iters if name == "teacher" else args.student_iters
        opts = data + schedule(iters) + ["OUTPUT_DIR", os.path.join(out, name)]
        if name == "baseline" and args.toy:  # the quick TBD config made the baseline (HD, TFD off)
            opts += toy_switches(SYNTHETIC, "baseline")
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


def write_report(args, results, commands, harmony, elapsed):
    import detectron2

    path = os.path.join(args.output, "report.md")
    names = {"teacher": "teacher R18-wide", "baseline": "student R18", "tbd": "student R18 + TBD"}
    lines = [
        "# TBD demo report",
        "",
        f"Made by `python tools/run_demo.py{' --toy' if args.toy else ''}` on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} in {elapsed / 60:.1f} min; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, detectron2 {detectron2.__version__}.",
        "",
        "COCO box AP on the synthetic val split (COCOEvaluator); harmonious = proportion of "
        "foreground anchors on val with |score - IoU| <= 0.2; s/iter = median train step time.",
        "",
        "| model | " + " | ".join(METRICS) + " | harmonious | mean HS | s/iter |",
        "|---|" + "---|" * (len(METRICS) + 3),
    ]
    for name in ("teacher", "baseline", "tbd"):
        r, h = results[name], harmony[name]
        aps = " | ".join(f"{r['bbox'].get(m, float('nan')):.1f}" for m in METRICS)
        lines.append(
            f"| {names[name]} | {aps} | {h['harmonious_fraction']:.3f} | "
            f"{h['mean_harmony_score']:.3f} | {r['s_per_iter']:.2f} |"
        )
    ap = {k: results[k]["bbox"].get("AP", float("nan")) for k in results}
    gap = ap["teacher"] - ap["baseline"]
    closed = (ap["tbd"] - ap["baseline"]) / gap * 100 if gap > 0 else float("nan")
    lines += [
        "",
        f"TBD - baseline: {ap['tbd'] - ap['baseline']:+.1f} AP; "
        f"teacher-student gap closed: {closed:.0f}%.",
        "",
        "![baseline vs TBD detections](detections.png)",
        "",
        "Rows: ground truth, baseline student, TBD student (detections with score >= 0.2).",
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
    commands = []
    for name, config_file, opts in plan:
        final = os.path.join(args.output, name, "model_final.pth")
        if name == "teacher" and os.path.isfile(final) and not args.retrain_teacher:
            print(f"[demo] teacher: reusing {final} (--retrain-teacher to train it again)")
            recorded = os.path.join(args.output, name, "command.json")
            if os.path.isfile(recorded):
                commands.append(shlex.join(["python"] + json.load(open(recorded))["command"]))
            continue
        commands.append(run_stage(name, config_file, opts, args.output))

    from tbd.analysis import foreground_harmony, labelled_test_loader
    from tbd.datasets import register_datasets

    results, harmony, models = {}, {}, []
    for name, config_file, opts in plan:
        stage_dir = os.path.join(args.output, name)
        results[name] = read_metrics(stage_dir)
        cfg, model = load_model(config_file, opts, os.path.join(stage_dir, "model_final.pth"))
        register_datasets(cfg)
        loader = labelled_test_loader(cfg, cfg.DATASETS.TEST[0])
        harmony[name] = foreground_harmony(model, loader, cfg.MODEL.TBD.HARMONY_DELTA)
        if name != "teacher":
            models.append(({"baseline": "baseline", "tbd": "TBD"}[name], model))
    detection_picture(models, cfg.DATASETS.TEST[0], os.path.join(args.output, "detections.png"))
    path = write_report(args, results, commands, harmony, time.time() - start)
    print(open(path).read())
    print(f"[demo] report: {path}")


if __name__ == "__main__":
    main()
