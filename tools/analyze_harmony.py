#!/usr/bin/env python
"""
Harmony analysis: how often a detector's classification score agrees with the IoU of its box
(|s - u| <= delta), for one model or a teacher and a student, on a registered dataset split.

    python tools/analyze_harmony.py --config-file configs/Synthetic/teacher_R18_wide.yaml \
        --weights output/synthetic/teacher_R18_wide/model_final.pth \
        --compare-config configs/Synthetic/student_R18.yaml \
        --compare-weights output/synthetic/student_R18/model_final.pth --output output/harmony

Writes ``harmony.json`` (statistics and COCO AP per model), ``score_vs_iou.png`` (2D histogram of
score against IoU on foreground anchors, one panel per model) and ``masks.png`` (the TFD masks the
first model gives a few images, as a teacher). Definitions: docs/harmony_analysis.md.
"""

import argparse
import json
import logging
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from tqdm import tqdm  # noqa: E402

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


def build_model(cfg):
    """The model in eval mode with its checkpoint; a TBDRetinaNet builds no teacher for this."""
    from detectron2.modeling import build_model as build

    from tbd.checkpoint import SafeCheckpointer

    model = build(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        SafeCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: analyzing a randomly initialized model")
    return model


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

    from tbd.analysis import analyze_harmony, labelled_test_loader

    model = build_model(cfg)
    loader = labelled_test_loader(cfg, dataset, max_images=args.max_images)
    evaluator = COCOEvaluator(
        dataset,
        tasks=("bbox",),
        distributed=False,
        output_dir=os.path.join(args.output, "inference", name),
    )
    batches = loader if args.no_progress else tqdm(loader, total=len(loader), desc=name)
    analysis = analyze_harmony(
        model, batches, topk=args.topk, evaluator=evaluator, num_mask_images=num_mask_images
    )
    return analysis, model


def plot_score_vs_iou(results, delta, path, bins=40):
    """2D histogram of score (y) against IoU with the matched ground truth (x), foreground anchors,
    one panel per model, with the band |s - u| <= delta."""
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.6), squeeze=False)
    band = torch.linspace(0, 1, 101).numpy()
    for ax, (name, (analysis, stats)) in zip(axes[0], results.items()):
        s, u = analysis.anchor_scores.numpy(), analysis.anchor_ious.numpy()
        a = stats["anchors"]
        if a["count"]:
            *_, image = ax.hist2d(
                u, s, bins=bins, range=[[0, 1], [0, 1]], norm=LogNorm(), cmap="viridis", zorder=2
            )
            fig.colorbar(image, ax=ax, label="foreground anchors")
            title = f"{name}: {a['harmonious_fraction']:.1%} of anchors harmonious"
        else:
            ax.text(0.5, 0.5, "no foreground anchors", ha="center", va="center")
            title = f"{name}: no foreground anchors"
        ax.fill_between(band, band - delta, band + delta, color="red", alpha=0.12, lw=0, zorder=1)
        ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", zorder=3, label="s = u")
        ax.plot(band, band - delta, color="red", lw=1, zorder=3)
        ax.plot(band, band + delta, color="red", lw=1, zorder=3, label=f"|s - u| <= {delta:g}")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="IoU with matched ground truth u")
        ax.set(ylabel="classification score s", aspect="equal")
        ax.set_title(f"{title}\n(n = {a['count']}, mean HS {_fmt(a['mean_harmony_score'])})")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def plot_masks(name, samples, level_names, input_format, path):
    """Per image two rows (M_cls, M_reg): the image with its ground truth, then one panel per
    FPN level, computed from ``name``'s predictions as a teacher (tbd.losses.task_masks)."""
    from detectron2.data.detection_utils import convert_image_to_rgb

    if not samples:
        return
    cols = 1 + len(level_names)
    fig, axes = plt.subplots(
        2 * len(samples), cols, figsize=(2.0 * cols, 4.1 * len(samples)), squeeze=False
    )
    for i, sample in enumerate(samples):
        image = convert_image_to_rgb(sample["image"].permute(1, 2, 0), input_format)
        height, width = sample["padded_size"]
        for row, (label, masks) in enumerate(
            (("M_cls", sample["cls_masks"]), ("M_reg", sample["reg_masks"]))
        ):
            ax = axes[2 * i + row, 0]
            ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
            for x0, y0, x1, y1 in sample["gt_boxes"].tolist():
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1))
            ax.set(xlim=(0, width), ylim=(height, 0))
            ax.set_ylabel(f"image {i}: {label}")
            for level, (level_name, mask) in enumerate(zip(level_names, masks)):
                ax = axes[2 * i + row, 1 + level]
                ax.imshow(mask.numpy(), cmap="magma", vmin=0, extent=(0, width, height, 0))
                ax.set_title(f"{level_name} max {float(mask.max()):.1f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"TFD masks of {name} as teacher (each averages 1 per image and level)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
        stats = analysis.statistics(args.delta)
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
        "mask_model": specs[0][0],
        "models": report,
    }
    with open(os.path.join(args.output, "harmony.json"), "w") as f:
        json.dump(summary, f, indent=2, allow_nan=False)
    plot_score_vs_iou(results, args.delta, os.path.join(args.output, "score_vs_iou.png"))
    for name, entry in report.items():
        d, a, c = entry["detections"], entry["anchors"], entry["coco"]
        logger.info(
            f"{name}: harmonious {_fmt(d['harmonious_fraction'])} of {d['count']} top-{args.topk} "
            f"detections, {_fmt(a['harmonious_fraction'])} of {a['count']} foreground anchors; "
            f"spearman(s, u) {_fmt(d['spearman'])} / {_fmt(a['spearman'])}; AP {_fmt(c['AP'])}"
        )
    logger.info(f"wrote harmony.json, score_vs_iou.png, masks.png to {args.output}")
    return summary


if __name__ == "__main__":
    main()
