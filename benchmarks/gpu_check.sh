#!/usr/bin/env bash
# Everything a GPU machine lent for a short time should measure, in one go and within 10
# minutes: the `cuda` test tier (make test-gpu; it must run, not skip), tools/benchmark.py on
# CUDA, and s/iter, peak memory (max_mem) and AP of the reference R50-FPN config at 640 px with
# AMP, in fp32 and with gradient accumulation. Each step has its own time limit; a step that
# fails or runs out of time is reported and the next one still runs. Logs go to $1.
# Usage: benchmarks/gpu_check.sh OUTPUT_DIR   (with dental_d2 and detectron2 importable)
set -uo pipefail
out=${1:?output folder}
python=${PYTHON:-python3}
mkdir -p "$out"
failed=()

step() {  # step NAME SECONDS COMMAND...: runs it under a time limit, logging to $out/NAME.log
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most ${seconds} s)"
    timeout "$seconds" "$@" >"$out/$name.log" 2>&1
    local status=$?
    [ $status -eq 0 ] || { failed+=("$name (exit $status)"); tail -n 20 "$out/$name.log"; }
    return 0
}

$python -m dental_d2.collect_env | tee "$out/collect_env.log"
$python tools/make_synthetic_dataset.py --output /tmp/synth640 --num-train 64 --num-valid 16 \
    --num-test 16 --size 640 >/dev/null
# 1. The GPU test tier; DENTAL_D2_REQUIRE_CUDA makes a missing CUDA an error, not a skip.
step test_gpu 240 env DENTAL_D2_REQUIRE_CUDA=1 $python -m pytest tests -m cuda -rA -q
grep -E "passed|failed|error" "$out/test_gpu.log" | tail -n 1
# 2. Inference and training speed on CUDA, one table.
step benchmark 120 $python tools/benchmark.py --config-file configs/dental_r50.yaml --device cuda \
    --output "$out/benchmark.json" --repeats 5 --train-iters 3
sed -n '/^|/p' "$out/benchmark.log"
# 3. The reference config: no internet on the GPU machine, so R50 starts from random init,
# which with FrozenBN diverges: detectron2's from-scratch recipe (GroupNorm, nothing frozen)
# stands in for the COCO weights.
r50=(--config-file configs/dental_r50.yaml DENTAL.DATA_ROOT /tmp/synth640 MODEL.WEIGHTS ""
     SOLVER.MAX_EPOCHS 0 DENTAL.LOG_PERIOD 10 MODEL.BACKBONE.FREEZE_AT 0
     MODEL.RESNETS.NORM GN MODEL.RESNETS.STRIDE_IN_1X1 False MODEL.FPN.NORM GN
     MODEL.ROI_BOX_HEAD.NORM GN MODEL.ROI_MASK_HEAD.NORM GN SOLVER.BASE_LR 0.01)
step r50_amp 120 $python tools/train_net.py "${r50[@]}" SOLVER.AMP.ENABLED True \
    SOLVER.MAX_ITER 100 TEST.EVAL_PERIOD 50 OUTPUT_DIR /tmp/r50_amp
grep -E "iter: 9|copypaste: [0-9]" "$out/r50_amp.log" | tail -n 3
step r50_fp32 60 $python tools/train_net.py "${r50[@]}" SOLVER.MAX_ITER 60 TEST.EVAL_PERIOD 0 \
    OUTPUT_DIR /tmp/r50_fp32
grep -E "iter: " "$out/r50_fp32.log" | tail -n 1
step r50_accum 60 $python tools/train_net.py "${r50[@]}" SOLVER.ACCUMULATION_STEPS 2 \
    SOLVER.MAX_ITER 30 TEST.EVAL_PERIOD 0 OUTPUT_DIR /tmp/r50_accum
grep -E "iter: " "$out/r50_accum.log" | tail -n 1

if [ ${#failed[@]} -gt 0 ]; then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
echo "gpu_check: everything passed; logs in $out"
