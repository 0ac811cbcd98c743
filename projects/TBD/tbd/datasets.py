"""Dataset registration with detectron2: the synthetic dataset and user COCO-format datasets.

Every dataset registered here is loaded by :func:`load_coco_dataset`: detectron2's
``load_coco_json`` followed by :func:`validate_coco_dicts`, so that a broken annotation file fails
when the dataset is loaded (before the first training step) with a message naming the file, the
image and the annotation, instead of deep inside the trainer. What is an error and what is skipped
with a warning is listed in docs/reliability.md.
"""

import functools
import json
import logging
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .synthetic import CLASS_NAMES, make_synthetic_coco

__all__ = [
    "register_datasets",
    "register_synthetic",
    "register_coco_datasets",
    "parse_coco_spec",
    "load_coco_dataset",
    "validate_coco_dicts",
]

logger = logging.getLogger(__name__)

# Boxes that cross the image border by at most this many pixels (rounding in annotation tools) are
# clipped without a warning; farther ones are clipped and counted in the warning.
CLIP_TOLERANCE = 1.0
_EXAMPLES = 3


def _bbox(ann: Dict, where: str) -> Tuple[float, float, float, float]:
    box = ann.get("bbox")
    if box is None:
        raise ValueError(f"{where} has no 'bbox'")
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}: 'bbox' must be 4 numbers [x, y, width, height], got {box!r}"
        ) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"{where}: 'bbox' has a non-finite value: {box!r}")
    return x, y, w, h


def validate_coco_dicts(
    dicts: List[Dict],
    *,
    name: str,
    json_file: str,
    require_annotations: bool = False,
    check_files: bool = True,
) -> Tuple[List[Dict], Dict[str, int]]:
    """Check and clean the dataset dicts that ``load_coco_json`` returned for ``json_file``.

    Errors (``ValueError``, or ``FileNotFoundError`` for image files), each naming the dataset,
    the json file and the image / annotation ids: no images; an image whose width or height is not
    positive; an annotation without a ``bbox`` of 4 finite numbers; image files that do not exist
    (all are checked, the first few are named); with ``require_annotations``, no image with a
    non-crowd annotation left.

    Repaired with one warning per dataset that counts them and names examples: boxes with zero or
    negative width or height are dropped ("zero_size"); boxes entirely outside their image are
    dropped ("outside"); boxes partly outside are clipped to the image ("clipped", counted when they
    cross the border by more than :data:`CLIP_TOLERANCE` pixels).

    Args:
        dicts: detectron2 dataset dicts, with the COCO annotation ids under the key "id" (removed
            here).
        name, json_file: for the messages.
        require_annotations: the dataset is trained on with DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            which drops the images without a non-crowd annotation: refuse a dataset left empty.
        check_files: check that every image file exists.

    Returns:
        the dicts (modified in place) and the counts ``{"zero_size", "outside", "clipped"}``.
    """
    source = f"dataset {name!r} ({json_file})"
    if not dicts:
        raise ValueError(f"{source} lists no images: a dataset needs at least one image")
    counts = {"zero_size": 0, "outside": 0, "clipped": 0}
    examples: Dict[str, List[str]] = {k: [] for k in counts}
    missing = []

    def note(kind: str, text: str) -> None:
        counts[kind] += 1
        if len(examples[kind]) < _EXAMPLES:
            examples[kind].append(text)

    for record in dicts:
        image_id = record.get("image_id")
        width, height = record.get("width"), record.get("height")
        if not (isinstance(width, (int, float)) and isinstance(height, (int, float))) or not (
            width > 0 and height > 0
        ):
            raise ValueError(
                f"{source}: image id {image_id} ({record.get('file_name')}) must have a positive "
                f"width and height, got width={width!r} height={height!r}"
            )
        if check_files and not os.path.isfile(record["file_name"]):
            missing.append(f"image id {image_id}: {record['file_name']}")
        kept = []
        for ann in record.get("annotations", []):
            ann_id = ann.pop("id", None)
            where = f"{source}: annotation id {ann_id} of image id {image_id}"
            x, y, w, h = _bbox(ann, where)
            example = f"annotation id {ann_id} of image id {image_id}: bbox {[x, y, w, h]}"
            if w <= 0 or h <= 0:
                note("zero_size", example)
                continue
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, float(width)), min(y + h, float(height))
            if x1 <= x0 or y1 <= y0:
                note("outside", f"{example} in a {width}x{height} image")
                continue
            if (x0, y0, x1, y1) != (x, y, x + w, y + h):
                if max(-x, -y, x + w - width, y + h - height) > CLIP_TOLERANCE:
                    note("clipped", f"{example} in a {width}x{height} image")
                ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            kept.append(ann)
        record["annotations"] = kept

    if missing:
        raise FileNotFoundError(
            f"{source}: {len(missing)} of {len(dicts)} image files do not exist: "
            + "; ".join(missing[:_EXAMPLES])
            + (" ..." if len(missing) > _EXAMPLES else "")
        )
    what = {
        "zero_size": "dropped {} boxes with zero or negative width or height",
        "outside": "dropped {} boxes entirely outside their image",
        "clipped": "clipped {} boxes that extend more than %g px outside their image"
        % CLIP_TOLERANCE,
    }
    repaired = [
        what[k].format(n) + f" (e.g. {'; '.join(examples[k])})" for k, n in counts.items() if n
    ]
    if repaired:
        logger.warning(f"{source}: " + ", ".join(repaired))
    annotated = sum(any(a.get("iscrowd", 0) == 0 for a in r["annotations"]) for r in dicts)
    if not annotated:
        skipped = counts["zero_size"] + counts["outside"]
        reason = f" ({skipped} were dropped as invalid, see above)" if skipped else ""
        message = f"{source}: none of its {len(dicts)} images has a non-crowd annotation{reason}"
        if require_annotations:
            raise ValueError(
                f"{message}, so DATALOADER.FILTER_EMPTY_ANNOTATIONS (True) would remove every "
                "image from training. Annotate the images, or set "
                "DATALOADER.FILTER_EMPTY_ANNOTATIONS False to train on them as background only."
            )
        logger.warning(message)
    return dicts, counts


