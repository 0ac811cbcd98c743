"""Deterministic synthetic COCO-format detection dataset.

No real detection dataset can be downloaded in every environment this project runs in, so it
ships a generator for a small but non-trivial one. Each RGB image shows 0-8 instances of six
shape classes (:data:`CLASS_NAMES`) on a cluttered background:

* the classes differ only by *shape*; every instance gets a random colour (re-drawn until it
  contrasts with the background under it), so colour carries no class information;
* object sizes are log-uniform from 8 px to 60% of the image side, shapes are stretched up to
  1.6x along one axis and randomly rotated, some objects are truncated by the image border;
* objects are painted in order and may occlude each other; an object is annotated only if at
  least half of its own pixels stay visible (counted from per-object masks), so labels are
  honest;
* backgrounds mix smooth colour noise, gradients and stripes; unannotated distractors (thin
  scribbles, arcs and small irregular blobs) are painted under and, sparsely, over the objects;
  additive Gaussian pixel noise is applied last.

Boxes are the tight box of each object's visible pixels, so classification (small shapes look
alike) and localization (thin/occluded parts, clutter) are both non-trivial, and a larger model
has room to beat a small one -- which is what a distillation experiment needs.

Three knobs make it easier (``DATASETS.SYNTHETIC.MIN_OBJECT_SIZE``, ``MAX_OBJECTS``, ``CLUTTER``):
a larger smallest object, fewer objects per image, and ``clutter=False`` (a plain gradient
background, no distractors). Their defaults give the dataset described above, pixel for pixel.

Everything is drawn from :func:`numpy.random.default_rng` streams seeded by
``(seed, split, image_index)``: the same seed always gives the same json bytes and pixel arrays,
and the train and val splits use different streams. Only numpy and Pillow are used.
"""

import json
import os
from typing import Any, Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASS_NAMES", "make_synthetic_coco", "render_sample"]

CLASS_NAMES: Tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")

GENERATOR_VERSION = 2
_SPLIT_CODES = {"train": 0, "val": 1}
_MIN_VISIBLE_FRACTION = 0.5
# Placement keeps every painted object this visible, so that the final thin distractors (which
# may occlude a little more) rarely push one below _MIN_VISIBLE_FRACTION.
_KEEP_VISIBLE_FRACTION = 0.7
_MIN_SIZE_PX = 8.0
_MAX_SIZE_FRAC = 0.6
_MAX_ASPECT = 1.6
_EMPTY_PROB = 0.03
_MAX_OBJECTS = 8


# --------------------------------------------------------------------------------------------
# Shapes: polygons in a unit frame ([-1, 1] on both axes before stretching and rotation).
# --------------------------------------------------------------------------------------------
def _circle_pts(n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _shape_polygons(cls: str, rng: np.random.Generator) -> List[Tuple[np.ndarray, int]]:
    """Return ``[(points Nx2, fill)]`` to draw in order; fill 0 cuts a hole (for the ring)."""
    if cls == "circle":
        return [(_circle_pts(), 1)]
    if cls == "square":
        return [(np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]), 1)]
    if cls == "triangle":
        t = np.deg2rad(np.array([-90.0, 30.0, 150.0]))
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
        pts[:, 1] = (pts[:, 1] + 0.25) / 0.75  # span the full [-1, 1] height
        return [(pts, 1)]
    if cls == "cross":
        a = rng.uniform(0.26, 0.4)  # half thickness of the arms
        pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a)]
        pts += [(a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
        return [(np.array(pts, dtype=np.float64), 1)]
    if cls == "ring":
        inner = rng.uniform(0.45, 0.68)
        return [(_circle_pts(), 1), (inner * _circle_pts(), 0)]
    if cls == "star":
        inner = rng.uniform(0.38, 0.5)
        t = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 1)]
    raise ValueError(f"unknown shape class {cls!r}")


