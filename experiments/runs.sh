# Sourced by the *_runs.sh scripts, once they have set WEIGHTS and OUT: the project's commands
# run one after another, each logged to OUT/<name>.log and timed, then their metrics collected.
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
common=(model.weights_path="$WEIGHTS" data.cache_dir="$OUT/cache")

step() {  # name, command...: run it, log it, time it
  local name=$1; shift
  local start=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  echo "$name: $((SECONDS - start)) s"
}

recipe() {  # BLOCKS:AUGMENT[:unfolded] (e.g. 4:orient, 2:none, 4:none:unfolded): the finetune
  # overrides, in the array "recipe"; "unfolded" runs each BatchNorm as its own operator
  local blocks augment extra
  IFS=: read -r blocks augment extra <<<"$1"
  recipe=(unfreeze_blocks="$blocks")
  if [[ $augment == orient ]]; then
    recipe+=(data.augment.hflip=true data.augment.vflip=true data.augment.rot90=true)
  fi
  if [[ $extra == unfolded ]]; then
    recipe+=(callbacks.staged_unfreezing.fold_batchnorm=false)
  fi
}

summarize() {  # metric names: print them for every OUT/eval_*/metrics.json, write OUT/summary.json
  "$PY" - "$OUT" "$@" <<'PYEOF'
import json
import sys
from pathlib import Path

out, keys = Path(sys.argv[1]), sys.argv[2:]
summary = {}
for metrics in sorted(out.glob("eval_*/metrics.json")):
    values = json.loads(metrics.read_text())
    summary[metrics.parent.name] = {k: values[k] for k in keys}
    row = "  ".join(f"{k}={values[k]:.4f}" if isinstance(values[k], float) else f"{k}={values[k]}" for k in keys)
    print(f"{metrics.parent.name}: {row}")
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
PYEOF
}
