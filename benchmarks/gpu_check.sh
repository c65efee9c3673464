#!/usr/bin/env bash
# GPU check: the reference R50-FPN config at 640 px with AMP and with gradient accumulation, and
# the demo config on the GPU. Prints s/iter, peak memory (max_mem) and AP; writes logs to $1.
# Usage: benchmarks/gpu_check.sh OUTPUT_DIR   (with dental_d2 and detectron2 importable)
set -euo pipefail
out=${1:?output folder}
python=${PYTHON:-python3}
mkdir -p "$out"
$python -m dental_d2.collect_env
$python tools/make_synthetic_dataset.py --output /tmp/synth640 --num-train 64 --num-valid 16 \
    --num-test 16 --size 640
$python tools/make_synthetic_dataset.py --output /tmp/synth256
# No internet on the GPU machine, so R50 starts from random init, which with FrozenBN diverges:
# detectron2's from-scratch recipe (GroupNorm, nothing frozen) stands in for the COCO weights.
r50=(--config-file configs/dental_r50.yaml DENTAL.DATA_ROOT /tmp/synth640 MODEL.WEIGHTS ""
     SOLVER.MAX_EPOCHS 0 DENTAL.LOG_PERIOD 10 MODEL.BACKBONE.FREEZE_AT 0
     MODEL.RESNETS.NORM GN MODEL.RESNETS.STRIDE_IN_1X1 False MODEL.FPN.NORM GN
     MODEL.ROI_BOX_HEAD.NORM GN MODEL.ROI_MASK_HEAD.NORM GN SOLVER.BASE_LR 0.01)
$python tools/train_net.py "${r50[@]}" SOLVER.AMP.ENABLED True SOLVER.MAX_ITER 100 \
    TEST.EVAL_PERIOD 50 OUTPUT_DIR /tmp/r50_amp 2>&1 | tee "$out/r50_amp.log" | grep -E "iter: |copypaste: [0-9]"
$python tools/train_net.py "${r50[@]}" SOLVER.MAX_ITER 60 TEST.EVAL_PERIOD 0 \
    OUTPUT_DIR /tmp/r50_fp32 2>&1 | tee "$out/r50_fp32.log" | grep -E "iter: "
$python tools/train_net.py "${r50[@]}" SOLVER.ACCUMULATION_STEPS 2 SOLVER.MAX_ITER 30 \
    TEST.EVAL_PERIOD 0 OUTPUT_DIR /tmp/r50_accum 2>&1 | tee "$out/r50_accum.log" | grep -E "iter: "
$python tools/train_net.py --config-file configs/quick_schedules/dental_demo_cpu.yaml \
    MODEL.DEVICE cuda DENTAL.DATA_ROOT /tmp/synth256 OUTPUT_DIR /tmp/demo_gpu 2>&1 \
    | tee "$out/demo_gpu.log" | grep -E "iter: |copypaste: [0-9]|Early stopping"
