#!/usr/bin/env bash
# SDNET walls with the project's commands: how many unfrozen blocks, with or without orientation
# augmentation. The same photo-grouped 70/15/15 hold-out as project_runs.sh's sdnet_finetune
# (2 blocks, no augmentation).
#
#   bash experiments/sdnet_runs.sh WEIGHTS SDNET OUT BLOCKS:AUGMENT ...
#
# BLOCKS:AUGMENT[:unfolded], e.g. 4:orient (the last 4 blocks, hflip + vflip + rot90), 4:none,
# or 4:none:unfolded (BatchNorm not folded into the convolutions: callbacks.staged_unfreezing.fold_batchnorm=false).
# SPLIT_SEED=N (default 0) draws another photo split (data.split_seed); the runs' names end in _sN.
set -euo pipefail
WEIGHTS=$1 SDNET=$2 OUT=$3
shift 3
source "$(dirname "$0")/runs.sh"

for config in "$@"; do
  recipe "$config"
  seed=${SPLIT_SEED:-0}
  name="sdnet_k${config//:/_}$([[ $seed == 0 ]] || echo "_s$seed")"
  step "$name" "$PY" train.py experiment=finetune data.root="$SDNET" "data.group_pattern='^(\d+)-'" \
    data.split=[0.7,0.15,0.15] data.split_seed="$seed" "${recipe[@]}" "${common[@]}" hydra.run.dir="$OUT/$name"
  step "eval_${name}_test" "$PY" eval.py ckpt="$OUT/$name/checkpoints/best.ckpt" hydra.run.dir="$OUT/eval_${name}_test"
done
summarize num_images accuracy balanced_accuracy recall precision auroc ece threshold unfamiliar_fraction
