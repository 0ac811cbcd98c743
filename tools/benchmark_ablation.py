#!/usr/bin/env python
"""
The ablation benchmark: every row of docs/method.md's "Baselines are switches" table, trained for
several seeds on the synthetic dataset and evaluated with COCOEvaluator on its val split.

    baseline        student_R18.yaml         no distillation
    feature_mimic   feature_mimic_R18.yaml   FitNet: HD off, TFD over every location, fixed balance
    logit_kd        logit_kd_R18.yaml        TFD off, HD with the teacher's raw scores, uniform reg.
    hd_only         hd_only_R18.yaml         Harmony Distillation only
    tfd_only        tfd_only_R18.yaml        Task-decoupled Feature Distillation only
    tbd             tbd_R18.yaml             HD + TFD (the full method)

(configs in configs/Synthetic/).

One teacher (the one tbd_R18.yaml names, configs/Synthetic/teacher_R18_wide.yaml; seed 0) is trained
first, or reused when its model_final.pth exists. Every run is, in a subprocess,

    python train_net.py --config-file ROW.yaml SEED s SOLVER.MAX_ITER n
        SOLVER.STEPS (0.75 n, 0.9 n) OUTPUT_DIR <output>/ROW/seed_s
        MODEL.TBD.TEACHER.WEIGHTS <output>/teacher/model_final.pth   (distilled rows)

Finished runs (model_final.pth and an evaluation in metrics.json, made by the same command) are
reused, so an interrupted benchmark continues where it stopped (``--force`` trains them again). Runs
recorded in an earlier ``<results>.json`` are carried over, without training, when they were made
by the same command from the same teacher (identical weights): the whole benchmark takes longer
than one working session, and its checkpoints are not kept between machines. It writes
``<results>.json`` (every number, the command line, versions, machine, date, git commit, where
each run came from) and ``<results>.md`` (the table and the targets, PASS / FAIL), which is
generated, never edited by hand.

The val split is the test data: this tool only reports on it and tunes nothing.

    python tools/benchmark_ablation.py                          # 6 rows x 3 seeds (hours on CPU)
    python tools/benchmark_ablation.py --rows baseline tbd --seeds 0
    python tools/benchmark_ablation.py --toy --seeds 0 1        # seconds: tiny data and models

Relative paths (--output, --results) are relative to the repo root, like the paths in configs.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_demo import load_cfg, read_metrics, run_stage, schedule  # noqa: E402

from tbd.config import distills  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (row, label, full-size config); the order of the table
ROWS = [
    ("baseline", "baseline (no distillation)", "configs/Synthetic/student_R18.yaml"),
    ("feature_mimic", "feature mimic (FitNet)", "configs/Synthetic/feature_mimic_R18.yaml"),
    ("logit_kd", "logit KD", "configs/Synthetic/logit_kd_R18.yaml"),
    ("hd_only", "HD only", "configs/Synthetic/hd_only_R18.yaml"),
    ("tfd_only", "TFD only", "configs/Synthetic/tfd_only_R18.yaml"),
    ("tbd", "TBD (HD + TFD)", "configs/Synthetic/tbd_R18.yaml"),
]
ROW_NAMES = [r[0] for r in ROWS]
LABELS = {r[0]: r[1] for r in ROWS}
CONFIGS = {r[0]: r[2] for r in ROWS}
TOY_TEACHER_CONFIG = "configs/quick_schedules/teacher_instant_test.yaml"
TOY_STUDENT_CONFIG = "configs/quick_schedules/tbd_instant_test.yaml"
# The keys that make a row what it is; --toy applies a row's values of them (relative to
# tbd_R18.yaml) to the quick-schedule TBD student.
SWITCHES = [
    "MODEL.TBD.HD.ENABLED",
    "MODEL.TBD.HD.TARGET",
    "MODEL.TBD.HD.REG_WEIGHTING",
    "MODEL.TBD.TFD.ENABLED",
    "MODEL.TBD.TFD.MASK",
    "MODEL.TBD.TFD.BALANCE",
    "MODEL.TBD.TFD.CLS_RATIO",
]
SEED_METRICS = ["AP", "AP50", "AP75", "APs", "APm"]

# The targets of the "Targets" section
TARGET_GAIN = 3.0  # TBD AP >= baseline AP + 3.0
TARGET_GAP_CLOSED = 0.5  # TBD closes >= 50% of the teacher - baseline gap
TARGET_STD_FACTOR = 3.0  # TBD's gain > 3 x the larger seed std of TBD and baseline


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    p.add_argument("--iters", type=int, default=None, help="student schedule (default 1000, toy 4)")
    p.add_argument("--teacher-iters", type=int, default=None, help="default 3000 (toy: 4)")
    p.add_argument("--rows", nargs="+", choices=ROW_NAMES, default=None, help="default: all")
    p.add_argument("--output", default=None, help="default output/ablation (toy: ..._toy)")
    p.add_argument(
        "--results",
        default=None,
        help="path of the results without extension: writes .json and .md "
        "(default docs/results/synthetic; toy: <output>/ablation)",
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
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.iters is None:
        args.iters = 4 if args.toy else 1000
    if args.teacher_iters is None:
        args.teacher_iters = 4 if args.toy else 3000
    if args.output is None:
        args.output = "output/ablation_toy" if args.toy else "output/ablation"
    if args.results is None:
        args.results = (
            os.path.join(args.output, "ablation") if args.toy else "docs/results/synthetic"
        )
    args.rows = [r for r in ROW_NAMES if args.rows is None or r in args.rows]
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds has duplicates: {args.seeds}")
    if min(args.iters, args.teacher_iters) < 1:
        p.error("--iters and --teacher-iters must be positive")
    if args.jobs < 1:
        p.error("--jobs must be positive")
    args.force = args.force or args.retrain_teacher
    return args


def in_repo(path: str) -> str:
    """A path as the training subprocesses (run in the repo root) see it."""
    return os.path.join(REPO, path)


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def toy_switches(row: str) -> List[str]:
    """The opts that turn the quick-schedule TBD student into ``row``: its values of
    ``MODEL.META_ARCHITECTURE`` and :data:`SWITCHES` that differ from tbd_R18.yaml's (for the
    baseline: HD and TFD off). Read from the row's own config file, so that toy and full runs
    cannot disagree."""
    cfg, tbd = load_cfg(CONFIGS[row], []), load_cfg(CONFIGS["tbd"], [])
    keys = ["MODEL.META_ARCHITECTURE", *SWITCHES]
    return [x for k in keys if _get(cfg, k) != _get(tbd, k) for x in (k, str(_get(cfg, k)))]


def toy_data(output: str) -> List[str]:
    """A tiny synthetic dataset under the output directory, like run_demo's toy mode."""
    data = ["DATASETS.SYNTHETIC.ROOT", os.path.join(output, "data")]
    data += ["DATASETS.SYNTHETIC.NUM_TRAIN", "12", "DATASETS.SYNTHETIC.NUM_VAL", "4"]
    data += ["DATASETS.SYNTHETIC.IMAGE_SIZE", "64"]
    data += [
        "DATASETS.TRAIN",
        "('tbd_synthetic_train',)",
        "DATASETS.TEST",
        "('tbd_synthetic_val',)",
    ]
    return data


