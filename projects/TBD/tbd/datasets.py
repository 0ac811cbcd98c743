"""Dataset registration with detectron2: the synthetic dataset and user COCO-format datasets."""

import logging
import os
from typing import Iterable, List, Sequence

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

from .synthetic import CLASS_NAMES, make_synthetic_coco

__all__ = ["register_datasets", "register_synthetic", "register_coco_datasets", "parse_coco_spec"]

logger = logging.getLogger(__name__)


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
            ``image_size``, ``seed``, ``overwrite``).

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
        register_coco_instances(name, {"thing_classes": list(CLASS_NAMES)}, json_file, image_dir)
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


def register_coco_datasets(specs: Iterable[str]) -> List[str]:
    """Register the user's own COCO-format detection datasets, no code edits needed.

    Args:
        specs: strings ``"name=path/to/instances.json:path/to/image_dir"``. Names already in
            ``DatasetCatalog`` are skipped.

    Returns:
        the list of dataset names, in the order given.

    Raises:
        ValueError: a spec is malformed (the message quotes it).
        FileNotFoundError: the json file or the image directory does not exist.
    """
    names = []
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
        register_coco_instances(name, {}, json_file, image_dir)
    return names


SYNTHETIC_NAMES = ("tbd_synthetic_train", "tbd_synthetic_val")


def register_datasets(cfg) -> None:
    """Register what a config needs: ``DATASETS.COCO_SPECS``, and the synthetic dataset (generated
    under ``DATASETS.SYNTHETIC.ROOT`` when missing) when the config uses its names."""
    register_coco_datasets(cfg.DATASETS.COCO_SPECS)
    used = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)
    if used & set(SYNTHETIC_NAMES):
        syn = cfg.DATASETS.SYNTHETIC
        register_synthetic(
            syn.ROOT,
            names=SYNTHETIC_NAMES,
            num_train=syn.NUM_TRAIN,
            num_val=syn.NUM_VAL,
            image_size=syn.IMAGE_SIZE,
            seed=syn.SEED,
        )
