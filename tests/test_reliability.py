"""
Reliability (docs/reliability.md): bad input fails with a message naming the problem before the
first training step; a non-finite loss stops training naming the term; a killed run resumes from
its last checkpoint with its teacher and its learning-rate schedule.

Training goes through ``train_net`` (``Trainer(cfg).train()`` or ``train_net.main(args)``), and the
``steps`` fixture records every training step that starts.
"""

import itertools
import json
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    STUDENT_CONFIG,
    TEACHER_CONFIG,
    load_cfg,
    student_cfg,
    tiny_synthetic_opts,
)
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from PIL import Image

from tbd.datasets import register_coco_datasets, register_synthetic
from tbd.teacher import load_teacher_weights

sys.path.insert(0, REPO)
import train_net  # noqa: E402

NAMES = ("tbd_reliability_train", "tbd_reliability_val")
_unique = itertools.count()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_synthetic")
    register_synthetic(str(root), names=NAMES, num_train=8, num_val=2, image_size=64, seed=5)
    return NAMES


@pytest.fixture(scope="module")
def teacher_state(teacher_weights):
    return torch.load(teacher_weights, map_location="cpu", weights_only=False)


@pytest.fixture
def steps(monkeypatch):
    """The iterations at which train_net.Trainer started a training step."""
    started = []
    run_step = train_net.Trainer.run_step

    def recording_run_step(self):
        started.append(self.iter)
        return run_step(self)

    monkeypatch.setattr(train_net.Trainer, "run_step", recording_run_step)
    return started


@pytest.fixture
def tbd_log(caplog):
    """caplog for the ``tbd`` loggers, whether or not train_net gave them handlers of their own."""
    logger = logging.getLogger("tbd")
    saved = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.level, logger.propagate = saved


def _metrics_iterations(out_dir):
    path = os.path.join(out_dir, "metrics.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [m["iteration"] for m in map(json.loads, f) if "iteration" in m]


def _cfg(teacher_weights, out_dir, opts=()):
    os.makedirs(out_dir, exist_ok=True)
    return student_cfg(
        teacher_weights,
        [
            "DATASETS.TRAIN",
            (NAMES[0],),
            "DATASETS.TEST",
            (),
            "SOLVER.MAX_ITER",
            2,
            "OUTPUT_DIR",
            str(out_dir),
            *opts,
        ],
    )


def _train(cfg):
    cfg.freeze()
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def _main(out_dir, opts):
    """``train_net.py --config-file <TBD quick schedule> OPTS`` in this process."""
    args = default_argument_parser().parse_args(
        ["--config-file", STUDENT_CONFIG, "OUTPUT_DIR", str(out_dir), *map(str, opts)]
    )
    return train_net.main(args)


def _save(state, path, edit):
    state = dict(state, model=dict(state["model"]))
    edit(state["model"])
    torch.save(state, path)
    return str(path)


def _drop(prefix):
    def edit(model):
        for key in [k for k in model if k.startswith(prefix)]:
            del model[key]

    return edit


# --------------------------------------------------------------------------------------------
# The teacher
# --------------------------------------------------------------------------------------------
def _write_garbage(path):
    path.write_bytes(b"\x00this is not a checkpoint\xff" * 10)
    return str(path)


def _write_list(path):
    torch.save([1, 2, 3], str(path))
    return str(path)


def _write_unrelated(path):
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, str(path))
    return str(path)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda p, s: str(p / "missing.pth"),
            FileNotFoundError,
            r"WEIGHTS=.*missing\.pth.*no such",
        ),
        (lambda p, s: "", ValueError, r"TEACHER\.WEIGHTS is empty"),
        (lambda p, s: _write_garbage(p / "garbage.pth"), RuntimeError, "not a readable checkpoint"),
        (lambda p, s: _write_list(p / "list.pth"), RuntimeError, "not a readable checkpoint"),
        (
            lambda p, s: _write_unrelated(p / "linear.pth"),
            RuntimeError,
            r"does not match the teacher config: missing \['backbone",
        ),
        (
            lambda p, s: _save(s, p / "no_head.pth", _drop("head.")),
            RuntimeError,
            r"does not match the teacher config: missing \['head\.",
        ),
        (
            lambda p, s: _save(s, p / "no_fpn.pth", _drop("backbone.fpn_")),
            RuntimeError,
            r"missing \['backbone\.fpn_",
        ),
        (
            lambda p, s: _save(
                s,
                p / "shape.pth",
                lambda m: m.update({"head.cls_score.weight": torch.zeros(3, 32, 3, 3)}),
            ),
            RuntimeError,
            r"wrong shapes \['head\.cls_score\.weight'\]",
        ),
    ],
    ids=[
        "missing",
        "empty",
        "garbage",
        "not-a-state-dict",
        "other-model",
        "no-head",
        "no-fpn",
        "shape",
    ],
)
def test_bad_teacher_weights_fail_before_the_first_step(
    make, error, message, teacher_state, tiny_dataset, tmp_path, steps
):
    weights = make(tmp_path, teacher_state)
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        _train(_cfg(weights, out))
    assert steps == [] and _metrics_iterations(out) == []


