"""
The workloads of the step-cost benchmark (docs/cost.md), on one deterministic synthetic batch:
a plain RetinaNet train step, the FrozenTeacher's no-grad forward, a TBDRetinaNet train step (with
the time inside ``distillation_losses``), and inference of both models with the same weights.
"""

import os
import time
from typing import Callable, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import nn

import tbd  # noqa: F401  (registers TBDRetinaNet)
from tbd.config import load_tbd_config
from tbd.teacher import load_teacher_config

# The variants measured for time and memory; tbd_losses is timed inside tbd_step.
VARIANTS = (
    "student_step",
    "teacher_forward",
    "tbd_step",
    "tbd_inference",
    "retinanet_inference",
)
TIMED = VARIANTS + ("tbd_losses",)
DESCRIPTIONS = {
    "student_step": "student train step (RetinaNet: forward + backward + SGD)",
    "teacher_forward": "teacher no-grad forward (FrozenTeacher)",
    "tbd_step": "TBD train step (TBDRetinaNet: forward + backward + SGD)",
    "tbd_losses": "TBD losses alone (distillation_losses: HS + HD + TFD, forward)",
    "tbd_inference": "TBDRetinaNet inference (eval)",
    "retinanet_inference": "RetinaNet inference (eval, same weights)",
}
# Keys of a student's state that a plain RetinaNet does not have.
TBD_ONLY_PREFIXES = ("tfd_loss.", "hd_loss.")


def build_cfgs(spec: dict):
    """(TBD config, plain RetinaNet config) of the student, both on ``spec["device"]``."""
    cfg = load_tbd_config(spec["student_config"], spec["opts"])
    if spec["teacher_config"]:
        cfg.MODEL.TBD.TEACHER.CONFIG_FILE = spec["teacher_config"]
    if spec["teacher_weights"]:
        cfg.MODEL.TBD.TEACHER.WEIGHTS = spec["teacher_weights"]
    cfg.MODEL.DEVICE = spec["device"]
    tbd_cfg, plain_cfg = cfg.clone(), cfg.clone()
    tbd_cfg.MODEL.META_ARCHITECTURE = "TBDRetinaNet"
    plain_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    tbd_cfg.freeze()
    plain_cfg.freeze()
    return tbd_cfg, plain_cfg


def make_batch(num_images: int, height: int, width: int, num_classes: int, boxes: int, seed: int):
    """A deterministic training batch in DatasetMapper's format: uint8 images, random boxes."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
        scale = torch.tensor([width, height], dtype=torch.float32)
        xy = torch.rand(boxes, 2, generator=g) * scale * 0.6
        wh = 8 + torch.rand(boxes, 2, generator=g) * scale * 0.4
        xy1 = torch.minimum(xy + wh, scale - 1)
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([xy, xy1], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (boxes,), generator=g)
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


@torch.no_grad()
def calibrate_norms(model, batch) -> None:
    """
    Set the statistics of every BatchNorm / FrozenBatchNorm of a randomly initialized RetinaNet to
    the mean and variance of its input on ``batch`` (one eval forward, layer after layer), so that
    its eval-mode activations keep a sane scale, as a trained model's do. Without it a random deep
    teacher's features can overflow, and the step stops on a non-finite loss.
    """

    def set_stats(module, inputs):
        x = inputs[0].float()
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))

    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    handles = [m.register_forward_pre_hook(set_stats) for m in norms]
    training = model.training
    try:
        model.eval()
        features = model.backbone(model.preprocess_image(batch).tensor)
        model.head([features[f] for f in model.head_in_features])
    finally:
        for h in handles:
            h.remove()
        model.train(training)


def save_random_teacher(tbd_cfg, directory: str, batch, seed: int) -> str:
    """Write a randomly initialized, norm-calibrated teacher checkpoint; return its path."""
    teacher_cfg = load_teacher_config(tbd_cfg)
    torch.manual_seed(seed + 1)
    model = build_model(teacher_cfg)
    calibrate_norms(model, batch)
    DetectionCheckpointer(model, save_dir=directory).save("random_teacher")
    return os.path.join(directory, "random_teacher.pth")


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _synchronize(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def train_step(model, optimizer, batch) -> Dict[str, torch.Tensor]:
    """One step as detectron2's SimpleTrainer runs it (without its metric logging)."""
    losses = model(batch)
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    return losses


