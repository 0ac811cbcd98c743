"""tbd.allocator: a freed large block is reused instead of mapped and zeroed again."""

import json
import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocates, touches and frees a 64 MiB tensor a few times (as training steps do), then counts the
# page faults of doing it once more.
# Run in a fresh process: mallopt settings are process-wide and cannot be undone.
PROBE = """
import json, resource, sys
import torch
from tbd.allocator import keep_freed_memory

kept = keep_freed_memory() if sys.argv[1] == "keep" else False
size = 64 * 2**20 // 4
for _ in range(3):
    torch.ones(size)  # allocated, touched, freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(size)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults": faults, "sum": float(x.sum())}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    pages = 64 * 2**20 // 4096
    default, kept = probe("default"), probe("keep")
    assert default["kept"] is False and kept["kept"] is True
    # the values are right either way
    assert default["sum"] == kept["sum"] == 64 * 2**20 // 4
    # glibc's default: the 64 MiB block is a fresh mmap, every page faults again
    assert default["faults"] > 0.9 * pages
    # kept: the same pages are reused (a few faults for small bookkeeping at most)
    assert kept["faults"] < 0.05 * pages


@pytest.mark.skipif(GLIBC, reason="not glibc: nothing to change")
def test_other_c_libraries_are_left_alone():
    assert probe("keep")["kept"] is False


def test_train_net_keeps_freed_memory_on_the_cpu_unless_told_not_to(monkeypatch):
    from detectron2.config import get_cfg
    from detectron2.engine import default_argument_parser

    import train_net
    from tbd import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    parse = train_net.argument_parser().parse_args
    assert train_net.configure_malloc(cfg, parse([])) is True
    # detectron2's own parser has no --default-malloc: the training default holds
    assert train_net.configure_malloc(cfg, default_argument_parser().parse_args([])) is True
    assert len(calls) == 2
    assert parse(["--default-malloc"]).default_malloc is True
    assert train_net.configure_malloc(cfg, parse(["--default-malloc"])) is False
    cfg.MODEL.DEVICE = "cuda"
    assert train_net.configure_malloc(cfg, parse([])) is False
    assert len(calls) == 2
