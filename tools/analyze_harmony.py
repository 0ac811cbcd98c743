#!/usr/bin/env python
"""
Harmony analysis: how often a detector's classification score agrees with the IoU of its box
(|s - u| <= delta), for one model or a teacher and a student, on a registered dataset split.

    python tools/analyze_harmony.py --config-file configs/Synthetic/teacher_R18_wide.yaml \
        --weights output/synthetic/teacher_R18_wide/model_final.pth \
        --compare-config configs/Synthetic/student_R18.yaml \
        --compare-weights output/synthetic/student_R18/model_final.pth --output output/harmony

Writes ``harmony.json`` (statistics and COCO AP per model: foreground anchors, the detections
matched to a ground-truth box, the confident detections, all top-k detections),
``score_vs_iou.png`` (2D histogram of score against IoU on foreground anchors, one panel per model)
and ``masks.png`` (the TFD masks the first model gives a few images, as a teacher). Definitions:
docs/harmony_analysis.md; the code: tbd.analysis, tbd.experiments.harmony_runs and .figures.
"""

import argparse
import json
import logging
import os

from tqdm import tqdm

from tbd.analysis import CONFIDENT_SCORE, MATCH_IOU
from tbd.experiments.figures import plot_masks, plot_score_vs_iou, score_iou_histogram

logger = logging.getLogger("tbd.analyze_harmony")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Trailing KEY VALUE pairs override both configs (e.g. DATASETS.SYNTHETIC.ROOT).",
    )
    p.add_argument("--config-file", required=True, help="the first model (the 'teacher')")
    p.add_argument("--weights", default=None, help="its checkpoint (default: MODEL.WEIGHTS)")
    p.add_argument("--name", default=None, help="its key in harmony.json (default: config name)")
    p.add_argument("--compare-config", default=None, help="a second model (e.g. the student)")
    p.add_argument("--compare-weights", default=None, help="its checkpoint (default: WEIGHTS)")
    p.add_argument("--compare-name", default=None, help="its key (default: config name)")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--dataset", default=None, help="registered split (default: DATASETS.TEST[0])")
    p.add_argument("--delta", type=float, default=0.2, help="harmonious iff |s - u| <= delta")
    p.add_argument("--topk", type=int, default=100, help="detections per image that count")
    p.add_argument(
        "--match-iou",
        type=float,
        default=MATCH_IOU,
        help="a detection is matched when its IoU with a ground truth of its class is >= this",
    )
    p.add_argument(
        "--confident-score",
        type=float,
        default=CONFIDENT_SCORE,
        help="a detection is confident when its score is >= this",
    )
    p.add_argument("--max-images", type=int, default=None, help="only the first N images")
    p.add_argument("--mask-images", type=int, default=3, help="images shown in masks.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    if args.compare_config is None and (args.compare_weights or args.compare_name):
        p.error("--compare-weights/--compare-name need --compare-config")
    if args.delta < 0 or args.topk < 1 or (args.max_images is not None and args.max_images < 1):
        p.error("--delta must be >= 0, --topk and --max-images >= 1")
    return args


def load_cfg(config_file, opts, weights):
    from tbd.config import load_tbd_config

    cfg = load_tbd_config(config_file, opts)
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    return cfg


def model_specs(args):
    """[(name, config file, weights)] of the one or two models, with distinct names."""
    specs = [(args.name, args.config_file, args.weights)]
    if args.compare_config:
        specs.append((args.compare_name, args.compare_config, args.compare_weights))
    stems = [os.path.splitext(os.path.basename(c))[0] for _, c, _ in specs]
    defaults = ["model", "compare"] if len(set(stems)) < len(stems) else stems
    names = [name or default for (name, _, _), default in zip(specs, defaults)]
    if len(set(names)) < len(names):
        raise SystemExit(f"the two models need different names, got {names}")
    return [(n, c, w) for n, (_, c, w) in zip(names, specs)]


def run_model(name, cfg, dataset, args, num_mask_images):
    from detectron2.evaluation import COCOEvaluator

    from tbd.checkpoint import load_eval_model
    from tbd.experiments.harmony_runs import measure

    model = load_eval_model(cfg, "analyzing")
    evaluator = COCOEvaluator(
        dataset,
        tasks=("bbox",),
        distributed=False,
        output_dir=os.path.join(args.output, "inference", name),
    )
    analysis = measure(
        model,
        cfg,
        dataset,
        topk=args.topk,
        evaluator=evaluator,
        max_images=args.max_images,
        num_mask_images=num_mask_images,
        progress=None if args.no_progress else lambda loader: tqdm(loader, desc=name),
    )
    return analysis, model


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def main(argv=None):
    from detectron2.utils.logger import setup_logger

    from tbd.datasets import register_datasets

    args = parse_args(argv)
    setup_logger()  # detectron2's own messages (checkpoint, COCOEvaluator tables)
    setup_logger(name="tbd")
    os.makedirs(args.output, exist_ok=True)
    specs = model_specs(args)
    cfgs = [load_cfg(config, args.opts, weights) for _, config, weights in specs]
    dataset = args.dataset or cfgs[0].DATASETS.TEST[0]
    for cfg in cfgs:
        # register only the analyzed split (the synthetic one is generated only when it is used)
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), (dataset,)
        register_datasets(cfg)

    results, report = {}, {}
    for index, ((name, config, _), cfg) in enumerate(zip(specs, cfgs)):
        analysis, model = run_model(name, cfg, dataset, args, args.mask_images if index == 0 else 0)
        stats = analysis.statistics(args.delta, args.match_iou, args.confident_score)
        results[name] = (analysis, stats)
        report[name] = {
            "config_file": config,
            "weights": cfg.MODEL.WEIGHTS,
            "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
            **stats,
            "coco": {k: analysis.coco.get(k) for k in ("AP", "AP50", "AP75")},
        }
        if index == 0:
            plot_masks(
                name,
                analysis.mask_samples,
                model.head_in_features,
                cfg.INPUT.FORMAT,
                os.path.join(args.output, "masks.png"),
            )
        del model

    first = next(iter(results.values()))[0]
    summary = {
        "dataset": dataset,
        "num_images": first.num_images,
        "num_gt_boxes": first.num_gt,
        "delta": args.delta,
        "topk": args.topk,
        "match_iou": args.match_iou,
        "confident_score": args.confident_score,
        "mask_model": specs[0][0],
        "models": report,
    }
    with open(os.path.join(args.output, "harmony.json"), "w") as f:
        json.dump(summary, f, indent=2, allow_nan=False)
    panels = [
        (name, score_iou_histogram(a.anchor_scores, a.anchor_ious), stats["anchors"])
        for name, (a, stats) in results.items()
    ]
    plot_score_vs_iou(panels, args.delta, os.path.join(args.output, "score_vs_iou.png"))
    for name, entry in report.items():
        a, m, c = entry["anchors"], entry["detections_matched"], entry["detections_confident"]
        logger.info(
            f"{name}: harmonious {_fmt(a['harmonious_fraction'])} of {a['count']} foreground "
            f"anchors (spearman(s, u) {_fmt(a['spearman'])}); of the top-{args.topk} detections, "
            f"{_fmt(m['harmonious_fraction'])} of {m['count']} matched "
            f"(spearman {_fmt(m['spearman'])}), {_fmt(c['harmonious_fraction'])} of "
            f"{c['count']} confident; AP {_fmt(entry['coco']['AP'])}"
        )
    logger.info(f"wrote harmony.json, score_vs_iou.png, masks.png to {args.output}")
    return summary


if __name__ == "__main__":
    main()