class Workloads:
    """
    The measured workloads on one batch. Models are built on first use, so that a memory process
    builds only what its variant needs: ``runner(name)`` builds, then returns the step callable.

    Every student model starts from the same weights (seeded, norm-calibrated, then copied from
    the first one built), so TBDRetinaNet and RetinaNet inference run identical weights.
    """

    def __init__(self, spec: dict, batch):
        self.spec = spec
        self.batch = batch
        self.tbd_cfg, self.plain_cfg = build_cfgs(spec)
        self.sync = _synchronize(spec["device"])
        self.loss_times: List[float] = []
        self._models: Dict[str, nn.Module] = {}
        self._optimizers: Dict[str, torch.optim.Optimizer] = {}
        self._initial_state: Optional[Dict[str, torch.Tensor]] = None

    def model(self, key: str) -> nn.Module:
        """``key``: "plain_train", "tbd_train", "plain_eval" or "tbd_eval"."""
        if key in self._models:
            return self._models[key]
        kind, mode = key.split("_")
        torch.manual_seed(self.spec["seed"])
        model = build_model(self.tbd_cfg if kind == "tbd" else self.plain_cfg)
        if self._initial_state is None:
            calibrate_norms(model, self.batch)
            self._initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            copy_student_weights(self._initial_state, model)
        model.train(mode == "train")
        if key == "tbd_train":
            self._time_losses(model)
        self._models[key] = model
        return model

    def optimizer(self, key: str) -> torch.optim.Optimizer:
        if key not in self._optimizers:
            cfg = self.tbd_cfg if key.startswith("tbd") else self.plain_cfg
            self._optimizers[key] = build_optimizer(cfg, self.model(key))
        return self._optimizers[key]

    def teacher(self):
        """The TBD model's own FrozenTeacher (built and loaded on first use)."""
        return self.model("tbd_train").load_teacher()

    def _time_losses(self, model) -> None:
        """Wrap ``model.distillation_losses`` (instance attribute over the class method) to record
        its wall time; forward_training calls it through ``self``, so this times the real call."""
        method = model.distillation_losses

        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            out = method(*args, **kwargs)
            self.sync()
            self.loss_times.append(time.perf_counter() - start)
            return out

        model.distillation_losses = timed

    def runner(self, name: str) -> Callable[[], object]:
        batch = self.batch
        if name in ("student_step", "tbd_step"):
            key = "plain_train" if name == "student_step" else "tbd_train"
            model, optimizer = self.model(key), self.optimizer(key)
            if name == "student_step":
                return lambda: train_step(model, optimizer, batch)
            self.teacher()

            def tbd_step():
                losses = train_step(model, optimizer, batch)
                # advance the iteration as training does: the harmony diagnostics run on every
                # MODEL.TBD.DIAGNOSTICS_PERIOD-th step only, and the medians must see that
                get_event_storage().step()
                return losses

            return tbd_step
        if name == "teacher_forward":
            student, teacher = self.model("tbd_train"), self.teacher()
            images = student.preprocess_image(batch)
            return lambda: teacher(images)
        if name in ("tbd_inference", "retinanet_inference"):
            model = self.model("tbd_eval" if name == "tbd_inference" else "plain_eval")

            def infer():
                with torch.no_grad():
                    return model(batch)

            return infer
        raise KeyError(f"unknown variant {name!r}; expected one of {VARIANTS}")


def copy_student_weights(state: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Load ``state`` into ``model``; only TBD's own modules (the TFD adapter) may differ."""
    incompatible = model.load_state_dict(state, strict=False)
    odd = [
        k
        for k in list(incompatible.missing_keys) + list(incompatible.unexpected_keys)
        if not k.startswith(TBD_ONLY_PREFIXES)
    ]
    if odd:
        raise RuntimeError(f"student weights do not transfer between models: {odd[:10]}")


def batch_args(spec: dict) -> dict:
    """The arguments of :func:`make_batch` from a benchmark spec."""
    return {
        "num_images": spec["batch"],
        "height": spec["size"][0],
        "width": spec["size"][1],
        "num_classes": spec["num_classes"],
        "boxes": spec["boxes"],
        "seed": spec["seed"],
    }