def _json_problem(json_file: str) -> Optional[str]:
    """What makes ``json_file`` unloadable as COCO instances, when ``load_coco_json`` failed."""
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"is not a readable JSON file ({e})"
    if not isinstance(data, dict):
        return f"is not a COCO instances file: its top level is a {type(data).__name__}"
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            return f"is not a COCO instances file: it has no {key!r} list"
    if not data["images"]:
        return "lists no images: a dataset needs at least one image"
    if not data["categories"]:
        return "lists no categories"
    for i, image in enumerate(data["images"]):
        lacking = [k for k in ("id", "file_name", "height", "width") if k not in image]
        if lacking:
            return f"image entry #{i} (id {image.get('id')}) lacks {lacking}"
    annotations = data.get("annotations") or []
    for i, ann in enumerate(annotations):
        lacking = [k for k in ("id", "image_id", "category_id") if k not in ann]
        if lacking:
            return f"annotation #{i} (id {ann.get('id')}) lacks {lacking}"
    known = {c.get("id") for c in data["categories"]}
    unknown = [a for a in annotations if a.get("category_id") not in known]
    if unknown:
        a = unknown[0]
        ids = sorted(known, key=str)
        return (
            f"annotation id {a.get('id')} of image id {a.get('image_id')} has category_id "
            f"{a.get('category_id')!r}, which is not an id in 'categories' "
            f"({ids[:20]}{' ...' if len(ids) > 20 else ''}); {len(unknown)} annotation(s) have an "
            "unknown category id"
        )
    return None


def load_coco_dataset(
    json_file: str, image_root: str, name: str, *, require_annotations: bool = False
) -> List[Dict]:
    """``load_coco_json(json_file, image_root, name)``, validated by :func:`validate_coco_dicts`.

    A file that ``load_coco_json`` cannot load raises ``ValueError`` naming the dataset, the file
    and, where it can be found, the problem (invalid JSON, no images or categories, an annotation
    with an unknown category id).
    """
    try:
        dicts = load_coco_json(json_file, image_root, name, extra_annotation_keys=["id"])
    except Exception as e:
        problem = _json_problem(json_file)
        if problem is None:
            problem = f"cannot be loaded: {type(e).__name__}: {e}"
        raise ValueError(f"dataset {name!r}: {json_file} {problem}") from e
    dicts, _ = validate_coco_dicts(
        dicts, name=name, json_file=json_file, require_annotations=require_annotations
    )
    return dicts


def _register_coco(
    name: str, json_file: str, image_root: str, metadata=None, require_annotations=False
):
    """Like detectron2's ``register_coco_instances``, with :func:`load_coco_dataset` as loader."""
    DatasetCatalog.register(
        name,
        functools.partial(
            load_coco_dataset, json_file, image_root, name, require_annotations=require_annotations
        ),
    )
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {})
    )