def _object_mask(
    cls: str, cx: float, cy: float, size: float, rng: np.random.Generator
) -> Tuple[np.ndarray, int, int]:
    """Rasterize one randomly stretched and rotated shape.

    Returns ``(mask, x0, y0)``: a boolean mask in a local frame whose top-left pixel is at image
    coordinates ``(x0, y0)``. The local frame may extend outside the image.
    """
    polys = _shape_polygons(cls, rng)
    aspect = rng.uniform(1.0, _MAX_ASPECT)
    scale = np.array([size / 2.0, size / 2.0 / aspect])
    if rng.random() < 0.5:
        scale = scale[::-1]
    ang = rng.uniform(0.0, 2.0 * np.pi)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    polys = [((pts * scale) @ rot.T + (cx, cy), fill) for pts, fill in polys]
    outer = polys[0][0]
    x0, y0 = np.floor(outer.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(outer.max(axis=0)).astype(int) + 1
    canvas = Image.new("L", (int(x1 - x0 + 1), int(y1 - y0 + 1)), 0)
    draw = ImageDraw.Draw(canvas)
    for pts, fill in polys:
        draw.polygon([(float(x - x0), float(y - y0)) for x, y in pts], fill=fill)
    return np.asarray(canvas, dtype=bool), int(x0), int(y0)


# --------------------------------------------------------------------------------------------
# Backgrounds and distractors
# --------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random colour field in [0, 1], shape (size, size, 3)."""
    small = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    big = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, size: int, clutter: bool = True) -> np.ndarray:
    """A float32 background (size, size, 3) in [0, 255]: a linear colour gradient, with (when
    ``clutter``) colour noise, fine texture and stripes on top."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(ang) * xx + np.sin(ang) * yy
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    img = c0 + (c1 - c0) * ramp[..., None]  # linear gradient
    if not clutter:
        return img.astype(np.float32)
    img = img + rng.uniform(40, 110) * (_smooth_noise(rng, size, int(rng.integers(3, 9))) - 0.5)
    if rng.random() < 0.7:  # fine texture
        cells = int(rng.integers(size // 10, size // 4 + 1))
        img = img + rng.uniform(15, 45) * (_smooth_noise(rng, size, cells) - 0.5)
    if rng.random() < 0.5:  # stripes
        ang = rng.uniform(0, np.pi)
        freq = rng.uniform(3, 14)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (np.cos(ang) * xx + np.sin(ang) * yy) + phase)
        img = img + rng.uniform(10, 40) * wave[..., None] * rng.uniform(0.3, 1.0, 3)
    return np.clip(img, 0, 255).astype(np.float32)


def _distractor_mask(rng: np.random.Generator, size: int, thin_only: bool) -> np.ndarray:
    """Mask of one unannotated distractor: a scribble, an open arc or a small irregular blob."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    kind = "line" if thin_only else rng.choice(["line", "line", "arc", "blob"])
    width = 1 if thin_only else int(rng.integers(1, 3))
    if kind == "line":  # random-walk polyline
        n = int(rng.integers(2, 6))
        p = rng.uniform(0, size, 2)
        pts = [p]
        for _ in range(n - 1):
            p = p + rng.normal(0, size * 0.25, 2)
            pts.append(p)
        draw.line([(float(x), float(y)) for x, y in pts], fill=1, width=width)
    elif kind == "arc":  # open arc: at most 3/4 of a circle, so never a ring
        r = rng.uniform(4, size * 0.3)
        cx, cy = rng.uniform(0, size, 2)
        start = rng.uniform(0, 360)
        draw.arc(
            [cx - r, cy - r, cx + r, cy + r],
            start,
            start + rng.uniform(40, 270),
            fill=1,
            width=width,
        )
    else:  # small irregular blob, smaller than the smallest object
        n = int(rng.integers(5, 9))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(0.6, 2.0, n)
        cx, cy = rng.uniform(0, size, 2)
        draw.polygon(
            [(float(cx + a * np.cos(b)), float(cy + a * np.sin(b))) for a, b in zip(r, t)], 1
        )
    return np.asarray(canvas, dtype=bool)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """Random RGB colour, re-drawn (a few times) until it differs from the mean of ``under``."""
    ref = under.reshape(-1, 3).mean(axis=0) if under.size else np.full(3, 127.0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(8):
        if np.abs(colour - ref).sum() > 150:
            break
        colour = rng.uniform(0, 255, 3)
    return colour


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------
def _place_object(rng, cls, s, lo, hi, owner, full_area, tries=10):
    """Draw a size and position for one shape such that it and every object already painted keep
    more than the visible fraction the annotations need (occlusion stays partial).

    Returns ``(image mask, cx, cy, size, full mask area)``, or None when no try succeeds.
    """
    for _ in range(tries):
        size = float(np.exp(rng.uniform(lo, hi)))
        cx, cy = rng.uniform(0.05 * s, 0.95 * s, 2)
        mask, x0, y0 = _object_mask(cls, cx, cy, size, rng)
        h, w = mask.shape
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, s), min(y0 + h, s)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        m = np.zeros((s, s), dtype=bool)
        m[iy0:iy1, ix0:ix1] = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        area = int(mask.sum())
        if m.sum() < _KEEP_VISIBLE_FRACTION * area:  # mostly outside the image
            continue
        covered = np.bincount(owner[m & (owner >= 0)], minlength=len(full_area))
        visible = np.bincount(owner[owner >= 0], minlength=len(full_area))
        if np.all(visible - covered >= _KEEP_VISIBLE_FRACTION * np.asarray(full_area)):
            return m, cx, cy, size, area
    return None