def test_unused_teacher_keys_only_warn(teacher_state, tiny_dataset, tmp_path, steps, tbd_log):
    extra = {"distiller.extra.weight": torch.zeros(2)}
    weights = _save(teacher_state, tmp_path / "extra.pth", lambda m: m.update(extra))
    _train(_cfg(weights, tmp_path / "out", ["SOLVER.MAX_ITER", 1]))
    assert steps == [0]
    assert "not used by the teacher: ['distiller.extra.weight']" in tbd_log.text
    assert f"Loaded the teacher from {weights}" in tbd_log.text


@pytest.mark.parametrize(
    "teacher_config, error, message",
    [
        ("missing.yaml", FileNotFoundError, r"CONFIG_FILE=.*missing\.yaml.*neither a file nor"),
        ("", ValueError, r"TEACHER\.CONFIG_FILE is empty"),
    ],
    ids=["missing", "empty"],
)
def test_bad_teacher_config_fails_before_the_first_step(
    teacher_weights, tiny_dataset, tmp_path, steps, teacher_config, error, message
):
    if teacher_config:
        teacher_config = str(tmp_path / teacher_config)
    cfg = _cfg(teacher_weights, tmp_path / "out", ["MODEL.TBD.TEACHER.CONFIG_FILE", teacher_config])
    with pytest.raises(error, match=message):
        _train(cfg)
    assert steps == []


