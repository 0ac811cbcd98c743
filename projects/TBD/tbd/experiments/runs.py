"""
Training stages: ``train_net.py`` runs in subprocesses, and what they leave in their directories.

A stage is a dict with ``name`` (its directory under the output directory, e.g. ``tbd/seed_1``),
``config`` (a config file, relative to the repo root) and ``opts`` (``KEY VALUE`` overrides); the
ablation benchmark adds ``row`` and ``seed``. :func:`run_stage` trains one in the repo root, like

    python train_net.py --config-file CONFIG OPTS...

with its log in ``<output>/<name>/train.log``, and writes ``command.json`` (the command, without
``python``, and its wall time) next to detectron2's ``metrics.json`` and ``model_final.pth``.
"""

import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence


def _repo_root() -> str:
    """The repo root (where ``train_net.py`` is): this package sits in ``projects/TBD/tbd``."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 4))
    return root if os.path.isfile(os.path.join(root, "train_net.py")) else os.getcwd()


REPO = _repo_root()
# The COCO box metrics of a run's last evaluation, as read_metrics returns them.
METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
# The metrics a results json records per run (and per teacher).
SEED_METRICS = ["AP", "AP50", "AP75", "APs", "APm"]
# What a stage leaves in its directory, removed before it trains again.
# detectron2's DefaultTrainer writes metrics.json every WRITER_PERIOD iterations.
WRITER_PERIOD = 20
STAGE_FILES = ("model_final.pth", "metrics.json", "command.json", "last_checkpoint", "harmony.json")


def in_repo(path: str) -> str:
    """A path as the training subprocesses (run in the repo root) see it."""
    return os.path.join(REPO, path)


def schedule(iters: int) -> List[str]:
    """MAX_ITER and the LR steps at 0.75 and 0.9 of it; duplicate steps (short schedules) merged,
    as detectron2's MultiStepParamScheduler refuses a repeated milestone."""
    steps = tuple(sorted({s for s in (int(iters * 0.75), int(iters * 0.9)) if 0 < s < iters}))
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(steps)]


def eval_period(iters: int, evaluations: int) -> int:
    """``TEST.EVAL_PERIOD`` that evaluates ``evaluations`` times in ``iters`` iterations, the last
    at the end: ceil(iters / evaluations) (detectron2 also evaluates after the last iteration)."""
    return max(1, math.ceil(iters / evaluations))


def toy_data(output: str) -> List[str]:
    """The opts of a tiny synthetic dataset under ``output`` (12 train and 4 val images of 64 px),
    the data of the tools' ``--toy`` modes."""
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


def load_cfg(config_file: str, opts: Sequence[str] = ()):
    """A config file (relative to the repo root, or absolute) with the TBD keys and ``opts``."""
    from tbd.config import load_tbd_config

    return load_tbd_config(in_repo(config_file), list(opts))


def command(stage: Dict) -> List[str]:
    """The train_net.py command line of a stage, as :func:`run_stage` records it."""
    return ["train_net.py", "--config-file", stage["config"], *stage["opts"]]


def command_line(stage: Dict) -> str:
    """The command of a stage as one line with ``python``, as the results files record it."""
    return shlex.join(["python"] + command(stage))


def run_stage(name, config_file, opts, output, prefix="demo", env=None) -> str:
    """Train one model with train_net.py in a subprocess (in the repo root), streaming progress
    lines. ``output``: the directory of the stage directories; ``env``: the subprocess's
    environment (default: this process's). Returns the command as one line, with ``python``."""
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


