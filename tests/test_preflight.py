"""tbd_preflight: the teacher-path check that train_net.py runs before it imports torch."""

import glob
import os
import subprocess
import sys

import pytest
from conftest import REPO, load_cfg
from detectron2.config import get_cfg

import tbd_preflight
from tbd.config import add_tbd_config
from tbd_preflight import DEFAULTS, check_teacher_paths, read_keys

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
TBD_CONFIG = os.path.join(REPO, "configs/Synthetic/tbd_R18.yaml")
ZOO_CONFIG = "COCO-Detection/retinanet_R_101_FPN_3x.yaml"


def _real(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_defaults_are_the_real_configs():
    default = get_cfg()
    add_tbd_config(default)
    assert {k: _real(default, k) for k in DEFAULTS} == DEFAULTS


OPTS = [
    [],
    ["MODEL.TBD.HD.ENABLED", "False", "MODEL.TBD.TEACHER.WEIGHTS", "/a/b.pth"],
    ["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.TBD.TFD.ENABLED", "False"],
    ["MODEL.TBD.TEACHER.WEIGHTS", "x.pth", "MODEL.TBD.TEACHER.WEIGHTS", "y.pth"],
]


@pytest.mark.parametrize("opts", OPTS, ids=range(len(OPTS)))
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_reads_the_keys_as_detectron2_does(config, opts):
    """Every shipped config (their _BASE_ chains, the COCO ones with python tags), with opts."""
    real = load_cfg(config, opts)
    assert read_keys(config, opts) == {k: _real(real, k) for k in DEFAULTS}


def test_base_lists_and_relative_bases(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("MODEL:\n  TBD:\n    HD:\n      ENABLED: False\n")
    (tmp_path / "b.yaml").write_text("MODEL:\n  META_ARCHITECTURE: TBDRetinaNet\n")
    (tmp_path / "sub" / "c.yaml").write_text(
        "_BASE_: ['../a.yaml', '../b.yaml']\nMODEL:\n  TBD:\n    TEACHER:\n      WEIGHTS: w.pth\n"
    )
    path = str(tmp_path / "sub" / "c.yaml")
    real = load_cfg(path)
    assert read_keys(path, []) == {k: _real(real, k) for k in DEFAULTS}
    assert read_keys(path, [])["MODEL.TBD.HD.ENABLED"] is False


def _argv(*opts, config=TBD_CONFIG, flags=()):
    return ["--config-file", config, *flags, *opts]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.TBD.TEACHER.WEIGHTS", "/nonexistent/teacher.pth", "no such file"),
        ("MODEL.TBD.TEACHER.CONFIG_FILE", "/nonexistent/teacher.yaml", "neither a file"),
        ("MODEL.TBD.TEACHER.CONFIG_FILE", "COCO-Detection/no_such.yaml", "model-zoo"),
    ],
)
def test_refuses_a_missing_teacher_file_naming_it(key, value, message):
    with pytest.raises(FileNotFoundError, match=message) as e:
        weights = ["MODEL.TBD.TEACHER.WEIGHTS", TBD_CONFIG]  # a file (the check reads none)
        check_teacher_paths(_argv(*weights, key, value, flags=["--num-gpus", "1", "--resume"]))
    assert f"{key}={value!r}" in str(e.value)


@pytest.mark.parametrize(
    "argv",
    [
        # not training, or not distilling: no teacher is read
        _argv("MODEL.TBD.TEACHER.WEIGHTS", "/none.pth", flags=["--eval-only"]),
        _argv("MODEL.TBD.TEACHER.WEIGHTS", "/none.pth", "MODEL.TBD.HD.ENABLED", "False")
        + ["MODEL.TBD.TFD.ENABLED", "False"],
        _argv("MODEL.TBD.TEACHER.WEIGHTS", "/none.pth", "MODEL.META_ARCHITECTURE", "RetinaNet"),
        # what only the full check can decide
        _argv("MODEL.TBD.TEACHER.WEIGHTS", "detectron2://COCO-Detection/x/model_final.pkl"),
        _argv("MODEL.TBD.TEACHER.WEIGHTS", "/none.pth", flags=["--some-new-flag"]),
        _argv("MODEL.TBD.TEACHER.WEIGHTS", "/none.pth", config=ZOO_CONFIG),
        _argv("MODEL.TBD.TEACHER.WEIGHTS"),  # odd opts: detectron2 says what is wrong
        # files that exist, and a model-zoo teacher config
        _argv("MODEL.TBD.TEACHER.WEIGHTS", TBD_CONFIG, "MODEL.TBD.TEACHER.CONFIG_FILE", ZOO_CONFIG),
    ],
    ids=["eval-only", "no-hd-no-tfd", "retinanet", "url", "flag", "zoo-config", "odd", "files"],
)
def test_leaves_everything_else_to_the_full_check(argv):
    check_teacher_paths(argv)


def test_model_zoo_is_found_without_importing_detectron2():
    assert tbd_preflight._model_zoo_config(ZOO_CONFIG) is True
    assert tbd_preflight._model_zoo_config("COCO-Detection/no_such.yaml") is False


def test_train_net_refuses_a_missing_teacher_before_importing_torch(tmp_path):
    """The issue's command on a fresh checkout: non-zero exit naming the path, no dataset made,
    and torch never imported (``-X importtime`` lists every module imported)."""
    cmd = [sys.executable, "-X", "importtime", "train_net.py", "--config-file", TBD_CONFIG]
    cmd += ["MODEL.TBD.TEACHER.WEIGHTS", "/nonexistent.pth"]
    cmd += ["DATASETS.SYNTHETIC.ROOT", str(tmp_path / "data"), "OUTPUT_DIR", str(tmp_path / "o")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "MODEL.TBD.TEACHER.WEIGHTS='/nonexistent.pth': no such file" in proc.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert "tbd_preflight" in imported and "yaml" in imported
    assert not {"torch", "detectron2", "tbd"} & set(imported)
    assert not (tmp_path / "data").exists() and not (tmp_path / "o").exists()
