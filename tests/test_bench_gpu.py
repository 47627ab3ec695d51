"""bench/gpu.py runs end to end in its --tiny CPU mode and writes the documented JSON keys."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_tiny_writes_results(tmp_path):
    out = tmp_path / "gpu-tiny.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result) >= {"meta", "check", "timings", "training", "bandwidth_floor", "ratios", "errors"}
    assert result["errors"] == {}, result["errors"]
    assert result["check"]["passed"] and result["check"]["identical_tokens"]
    for name in ("generate", "eager", "fast_tarpo", "fast_hard"):  # timings are reported, never judged here
        assert isinstance(result["timings"][name]["tokens_per_s"], float)
    assert set(result["ratios"]) >= {"fast_tarpo_over_generate", "fast_tarpo_over_fast_hard",
                                     "training_soft_over_plain"}
    assert {"s_per_micro_step"} <= set(result["training"]["plain"]) and {"s_per_micro_step"} <= set(result["training"]["soft"])
    assert result["meta"]["card"] == "cpu-tiny" and "tokens/s" in proc.stdout
