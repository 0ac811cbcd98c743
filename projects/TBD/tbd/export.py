"""
Export a trained TBD student for deployment (TorchScript by tracing, or ONNX) and verify it
(tools/export_model.py, docs/deploy.md).

What is exported is the plain detectron2 ``RetinaNet`` the student is at inference time
(:func:`tbd.deploy.to_retinanet`): no teacher, no TFD adapter. The saved file is loaded back and
run on the same images as the eager student; :func:`export` raises :class:`VerificationError`
when boxes, scores or classes differ beyond tolerance (:data:`BOX_ATOL`, :data:`SCORE_ATOL`), and
:class:`ExportError` when the export cannot be produced.
"""

import contextlib
import json
import logging
import os
import statistics
import time
import warnings
from typing import Callable, Dict, List, Sequence, Tuple

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.config.instantiate import dump_dataclass
from detectron2.data import detection_utils
from detectron2.export import TracingAdapter
from detectron2.export.flatten import InstancesSchema
from detectron2.structures import Instances
from PIL import Image

from . import meta_arch  # noqa: F401  (registers TBDRetinaNet)
from .config import load_tbd_config
from .deploy import to_retinanet
from .synthetic import render_sample

logger = logging.getLogger("tbd.export")

FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}
# Verification tolerances: boxes in pixels of the input image; scores are probabilities.
BOX_ATOL = 1e-3
SCORE_ATOL = 1e-4
ONNX_OPSET = 17


class ExportError(RuntimeError):
    """The requested export cannot be produced here; the message says why and what to do."""


class VerificationError(RuntimeError):
    """The exported model's predictions differ from the eager student's beyond tolerance."""


def setup_cfg(config_file: str, opts: Sequence[str] = ()):
    """The student's config: TBD keys, the config file, then ``KEY VALUE`` overrides."""
    cfg = load_tbd_config(config_file, opts)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    return cfg


def sample_image(cfg, path: str = None, seed: int = 0) -> torch.Tensor:
    """
    One input image as the exported model takes it: float32 3 x H x W, 0-255, ``INPUT.FORMAT``.

    ``path`` is read and resized as for evaluation (``ResizeShortestEdge`` to ``MIN_SIZE_TEST``,
    capped at ``MAX_SIZE_TEST``). Without a path, a synthetic scene of the config's test size is
    rendered (see :mod:`tbd.synthetic`), so the export needs no dataset.
    """
    if path:
        image = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
    else:
        size = cfg.INPUT.MIN_SIZE_TEST or 128
        if cfg.INPUT.MAX_SIZE_TEST:
            size = min(size, cfg.INPUT.MAX_SIZE_TEST)
        rgb, _, _ = render_sample(np.random.default_rng(seed), size)
        image = detection_utils.convert_PIL_to_numpy(Image.fromarray(rgb), cfg.INPUT.FORMAT)
    if cfg.INPUT.MIN_SIZE_TEST:
        resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))


