"""bench/gpu_recipe.py end to end on the CPU (tiny shape, same code path as the 7B GPU run), and its README section."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bench_stats import load as _load  # bench/NAME.py as a module

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_recipe_tiny_runs_the_trainer_and_writes_every_key(tmp_path):
    out = tmp_path / "gpu_recipe.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_recipe.py"), "--tiny", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == {} and result["skipped"] == {}, (result["errors"], result["skipped"])
    for key in ("step_seconds", "rollout_tokens_per_s", "tarpo_over_hard"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert "peak_memory_gib" in result  # None on the CPU: the trainer logs it on CUDA only
    tarpo, hard = result["train_tarpo"], result["train_hard"]
    assert [s["step"] for s in tarpo["steps"]] == [1, 2] and hard["mode"] == "hard"
    for phase in ("rollout_seconds", "reference_seconds", "forward_backward_seconds", "optimizer_seconds"):
        assert tarpo["warm"][phase] > 0, phase  # the trainer's own metrics, through cli.py train
    assert tarpo["steps"][0]["completion_length"] == 8  # forced full length on random weights
    assert tarpo["plan"]["update_gib"] > 0 and tarpo["plan"]["lines"][0].startswith("memory plan")
    fve, replay = result["fast_vs_eager"], result["replay"]
    assert fve["identical_prefix_share"] == 1.0  # fp32 on the CPU: the fast path equals the eager loop
    assert replay["max_abs_logp_diff_fp32"] <= 1e-4 and replay["fp32_within_1e_4"]
    assert "max_abs_logp_diff_bf16" in replay
    assert result["profile"]["decode_s_per_step"] > 0 and result["profile"]["by_kind_share"]
    assert result["bandwidth"]["copy_bandwidth_Bps"] > 0 and "decode_pct_of_floor" in result["bandwidth"]
    assert result["generate"]["dynamic_uncompiled"]["tokens_per_s"] > 0

    report = _load("report")
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(out, results / "gpu_recipe-cpu-tiny.json")
    assert "not measured yet" in "\n".join(report.gpu_recipe_lines(results))  # a CPU run is not a GPU figure
    result["meta"]["card"] = "NVIDIA TEST"
    (results / "gpu_recipe-test.json").write_text(json.dumps(result))
    section = "\n".join(report.gpu_recipe_lines(results))
    assert "| NVIDIA TEST |" in section and f"{result['tarpo_over_hard']:.3f}" in section
    assert "Decode time by kernel kind (NVIDIA TEST)" in section


def test_kernel_kinds_and_hash_reward():
    recipe = _load("gpu_recipe")
    assert recipe.kernel_kind("sm90_xmma_gemm_bf16bf16_bf16f32") == "gemm"
    assert recipe.kernel_kind("flash_fwd_splitkv_kernel") == "attention"
    assert recipe.kernel_kind("void at::native::radixSortKVInPlace") == "softmax_topk_sort"
    assert recipe.kernel_kind("triton_poi_fused_add_0") == "fused_triton"
    assert recipe.kernel_kind("something_new") == "other"
    reward = recipe.hash_reward_factory(kind="numeric")
    values = reward(["a", "b", "a"], ["1", "1", "1"])
    assert values[0] == values[2] and len(set(values)) == 2 and all(0 <= v < 1 for v in values)
    assert len(recipe.long_system_prompt(2048).split()) > 2048  # longer than the recipe's prompt budget


def test_readme_section_says_not_measured_without_a_gpu_file(tmp_path):
    report = _load("report")
    assert "not measured yet" in "\n".join(report.gpu_recipe_lines(tmp_path))


def test_a_missing_shape_directory_stops_with_the_command_that_makes_it(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_recipe.py"), "--model", str(tmp_path / "none"),
                           "--out", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "models make-shape qwen2.5-7b" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.json").exists()
