"""The README's demo pipeline at toy size: three trainings, evaluation, report and picture."""

import os
import sys

import pytest
from conftest import REPO
from PIL import Image

sys.path.insert(0, os.path.join(REPO, "tools"))
import run_demo  # noqa: E402


@pytest.mark.slow
def test_demo_pipeline_at_toy_size(tmp_path):
    out = str(tmp_path / "demo")
    run_demo.main(["--toy", "--output", out])
    report = open(os.path.join(out, "report.md")).read()
    for name in run_demo.NAMES.values():
        assert f"| {name} |" in report
    assert "| harmonious | Spearman | mean HS |" in report
    assert "TBD - baseline:" in report and "python train_net.py" in report
    with Image.open(os.path.join(out, "detections.png")) as picture:
        assert picture.size[0] > 0 and picture.size[1] > 0
    teacher = os.path.join(out, "teacher", "model_final.pth")
    mtime = os.path.getmtime(teacher)
    # a second run reuses the trained teacher
    run_demo.main(["--toy", "--output", out])
    assert os.path.getmtime(teacher) == mtime
