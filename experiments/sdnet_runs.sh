#!/usr/bin/env bash
# SDNET walls with the project's commands: more unfrozen blocks, orientation augmentation.
# The same photo-grouped 70/15/15 hold-out as project_runs.sh's sdnet_finetune (k=2, no augmentation).
#
#   bash experiments/sdnet_runs.sh WEIGHTS SDNET OUT [BLOCKS ...]
set -euo pipefail
WEIGHTS=$1 SDNET=$2 OUT=$3
shift 3
source "$(dirname "$0")/runs.sh"
orientations=(data.augment.hflip=true data.augment.vflip=true data.augment.rot90=true)

for k in "${@:-4}"; do
  step "sdnet_k${k}_aug" "$PY" train.py experiment=finetune data.root="$SDNET" "data.group_pattern='^(\d+)-'" \
    data.split=[0.7,0.15,0.15] unfreeze_blocks="$k" "${orientations[@]}" "${common[@]}" hydra.run.dir="$OUT/sdnet_k${k}_aug"
  step "eval_sdnet_k${k}_aug_test" "$PY" eval.py ckpt="$OUT/sdnet_k${k}_aug/checkpoints/best.ckpt" hydra.run.dir="$OUT/eval_sdnet_k${k}_aug_test"
done
summarize num_images accuracy balanced_accuracy recall precision auroc ece threshold unfamiliar_fraction
