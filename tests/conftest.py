import os
import warnings

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import tbd  # noqa: F401  (registers TBDRetinaNet)
from tbd.config import load_tbd_config

warnings.filterwarnings("ignore", category=FutureWarning)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_CONFIG = os.path.join(REPO, "configs/quick_schedules/teacher_instant_test.yaml")
STUDENT_CONFIG = os.path.join(REPO, "configs/quick_schedules/tbd_instant_test.yaml")


load_cfg = load_tbd_config


def save_random_teacher(path, opts=(), seed=0):
    """Write the weights of a randomly initialized quick-schedule teacher to ``path``, with its
    BatchNorm statistics measured on random images (as a trained teacher's would be), so that its
    eval-mode features have a sane scale."""
    torch.manual_seed(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    model = build_model(load_cfg(TEACHER_CONFIG, opts))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for _ in range(4):
            images = (torch.rand(4, 3, 64, 64) * 255 - model.pixel_mean) / model.pixel_std
            model.head([f for f in model.backbone(images).values()])
    DetectionCheckpointer(model, save_dir=os.path.dirname(path)).save(
        os.path.splitext(os.path.basename(path))[0]
    )
    return path


@pytest.fixture(scope="session")
def teacher_weights(tmp_path_factory):
    return save_random_teacher(str(tmp_path_factory.mktemp("teacher") / "teacher.pth"))


def student_cfg(teacher_weights, opts=()):
    """The quick-schedule TBD student config, with its teacher pointing at ``teacher_weights``."""
    return load_cfg(
        STUDENT_CONFIG,
        [
            "MODEL.TBD.TEACHER.CONFIG_FILE",
            TEACHER_CONFIG,
            "MODEL.TBD.TEACHER.WEIGHTS",
            teacher_weights,
            *opts,
        ],
    )


def tiny_synthetic_opts(root, num_train=8, num_val=2, image_size=64):
    """Config opts for a tiny synthetic dataset under ``root`` (generated on first use)."""
    return [
        "DATASETS.SYNTHETIC.ROOT",
        str(root),
        "DATASETS.SYNTHETIC.NUM_TRAIN",
        str(num_train),
        "DATASETS.SYNTHETIC.NUM_VAL",
        str(num_val),
        "DATASETS.SYNTHETIC.IMAGE_SIZE",
        str(image_size),
    ]


def make_batch(num_images=2, size=64, num_boxes=(3, 0), seed=0):
    """A training batch in the format of DatasetMapper: random images and random boxes."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(num_images):
        image = torch.randint(0, 256, (3, size, size), generator=g).float()
        n = num_boxes[i % len(num_boxes)]
        xy = torch.rand(n, 2, generator=g) * size * 0.6
        wh = 8 + torch.rand(n, 2, generator=g) * size * 0.4
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.randint(0, 6, (n,), generator=g)
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch
