"""
The regimes of the ablation benchmark, as data: which configs make its rows, the default
schedules, where it writes, which targets it judges and what it measures beyond AP.

* ``synthetic``: the benchmark of docs/results/synthetic.md (configs/Synthetic/*_R18.yaml);
* ``converged``: students trained until the baseline has stopped improving, from a teacher well
  above it (configs/Converged/), with harmony statistics, AP curves and a 2x-schedule baseline.

Every row of a regime is one config; the ablation rows inherit the regime's ``tbd`` config and
differ from it only in :data:`SWITCHES` (checked by the tests).
"""

from dataclasses import dataclass
from typing import Dict, Tuple

from . import targets as T

# The keys that make a row what it is; --toy applies a row's values of them (relative to the
# regime's tbd config) to the quick-schedule TBD student.
SWITCHES = [
    "MODEL.TBD.HD.ENABLED",
    "MODEL.TBD.HD.TARGET",
    "MODEL.TBD.HD.REG_WEIGHTING",
    "MODEL.TBD.TFD.ENABLED",
    "MODEL.TBD.TFD.MASK",
    "MODEL.TBD.TFD.BALANCE",
    "MODEL.TBD.TFD.CLS_RATIO",
]
TOY_TEACHER_CONFIG = "configs/quick_schedules/teacher_instant_test.yaml"
TOY_STUDENT_CONFIG = "configs/quick_schedules/tbd_instant_test.yaml"

# ------------------------------------------------------------------ the converged regime's numbers
# Edit these (and configs/Converged/*.yaml) to set the converged regime.
CONVERGED_STUDENT_ITERS = 6000  # student schedule (iterations)
CONVERGED_TEACHER_ITERS = 20000  # teacher schedule
CONVERGED_EVALUATIONS = 6  # evaluations of the baseline and TBD rows (their AP curves)
CONVERGED_TEACHER_MARGIN = 6.0  # teacher AP >= baseline AP + 6.0
CONVERGED_TEACHER_HARMONY = 0.10  # teacher's harmonious proportion of foreground anchors
CONVERGED_PLATEAU_RANGE = 1.0  # baseline's mean AP over the last third varies by <= 1.0
CONVERGED_DOUBLING_GAIN = 1.0  # doubling the baseline schedule adds < 1.0 AP
# The baseline and TBD rows (first seed) are also trained at these multiples of the schedule: where
# the baseline stops improving, and whether TBD's gain holds there.
CONVERGED_LONGER = (2, 4)
CONVERGED_TBD_GAIN = 2.0  # TBD AP >= baseline AP + 2.0
CONVERGED_STD_FACTOR = 3.0  # TBD's gain > 3 x the larger seed std

# ------------------------------------------------------------------ the synthetic regime's numbers
SYNTHETIC_STUDENT_ITERS = 1000
SYNTHETIC_TEACHER_ITERS = 3000
SYNTHETIC_TBD_GAIN = 3.0  # TBD AP >= baseline AP + 3.0
SYNTHETIC_GAP_CLOSED = 0.5  # TBD closes >= 50% of the teacher - baseline gap
SYNTHETIC_STD_FACTOR = 3.0  # TBD's gain > 3 x the larger seed std of TBD and baseline


@dataclass(frozen=True)
class Row:
    name: str  # its key in the results json and on the command line (--rows)
    label: str  # in the table
    config: str  # relative to the repo root


@dataclass(frozen=True)
class Tuning:
    """tools/tune_distillation.py in a regime: candidates train the regime's tbd (and baseline)
    config for ``iters`` iterations from ``teacher_weights`` and are scored on a held-out split
    generated under ``heldout_root`` (generator seed 1), never on the test split."""

    iters: int
    teacher_weights: str
    output: str
    results: str
    heldout_root: str


@dataclass(frozen=True)
class Regime:
    """
    A benchmark regime. Paths are relative to the repo root.

    Attributes:
        rows: the table's rows, in order (``baseline`` and ``tbd`` among them).
        student_iters, teacher_iters: the default schedules (``--iters``, ``--teacher-iters``).
        output, results: the run directories and the results (``<results>.md``, ``.json``).
        targets: what the report judges (:mod:`.targets`).
        harmony: measure harmony statistics of every run and of the teacher on the test split.
        evaluations: evaluate the ``curve_rows`` this many times over the schedule (0: only at the
            end), for their AP curves and the plateau judgement.
        longer: schedule multiples k of extra runs of the ``longer_rows`` (first seed each),
            ``<row>_<k>x/seed_<s>``: the baseline at 2x (the doubling target) and beyond shows
            where it stops improving, TBD at the same schedules whether its gain holds there.
        toy_student_iters, toy_teacher_iters: the schedules of ``--toy``.
    """

    name: str
    title: str
    summary: str
    rows: Tuple[Row, ...]
    student_iters: int
    teacher_iters: int
    output: str
    results: str
    targets: Tuple[T.Target, ...]
    tuning: Tuning
    harmony: bool = False
    evaluations: int = 0
    curve_rows: Tuple[str, ...] = ()
    plateau_range: float = 1.0
    longer: Tuple[int, ...] = ()
    longer_rows: Tuple[str, ...] = ()
    toy_student_iters: int = 4
    toy_teacher_iters: int = 4

    @property
    def row_names(self):
        return [r.name for r in self.rows]

    @property
    def labels(self) -> Dict[str, str]:
        return {r.name: r.label for r in self.rows}

    @property
    def configs(self) -> Dict[str, str]:
        return {r.name: r.config for r in self.rows}

    @property
    def details(self) -> bool:
        """Whether the report has the sections beyond today's synthetic table (harmony, curves,
        wall times)."""
        return self.harmony or self.evaluations > 0 or bool(self.longer)


