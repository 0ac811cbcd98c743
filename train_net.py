#!/usr/bin/env python
"""
Task-Balanced Distillation (TBD) training script, built on detectron2's DefaultTrainer.

Trains teachers, baseline students (``TBDRetinaNet`` with HD and TFD disabled, or a plain
``RetinaNet``) and TBD students alike; ``--eval-only`` evaluates with COCOEvaluator and never loads
a teacher. Training a distilling config checks its teacher's files before any dataset is prepared,
and refuses a missing one before torch is imported (tbd_preflight).
Every checkpoint is read with ``tbd.checkpoint.SafeCheckpointer`` (no code from the file runs).
"""

import sys

import tbd_preflight

if __name__ == "__main__":
    # Before torch is imported: a wrong teacher path is refused in a fraction of a second.
    try:
        tbd_preflight.check_teacher_paths(sys.argv[1:])
    except FileNotFoundError as e:
        sys.exit(f"train_net.py: {e}")

import contextlib
import os
import weakref

from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup
from detectron2.engine import defaults as d2_defaults
from detectron2.engine import launch
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from tbd import allocator
from tbd.checkpoint import AtomicCheckpointer, SafeCheckpointer
from tbd.config import load_tbd_config
from tbd.datasets import register_datasets
from tbd.teacher import check_teacher_files


def _unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel


@contextlib.contextmanager
def _cpu_ddp():
    """Let DefaultTrainer wrap a CPU model in DDP (gloo): detectron2's ``create_ddp_model`` passes
    ``device_ids=[local_rank]``, which DistributedDataParallel refuses for a CPU module."""
    create_ddp_model = d2_defaults.create_ddp_model

    def create(model, **kwargs):
        if next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return create_ddp_model(model, **kwargs)

    d2_defaults.create_ddp_model = create
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = create_ddp_model


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCOEvaluator, atomic checkpoints and an eagerly loaded teacher."""

    def __init__(self, cfg):
        with _cpu_ddp():
            super().__init__(cfg)

    def build_hooks(self):
        # Called by DefaultTrainer.__init__ before the hooks capture the checkpointer.
        self.checkpointer = AtomicCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    def train(self):
        # Build and load the teacher before the first step, so that a wrong teacher config or
        # checkpoint fails now rather than inside the training loop.
        model = _unwrap(self.model)
        if getattr(model, "distills", False):
            model.load_teacher()
        return super().train()


def setup(args):
    cfg = load_tbd_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # this project's own messages (teacher loading, dataset validation) to the console and log.txt
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="tbd")
    return cfg


def prepare_datasets(cfg):
    """Register the config's datasets; the synthetic one is generated once per machine."""
    if comm.get_local_rank() == 0:
        register_datasets(cfg)
    comm.synchronize()
    register_datasets(cfg)


def configure_malloc(cfg, args) -> bool:
    """On the CPU, unless ``--default-malloc``, keep freed memory for reuse in this process (every
    process of a launch calls it; tbd/allocator.py). Args from detectron2's own
    ``default_argument_parser`` have no ``--default-malloc`` and keep it too. Returns whether it
    is kept."""
    return allocator.configure_malloc(
        cfg.MODEL.DEVICE, keep=not getattr(args, "default_malloc", False)
    )


def main(args):
    cfg = setup(args)
    if not args.eval_only:
        # a wrong teacher config or weights path fails in seconds, before datasets are generated
        check_teacher_files(cfg)
    configure_malloc(cfg, args)
    prepare_datasets(cfg)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="on the CPU, keep glibc's default malloc settings instead of keeping freed memory "
        "for reuse (tbd/allocator.py, docs/cost.md)",
    )
    return parser


def invoke_main() -> None:
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
