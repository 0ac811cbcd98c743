#!/usr/bin/env bash
# Regenerate docs/results/cost.md (never edit it by hand): the cost of a TBD step against its
# physical floor, at the synthetic scale and at the COCO scale, on this machine. See docs/cost.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p docs/results
rm -f docs/results/cost.md
# The first three runs keep freed memory for reuse, as train_net.py trains on the CPU
# (tbd/allocator.py); the last two measure glibc's default settings (train_net.py --default-malloc)
# for comparison.
# Learning rate 0 at both scales: the same arithmetic per step (forward, backward, SGD update), but
# random weights repeatedly stepped on one random batch at the real learning rate diverge (a
# non-finite loss) within a few dozen steps.
# synthetic scale (the defaults): R18 student, R18-wide teacher, batch 8 (SOLVER.IMS_PER_BATCH), 128 px
$PY tools/benchmark_step.py --steps 20 --warmup 3 \
    --output output/cost/synthetic.json --markdown docs/results/cost.md SOLVER.BASE_LR 0.0
# COCO scale: R50 student, R101 teacher, 2 images of 800 x 1333 (one GPU's share of a COCO batch).
$PY tools/benchmark_step.py \
    --student-config configs/COCO/tbd_R50_from_R101_1x.yaml --teacher-config '' --device "${DEVICE:-cpu}" \
    --batch 2 --size 800x1333 --steps 6 --warmup 1 \
    --output output/cost/coco.json --markdown docs/results/cost.md SOLVER.BASE_LR 0.0
# The same with the HD classification loss compiled into one fused kernel (MODEL.TBD.HD.COMPILE);
# the compilation happens in the warm-up round.
$PY tools/benchmark_step.py \
    --student-config configs/COCO/tbd_R50_from_R101_1x.yaml --teacher-config '' --device "${DEVICE:-cpu}" \
    --batch 2 --size 800x1333 --steps 6 --warmup 1 \
    --output output/cost/coco_compiled.json --markdown docs/results/cost.md \
    SOLVER.BASE_LR 0.0 MODEL.TBD.HD.COMPILE True
# The first COCO run again with glibc's default malloc settings: each step maps and zeroes fresh
# pages for its large blocks.
$PY tools/benchmark_step.py \
    --student-config configs/COCO/tbd_R50_from_R101_1x.yaml --teacher-config '' --device "${DEVICE:-cpu}" \
    --batch 2 --size 800x1333 --steps 6 --warmup 1 --malloc default \
    --output output/cost/coco_default_malloc.json --markdown docs/results/cost.md SOLVER.BASE_LR 0.0
# And the synthetic scale with glibc's defaults.
$PY tools/benchmark_step.py --steps 20 --warmup 3 --malloc default \
    --output output/cost/synthetic_default_malloc.json --markdown docs/results/cost.md SOLVER.BASE_LR 0.0
