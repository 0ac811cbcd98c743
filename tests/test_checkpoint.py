import os

import pytest
import torch

from tbd.checkpoint import AtomicCheckpointer, atomic_write


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
