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
import contextlib
import ctypes
import gc
import json
import logging
import math
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Sequence, Tuple

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
warnings.filterwarnings("ignore", message="torch.meshgrid")

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.layers import FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage, get_event_storage  # noqa: E402
from torch import nn  # noqa: E402

import tbd  # noqa: E402,F401  (registers TBDRetinaNet)
from tbd.allocator import configure_malloc  # noqa: E402
from tbd.config import load_tbd_config, resolve_config_file  # noqa: E402,F401
from tbd.teacher import load_teacher_config  # noqa: E402

logger = logging.getLogger("tbd.benchmark_step")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_STUDENT = os.path.join(REPO, "configs/Synthetic/tbd_R18.yaml")
DEFAULT_TEACHER = os.path.join(REPO, "configs/Synthetic/teacher_R18_wide.yaml")
SCHEMA = "tbd-benchmark-step/1"

# The variants measured for time and memory; tbd_losses is timed inside tbd_step.
VARIANTS = (
    "student_step",
    "teacher_forward",
    "tbd_step",
    "tbd_inference",
    "retinanet_inference",
)
TIMED = VARIANTS + ("tbd_losses",)
DESCRIPTIONS = {
    "student_step": "student train step (RetinaNet: forward + backward + SGD)",
    "teacher_forward": "teacher no-grad forward (FrozenTeacher)",
    "tbd_step": "TBD train step (TBDRetinaNet: forward + backward + SGD)",
    "tbd_losses": "TBD losses alone (distillation_losses: HS + HD + TFD, forward)",
    "tbd_inference": "TBDRetinaNet inference (eval)",
    "retinanet_inference": "RetinaNet inference (eval, same weights)",
}
TARGETS = {"overhead": 1.10, "loss_share": 0.10, "eval_parity": 1.02, "memory": 1.10}
DEFINITIONS = {
    "overhead": "t(tbd_step) / (t(student_step) + t(teacher_forward))",
    "loss_share": "t(tbd_losses) / t(teacher_forward)",
    "eval_parity": "t(tbd_inference) / t(retinanet_inference)",
    "memory": "peak(tbd_step) / (peak(student_step) + teacher_weights + run_peak(teacher_forward))",
}
# Keys of a student's state that a plain RetinaNet does not have.
TBD_ONLY_PREFIXES = ("tfd_loss.", "hd_loss.")


# ------------------------------------------------------------------------------ command line


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
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    if args.memory_worker is not None:
        return args
    if args.steps < 1 or args.warmup < 0 or args.memory_steps < 1 or args.boxes < 0:
        p.error("--steps and --memory-steps must be >= 1, --warmup and --boxes >= 0")
    if args.batch is not None and args.batch < 1:
        p.error("--batch must be >= 1")
    if len(args.opts) % 2:
        p.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available")
    return args


# ------------------------------------------------------------------------------ configs, models


def build_cfgs(spec: dict):
    """(TBD config, plain RetinaNet config) of the student, both on ``spec["device"]``."""
    cfg = load_tbd_config(spec["student_config"], spec["opts"])
    if spec["teacher_config"]:
        cfg.MODEL.TBD.TEACHER.CONFIG_FILE = spec["teacher_config"]
    if spec["teacher_weights"]:
        cfg.MODEL.TBD.TEACHER.WEIGHTS = spec["teacher_weights"]
    cfg.MODEL.DEVICE = spec["device"]
    tbd_cfg, plain_cfg = cfg.clone(), cfg.clone()
    tbd_cfg.MODEL.META_ARCHITECTURE = "TBDRetinaNet"
    plain_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    tbd_cfg.freeze()
    plain_cfg.freeze()
    return tbd_cfg, plain_cfg


