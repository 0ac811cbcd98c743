"""
The targets of the ablation benchmark, and the plateau judgement of a training curve.

A target is a function of the benchmark's :class:`Evidence` that returns ``{"target": the
statement, "status": "PASS" | "FAIL" | "N/A", "detail": the numbers}``; N/A when a number it needs
is missing (a row not run, one seed, no harmony statistics...). The factories below make the
targets a regime lists (:mod:`.regimes`), with their thresholds.
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from .tables import missing

# How the targets name the rows.
SHORT = {
    "baseline": "baseline",
    "feature_mimic": "feature mimic",
    "logit_kd": "logit KD",
    "hd_only": "HD only",
    "tfd_only": "TFD only",
    "tbd": "TBD",
}
# The plateau judgement: the evaluations after PLATEAU_TAIL of the schedule (its last third), at
# least PLATEAU_MIN_POINTS of them.
PLATEAU_TAIL = 2 / 3
PLATEAU_MIN_POINTS = 2


@dataclass
class Evidence:
    """
    What the targets judge.

    Attributes:
        rows: {row: {"mean": mean AP over seeds, "std": its sample std (NaN with one seed)}}.
        teacher_ap: the teacher's AP.
        harmony: {"teacher" or row: foreground-anchor statistics} (the teacher's, a row's mean
            over seeds): ``harmonious_fraction``, ``spearman``, ...
        curves: {row: {seed: [{"iter": iterations trained, "AP": AP}, ...]}}, the evaluations.
        max_iter: the students' schedule (iterations).
        doubling: {"seed", "iters", "AP", "AP_2x"}: a baseline seed at the schedule and at twice it.
        schedules: {row: {k: AP}}: the first seed of a row at k times the schedule (k = 1 is the
            row's own run).
    """

    rows: Dict[str, Dict]
    teacher_ap: float = float("nan")
    harmony: Dict[str, Dict] = field(default_factory=dict)
    curves: Dict[str, Dict[str, List[Dict]]] = field(default_factory=dict)
    max_iter: int = 0
    doubling: Optional[Dict] = None
    schedules: Dict[str, Dict[int, float]] = field(default_factory=dict)

    def ap(self, row: str) -> float:
        value = self.rows.get(row, {}).get("mean", float("nan"))
        return float("nan") if value is None else float(value)

    def std(self, row: str) -> float:
        value = self.rows.get(row, {}).get("std", float("nan"))
        return float("nan") if value is None else float(value)

    def harmony_of(self, who: str, stat: str) -> float:
        value = (self.harmony.get(who) or {}).get(stat)
        return float("nan") if value is None else float(value)


Target = Callable[[Evidence], Dict]


def result(target: str, passed: Optional[bool], detail: str) -> Dict:
    status = "N/A" if passed is None else ("PASS" if passed else "FAIL")
    return {"target": target, "status": status, "detail": detail}


def _missing(*values) -> bool:
    return any(missing(v) for v in values)


def evaluate(targets: Sequence[Target], evidence: Evidence) -> List[Dict]:
    """Every target's result, in order."""
    return [target(evidence) for target in targets]


# ---------------------------------------------------------------------------- AP of the rows


def tbd_gain(min_gain: float) -> Target:
    """TBD AP >= baseline AP + ``min_gain``."""

    def target(e: Evidence) -> Dict:
        text = f"TBD AP >= baseline AP + {min_gain:.1f}"
        base, tbd = e.ap("baseline"), e.ap("tbd")
        if _missing(base, tbd):
            return result(text, None, "needs the baseline and TBD rows")
        gain = tbd - base
        detail = f"TBD {tbd:.2f} - baseline {base:.2f} = {gain:+.2f} AP (needs >= +{min_gain:.1f})"
        return result(text, gain >= min_gain, detail)

    return target


def gap_closed(fraction: float) -> Target:
    """TBD closes >= ``fraction`` of the teacher - baseline gap; FAIL when there is no gap (the
    teacher not above the baseline: it is never divided by)."""

    def target(e: Evidence) -> Dict:
        text = f"TBD closes >= {fraction:.0%} of the teacher - baseline gap"
        base, tbd, teacher = e.ap("baseline"), e.ap("tbd"), e.teacher_ap
        if _missing(base, tbd, teacher):
            return result(text, None, "needs the baseline and TBD rows and the teacher's AP")
        gap = teacher - base
        if gap <= 0:
            detail = f"teacher {teacher:.2f} is not above baseline {base:.2f}: no gap to close"
            return result(text, False, detail)
        closed = (tbd - base) / gap
        detail = (
            f"(TBD - baseline) / (teacher - baseline) = {tbd - base:+.2f} / {gap:.2f} = "
            f"{closed:.0%} (needs >= {fraction:.0%})"
        )
        return result(text, closed >= fraction, detail)

    return target


def gain_over_noise(factor: float) -> Target:
    """TBD's gain > ``factor`` x the larger seed std of TBD and the baseline."""

    def target(e: Evidence) -> Dict:
        text = f"TBD's gain > {factor:g} x the seed std (larger of TBD's and baseline's)"
        base, tbd = e.ap("baseline"), e.ap("tbd")
        if _missing(base, tbd):
            return result(text, None, "needs the baseline and TBD rows")
        if _missing(e.std("tbd"), e.std("baseline")):
            return result(text, None, "needs >= 2 seeds of the baseline and TBD rows")
        noise = max(e.std("tbd"), e.std("baseline"))
        detail = (
            f"gain {tbd - base:+.2f} vs {factor:g} x max(std TBD {e.std('tbd'):.2f}, "
            f"std baseline {e.std('baseline'):.2f}) = {factor * noise:.2f}"
        )
        return result(text, tbd - base > factor * noise, detail)

    return target


def compare(row: str, ref: str, sign: int = 1, by_std: bool = False) -> Target:
    """AP(row) > AP(ref) (``sign`` +1) or AP(row) < AP(ref) (-1); with ``by_std``, AP(row) must
    exceed AP(ref) by more than the larger seed std of the two rows."""
    label, ref_label = SHORT[row], SHORT[ref]

    def target(e: Evidence) -> Dict:
        text = f"{label} AP {'>' if sign > 0 else '<'} {ref_label} AP"
        if by_std:
            text += " + the larger seed std of the two"
        a, b = e.ap(row), e.ap(ref)
        if _missing(a, b):
            return result(text, None, f"needs the {label} and {ref_label} rows")
        detail = f"{label} {a:.2f} vs {ref_label} {b:.2f} ({a - b:+.2f})"
        if not by_std:
            return result(text, sign * (a - b) > 0, detail)
        if _missing(e.std(row), e.std(ref)):
            return result(text, None, f"needs >= 2 seeds of the {label} and {ref_label} rows")
        margin = max(e.std(row), e.std(ref))
        detail = (
            f"{label} {a:.2f} vs {ref_label} {b:.2f} ({a - b:+.2f}; needs > max(std {label} "
            f"{e.std(row):.2f}, std {ref_label} {e.std(ref):.2f}) = {margin:.2f})"
        )
        return result(text, a - b > margin, detail)

    return target


def teacher_margin(min_margin: float) -> Target:
    """teacher AP >= baseline AP + ``min_margin``: a teacher with something to teach."""

    def target(e: Evidence) -> Dict:
        text = f"teacher AP >= baseline AP + {min_margin:.1f}"
        base, teacher = e.ap("baseline"), e.teacher_ap
        if _missing(base, teacher):
            return result(text, None, "needs the baseline row and the teacher's AP")
        margin = teacher - base
        detail = (
            f"teacher {teacher:.2f} - baseline {base:.2f} = {margin:+.2f} AP "
            f"(needs >= +{min_margin:.1f})"
        )
        return result(text, margin >= min_margin, detail)

    return target


# ---------------------------------------------------------------------------- harmony


def teacher_harmony(min_fraction: float) -> Target:
    """The teacher's harmonious proportion of foreground anchors on the test split >=
    ``min_fraction``: a teacher whose harmony HD can distill."""

    def target(e: Evidence) -> Dict:
        text = f"teacher's harmonious proportion of foreground anchors on val >= {min_fraction:.0%}"
        value = e.harmony_of("teacher", "harmonious_fraction")
        if _missing(value):
            return result(text, None, "needs the teacher's harmony statistics")
        count = (e.harmony.get("teacher") or {}).get("count")
        detail = f"teacher {value:.1%} of {count} foreground anchors (needs >= {min_fraction:.0%})"
        return result(text, value >= min_fraction, detail)

    return target


STAT_NAMES = {"harmonious_fraction": "harmonious proportion", "spearman": "Spearman of s vs u"}


def closer_to_teacher(stat: str) -> Target:
    """|h(TBD) - h(teacher)| < |h(baseline) - h(teacher)| for the foreground-anchor statistic
    ``stat`` (mean over seeds for the students)."""

    def target(e: Evidence) -> Dict:
        text = (
            f"TBD's foreground-anchor {STAT_NAMES[stat]} is closer to the teacher's than the "
            "baseline's"
        )
        t, tbd, base = (e.harmony_of(w, stat) for w in ("teacher", "tbd", "baseline"))
        if _missing(t, tbd, base):
            return result(text, None, "needs harmony statistics of the teacher, baseline and TBD")
        detail = (
            f"|TBD {tbd:.3f} - teacher {t:.3f}| = {abs(tbd - t):.3f} vs "
            f"|baseline {base:.3f} - teacher {t:.3f}| = {abs(base - t):.3f}"
        )
        return result(text, abs(tbd - t) < abs(base - t), detail)

    return target


# ---------------------------------------------------------------------------- convergence


def judge_plateau(
    curves: Dict[str, List[Dict]],
    max_iter: int,
    max_range: float,
    tail: float = PLATEAU_TAIL,
    min_points: int = PLATEAU_MIN_POINTS,
) -> Dict:
    """
    Whether a row's training curve has flattened: the mean AP over seeds at each evaluation
    (the iterations every seed evaluated at, with a known AP), over the evaluations at or after
    ``tail`` x ``max_iter`` iterations; PASS when max - min of those means <= ``max_range``, N/A
    with fewer than ``min_points`` of them.

    Args:
        curves: {seed: [{"iter": iterations trained, "AP": AP}, ...]}.
    Returns:
        dict with ``status``, ``detail``, ``points`` ([(iter, mean AP)] of the tail) and
        ``range`` (None when N/A).
    """
    per_seed = [{p["iter"]: p["AP"] for p in curve} for curve in curves.values() if curve]
    common = sorted(set.intersection(*map(set, per_seed))) if per_seed else []
    means = [
        (it, sum(c[it] for c in per_seed) / len(per_seed))
        for it in common
        if not any(missing(c[it]) for c in per_seed)
    ]
    points = [(it, ap) for it, ap in means if it >= tail * max_iter]
    if len(points) < min_points:
        detail = (
            f"{len(points)} evaluation(s) with a known AP after {tail:.0%} of {max_iter} "
            f"iterations (needs >= {min_points})"
        )
        return {"status": "N/A", "detail": detail, "points": points, "range": None}
    aps = [ap for _, ap in points]
    spread = max(aps) - min(aps)
    listed = ", ".join(f"{ap:.2f}" for ap in aps)
    detail = (
        f"mean AP over {len(per_seed)} seed(s) at iterations "
        f"{', '.join(str(it) for it, _ in points)}: {listed}; max - min = {spread:.2f} "
        f"(needs <= {max_range:.1f})"
    )
    status = "PASS" if spread <= max_range else "FAIL"
    return {"status": status, "detail": detail, "points": points, "range": spread}


def baseline_plateaued(max_range: float) -> Target:
    """The baseline's mean AP over seeds varies by <= ``max_range`` over the evaluations of the
    last third of training (:func:`judge_plateau`)."""

    def target(e: Evidence) -> Dict:
        text = (
            f"baseline plateaued: its mean AP varies by <= {max_range:.1f} over the evaluations "
            "in the last third of training"
        )
        curves = e.curves.get("baseline")
        if not curves:
            return result(text, None, "needs the baseline row with periodic evaluation")
        judged = judge_plateau(curves, e.max_iter, max_range)
        return {"target": text, "status": judged["status"], "detail": judged["detail"]}

    return target


def doubling_adds_little(max_gain: float) -> Target:
    """Training the baseline twice as long adds < ``max_gain`` AP (one seed)."""

    def target(e: Evidence) -> Dict:
        text = f"doubling the baseline schedule adds < {max_gain:.1f} AP"
        d = e.doubling or {}
        if _missing(d.get("AP"), d.get("AP_2x")):
            return result(text, None, "needs the baseline_2x run and the same seed of the baseline")
        gain = d["AP_2x"] - d["AP"]
        detail = (
            f"baseline seed {d['seed']}: {d['AP']:.2f} after {d['iters']} iterations, "
            f"{d['AP_2x']:.2f} after {2 * d['iters']} ({gain:+.2f}; needs < +{max_gain:.1f})"
        )
        return result(text, gain < max_gain, detail)

    return target


def _longest(e: Evidence, row: str) -> Optional[int]:
    """The longest schedule multiple at which ``row``'s first seed has an AP (None: only 1x)."""
    ks = [k for k, ap in e.schedules.get(row, {}).items() if k > 1 and not missing(ap)]
    return max(ks) if ks else None


def last_doubling_adds_little(max_gain: float) -> Target:
    """The baseline has plateaued by its longest schedule K x: AP(K x) - AP(K/2 x) < ``max_gain``
    (one seed)."""

    def target(e: Evidence) -> Dict:
        text = f"the baseline's last doubling of its schedule adds < {max_gain:.1f} AP"
        at, k = e.schedules.get("baseline", {}), _longest(e, "baseline")
        if k is None or k < 4 or _missing(at.get(k // 2)):
            return result(text, None, "needs the baseline at 2 schedules beyond its own (2x, 4x)")
        gain = at[k] - at[k // 2]
        detail = (
            f"baseline, first seed: {at[k // 2]:.2f} at {k // 2}x the schedule, {at[k]:.2f} at "
            f"{k}x ({gain:+.2f}; needs < +{max_gain:.1f})"
        )
        return result(text, gain < max_gain, detail)

    return target


def tbd_over_longest_baseline(min_gain: float) -> Target:
    """TBD at the benchmark's schedule (mean over seeds) >= the baseline at its longest schedule
    (first seed) + ``min_gain``: distillation beats training the baseline longer."""

    def target(e: Evidence) -> Dict:
        text = f"TBD AP >= the baseline's AP at its longest schedule + {min_gain:.1f}"
        k, tbd = _longest(e, "baseline"), e.ap("tbd")
        if k is None or _missing(tbd):
            return result(text, None, "needs the TBD row and the baseline at a longer schedule")
        base = e.schedules["baseline"][k]
        detail = (
            f"TBD {tbd:.2f} (1x, mean over seeds) - baseline {base:.2f} ({k}x, first seed) = "
            f"{tbd - base:+.2f} AP (needs >= +{min_gain:.1f})"
        )
        return result(text, tbd - base >= min_gain, detail)

    return target


def gain_at_longest(min_gain: float) -> Target:
    """At the longest schedule both rows ran (first seed): AP(TBD) >= AP(baseline) +
    ``min_gain``."""

    def target(e: Evidence) -> Dict:
        text = f"at the longest schedule, TBD AP >= baseline AP + {min_gain:.1f}"
        base, tbd = e.schedules.get("baseline", {}), e.schedules.get("tbd", {})
        shared = [k for k in base if k in tbd and k > 1 and not _missing(base[k], tbd[k])]
        if not shared:
            return result(text, None, "needs the baseline and TBD at a longer schedule")
        k = max(shared)
        gain = tbd[k] - base[k]
        detail = (
            f"{k}x the schedule, first seed: TBD {tbd[k]:.2f} - baseline {base[k]:.2f} = "
            f"{gain:+.2f} AP (needs >= +{min_gain:.1f})"
        )
        return result(text, gain >= min_gain, detail)

    return target
