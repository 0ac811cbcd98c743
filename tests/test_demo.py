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


@pytest.mark.parametrize("batch", [8, 16, 4])
def test_demo_batch_scales_the_learning_rate(batch):
    """--batch sets every training's batch and scales its config's learning rate linearly."""
    args = run_demo.parse_args(["--batch", str(batch)])
    for name, config_file, opts in run_demo.stages(args):
        cfg = run_demo.load_cfg(config_file, opts)
        base = run_demo.load_cfg(config_file)
        assert cfg.SOLVER.IMS_PER_BATCH == batch
        expected = base.SOLVER.BASE_LR * batch / base.SOLVER.IMS_PER_BATCH
        assert cfg.SOLVER.BASE_LR == pytest.approx(expected, rel=1e-6)
        assert cfg.SOLVER.MAX_ITER == (args.teacher_iters if name == "teacher" else 600)


def test_demo_trains_and_evaluates_all_three_on_its_plain_data():
    """The default demo's three trainings read one dataset: the generator's plain look, under its
    own root (never the benchmarks' data under the benchmarks' root)."""
    cfgs = [run_demo.load_cfg(c, o) for _, c, o in run_demo.stages(run_demo.parse_args([]))]
    syn = [cfg.DATASETS.SYNTHETIC for cfg in cfgs]
    assert all(s == syn[0] for s in syn)
    benchmark = run_demo.load_cfg(run_demo.CONVERGED.configs["baseline"]).DATASETS.SYNTHETIC
    assert syn[0].ROOT != benchmark.ROOT and syn[0].IMAGE_SIZE == benchmark.IMAGE_SIZE
    assert not syn[0].CLUTTER and benchmark.CLUTTER
    description = run_demo.data_description(cfgs[0])
    assert description.startswith("64 px, plain backgrounds, 1 to 4 objects")