def teacher_config() -> str:
    """The teacher config every distilled row names (MODEL.TBD.TEACHER.CONFIG_FILE)."""
    names = {
        row: cfg.MODEL.TBD.TEACHER.CONFIG_FILE
        for row, cfg in ((row, load_cfg(CONFIGS[row], [])) for row in ROW_NAMES)
        if distills(cfg)
    }
    if len(set(names.values())) != 1:
        raise SystemExit(f"[ablation] the distilled rows name different teachers: {names}")
    return names["tbd"]


def plan(args):
    """The teacher stage and the runs: dicts with name, row, seed, config and opts, seed by seed
    (every row at the first seed, then the next). Paths in opts are as given (relative to the
    repo root, where the subprocesses run)."""
    out = args.output
    teacher_weights = os.path.join(out, "teacher", "model_final.pth")
    data = toy_data(out) if args.toy else []
    teacher = {
        "name": "teacher",
        "row": "teacher",
        "seed": 0,
        "config": TOY_TEACHER_CONFIG if args.toy else teacher_config(),
        "opts": data
        + ["SEED", "0"]
        + schedule(args.teacher_iters)
        + ["OUTPUT_DIR", os.path.join(out, "teacher")],
    }
    runs = []
    row_distills = {row: distills(load_cfg(CONFIGS[row], [])) for row in args.rows}
    switches = {row: toy_switches(row) if args.toy else [] for row in args.rows}
    for seed in args.seeds:  # seed by seed: stopped early, every row has its first seeds
        for row in args.rows:
            name = f"{row}/seed_{seed}"
            opts = data + ["SEED", str(seed)] + schedule(args.iters)
            opts += ["OUTPUT_DIR", os.path.join(out, row, f"seed_{seed}")]
            opts += switches[row]
            if row_distills[row]:
                opts += ["MODEL.TBD.TEACHER.WEIGHTS", teacher_weights]
                if args.toy:
                    opts += ["MODEL.TBD.TEACHER.CONFIG_FILE", TOY_TEACHER_CONFIG]
                    opts += ["MODEL.TBD.WARMUP_ITERS", str(max(1, args.iters // 6))]
            config = TOY_STUDENT_CONFIG if args.toy else CONFIGS[row]
            runs.append({"name": name, "row": row, "seed": seed, "config": config, "opts": opts})
    return teacher, runs


def command(stage) -> List[str]:
    """The train_net.py command line of a stage, as run_stage records it in command.json."""
    return ["train_net.py", "--config-file", stage["config"], *stage["opts"]]


def recorded_command(stage_dir: str) -> Optional[List[str]]:
    path = os.path.join(stage_dir, "command.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("command")


def metrics_of(stage_dir: str) -> Dict:
    """run_demo.read_metrics, or no metrics when the stage has no metrics.json (a teacher
    checkpoint placed by hand)."""
    if not os.path.isfile(os.path.join(stage_dir, "metrics.json")):
        return {"bbox": {}, "s_per_iter": float("nan")}
    return read_metrics(stage_dir)


def finished(stage_dir: str) -> bool:
    """model_final.pth exists and metrics.json holds an evaluation."""
    metrics = os.path.join(stage_dir, "metrics.json")
    if not (os.path.isfile(os.path.join(stage_dir, "model_final.pth")) and os.path.isfile(metrics)):
        return False
    return bool(read_metrics(stage_dir)["bbox"])


def check_same_command(stage, stage_dir: str, hint: str) -> None:
    recorded = recorded_command(stage_dir)
    if recorded is not None and recorded != command(stage):
        raise SystemExit(
            f"[ablation] {stage['name']}: {stage_dir} was trained by a different command:\n"
            f"  recorded: {shlex.join(recorded)}\n  planned:  {shlex.join(command(stage))}\n"
            f"Use {hint} to train it again, or another --output."
        )


def clear_stage(stage_dir: str) -> None:
    """Remove a stage's previous results before it trains (detectron2 appends to metrics.json)."""
    for name in ("model_final.pth", "metrics.json", "command.json", "last_checkpoint"):
        path = os.path.join(stage_dir, name)
        if os.path.isfile(path):
            os.remove(path)


def _fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def run_dir_of(args, run) -> str:
    return in_repo(os.path.join(args.output, run["row"], f"seed_{run['seed']}"))


def train_teacher(args, teacher) -> Optional[float]:
    """Train the teacher unless it is reusable; its wall time in seconds when trained now."""
    out = in_repo(args.output)
    teacher_dir = os.path.join(out, "teacher")
    if os.path.isfile(os.path.join(teacher_dir, "model_final.pth")) and not args.retrain_teacher:
        check_same_command(teacher, teacher_dir, "--retrain-teacher")
        print(f"[ablation] teacher: reusing {os.path.join(teacher_dir, 'model_final.pth')}")
        return None
    clear_stage(teacher_dir)
    t0 = time.time()
    run_stage("teacher", teacher["config"], teacher["opts"], out, prefix="ablation")
    return time.time() - t0


def thread_env(jobs: int) -> Optional[Dict[str, str]]:
    """The environment of a student run when ``jobs`` train at once: the cores shared out through
    OMP_NUM_THREADS (torch's intra-op threads). None (inherit) for one job at a time."""
    if jobs == 1:
        return None
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def train_runs(args, runs, carried: Dict[str, Dict]) -> None:
    """Train every run that is neither finished in ``--output`` nor carried over, ``--jobs`` at a
    time (each run's wall time goes to its command.json)."""
    start = time.time()
    pending = []
    for i, run in enumerate(runs):
        head = f"[ablation] {run['name']} (run {i + 1} of {len(runs)})"
        if run["name"] in carried:
            print(f"{head}: carried over from {args.results}.json", flush=True)
        elif not args.force and finished(run_dir_of(args, run)):
            check_same_command(run, run_dir_of(args, run), "--force")
            print(f"{head}: finished before, reused", flush=True)
        else:
            pending.append((head, run))

    env, lock = thread_env(args.jobs), threading.Lock()
    durations: Dict[str, float] = {}  # of the runs trained now, for the ETA

    def train(head, run):
        with lock:
            done = list(durations.values())
            left = len(pending) - len(done)
            eta = (
                _fmt_minutes(statistics.mean(done) * left / args.jobs)
                if done
                else "unknown (no run timed yet)"
            )
            print(f"{head}, elapsed {_fmt_minutes(time.time() - start)}, ETA {eta}", flush=True)
        run_dir = run_dir_of(args, run)
        clear_stage(run_dir)
        t0 = time.time()
        run_stage(run["name"], run["config"], run["opts"], in_repo(args.output), "ablation", env)
        if not finished(run_dir):
            raise SystemExit(f"[ablation] {run['name']}: no evaluation in {run_dir}/metrics.json")
        with lock:
            durations[run["name"]] = time.time() - t0

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(train, head, run) for head, run in pending]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # the runs not started yet; the running ones finish
                future.cancel()
            raise


def weights_sha256(path: str) -> str:
    """sha256 of a checkpoint's model weights (every tensor's name, dtype, shape and bytes, in name
    order): equal for two trainings that produced bitwise the same model."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("model", state)
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = torch.as_tensor(state[name]).detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def teacher_record(args, teacher) -> Dict:
    """The teacher as the results json records it (after it is trained)."""
    teacher_dir = in_repo(os.path.join(args.output, "teacher"))
    metrics = metrics_of(teacher_dir)
    recorded = recorded_command(teacher_dir)
    return {
        "config": teacher["config"],
        "weights": os.path.join(args.output, "teacher", "model_final.pth"),
        "weights_sha256": weights_sha256(os.path.join(teacher_dir, "model_final.pth")),
        "command": shlex.join(["python"] + recorded) if recorded else None,
        "AP": metrics["bbox"].get("AP", float("nan")),
        "bbox": {m: metrics["bbox"].get(m, float("nan")) for m in SEED_METRICS},
        "s_per_iter": metrics["s_per_iter"],
    }


def load_previous(args) -> Optional[Dict]:
    """The results json of an earlier invocation, when runs may be carried over from it."""
    path = in_repo(args.results) + ".json"
    if args.no_carry_over or args.force or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def same_teacher(previous: Dict, current: Dict) -> Tuple[bool, str]:
    """Whether an earlier results json's teacher is the current one, and the evidence: the same
    command and identical weights (sha256), or, for a json that recorded no hash, the same command
    and an identical evaluation to the last digit of every metric."""
    if previous.get("command") != current["command"]:
        return False, "the teacher was trained by another command"
    if previous.get("weights_sha256"):
        same = previous["weights_sha256"] == current["weights_sha256"]
        return same, f"{'identical' if same else 'different'} teacher weights (sha256)"
    before, now = previous.get("bbox") or {}, current["bbox"]
    same = all(before.get(m) is not None and before.get(m) == now.get(m) for m in SEED_METRICS)
    evidence = "the teacher's AP, AP50, AP75, APs and APm identical to the last digit"
    return same, evidence if same else "a different teacher evaluation"


def carry_over(args, previous: Optional[Dict], teacher: Dict, runs) -> Dict[str, Dict]:
    """
    The runs of an earlier results json that this invocation need not train: those not finished
    in ``--output`` whose recorded command is the planned one, when that json's teacher is the
    current teacher (:func:`same_teacher`). Returns {run name: its per-seed record}, each with
    ``carried_over_from``: the invocation that trained it.
    """
    if previous is None:
        return {}
    same, evidence = same_teacher(previous.get("teacher") or {}, teacher)
    if not same:
        print(f"[ablation] {args.results}.json: nothing carried over ({evidence})", flush=True)
        return {}
    origin = {k: previous.get(k) for k in ("generated_by", "date", "git_commit", "git_dirty")}
    carried = {}
    for run in runs:
        record = previous.get("rows", {}).get(run["row"], {}).get("seeds", {}).get(str(run["seed"]))
        if (
            record is None
            or record.get("command") != shlex.join(["python"] + command(run))
            or finished(run_dir_of(args, run))  # (load_previous gives None with --force)
        ):
            continue
        record = dict(record)
        record.setdefault("wall_seconds", (previous.get("wall_seconds") or {}).get(run["name"]))
        record.setdefault("carried_over_from", {**origin, "teacher": evidence})
        carried[run["name"]] = record
    if carried:
        print(
            f"[ablation] {args.results}.json has the same teacher ({evidence}): "
            f"{len(carried)} runs carried over",
            flush=True,
        )
    return carried


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.mean(values) if values else float("nan")


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation over seeds; NaN with fewer than 2 seeds (unknown, not 0)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.stdev(values) if len(values) >= 2 else float("nan")


def _run_record(args, run) -> Dict:
    """A run's per-seed record from its run directory."""
    run_dir = run_dir_of(args, run)
    metrics = read_metrics(run_dir)
    record = {m: float(metrics["bbox"].get(m, float("nan"))) for m in SEED_METRICS}
    record["s_per_iter"] = metrics["s_per_iter"]
    record["command"] = shlex.join(["python"] + command(run))
    with open(os.path.join(run_dir, "command.json")) as f:
        record["wall_seconds"] = json.load(f).get("wall_seconds")
    return record


def summarize(args, runs, carried: Dict[str, Dict]) -> Dict[str, Dict]:
    """Per row: the per-seed COCO metrics (and s/iter, wall time, origin), and mean / std over
    seeds."""
    rows: Dict[str, Dict] = {}
    for run in runs:
        record = carried.get(run["name"]) or _run_record(args, run)
        row = rows.setdefault(
            run["row"],
            {"label": LABELS[run["row"]], "config": CONFIGS[run["row"]], "seeds": {}},
        )
        row["seeds"][str(run["seed"])] = record
    for row in rows.values():
        for m in ("AP", "AP50", "AP75"):
            row[f"{m}_mean"] = _mean([s[m] for s in row["seeds"].values()])
        row["AP_std"] = _std([s["AP"] for s in row["seeds"].values()])
    baseline = rows.get("baseline", {}).get("AP_mean", float("nan"))
    for row in rows.values():
        row["gain_over_baseline"] = row["AP_mean"] - baseline
    return rows


def evaluate_targets(rows: Dict[str, Dict[str, float]], teacher_ap: float) -> List[Dict]:
    """
    The benchmark's targets, from mean AP over seeds (``rows[row]["mean"]``) and its seed standard
    deviation (``rows[row]["std"]``, NaN with one seed) of the rows present, and the teacher's AP.

    Returns one dict per target: ``target`` (the statement), ``status`` ("PASS", "FAIL", or "N/A"
    when a number it needs is missing: a row not run, one seed, an unknown teacher AP) and
    ``detail`` (the numbers). A teacher not better than the baseline leaves no gap to close: that
    target FAILs (it is never divided by).
    """

    def ap(row):
        value = rows.get(row, {}).get("mean", float("nan"))
        return float("nan") if value is None else float(value)

    def std(row):
        value = rows.get(row, {}).get("std", float("nan"))
        return float("nan") if value is None else float(value)

    def result(target, passed, detail):
        status = "N/A" if passed is None else ("PASS" if passed else "FAIL")
        return {"target": target, "status": status, "detail": detail}

    def missing(*values):
        return any(v is None or math.isnan(v) for v in values)

    base, tbd = ap("baseline"), ap("tbd")
    gain = tbd - base
    out = []

    target = f"TBD AP >= baseline AP + {TARGET_GAIN:.1f}"
    if missing(base, tbd):
        out.append(result(target, None, "needs the baseline and TBD rows"))
    else:
        detail = (
            f"TBD {tbd:.2f} - baseline {base:.2f} = {gain:+.2f} AP (needs >= +{TARGET_GAIN:.1f})"
        )
        out.append(result(target, gain >= TARGET_GAIN, detail))

    target = f"TBD closes >= {TARGET_GAP_CLOSED:.0%} of the teacher - baseline gap"
    if missing(base, tbd, teacher_ap):
        out.append(result(target, None, "needs the baseline and TBD rows and the teacher's AP"))
    else:
        gap = teacher_ap - base
        if gap <= 0:
            detail = f"teacher {teacher_ap:.2f} is not above baseline {base:.2f}: no gap to close"
            out.append(result(target, False, detail))
        else:
            closed = gain / gap
            detail = (
                f"(TBD - baseline) / (teacher - baseline) = {gain:+.2f} / {gap:.2f} = "
                f"{closed:.0%} (needs >= {TARGET_GAP_CLOSED:.0%})"
            )
            out.append(result(target, closed >= TARGET_GAP_CLOSED, detail))

    target = f"TBD's gain > {TARGET_STD_FACTOR:g} x the seed std (larger of TBD's and baseline's)"
    noise = max(std("tbd"), std("baseline"))
    if missing(base, tbd):
        out.append(result(target, None, "needs the baseline and TBD rows"))
    elif missing(std("tbd"), std("baseline")):
        out.append(result(target, None, "needs >= 2 seeds of the baseline and TBD rows"))
    else:
        detail = (
            f"gain {gain:+.2f} vs {TARGET_STD_FACTOR:g} x max(std TBD {std('tbd'):.2f}, "
            f"std baseline {std('baseline'):.2f}) = {TARGET_STD_FACTOR * noise:.2f}"
        )
        out.append(result(target, gain > TARGET_STD_FACTOR * noise, detail))

    comparisons = (  # row, label, reference label, reference AP, +1: must beat it, -1: stay below
        ("hd_only", "HD only", "baseline", base, 1),
        ("tfd_only", "TFD only", "baseline", base, 1),
        ("feature_mimic", "feature mimic", "TBD", tbd, -1),
        ("logit_kd", "logit KD", "TBD", tbd, -1),
    )
    for row, label, ref_label, ref, sign in comparisons:
        target = f"{label} AP {'>' if sign > 0 else '<'} {ref_label} AP"
        if missing(ap(row), ref):
            out.append(result(target, None, f"needs the {label} and {ref_label} rows"))
        else:
            detail = f"{label} {ap(row):.2f} vs {ref_label} {ref:.2f} ({ap(row) - ref:+.2f})"
            out.append(result(target, sign * (ap(row) - ref) > 0, detail))
    return out


def _git(*cmd) -> Optional[str]:
    try:
        return subprocess.run(
            ["git", *cmd], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> Dict:
    import detectron2
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "detectron2": detectron2.__version__,
        },
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()},
    }


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _f(value, spec=".1f") -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def write_results(args, teacher: Dict, rows, targets, teacher_seconds, elapsed) -> Dict:
    """Write <results>.json and <results>.md; return the json's content."""
    invocation = shlex.join(["python", "tools/benchmark_ablation.py", *args.argv])
    env = thread_env(args.jobs)
    report = {
        "generated_by": invocation,
        **environment(),
        "settings": {
            "toy": args.toy,
            "seeds": args.seeds,
            "student_iters": args.iters,
            "teacher_iters": args.teacher_iters,
            "rows": args.rows,
            "output": args.output,
            "jobs": args.jobs,
            "threads_per_run": None if env is None else int(env["OMP_NUM_THREADS"]),
            "test_dataset": "tbd_synthetic_val",
            "note": "the val split is the test data: reported on only, nothing tuned on it",
        },
        "teacher": teacher,
        "rows": rows,
        "targets": targets,
        "wall_seconds": {"total": elapsed, "teacher": teacher_seconds},
    }
    base = in_repo(args.results)
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(_nan_to_none(report), f, indent=2)
        f.write("\n")
    with open(base + ".md", "w") as f:
        f.write(markdown(args, report))
    return report


def _origins(report) -> List[Dict]:
    """The earlier invocations that trained carried-over runs, in order of first appearance."""
    origins = []
    for row in report["rows"].values():
        for record in row["seeds"].values():
            origin = record.get("carried_over_from")
            if origin and origin not in origins:
                origins.append(origin)
    return origins


def markdown(args, report) -> str:
    env, teacher = report, report["teacher"]
    seeds = ", ".join(str(s) for s in args.seeds)
    results_dir = os.path.dirname(in_repo(args.results))
    doc = "docs/benchmark.md"
    if os.path.commonpath([REPO, results_dir]) == REPO:  # a link that works inside the repo
        doc = f"[{doc}]({os.path.relpath(in_repo(doc), results_dir)})"
    origins = _origins(report)
    marks = {json.dumps(o, sort_keys=True): "†" * (i + 1) for i, o in enumerate(origins)}
    jobs = report["settings"]["jobs"]
    lines = [
        f"# Ablation on the synthetic dataset{' (toy size)' if args.toy else ''}",
        "",
        "Generated by the command below; do not edit by hand (rerun it). What it measures and the "
        f"rules it follows: {doc}.",
        "",
        f"    {report['generated_by']}",
        "",
        f"{env['date']}; git commit {env['git_commit'] or 'unknown'}"
        f"{' (with uncommitted changes)' if env['git_dirty'] else ''}; "
        f"{env['machine']['cpu']}, {env['machine']['cores']} cores; torch "
        f"{env['versions']['torch']}, detectron2 {env['versions']['detectron2']}; "
        f"{report['wall_seconds']['total'] / 60:.1f} min"
        + (
            f" ({jobs} runs at a time, {report['settings']['threads_per_run']} thread(s) each)."
            if jobs > 1
            else "."
        ),
        "",
        f"COCO box AP (COCOEvaluator) on `tbd_synthetic_val`, the test data, after "
        f"{args.iters} student iterations; seeds {seeds}; mean ± sample std over seeds. The "
        "teacher was trained once (seed 0, "
        f"{args.teacher_iters} iterations) and teaches every distilled row.",
        "",
        f"| row | config | AP (mean ± std) | AP50 | AP75 | AP per seed ({seeds}) "
        "| gain over baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.rows:
        row = report["rows"][name]
        per_seed = " / ".join(
            _f(record["AP"])
            + marks.get(json.dumps(record.get("carried_over_from"), sort_keys=True), "")
            for record in (row["seeds"][str(s)] for s in args.seeds)
        )
        gain = "—" if name == "baseline" else _f(row["gain_over_baseline"], "+.1f")
        lines.append(
            f"| {row['label']} | `{os.path.basename(row['config'])}` | "
            f"{_f(row['AP_mean'])} ± {_f(row['AP_std'])} | {_f(row['AP50_mean'])} | "
            f"{_f(row['AP75_mean'])} | {per_seed} | {gain} |"
        )
    for origin in origins:
        lines += [
            "",
            f"{marks[json.dumps(origin, sort_keys=True)]} Carried over, not retrained: trained "
            f"by `{origin['generated_by']}` on {origin['date']} (git commit "
            f"{origin['git_commit']}{', with uncommitted changes' if origin['git_dirty'] else ''}) "
            f"with the same command, from the same teacher ({origin['teacher']}).",
        ]
    lines += [
        "",
        f"Teacher (`{os.path.basename(teacher['config'])}`): AP {_f(teacher['AP'])}, "
        f"AP50 {_f(teacher['bbox']['AP50'])}; weights sha256 {teacher['weights_sha256'][:16]}….",
    ]
    if args.toy:
        lines += [
            "",
            "Toy size: every row is the quick-schedule test student "
            f"(`{TOY_STUDENT_CONFIG}`) with the row config's switches, on a tiny dataset; the "
            "numbers only show that the pipeline runs.",
        ]
    lines += ["", "## Targets", "", "| target | result | numbers |", "|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | **{t['status']}** | {t['detail']} |")
    passed = sum(t["status"] == "PASS" for t in report["targets"])
    lines += ["", f"{passed} of {len(report['targets'])} targets pass.", ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    os.makedirs(in_repo(args.output), exist_ok=True)
    teacher, runs = plan(args)
    print(
        f"[ablation] rows {' '.join(args.rows)}; seeds {' '.join(map(str, args.seeds))}; "
        f"{args.iters} student / {args.teacher_iters} teacher iterations; {len(runs)} runs; "
        f"{args.jobs} at a time",
        flush=True,
    )
    previous = load_previous(args)  # read before this invocation writes the file again
    teacher_seconds = train_teacher(args, teacher)
    teacher = teacher_record(args, teacher)
    carried = carry_over(args, previous, teacher, runs)
    train_runs(args, runs, carried)
    rows = summarize(args, runs, carried)
    targets = evaluate_targets(
        {k: {"mean": r["AP_mean"], "std": r["AP_std"]} for k, r in rows.items()}, teacher["AP"]
    )
    write_results(args, teacher, rows, targets, teacher_seconds, time.time() - start)
    print(open(in_repo(args.results) + ".md").read())
    print(f"[ablation] results: {args.results}.md, {args.results}.json")


if __name__ == "__main__":
    main()
