"""
The step-cost benchmark's verdicts and report: the ratios against their targets, and a markdown
section per run (what is printed and appended to docs/results/cost.md).
"""

import math
import os
from typing import Dict, Optional

from .workloads import DESCRIPTIONS, TIMED

TARGETS = {"overhead": 1.10, "loss_share": 0.10, "eval_parity": 1.02, "memory": 1.10}
DEFINITIONS = {
    "overhead": "t(tbd_step) / (t(student_step) + t(teacher_forward))",
    "loss_share": "t(tbd_losses) / t(teacher_forward)",
    "eval_parity": "t(tbd_inference) / t(retinanet_inference)",
    "memory": "peak(tbd_step) / (peak(student_step) + teacher_weights + run_peak(teacher_forward))",
}


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