def render_sample(
    rng: np.random.Generator,
    image_size: int,
    *,
    min_object_size: float = _MIN_SIZE_PX,
    max_objects: int = _MAX_OBJECTS,
    clutter: bool = True,
) -> Tuple[np.ndarray, List[Dict[str, Any]], np.ndarray]:
    """Render one synthetic image.

    Args:
        rng: the random generator to draw from (consumed).
        image_size: side of the square image in pixels.
        min_object_size: smallest object size in pixels (sizes are log-uniform from it to
            60% of the image side).
        max_objects: at most this many objects are painted (1 to it, uniformly).
        clutter: textured background and distractors; False: a plain gradient, no distractors.

    Returns:
        ``(image, objects, owner)``: ``image`` is a (H, W, 3) uint8 array; ``objects`` lists the
        annotated objects as dicts with ``category_id`` (1-based), ``bbox`` ``[x, y, w, h]``
        (tight box of the visible pixels), ``area`` (visible pixel count) and ``owner_index``;
        ``owner`` is an int16 (H, W) map holding, per pixel, the ``owner_index`` of the object
        painted there last, or -1 for background and distractors.
    """
    s = int(image_size)
    img = _background(rng, s, clutter)
    owner = np.full((s, s), -1, dtype=np.int16)

    # Distractors under the objects.
    for _ in range(int(rng.integers(2, 10)) if clutter else 0):
        m = _distractor_mask(rng, s, thin_only=False)
        img[m] = rng.uniform(0, 255, 3)

    num = 0 if rng.random() < _EMPTY_PROB else int(rng.integers(1, int(max_objects) + 1))
    lo, hi = np.log(min_object_size), np.log(max(min_object_size, _MAX_SIZE_FRAC * s))
    full_area, classes = [], []
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    for i in range(num):
        cls_idx = int(rng.integers(len(CLASS_NAMES)))
        placed = _place_object(rng, CLASS_NAMES[cls_idx], s, lo, hi, owner, full_area)
        if placed is None:  # no placement kept every object mostly visible: leave it out
            continue
        m, cx, cy, size, area = placed
        full_area.append(area)
        classes.append(cls_idx)
        colour = _contrasting_colour(rng, img[m])
        # Mild linear shading across the object so it is not a flat fill.
        ang = rng.uniform(0, 2 * np.pi)
        shade = rng.uniform(0, 40) * ((np.cos(ang) * (xx - cx) + np.sin(ang) * (yy - cy)) / size)
        img[m] = colour + shade[m][:, None]
        owner[m] = len(classes) - 1
    num = len(classes)

    # A few thin distractor lines over the objects (they occlude, so update the owner map).
    for _ in range(int(rng.integers(0, 3)) if clutter else 0):
        m = _distractor_mask(rng, s, thin_only=True)
        img[m] = rng.uniform(0, 255, 3)
        owner[m] = -1

    objects = []
    for i in range(num):
        vis = owner == i
        area = int(vis.sum())
        if area == 0 or area < _MIN_VISIBLE_FRACTION * full_area[i]:
            continue
        ys, xs = np.nonzero(vis)
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        objects.append(
            {
                "category_id": classes[i] + 1,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float(area),
                "owner_index": i,
            }
        )

    img = img + rng.normal(0.0, rng.uniform(2.0, 12.0), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects, owner


# --------------------------------------------------------------------------------------------
# Whole dataset
# --------------------------------------------------------------------------------------------
def _split_info(
    split: str, seed: int, image_size: int, num_images: int, look: Dict[str, Any]
) -> Dict[str, Any]:
    return {
        "generator": "tbd.synthetic",
        "version": GENERATOR_VERSION,
        "split": split,
        "seed": int(seed),
        "image_size": int(image_size),
        "num_images": int(num_images),
        **look,
    }


def _is_up_to_date(json_path: str, image_dir: str, info: Dict[str, Any]) -> bool:
    """True if ``json_path`` was written with parameters ``info`` and all its images exist."""
    if not os.path.isfile(json_path):
        return False
    try:
        with open(json_path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    old = data.get("info", {})
    if any(old.get(k) != v for k, v in info.items()):
        return False
    return all(os.path.isfile(os.path.join(image_dir, im["file_name"])) for im in data["images"])


def _write_split(
    split: str,
    json_path: str,
    image_dir: str,
    num_images: int,
    image_size: int,
    seed: int,
    look: Dict[str, Any],
) -> None:
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    images, annotations = [], []
    for idx in range(num_images):
        rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], idx])
        pixels, objects, _ = render_sample(rng, image_size, **look)
        file_name = f"{idx:06d}.png"
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), compress_level=1)
        image_id = idx + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for obj in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["category_id"],
                    "bbox": obj["bbox"],
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
    info = _split_info(split, seed, image_size, num_images, look)
    info["description"] = (
        "Synthetic shapes detection dataset (tbd.synthetic): 6 shape classes, random colours, "
        f"{'cluttered' if look['clutter'] else 'plain'} backgrounds, occlusion; boxes are tight "
        "boxes of visible pixels."
    )
    data = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(CLASS_NAMES)
        ],
    }
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, json_path)  # the json is written last: a partial run is never "up to date"


