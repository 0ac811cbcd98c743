"""tools/tune_distillation.py never scores on the benchmark's test split."""

import os
import sys

from conftest import REPO, load_cfg

sys.path.insert(0, os.path.join(REPO, "tools"))
import tune_distillation as tune  # noqa: E402


def test_every_candidate_trains_on_train_and_scores_on_the_heldout_split_only():
    args = tune.parse_args([])
    planned = tune.plan(args)
    assert [name for name, _, _ in planned] == list(tune.CANDIDATES)
    assert "baseline" in tune.CANDIDATES
    for name, config, opts in planned:
        cfg = load_cfg(config, opts)
        assert cfg.DATASETS.TRAIN == ("tbd_synthetic_train",), name
        assert cfg.DATASETS.TEST == (tune.HELDOUT_NAME,), name
        assert "tbd_synthetic_val" not in " ".join(opts)
        assert cfg.DATASETS.COCO_SPECS == [
            f"{tune.HELDOUT_NAME}={tune.HELDOUT_ROOT}/annotations/val.json:{tune.HELDOUT_ROOT}/val"
        ]
        assert cfg.OUTPUT_DIR == os.path.join(args.output, name)
        if cfg.MODEL.META_ARCHITECTURE == "TBDRetinaNet":
            assert cfg.MODEL.TBD.TEACHER.WEIGHTS == args.teacher_weights


def test_heldout_split_is_generated_with_another_seed_than_the_benchmark(monkeypatch):
    import tbd.synthetic

    calls = []
    monkeypatch.setattr(tbd.synthetic, "make_synthetic_coco", lambda root, **kw: calls.append(kw))
    tune.make_heldout()
    benchmark_seed = load_cfg("configs/Synthetic/student_R18.yaml", []).DATASETS.SYNTHETIC.SEED
    assert len(calls) == 1 and calls[0]["seed"] != benchmark_seed
    assert calls[0]["num_val"] == 300