@pytest.mark.parametrize(
    "teacher_opts, message",
    [
        (["MODEL.RETINANET.NUM_CLASSES", 5], r"NUM_CLASSES: student has 6, teacher .* has 5"),
        (
            ["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[1.0]]],
            r"ASPECT_RATIOS: student has \[\[0\.5, 1\.0, 2\.0\]\], teacher .* has \[\[1\.0\]\]",
        ),
        (
            ["MODEL.ANCHOR_GENERATOR.SIZES", [[16], [32], [64], [128], [256]]],
            r"SIZES: student has \[\[8, 10\.08, 12\.7\].*teacher .* has \[\[16\], \[32\]",
        ),
    ],
    ids=["num-classes", "aspect-ratios", "sizes"],
)
def test_teacher_student_mismatch_fails_in_train_net(
    teacher_weights, tiny_dataset, tmp_path, steps, teacher_opts, message
):
    opts = [
        "MODEL.TBD.TEACHER.CONFIG_FILE",
        TEACHER_CONFIG,
        "MODEL.TBD.TEACHER.WEIGHTS",
        teacher_weights,
        "MODEL.TBD.TEACHER.OPTS",
        repr([str(v) for v in teacher_opts]),
        "DATASETS.TRAIN",
        f"('{NAMES[0]}',)",
        "DATASETS.TEST",
        "()",
    ]
    with pytest.raises(ValueError, match=message):
        _main(tmp_path / "out", opts)
    assert steps == [] and _metrics_iterations(tmp_path / "out") == []


@pytest.mark.parametrize(
    "key, value",
    [
        ("MODEL.TBD.TEACHER.WEIGHTS", "/nonexistent/teacher.pth"),
        ("MODEL.TBD.TEACHER.CONFIG_FILE", "/nonexistent/teacher.yaml"),
    ],
    ids=["weights", "config"],
)
def test_wrong_teacher_path_fails_before_any_dataset_is_made(tmp_path, monkeypatch, key, value):
    """``train_net.main`` with a teacher file that does not exist fails naming it before any
    dataset is generated, registered or loaded (a fresh checkout has none: generating the full
    synthetic one takes more than a minute). This is the full check behind the one train_net.py
    runs before importing torch (tests/test_preflight.py), for the commands that one leaves."""
    monkeypatch.setattr(train_net, "prepare_datasets", lambda cfg: 1 / 0)
    args = train_net.argument_parser().parse_args(
        ["--config-file", os.path.join(REPO, "configs/Synthetic/tbd_R18.yaml"), key, value]
        + ["OUTPUT_DIR", str(tmp_path / "out")]
    )
    with pytest.raises(FileNotFoundError, match=value):
        train_net.main(args)


def test_eval_only_does_not_check_the_teacher_files(tmp_path, monkeypatch):
    """The early check is for training: --eval-only goes on to the datasets (stopped there)."""
    reached = []
    monkeypatch.setattr(train_net, "prepare_datasets", lambda cfg: reached.append(cfg) or 1 / 0)
    args = train_net.argument_parser().parse_args(
        ["--config-file", STUDENT_CONFIG, "--eval-only", "MODEL.TBD.TEACHER.WEIGHTS", "/none.pth"]
        + ["OUTPUT_DIR", str(tmp_path)]
    )
    with pytest.raises(ZeroDivisionError):
        train_net.main(args)
    assert len(reached) == 1


def _zoo_pkl(state, path, extra=None):
    """``state`` in detectron2's model-zoo .pkl format (numpy arrays, detectron2 key names)."""
    data = {
        "model": {k: v.numpy() for k, v in state["model"].items()},
        "__author__": "Detectron2 Model Zoo",
        "matching_heuristics": True,
        **(extra or {}),
    }
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return str(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_teacher_from_a_model_zoo_pkl(teacher_state, tmp_path, tbd_log):
    weights = _zoo_pkl(teacher_state, tmp_path / "model_final_abc.pkl")
    model = build_model(load_cfg(TEACHER_CONFIG))
    load_teacher_weights(model, weights)
    for name, value in model.state_dict().items():
        assert torch.equal(value, teacher_state["model"][name]), name
    assert f"Loaded the teacher from {weights}: all" in tbd_log.text


def test_teacher_pkl_that_runs_code_is_refused(teacher_state, tmp_path):
    marker = tmp_path / "marker"
    weights = _zoo_pkl(teacher_state, tmp_path / "evil.pkl", {"x": _Payload(str(marker))})
    with pytest.raises(RuntimeError, match=r"evil\.pkl.* is not a readable checkpoint: .*io\.open"):
        load_teacher_weights(build_model(load_cfg(TEACHER_CONFIG)), weights)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# COCO datasets (DATASETS.COCO_SPECS)
# --------------------------------------------------------------------------------------------
def _write_coco(root, boxes, *, num_images=3, categories=(1, 2), size=64, raw=None):
    """A COCO dataset of ``num_images`` noise images; ``boxes``: (image_id, bbox, category_id)."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(1, num_images + 1):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": size, "width": size})
    annotations = [
        {"id": k, "image_id": i, "bbox": b, "category_id": c, "area": 1.0, "iscrowd": 0}
        for k, (i, b, c) in enumerate(boxes, start=1)
    ]
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in categories],
    }
    json_file = root / "instances.json"
    json_file.write_text(raw if raw is not None else json.dumps(data))
    return str(json_file), str(image_dir)


def _register(json_file, image_dir, **kwargs):
    name = f"tbd_reliability_coco_{next(_unique)}"
    register_coco_datasets([f"{name}={json_file}:{image_dir}"], **kwargs)
    return name


def test_coco_boxes_dropped_or_clipped_with_one_warning(tmp_path, tbd_log):
    boxes = [
        (1, [10, 10, 20, 20], 1),  # 1 valid
        (1, [5, 5, 0, 10], 2),  # 2 zero width: dropped
        (2, [5, 5, 10, -3], 1),  # 3 negative height: dropped
        (2, [50, 40, 30, 10], 2),  # 4 16 px outside on the right: clipped to width 14
        (3, [-0.5, 0, 64.8, 10], 1),  # 5 crosses by < 1 px: clipped silently
        (3, [70, 10, 5, 5], 2),  # 6 entirely outside: dropped
    ]
    json_file, image_dir = _write_coco(tmp_path, boxes)
    name = _register(json_file, image_dir)
    dicts = DatasetCatalog.get(name)
    by_image = {d["image_id"]: [a["bbox"] for a in d["annotations"]] for d in dicts}
    assert by_image == {
        1: [[10, 10, 20, 20]],
        2: [[50.0, 40.0, 14.0, 10.0]],
        3: [[0.0, 0.0, 64.0, 10.0]],
    }
    assert all("id" not in a for d in dicts for a in d["annotations"])
    warnings = [r.getMessage() for r in tbd_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    (warning,) = warnings
    assert name in warning and json_file in warning
    assert "dropped 2 boxes with zero or negative width or height" in warning
    assert "annotation id 2 of image id 1" in warning and "annotation id 3 of image id 2" in warning
    assert (
        "dropped 1 boxes entirely outside their image (e.g. annotation id 6 of image id 3"
        in warning
    )
    assert "clipped 1 boxes that extend more than 1 px outside" in warning
    assert "annotation id 4 of image id 2" in warning and "annotation id 5 " not in warning


@pytest.mark.parametrize(
    "boxes, raw, error, message",
    [
        (
            [(1, [1, 1, 9, 9], 1), (2, [2, 2, 8, 8], 7)],
            None,
            ValueError,
            r"annotation id 2 of image id 2 has category_id 7, which is not an id in "
            r"'categories' \(\[1, 2\]\); 1 annotation\(s\)",
        ),
        ([(3, [1, 2, 3], 1)], None, ValueError, r"annotation id 1 of image id 3: 'bbox' must be 4"),
        (
            [(2, [1, 2, float("nan"), 4], 1)],
            None,
            ValueError,
            r"annotation id 1 of image id 2: 'bbox' has a non-finite",
        ),
        ([], "{not json", ValueError, "is not a readable JSON file"),
        ([], '{"images": [], "annotations": [], "categories": []}', ValueError, "lists no images"),
    ],
    ids=["unknown-category", "short-bbox", "nan-bbox", "not-json", "no-images"],
)
def test_coco_errors_name_file_image_and_annotation(tmp_path, boxes, raw, error, message):
    json_file, image_dir = _write_coco(tmp_path, boxes, raw=raw)
    name = _register(json_file, image_dir)
    with pytest.raises(error, match=message) as e:
        DatasetCatalog.get(name)
    assert f"dataset {name!r}" in str(e.value) and json_file in str(e.value)


def test_coco_missing_image_files_are_named(tmp_path):
    json_file, image_dir = _write_coco(tmp_path, [(1, [1, 1, 9, 9], 1)], num_images=4)
    os.remove(os.path.join(image_dir, "2.png"))
    os.remove(os.path.join(image_dir, "4.png"))
    name = _register(json_file, image_dir)
    with pytest.raises(FileNotFoundError, match=r"2 of 4 image files do not exist") as e:
        DatasetCatalog.get(name)
    assert f"image id 2: {os.path.join(image_dir, '2.png')}" in str(e.value)
    assert "image id 4" in str(e.value) and json_file in str(e.value)


@pytest.mark.parametrize(
    "boxes, num_images, delete, error, message",
    [
        ([(1, [1, 1, 9, 9], 5)], 2, None, ValueError, r"has category_id 5, which is not an id"),
        ([], 0, None, ValueError, "lists no images"),
        ([(1, [1, 1, 9, 9], 1)], 2, "2.png", FileNotFoundError, r"image id 2: .*2\.png"),
        (
            [(1, [1, 1, 0, 9], 1)],
            2,
            None,
            ValueError,
            r"none of its 2 images has a non-crowd annotation \(1 were dropped.*"
            r"DATALOADER\.FILTER_EMPTY_ANNOTATIONS",
        ),
    ],
    ids=["unknown-category", "no-images", "missing-image", "no-annotations"],
)
def test_bad_coco_dataset_fails_in_train_net_before_the_first_step(
    teacher_weights, tmp_path, steps, boxes, num_images, delete, error, message
):
    json_file, image_dir = _write_coco(tmp_path / "data", boxes, num_images=num_images)
    if delete:
        os.remove(os.path.join(image_dir, delete))
    name = f"tbd_reliability_main_{next(_unique)}"
    opts = [
        "MODEL.TBD.TEACHER.CONFIG_FILE",
        TEACHER_CONFIG,
        "MODEL.TBD.TEACHER.WEIGHTS",
        teacher_weights,
        "DATASETS.COCO_SPECS",
        repr([f"{name}={json_file}:{image_dir}"]),
        "DATASETS.TRAIN",
        f"('{name}',)",
        "DATASETS.TEST",
        "()",
    ]
    with pytest.raises(error, match=message) as e:
        _main(tmp_path / "out", opts)
    assert name in str(e.value)
    assert steps == [] and _metrics_iterations(tmp_path / "out") == []


def _two_step_cfg(teacher_weights, tmp_path, boxes, num_images, opts=()):
    json_file, image_dir = _write_coco(
        tmp_path / "data", boxes, num_images=num_images, categories=range(1, 7)
    )
    name = _register(json_file, image_dir)
    return _cfg(teacher_weights, tmp_path / "out", ["DATASETS.TRAIN", (name,), *opts])


def test_images_without_annotations_are_valid(teacher_weights, tmp_path, steps):
    """Images 2 and 4 have no annotation: detectron2's FILTER_EMPTY_ANNOTATIONS leaves them out of
    training, the others train."""
    boxes = [(1, [4, 4, 30, 30], 1), (3, [20, 10, 24, 40], 2), (3, [2, 30, 20, 20], 3)]
    trainer = _train(_two_step_cfg(teacher_weights, tmp_path, boxes, num_images=4))
    assert steps == [0, 1]
    losses = trainer.storage.history("total_loss").values()
    assert len(losses) == 2 and all(math.isfinite(v) for v, _ in losses)


def test_background_only_dataset_trains_without_filtering(teacher_weights, tmp_path, steps):
    cfg = _two_step_cfg(
        teacher_weights,
        tmp_path,
        [],
        num_images=2,
        opts=["DATALOADER.FILTER_EMPTY_ANNOTATIONS", False],
    )
    trainer = _train(cfg)
    assert steps == [0, 1]
    assert all(math.isfinite(v) for v, _ in trainer.storage.history("total_loss").values())


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------
def test_nan_teacher_stops_training_naming_the_term(teacher_state, tiny_dataset, tmp_path, steps):
    weights = _save(
        teacher_state,
        tmp_path / "nan.pth",
        lambda m: m.update(
            {"head.cls_score.bias": torch.full_like(m["head.cls_score.bias"], math.nan)}
        ),
    )
    out = tmp_path / "out"
    cfg = _cfg(weights, out, ["SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 1])
    with pytest.raises(
        FloatingPointError, match=r"loss_hd_cls.* became infinite or NaN at iteration 0"
    ):
        _train(cfg)
    assert steps == [0]
    assert not [f for f in os.listdir(out) if f.endswith(".pth")]  # no NaN model saved


def _expected_lrs(cfg, num):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(num):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_kill_and_resume(teacher_weights, tmp_path):
    """SIGKILL ``train_net.py`` once a checkpoint exists, rerun it with ``--resume``: it continues
    from the checkpoint (student, optimizer, lr schedule, iteration) with the teacher loaded from
    its own weights, and finishes."""
    out = tmp_path / "out"
    max_iter = 30
    opts = [
        "MODEL.TBD.TEACHER.CONFIG_FILE",
        TEACHER_CONFIG,
        "MODEL.TBD.TEACHER.WEIGHTS",
        teacher_weights,
        *tiny_synthetic_opts(str(tmp_path / "data"), num_train=8),
        "DATASETS.TEST",
        "()",
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD",
        "5",
        # a linear warm-up longer than the run: every iteration has its own learning rate
        "SOLVER.WARMUP_ITERS",
        "40",
        "OUTPUT_DIR",
        str(out),
    ]
    cmd = [sys.executable, "train_net.py", "--config-file", STUDENT_CONFIG]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd + opts, cwd=REPO, env=env, stdout=log, stderr=log)
        deadline = time.time() + 300
        while not (out / "last_checkpoint").exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL  # killed, not finished
    checkpoint = (out / "last_checkpoint").read_text()
    assert checkpoint.startswith("model_0") and not (out / "model_final.pth").exists()
    killed_at = int(checkpoint[len("model_") : -len(".pth")])
    metrics_before = len(_metrics_iterations(out))

    second = subprocess.run(
        cmd + ["--resume"] + opts, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-5000:]
    assert f"Loading from {out / checkpoint}" in log
    assert f"Starting training from iteration {killed_at + 1}" in log
    assert f"Loaded the teacher from {teacher_weights}" in log

    # ran to MAX_ITER; the final checkpoint is complete and tagged
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == max_iter - 1
    # the lr scheduler stepped once per iteration over both runs
    assert final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == max_iter
    assert not any(k.startswith("_teacher") or "teacher" in k for k in final["model"])

    # the resumed run logged iterations after the checkpoint only, with the uninterrupted schedule
    with open(out / "metrics.json") as f:
        resumed = [m for m in map(json.loads, f) if "iteration" in m][metrics_before:]
    iterations = [m["iteration"] for m in resumed]
    assert iterations and min(iterations) > killed_at and max(iterations) == max_iter - 1
    cfg = student_cfg(teacher_weights, opts)
    lrs = _expected_lrs(cfg, max_iter)
    for m in resumed:
        assert m["lr"] == pytest.approx(lrs[m["iteration"]], rel=1e-6), m
        # a schedule restarted at the resumed iteration would differ
        assert lrs[m["iteration"]] != pytest.approx(lrs[m["iteration"] - killed_at - 1], rel=1e-3)
    for f in out.glob("*.pth"):  # 90 MB each
        f.unlink()