def register_synthetic(
    root: str,
    *,
    names: Sequence[str] = ("tbd_synthetic_train", "tbd_synthetic_val"),
    generate: bool = True,
    **gen_kwargs,
) -> List[str]:
    """Register the synthetic train/val splits (see :mod:`tbd.synthetic`) with detectron2.

    Args:
        root: dataset directory, as given to :func:`tbd.synthetic.make_synthetic_coco`.
        names: ``(train_name, val_name)`` to register; names already in ``DatasetCatalog``
            are left untouched.
        generate: generate the data if missing or stale (cheap when up to date). If False, the
            json files must already exist.
        **gen_kwargs: forwarded to ``make_synthetic_coco`` (``num_train``, ``num_val``,
            ``image_size``, ``seed``, ``min_object_size``, ``max_objects``, ``clutter``,
            ``overwrite``).

    Returns:
        the list of dataset names.
    """
    if len(names) != 2:
        raise ValueError(f"names must be (train_name, val_name), got {names!r}")
    root = os.fspath(root)
    if generate:
        paths = make_synthetic_coco(root, **gen_kwargs)
    else:
        paths = {
            f"{s}_json": os.path.join(root, "annotations", f"{s}.json") for s in ("train", "val")
        }
        paths.update({f"{s}_dir": os.path.join(root, s) for s in ("train", "val")})
    for name, split in zip(names, ("train", "val")):
        json_file, image_dir = paths[f"{split}_json"], paths[f"{split}_dir"]
        if name in DatasetCatalog.list():
            continue
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"synthetic dataset json not found: {json_file} (generate=True?)"
            )
        _register_coco(name, json_file, image_dir, {"thing_classes": list(CLASS_NAMES)})
    return list(names)


def parse_coco_spec(spec: str):
    """Split ``"name=path/to/instances.json:path/to/image_dir"`` into ``(name, json, image_dir)``.

    The last ``:`` separates the json path from the image directory.
    """
    name, eq, rest = spec.partition("=")
    json_file, colon, image_dir = rest.rpartition(":")
    if not (eq and colon and name.strip() and json_file and image_dir):
        raise ValueError(
            f"bad dataset spec {spec!r}: expected 'name=path/to/instances.json:path/to/image_dir'"
        )
    return name.strip(), json_file, image_dir


def register_coco_datasets(
    specs: Iterable[str], *, require_annotations: Iterable[str] = ()
) -> List[str]:
    """Register the user's own COCO-format detection datasets, no code edits needed.

    Each is validated when it is loaded (:func:`load_coco_dataset`).

    Args:
        specs: strings ``"name=path/to/instances.json:path/to/image_dir"``. Names already in
            ``DatasetCatalog`` are skipped.
        require_annotations: names of the datasets that must keep at least one image with a
            non-crowd annotation (training sets with DATALOADER.FILTER_EMPTY_ANNOTATIONS).

    Returns:
        the list of dataset names, in the order given.

    Raises:
        ValueError: a spec is malformed (the message quotes it).
        FileNotFoundError: the json file or the image directory does not exist.
    """
    names = []
    require_annotations = set(require_annotations)
    for spec in specs:
        name, json_file, image_dir = parse_coco_spec(spec)
        if not os.path.isfile(json_file):
            raise FileNotFoundError(f"dataset {name!r}: annotation json not found: {json_file}")
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"dataset {name!r}: image directory not found: {image_dir}")
        names.append(name)
        if name in DatasetCatalog.list():
            logger.info("dataset %r is already registered; skipping", name)
            continue
        _register_coco(name, json_file, image_dir, require_annotations=name in require_annotations)
    return names


SYNTHETIC_NAMES = ("tbd_synthetic_train", "tbd_synthetic_val")


def synthetic_kwargs(cfg) -> Dict:
    """The keyword arguments of :func:`tbd.synthetic.make_synthetic_coco` (all but ``root``) that
    ``cfg.DATASETS.SYNTHETIC`` asks for."""
    syn = cfg.DATASETS.SYNTHETIC
    return {
        "num_train": syn.NUM_TRAIN,
        "num_val": syn.NUM_VAL,
        "image_size": syn.IMAGE_SIZE,
        "seed": syn.SEED,
        "min_object_size": syn.MIN_OBJECT_SIZE,
        "max_objects": syn.MAX_OBJECTS,
        "clutter": syn.CLUTTER,
    }


def register_datasets(cfg) -> None:
    """Register what a config needs: ``DATASETS.COCO_SPECS``, and the synthetic dataset (generated
    under ``DATASETS.SYNTHETIC.ROOT`` when missing) when the config uses its names.

    With DATALOADER.FILTER_EMPTY_ANNOTATIONS (detectron2's default), the COCO datasets of
    DATASETS.TRAIN must have at least one annotated image (checked when they are loaded)."""
    filter_empty = cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    register_coco_datasets(
        cfg.DATASETS.COCO_SPECS, require_annotations=cfg.DATASETS.TRAIN if filter_empty else ()
    )
    used = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)
    if used & set(SYNTHETIC_NAMES):
        register_synthetic(
            cfg.DATASETS.SYNTHETIC.ROOT, names=SYNTHETIC_NAMES, **synthetic_kwargs(cfg)
        )
