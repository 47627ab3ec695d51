"""CUDA equality check of the compiled fast rollout (inductor + CUDA graphs) against the eager loop.

Standalone (no pytest, no pydantic): the GPU machines have only torch / transformers / peft. A tiny random
model in fp32 on CUDA; each case compares the full record of `fast_rollout` (compiled, CUDA graphs) with
`tarpo.rollout.rollout` for the same seed, exactly as tests/test_fast_rollout.py does on CPU, and checks that
the step compiled once per length bucket, without graph breaks or CUDA-graph skips, and that a second
rollout of the same shape compiles nothing. Results go to --out after every case; exit 1 if any case fails.

Usage: python3 bench/gpu_check.py --out gpu_check.json
       python bench/gpu_check.py --cpu --out x.json   (dynamo "eager" backend on CPU: tests this script)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tarpo.fast_rollout as fast_module  # noqa: E402
from tarpo.fast_rollout import fast_rollout  # noqa: E402
from tarpo.marker import MarkerMatcher  # noqa: E402
from tarpo.policy import HybridPolicy  # noqa: E402
from tarpo.rollout import RolloutSettings, rollout  # noqa: E402
from tarpo.router import Router  # noqa: E402

VOCAB, EOS = 64, (1, 2, 3)
EXACT = ("completion_ids", "completion_mask", "soft_mask", "decision_mask", "topk_ids", "soft_counts")
CLOSE = ("token_logp", "router_logp", "topk_weights")
CASES = [  # (name, architecture, settings overrides, prompt_multiple)
    ("tarpo_marker_eos_2_buckets", "qwen2", dict(max_latent_steps=6, max_new_tokens=20), 1),  # lengths 16, 29
    ("hard_padded_prompts", "llama", dict(router_mode="hard"), None),
    ("soft_fixed_top_k_top_p", "qwen2", dict(router_mode="soft-fixed", soft_probability=0.4, top_k=20, top_p=0.9,
                                             temperature=0.7), None),
]


def tiny_policy(architecture: str, device) -> HybridPolicy:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  attn_implementation="sdpa")
    model = (Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common)) if architecture == "qwen2"
             else LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **common)))
    with torch.no_grad():  # eos and marker pieces likely: rows stop at mixed steps, the marker rule binds
        head = model.get_output_embeddings().weight
        head[1:4] *= 2.5
        head[5:9] *= 4.0
    router = Router(32, (-0.5, 0.0), generator=torch.Generator().manual_seed(0))
    return HybridPolicy(model.eval(), router).to(device)


def mixed_prompts(batch=6, width=9):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, VOCAB, (batch, width), generator=g)
    mask = torch.ones_like(ids)
    for i in range(batch):
        mask[i, :min(i, width - 3)] = 0
        ids[i, :min(i, width - 3)] = 0
    return ids, mask


def settings(**overrides) -> RolloutSettings:
    texts = [f"w{i} " for i in range(VOCAB)]
    texts[5], texts[6], texts[7], texts[8] = "#", "##", "x#", "###y"
    base = dict(max_new_tokens=24, eos_token_ids=EOS, pad_token_id=0, temperature=1.0, soft_top_k=5,
                marker=MarkerMatcher.from_token_texts("####", texts))
    base.update(overrides)
    return RolloutSettings(**base)


def compare(eager, fast) -> dict:
    report = {"steps": int(eager.completion_ids.shape[1]), "fast_steps": int(fast.completion_ids.shape[1]),
              "soft_steps": int(eager.soft_mask.sum()), "stop_reasons_equal": eager.stop_reason == fast.stop_reason}
    same_shape = eager.completion_ids.shape == fast.completion_ids.shape
    report["exact_equal"] = {name: same_shape and bool(torch.equal(getattr(eager, name), getattr(fast, name)))
                             for name in EXACT}
    report["max_abs_diff"] = {name: float((getattr(eager, name) - getattr(fast, name)).abs().max())
                              if same_shape else None for name in CLOSE}
    report["passed"] = (same_shape and all(report["exact_equal"].values()) and report["stop_reasons_equal"]
                        and all(d is not None and d <= 1e-5 for d in report["max_abs_diff"].values()))
    return report


def run_case(name, architecture, overrides, multiple, device, compile) -> dict:
    from torch._dynamo.utils import counters

    policy = tiny_policy(architecture, device)
    s = settings(**overrides)
    ids, mask = mixed_prompts()
    eager = rollout(policy, ids, mask, settings=s, generator=torch.Generator(device).manual_seed(2))
    skips = counters["inductor"]["cudagraph_skips"]
    start = time.perf_counter()
    fast = fast_rollout(policy, ids, mask, settings=s, generator=torch.Generator(device).manual_seed(2),
                        prompt_multiple=multiple, compile=compile)
    report = {"case": name, "first_call_s": round(time.perf_counter() - start, 2), **compare(eager, fast)}
    engine = next(iter(fast_module._ENGINE_CACHE[policy].values()))
    graphs_before = dict(engine.step.graphs)
    again = fast_rollout(policy, ids, mask, settings=s, generator=torch.Generator(device).manual_seed(2),
                         prompt_multiple=multiple, compile=compile)
    report.update(graphs_per_bucket=graphs_before, recompiled_on_second_call=dict(engine.step.graphs) != graphs_before,
                  second_call_equal=bool(torch.equal(again.completion_ids, fast.completion_ids)),
                  graph_break_fallback=engine.step.fell_back, mode=engine.step.mode,
                  cudagraph_skips=int(counters["inductor"]["cudagraph_skips"] - skips))
    report["passed"] = bool(report["passed"] and not report["recompiled_on_second_call"]
                            and report["second_call_equal"] and engine.step.fell_back is None
                            and report["cudagraph_skips"] == 0 and set(graphs_before.values()) == {1})
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu", action="store_true", help="CPU with dynamo's eager backend (tests the script)")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    device, compile = (torch.device("cpu"), "eager") if args.cpu else (torch.device("cuda"), True)
    results = {"device": "cpu" if args.cpu else torch.cuda.get_device_name(device), "torch": torch.__version__,
               "cases": []}
    for name, architecture, overrides, multiple in CASES:
        try:
            report = run_case(name, architecture, overrides, multiple, device, compile)
        except Exception:
            report = {"case": name, "passed": False, "error": traceback.format_exc(limit=10)}
        results["cases"].append(report)
        print(json.dumps(report), flush=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, args.out)
    failed = [c["case"] for c in results["cases"] if not c["passed"]]
    print(f"gpu_check: {len(results['cases']) - len(failed)} passed, failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