SYNTHETIC = Regime(
    name="synthetic",
    title="Ablation on the synthetic dataset",
    summary="",
    rows=(
        Row("baseline", "baseline (no distillation)", "configs/Synthetic/student_R18.yaml"),
        Row("feature_mimic", "feature mimic (FitNet)", "configs/Synthetic/feature_mimic_R18.yaml"),
        Row("logit_kd", "logit KD", "configs/Synthetic/logit_kd_R18.yaml"),
        Row("hd_only", "HD only", "configs/Synthetic/hd_only_R18.yaml"),
        Row("tfd_only", "TFD only", "configs/Synthetic/tfd_only_R18.yaml"),
        Row("tbd", "TBD (HD + TFD)", "configs/Synthetic/tbd_R18.yaml"),
    ),
    student_iters=SYNTHETIC_STUDENT_ITERS,
    teacher_iters=SYNTHETIC_TEACHER_ITERS,
    output="output/ablation",
    results="docs/results/synthetic",
    targets=(
        T.tbd_gain(SYNTHETIC_TBD_GAIN),
        T.gap_closed(SYNTHETIC_GAP_CLOSED),
        T.gain_over_noise(SYNTHETIC_STD_FACTOR),
        T.compare("hd_only", "baseline"),
        T.compare("tfd_only", "baseline"),
        T.compare("feature_mimic", "tbd", sign=-1),
        T.compare("logit_kd", "tbd", sign=-1),
    ),
    tuning=Tuning(
        iters=500,
        teacher_weights="output/ablation/teacher/model_final.pth",
        output="output/tuning",
        results="docs/results/tuning",
        heldout_root="datasets/tbd_synthetic_heldout_seed1",
    ),
)

CONVERGED = Regime(
    name="converged",
    title="Ablation in the converged regime",
    summary=(
        "students are trained until the baseline has stopped improving (its AP curve, and runs "
        "at longer schedules below), from a teacher well above it; every run's harmony on the "
        "test split is measured with tbd.analysis, as tools/analyze_harmony.py does."
    ),
    rows=(
        Row("baseline", "baseline (no distillation)", "configs/Converged/student.yaml"),
        Row("feature_mimic", "feature mimic (FitNet)", "configs/Converged/feature_mimic.yaml"),
        Row("logit_kd", "logit KD", "configs/Converged/logit_kd.yaml"),
        Row("hd_only", "HD only", "configs/Converged/hd_only.yaml"),
        Row("tfd_only", "TFD only", "configs/Converged/tfd_only.yaml"),
        Row("tbd", "TBD (HD + TFD)", "configs/Converged/tbd.yaml"),
    ),
    student_iters=CONVERGED_STUDENT_ITERS,
    teacher_iters=CONVERGED_TEACHER_ITERS,
    output="output/converged",
    results="docs/results/converged",
    targets=(
        T.teacher_margin(CONVERGED_TEACHER_MARGIN),
        T.teacher_harmony(CONVERGED_TEACHER_HARMONY),
        T.baseline_plateaued(CONVERGED_PLATEAU_RANGE),
        T.doubling_adds_little(CONVERGED_DOUBLING_GAIN),
        T.last_doubling_adds_little(CONVERGED_DOUBLING_GAIN),
        T.tbd_gain(CONVERGED_TBD_GAIN),
        T.gain_over_noise(CONVERGED_STD_FACTOR),
        T.compare("tbd", "feature_mimic"),
        T.compare("tbd", "logit_kd"),
        T.compare("hd_only", "logit_kd"),
        T.compare("tbd", "tfd_only", by_std=True),
        T.closer_to_teacher("harmonious_fraction"),
        T.closer_to_teacher("spearman"),
        T.tbd_over_longest_baseline(CONVERGED_TBD_GAIN),
        T.gain_at_longest(CONVERGED_TBD_GAIN),
    ),
    tuning=Tuning(
        iters=CONVERGED_STUDENT_ITERS,
        teacher_weights="output/converged/teacher/model_final.pth",
        output="output/tuning_converged",
        results="docs/results/tuning_converged",
        heldout_root="datasets/tbd_converged_heldout_seed1",
    ),
    harmony=True,
    evaluations=CONVERGED_EVALUATIONS,
    curve_rows=("baseline", "tbd"),
    plateau_range=CONVERGED_PLATEAU_RANGE,
    longer=CONVERGED_LONGER,
    longer_rows=("baseline", "tbd"),
    toy_student_iters=6,
    toy_teacher_iters=4,
)

REGIMES = {r.name: r for r in (SYNTHETIC, CONVERGED)}