def _metrics_rows(stage_dir: str) -> List[Dict]:
    with open(os.path.join(stage_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def read_metrics(stage_dir: str) -> Dict:
    """Final COCO bbox metrics (``bbox``: {metric: value}, empty without an evaluation) and median
    seconds per training iteration (``s_per_iter``), from metrics.json."""
    rows = _metrics_rows(stage_dir)
    evals = [r for r in rows if "bbox/AP" in r]
    times = [r["time"] for r in rows if "time" in r]
    return {
        "bbox": {m: evals[-1][f"bbox/{m}"] for m in METRICS} if evals else {},
        "s_per_iter": statistics.median(times) if times else float("nan"),
    }


def read_eval_curve(stage_dir: str, max_iter: int) -> List[Dict]:
    """
    Every evaluation in metrics.json of a run of ``max_iter`` iterations, in order:
    ``{"iter": iterations trained, "AP": bbox AP}``. detectron2 records a periodic evaluation
    (``TEST.EVAL_PERIOD``) at the iteration index of its last step (iterations trained - 1) and
    the final one at ``max_iter``. Its JSON writer keeps the last evaluation of every
    :data:`WRITER_PERIOD` iterations only: periods shorter than that lose evaluations.
    """
    return [
        {"iter": min(int(r["iteration"]) + 1, max_iter), "AP": float(r["bbox/AP"])}
        for r in _metrics_rows(stage_dir)
        if "bbox/AP" in r
    ]


def metrics_of(stage_dir: str) -> Dict:
    """:func:`read_metrics`, or no metrics when the stage has no metrics.json (a teacher
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


def recorded_command(stage_dir: str) -> Optional[List[str]]:
    """The command that trained a stage (command.json), or None."""
    path = os.path.join(stage_dir, "command.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("command")


def recorded_wall_seconds(stage_dir: str) -> Optional[float]:
    with open(os.path.join(stage_dir, "command.json")) as f:
        return json.load(f).get("wall_seconds")


def check_same_command(stage: Dict, stage_dir: str, hint: str, prefix: str = "ablation") -> None:
    """Refuse to reuse a stage that was trained by another command than the planned one."""
    recorded = recorded_command(stage_dir)
    if recorded is not None and recorded != command(stage):
        raise SystemExit(
            f"[{prefix}] {stage['name']}: {stage_dir} was trained by a different command:\n"
            f"  recorded: {shlex.join(recorded)}\n  planned:  {shlex.join(command(stage))}\n"
            f"Use {hint} to train it again, or another --output."
        )


def clear_stage(stage_dir: str) -> None:
    """Remove a stage's previous results before it trains (detectron2 appends to metrics.json)."""
    for name in STAGE_FILES:
        path = os.path.join(stage_dir, name)
        if os.path.isfile(path):
            os.remove(path)


def thread_env(jobs: int) -> Optional[Dict[str, str]]:
    """The environment of a run when ``jobs`` train at once: the cores shared out through
    OMP_NUM_THREADS (torch's intra-op threads). None (inherit) for one job at a time."""
    if jobs == 1:
        return None
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def train_stages(
    stages: Sequence[Dict],
    output: str,
    *,
    jobs: int = 1,
    force: bool = False,
    carried: Sequence[str] = (),
    carried_from: str = "",
    prefix: str = "ablation",
) -> List[str]:
    """
    Train every stage that is neither finished in ``output`` (relative to the repo root) nor
    named in ``carried``, ``jobs`` at a time (each stage's wall time goes to its command.json).
    A finished stage is reused (unless ``force``) when it was trained by the planned command, and
    refused otherwise. Before each stage: its number, the time elapsed and an ETA (the mean wall
    time of the stages trained so far, times the stages left, divided by ``jobs``). Returns the
    names of the stages trained now.
    """
    start = time.time()
    pending = []
    for i, stage in enumerate(stages):
        head = f"[{prefix}] {stage['name']} (run {i + 1} of {len(stages)})"
        stage_dir = in_repo(os.path.join(output, stage["name"]))
        if stage["name"] in carried:
            print(f"{head}: carried over from {carried_from}", flush=True)
        elif not force and finished(stage_dir):
            check_same_command(stage, stage_dir, "--force", prefix)
            print(f"{head}: finished before, reused", flush=True)
        else:
            pending.append((head, stage))

    env, lock = thread_env(jobs), threading.Lock()
    durations: Dict[str, float] = {}  # of the stages trained now, for the ETA

    def train(head, stage):
        with lock:
            done = list(durations.values())
            left = len(pending) - len(done)
            eta = (
                fmt_minutes(statistics.mean(done) * left / jobs)
                if done
                else "unknown (no run timed yet)"
            )
            print(f"{head}, elapsed {fmt_minutes(time.time() - start)}, ETA {eta}", flush=True)
        stage_dir = in_repo(os.path.join(output, stage["name"]))
        clear_stage(stage_dir)
        t0 = time.time()
        run_stage(stage["name"], stage["config"], stage["opts"], in_repo(output), prefix, env)
        if not finished(stage_dir):
            raise SystemExit(
                f"[{prefix}] {stage['name']}: no evaluation in {stage_dir}/metrics.json"
            )
        with lock:
            durations[stage["name"]] = time.time() - t0

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(train, head, stage) for head, stage in pending]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # the stages not started yet; the running ones finish
                future.cancel()
            raise
    return [stage["name"] for _, stage in pending]
