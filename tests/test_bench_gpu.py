"""bench/gpu.py: runs end to end in --tiny CPU mode, writes its JSON after every section, and survives
failing or slow sections (recorded, the rest still run)."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: F401  (import cost outside the timed tests)

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_bench_tiny_writes_results(tmp_path):
    out = tmp_path / "gpu-tiny.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result) >= {"meta", "check", "timings", "training", "logprob_memory", "bandwidth_floor", "ratios",
                           "errors", "skipped"}
    assert result["errors"] == {} and result["skipped"] == {}, (result["errors"], result["skipped"])
    assert result["check"]["passed"] and result["check"]["identical_tokens"]
    for name in ("generate", "eager", "fast_tarpo", "fast_hard"):  # timings are reported, never judged here
        timing = result["timings"][name]
        assert timing["steps"] == result["meta"]["shape"]["new"]  # every variant over the same full length
        assert isinstance(timing["tokens_per_s"], float) and timing["decode_s_per_step"] > 0
    assert set(result["ratios"]) >= {"fast_tarpo_over_generate", "fast_tarpo_over_fast_hard",
                                     "training_soft_over_plain"}
    for row in ("plain", "soft", "plain_dense_logprobs"):
        assert "s_per_micro_step" in result["training"][row]
    assert {"dense", "chunked"} <= set(result["logprob_memory"])
    assert "formula" in result["bandwidth_floor"] and result["bandwidth_floor"]["input_embedding_excluded"]
    assert result["meta"]["card"] == "cpu-tiny" and "tokens/s" in proc.stdout


def test_bandwidth_floor_counts_weights_read_and_mean_kv():
    gpu = load_gpu_bench()

    class FakeModel:
        def __init__(self):
            import torch
            self.embed, self.head, self.layer = torch.zeros(10, 4), torch.zeros(10, 4), torch.zeros(4, 4)

        def parameters(self):
            return [self.embed, self.head, self.layer]

        def get_input_embeddings(self):
            return type("E", (), {"weight": self.embed})()

        def get_output_embeddings(self):
            return type("E", (), {"weight": self.head})()

    import torch
    shape = dict(hidden=4, heads=2, kv_heads=1, layers=3, prompt=5, new=4, batch=2)
    ctx = {"shape": shape, "dtype": torch.bfloat16, "policy": type("P", (), {"causal_lm": FakeModel()})()}
    floor = gpu.bandwidth_floor(ctx, "NVIDIA H100 80GB HBM3")
    assert floor["weight_bytes_read"] == (40 + 16) * 4  # fp32 tensors: head + layer, not the input embedding
    kv = 2 * 3 * 1 * 2 * 2 * 2 * (5 + 2.5)  # 2 (K,V) x layers x kv_heads x head_dim x bf16 x B x mean context
    assert floor["kv_bytes_mean_context"] == kv
    assert floor["s_per_step"] == pytest.approx(((40 + 16) * 4 + kv) / 3.35e12)
    assert gpu.bandwidth_floor(ctx, "NVIDIA H100 PCIe")["assumed_bandwidth_Bps"] == 2.0e12


def test_json_after_every_section_and_failures_or_timeouts_do_not_stop_the_run(tmp_path, monkeypatch):
    gpu = load_gpu_bench()
    written = []
    real_write = gpu.write_atomic
    monkeypatch.setattr(gpu, "write_atomic", lambda path, payload: (
        written.append((set(payload["errors"]), set(payload["timings"]))), real_write(path, payload)))

    def failing(ctx):
        raise RuntimeError("boom")

    def slow(ctx):
        time.sleep(30)

    monkeypatch.setattr(gpu, "section_generate", failing)
    monkeypatch.setattr(gpu, "section_check", slow)
    monkeypatch.setattr(gpu, "LIMITS", {**gpu.LIMITS, "check": 0.25})  # x4 in --tiny: 1 s
    out = tmp_path / "r.json"
    started = time.perf_counter()
    assert gpu.main(["--tiny", "--out", str(out), "--only", "generate,check,eager"]) == 0
    assert time.perf_counter() - started < 25
    result = json.loads(out.read_text())
    assert "boom" in result["errors"]["generate"] and "over its limit" in result["errors"]["check"]
    assert "tokens_per_s" in result["timings"]["eager"]
    assert result["skipped"]["fast_tarpo"] == "not selected"
    # the file existed after the failure, before the next section ran
    assert ({"generate"}, set()) in written and ({"generate", "check"}, set()) in written


def test_sections_that_no_longer_fit_the_budget_are_skipped(tmp_path):
    gpu = load_gpu_bench()
    out = tmp_path / "r.json"
    assert gpu.main(["--tiny", "--out", str(out), "--budget", "0"]) == 0
    result = json.loads(out.read_text())
    assert "build" in result["skipped"] and "left" in result["skipped"]["build"] and not result["timings"]


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu_with_dynamo(tmp_path):
    """bench/gpu_check.py (the CUDA equality check of the session script) in its --cpu mode: same logic,
    dynamo's eager backend instead of inductor + CUDA graphs."""
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--cpu", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert len(cases) == 3 and all(case["passed"] for case in cases)
    assert cases[0]["graphs_per_bucket"] == {"16": 1, "29": 1} and not cases[0]["recompiled_on_second_call"]


def test_fast_vs_eager_compares_only_steps_with_the_same_history():
    """A step is compared only when every earlier step of its row took the same token and the same route: the step
    after a soft/hard flip has another input even when the tokens agree."""
    from types import SimpleNamespace

    import torch

    from bench.gpu import shared_history

    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    eager = SimpleNamespace(completion_ids=ids, soft_mask=torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool))
    fast = SimpleNamespace(completion_ids=torch.tensor([[5, 9, 7, 8], [5, 6, 7, 8]]),
                           soft_mask=torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))
    # row 0: the token differs at step 1 -> steps 0 and 1 share history (step 1's own token may differ), 2+ do not
    # row 1: the route differs at step 1 -> steps 0, 1 compared; steps 2, 3 had another input
    assert shared_history(eager, fast).tolist() == [[True, True, False, False], [True, True, False, False]]
    assert shared_history(eager, eager).all()
