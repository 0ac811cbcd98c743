import os
import pickle

import numpy as np
import pytest
import torch
from conftest import STUDENT_CONFIG
from detectron2.modeling import build_model

from tbd.checkpoint import (
    AtomicCheckpointer,
    SafeCheckpointer,
    UnsafeCheckpointError,
    atomic_write,
    load_eval_model,
)
from tbd.config import load_tbd_config


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = str(tmp_path / "ckpt.pth")
    atomic_write(path, lambda f: f.write(b"old"))

    def crash(f):
        f.write(b"partial")
        raise KeyboardInterrupt  # a kill while writing

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert open(path, "rb").read() == b"old"
    assert os.listdir(tmp_path) == ["ckpt.pth"]  # no temporary file left behind


def test_atomic_checkpointer_saves_and_tags(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000004", iteration=4)
    assert open(tmp_path / "last_checkpoint").read() == "model_0000004.pth"
    other = torch.nn.Linear(3, 2)
    extra = AtomicCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 4
    assert torch.equal(other.weight, model.weight)


# --------------------------------------------------------------------------------------------
# Checkpoints from strangers: loading never runs code from the file
# --------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a crafted file runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_state(marker, weight):
    return {"model": {"weight": weight}, "__author__": "x", "payload": _Payload(marker)}


def test_pkl_with_code_is_refused_before_it_runs(tmp_path):
    marker = str(tmp_path / "marker")
    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump(_crafted_state(marker, np.zeros(2, np.float32)), f)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pkl: refusing to load io\.open"):
        SafeCheckpointer(torch.nn.Linear(2, 1)).load(path)
    assert not os.path.exists(marker)


def test_pth_with_code_is_refused_whatever_torch_defaults_to(tmp_path, monkeypatch):
    marker = str(tmp_path / "marker")
    path = str(tmp_path / "evil.pth")
    torch.save(_crafted_state(marker, torch.zeros(2)), path)
    # torch < 2.6 unpickles anything by default; this variable restores that default on newer torch
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        SafeCheckpointer(torch.nn.Linear(2, 1)).load(path)
    assert not os.path.exists(marker)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointer(torch.nn.Linear(2, 1)).load(path)  # --resume reads through it too
    assert not os.path.exists(marker)


def test_model_zoo_pkl_loads(tmp_path):
    """detectron2's model-zoo format: numpy arrays under "model", in detectron2's key names."""
    source = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    state = {k: v.numpy() for k, v in source.state_dict().items()}
    zoo = {"model": state, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    path = str(tmp_path / "model_final_abc.pkl")
    with open(path, "wb") as f:
        pickle.dump(zoo, f)
    target = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    SafeCheckpointer(target).load(path)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_training_checkpoint_resumes_with_weights_only(tmp_path, monkeypatch):
    """What DefaultTrainer saves (model, optimizer, scheduler, iteration) loads under
    weights_only=True: the model and every checkpointable come back."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # our explicit flag must win
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    AtomicCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler).save(
        "model_0000001", iteration=1
    )
    other = torch.nn.Linear(3, 2)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    other_sched = torch.optim.lr_scheduler.StepLR(other_opt, 2)
    extra = AtomicCheckpointer(
        other, str(tmp_path), optimizer=other_opt, scheduler=other_sched
    ).resume_or_load("", resume=True)
    assert extra["iteration"] == 1 and other_sched.last_epoch == 1
    assert torch.equal(other.weight, model.weight)
    assert torch.equal(
        other_opt.state_dict()["state"][0]["momentum_buffer"],
        optimizer.state_dict()["state"][0]["momentum_buffer"],
    )


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_eval_model_loads_through_the_safe_checkpointer(tmp_path, monkeypatch, suffix):
    """``load_eval_model`` (the export, the harmony analysis, the demo): a crafted MODEL.WEIGHTS is
    refused and its code never runs; the model's own checkpoint loads, in eval mode."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    cfg = load_tbd_config(STUDENT_CONFIG)
    model = build_model(cfg)
    marker, path = str(tmp_path / "marker"), str(tmp_path / f"evil{suffix}")
    if suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(_crafted_state(marker, np.zeros(2, np.float32)), f)
    else:
        torch.save(_crafted_state(marker, torch.zeros(2)), path)
    cfg.MODEL.WEIGHTS = path
    with pytest.raises(pickle.UnpicklingError):
        load_eval_model(cfg)
    assert not os.path.exists(marker)
    SafeCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
    loaded = load_eval_model(cfg)
    assert not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
