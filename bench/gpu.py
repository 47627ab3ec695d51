"""One-shot GPU benchmark: `generate` vs eager vs fast rollout over the full 512 steps, and the training step.

Model: Qwen2.5-7B shape with random bf16 weights built directly on the GPU (no download; random weights cost
the same time as real ones). Rollout shape: 64 sequences x 256 prompt tokens x 512 new tokens, forced full
length (the eos id is outside the vocabulary; `min_new_tokens` for `generate`).

Made so that one run cannot lose its results:
- sections run in order of importance (`generate` first, before anything compiles), each under its own time
  limit (SIGALRM) and inside the run's total budget: a section that fails, runs over, or no longer fits is
  recorded in `errors` / `skipped` and the next one starts;
- the JSON is written atomically after EVERY section (--out, default bench/results/gpu-<card>-<date>.json).

Timing: every variant decodes the same full 512 steps, timed end to end (prefill included) with
`tokens_per_s` = B x 512 / seconds; `decode_s_per_step` subtracts a 1-step run (prefill + one step).
The fast path is timed after a warm-up run that compiles all its length buckets; `generate` and the eager
loop after a 2-step warm-up. The floor counts what one decode step must read: the weights it uses (all but
the input embedding, of which it reads B rows) plus the KV cache at the mean context P + (T + 1) / 2.

Usage: python bench/gpu.py [--out PATH] [--budget SECONDS] [--only generate,fast_tarpo,...]
       python bench/gpu.py --tiny     (CPU, tiny config, < 60 s: tests the script itself)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tarpo.fast_rollout as fast_module  # noqa: E402
from bench.common import recorded_rollout  # noqa: E402
import tarpo.token_logprobs as token_logprobs_module  # noqa: E402
from tarpo.fast_rollout import fast_rollout, length_bucket  # noqa: E402
from tarpo.marker import MarkerMatcher  # noqa: E402
from tarpo.policy import HybridPolicy  # noqa: E402
from tarpo.rollout import Rollout, RolloutSettings, replay, rollout  # noqa: E402
from tarpo.router import Router  # noqa: E402

FULL = dict(hidden=3584, layers=28, heads=28, kv_heads=4, mlp=18944, vocab=152064,
            batch=64, prompt=256, new=512, check_steps=32,
            train_batch=8, train_tokens=768, lora_rank=32)
TINY = dict(hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, vocab=512,
            batch=4, prompt=16, new=32, check_steps=12,
            train_batch=2, train_tokens=48, lora_rank=4)
# HBM bandwidth from the data sheets, bytes/s; the most specific name first
BANDWIDTH = (("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12), ("H200", 4.8e12), ("A100", 2.0e12))
ROUTER_BIAS = (2.2, 0.0)  # p_soft ~ 10 %: soft steps actually happen in `tarpo` mode
# seconds per section on an H100 (the whole run fits in ~5.5 minutes; see bench/README.md). fast_hard compiles every
# length bucket of its own engine from nothing (fast_tarpo reuses the engine `check` already compiled): on the H200
# that took over 75 s, so it has 130.
LIMITS = dict(build=60, floor=10, generate=75, check=60, fast_tarpo=70, fast_hard=130, eager=45,
              logprob_memory=30, training=60)


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise SectionTimeout in the main thread after `seconds` (between Python bytecodes)."""
    def on_alarm(signum, frame):
        raise SectionTimeout(f"over its limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def build_policy(shape: dict, device, dtype) -> HybridPolicy:
    """Random Qwen2 model of the given shape, created on the device (cheap init: N(0, 0.02) in place)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                         intermediate_size=shape["mlp"], vocab_size=shape["vocab"], tie_word_embeddings=False,
                         max_position_embeddings=4096, attn_implementation="sdpa")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), torch.no_grad():
            model = Qwen2ForCausalLM(config)
            for name, param in model.named_parameters():  # random weights cost the same time as real ones
                if param.dim() > 1:
                    param.normal_(0.0, 0.02)
                else:
                    param.fill_(1.0 if "norm" in name else 0.0)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    router = Router(shape["hidden"], ROUTER_BIAS, generator=torch.Generator().manual_seed(0)).to(device)
    return HybridPolicy(model, router)


def synthetic_marker(vocab: int) -> MarkerMatcher:
    """Tokenizer-free marker: a synthetic vocabulary in which a few ids spell pieces of `####`."""
    texts = [f"t{i} " for i in range(vocab)]
    texts[5], texts[6], texts[7], texts[8] = "#", "##", "x#", "###y"
    return MarkerMatcher.from_token_texts("####", texts, vocab)


def settings_for(shape: dict, mode: str, new_tokens: int, marker) -> RolloutSettings:
    return RolloutSettings(max_new_tokens=new_tokens, eos_token_ids=(shape["vocab"] + 1,), pad_token_id=0,
                           marker=marker, temperature=0.5, soft_top_k=10, router_mode=mode)


def prompts(shape: dict, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, shape["vocab"], (shape["batch"], shape["prompt"]), generator=g)
    return ids.to(device), torch.ones_like(ids).to(device)


def full_length_timing(run, shape: dict, device, repeats: int = 1) -> dict:
    """Seconds for the full `new` steps (best of `repeats`) and for 1 step; tokens/s over the full run."""
    full_s = min(timed(lambda: run(shape["new"]), device) for _ in range(repeats))
    one_s = timed(lambda: run(1), device)
    decode = max(full_s - one_s, 1e-9) / (shape["new"] - 1)
    return {"steps": shape["new"], "full_run_s": full_s, "one_step_run_s": one_s, "s_per_step": full_s / shape["new"],
            "decode_s_per_step": decode, "tokens_per_s": shape["batch"] * shape["new"] / full_s,
            "decode_tokens_per_s": shape["batch"] / decode}


def cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def section_generate(ctx) -> dict:
    shape, device, model = ctx["shape"], ctx["device"], ctx["policy"].causal_lm
    ids, mask = ctx["prompts"]

    def run(n):
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.5, top_k=0, top_p=1.0,
                           max_new_tokens=n, min_new_tokens=n, pad_token_id=0, eos_token_id=shape["vocab"] - 1)

    run(2)  # warm-up
    return {**full_length_timing(run, shape, device), "note": "DynamicCache, sampling at T 0.5, no compile"}


def shared_history(eager, fast) -> torch.Tensor:
    """(B, T) bool: step t of a row saw the same inputs in both rollouts, i.e. every EARLIER step of that row chose
    the same token AND the same route (hard/soft). A soft/hard flip with an equal token changes the next input
    embedding, so comparing log-probs after it compares different contexts (the H200 run's 2.1 "difference")."""
    step_same = (eager.completion_ids == fast.completion_ids) & (eager.soft_mask == fast.soft_mask)
    before = torch.ones_like(step_same[:, :1])
    return torch.cat([before, step_same[:, :-1]], dim=1).long().cumprod(1).bool()


def section_check(ctx) -> dict:
    """Fast (compiled on CUDA) vs eager on the first steps of the real shape: same tokens or close log-probs."""
    shape, device, policy = ctx["shape"], ctx["device"], ctx["policy"]
    ids, mask = ctx["prompts"]
    steps = shape["check_steps"]
    eager = rollout(policy, ids, mask, settings=settings_for(shape, "tarpo", steps, ctx["marker"]),
                    generator=torch.Generator(device).manual_seed(1))
    start = time.perf_counter()
    fast = fast_rollout(policy, ids, mask, settings=settings_for(shape, "tarpo", shape["new"], ctx["marker"]),
                        generator=torch.Generator(device).manual_seed(1), step_limit=steps)
    first_call_s = time.perf_counter() - start
    same = (eager.completion_ids == fast.completion_ids)
    agree = shared_history(eager, fast) & same  # same inputs so far, and the same token's log-prob at this step
    diff = (eager.token_logp - fast.token_logp).abs()[agree]
    max_diff = float(diff.max()) if diff.numel() else 0.0
    tolerance = 1e-5 if ctx["dtype"] == torch.float32 else 2e-2
    return {"steps": steps, "identical_tokens": bool(same.all()), "token_agreement": float(same.float().mean()),
            "max_token_logp_diff_before_divergence": max_diff, "tolerance": tolerance,
            "compared_steps": int(agree.sum()), "route_agreement": float((eager.soft_mask == fast.soft_mask).float().mean()),
            "soft_steps_eager": int(eager.soft_mask.sum()), "soft_steps_fast": int(fast.soft_mask.sum()),
            "passed": bool(same.all()) or max_diff <= tolerance,
            "first_fast_call_s_incl_compile": round(first_call_s, 2)}


def engine_report(policy) -> list[dict]:
    """Compiled graphs per length bucket of every cached engine, and whether any step broke its graph."""
    report = []
    for key, engine in fast_module._ENGINE_CACHE.get(policy, {}).items():
        step = engine.step
        report.append({"batch": key[0], "prompt_len": key[1], "compiled": step is not None,
                       "graphs_per_bucket": dict(step.graphs) if step else {},
                       "graph_break_fallback": step.fell_back if step else None})
    return report


def section_fast(ctx, mode: str) -> dict:
    shape, device, policy = ctx["shape"], ctx["device"], ctx["policy"]
    ids, mask = ctx["prompts"]
    settings = settings_for(shape, mode, shape["new"], ctx["marker"])

    compile_error = None

    def run(n):
        return fast_rollout(policy, ids, mask, settings=settings, generator=torch.Generator(device).manual_seed(3),
                            step_limit=n, compile=None if compile_error is None else False)

    skips_before = cudagraph_skips()
    start = time.perf_counter()
    try:
        record = run(shape["new"])  # compiles every length bucket of this shape and mode once
    except SectionTimeout:
        raise
    except Exception:  # keep an uncompiled figure rather than none; the error is in the JSON
        compile_error = traceback.format_exc(limit=8)
        print(f"[fast_{mode}] compiled run FAILED, timing the uncompiled fast path:\n{compile_error}", file=sys.stderr)
        record = run(shape["new"])
    warm_s = time.perf_counter() - start
    result = full_length_timing(run, shape, device, repeats=2)
    skips = cudagraph_skips() - skips_before
    compiled = device.type == "cuda" and compile_error is None
    return {**result, "first_call_s_incl_compile": round(warm_s, 2), "compile_error": compile_error,
            "soft_ratio": float(record.soft_mask.float().mean()),
            "cudagraph_skips": skips, "cudagraphs_engaged": compiled and skips == 0,
            "engines": engine_report(policy)}


def section_eager(ctx) -> dict:
    shape, device, policy = ctx["shape"], ctx["device"], ctx["policy"]
    ids, mask = ctx["prompts"]

    def run(n):
        rollout(policy, ids, mask, settings=settings_for(shape, "tarpo", n, ctx["marker"]),
                generator=torch.Generator(device).manual_seed(2))

    run(2)
    return {**full_length_timing(run, shape, device), "note": "eager hybrid loop, DynamicCache"}


def section_logprob_memory(ctx) -> dict:
    """Output layer + token log-probs + entropy, forward and backward at the training shape: dense vs chunked."""
    shape, device, dtype, policy = ctx["shape"], ctx["device"], ctx["dtype"], ctx["policy"]
    fast_module._ENGINE_CACHE.pop(policy, None)  # the rollout engines' static caches are not needed any more
    policy.causal_lm.requires_grad_(False)  # as under LoRA: the output layer is frozen, gradients reach hidden
    if device.type == "cuda":
        torch.cuda.empty_cache()
    B, T, V = shape["train_batch"], shape["train_tokens"] * 2 // 3, shape["vocab"]
    g = torch.Generator(device).manual_seed(5)
    hidden = torch.randn(B, T, shape["hidden"], generator=g, device=device, dtype=dtype, requires_grad=True)
    ids = torch.randint(0, V, (B, T), generator=g, device=device)
    result = {"tokens": B * T, "vocab": V, "fp32_full_vocab_copy_gib": B * T * V * 4 / 2**30,
              "chunk_tokens": token_logprobs_module.CHUNK_TOKENS}
    for name, chunk in (("dense", None), ("chunked", token_logprobs_module.CHUNK_TOKENS)):
        def step():
            logp, _, entropy = token_logprobs_module.token_logprobs(hidden, policy.token_logits, ids, temperature=0.5,
                                                                 chunk_tokens=chunk)
            logp.sum().backward()
            hidden.grad = None

        step()
        row = {}
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        row["s"] = timed(step, device)
        if device.type == "cuda":
            row["peak_extra_gib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
        result[name] = row
    return result


def fake_rollout(shape: dict, device, soft: bool) -> Rollout:
    """A recorded rollout of train_batch x train_tokens (a third prompt, the rest completion), ~10 % soft."""
    prompt = shape["train_tokens"] // 3
    return recorded_rollout(shape["train_batch"], prompt, shape["train_tokens"] - prompt, shape["vocab"],
                            soft=soft).to(device)


def section_training(ctx) -> dict:
    """LoRA (all projections) + gradient checkpointing; one forward+backward through `replay`: plain, soft, and
    plain with the dense (pre-chunking) log-probs for the memory comparison."""
    from peft import LoraConfig, get_peft_model

    shape, device, policy = ctx["shape"], ctx["device"], ctx["policy"]
    model = policy.backbone
    params = sum(p.numel() for p in model.parameters())
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = get_peft_model(model, LoraConfig(r=shape["lora_rank"], lora_alpha=2 * shape["lora_rank"],
                                            target_modules=targets, lora_dropout=0.0))
    lora.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora.train()
    trained = HybridPolicy(lora, policy.router)
    settings = settings_for(shape, "tarpo", 1, None)
    result = {"lora_rank": shape["lora_rank"], "tokens": shape["train_batch"] * shape["train_tokens"]}
    chunk_default = token_logprobs_module.CHUNK_TOKENS
    for name, soft, chunk in (("plain", False, chunk_default), ("soft", True, chunk_default),
                              ("plain_dense_logprobs", False, None)):
        record = fake_rollout(shape, device, soft)
        token_logprobs_module.CHUNK_TOKENS = chunk

        def micro_step():
            out = replay(trained, record, settings=settings)
            (out.token_logp.mean() + out.router_logp.mean()).backward()
            trained.zero_grad(set_to_none=True)

        try:
            micro_step()  # warm-up
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seconds = min(timed(micro_step, device) for _ in range(2))
        finally:
            token_logprobs_module.CHUNK_TOKENS = chunk_default
        result[name] = {"s_per_micro_step": seconds}
        if device.type == "cuda":
            result[name]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        save(ctx)  # partial rows survive a time-out in the next variant
    result["effective_tflops_plain"] = 6 * params * result["tokens"] / result["plain"]["s_per_micro_step"] / 1e12
    result["soft_over_plain"] = result["soft"]["s_per_micro_step"] / result["plain"]["s_per_micro_step"]
    return result


def bandwidth_floor(ctx, card: str) -> dict:
    """Bytes one decode step must read at least: the weights it uses + the KV cache at the mean context."""
    shape, policy = ctx["shape"], ctx["policy"]
    model = policy.causal_lm
    all_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    tied = embedding.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    weight_bytes = all_bytes - (0 if tied else embedding.numel() * embedding.element_size())
    head_dim = shape["hidden"] // shape["heads"]
    element = torch.finfo(ctx["dtype"]).bits // 8
    kv_per_token = 2 * shape["layers"] * shape["kv_heads"] * head_dim * element
    P, T, B = shape["prompt"], shape["new"], shape["batch"]
    mean_context = P + (T + 1) / 2
    kv_bytes = kv_per_token * B * mean_context
    buckets = [length_bucket(P + t + 1, P + T) for t in range(T)]
    bandwidth = next((v for name, v in BANDWIDTH if name in card), None)
    floor = {"weight_bytes_read": weight_bytes, "input_embedding_excluded": not tied,
             "kv_bytes_per_token": kv_per_token, "mean_context": mean_context, "kv_bytes_mean_context": kv_bytes,
             "kv_bytes_mean_bucket_actual": kv_per_token * B * sum(buckets) / T,
             "assumed_bandwidth_Bps": bandwidth,
             "formula": "s_per_step = (weight_bytes_read + 2*layers*kv_heads*head_dim*bytes*B*(P+(T+1)/2)) / bandwidth",
             "bandwidth_source": f"data sheet for {card}" if bandwidth else "unknown card: no floor"}
    if bandwidth:
        floor["s_per_step"] = (weight_bytes + kv_bytes) / bandwidth
        floor["tokens_per_s"] = B / floor["s_per_step"]
    print(f"floor: ({weight_bytes / 1e9:.2f} GB weights + 2*{shape['layers']}*{shape['kv_heads']}*{head_dim}*"
          f"{element} B*{B}*{mean_context:.1f} = {kv_bytes / 1e9:.2f} GB KV) / "
          f"{(bandwidth or float('nan')) / 1e12:.2f} TB/s = {1e3 * floor.get('s_per_step', float('nan')):.2f} ms/step")
    return floor


def summarise(result: dict, verbose: bool = False) -> None:
    """Add ratios and % of the floor to the result; with `verbose`, print one line per figure."""
    timings, floor = result["timings"], result["bandwidth_floor"]
    for t in timings.values():
        if "decode_s_per_step" in t and floor.get("s_per_step"):
            t["decode_pct_of_floor"] = 100 * floor["s_per_step"] / t["decode_s_per_step"]
    ratios = {}

    def ratio(name, a, b):
        if "tokens_per_s" in timings.get(a, {}) and "tokens_per_s" in timings.get(b, {}):
            ratios[name] = timings[a]["tokens_per_s"] / timings[b]["tokens_per_s"]

    ratio("fast_tarpo_over_generate", "fast_tarpo", "generate")
    ratio("fast_tarpo_over_eager", "fast_tarpo", "eager")
    ratio("fast_tarpo_over_fast_hard", "fast_tarpo", "fast_hard")
    if "soft_over_plain" in result.get("training", {}):
        ratios["training_soft_over_plain"] = result["training"]["soft_over_plain"]
    result["ratios"] = ratios
    if not verbose:
        return
    for name, t in timings.items():
        if "tokens_per_s" in t:
            pct = f"  decode {t['decode_pct_of_floor']:5.1f}% of floor" if "decode_pct_of_floor" in t else ""
            print(f"{name:12s} {1e3 * t['s_per_step']:9.2f} ms/step {t['tokens_per_s']:10.0f} tokens/s "
                  f"(decode only {t['decode_tokens_per_s']:.0f}){pct}")
    for name, value in ratios.items():
        print(f"{name:28s} {value:.3f}")


def write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2, default=str)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save(ctx, verbose: bool = False) -> None:
    result = ctx["result"]
    summarise(result, verbose)
    result["meta"]["elapsed_s"] = round(time.perf_counter() - ctx["started"], 1)
    write_atomic(ctx["out"], result)


class WarningLog(logging.Handler):
    """Keeps the warnings of tarpo.fast_rollout (recompiles, graph breaks) for the JSON."""

    def __init__(self, into: list):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record):
        self.into.append(record.getMessage())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (tests the script, < 60 s)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/gpu-<card>-<date>.json)")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds for the whole run; sections that no "
                        "longer fit are skipped and recorded")
    parser.add_argument("--only", default="", help="comma-separated sections to run (default all)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    shape, dtype = (TINY, torch.float32) if args.tiny or device.type == "cpu" else (FULL, torch.bfloat16)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu-tiny"
    slug = "".join(c if c.isalnum() else "-" for c in card).strip("-").lower()
    out = args.out or Path(__file__).resolve().parent / "results" / f"gpu-{slug}-{dt.date.today().isoformat()}.json"
    import transformers

    result = {"meta": {"card": card, "date": dt.datetime.now().isoformat(timespec="seconds"),
                       "torch": torch.__version__, "transformers": transformers.__version__,
                       "dtype": str(dtype), "shape": shape, "router_init_bias": ROUTER_BIAS, "budget_s": args.budget,
                       "timing_method": "full-length runs timed end to end; decode = full minus a 1-step run"},
              "check": {}, "timings": {}, "training": {}, "logprob_memory": {}, "bandwidth_floor": {},
              "errors": {}, "skipped": {}, "section_s": {}, "warnings": []}
    logging.getLogger("tarpo.fast_rollout").addHandler(WarningLog(result["warnings"]))
    print(f"card {card}, dtype {dtype}, shape {shape}", flush=True)
    ctx = {"shape": shape, "device": device, "dtype": dtype, "result": result, "out": out, "started": started}
    only = {name for name in args.only.split(",") if name}

    def guarded(name, fn, store):
        remaining = args.budget - (time.perf_counter() - started)
        limit = min(LIMITS[name] * (4 if args.tiny else 1), remaining)
        if (only and name not in only and name != "build") or remaining < min(5, LIMITS[name]):
            result["skipped"][name] = "not selected" if only and name not in only else f"{remaining:.0f} s left"
            save(ctx)
            return
        t0 = time.perf_counter()
        try:
            with time_limit(limit):
                store(fn())
        except Exception:  # one failed or slow section must not hide the others
            result["errors"][name] = traceback.format_exc(limit=8)
            print(f"[{name}] FAILED:\n{result['errors'][name]}", file=sys.stderr, flush=True)
        result["section_s"][name] = round(time.perf_counter() - t0, 1)
        save(ctx)
        print(f"[{name}] {time.perf_counter() - t0:.1f} s (total {time.perf_counter() - started:.1f} s)", flush=True)

    guarded("build", lambda: ctx.update(policy=build_policy(shape, device, dtype), marker=synthetic_marker(
        shape["vocab"]).to(device), prompts=prompts(shape, device)), lambda _: None)
    if "policy" in ctx:
        guarded("floor", lambda: bandwidth_floor(ctx, card), lambda v: result.__setitem__("bandwidth_floor", v))
        guarded("generate", lambda: section_generate(ctx), lambda v: result["timings"].__setitem__("generate", v))
        guarded("check", lambda: section_check(ctx), lambda v: result.__setitem__("check", v))
        for name, fn in (("fast_tarpo", lambda: section_fast(ctx, "tarpo")),
                         ("fast_hard", lambda: section_fast(ctx, "hard")), ("eager", lambda: section_eager(ctx))):
            guarded(name, fn, lambda v, name=name: result["timings"].__setitem__(name, v))
        guarded("logprob_memory", lambda: section_logprob_memory(ctx),
                lambda v: result.__setitem__("logprob_memory", v))
        guarded("training", lambda: section_training(ctx), lambda v: result.__setitem__("training", v))
    result["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    save(ctx, verbose=True)
    print(f"wrote {out} ({result['meta']['total_s']} s, {len(result['errors'])} failed, "
          f"{len(result['skipped'])} skipped sections)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
