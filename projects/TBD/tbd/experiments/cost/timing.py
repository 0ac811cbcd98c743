"""
Interleaved timing of the step-cost workloads: every round runs every variant once, in a new
seeded random order, so that drift of the machine hits all alike.
"""

import logging
import random
import resource
import statistics
import time
from typing import Dict, List, Sequence, Tuple

from detectron2.utils.events import EventStorage

from .workloads import VARIANTS, Workloads

logger = logging.getLogger("tbd.benchmark_step")


def round_orders(rounds: int, seed: int) -> List[List[str]]:
    """
    The order of the variants in each round: a seeded random permutation per round. Every variant
    runs once per round, and over the rounds each runs after every other one (a fixed or rotated
    order would keep most neighbours: a variant that runs after the TBD step meets its freed memory
    and cold caches in every round).
    """
    rng = random.Random(seed)
    orders = []
    for _ in range(rounds):
        order = list(VARIANTS)
        rng.shuffle(order)
        orders.append(order)
    return orders


def time_variants(
    workloads: Workloads, steps: int, warmup: int, seed: int = 0
) -> Tuple[Dict[str, List[float]], Dict[str, Dict[str, List[float]]]]:
    """
    Wall time of each variant per round, interleaved: every round runs every variant once, in the
    order of :func:`round_orders`. The first ``warmup`` rounds are not recorded. ``tbd_losses`` is
    recorded inside each ``tbd_step``.

    Returns:
        (times, kernel): the wall times per variant; and per variant (not ``tbd_losses``) what the
        process spent in the kernel in each round, from ``getrusage``: ``system_s`` (system CPU
        time of all threads) and ``minor_faults`` (pages mapped in, e.g. fresh memory to zero).
    """
    runners = {name: workloads.runner(name) for name in VARIANTS}
    times: Dict[str, List[float]] = {name: [] for name in VARIANTS}
    kernel = {name: {"system_s": [], "minor_faults": []} for name in VARIANTS}
    sync = workloads.sync
    # Past the distillation warm-up ramp: the steady-state step (the cost is the same either way).
    with EventStorage(workloads.tbd_cfg.MODEL.TBD.WARMUP_ITERS):
        for i, order in enumerate(round_orders(warmup + steps, seed)):
            if i == warmup:
                workloads.loss_times.clear()
            for name in order:
                sync()
                usage = resource.getrusage(resource.RUSAGE_SELF)
                start = time.perf_counter()
                runners[name]()
                sync()
                elapsed = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_SELF)
                if i >= warmup:
                    times[name].append(elapsed)
                    kernel[name]["system_s"].append(after.ru_stime - usage.ru_stime)
                    kernel[name]["minor_faults"].append(after.ru_minflt - usage.ru_minflt)
            logger.info(f"round {i + 1}/{warmup + steps}{' (warm-up)' if i < warmup else ''}")
    times["tbd_losses"] = list(workloads.loss_times)
    if len(times["tbd_losses"]) != steps:
        raise RuntimeError(
            f"distillation_losses ran {len(times['tbd_losses'])} times in {steps} TBD steps"
        )
    return times, kernel


def summarize(samples: Sequence[float]) -> dict:
    return {
        "median_s": statistics.median(samples),
        "mean_s": statistics.fmean(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "samples_s": list(samples),
    }
