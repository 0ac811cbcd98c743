"""
The ablation benchmark (docs/benchmark.md): every row of a regime (:mod:`.regimes`) trained for
several seeds from one teacher, evaluated on the test split, summarized and judged.

:func:`run` does it all: :func:`plan` (the teacher stage and the runs), training (the teacher,
then the runs, ``jobs`` at a time, reusing finished runs and carrying over recorded ones),
:func:`summarize` (per seed and per row; harmony statistics and AP curves when the regime
measures them), the targets, and :func:`write_results` (``<results>.json`` and ``<results>.md``).
"""

import json
import os
import shlex
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from tbd.config import distills

from . import ablation_report, carry_over, harmony_runs, runs, targets
from .environment import environment
from .figures import decode_histogram, plot_score_vs_iou
from .regimes import REGIMES, SWITCHES, TOY_STUDENT_CONFIG, TOY_TEACHER_CONFIG, Regime
from .runs import SEED_METRICS, in_repo, load_cfg
from .tables import mean, missing, nan_to_none, std

PREFIX = "ablation"


@dataclass
class Settings:
    """One invocation of the benchmark (:func:`make_settings` fills the regime's defaults)."""

    regime: Regime
    seeds: List[int]
    iters: int
    teacher_iters: int
    rows: List[str]
    output: str
    results: str
    toy: bool = False
    force: bool = False
    retrain_teacher: bool = False
    jobs: int = 1
    carry_over: bool = True
    argv: List[str] = field(default_factory=list)


def make_settings(
    regime: str = "synthetic",
    *,
    seeds: Sequence[int] = (0, 1, 2),
    iters: Optional[int] = None,
    teacher_iters: Optional[int] = None,
    rows: Optional[Sequence[str]] = None,
    output: Optional[str] = None,
    results: Optional[str] = None,
    toy: bool = False,
    force: bool = False,
    retrain_teacher: bool = False,
    jobs: int = 1,
    no_carry_over: bool = False,
    argv: Sequence[str] = (),
) -> Settings:
    """Settings with the regime's defaults for what is None: its schedules (``--toy``: the toy
    ones), ``output`` (``--toy``: ``<output>_toy``), ``results`` (``--toy``: inside the output,
    never in docs/), every row (in the table's order). Raises ValueError on a bad setting."""
    r = REGIMES[regime]
    seeds = list(seeds)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds has duplicates: {seeds}")
    iters = iters if iters is not None else (r.toy_student_iters if toy else r.student_iters)
    if teacher_iters is None:
        teacher_iters = r.toy_teacher_iters if toy else r.teacher_iters
    if min(iters, teacher_iters) < 1:
        raise ValueError("--iters and --teacher-iters must be positive")
    if jobs < 1:
        raise ValueError("--jobs must be positive")
    unknown = set(rows or ()) - set(r.row_names)
    if unknown:
        raise ValueError(f"regime {regime} has no rows {sorted(unknown)}")
    output = output or (r.output + "_toy" if toy else r.output)
    return Settings(
        regime=r,
        seeds=seeds,
        iters=iters,
        teacher_iters=teacher_iters,
        rows=[row for row in r.row_names if rows is None or row in rows],
        output=output,
        results=results or (os.path.join(output, "ablation") if toy else r.results),
        toy=toy,
        force=force or retrain_teacher,
        retrain_teacher=retrain_teacher,
        jobs=jobs,
        carry_over=not no_carry_over,
        argv=list(argv),
    )


# ---------------------------------------------------------------------------- planning


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def toy_switches(regime: Regime, row: str) -> List[str]:
    """The opts that turn the quick-schedule TBD student into ``row``: the row config's values of
    ``MODEL.META_ARCHITECTURE`` and :data:`SWITCHES` that differ from the regime's tbd config's
    (a plain RetinaNet baseline: its meta-architecture; a TBDRetinaNet baseline: HD and TFD off).
    Read from the row's own config file, so that toy and full runs cannot disagree."""
    cfg, tbd = load_cfg(regime.configs[row]), load_cfg(regime.configs["tbd"])
    keys = ["MODEL.META_ARCHITECTURE", *SWITCHES]
    return [x for k in keys if _get(cfg, k) != _get(tbd, k) for x in (k, str(_get(cfg, k)))]


