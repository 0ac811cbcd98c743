"""
Harmony of trained models on a test split, with the code of tools/analyze_harmony.py
(``tbd.analysis``: :func:`labelled_test_loader`, :func:`analyze_harmony`,
``HarmonyAnalysis.statistics``), for the benchmark's runs: measured once per run after training
and cached in the run directory (``harmony.json``), so that reruns do not measure again.

A run's harmony record::

    {"dataset", "num_images", "num_gt_boxes", "delta", "topk", "match_iou", "confident_score",
     "statistics": {"anchors", "detections_matched", "detections_confident", "detections"},
     "anchor_histogram": {"bins", "rows"}}   # score vs IoU of the foreground anchors (figures)
"""

import contextlib
import json
import os
import time
from typing import Dict, Iterable, Optional

from .figures import encode_histogram, score_iou_histogram
from .runs import REPO, in_repo, load_cfg
from .tables import mean

TOPK = 100  # detections per image that count, as tools/analyze_harmony.py's default
# The statistics summarized over seeds, per subset, in the benchmark's rows.
SUBSETS = ("anchors", "detections_matched", "detections_confident")
SUMMARIZED = ("harmonious_fraction", "spearman", "pearson", "mean_harmony_score", "count")


@contextlib.contextmanager
def _cwd(path: str):
    """Run in ``path`` (the configs name files relative to the repo root, as train_net.py runs)."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def register_test_split(cfg, dataset: Optional[str] = None) -> str:
    """
    Register the split ``dataset`` (default ``cfg.DATASETS.TEST[0]``) in this process and return
    the name to load it by. The synthetic splits are registered under a name of their own for
    the config's ``DATASETS.SYNTHETIC`` (root, sizes, seed): a process that measures runs of
    several datasets (tests) never reads one under another's name.
    """
    from tbd.datasets import (
        SYNTHETIC_NAMES,
        register_datasets,
        register_synthetic,
        synthetic_kwargs,
    )

    dataset = dataset or cfg.DATASETS.TEST[0]
    if dataset not in SYNTHETIC_NAMES:
        cfg = cfg.clone()
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), (dataset,)
        register_datasets(cfg)
        return dataset
    root = os.path.abspath(cfg.DATASETS.SYNTHETIC.ROOT)
    kwargs = synthetic_kwargs(cfg)
    key = "@" + ":".join([root] + [str(v) for v in kwargs.values()])
    names = tuple(name + key for name in SYNTHETIC_NAMES)
    register_synthetic(root, names=names, **kwargs)
    return names[SYNTHETIC_NAMES.index(dataset)]


def measure(model, cfg, dataset: str, *, topk: int = TOPK, evaluator=None, **kwargs):
    """:func:`tbd.analysis.analyze_harmony` of ``model`` over the registered split ``dataset``
    (``kwargs``: ``max_images``, ``num_mask_images``, ``progress`` a wrapper of the loader)."""
    from tbd.analysis import analyze_harmony, labelled_test_loader

    loader = labelled_test_loader(cfg, dataset, max_images=kwargs.get("max_images"))
    progress = kwargs.get("progress")
    return analyze_harmony(
        model,
        progress(loader) if progress else loader,
        topk=topk,
        evaluator=evaluator,
        num_mask_images=kwargs.get("num_mask_images", 0),
    )


def harmony_record(analysis, dataset: str, delta: float, topk: int = TOPK) -> Dict:
    """A run's harmony record (module docstring) from a ``HarmonyAnalysis``."""
    from tbd.analysis import CONFIDENT_SCORE, MATCH_IOU

    return {
        "dataset": dataset,
        "num_images": analysis.num_images,
        "num_gt_boxes": analysis.num_gt,
        "delta": delta,
        "topk": topk,
        "match_iou": MATCH_IOU,
        "confident_score": CONFIDENT_SCORE,
        "statistics": analysis.statistics(delta, MATCH_IOU, CONFIDENT_SCORE),
        "anchor_histogram": encode_histogram(
            score_iou_histogram(analysis.anchor_scores, analysis.anchor_ious)
        ),
    }


def _stamp(weights: str) -> Dict:
    info = os.stat(weights)
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _settings(record: Dict) -> Dict:
    keys = ("dataset", "delta", "topk", "match_iou", "confident_score")
    return {k: record.get(k) for k in keys}


def run_harmony(stage_dir: str, config: str, opts, name: str = "", prefix: str = "ablation"):
    """
    The harmony record of a trained stage (``stage_dir`` with ``model_final.pth``, trained from
    ``config`` and ``opts``) on its config's test split, read from ``stage_dir/harmony.json``
    when that was measured on the same weights with the same settings, else measured now and
    cached there.
    """
    from tbd.analysis import CONFIDENT_SCORE, MATCH_IOU
    from tbd.checkpoint import load_eval_model

    weights = os.path.join(stage_dir, "model_final.pth")
    cache = os.path.join(stage_dir, "harmony.json")
    with _cwd(REPO):
        cfg = load_cfg(config, opts)
        cfg.MODEL.WEIGHTS = weights
        cfg.DATASETS.SYNTHETIC.ROOT = in_repo(cfg.DATASETS.SYNTHETIC.ROOT)
        dataset = cfg.DATASETS.TEST[0]
        delta = cfg.MODEL.TBD.HARMONY_DELTA
        wanted = {
            "dataset": dataset,
            "delta": delta,
            "topk": TOPK,
            "match_iou": MATCH_IOU,
            "confident_score": CONFIDENT_SCORE,
        }
        if os.path.isfile(cache):
            with open(cache) as f:
                cached = json.load(f)
            if cached.get("weights") == _stamp(weights) and _settings(cached) == wanted:
                cached.pop("weights")
                return cached
        print(f"[{prefix}] {name or stage_dir}: harmony on {dataset}", flush=True)
        start = time.time()
        model = load_eval_model(cfg)
        analysis = measure(model, cfg, register_test_split(cfg), topk=TOPK)
        record = harmony_record(analysis, dataset, delta, TOPK)
    with open(cache, "w") as f:
        json.dump({"weights": _stamp(weights), **record}, f, indent=2, allow_nan=False)
    print(f"[{prefix}] {name or stage_dir}: harmony measured in {time.time() - start:.0f} s")
    return record


def mean_over_seeds(records: Iterable[Optional[Dict]]) -> Dict[str, Dict[str, float]]:
    """{subset: {statistic: mean over the runs}} of harmony records (None: a run without one),
    for the :data:`SUBSETS` and :data:`SUMMARIZED` statistics; NaN when no run has it."""
    stats = [r["statistics"] for r in records if r]
    return {
        subset: {key: mean((s.get(subset) or {}).get(key) for s in stats) for key in SUMMARIZED}
        for subset in SUBSETS
    }
