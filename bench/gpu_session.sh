#!/usr/bin/env bash
# The ONE script to run on a GPU machine, from the repository root:   OUT=/some/dir bash bench/gpu_session.sh
# Writes 6 files under "$OUT" (flat): env.txt, gpu_check.json, gpu_check.log, gpu.json, gpu.log, status.txt.
# Needs only torch / transformers / peft (no pydantic, pytest or network). Wall time <= ~7.7 minutes:
#   (a) nvidia-smi + versions            ~5 s
#   (b) CUDA fast-vs-eager equality      hard limit 100 s  (tiny fp32 model, inductor + CUDA graphs)
#   (c) bench/gpu.py at the 7B shape     hard limit 355 s  (internal budget 330 s; JSON after every section)
# A rerun of what failed fits the rest of a 15-minute device budget:
#   OUT=... python3 bench/gpu.py --out "$OUT/gpu_rerun.json" --only fast_hard --budget 200
# A failing step does not stop the next one; status.txt lists each exit code (124 = hit its time limit).
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

timeout -k 5 100 python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tail -c 4000000 | tee "$OUT/gpu_check.log"
echo "gpu_check ${PIPESTATUS[0]}" >> "$OUT/status.txt"

timeout -k 10 355 python3 bench/gpu.py --out "$OUT/gpu.json" --budget 330 2>&1 | tail -c 8000000 | tee "$OUT/gpu.log"
echo "gpu_bench ${PIPESTATUS[0]}" >> "$OUT/status.txt"

date -u >> "$OUT/status.txt"
cat "$OUT/status.txt"
! grep -qv -e " 0$" -e "UTC" "$OUT/status.txt"