def make_synthetic_coco(
    root: str,
    *,
    num_train: int = 2000,
    num_val: int = 300,
    image_size: int = 128,
    seed: int = 0,
    min_object_size: float = _MIN_SIZE_PX,
    max_objects: int = _MAX_OBJECTS,
    clutter: bool = True,
    overwrite: bool = False,
) -> Dict[str, Any]:
    """Generate (or reuse) the synthetic dataset in COCO detection format under ``root``.

    Writes ``root/train/*.png``, ``root/val/*.png``, ``root/annotations/train.json`` and
    ``root/annotations/val.json``. Generation parameters are stored in each json's ``"info"``;
    a split whose json already matches them (and whose images all exist) is not regenerated,
    so a second call is cheap. Stale images from an earlier, larger run are not deleted.

    Args:
        root: output directory (created if needed).
        num_train: number of training images.
        num_val: number of validation images.
        image_size: side of the square images in pixels (at least 32).
        seed: base seed; train and val use distinct streams derived from it, and each image
            has its own stream ``(seed, split, index)``.
        min_object_size: smallest object size in pixels (at least 2, at most 60% of
            ``image_size``).
        max_objects: most objects per image (at least 1).
        clutter: textured backgrounds and distractors (False: plain gradients, no distractors).
        overwrite: regenerate even if up-to-date files exist.

    Returns:
        dict with ``root``, ``train_json``, ``train_dir``, ``val_json``, ``val_dir`` (paths as
        str) and ``generated`` (list of the splits written by this call).
    """
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    if not 2 <= min_object_size <= _MAX_SIZE_FRAC * image_size:
        raise ValueError(
            f"min_object_size must be in [2, {_MAX_SIZE_FRAC} * image_size = "
            f"{_MAX_SIZE_FRAC * image_size:g}], got {min_object_size}"
        )
    if int(max_objects) != max_objects or max_objects < 1:
        raise ValueError(f"max_objects must be an integer >= 1, got {max_objects}")
    look = {
        "min_object_size": float(min_object_size),
        "max_objects": int(max_objects),
        "clutter": bool(clutter),
    }
    root = os.fspath(root)
    out: Dict[str, Any] = {"root": root, "generated": []}
    for split, num in (("train", num_train), ("val", num_val)):
        json_path = os.path.join(root, "annotations", f"{split}.json")
        image_dir = os.path.join(root, split)
        out[f"{split}_json"], out[f"{split}_dir"] = json_path, image_dir
        info = _split_info(split, seed, image_size, num, look)
        if overwrite or not _is_up_to_date(json_path, image_dir, info):
            _write_split(split, json_path, image_dir, num, image_size, seed, look)
            out["generated"].append(split)
    return out