def make_batch(num_images: int, height: int, width: int, num_classes: int, boxes: int, seed: int):
    """A deterministic training batch in DatasetMapper's format: uint8 images, random boxes."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
        scale = torch.tensor([width, height], dtype=torch.float32)
        xy = torch.rand(boxes, 2, generator=g) * scale * 0.6
        wh = 8 + torch.rand(boxes, 2, generator=g) * scale * 0.4
        xy1 = torch.minimum(xy + wh, scale - 1)
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([xy, xy1], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (boxes,), generator=g)
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


@torch.no_grad()
def calibrate_norms(model, batch) -> None:
    """
    Set the statistics of every BatchNorm / FrozenBatchNorm of a randomly initialized RetinaNet to
    the mean and variance of its input on ``batch`` (one eval forward, layer after layer), so that
    its eval-mode activations keep a sane scale, as a trained model's do. Without it a random deep
    teacher's features can overflow, and the step stops on a non-finite loss.
    """

    def set_stats(module, inputs):
        x = inputs[0].float()
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))

    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    handles = [m.register_forward_pre_hook(set_stats) for m in norms]
    training = model.training
    try:
        model.eval()
        features = model.backbone(model.preprocess_image(batch).tensor)
        model.head([features[f] for f in model.head_in_features])
    finally:
        for h in handles:
            h.remove()
        model.train(training)


def save_random_teacher(tbd_cfg, directory: str, batch, seed: int) -> str:
    """Write a randomly initialized, norm-calibrated teacher checkpoint; return its path."""
    teacher_cfg = load_teacher_config(tbd_cfg)
    torch.manual_seed(seed + 1)
    model = build_model(teacher_cfg)
    calibrate_norms(model, batch)
    DetectionCheckpointer(model, save_dir=directory).save("random_teacher")
    return os.path.join(directory, "random_teacher.pth")


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _synchronize(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def train_step(model, optimizer, batch) -> Dict[str, torch.Tensor]:
    """One step as detectron2's SimpleTrainer runs it (without its metric logging)."""
    losses = model(batch)
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    return losses


class Workloads:
    """
    The measured workloads on one batch. Models are built on first use, so that a memory process
    builds only what its variant needs: ``runner(name)`` builds, then returns the step callable.

    Every student model starts from the same weights (seeded, norm-calibrated, then copied from
    the first one built), so TBDRetinaNet and RetinaNet inference run identical weights.
    """

    def __init__(self, spec: dict, batch):
        self.spec = spec
        self.batch = batch
        self.tbd_cfg, self.plain_cfg = build_cfgs(spec)
        self.sync = _synchronize(spec["device"])
        self.loss_times: List[float] = []
        self._models: Dict[str, nn.Module] = {}
        self._optimizers: Dict[str, torch.optim.Optimizer] = {}
        self._initial_state: Optional[Dict[str, torch.Tensor]] = None

    def model(self, key: str) -> nn.Module:
        """``key``: "plain_train", "tbd_train", "plain_eval" or "tbd_eval"."""
        if key in self._models:
            return self._models[key]
        kind, mode = key.split("_")
        torch.manual_seed(self.spec["seed"])
        model = build_model(self.tbd_cfg if kind == "tbd" else self.plain_cfg)
        if self._initial_state is None:
            calibrate_norms(model, self.batch)
            self._initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            copy_student_weights(self._initial_state, model)
        model.train(mode == "train")
        if key == "tbd_train":
            self._time_losses(model)
        self._models[key] = model
        return model

    def optimizer(self, key: str) -> torch.optim.Optimizer:
        if key not in self._optimizers:
            cfg = self.tbd_cfg if key.startswith("tbd") else self.plain_cfg
            self._optimizers[key] = build_optimizer(cfg, self.model(key))
        return self._optimizers[key]

    def teacher(self):
        """The TBD model's own FrozenTeacher (built and loaded on first use)."""
        return self.model("tbd_train").load_teacher()

    def _time_losses(self, model) -> None:
        """Wrap ``model.distillation_losses`` (instance attribute over the class method) to record
        its wall time; forward_training calls it through ``self``, so this times the real call."""
        method = model.distillation_losses

        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            out = method(*args, **kwargs)
            self.sync()
            self.loss_times.append(time.perf_counter() - start)
            return out

        model.distillation_losses = timed

    def runner(self, name: str) -> Callable[[], object]:
        batch = self.batch
        if name in ("student_step", "tbd_step"):
            key = "plain_train" if name == "student_step" else "tbd_train"
            model, optimizer = self.model(key), self.optimizer(key)
            if name == "student_step":
                return lambda: train_step(model, optimizer, batch)
            self.teacher()

            def tbd_step():
                losses = train_step(model, optimizer, batch)
                # advance the iteration as training does: the harmony diagnostics run on every
                # MODEL.TBD.DIAGNOSTICS_PERIOD-th step only, and the medians must see that
                get_event_storage().step()
                return losses

            return tbd_step
        if name == "teacher_forward":
            student, teacher = self.model("tbd_train"), self.teacher()
            images = student.preprocess_image(batch)
            return lambda: teacher(images)
        if name in ("tbd_inference", "retinanet_inference"):
            model = self.model("tbd_eval" if name == "tbd_inference" else "plain_eval")

            def infer():
                with torch.no_grad():
                    return model(batch)

            return infer
        raise KeyError(f"unknown variant {name!r}; expected one of {VARIANTS}")


