#!/usr/bin/env bash
# Does bfloat16 change accuracy? experiment=finetune in float32 and in bfloat16 (the unfrozen
# blocks trained in autocast, trainer.precision=bf16-mixed; the frozen blocks' pass in
# bfloat16, inference.precision=bf16), and experiment=frozen with the frozen pass in bfloat16,
# each evaluated (float32) on photos it never saw.
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
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
common=(model.weights_path="$WEIGHTS" data.cache_dir="$OUT/cache")
bf16=(trainer.precision=bf16-mixed inference.precision=bf16)

step() {  # name, command...: run it, log it, time it
  local name=$1; shift
  local start=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  echo "$name: $((SECONDS - start)) s"
}

for precision in 32 bf16; do
  extra=(); [ "$precision" = bf16 ] && extra=("${bf16[@]}")
  for experiment in frozen finetune; do
    run=${experiment}600_$precision
    step "$run" "$PY" train.py experiment=$experiment data.root="$METU600" "${common[@]}" "${extra[@]}" hydra.run.dir="$OUT/$run"
    step "eval_${run}_metu_rest" "$PY" eval.py ckpt="$OUT/$run/checkpoints/best.ckpt" data.root="$METU_REST" hydra.run.dir="$OUT/eval_${run}_metu_rest"
  done
  run=sdnet_finetune_$precision
  step "$run" "$PY" train.py experiment=finetune data.root="$SDNET" "data.group_pattern='^(\d+)-'" \
    data.split=[0.7,0.15,0.15] "${common[@]}" "${extra[@]}" hydra.run.dir="$OUT/$run"
  step "eval_${run}_test" "$PY" eval.py ckpt="$OUT/$run/checkpoints/best.ckpt" hydra.run.dir="$OUT/eval_${run}_test"
done

"$PY" - "$OUT" <<'PYEOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
keys = ("num_images", "accuracy", "balanced_accuracy", "recall", "auroc", "ece", "threshold")
summary = {}
for metrics in sorted(out.glob("eval_*/metrics.json")):
    values = json.loads(metrics.read_text())
    summary[metrics.parent.name] = {k: values[k] for k in keys}
    row = "  ".join(f"{k}={values[k]:.4f}" if isinstance(values[k], float) else f"{k}={values[k]}" for k in keys)
    print(f"{metrics.parent.name}: {row}")
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
PYEOF
