"""Tests for the synthetic COCO-format dataset generator and the dataset registration helpers."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tbd.datasets import register_coco_datasets, register_synthetic
from tbd.synthetic import CLASS_NAMES, make_synthetic_coco, render_sample

SMALL = dict(num_train=20, num_val=8, image_size=64)


def _read_images(out, split):
    with open(out[f"{split}_json"]) as f:
        data = json.load(f)
    return [
        np.asarray(Image.open(os.path.join(out[f"{split}_dir"], im["file_name"])))
        for im in data["images"]
    ]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_coco(str(root), seed=3, **SMALL)


def _json_bytes(out, split):
    with open(out[f"{split}_json"], "rb") as f:
        return f.read()


def test_deterministic(small, tmp_path):
    again = make_synthetic_coco(str(tmp_path / "again"), seed=3, **SMALL)
    other = make_synthetic_coco(str(tmp_path / "other"), seed=4, **SMALL)
    for split in ("train", "val"):
        assert _json_bytes(small, split) == _json_bytes(again, split)
        for a, b in zip(_read_images(small, split), _read_images(again, split)):
            np.testing.assert_array_equal(a, b)
    assert _json_bytes(small, "train") != _json_bytes(other, "train")
    assert not np.array_equal(_read_images(small, "train")[0], _read_images(other, "train")[0])


def test_coco_format_and_boxes(small):
    from pycocotools.coco import COCO

    for split, num in (("train", SMALL["num_train"]), ("val", SMALL["num_val"])):
        coco = COCO(small[f"{split}_json"])
        cats = coco.loadCats(coco.getCatIds())
        assert [c["id"] for c in cats] == [1, 2, 3, 4, 5, 6]
        assert tuple(c["name"] for c in cats) == CLASS_NAMES
        assert len(coco.getImgIds()) == num
        assert len(coco.getAnnIds()) > 0
        for img in coco.loadImgs(coco.getImgIds()):
            path = os.path.join(small[f"{split}_dir"], img["file_name"])
            assert os.path.isfile(path)
            with Image.open(path) as im:
                assert im.size == (img["width"], img["height"]) == (64, 64)
                assert im.mode == "RGB"
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
                x, y, w, h = ann["bbox"]
                assert all(isinstance(v, float) for v in ann["bbox"])
                assert x >= 0 and y >= 0 and w >= 2 and h >= 2
                assert x + w <= img["width"] and y + h <= img["height"]
                assert ann["area"] > 0 and ann["iscrowd"] == 0
                assert 1 <= ann["category_id"] <= 6


def test_train_and_val_differ(small):
    train, val = _read_images(small, "train"), _read_images(small, "val")
    assert not any(np.array_equal(t, v) for t in train for v in val)


def test_idempotent_skip(tmp_path):
    out = make_synthetic_coco(str(tmp_path), num_train=3, num_val=2, image_size=64)
    assert out["generated"] == ["train", "val"]
    paths = [out["train_json"], out["val_json"], os.path.join(out["train_dir"], "000000.png")]
    for p in paths:  # backdate, so a rewrite would be visible even on coarse clocks
        os.utime(p, (1_000_000, 1_000_000))
    again = make_synthetic_coco(str(tmp_path), num_train=3, num_val=2, image_size=64)
    assert again["generated"] == []
    assert all(os.path.getmtime(p) == 1_000_000 for p in paths)
    # Different parameters or overwrite=True regenerate.
    assert make_synthetic_coco(str(tmp_path), num_train=4, num_val=2, image_size=64)[
        "generated"
    ] == ["train"]
    forced = make_synthetic_coco(
        str(tmp_path), num_train=4, num_val=2, image_size=64, overwrite=True
    )
    assert forced["generated"] == ["train", "val"]
    assert os.path.getmtime(out["val_json"]) != 1_000_000


def test_boxes_are_tight_on_visible_pixels():
    checked = 0
    for idx in range(10):
        image, objects, owner = render_sample(np.random.default_rng([0, 0, idx]), 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        for obj in objects:
            vis = owner == obj["owner_index"]
            x, y, w, h = (int(v) for v in obj["bbox"])
            assert vis[y : y + h, x : x + w].sum() == vis.sum() == obj["area"]
            assert vis[y, x : x + w].any() and vis[y + h - 1, x : x + w].any()  # top, bottom rows
            assert vis[y : y + h, x].any() and vis[y : y + h, x + w - 1].any()  # left, right cols
            checked += 1
    assert checked > 0


def _samples(n, size=64, **look):
    return [render_sample(np.random.default_rng([0, 0, i]), size, **look) for i in range(n)]


def test_max_objects_bounds_every_image():
    counts = [len(objects) for _, objects, _ in _samples(40, max_objects=2)]
    assert max(counts) <= 2 and 2 in counts
    assert max(len(objects) for _, objects, _ in _samples(40)) > 2  # the default allows more


def test_min_object_size_moves_the_size_distribution():
    def sides(**look):
        return np.array(
            [np.sqrt(o["area"]) for _, objects, _ in _samples(40, **look) for o in objects]
        )

    small, large = sides(), sides(min_object_size=20)
    # log-uniform sizes from 8 (default) or 20 px to 60% of 64 px: medians ~17 px and ~28 px
    # (visible-pixel areas are a bit smaller than size**2)
    assert np.median(large) > np.median(small) + 5
    assert np.quantile(large, 0.1) > np.quantile(small, 0.1)


def _plane_residual_std(image, mask):
    """Std of the pixels under ``mask`` around the best plane a + b x + c y, per channel."""
    ys, xs = np.nonzero(mask)
    basis = np.stack([np.ones_like(xs), xs, ys], axis=1).astype(np.float64)
    values = image[mask].astype(np.float64)  # (N, 3)
    coef, *_ = np.linalg.lstsq(basis, values, rcond=None)
    return float((values - basis @ coef).std(axis=0).max())


def test_clutter_off_leaves_a_plain_gradient_background():
    plain = [_plane_residual_std(im, own < 0) for im, _, own in _samples(12, clutter=False)]
    cluttered = [_plane_residual_std(im, own < 0) for im, _, own in _samples(12)]
    # off: a linear gradient plus the final pixel noise (std <= 12), clipped to [0, 255]
    assert max(plain) <= 13.0
    assert np.median(cluttered) > 2 * max(plain)


def test_look_is_part_of_the_recorded_parameters(tmp_path):
    kwargs = dict(num_train=3, num_val=2, image_size=64)
    out = make_synthetic_coco(str(tmp_path), **kwargs)
    assert make_synthetic_coco(str(tmp_path), **kwargs)["generated"] == []
    easy = make_synthetic_coco(str(tmp_path), max_objects=2, clutter=False, **kwargs)
    assert easy["generated"] == ["train", "val"]
    with open(out["train_json"]) as f:
        info = json.load(f)["info"]
    assert (info["max_objects"], info["clutter"], info["min_object_size"]) == (2, False, 8.0)
    for bad in (dict(min_object_size=1), dict(min_object_size=40), dict(max_objects=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_synthetic_coco(str(tmp_path / "bad"), **kwargs, **bad)


def test_config_keys_reach_the_generator(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from tbd.config import add_tbd_config
    from tbd.datasets import synthetic_kwargs

    cfg = get_cfg()
    add_tbd_config(cfg)
    assert synthetic_kwargs(cfg) == dict(
        num_train=2000,
        num_val=300,
        image_size=128,
        seed=0,
        min_object_size=8,
        max_objects=8,
        clutter=True,
    )
    syn = cfg.DATASETS.SYNTHETIC
    syn.NUM_TRAIN, syn.NUM_VAL, syn.IMAGE_SIZE, syn.MAX_OBJECTS, syn.CLUTTER = 6, 2, 64, 1, False
    names = ("test_synth_look_train", "test_synth_look_val")
    register_synthetic(str(tmp_path), names=names, **synthetic_kwargs(cfg))
    dicts = DatasetCatalog.get(names[0])
    assert len(dicts) == 6 and all(len(d["annotations"]) <= 1 for d in dicts)
    with open(tmp_path / "annotations" / "train.json") as f:
        assert json.load(f)["info"]["clutter"] is False


def test_register_synthetic(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    names = ("test_synth_reg_train", "test_synth_reg_val")
    kwargs = dict(names=names, num_train=4, num_val=2, image_size=64)
    assert register_synthetic(str(tmp_path), **kwargs) == list(names)
    assert register_synthetic(str(tmp_path), **kwargs) == list(names)  # idempotent
    dicts = DatasetCatalog.get(names[0])
    assert len(dicts) == 4
    anns = [a for d in dicts for a in d["annotations"]]
    assert anns and all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in anns)
    assert all(0 <= a["category_id"] < len(CLASS_NAMES) for a in anns)  # contiguous ids
    assert list(MetadataCatalog.get(names[1]).thing_classes) == list(CLASS_NAMES)


def test_register_coco_datasets(small, tmp_path):
    from detectron2.data import DatasetCatalog

    spec = f"test_user_coco={small['val_json']}:{small['val_dir']}"
    assert register_coco_datasets([spec]) == ["test_user_coco"]
    assert register_coco_datasets([spec]) == ["test_user_coco"]  # already registered: skipped
    assert len(DatasetCatalog.get("test_user_coco")) == SMALL["num_val"]

    for bad in ("no_equals_sign", "name=only_json.json", "=a.json:imgs", "name=:imgs"):
        with pytest.raises(ValueError, match="bad dataset spec") as err:
            register_coco_datasets([bad])
        assert bad in str(err.value)
    missing_json = str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        register_coco_datasets([f"test_missing_json={missing_json}:{small['val_dir']}"])
    missing_dir = str(tmp_path / "no_such_images")
    with pytest.raises(FileNotFoundError, match="no_such_images"):
        register_coco_datasets([f"test_missing_dir={small['val_json']}:{missing_dir}"])
    assert "test_missing_json" not in DatasetCatalog.list()
