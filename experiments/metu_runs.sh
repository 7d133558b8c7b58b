#!/usr/bin/env bash
# METU with the project's commands: how many unfrozen blocks, with or without orientation
# augmentation; trained on 600 photos, evaluated on the sample's other photos.
#
#   bash experiments/metu_runs.sh WEIGHTS METU600 METU_REST OUT BLOCKS:AUGMENT ...
#
# BLOCKS:AUGMENT[:unfolded], e.g. 4:orient (the last 4 blocks, hflip + vflip + rot90), 4:none (the
# default), 4:none:unfolded (callbacks.staged_unfreezing.fold_batchnorm=false)
set -euo pipefail
WEIGHTS=$1 METU600=$2 METU_REST=$3 OUT=$4
shift 4
source "$(dirname "$0")/runs.sh"

for config in "$@"; do
  recipe "$config"
  name="metu600_k${config//:/_}"
  step "$name" "$PY" train.py experiment=finetune data.root="$METU600" "${recipe[@]}" "${common[@]}" \
    hydra.run.dir="$OUT/$name"
  step "eval_${name}_rest" "$PY" eval.py ckpt="$OUT/$name/checkpoints/best.ckpt" data.root="$METU_REST" \
    hydra.run.dir="$OUT/eval_${name}_rest"
done
summarize num_images accuracy balanced_accuracy recall precision auroc ece threshold unfamiliar_fraction
