"""
Where and with what a result was made: date, git commit (and uncommitted changes), library
versions, CPU and machine. Every results file of the tools records one of these.
"""

import contextlib
import os
import platform
import subprocess
from datetime import datetime, timezone
from typing import Dict, Optional

from .runs import REPO


def git(*args: str) -> Optional[str]:
    """``git ARGS`` in the repo, its stripped output; None when git or the repo is unavailable."""
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(short: bool = False) -> Optional[str]:
    return git("rev-parse", *(["--short"] if short else []), "HEAD") or None


def git_dirty() -> Optional[bool]:
    """Whether tracked files have uncommitted changes (None: unknown)."""
    status = git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def cpu_name() -> str:
    """The CPU model (/proc/cpuinfo), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def environment() -> Dict:
    """Date, git commit and dirty flag, versions (python, torch, detectron2) and machine (CPU,
    cores, platform): what the results json of the ablation benchmark and the tuning record."""
    import detectron2
    import torch

    return {
        "date": utc_now(),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "detectron2": detectron2.__version__,
        },
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
    }


def machine_info(device: str) -> Dict:
    """The machine of a timing measurement: CPU, threads, device, memory, load."""
    import torch

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
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


def versions() -> Dict:
    """python, torch, torchvision and detectron2 versions, and the repo's short commit."""
    import detectron2
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
        "repo_commit": git_commit(short=True),
    }
