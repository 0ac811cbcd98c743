import os

from detectron2 import model_zoo
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg


def add_tbd_config(cfg):
    """
    Add the config keys of Task-Balanced Distillation (``MODEL.TBD``) to a detectron2 config.
    Every distillation constant of docs/method.md is a key here.
    """
    _C = cfg
    _C.MODEL.TBD = CN()

    # The teacher: a RetinaNet described by its own config file (a path, or a detectron2 model-zoo
    # name such as "COCO-Detection/retinanet_R_101_FPN_3x.yaml") and loaded from WEIGHTS (.pth
    # written by detectron2, or a model-zoo .pkl). OPTS are overrides applied to the teacher
    # config, like command-line opts: ["MODEL.RETINANET.NUM_CLASSES", "6"].
    _C.MODEL.TBD.TEACHER = CN()
    _C.MODEL.TBD.TEACHER.CONFIG_FILE = ""
    _C.MODEL.TBD.TEACHER.WEIGHTS = ""
    _C.MODEL.TBD.TEACHER.OPTS = []

    # Harmony Distillation (HD).
    _C.MODEL.TBD.HD = CN()
    _C.MODEL.TBD.HD.ENABLED = True
    # Weight of the quality-focal classification distillation loss (loss_hd_cls).
    _C.MODEL.TBD.HD.CLS_WEIGHT = 1.0
    # Weight of the harmony-weighted regression distillation loss (loss_hd_reg).
    _C.MODEL.TBD.HD.REG_WEIGHT = 1.0
    # Focusing exponent beta of the quality focal loss |sigmoid(z_S) - t|^beta.
    _C.MODEL.TBD.HD.BETA = 2.0
    # Classification target on foreground anchors at the ground-truth class:
    # "harmony": sqrt(s * u) (harmonized score);
    # "teacher": the teacher's score p_T (plain logit KD).
    _C.MODEL.TBD.HD.TARGET = "harmony"
    # Per-anchor weight of the regression distillation on foreground anchors:
    # "harmony": the teacher's Harmony Score HS(a); "uniform": 1.
    _C.MODEL.TBD.HD.REG_WEIGHTING = "harmony"
    # Compute the classification distillation loss (dense over anchors x classes, the largest
    # tensor work of a step) with one fused kernel made by torch.compile instead of ~10 eager
    # passes. Same values; the first step compiles it (tens of seconds; needs a C++ compiler on the
    # CPU, triton on CUDA). See docs/cost.md.
    _C.MODEL.TBD.HD.COMPILE = False

    # Task-decoupled Feature Distillation (TFD).
    _C.MODEL.TBD.TFD = CN()
    _C.MODEL.TBD.TFD.ENABLED = True
    # Weight of the feature imitation loss (loss_tfd).
    _C.MODEL.TBD.TFD.WEIGHT = 1.0
    # Imitation regions: "task": the teacher's classification and regression masks;
    # "uniform": every location (FitNet-style feature mimic).
    _C.MODEL.TBD.TFD.MASK = "task"
    # Balance between the two tasks' regions: "dynamic": w_cls = 2 L_cls / (L_cls + L_reg) from the
    # student's own detached RetinaNet losses;
    # "fixed": w_cls = 2 CLS_RATIO, w_reg = 2 (1 - CLS_RATIO).
    _C.MODEL.TBD.TFD.BALANCE = "dynamic"
    _C.MODEL.TBD.TFD.CLS_RATIO = 0.5
    # Student-to-teacher feature adapter phi: "auto": a 1x1 conv only when the FPN widths differ,
    # identity otherwise; "conv": always a 1x1 conv.
    _C.MODEL.TBD.TFD.ADAPTER = "auto"

    # A prediction is harmonious when |s - u| <= HARMONY_DELTA (a logged diagnostic).
    _C.MODEL.TBD.HARMONY_DELTA = 0.2
    # The harmonious proportions of teacher and student (tbd/harmony_*) are computed every
    # DIAGNOSTICS_PERIOD iterations only: DefaultTrainer's writers print every 20th.
    _C.MODEL.TBD.DIAGNOSTICS_PERIOD = 20
    # All distillation weights ramp linearly from 0 to their value over the first WARMUP_ITERS
    # iterations (0: no warm-up).
    _C.MODEL.TBD.WARMUP_ITERS = 0

    # Datasets this project registers by itself (see tbd/datasets.py::register_datasets).
    # The synthetic dataset is generated under ROOT (if missing) when DATASETS.TRAIN or TEST name
    # "tbd_synthetic_train" / "tbd_synthetic_val".
    _C.DATASETS.SYNTHETIC = CN()
    _C.DATASETS.SYNTHETIC.ROOT = "datasets/tbd_synthetic"
    _C.DATASETS.SYNTHETIC.NUM_TRAIN = 2000
    _C.DATASETS.SYNTHETIC.NUM_VAL = 300
    _C.DATASETS.SYNTHETIC.IMAGE_SIZE = 128
    _C.DATASETS.SYNTHETIC.SEED = 0
    # How hard the images are (tbd/synthetic.py); the defaults are the benchmarks' dataset. Object
    # sizes are log-uniform from MIN_OBJECT_SIZE px to 60% of the side, 1 to MAX_OBJECTS per image;
    # CLUTTER False: plain gradient backgrounds and no distractors.
    _C.DATASETS.SYNTHETIC.MIN_OBJECT_SIZE = 8
    _C.DATASETS.SYNTHETIC.MAX_OBJECTS = 8
    _C.DATASETS.SYNTHETIC.CLUTTER = True
    # Your own COCO-format datasets, no code edits: ["name=path/to/instances.json:path/to/images"].
    _C.DATASETS.COCO_SPECS = []


def distills(cfg) -> bool:
    """Whether ``cfg`` trains with a teacher: a ``TBDRetinaNet`` with HD or TFD enabled. A
    ``TBDRetinaNet`` with both disabled is the plain student (no teacher is built or read)."""
    tbd = cfg.MODEL.TBD
    return cfg.MODEL.META_ARCHITECTURE == "TBDRetinaNet" and bool(tbd.HD.ENABLED or tbd.TFD.ENABLED)


def resolve_config_file(name: str, key: str = "config file") -> str:
    """A config path, or a detectron2 model-zoo config name (its file ships with detectron2)."""
    if os.path.isfile(name):
        return name
    try:
        return model_zoo.get_config_file(name)
    except RuntimeError:
        raise FileNotFoundError(
            f"{key}={name!r} is neither a file nor a detectron2 model-zoo config name"
        ) from None


def load_tbd_config(config_file: str, opts=()):
    """
    detectron2's default config with the TBD keys, then ``config_file`` (a path or a model-zoo
    name) merged, then ``KEY VALUE`` ``opts``. Not frozen.
    """
    cfg = get_cfg()
    add_tbd_config(cfg)
    cfg.merge_from_file(resolve_config_file(config_file))
    cfg.merge_from_list(list(opts))
    return cfg
