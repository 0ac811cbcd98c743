#!/usr/bin/env python
"""
Cost of distillation: step time and memory of TBD against the physical floor.

A TBD training step cannot be cheaper than the student's own training step plus one no-grad
forward of the teacher. In one process this tool times, interleaved (every round runs every
variant once, in a new seeded random order, so that drift of the machine hits all alike), on the
same deterministic synthetic batch:

    student_step          a plain RetinaNet built from the student config: forward, backward, SGD
    teacher_forward       the TBD model's FrozenTeacher on the normalized batch, as in training
    tbd_step              TBDRetinaNet: forward (student + teacher + losses), backward, SGD
    tbd_losses            the time inside TBDRetinaNet.distillation_losses (HS + HD + TFD, forward)
    tbd_inference         TBDRetinaNet in eval mode
    retinanet_inference   RetinaNet in eval mode, with the same weights

and measures the peak memory of each variant in its own forked process (see docs/cost.md). It
prints and saves the ratios against their targets, with PASS/FAIL:

    overhead     t(tbd_step) / (t(student_step) + t(teacher_forward))             <= 1.10
    loss_share   t(tbd_losses) / t(teacher_forward)                               <= 0.10
    eval_parity  t(tbd_inference) / t(retinanet_inference)                        <= 1.02
    memory       peak(tbd_step) / (peak(student_step) + teacher weights
                                   + teacher_forward's own peak)                  <= 1.10

Example (from the repo root; the default pair is the synthetic one)::

    python tools/benchmark_step.py --steps 20 --output output/cost/synthetic.json \\
        --markdown docs/results/cost.md

The teacher is randomly initialized (written to a temporary checkpoint) unless --teacher-weights
names a checkpoint: timing and memory do not depend on the weights' values. Trailing ``KEY VALUE``
pairs override the student config (and reach the teacher through ``MODEL.TBD.TEACHER.*``).
"""

import argparse
import sys
import warnings
from typing import Tuple

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
warnings.filterwarnings("ignore", message="torch.meshgrid")

import torch  # noqa: E402

from tbd.experiments.cost.benchmark import (  # noqa: E402
    DEFAULT_STUDENT,
    DEFAULT_TEACHER,
    StepSettings,
    run,
)


def parse_size(text: str) -> Tuple[int, int]:
    """``"128"`` -> (128, 128); ``"800x1333"`` -> (800, 1333) (height x width)."""
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be N or HxW, got {text!r}") from None
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 32:
        raise argparse.ArgumentTypeError(f"--size must be N or HxW with sides >= 32, got {text!r}")
    return size


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Trailing KEY VALUE pairs override the student config. See docs/cost.md.",
    )
    p.add_argument(
        "--student-config",
        default=DEFAULT_STUDENT,
        help="the TBD student: a path or a detectron2 model-zoo name; its META_ARCHITECTURE is "
        "set to TBDRetinaNet (TBD variants) and RetinaNet (student_step, retinanet_inference)",
    )
    p.add_argument(
        "--teacher-config",
        default=DEFAULT_TEACHER,
        help="the teacher (MODEL.TBD.TEACHER.CONFIG_FILE): a path or a model-zoo name; '' keeps "
        "the student config's own",
    )
    p.add_argument(
        "--teacher-weights",
        default=None,
        help="teacher checkpoint (default: a random teacher in a temporary directory)",
    )
    p.add_argument("--batch", type=int, default=None, help="images (default SOLVER.IMS_PER_BATCH)")
    p.add_argument(
        "--size", type=parse_size, default=None, help="N or HxW (default INPUT.MIN_SIZE_TEST)"
    )
    p.add_argument("--boxes", type=int, default=5, help="ground-truth boxes per image")
    p.add_argument("--steps", type=int, default=20, help="measured rounds (medians over these)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    p.add_argument("--memory-steps", type=int, default=2, help="steps of each memory process")
    p.add_argument("--skip-memory", action="store_true", help="time only (memory fields null)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument(
        "--malloc",
        choices=("keep", "default"),
        default="keep",
        help="on the CPU: 'keep' freed memory for reuse, as train_net.py does (tbd/allocator.py), "
        "or glibc's 'default' settings (train_net.py --default-malloc)",
    )
    p.add_argument("--seed", type=int, default=0, help="batch and weight initialization")
    p.add_argument("--output", default=None, help="json (default output/cost/<student>.json)")
    p.add_argument("--markdown", default=None, help="append a results section to this file")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.memory_steps < 1 or args.boxes < 0:
        p.error("--steps and --memory-steps must be >= 1, --warmup and --boxes >= 0")
    if args.batch is not None and args.batch < 1:
        p.error("--batch must be >= 1")
    if len(args.opts) % 2:
        p.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available")
    return args


def main(argv=None) -> dict:
    from detectron2.utils.logger import setup_logger

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    setup_logger(name="tbd")
    fields = set(StepSettings.__dataclass_fields__) - {"argv"}
    settings = StepSettings(**{k: getattr(args, k) for k in fields}, argv=argv)
    return run(settings, args.output, args.markdown)


if __name__ == "__main__":
    main()