def copy_student_weights(state: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Load ``state`` into ``model``; only TBD's own modules (the TFD adapter) may differ."""
    incompatible = model.load_state_dict(state, strict=False)
    odd = [
        k
        for k in list(incompatible.missing_keys) + list(incompatible.unexpected_keys)
        if not k.startswith(TBD_ONLY_PREFIXES)
    ]
    if odd:
        raise RuntimeError(f"student weights do not transfer between models: {odd[:10]}")


# ------------------------------------------------------------------------------ timing


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


# ------------------------------------------------------------------------------ memory


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
    batch = make_batch(**_batch_args(spec))
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
        command = [sys.executable, os.path.abspath(__file__), "--memory-worker", spec_path]
        logger.info(f"measuring peak memory of {', '.join(variants)}")
        proc = subprocess.run(command, cwd=os.getcwd())
        if proc.returncode != 0:
            raise RuntimeError(f"memory measurement failed (exit {proc.returncode}): {command}")
        with open(sub["result"]) as f:
            results.update(json.load(f))
    return results


# ------------------------------------------------------------------------------ report


def ratio_entry(value: Optional[float], name: str) -> dict:
    target = TARGETS[name]
    ok = None if value is None else bool(math.isfinite(value) and value <= target)
    return {"value": value, "target": target, "pass": ok, "definition": DEFINITIONS[name]}


def compute_ratios(times: Dict[str, dict], memory: Optional[dict]) -> Dict[str, dict]:
    t = {name: times[name]["median_s"] for name in TIMED}
    ratios = {
        "overhead": t["tbd_step"] / (t["student_step"] + t["teacher_forward"]),
        "loss_share": t["tbd_losses"] / t["teacher_forward"],
        "eval_parity": t["tbd_inference"] / t["retinanet_inference"],
        "memory": None,
    }
    if memory is not None:
        ratios["memory"] = memory["tbd_peak_bytes"] / memory["floor_bytes"]
    return {name: ratio_entry(value, name) for name, value in ratios.items()}


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


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "memory_total_bytes": None,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    with contextlib.suppress(ImportError):
        import psutil

        info["memory_total_bytes"] = psutil.virtual_memory().total
    return info


def versions() -> dict:
    import detectron2
    import torchvision

    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        commit = out.stdout.strip() or None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
        "repo_commit": commit,
    }