def verification_images(image: torch.Tensor) -> List[torch.Tensor]:
    """
    The sample image and a crop of it with a different height: the export is traced on the first,
    and must also be right on an input shape it was not traced with.
    """
    height = image.shape[1]
    crop = max(32, height - height // 4)
    if crop == height:
        return [image]
    return [image, image[:, :crop, :].clone()]


def predict(model, image: torch.Tensor) -> Instances:
    """The eager model's detections on one image, in the input image's pixels."""
    with torch.no_grad():
        return model([{"image": image}])[0]["instances"]


def tracing_adapter(model, image: torch.Tensor) -> TracingAdapter:
    """A :class:`TracingAdapter` that maps one image tensor to the flattened ``Instances``."""
    adapter = TracingAdapter(model, image, predict).eval()
    with torch.no_grad():
        adapter(image)  # records outputs_schema
    if not isinstance(adapter.outputs_schema, InstancesSchema):
        raise ExportError(f"unexpected model output: {adapter.outputs_schema}")
    return adapter


def output_names(adapter: TracingAdapter) -> List[str]:
    """Names of the flat outputs, in order (``Instances`` fields sorted, then ``image_size``)."""
    return list(adapter.outputs_schema.keys) + ["image_size"]


@contextlib.contextmanager
def quiet_export_warnings():
    """Silence the tracer's and exporter's warnings (deprecations, traced shape constants): the
    export is checked against the eager student instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_torchscript(adapter: TracingAdapter, image: torch.Tensor, path: str) -> Callable:
    """Trace ``adapter`` on ``image``, save to ``path``, and return the reloaded module."""
    with quiet_export_warnings():
        try:
            with torch.no_grad():
                traced = torch.jit.trace(adapter, (image,), check_trace=False)
        except Exception as e:
            raise ExportError(f"torch.jit.trace failed on the RetinaNet: {e}") from e
        torch.jit.save(traced, path)
        loaded = torch.jit.load(path)

    def run(x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return tuple(loaded(x))

    run.runtime = "torch.jit"
    return run


def _onnx_runner(path: str) -> Callable:
    """Run the ONNX file with onnxruntime when installed, else with onnx's reference evaluator."""
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run_session(x: torch.Tensor):
            return session.run(None, {"image": x.numpy()})

        runner, runtime = run_session, f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        import onnx
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(path)

        def run_reference(x: torch.Tensor):
            return evaluator.run(None, {"image": x.numpy()})

        runner, runtime = run_reference, f"onnx.reference {onnx.__version__} (slow; for checking)"

    def run(x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(np.asarray(v)) for v in runner(x.detach().cpu()))

    run.runtime = runtime
    return run


def export_onnx(adapter: TracingAdapter, image: torch.Tensor, path: str) -> Callable:
    """
    Export ``adapter`` with torch's TorchScript-based ONNX exporter (``dynamo=False``: the
    ``torch.export`` route cannot handle RetinaNet's data-dependent number of detections), with
    dynamic image height and width, check it with ``onnx.checker`` and return a runner.
    """
    try:
        import onnx
    except ImportError:
        raise ExportError(
            "--format onnx needs the 'onnx' package, which is not installed: "
            "pip install onnx (onnxruntime optional, for fast verification)"
        ) from None
    names = output_names(adapter)
    dynamic = {"image": {1: "height", 2: "width"}}
    dynamic.update({name: {0: "detections"} for name in names[:-1]})
    try:
        with torch.no_grad(), quiet_export_warnings():
            torch.onnx.export(
                adapter,
                (image,),
                path,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["image"],
                output_names=names,
                dynamic_axes=dynamic,
            )
        onnx.checker.check_model(onnx.load(path))
    except Exception as e:
        raise ExportError(
            f"torch.onnx.export could not export the traced RetinaNet "
            f"(torch {torch.__version__}, opset {ONNX_OPSET}): {type(e).__name__}: {e}"
        ) from e
    return _onnx_runner(path)


def compare(expected: Instances, actual: Instances) -> Dict[str, float]:
    """
    Max absolute differences of boxes and scores, and the number of differing classes, between
    two sets of detections in the same order. Raises :class:`VerificationError` beyond tolerance.
    """
    n, m = len(expected), len(actual)
    if n != m:
        raise VerificationError(f"{n} detections by the eager student, {m} by the export")
    if tuple(int(s) for s in actual.image_size) != tuple(int(s) for s in expected.image_size):
        raise VerificationError(f"image size {actual.image_size} vs {expected.image_size}")
    diff = {"detections": n, "box": 0.0, "score": 0.0, "classes": 0}
    if n:
        diff["box"] = (expected.pred_boxes.tensor - actual.pred_boxes.tensor).abs().max().item()
        diff["score"] = (expected.scores - actual.scores).abs().max().item()
        diff["classes"] = int((expected.pred_classes != actual.pred_classes.long()).sum())
    if not (diff["box"] <= BOX_ATOL and diff["score"] <= SCORE_ATOL and diff["classes"] == 0):
        raise VerificationError(
            f"predictions differ: max box diff {diff['box']:.3g} px (tolerance {BOX_ATOL}), "
            f"max score diff {diff['score']:.3g} (tolerance {SCORE_ATOL}), "
            f"{diff['classes']} of {n} classes differ"
        )
    return diff


def median_latency(fn: Callable, runs: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds over ``runs`` runs, after ``warmup`` runs (the
    TorchScript executor optimizes the graph during its first runs)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(max(1, runs)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def export(student, cfg, image: torch.Tensor, output_dir: str, fmt: str = "torchscript", runs=10):
    """
    Export ``student`` (eval mode) as the plain RetinaNet it is at inference, verify the saved file
    against the eager student, and time both.

    Returns:
        the report written to ``output_dir/export.json``. Raises :class:`ExportError` when the
        export cannot be produced and :class:`VerificationError` (after writing the report) when
        its predictions differ.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAMES[fmt])
    student.eval()
    model = to_retinanet(student, cfg)
    adapter = tracing_adapter(model, image)
    run = (export_torchscript if fmt == "torchscript" else export_onnx)(adapter, image, path)
    logger.info(f"Exported {type(student).__name__} as a plain RetinaNet to {path}")

    report = {
        "format": fmt,
        "file": path,
        "runtime": run.runtime,
        "input": f"image: float32 3 x H x W, 0-255, {cfg.INPUT.FORMAT}",
        "outputs": output_names(adapter),
        "outputs_schema": dump_dataclass(adapter.outputs_schema),
        "tolerance": {"box": BOX_ATOL, "score": SCORE_ATOL},
        "verified": [],
    }
    error = None
    for x in verification_images(image):
        entry = {"image_size": list(x.shape[1:])}
        try:
            entry.update(compare(predict(student, x), adapter.outputs_schema(run(x))))
        except VerificationError as e:
            entry["error"] = str(e)
            error = error or e
        report["verified"].append(entry)

    if all(entry.get("detections") == 0 for entry in report["verified"]):
        logger.warning(
            "The verification compared empty predictions (no detection above "
            "MODEL.RETINANET.SCORE_THRESH_TEST): it checks little. Use trained weights or a "
            "--sample-image with objects."
        )
    report["latency"] = None
    if runs > 0 and error is None:
        eager = median_latency(lambda: predict(student, image), runs)
        exported = median_latency(lambda: run(image), runs)
        report["latency"] = {
            "runs": runs,
            "image_size": list(image.shape[1:]),
            "threads": torch.get_num_threads(),
            "eager_ms": 1000 * eager,
            "exported_ms": 1000 * exported,
            "eager_over_exported": eager / exported,
        }
    with open(os.path.join(output_dir, "export.json"), "w") as f:
        json.dump(report, f, indent=2)
    if error is not None:
        raise error
    return report
