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
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def schedule(iters: int):
    """MAX_ITER and the LR steps at 0.75 and 0.9 of it; duplicate steps (short schedules) merged,
    as detectron2's MultiStepParamScheduler refuses a repeated milestone."""
    steps = tuple(sorted({s for s in (int(iters * 0.75), int(iters * 0.9)) if 0 < s < iters}))
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(steps)]


def stages(args):
    """(name, config file, extra opts) of the three trainings."""
    out = args.output
    teacher_weights = os.path.join(out, "teacher", "model_final.pth")
    if args.toy:
        configs = {
            "teacher": "configs/quick_schedules/teacher_instant_test.yaml",
            "baseline": "configs/quick_schedules/tbd_instant_test.yaml",
            "tbd": "configs/quick_schedules/tbd_instant_test.yaml",
        }
        data = [
            "DATASETS.SYNTHETIC.ROOT",
            os.path.join(out, "data"),
            "DATASETS.SYNTHETIC.NUM_TRAIN",
        ]
        data += ["12", "DATASETS.SYNTHETIC.NUM_VAL", "4", "DATASETS.SYNTHETIC.IMAGE_SIZE", "64"]
        data += ["DATASETS.TRAIN", "('tbd_synthetic_train',)"]
        data += ["DATASETS.TEST", "('tbd_synthetic_val',)"]
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
        if name == "baseline" and args.toy:  # the quick TBD config with distillation off
            opts += ["MODEL.TBD.HD.ENABLED", "False", "MODEL.TBD.TFD.ENABLED", "False"]
        if name == "tbd":
            opts += ["MODEL.TBD.TEACHER.CONFIG_FILE", configs["teacher"]]
            opts += ["MODEL.TBD.TEACHER.WEIGHTS", teacher_weights]
            opts += ["MODEL.TBD.WARMUP_ITERS", str(max(1, iters // 6))]
        result.append((name, configs[name], opts))
    return result


def run_stage(name, config_file, opts, output, prefix="demo", env=None):
    """Train one model with train_net.py in a subprocess, streaming progress lines. ``env``: the
    subprocess's environment (default: this process's)."""
    cmd = [sys.executable, "train_net.py", "--config-file", config_file, *opts]
    os.makedirs(os.path.join(output, name), exist_ok=True)
    log_path = os.path.join(output, name, "train.log")
    print(f"[{prefix}] {name}: {shlex.join(cmd[1:])}", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for line in proc.stdout:
            log.write(line)
            if " eta: " in line or "copypaste" in line or "Error" in line:
                print(f"[{prefix}] {name} | {line.split(']:')[-1].strip()[:150]}", flush=True)
        if proc.wait() != 0:
            raise SystemExit(f"[{prefix}] {name} failed (exit {proc.returncode}); see {log_path}")
    seconds = time.time() - start
    with open(os.path.join(output, name, "command.json"), "w") as f:
        json.dump({"command": cmd[1:], "wall_seconds": seconds}, f)
    print(f"[{prefix}] {name}: done in {seconds:.0f} s", flush=True)
    return shlex.join(["python"] + cmd[1:])


def read_metrics(stage_dir):
    """Final COCO bbox metrics and median seconds per training iteration, from metrics.json."""
    rows = [json.loads(line) for line in open(os.path.join(stage_dir, "metrics.json"))]
    evals = [r for r in rows if "bbox/AP" in r]
    times = [r["time"] for r in rows if "time" in r]
    return {
        "bbox": {m: evals[-1][f"bbox/{m}"] for m in METRICS} if evals else {},
        "s_per_iter": statistics.median(times) if times else float("nan"),
    }


def load_model(config_file, opts, weights):
    from detectron2.modeling import build_model

    from tbd.checkpoint import SafeCheckpointer

    cfg = load_cfg(config_file, opts)
    model = build_model(cfg).eval()
    SafeCheckpointer(model).load(weights)
    return cfg, model


def load_cfg(config_file, opts):
    from tbd.config import load_tbd_config

    return load_tbd_config(os.path.join(REPO, config_file), opts)


def detection_picture(models, dataset_name, path, num_images=4, score=0.2):
    """Rows: ground truth, then each model's detections (score >= ``score``), on val images."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    dicts = DatasetCatalog.get(dataset_name)[:num_images]
    metadata = MetadataCatalog.get(dataset_name)
    rows, labels = [], ["ground truth"] + [name for name, _ in models]
    gt = [Visualizer(read_image(d["file_name"], "RGB"), metadata, scale=3.0) for d in dicts]
    rows.append([v.draw_dataset_dict(d).get_image() for v, d in zip(gt, dicts)])
    for _, model in models:
        row = []
        for d in dicts:
            image = read_image(d["file_name"], "BGR")
            tensor = torch.as_tensor(image.transpose(2, 0, 1).astype("float32"))
            with torch.no_grad():
                inst = model([{"image": tensor}])[0]["instances"].to("cpu")
            inst = inst[inst.scores >= score]
            vis = Visualizer(image[:, :, ::-1], metadata, scale=3.0)
            row.append(vis.draw_instance_predictions(inst).get_image())
        rows.append(row)
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    picture = Image.fromarray(grid)
    draw = ImageDraw.Draw(picture)
    height = grid.shape[0] // len(rows)
    for i, label in enumerate(labels):
        draw.rectangle([0, i * height, 8 * len(label) + 8, i * height + 16], fill=(0, 0, 0))
        draw.text((4, i * height + 2), label, fill=(255, 255, 255))
    picture.save(path)


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
