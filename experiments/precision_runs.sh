#!/usr/bin/env bash
# Does bfloat16 change accuracy? Each run evaluated (float32) on photos it never saw:
#   32         everything float32 (trainer.precision=32-true)
#   trainbf16  the unfrozen blocks trained in bf16 autocast (trainer.precision=bf16-mixed), the
#              stored features float32: experiment=finetune's default on CPUs with bf16
#   bf16       that, and the frozen blocks' pass that fills the store in bf16 too
#              (inference.precision=bf16)
#
#   bash experiments/precision_runs.sh WEIGHTS METU600 METU_REST SDNET OUT
#
# WEIGHTS    an ImageNet MobileNetV2 state_dict (model.weights_path)
# METU600    300 crack + 300 intact METU photos (Positive/, Negative/) to train on
# METU_REST  the other METU photos, never trained on
# SDNET      the SDNET2018 walls dev set (tiles <photo>-<tile>.jpg), split by photo 70/15/15
# OUT        a new folder for the runs; summary.json and the logs go there
set -euo pipefail
WEIGHTS=$1 METU600=$2 METU_REST=$3 SDNET=$4 OUT=$5
source "$(dirname "$0")/runs.sh"

for precision in 32 trainbf16 bf16; do
  case $precision in
    32) extra=(trainer.precision=32-true) ;;
    trainbf16) extra=(trainer.precision=bf16-mixed) ;;
    bf16) extra=(trainer.precision=bf16-mixed inference.precision=bf16) ;;
  esac
  experiments=(frozen finetune); [ "$precision" = trainbf16 ] && experiments=(finetune)
  for experiment in "${experiments[@]}"; do
    run=${experiment}600_$precision
    step "$run" "$PY" train.py experiment=$experiment data.root="$METU600" "${common[@]}" "${extra[@]}" hydra.run.dir="$OUT/$run"
    step "eval_${run}_metu_rest" "$PY" eval.py ckpt="$OUT/$run/checkpoints/best.ckpt" data.root="$METU_REST" hydra.run.dir="$OUT/eval_${run}_metu_rest"
  done
  run=sdnet_finetune_$precision
  step "$run" "$PY" train.py experiment=finetune data.root="$SDNET" "data.group_pattern='^(\d+)-'" \
    data.split=[0.7,0.15,0.15] "${common[@]}" "${extra[@]}" hydra.run.dir="$OUT/$run"
  step "eval_${run}_test" "$PY" eval.py ckpt="$OUT/$run/checkpoints/best.ckpt" hydra.run.dir="$OUT/eval_${run}_test"
done

summarize num_images accuracy balanced_accuracy recall auroc ece threshold