def _mib(value: Optional[int]) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _load(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _verdict(entry: dict) -> str:
    return {True: "PASS", False: "FAIL", None: "skipped"}[entry["pass"]]


def _value(entry: dict) -> str:
    return "n/a" if entry["value"] is None else f"{entry['value']:.3f}"


def _malloc(settings: dict) -> str:
    if settings["malloc_keeps_freed_memory"]:
        return "keeps freed memory (tbd/allocator.py, as train_net.py trains on the CPU)"
    return "the C library's default settings"


def format_report(report: dict) -> str:
    """The results as markdown: a section per run (also what is printed)."""
    s, m, v = report["settings"], report["machine"], report["versions"]
    height, width = s["size"]
    gpu = f", {m['device_name']}" if m["device_name"] else ""
    lines = [
        f"## {s['student_name']} (student) / {s['teacher_name']} (teacher): batch {s['batch']} x "
        f"{height}x{width}, {s['device']}",
        "",
        f"Measured {report['date']} on {m['cpu']} ({m['logical_cpus']} logical CPUs, "
        f"{m['torch_num_threads']} torch threads{gpu}, load average "
        f"{_load(m['load_average_1min'])}); Python {v['python']}, torch {v['torch']}, "
        f"detectron2 {v['detectron2']}, repo {v['repo_commit']}. Medians over {s['steps']} "
        f"interleaved rounds after {s['warmup']} warm-up rounds; teacher weights: "
        f"{s['teacher_weights']}; malloc: {_malloc(s)}.",
        "",
        "```",
        report["command"],
        "```",
        "",
        "| ratio | definition | value | target | result |",
        "|---|---|---|---|---|",
    ]
    for name, entry in report["ratios"].items():
        lines.append(
            f"| {name} | {entry['definition']} | {_value(entry)} | <= {entry['target']:.2f} "
            f"| {_verdict(entry)} |"
        )
    memory = report["memory"]
    per_variant = memory["variants"] if memory else {}
    lines += [
        "",
        "| variant | median ms | min ms | system CPU ms | page faults | peak MiB | run peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in TIMED:
        t, k = report["times"][name], report["kernel"].get(name)
        mem = per_variant.get(name, {})
        system = _ms(k["median_system_s"]) if k else "n/a"
        faults = f"{k['median_minor_faults']:.0f}" if k else "n/a"
        lines.append(
            f"| {DESCRIPTIONS[name]} | {_ms(t['median_s'])} | {_ms(t['min_s'])} | {system} "
            f"| {faults} | {_mib(mem.get('peak_bytes'))} | {_mib(mem.get('run_peak_bytes'))} |"
        )
    if memory:
        lines += [
            "",
            f"Memory floor of a TBD step: student peak {_mib(memory['student_peak_bytes'])} MiB + "
            f"teacher weights {_mib(memory['teacher_weights_bytes'])} MiB + teacher forward "
            f"{_mib(memory['teacher_forward_peak_bytes'])} MiB = {_mib(memory['floor_bytes'])} "
            f"MiB; TBD peak {_mib(memory['tbd_peak_bytes'])} MiB ({memory['method']}).",
        ]
    return "\n".join(lines) + "\n"


MARKDOWN_HEADER = """# Cost of distillation: measured results

Written by `tools/benchmark_step.py --markdown`; never edited by hand. What is measured and how
to regenerate this file: [docs/cost.md](../cost.md).
"""


def write_markdown(path: str, section: str) -> None:
    """Append ``section`` to ``path``, starting the file with its header when new or empty."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a") as f:
        if new:
            f.write(MARKDOWN_HEADER)
        f.write("\n" + section)


def _config_name(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0] if name else "?"


def _batch_args(spec: dict) -> dict:
    return {
        "num_images": spec["batch"],
        "height": spec["size"][0],
        "width": spec["size"][1],
        "num_classes": spec["num_classes"],
        "boxes": spec["boxes"],
        "seed": spec["seed"],
    }


# ------------------------------------------------------------------------------ main


def benchmark(args, workdir: str) -> dict:
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
    batch = make_batch(**_batch_args(spec))
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
        "student_name": _config_name(args.student_config),
        "teacher_name": _config_name(teacher_config),
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


def main(argv=None) -> dict:
    from detectron2.utils.logger import setup_logger

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_worker is not None:
        memory_worker(args.memory_worker)
        return {}
    args.argv = argv
    setup_logger(name="tbd")
    output = args.output or os.path.join(
        "output", "cost", f"{_config_name(args.student_config)}.json"
    )
    with tempfile.TemporaryDirectory(prefix="tbd_benchmark_") as workdir:
        report = benchmark(args, workdir)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
    section = format_report(report)
    print(section)
    logger.info(f"wrote {output}")
    if args.markdown:
        write_markdown(args.markdown, section)
        logger.info(f"appended the results to {args.markdown}")
    return report


if __name__ == "__main__":
    main()
