#!/usr/bin/env bash
# The embedded pipeline (prepare -> warmup -> train -> evaluate) once through the CUDA path, without DVC or
# MLflow (tracking and register off), timing each stage. Writes into "$OUT" (default ./gpu-run):
#   summary.json   environment (torch, transformers, GPU), per-stage seconds and exit codes, every metrics/*.json
#   pipeline.log   the stages' combined output
#   train.csv      plots/train.csv (one row per TARPO step)
# Usage: OUT=/some/dir scripts/gpu_pipeline.sh [--set KEY=VALUE ...]   (extra overrides go to every stage)
# Needs the Python packages the stages import (torch, transformers, peft, accelerate, safetensors, tokenizers,
# pydantic, pyyaml, typer, tqdm, math-verify, numpy); it stops with the missing ones listed if any is absent.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-run}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
LOG="$OUT/pipeline.log"
: >"$LOG"
SETS=(--set tracking.enabled=false --set register.enabled=false "$@")
TIMES="$OUT/.stage_times"
: >"$TIMES"

"$PY" - <<'EOF' || exit 2
import importlib.util, sys
need = ["torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "pydantic", "yaml", "typer",
        "tqdm", "math_verify", "numpy"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("gpu_pipeline.sh: missing Python packages: " + ", ".join(missing))
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_pipeline.sh: torch.cuda.is_available() is False; this script checks the CUDA path")
EOF

run_stage() {  # name, then the cli.py arguments
    local name="$1"; shift
    echo "=== $name: $PY cli.py $*" | tee -a "$LOG"
    local start end rc
    start=$(date +%s.%N)
    "$PY" cli.py "$@" >>"$LOG" 2>&1
    rc=$?
    end=$(date +%s.%N)
    echo "$name $rc $start $end" >>"$TIMES"
    echo "=== $name: exit $rc" | tee -a "$LOG"
    return "$rc"
}

# --no-resume: a checkpoint carried over from another machine must not be continued here
run_stage prepare prepare "${SETS[@]}" \
    && run_stage warmup warmup "${SETS[@]}" \
    && run_stage train train --no-resume "${SETS[@]}" \
    && run_stage evaluate evaluate "${SETS[@]}"
status=$?

[ -f plots/train.csv ] && cp plots/train.csv "$OUT/train.csv"
"$PY" - "$OUT" "$TIMES" "$status" <<'EOF'
import glob, json, os, sys
import torch, transformers

out, times, status = sys.argv[1], sys.argv[2], int(sys.argv[3])
stages = {}
for line in open(times):
    name, rc, start, end = line.split()
    stages[name] = {"exit_code": int(rc), "seconds": round(float(end) - float(start), 2)}
metrics = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob("metrics/*.json"))}
summary = {
    "status": "ok" if status == 0 else f"failed (exit {status})",
    "environment": {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    "stages": stages,
    "total_seconds": round(sum(s["seconds"] for s in stages.values()), 2),
    "metrics": metrics,
}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps({k: summary[k] for k in ("status", "environment", "stages", "total_seconds")}, indent=2))
EOF
rm -f "$TIMES"
exit "$status"
