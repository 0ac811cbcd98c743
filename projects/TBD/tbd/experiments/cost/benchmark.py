"""
One run of the step-cost benchmark: settings in, the report (the json of tools/benchmark_step.py)
out. Timing runs in this process; memory in a fresh worker process (:mod:`.memory`).
"""

import gc
import logging
import os
import shlex
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import List, Optional, Tuple

import torch

from tbd.allocator import configure_malloc

from ..environment import machine_info, versions
from ..runs import REPO
from .memory import memory_summary, run_memory
from .report import compute_ratios
from .timing import summarize, time_variants
from .workloads import (
    TIMED,
    VARIANTS,
    Workloads,
    batch_args,
    build_cfgs,
    make_batch,
    num_parameters,
    save_random_teacher,
    tensor_bytes,
)

logger = logging.getLogger("tbd.benchmark_step")

SCHEMA = "tbd-benchmark-step/1"
DEFAULT_STUDENT = os.path.join(REPO, "configs/Synthetic/tbd_R18.yaml")
DEFAULT_TEACHER = os.path.join(REPO, "configs/Synthetic/teacher_R18_wide.yaml")


@dataclass
class StepSettings:
    """What tools/benchmark_step.py measures (its options, with the same defaults)."""

    student_config: str = DEFAULT_STUDENT
    teacher_config: str = DEFAULT_TEACHER
    teacher_weights: Optional[str] = None
    batch: Optional[int] = None  # default SOLVER.IMS_PER_BATCH
    size: Optional[Tuple[int, int]] = None  # (height, width); default INPUT.MIN_SIZE_TEST
    boxes: int = 5
    steps: int = 20
    warmup: int = 3
    memory_steps: int = 2
    skip_memory: bool = False
    device: str = "cpu"
    malloc: str = "keep"
    seed: int = 0
    opts: List[str] = field(default_factory=list)
    argv: List[str] = field(default_factory=list)  # the tool's command line, for the report


def config_name(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0] if name else "?"


def benchmark(args: StepSettings, workdir: str) -> dict:
    """Time (interleaved rounds) and, unless ``skip_memory``, measure the peak memory of every
    variant; return the report: settings, machine, versions, models, times, kernel, memory,
    ratios and their verdicts. ``workdir``: a temporary directory (random teacher, memory)."""
    spec = {
        "student_config": args.student_config,
        "teacher_config": args.teacher_config,
        "teacher_weights": args.teacher_weights,
        "opts": list(args.opts),
        "device": args.device,
        "seed": args.seed,
        "boxes": args.boxes,
        "memory_steps": args.memory_steps,
        "malloc": args.malloc,
    }
    kept = configure_malloc(spec["device"], keep=spec["malloc"] == "keep")
    tbd_cfg, _ = build_cfgs(spec)
    spec["batch"] = args.batch or tbd_cfg.SOLVER.IMS_PER_BATCH
    spec["size"] = list(args.size or (tbd_cfg.INPUT.MIN_SIZE_TEST,) * 2)
    spec["num_classes"] = tbd_cfg.MODEL.RETINANET.NUM_CLASSES
    batch = make_batch(**batch_args(spec))
    if not spec["teacher_weights"]:
        spec["teacher_weights"] = save_random_teacher(tbd_cfg, workdir, batch, args.seed)

    workloads = Workloads(spec, batch)
    teacher = workloads.teacher()
    teacher_weights_bytes = tensor_bytes(teacher.model)
    models = {
        "student_parameters": num_parameters(workloads.model("plain_train")),
        "tbd_trainable_parameters": num_parameters(workloads.model("tbd_train")),
        "teacher_parameters": num_parameters(teacher.model),
        "teacher_weights_bytes": teacher_weights_bytes,
    }
    logger.info(
        f"timing {len(VARIANTS)} variants x {args.steps} rounds (+{args.warmup} warm-up), "
        f"batch {spec['batch']} x {spec['size'][0]}x{spec['size'][1]}, "
        f"{torch.get_num_threads()} torch threads"
    )
    samples, kernel_samples = time_variants(workloads, args.steps, args.warmup, args.seed)
    times = {name: summarize(samples[name]) for name in TIMED}
    kernel = {
        name: {
            "median_system_s": statistics.median(k["system_s"]),
            "median_minor_faults": statistics.median(k["minor_faults"]),
            **k,
        }
        for name, k in kernel_samples.items()
    }
    del workloads, teacher
    gc.collect()

    memory = None
    if not args.skip_memory:
        per_variant = run_memory(spec, workdir)
        memory = memory_summary(per_variant, teacher_weights_bytes)
        memory["method"] = per_variant["tbd_step"]["method"]

    teacher_config = args.teacher_config or tbd_cfg.MODEL.TBD.TEACHER.CONFIG_FILE
    settings = {
        "student_config": args.student_config,
        "teacher_config": teacher_config,
        "student_name": config_name(args.student_config),
        "teacher_name": config_name(teacher_config),
        "teacher_weights": args.teacher_weights or "random (temporary checkpoint)",
        "opts": list(args.opts),
        "batch": spec["batch"],
        "size": spec["size"],
        "boxes_per_image": args.boxes,
        "steps": args.steps,
        "warmup": args.warmup,
        "memory_steps": None if args.skip_memory else args.memory_steps,
        "device": args.device,
        "seed": args.seed,
        "malloc": args.malloc,
        "malloc_keeps_freed_memory": kept,
    }
    ratios = compute_ratios(times, memory)
    verdicts = [entry["pass"] for entry in ratios.values() if entry["pass"] is not None]
    return {
        "schema": SCHEMA,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python tools/benchmark_step.py " + shlex.join(args.argv),
        "settings": settings,
        "machine": machine_info(args.device),
        "versions": versions(),
        "models": models,
        "times": times,
        "kernel": kernel,
        "memory": memory,
        "ratios": ratios,
        "all_pass": all(verdicts),
    }


def default_output(student_config: str) -> str:
    return os.path.join("output", "cost", f"{config_name(student_config)}.json")


def run(args: StepSettings, output: Optional[str] = None, markdown: Optional[str] = None) -> dict:
    """:func:`benchmark` in a temporary directory; writes the report to ``output`` (json, default
    output/cost/<student>.json), prints its markdown section and appends it to ``markdown``."""
    import json
    import tempfile

    from .report import format_report, write_markdown

    output = output or default_output(args.student_config)
    with tempfile.TemporaryDirectory(prefix="tbd_benchmark_") as workdir:
        report = benchmark(args, workdir)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    section = format_report(report)
    print(section)
    logger.info(f"wrote {output}")
    if markdown:
        write_markdown(markdown, section)
        logger.info(f"appended the results to {markdown}")
    return report
