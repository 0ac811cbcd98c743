"""End to end: DefaultTrainer trains a tiny TBD student on tiny synthetic data and evaluates it."""

import copy
import json
import os
import sys

import pytest
import torch
from conftest import REPO, student_cfg
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from tbd.datasets import register_synthetic

sys.path.insert(0, REPO)
import train_net  # noqa: E402

NAMES = ("tbd_e2e_train", "tbd_e2e_val")


def _losses(model, batch):
    model = copy.deepcopy(model).train()
    if hasattr(model, "loss_normalizer"):
        del model.loss_normalizer  # RetinaNet's EMA of the foreground count
    with torch.no_grad(), EventStorage(1000):
        return {k: v.item() for k, v in model(copy.deepcopy(batch)).items()}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_synthetic")
    register_synthetic(str(root), names=NAMES, num_train=16, num_val=6, image_size=64, seed=3)
    return NAMES


@pytest.mark.slow
def test_tbd_trains_loss_decreases_and_evaluates(teacher_weights, tiny_dataset, tmp_path):
    cfg = student_cfg(
        teacher_weights,
        [
            "DATASETS.TRAIN",
            (NAMES[0],),
            "DATASETS.TEST",
            (NAMES[1],),
            "SOLVER.MAX_ITER",
            "40",
            "SOLVER.BASE_LR",
            "0.01",
            "OUTPUT_DIR",
            str(tmp_path),
        ],
    )
    cfg.freeze()
    seed_all_rng(0)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    initial = copy.deepcopy(trainer.model)
    batch = next(iter(trainer.build_train_loader(cfg)))
    trainer.train()

    assert len(trainer.storage.history("total_loss").values()) == 40
    # The training batch's losses, every term, before and after (same loss normalizer state).
    before, after = _losses(initial, batch), _losses(trainer.model, batch)
    assert sum(after.values()) < 0.8 * sum(before.values()), (before, after)
    assert after["loss_tfd"] < before["loss_tfd"]
    for name in ("loss_hd_cls", "loss_hd_reg", "loss_tfd"):
        assert len(trainer.storage.history(name).values()) == 40
    # the harmony diagnostics: on the last iteration of every DIAGNOSTICS_PERIOD (20)
    assert [i for _, i in trainer.storage.history("tbd/harmony_teacher").values()] == [19, 39]

    # the evaluation at the end of training ran COCOEvaluator on the val split
    results = trainer.test(cfg, trainer.model)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
    assert os.path.isfile(os.path.join(tmp_path, "model_final.pth"))
    metrics = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.json"))]
    assert any("loss_tfd" in m for m in metrics)
