"""
Peak memory of each step-cost variant, each measured in a process of its own (docs/cost.md): a
fresh worker process forks one child per variant, which builds and runs only that variant.
"""

import contextlib
import ctypes
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import traceback
from typing import Dict, Optional

import torch
from detectron2.utils.events import EventStorage

from tbd.allocator import configure_malloc

from .workloads import VARIANTS, Workloads, batch_args, make_batch

logger = logging.getLogger("tbd.benchmark_step")

# The memory process's program (python -c WORKER spec.json): this module's memory_worker, with
# the warnings the tools silence silenced.
WORKER = (
    "import sys, warnings; warnings.filterwarnings('ignore', category=FutureWarning); "
    "warnings.filterwarnings('ignore', message='pkg_resources is deprecated'); "
    "from tbd.experiments.cost.memory import memory_worker; memory_worker(sys.argv[1])"
)


def _worker_env() -> Dict[str, str]:
    """This environment, with the directory of the imported ``tbd`` first on PYTHONPATH: the
    memory process measures the same code as this process."""
    import tbd

    root = os.path.dirname(os.path.dirname(os.path.abspath(tbd.__file__)))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _release_memory() -> None:
    """Collect garbage and return free heap pages to the OS (glibc), so that RSS is what is live."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _proc_status_bytes(field: str) -> Optional[int]:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss() -> int:
    value = _proc_status_bytes("VmRSS")
    if value is None:
        import psutil

        value = psutil.Process().memory_info().rss
    return value


def _peak_rss() -> int:
    value = _proc_status_bytes("VmHWM")
    if value is None:
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        value *= 1 if sys.platform == "darwin" else 1024
    return value


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """
    Peak memory of one workload, in bytes, relative to a baseline taken at construction.

    CPU: resident set size (RSS). ``mark_ready()`` releases free heap pages and resets the kernel's
    peak mark (VmHWM), so that the peak excludes one-off setup transients such as reading a
    checkpoint. CUDA: ``torch.cuda.memory_allocated`` and ``max_memory_allocated``.

    Result: ``ready_bytes`` (live after setup, over the baseline: weights, optimizer state...),
    ``peak_bytes`` (peak over the baseline while running) and ``run_peak_bytes`` (peak over ready:
    what running adds, e.g. activations). On Linux CPU, ``ready_anon_bytes`` and
    ``ready_file_bytes`` split ``ready_bytes`` into allocated memory and pages of library code.
    """

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.device = device
        self.peak_reset = True
        self.baseline = self._current()
        self.baseline_split = self._split()
        self.ready = self.ready_split = None

    def _current(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        _release_memory()
        return _rss()

    def _split(self) -> Dict[str, Optional[int]]:
        if self.cuda:
            return {"anon": None, "file": None}
        return {"anon": _proc_status_bytes("RssAnon"), "file": _proc_status_bytes("RssFile")}

    def mark_ready(self) -> None:
        self.ready = self._current()
        self.ready_split = self._split()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_reset = _reset_peak_rss()

    def result(self) -> dict:
        if self.ready is None:
            raise RuntimeError("MemoryMeter.result() before mark_ready()")
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _peak_rss()
        split = {}
        for kind in ("anon", "file"):
            before, after = self.baseline_split[kind], self.ready_split[kind]
            split[f"ready_{kind}_bytes"] = None if None in (before, after) else after - before
        return {
            "method": "cuda_max_memory_allocated" if self.cuda else "rss_vmhwm",
            "peak_reset": self.peak_reset,
            "baseline_bytes": self.baseline,
            "ready_bytes": self.ready - self.baseline,
            **split,
            "peak_bytes": peak - self.baseline,
            "run_peak_bytes": peak - self.ready,
        }


def measure_memory(spec: dict, variant: str) -> dict:
    """Run in a process of its own: build ``variant``, run it once (lazy allocations, library
    pages), then ``memory_steps`` times under a fresh peak mark."""
    batch = make_batch(**batch_args(spec))
    meter = MemoryMeter(spec["device"])
    workloads = Workloads(spec, batch)
    run = workloads.runner(variant)
    with EventStorage(workloads.tbd_cfg.MODEL.TBD.WARMUP_ITERS):
        run()
        meter.mark_ready()
        for _ in range(spec["memory_steps"]):
            run()
        return meter.result()


def memory_worker(spec_path: str) -> None:
    """
    The memory process: started fresh (exec) by the benchmark, it has imported torch but computed
    nothing, so it can safely fork one child per variant (forking after OpenMP work hangs the
    child). Each child measures one variant from its own baseline and exits; the worker writes
    the results to ``spec["result"]``.
    """
    with open(spec_path) as f:
        spec = json.load(f)
    # set before forking: the children inherit it
    configure_malloc(spec["device"], keep=spec["malloc"] == "keep")
    results = {}
    for variant in spec["variants"]:
        path = os.path.join(os.path.dirname(spec["result"]), f"{variant}.json")
        if hasattr(os, "fork"):
            pid = os.fork()
            if pid == 0:  # the child: measure, write, exit without returning
                code = 1
                try:
                    with open(path, "w") as f:
                        json.dump(measure_memory(spec, variant), f)
                    code = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"the memory process of {variant} failed (status {status})")
            with open(path) as f:
                results[variant] = json.load(f)
        else:  # no fork (Windows): the benchmark starts one worker per variant
            results[variant] = measure_memory(spec, variant)
    with open(spec["result"], "w") as f:
        json.dump(results, f)


def run_memory(spec: dict, workdir: str) -> Dict[str, dict]:
    """Peak memory of every variant, each in a forked child of a fresh worker process."""
    groups = [list(VARIANTS)] if hasattr(os, "fork") else [[v] for v in VARIANTS]
    results = {}
    for i, variants in enumerate(groups):
        sub = dict(spec, variants=variants, result=os.path.join(workdir, f"memory_{i}.json"))
        spec_path = os.path.join(workdir, f"memory_spec_{i}.json")
        with open(spec_path, "w") as f:
            json.dump(sub, f)
        command = [sys.executable, "-c", WORKER, spec_path]
        logger.info(f"measuring peak memory of {', '.join(variants)}")
        proc = subprocess.run(command, cwd=os.getcwd(), env=_worker_env())
        if proc.returncode != 0:
            raise RuntimeError(f"memory measurement failed (exit {proc.returncode}): {command}")
        with open(sub["result"]) as f:
            results.update(json.load(f))
    return results


def memory_summary(per_variant: Dict[str, dict], teacher_weights_bytes: int) -> dict:
    """The memory floor of a TBD step: the student's peak, the teacher's weights and what the
    teacher's no-grad forward adds on top of loaded models."""
    floor = (
        per_variant["student_step"]["peak_bytes"]
        + teacher_weights_bytes
        + per_variant["teacher_forward"]["run_peak_bytes"]
    )
    return {
        "unit": "bytes",
        "teacher_weights_bytes": teacher_weights_bytes,
        "student_peak_bytes": per_variant["student_step"]["peak_bytes"],
        "teacher_forward_peak_bytes": per_variant["teacher_forward"]["run_peak_bytes"],
        "tbd_peak_bytes": per_variant["tbd_step"]["peak_bytes"],
        "floor_bytes": floor,
        "variants": per_variant,
    }