def teacher_config(regime: Regime) -> str:
    """The teacher config every distilled row names (MODEL.TBD.TEACHER.CONFIG_FILE)."""
    cfgs = {row: load_cfg(config) for row, config in regime.configs.items()}
    names = {row: cfg.MODEL.TBD.TEACHER.CONFIG_FILE for row, cfg in cfgs.items() if distills(cfg)}
    if len(set(names.values())) != 1:
        raise SystemExit(f"[{PREFIX}] the distilled rows name different teachers: {names}")
    return names["tbd"]


def evaluation_split(regime: Regime, toy: bool) -> str:
    """The split every run is evaluated on (the tbd config's first test set)."""
    return "tbd_synthetic_val" if toy else load_cfg(regime.configs["tbd"]).DATASETS.TEST[0]


def plan(s: Settings) -> Tuple[Dict, List[Dict]]:
    """
    The teacher stage and the runs: dicts with name, row, seed, config and opts, seed by seed
    (every row at the first seed, then the next), then the regime's runs at longer schedules
    (``<row>_<k>x/seed_<first seed>`` for its ``longer`` multiples k and ``longer_rows``, the
    longest first, so that ``jobs`` at a time finish together). Paths in opts are as given
    (relative to the repo root, where the subprocesses run).
    """
    r, out = s.regime, s.output
    teacher_weights = os.path.join(out, "teacher", "model_final.pth")
    data = runs.toy_data(out) if s.toy else []
    teacher = {
        "name": "teacher",
        "row": "teacher",
        "seed": 0,
        "config": TOY_TEACHER_CONFIG if s.toy else teacher_config(r),
        "opts": data
        + ["SEED", "0"]
        + runs.schedule(s.teacher_iters)
        + ["OUTPUT_DIR", os.path.join(out, "teacher")],
    }
    row_distills = {row: distills(load_cfg(r.configs[row])) for row in s.rows}
    switches = {row: toy_switches(r, row) if s.toy else [] for row in s.rows}

    def make_run(row, seed, name, iters, evaluations):
        opts = data + ["SEED", str(seed)] + runs.schedule(iters)
        if evaluations:
            opts += ["TEST.EVAL_PERIOD", str(runs.eval_period(iters, evaluations))]
        opts += ["OUTPUT_DIR", os.path.join(out, name)]
        opts += switches[row]
        if row_distills[row]:
            opts += ["MODEL.TBD.TEACHER.WEIGHTS", teacher_weights]
            if s.toy:
                opts += ["MODEL.TBD.TEACHER.CONFIG_FILE", TOY_TEACHER_CONFIG]
                opts += ["MODEL.TBD.WARMUP_ITERS", str(max(1, iters // 6))]
        config = TOY_STUDENT_CONFIG if s.toy else r.configs[row]
        return {"name": name, "row": row, "seed": seed, "config": config, "opts": opts}

    planned = []
    for seed in s.seeds:  # seed by seed: stopped early, every row has its first seeds
        for row in s.rows:
            evaluations = r.evaluations if row in r.curve_rows else 0
            planned.append(make_run(row, seed, f"{row}/seed_{seed}", s.iters, evaluations))
    seed = s.seeds[0]
    for k in sorted(r.longer, reverse=True):
        for row in (row for row in r.longer_rows if row in s.rows):
            extra = make_run(row, seed, f"{longer_name(row, k)}/seed_{seed}", k * s.iters, 0)
            planned.append(dict(extra, row=longer_name(row, k)))
    return teacher, planned


def longer_name(row: str, k: int) -> str:
    """The name of ``row`` at ``k`` times the schedule (its runs' directory and json key)."""
    return f"{row}_{k}x"


# ---------------------------------------------------------------------------- training


def stage_dir(s: Settings, stage: Dict) -> str:
    return in_repo(os.path.join(s.output, stage["name"]))


def train_teacher(s: Settings, teacher: Dict) -> Optional[float]:
    """Train the teacher unless it is reusable; its wall time in seconds when trained now."""
    teacher_dir = stage_dir(s, teacher)
    final = os.path.join(teacher_dir, "model_final.pth")
    if os.path.isfile(final) and not s.retrain_teacher:
        runs.check_same_command(teacher, teacher_dir, "--retrain-teacher", PREFIX)
        print(f"[{PREFIX}] teacher: reusing {final}")
        return None
    runs.clear_stage(teacher_dir)
    t0 = time.time()
    runs.run_stage("teacher", teacher["config"], teacher["opts"], in_repo(s.output), PREFIX)
    return time.time() - t0


def teacher_record(s: Settings, teacher: Dict) -> Dict:
    """The teacher as the results json records it (after it is trained)."""
    teacher_dir = stage_dir(s, teacher)
    metrics = runs.metrics_of(teacher_dir)
    recorded = runs.recorded_command(teacher_dir)
    record = {
        "config": teacher["config"],
        "weights": os.path.join(s.output, "teacher", "model_final.pth"),
        "weights_sha256": carry_over.weights_sha256(os.path.join(teacher_dir, "model_final.pth")),
        "command": shlex.join(["python"] + recorded) if recorded else None,
        "AP": metrics["bbox"].get("AP", float("nan")),
        "bbox": {m: metrics["bbox"].get(m, float("nan")) for m in SEED_METRICS},
        "s_per_iter": metrics["s_per_iter"],
    }
    if s.regime.harmony:
        record["harmony"] = harmony_runs.run_harmony(
            teacher_dir, teacher["config"], teacher["opts"], "teacher", PREFIX
        )
    return record


# ---------------------------------------------------------------------------- summaries


def run_record(s: Settings, run: Dict) -> Dict:
    """A run's per-seed record from its run directory: COCO metrics, s/iter, command, wall time,
    and, when the regime measures them, its AP curve and harmony."""
    directory = stage_dir(s, run)
    metrics = runs.read_metrics(directory)
    record = {m: float(metrics["bbox"].get(m, float("nan"))) for m in SEED_METRICS}
    record["s_per_iter"] = metrics["s_per_iter"]
    record["command"] = runs.command_line(run)
    record["wall_seconds"] = runs.recorded_wall_seconds(directory)
    if "TEST.EVAL_PERIOD" in run["opts"]:
        max_iter = int(run["opts"][run["opts"].index("SOLVER.MAX_ITER") + 1])
        record["ap_curve"] = runs.read_eval_curve(directory, max_iter)
    if s.regime.harmony and run["row"] in s.rows:
        record["harmony"] = harmony_runs.run_harmony(
            directory, run["config"], run["opts"], run["name"], PREFIX
        )
    return record


def summarize(s: Settings, planned: List[Dict], carried: Dict[str, Dict]):
    """
    Per row: the per-seed records (COCO metrics, s/iter, wall time, origin, and the regime's
    extra measurements) and mean / std over seeds (with the harmony statistics' means); and the
    records of the runs outside the table. Returns (rows, extra_runs).
    """
    rows: Dict[str, Dict] = {}
    extra: Dict[str, Dict] = {}
    for run in planned:
        record = carried.get(run["name"]) or run_record(s, run)
        if run["row"] not in s.rows:
            extra[run["name"]] = record
            continue
        row = rows.setdefault(
            run["row"],
            {
                "label": s.regime.labels[run["row"]],
                "config": s.regime.configs[run["row"]],
                "seeds": {},
            },
        )
        row["seeds"][str(run["seed"])] = record
    for row in rows.values():
        for m in ("AP", "AP50", "AP75"):
            row[f"{m}_mean"] = mean([seed[m] for seed in row["seeds"].values()])
        row["AP_std"] = std([seed["AP"] for seed in row["seeds"].values()])
    baseline = rows.get("baseline", {}).get("AP_mean", float("nan"))
    for row in rows.values():
        row["gain_over_baseline"] = row["AP_mean"] - baseline
        if s.regime.harmony:
            row["harmony"] = harmony_runs.mean_over_seeds(
                seed.get("harmony") for seed in row["seeds"].values()
            )
    return rows, extra


def evidence(s: Settings, teacher: Dict, rows: Dict, extra: Dict) -> targets.Evidence:
    """What the targets judge, from the summaries."""
    harmony = {}
    if teacher.get("harmony"):
        harmony["teacher"] = teacher["harmony"]["statistics"]["anchors"]
    for name, row in rows.items():
        if row.get("harmony"):
            harmony[name] = row["harmony"]["anchors"]
    curves = {
        name: {seed: rec["ap_curve"] for seed, rec in row["seeds"].items() if rec.get("ap_curve")}
        for name, row in rows.items()
    }
    doubling = None
    first = str(s.seeds[0])
    doubled = extra.get(f"{longer_name('baseline', 2)}/seed_{first}")
    if doubled is not None:
        base = rows.get("baseline", {}).get("seeds", {}).get(first, {})
        doubling = {"seed": first, "iters": s.iters, "AP": base.get("AP"), "AP_2x": doubled["AP"]}
    schedules = {}
    for row in (row for row in s.regime.longer_rows if row in rows):
        at = {1: rows[row]["seeds"].get(first, {}).get("AP")}
        for k in s.regime.longer:
            at[k] = extra.get(f"{longer_name(row, k)}/seed_{first}", {}).get("AP")
        schedules[row] = {k: ap for k, ap in at.items() if not missing(ap)}
    return targets.Evidence(
        rows={k: {"mean": r["AP_mean"], "std": r["AP_std"]} for k, r in rows.items()},
        teacher_ap=teacher["AP"],
        harmony=harmony,
        curves={k: v for k, v in curves.items() if v},
        max_iter=s.iters,
        doubling=doubling,
        schedules=schedules,
    )


# ---------------------------------------------------------------------------- results


def figure_path(results: str) -> str:
    """Where the score-vs-IoU figure goes: next to the results, ``<results>_score_vs_iou.png``."""
    return results + "_score_vs_iou.png"


def write_figure(s: Settings, teacher: Dict, rows: Dict) -> Optional[str]:
    """Score vs IoU of foreground anchors of the teacher, the baseline and the TBD student of
    the first seed, side by side, from their recorded histograms. Returns its path (relative to
    the repo root, as ``--results``), or None without harmony records."""
    first = str(s.seeds[0])
    who = [("teacher", teacher.get("harmony"))]
    for name, label in (("baseline", "baseline"), ("tbd", "TBD")):
        record = rows.get(name, {}).get("seeds", {}).get(first, {})
        who.append((f"{label} seed {first}", record.get("harmony")))
    if not all(h and h.get("anchor_histogram") for _, h in who):
        return None
    panels = [
        (name, decode_histogram(h["anchor_histogram"]), h["statistics"]["anchors"])
        for name, h in who
    ]
    path = figure_path(s.results)
    plot_score_vs_iou(panels, who[0][1]["delta"], in_repo(path))
    return path


def settings_record(s: Settings) -> Dict:
    env = runs.thread_env(s.jobs)
    return {
        "regime": s.regime.name,
        "toy": s.toy,
        "seeds": s.seeds,
        "student_iters": s.iters,
        "teacher_iters": s.teacher_iters,
        "rows": s.rows,
        "output": s.output,
        "jobs": s.jobs,
        "threads_per_run": None if env is None else int(env["OMP_NUM_THREADS"]),
        "test_dataset": evaluation_split(s.regime, s.toy),
        "note": "the val split is the test data: reported on only, nothing tuned on it",
    }


def convergence(s: Settings, facts: targets.Evidence) -> Optional[Dict]:
    """The evidence that the baseline has converged, for the report: the evaluation schedule,
    the plateau judgement of its AP curve, the 2x-schedule baseline and the AP of the first seed
    at each schedule (None when the regime measures none of them)."""
    r = s.regime
    if not (r.evaluations or r.longer):
        return None
    out = {}
    if r.evaluations:
        curves = facts.curves.get("baseline")
        out.update(
            evaluations=r.evaluations,
            eval_period=runs.eval_period(s.iters, r.evaluations),
            curve_rows=[row for row in r.curve_rows if row in s.rows],
            plateau=dict(
                (
                    targets.judge_plateau(curves, s.iters, r.plateau_range)
                    if curves
                    else {"status": "N/A", "detail": "no AP curve of the baseline", "range": None}
                ),
                max_range=r.plateau_range,
            ),
        )
    if 2 in r.longer and "baseline" in r.longer_rows:
        d = facts.doubling or {}
        gain = None if None in (d.get("AP"), d.get("AP_2x")) else d["AP_2x"] - d["AP"]
        out["doubling"] = {**d, "gain": gain} if d else None
    if r.longer:
        out["schedules"] = {
            "seed": str(s.seeds[0]),
            "iters": s.iters,
            "multiples": [1, *sorted(r.longer)],
            "AP": {
                row: {str(k): ap for k, ap in at.items()} for row, at in facts.schedules.items()
            },
        }
    return out


def write_results(
    s: Settings, teacher, rows, extra, judged, wall_seconds, more=None, env=None
) -> Dict:
    """Write <results>.json and <results>.md; return the json's content. ``more``: the regime's
    sections beyond the table (``extra_runs``, ``convergence``, ``figure``), in order; ``env``:
    :func:`environment` as the invocation started (default: now)."""
    report = {
        "generated_by": shlex.join(["python", "tools/benchmark_ablation.py", *s.argv]),
        **(env or environment()),
        "settings": settings_record(s),
        "teacher": teacher,
        "rows": rows,
        **{k: v for k, v in (more or {}).items() if v},
        "targets": judged,
        "wall_seconds": wall_seconds,
    }
    report = nan_to_none(report)
    base = in_repo(s.results)
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with open(base + ".md", "w") as f:
        f.write(ablation_report.markdown(report, s.results))
    return report


def run(s: Settings) -> Dict:
    """The whole benchmark (module docstring); returns the results json's content."""
    start = time.time()
    # the commit and the state of the worktree that run, before this invocation writes its
    # outputs (the figure and results under docs/ are tracked: written, they would mark it dirty)
    env = environment()
    os.makedirs(in_repo(s.output), exist_ok=True)
    teacher, planned = plan(s)
    print(
        f"[{PREFIX}] regime {s.regime.name}; rows {' '.join(s.rows)}; seeds "
        f"{' '.join(map(str, s.seeds))}; {s.iters} student / {s.teacher_iters} teacher "
        f"iterations; {len(planned)} runs; {s.jobs} at a time",
        flush=True,
    )
    # read before this invocation writes the file again
    previous = carry_over.load_previous(s.results, s.carry_over and not s.force)
    teacher_seconds = train_teacher(s, teacher)
    t0 = time.time()
    teacher = teacher_record(s, teacher)
    carried = carry_over.carry_over(previous, teacher, planned, s.output, s.results, PREFIX)
    t1 = time.time()
    trained = runs.train_stages(
        planned,
        s.output,
        jobs=s.jobs,
        force=s.force,
        carried=list(carried),
        carried_from=f"{s.results}.json",
        prefix=PREFIX,
    )
    t2 = time.time()
    rows, extra = summarize(s, planned, carried)
    facts = evidence(s, teacher, rows, extra)
    judged = targets.evaluate(s.regime.targets, facts)
    more = {"extra_runs": extra, "convergence": convergence(s, facts)}
    if s.regime.harmony:
        more["figure"] = write_figure(s, teacher, rows)
    wall = {"total": time.time() - start, "teacher": teacher_seconds}
    if s.regime.details:
        wall.update(
            runs=t2 - t1,
            analysis=(t1 - t0) + (time.time() - t2),
            runs_trained=len(trained),
            runs_carried_over=len(carried),
            runs_planned=len(planned),
            run_median=_median_run(rows, extra),
        )
    return write_results(s, teacher, rows, extra, judged, wall, more, env)


def _median_run(rows: Dict, extra: Dict) -> Optional[float]:
    """The median recorded wall time of a run (trained now or earlier)."""
    records = [rec for row in rows.values() for rec in row["seeds"].values()]
    seconds = [r["wall_seconds"] for r in records + list(extra.values()) if r.get("wall_seconds")]
    return statistics.median(seconds) if seconds else None
