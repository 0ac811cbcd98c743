#!/usr/bin/env python
"""
Export a trained TBD student for deployment (TorchScript by tracing, or ONNX), then verify it.

The student is built from its config and ``MODEL.WEIGHTS`` exactly as ``train_net.py --eval-only``
builds it; its teacher is never built or read, so ``MODEL.TBD.TEACHER.WEIGHTS`` may point anywhere.
What is exported is the plain detectron2 ``RetinaNet`` the student is at inference time (see
``tbd/deploy.py``): no teacher, no TFD adapter. After export, the saved file is loaded back and run
on the same images as the eager student; the tool exits nonzero when boxes, scores or classes differ
beyond tolerance, and prints the median latency of both.

Example (from the repo root)::

    python tools/export_model.py --config-file configs/Synthetic/tbd_R18.yaml \\
        --output output/export/tbd_R18 --format torchscript --runs 20 \\
        MODEL.WEIGHTS output/synthetic/tbd_R18/model_final.pth

The exported model takes one float32 image tensor 3 x H x W (pixel values 0-255, channel order
``INPUT.FORMAT``, already resized as for evaluation) and returns the flat tuple ``(pred_boxes N x 4,
pred_classes N, scores N, image_size 2)``; boxes are in the input image's pixels. ``export.json`` in
the output directory records this, the verification and the latencies.

Exit codes: 0 exported and verified; 1 the exported model's predictions differ from the student's;
2 the export could not be produced (e.g. ``onnx`` not installed, or torch's exporter failed).
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

from tbd.checkpoint import load_eval_model
from tbd.export import FORMATS, ExportError, VerificationError, export, sample_image, setup_cfg

EXIT_MISMATCH = 1
EXIT_EXPORT_FAILED = 2


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="student config")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--format", choices=FORMATS, default="torchscript", help="export format")
    parser.add_argument(
        "--sample-image", default=None, help="image to trace and verify with (default: synthetic)"
    )
    parser.add_argument(
        "--runs", type=int, default=10, help="timed runs for the median latency (0: skip timing)"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ..."
    )
    return parser


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    setup_logger(name="tbd")
    setup_logger(name="detectron2")
    cfg = setup_cfg(args.config_file, args.opts)
    student = load_eval_model(cfg, "exporting")
    image = sample_image(cfg, args.sample_image)
    try:
        report = export(student, cfg, image, args.output, args.format, args.runs)
    except ExportError as e:
        print(f"ERROR: {args.format} export failed: {e}", file=sys.stderr)
        return EXIT_EXPORT_FAILED
    except VerificationError as e:
        print(f"ERROR: the exported model does not match the eager student: {e}", file=sys.stderr)
        return EXIT_MISMATCH
    for entry in report["verified"]:
        h, w = entry["image_size"]
        print(
            f"verified on a {h}x{w} image: {entry['detections']} detections, max box diff "
            f"{entry['box']:.2g} px, max score diff {entry['score']:.2g}, classes equal"
        )
    lat = report["latency"]
    if lat is None:
        print("latency: not measured (--runs 0)")
    else:
        h, w = lat["image_size"]
        print(
            f"latency, median of {lat['runs']} runs on a {h}x{w} image ({lat['threads']} threads): "
            f"eager student {lat['eager_ms']:.2f} ms, {args.format} ({report['runtime']}) "
            f"{lat['exported_ms']:.2f} ms, eager/exported {lat['eager_over_exported']:.2f}x"
        )
    print(f"exported to {report['file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
