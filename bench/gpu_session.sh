#!/usr/bin/env bash
# The ONE script to run on a GPU machine, from the repository root:   OUT=/some/dir bash bench/gpu_session.sh
# Needs the 7B shape directory carried along (made where the offline tokenizer is, ~11 MB, git-ignored):
#   python cli.py models make-shape qwen2.5-7b models/shape-qwen2.5-7b      # then carry models/shape-qwen2.5-7b
# Writes under "$OUT" (flat): env.txt, gpu_check.json/.log, gpu_recipe.json/.log, status.txt. Needs torch /
# transformers / peft / accelerate and the stage packages (pydantic, yaml, typer, tqdm; no network). Wall time
# <= ~8.9 minutes:
#   (a) nvidia-smi + versions                 ~5 s
#   (b) CUDA fast-vs-eager equality           hard limit 90 s   (tiny fp32 model, inductor + CUDA graphs)
#   (c) bench/gpu_recipe.py at the 7B shape   hard limit 440 s  (internal budget 420 s; JSON after every section):
#       cli.py train with the paper recipe (tarpo 3 steps, hard 2), bf16 agreement, profiler, bandwidth, generate
# GPU_SESSION_DECODE=1 adds (d) the older decode bench bench/gpu.py (hard limit 355 s): then the call exceeds 10 min,
# so run it as a second call:   OUT=... python3 bench/gpu.py --out "$OUT/gpu.json" --budget 330
# A failing step does not stop the next one; status.txt lists each exit code (124 = hit its time limit).
# Copy gpu_recipe.json to bench/results/gpu_recipe-<card>-<date>.json and run `python bench/report.py`.
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.."

{
  date -u
  nvidia-smi
  python3 -c 'import sys, torch, transformers, accelerate, peft
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "accelerate", accelerate.__version__, "peft", peft.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")'
  git log --oneline -1 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
echo "env $?" > "$OUT/status.txt"

timeout -k 5 90 python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tail -c 4000000 | tee "$OUT/gpu_check.log"
echo "gpu_check ${PIPESTATUS[0]}" >> "$OUT/status.txt"

timeout -k 10 440 python3 bench/gpu_recipe.py --model "${SHAPE_DIR:-models/shape-qwen2.5-7b}" --out "$OUT/gpu_recipe.json" \
    --budget 420 2>&1 | tail -c 8000000 | tee "$OUT/gpu_recipe.log"
echo "gpu_recipe ${PIPESTATUS[0]}" >> "$OUT/status.txt"

if [ "${GPU_SESSION_DECODE:-0}" = "1" ]; then
  timeout -k 10 355 python3 bench/gpu.py --out "$OUT/gpu.json" --budget 330 2>&1 | tail -c 8000000 | tee "$OUT/gpu.log"
  echo "gpu_bench ${PIPESTATUS[0]}" >> "$OUT/status.txt"
fi

date -u >> "$OUT/status.txt"
cat "$OUT/status.txt"
! grep -qv -e " 0$" -e "UTC" "$OUT/status.txt"
