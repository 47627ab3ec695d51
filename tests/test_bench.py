"""bench/rollout.py and bench/train_step.py run end to end on `tiny` in a smoke configuration and write their JSON keys.

Figures are not asserted (they depend on the machine and its load); only that every number is there and positive.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_rollout_bench_smoke(tmp_path):
    out = tmp_path / "rollout.json"
    proc = run_script("rollout.py", "--model", "tiny", "--threads", "1", "--batch", "2", "--prompt-len", "8", "--new-tokens", "8",
                      "--long-tokens", "16", "--repeats", "1", "--profile", "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result) >= {"benchmark", "model", "settings", "machine", "timings", "long_timings", "ratios",
                           "ratios_best_of_repeats", "length_scaling", "marker_step_us", "profile_tarpo_top_tottime"}
    assert set(result["machine"]) >= {"cpu_count", "torch", "torch_threads", "load_average_start", "load_average_end"}
    variants = ("generate", "hard", "tarpo_bias2.2", "tarpo_bias0.0")
    for v in variants:
        assert result["timings"][v]["tokens_per_s"] > 0 and result["timings"][v]["per_step_ms"] > 0
    assert result["timings"]["hard"]["soft_ratio"] == 0.0
    assert set(result["ratios"]) == {"hard_over_generate", "tarpo_bias2.2_over_generate",
                                     "tarpo_bias0.0_over_generate", "tarpo_bias2.2_over_hard"}
    for v in ("generate", "tarpo_bias2.2"):
        assert result["length_scaling"][v]["long_over_short"] > 0
    assert result["settings"]["new_tokens"] == 8 and result["settings"]["long_tokens"] == 16
    for v in variants:  # CPU time beside wall time, every repeat
        assert len(result["timings"][v]["cpu_seconds"]) == 1 and result["timings"][v]["cpu"]["min"] > 0
    goal = result["goals"]["rollout_over_generate"]
    assert goal["threshold"] == 0.9 and goal["verdict"] in ("met", "missed", "inconclusive") and goal["n"] == 1
    assert "tokens/s" in proc.stdout and "ratio" in proc.stdout


@pytest.mark.slow
def test_train_step_bench_smoke(tmp_path):
    out = tmp_path / "train_step.json"
    proc = run_script("train_step.py", "--model", "tiny", "--threads", "1", "--prompts", "1", "--group", "2", "--new-tokens", "8",
                      "--repeats", "1", "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result) >= {"benchmark", "model", "settings", "machine", "ours", "trl", "ratios"}
    for mode in ("tarpo", "hard"):
        for key in ("rollout_seconds", "update_seconds", "step_seconds"):
            assert result["ours"][mode][key]["median"] > 0
    assert result["ours"]["hard"]["soft_ratio"] == 0.0
    assert set(result["ratios"]) >= {"tarpo_over_hard_step_seconds", "tarpo_over_hard_rollout_seconds",
                                     "tarpo_over_hard_update_seconds"}
    trl_installed = importlib.util.find_spec("trl") is not None and importlib.util.find_spec("datasets") is not None
    if trl_installed:  # a bench-only dependency (bench/requirements.txt): when present it must run
        assert result["trl"]["status"] == "ok", result["trl"]
        assert result["trl"]["step_seconds"]["median"] > 0
        assert "tarpo_over_trl_step_seconds" in result["ratios"]
    else:
        assert result["trl"]["status"] == "failed" and result["trl"]["stage"] == "import"
    assert "ratio tarpo_over_hard_step_seconds" in proc.stdout
    assert result["goals"]["tarpo_over_hard"]["threshold"] == 1.1
    assert result["ours"]["tarpo"]["cpu_step_seconds"]["min"] > 0
    if trl_installed:
        assert result["goals"]["tarpo_over_trl"]["n"] == 1 and result["trl"]["cpu_step_seconds"]["min"] > 0
