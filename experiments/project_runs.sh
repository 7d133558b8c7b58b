#!/usr/bin/env bash
# The trust figures of the README, measured with the project's own commands on real photos.
#
#   bash experiments/project_runs.sh WEIGHTS METU600 METU_REST SDNET SDNET100 SDNET_REST OUT
#
# WEIGHTS     an ImageNet MobileNetV2 state_dict (model.weights_path)
# METU600     300 crack + 300 intact METU photos (Positive/, Negative/) to train on
# METU_REST   the other METU photos, never trained on
# SDNET       the SDNET2018 walls dev set (crack/, no_crack/; tiles named <photo>-<tile>.jpg)
# SDNET100    50 + 50 labelled SDNET tiles of some photos (experiment=adapt)
# SDNET_REST  every tile of the other SDNET photos
# OUT         a new folder for the runs; summary.json and the logs go there
set -euo pipefail
WEIGHTS=$1 METU600=$2 METU_REST=$3 SDNET=$4 SDNET100=$5 SDNET_REST=$6 OUT=$7
source "$(dirname "$0")/runs.sh"

step frozen600 "$PY" train.py experiment=frozen data.root="$METU600" "${common[@]}" hydra.run.dir="$OUT/frozen600"
step finetune600 "$PY" train.py experiment=finetune data.root="$METU600" "${common[@]}" hydra.run.dir="$OUT/finetune600"
for run in frozen600 finetune600; do
  step "eval_${run}_metu_rest" "$PY" eval.py ckpt="$OUT/$run/checkpoints/best.ckpt" data.root="$METU_REST" hydra.run.dir="$OUT/eval_${run}_metu_rest"
done
step eval_frozen600_sdnet "$PY" eval.py ckpt="$OUT/frozen600/checkpoints/best.ckpt" data.root="$SDNET" hydra.run.dir="$OUT/eval_frozen600_sdnet"

# SDNET walls: the whole dev set, split by photo (hold-out), finetune; metrics on the test photos.
step sdnet_finetune "$PY" train.py experiment=finetune data.root="$SDNET" "data.group_pattern='^(\d+)-'" \
  data.split=[0.7,0.15,0.15] "${common[@]}" hydra.run.dir="$OUT/sdnet_finetune"
step eval_sdnet_test "$PY" eval.py ckpt="$OUT/sdnet_finetune/checkpoints/best.ckpt" hydra.run.dir="$OUT/eval_sdnet_test"

# Adapting the METU model to SDNET walls from 100 labelled tiles; evaluated on other photos.
step adapt "$PY" train.py experiment=adapt init_from="$OUT/frozen600/checkpoints/best.ckpt" \
  data.root="$SDNET100" data.cache_dir="$OUT/cache" hydra.run.dir="$OUT/adapt"
step eval_adapt_rest "$PY" eval.py ckpt="$OUT/adapt/checkpoints/best.ckpt" data.root="$SDNET_REST" hydra.run.dir="$OUT/eval_adapt_rest"

summarize num_images accuracy balanced_accuracy recall precision auroc ece threshold unfamiliar_fraction
