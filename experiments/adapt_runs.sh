#!/usr/bin/env bash
# experiment=adapt from a trained checkpoint to a new surface, evaluated on the surface's other photos
# before (the checkpoint as it is) and after.
#
#   bash experiments/adapt_runs.sh WEIGHTS INIT_CKPT LABELLED OTHERS OUT NAME [OVERRIDES ...]
#
# INIT_CKPT   a trained best.ckpt (of another surface)
# LABELLED    about 50 + 50 labelled photos of the new surface
# OTHERS      the surface's other photos, never trained on
set -euo pipefail
WEIGHTS=$1 INIT=$2 LABELLED=$3 OTHERS=$4 OUT=$5 NAME=$6
shift 6
source "$(dirname "$0")/runs.sh"

step "eval_${NAME}_before" "$PY" eval.py ckpt="$INIT" data.root="$OTHERS" hydra.run.dir="$OUT/eval_${NAME}_before"
step "$NAME" "$PY" train.py experiment=adapt init_from="$INIT" data.root="$LABELLED" "${common[@]}" "$@" hydra.run.dir="$OUT/$NAME"
step "eval_$NAME" "$PY" eval.py ckpt="$OUT/$NAME/checkpoints/best.ckpt" data.root="$OTHERS" hydra.run.dir="$OUT/eval_$NAME"
summarize num_images accuracy balanced_accuracy recall precision auroc ece threshold unfamiliar_fraction
