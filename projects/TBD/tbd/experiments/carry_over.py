"""
Runs recorded in an earlier results json, reused without training ("carried over").

A benchmark can take longer than one working session, and its checkpoints are not kept between
machines; its results json is. A recorded run is carried over when it is not finished in the
output directory, was made by exactly the planned command, and from the same teacher: the teacher
in the output directory was trained by the recorded command and has identical weights
(:func:`weights_sha256`), or, for a json that recorded no hash, the same evaluation to the last
digit (:func:`same_teacher`).
"""

import hashlib
import json
import os
from typing import Dict, Optional, Sequence, Tuple

from .runs import SEED_METRICS, command_line, finished, in_repo


def weights_sha256(path: str) -> str:
    """sha256 of a checkpoint's model weights (every tensor's name, dtype, shape and bytes, in name
    order): equal for two trainings that produced bitwise the same model."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("model", state)
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = torch.as_tensor(state[name]).detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_previous(results: str, enabled: bool = True) -> Optional[Dict]:
    """The results json ``<results>.json`` (relative to the repo root) of an earlier invocation,
    when runs may be carried over from it (``enabled``) and it exists."""
    path = in_repo(results) + ".json"
    if not enabled or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def same_teacher(previous: Dict, current: Dict) -> Tuple[bool, str]:
    """Whether an earlier results json's teacher is the current one, and the evidence: the same
    command and identical weights (sha256), or, for a json that recorded no hash, the same command
    and an identical evaluation to the last digit of every metric."""
    if previous.get("command") != current["command"]:
        return False, "the teacher was trained by another command"
    if previous.get("weights_sha256"):
        same = previous["weights_sha256"] == current["weights_sha256"]
        return same, f"{'identical' if same else 'different'} teacher weights (sha256)"
    before, now = previous.get("bbox") or {}, current["bbox"]
    same = all(before.get(m) is not None and before.get(m) == now.get(m) for m in SEED_METRICS)
    evidence = "the teacher's AP, AP50, AP75, APs and APm identical to the last digit"
    return same, evidence if same else "a different teacher evaluation"


def recorded_runs(previous: Dict) -> Dict[str, Dict]:
    """{run name: its record} of a results json: every row's seeds (``<row>/seed_<s>``) and the
    runs outside the table (``extra_runs``, e.g. ``baseline_2x/seed_0``)."""
    records = {
        f"{row}/seed_{seed}": record
        for row, entry in (previous.get("rows") or {}).items()
        for seed, record in (entry.get("seeds") or {}).items()
    }
    records.update(previous.get("extra_runs") or {})
    return records


def carry_over(
    previous: Optional[Dict],
    teacher: Dict,
    runs: Sequence[Dict],
    output: str,
    results: str,
    prefix: str = "ablation",
) -> Dict[str, Dict]:
    """
    The runs of an earlier results json (``previous``, from ``<results>.json``) that this
    invocation need not train: those not finished in ``output`` whose recorded command is the
    planned one, when that json's teacher is ``teacher`` (:func:`same_teacher`). Returns
    {run name: its record}, each with ``carried_over_from``: the invocation that wrote that json.
    """
    if previous is None:
        return {}
    same, evidence = same_teacher(previous.get("teacher") or {}, teacher)
    if not same:
        print(f"[{prefix}] {results}.json: nothing carried over ({evidence})", flush=True)
        return {}
    origin = {k: previous.get(k) for k in ("generated_by", "date", "git_commit", "git_dirty")}
    records = recorded_runs(previous)
    carried = {}
    for run in runs:
        record = records.get(run["name"])
        if (
            record is None
            or record.get("command") != command_line(run)
            or finished(in_repo(os.path.join(output, run["name"])))
        ):
            continue
        record = dict(record)
        record.setdefault("wall_seconds", (previous.get("wall_seconds") or {}).get(run["name"]))
        record.setdefault("carried_over_from", {**origin, "teacher": evidence})
        carried[run["name"]] = record
    if carried:
        print(
            f"[{prefix}] {results}.json has the same teacher ({evidence}): "
            f"{len(carried)} runs carried over",
            flush=True,
        )
    return carried
