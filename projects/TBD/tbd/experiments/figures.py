"""
Figures of the tools: score against IoU of foreground anchors (one panel per model, from a
histogram that a results json can keep), the TFD masks a model gives as a teacher, and detections
of several models on the same images.
"""

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

# Bins per axis of the score-vs-IoU histograms.
HISTOGRAM_BINS = 40


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def score_iou_histogram(scores, ious, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """counts[i, j]: the pairs with score s in the i-th and IoU u in the j-th of ``bins`` equal
    bins of [0, 1] (the last bin includes 1). ``scores``, ``ious``: 1-d tensors or arrays (n,)."""
    s, u = np.asarray(scores, dtype=np.float64), np.asarray(ious, dtype=np.float64)
    counts, _, _ = np.histogram2d(s, u, bins=bins, range=[[0, 1], [0, 1]])
    return counts.astype(np.int64)


def encode_histogram(counts: np.ndarray) -> Dict:
    """A histogram as compact JSON: ``{"bins": n, "rows": [n strings]}``, row i holding the n
    counts of score bin i (low to high) over the IoU bins, separated by spaces."""
    return {"bins": int(counts.shape[0]), "rows": [" ".join(map(str, row)) for row in counts]}


def decode_histogram(encoded: Dict) -> np.ndarray:
    return np.array([[int(c) for c in row.split()] for row in encoded["rows"]], dtype=np.int64)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plot_score_vs_iou(panels: Sequence[Tuple[str, np.ndarray, Dict]], delta: float, path: str):
    """
    One panel per model: the 2D histogram (log colour scale) of the classification score s (y)
    against the IoU with the matched ground truth u (x) of its foreground anchors, with the
    diagonal and the harmonious band |s - u| <= delta.

    Args:
        panels: (name, counts from :func:`score_iou_histogram`, the anchors' statistics of
            ``tbd.analysis.harmony_statistics``) per model, in order.
    """
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    band = np.linspace(0, 1, 101)
    for ax, (name, counts, a) in zip(axes[0], panels):
        if a.get("count"):
            edges = np.linspace(0, 1, counts.shape[0] + 1)
            masked = np.ma.masked_equal(counts, 0)
            image = ax.pcolormesh(
                edges, edges, masked, norm=LogNorm(), cmap="viridis", zorder=2, shading="flat"
            )
            fig.colorbar(image, ax=ax, label="foreground anchors")
            title = f"{name}: {a['harmonious_fraction']:.1%} harmonious"
        else:
            ax.text(0.5, 0.5, "no foreground anchors", ha="center", va="center")
            title = f"{name}: no foreground anchors"
        ax.fill_between(band, band - delta, band + delta, color="red", alpha=0.12, lw=0, zorder=1)
        ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", zorder=3, label="s = u")
        ax.plot(band, band - delta, color="red", lw=1, zorder=3)
        ax.plot(band, band + delta, color="red", lw=1, zorder=3, label=f"|s - u| <= {delta:g}")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="IoU with matched ground truth u")
        ax.set(ylabel="classification score s", aspect="equal")
        ax.set_title(
            f"{title}\n(n = {a.get('count', 0)}, mean HS {_fmt(a.get('mean_harmony_score'))}, "
            f"Spearman {_fmt(a.get('spearman'))})",
            fontsize=10,
        )
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_masks(name: str, samples: List[Dict], level_names, input_format: str, path: str):
    """Per image two rows (M_cls, M_reg): the image with its ground truth, then one panel per
    FPN level, computed from ``name``'s predictions as a teacher (tbd.losses.task_masks).
    ``samples``: ``HarmonyAnalysis.mask_samples``."""
    from detectron2.data.detection_utils import convert_image_to_rgb
    from matplotlib.patches import Rectangle

    if not samples:
        return
    plt = _pyplot()
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


def detection_picture(models, dataset_name: str, path: str, num_images: int = 4, score=0.2):
    """Rows: ground truth, then each model's detections (score >= ``score``), on the first images
    of a registered split. ``models``: [(label, model in eval mode)]."""
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer
    from PIL import Image, ImageDraw

    dicts = DatasetCatalog.get(dataset_name)[:num_images]
    metadata = MetadataCatalog.get(dataset_name)
    rows, labels = [], ["ground truth"] + [name for name, _ in models]
    gt = [Visualizer(read_image(d["file_name"], "RGB"), metadata, scale=3.0) for d in dicts]
    rows.append([v.draw_dataset_dict(d).get_image() for v, d in zip(gt, dicts)])
    for _, model in models:
        row = []
        for d in dicts:
            image = read_image(d["file_name"], "BGR")
            tensor = torch.as_tensor(image.transpose(2, 0, 1).astype("float32"))
            with torch.no_grad():
                inst = model([{"image": tensor}])[0]["instances"].to("cpu")
            inst = inst[inst.scores >= score]
            vis = Visualizer(image[:, :, ::-1], metadata, scale=3.0)
            row.append(vis.draw_instance_predictions(inst).get_image())
        rows.append(row)
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    picture = Image.fromarray(grid)
    draw = ImageDraw.Draw(picture)
    height = grid.shape[0] // len(rows)
    for i, label in enumerate(labels):
        draw.rectangle([0, i * height, 8 * len(label) + 8, i * height + 16], fill=(0, 0, 0))
        draw.text((4, i * height + 2), label, fill=(255, 255, 255))
    picture.save(path)
