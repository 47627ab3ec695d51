"""The paper recipe through the real trainer (`cli.py train`) at 7B shape on one GPU, and the GPU numerics checks.

Model: a `models make-shape qwen2.5-7b DIR` directory (published config, real Qwen2 tokenizer, seeded random bf16
weights built on the GPU at load). Recipe: the model's own (LoRA r32/a64, lr 5e-6, KL 0.005, grad clip 0.1,
gradient checkpointing, GSM8K's 8 prompts x G 4, micro-batch 8), with prompts made `rollout.max_prompt_tokens`
long (a long system prompt, left-truncated to 1024 tokens), completions forced to full length by random weights
(eos is almost never drawn), synthetic problems (no hub), no tracking, no held-out evaluation, and a hash-of-text
reward (bench only: random weights never answer right, and a 0/1 reward would give zero advantages).

Sections (each under its own time limit and the run's --budget; the JSON is rewritten after every one):
  train_tarpo / train_hard  `cli.py prepare` + `cli.py train` in a child process (router.mode tarpo / hard);
      per step from the trainer's own metrics (checkpoints/steps.jsonl): rollout, reference, forward+backward,
      optimizer and step seconds, peak GPU memory, rollout tokens/s, soft ratio; and the memory plan of the same
      config (tarpo.memory_plan) beside the measured peaks. Step 1 includes the rollout's compiles: `warm` is the
      median of the later steps.
  agreement  bf16 at the 7B shape: fast (compiled) vs eager rollout from the same seed (identical-prefix share:
      steps until the first token or route divergence over all steps; max |d log-prob| before it), and rollout vs
      training-forward (`replay`) log-probs on the recorded rollout (max, p99); the same replay check in fp32 on a
      small model, where the 1e-4 bound applies.
  profile  torch.profiler over 16 warm decode steps of the fast engine, device time grouped by kernel kind.
  bandwidth  device-to-device copy bandwidth, and the decode step's % of the floor (weights + KV read per step)
      at that bandwidth and at the data-sheet one.
  generate  `generate` with a compiled static cache (the fair peer) beside the uncompiled DynamicCache one.

Usage: python bench/gpu_recipe.py --model DIR [--out PATH] [--budget 420]
       python bench/gpu_recipe.py --tiny        (CPU, tiny shape made on the fly: tests the script itself)
Writes bench/results/gpu_recipe-<card>-<date>.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu import BANDWIDTH, shared_history, sync, time_limit, timed, write_atomic  # noqa: E402

# the paper recipe's lengths and batch come from the model's recipe; only the run length and the data are ours
FULL = dict(steps_tarpo=3, steps_hard=2, train_size=64, check_batch=64, check_prompt=256, check_steps=32,
            profile_steps=16, generate_new=64, small_model=dict(hidden_size=256, intermediate_size=768,
                                                                 num_hidden_layers=4))
TINY = dict(steps_tarpo=2, steps_hard=2, train_size=16, check_batch=4, check_prompt=16, check_steps=8,
            profile_steps=4, generate_new=8, small_model=dict(hidden_size=64, intermediate_size=128,
                                                              num_hidden_layers=2),
            sets=["rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_prompt_tokens=24",
                  "rollout.max_new_tokens=8", "train.micro_batch_size=2", "runtime.threads=1"])
LIMITS = dict(train_tarpo=200, train_hard=140, agreement=120, profile=40, bandwidth=15, generate=90)
PHASES = ("rollout_seconds", "reference_seconds", "forward_backward_seconds", "optimizer_seconds", "step_seconds",
          "peak_memory_gib", "rollout_peak_memory_gib", "tokens_per_second", "soft_ratio", "completion_length")
KINDS = (("gemm", r"gemm|matmul|cutlass|sm\d\d_xmma|ampere|hopper|cublas|mm_|addmm|linear"),
         ("attention", r"flash|fmha|attention|sdpa|efficient"),
         ("softmax_topk_sort", r"softmax|topk|sort|radix|max_|argmax|logsumexp"),
         ("sampling_rng", r"philox|uniform|random|exponential|distribution"),
         ("copy_index_kv", r"copy|cat|index|scatter|gather|memcpy|memset|fill"),
         ("fused_triton", r"triton"),
         ("elementwise_norm", r"elementwise|vectorized|mul|add|rsqrt|pow|mean|silu|norm|reduce|exp|log"))


def hash_reward_factory(**_ignored):
    """The bench reward (replaces tarpo.rewards.make_reward_fn in the child): deterministic, varied, free."""
    def reward(texts, golds, rollout=None):
        return [(zlib.crc32(t.encode("utf-8")) % 1000) / 1000.0 for t in texts]

    return reward


def long_system_prompt(words: int) -> str:
    """A system prompt longer than the recipe's prompt budget: every prompt is left-truncated to exactly it."""
    return " ".join(f"Rule {i}: reason step by step and check each result." for i in range(words // 9 + 1))


def child_train(args) -> int:
    """In the child: prepare + train through cli.py's own commands, with the bench reward patched in."""
    import tarpo.rewards

    tarpo.rewards.make_reward_fn = hash_reward_factory
    import cli

    sets = json.loads(args.child_sets)
    common = ["--params", str(ROOT / "params.yaml"), "--model", args.model, *[a for s in sets for a in ("--set", s)]]
    os.chdir(args.workdir)
    cfg = cli.load_params(ROOT / "params.yaml", sets, args.model)
    from tarpo.memory_plan import plan_for_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = plan_for_config(cfg, device=device)
    Path("plan.json").write_text(json.dumps({"rollout_gib": plan.rollout / 2**30, "update_gib": plan.update / 2**30,
                                             "parts_gib": {k: {p: v / 2**30 for p, v in d.items()}
                                                           for k, d in plan.parts.items()},
                                             "lines": plan.lines()}, indent=2))
    for command in (["prepare", *common], ["train", "--no-resume", *common]):
        print("child: cli.py", " ".join(command[:1]), flush=True)
        try:
            code = cli.app(command, standalone_mode=False)  # click returns typer.Exit's code here
        except SystemExit as exc:
            code = exc.code
        if code:
            return int(code)
    return 0


def section_train(ctx, mode: str, steps: int) -> dict:
    shape = ctx["shape"]
    workdir = Path(tempfile.mkdtemp(prefix=f"gpu_recipe-{mode}-", dir=ctx["scratch"]))
    prompt_tokens = None if ctx["tiny"] else 1024
    sets = ["tracking.enabled=false", "register.enabled=false", "data.source=synthetic",
            f"data.train_size={shape['train_size']}", "data.eval_size=8", "eval.every=0", "train.checkpoint_every=0",
            "train.log_samples_every=0", f"train.steps={steps}", f"router.mode={mode}",
            f"data.system_prompt={json.dumps(long_system_prompt(2 * (prompt_tokens or 64)))}",
            *shape.get("sets", [])]
    command = [sys.executable, str(Path(__file__).resolve()), "--child-train", "--model", str(ctx["model"]),
               "--workdir", str(workdir), "--child-sets", json.dumps(sets)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=max(5.0, ctx["limit"] - 5))
    wall = time.perf_counter() - started
    log_tail = (proc.stdout + proc.stderr)[-3000:]
    step_log = workdir / "checkpoints" / "steps.jsonl"
    rows = [json.loads(line) for line in step_log.read_text().splitlines()] if step_log.is_file() else []
    if proc.returncode or not rows:
        raise RuntimeError(f"child exit {proc.returncode}, {len(rows)} steps logged:\n{log_tail}")
    per_step = [{k: r.get(k) for k in ("step", *PHASES)} for r in rows]
    warm_rows = rows[1:] or rows
    warm = {k: statistics.median(r[k] for r in warm_rows) for k in PHASES if all(k in r for r in warm_rows)}
    plan = json.loads((workdir / "plan.json").read_text())
    result = {"mode": mode, "steps": per_step, "warm": warm, "child_wall_s": round(wall, 1), "plan": plan,
              "log_tail": log_tail[-800:]}
    if "peak_memory_gib" in warm:
        measured = max(r.get("peak_memory_gib", 0.0) for r in rows)
        rollout_measured = max(r.get("rollout_peak_memory_gib", 0.0) for r in rows)
        result["plan_vs_measured"] = {"update_estimate_over_measured": plan["update_gib"] / measured,
                                      "rollout_estimate_over_measured": plan["rollout_gib"] / max(rollout_measured, 1e-9),
                                      "peak_estimate_over_measured": max(plan["update_gib"], plan["rollout_gib"]) / measured}
    return result


def load_shape_policy(model_dir: Path, device, dtype, lora_rank: int | None = 32, overrides_dir: Path | None = None):
    from tarpo.models import apply_lora, load_model_and_tokenizer, resolve_model
    from tarpo.policy import HybridPolicy
    from tarpo.router import Router

    model, tokenizer = load_model_and_tokenizer(resolve_model(None, overrides_dir or model_dir), dtype=dtype,
                                                device=str(device))
    if lora_rank:
        model = apply_lora(model, rank=lora_rank, alpha=2 * lora_rank)
        with torch.no_grad():  # a trained adapter is not zero: give B small values so the LoRA path matters
            g = torch.Generator().manual_seed(0)
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_((torch.randn(param.shape, generator=g) * 1e-3).to(param.dtype))
    router = Router(model.config.hidden_size, (2.2, 0.0), generator=torch.Generator().manual_seed(0))
    return HybridPolicy(model, router).to(device).eval(), tokenizer


def settings_for(policy, tokenizer, mode: str, steps: int):
    from tarpo.marker import MarkerMatcher
    from tarpo.rollout import RolloutSettings

    return RolloutSettings(max_new_tokens=steps, eos_token_ids=(policy.vocab_size + 1,), pad_token_id=0,
                           marker=MarkerMatcher.from_tokenizer(tokenizer, "####", policy.vocab_size),
                           temperature=0.5, soft_top_k=10, router_mode=mode)


def check_prompts(shape, vocab: int, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, min(vocab, 150000), (shape["check_batch"], shape["check_prompt"]), generator=g)
    return ids.to(device), torch.ones_like(ids).to(device)


def replay_diffs(policy, record, settings) -> dict:
    """Rollout log-probs vs the training forward's on the recorded rollout (completion tokens / decisions)."""
    from tarpo.rollout import replay

    with torch.no_grad():
        out = replay(policy, record, settings=settings)
    mask = record.completion_mask
    token = (out.token_logp - record.token_logp).abs()[mask].float()
    decided = record.decision_mask & mask
    router = (out.router_logp - record.router_logp).abs()[decided].float()
    return {"max_abs_logp_diff": float(token.max()), "p99_abs_logp_diff": float(torch.quantile(token, 0.99)),
            "max_abs_router_logp_diff": float(router.max()) if router.numel() else 0.0, "tokens": int(mask.sum())}


def section_agreement(ctx) -> dict:
    from tarpo.fast_rollout import fast_rollout
    from tarpo.rollout import rollout

    shape, device = ctx["shape"], ctx["device"]
    policy, tokenizer = ctx["policy"], ctx["tokenizer"]
    ids, mask = check_prompts(shape, policy.vocab_size, device)
    steps = shape["check_steps"]
    settings = settings_for(policy, tokenizer, "tarpo", steps)
    eager = rollout(policy, ids, mask, settings=settings, generator=torch.Generator(device).manual_seed(1))
    start = time.perf_counter()
    fast = fast_rollout(policy, ids, mask, settings=settings, generator=torch.Generator(device).manual_seed(1))
    first_call = time.perf_counter() - start
    shared = shared_history(eager, fast)
    same_now = (eager.completion_ids == fast.completion_ids) & (eager.soft_mask == fast.soft_mask)
    prefix = (shared & same_now)
    compared = shared & (eager.completion_ids == fast.completion_ids)
    diff = (eager.token_logp - fast.token_logp).abs()[compared]
    result = {"fast_vs_eager": {
        "steps": steps, "rows": int(ids.shape[0]), "dtype": str(ctx["dtype"]),
        "identical_prefix_share": float(prefix.float().mean()),
        "rows_identical_throughout": int(prefix.all(1).sum()),
        "max_abs_logp_diff_before_divergence": float(diff.max()) if diff.numel() else 0.0,
        "compared_steps": int(compared.sum()), "first_fast_call_s_incl_compile": round(first_call, 2)}}
    bf16 = replay_diffs(policy, fast, settings)
    eager_replay = replay_diffs(policy, eager, settings)
    result["replay"] = {"max_abs_logp_diff_bf16" if ctx["dtype"] != torch.float32 else "max_abs_logp_diff_main":
                        bf16["max_abs_logp_diff"], "p99_abs_logp_diff_main": bf16["p99_abs_logp_diff"],
                        "main_dtype": str(ctx["dtype"]), "fast_record": bf16, "eager_record": eager_replay}
    if ctx["dtype"] == torch.float32:  # the CPU test: the main model is already fp32
        result["replay"]["max_abs_logp_diff_bf16"] = None
    from tarpo.shapes import make_shape

    small_dir = make_shape("tiny-shape", Path(ctx["scratch"]) / "small-fp32", overrides=shape["small_model"])
    small, small_tok = load_shape_policy(small_dir, device, torch.float32, lora_rank=8)
    small_settings = settings_for(small, small_tok, "tarpo", steps)
    sids = ids[:, : min(ids.shape[1], 64)] % small.vocab_size
    record = fast_rollout(small, sids, torch.ones_like(sids), settings=small_settings,
                          generator=torch.Generator(device).manual_seed(2))
    fp32 = replay_diffs(small, record, small_settings)
    result["replay"].update(max_abs_logp_diff_fp32=fp32["max_abs_logp_diff"], fp32_small_model=fp32,
                            fp32_within_1e_4=fp32["max_abs_logp_diff"] <= 1e-4)
    ctx["fast_settings"] = settings
    return result


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, lowered):
            return kind
    return "other"


def section_profile(ctx) -> dict:
    """torch.profiler over `profile_steps` warm decode steps (one engine already compiled by `agreement`)."""
    from tarpo.fast_rollout import fast_rollout

    shape, device, policy = ctx["shape"], ctx["device"], ctx["policy"]
    ids, mask = check_prompts(shape, policy.vocab_size, device)
    n = shape["profile_steps"]
    settings = ctx.get("fast_settings") or settings_for(policy, ctx["tokenizer"], "tarpo", shape["check_steps"])

    def run(steps):
        return fast_rollout(policy, ids, mask, settings=settings, generator=torch.Generator(device).manual_seed(4),
                            step_limit=steps)

    run(n)  # warm (compiled buckets reused)
    one = min(timed(lambda: run(1), device) for _ in range(2))
    full = min(timed(lambda: run(n + 1), device) for _ in range(2))
    decode_s = max(full - one, 1e-9) / n
    result = {"decode_s_per_step": decode_s, "decode_tokens_per_s": shape["check_batch"] / decode_s,
              "profiled_steps": n + 1, "time_unit": "device us" if device.type == "cuda" else "CPU self us",
              **_kernel_table(lambda: run(n + 1), device, n + 1)}
    # kernels replayed inside CUDA graphs may be invisible to the profiler: the same steps uncompiled show each one
    uncompiled = _kernel_table(lambda: fast_rollout(policy, ids, mask, settings=settings, compile=False,
                                                    generator=torch.Generator(device).manual_seed(4),
                                                    step_limit=n + 1), device, n + 1)
    result["uncompiled"] = uncompiled
    return result


def _kernel_table(fn, device, steps: int) -> dict:
    """Device time (CPU self time on the CPU) by kernel kind over one profiled call of `fn`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    kinds: dict[str, float] = {}
    top = []
    for event in prof.key_averages():
        if device.type == "cuda":  # kernel rows only: an operator row's device time repeats its kernels'
            if "CUDA" not in str(getattr(event, "device_type", "")):
                continue
            us = getattr(event, "device_time_total", 0.0) or getattr(event, "self_device_time_total", 0.0)
        else:
            us = event.self_cpu_time_total
        if not us:
            continue
        kinds[kernel_kind(event.key)] = kinds.get(kernel_kind(event.key), 0.0) + us
        top.append((us, event.key[:90]))
    total = sum(kinds.values()) or 1.0
    return {"by_kind_ms_per_step": {k: v / 1e3 / steps for k, v in sorted(kinds.items(), key=lambda x: -x[1])},
            "by_kind_share": {k: v / total for k, v in sorted(kinds.items(), key=lambda x: -x[1])},
            "top_kernels": [{"us": round(us, 1), "name": name} for us, name in sorted(top, reverse=True)[:15]]}


def section_bandwidth(ctx) -> dict:
    """Device-to-device copy (read + write) bandwidth, and the decode step's % of the floor at it."""
    device = ctx["device"]
    size = (1 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = min(timed(lambda: dst.copy_(src), device) for _ in range(10))
    measured = 2 * size / seconds
    policy, shape = ctx["policy"], ctx["shape"]
    model = policy.causal_lm
    cfg = model.config
    all_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    weight_bytes = all_bytes - embedding.numel() * embedding.element_size()  # reads B rows of the embedding only
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    element = embedding.element_size()
    B, P, T = shape["check_batch"], shape["check_prompt"], shape["profile_steps"] + 1
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * element * B * (P + (T + 1) / 2)
    floor_bytes = weight_bytes + kv
    result = {"copy_bytes": size, "copy_bandwidth_Bps": measured, "weight_bytes_read": weight_bytes,
              "kv_bytes_mean_context": kv, "floor_s_per_step_measured_bw": floor_bytes / measured}
    card = ctx["card"]
    sheet = next((v for name, v in BANDWIDTH if name in card), None)
    if sheet:
        result["floor_s_per_step_datasheet_bw"] = floor_bytes / sheet
        result["datasheet_bandwidth_Bps"] = sheet
    decode = ctx["result"].get("profile", {}).get("decode_s_per_step")
    if decode:
        result["decode_pct_of_floor"] = 100 * result["floor_s_per_step_measured_bw"] / decode
        if sheet:
            result["decode_pct_of_datasheet_floor"] = 100 * result["floor_s_per_step_datasheet_bw"] / decode
    return result


def section_generate(ctx) -> dict:
    """HF `generate`: uncompiled DynamicCache (the old baseline) and compiled static cache (the fair peer)."""
    shape, device, policy = ctx["shape"], ctx["device"], ctx["policy"]
    model = policy.causal_lm
    ids, mask = check_prompts(shape, policy.vocab_size, device)
    n = shape["generate_new"]

    def gen(new, **kw):
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.5, top_k=0, top_p=1.0,
                           max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
                           eos_token_id=policy.vocab_size - 1, **kw)

    result = {}
    gen(2)
    dynamic = timed(lambda: gen(n), device)
    result["dynamic_uncompiled"] = {"new_tokens": n, "s": dynamic, "tokens_per_s": ids.shape[0] * n / dynamic}
    if device.type == "cuda":
        start = time.perf_counter()
        gen(n, cache_implementation="static")  # on CUDA transformers auto-compiles the static-cache forward
        first = time.perf_counter() - start
        static = min(timed(lambda: gen(n, cache_implementation="static"), device) for _ in range(2))
        result["static_compiled"] = {"new_tokens": n, "s": static, "tokens_per_s": ids.shape[0] * n / static,
                                     "first_call_s_incl_compile": round(first, 1)}
    ours = ctx["result"].get("profile", {}).get("decode_tokens_per_s")
    if ours:
        result["fast_tarpo_decode_over_dynamic"] = ours / result["dynamic_uncompiled"]["tokens_per_s"]
        if "static_compiled" in result:
            result["fast_tarpo_decode_over_static_compiled"] = ours / result["static_compiled"]["tokens_per_s"]
    return result


def summarise(result: dict) -> None:
    """The headline keys, from the sections that ran (None where a section failed or was skipped)."""
    tarpo_run, hard_run = result.get("train_tarpo", {}), result.get("train_hard", {})
    warm = tarpo_run.get("warm", {})
    result["step_seconds"] = warm.get("step_seconds")
    result["peak_memory_gib"] = max((s.get("peak_memory_gib") or 0.0 for s in tarpo_run.get("steps", [])),
                                    default=None) or None
    result["rollout_tokens_per_s"] = warm.get("tokens_per_second")
    hard = hard_run.get("warm", {}).get("step_seconds")
    result["tarpo_over_hard"] = warm["step_seconds"] / hard if hard and warm.get("step_seconds") else None
    result.setdefault("fast_vs_eager", {}).setdefault("identical_prefix_share", None)
    result.setdefault("replay", {}).setdefault("max_abs_logp_diff_bf16", None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a `models make-shape` directory (default: "
                        "models/shape-qwen2.5-7b; --tiny makes a tiny one)")
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny shape: tests the script (< 60 s)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run")
    parser.add_argument("--only", default="", help="comma-separated sections (default all)")
    parser.add_argument("--child-train", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-sets", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_train:
        return child_train(args)
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    shape = TINY if args.tiny or device.type == "cpu" else FULL
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu-tiny"
    slug = "".join(c if c.isalnum() else "-" for c in card).strip("-").lower()
    out = args.out or ROOT / "bench" / "results" / f"gpu_recipe-{slug}-{dt.date.today().isoformat()}.json"
    scratch = Path(tempfile.mkdtemp(prefix="gpu_recipe-"))
    if args.tiny:
        from tarpo.shapes import make_shape

        model_dir = make_shape("tiny-shape", scratch / "tiny-shape")
    else:
        model_dir = Path(args.model or ROOT / "models" / "shape-qwen2.5-7b")
        if not (model_dir / "config.json").is_file():
            print(f"gpu_recipe: {model_dir} is not a model directory; make it where the tokenizer is: python cli.py "
                  f"models make-shape qwen2.5-7b {model_dir} (and carry it)", file=sys.stderr)
            return 2
    import transformers

    result = {"meta": {"card": card, "date": dt.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
                       "transformers": transformers.__version__, "dtype": str(dtype), "model": str(model_dir),
                       "shape": {k: v for k, v in shape.items() if k != "sets"}, "budget_s": args.budget,
                       "reward": "crc32 of the completion text (bench only)"},
              "errors": {}, "skipped": {}, "section_s": {}}
    ctx = {"shape": shape, "device": device, "dtype": dtype, "card": card, "model": model_dir, "scratch": scratch,
           "tiny": args.tiny or device.type == "cpu", "result": result}
    only = {s for s in args.only.split(",") if s}

    def save():
        summarise(result)
        result["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
        write_atomic(out, result)

    def guarded(name, fn):
        remaining = args.budget - (time.perf_counter() - started)
        limit = min(LIMITS[name] * (3 if ctx["tiny"] else 1), remaining)
        if (only and name not in only) or remaining < 5:
            result["skipped"][name] = "not selected" if only and name not in only else f"{remaining:.0f} s left"
            save()
            return
        ctx["limit"] = limit
        t0 = time.perf_counter()
        try:
            with time_limit(limit):
                value = fn()
            if name in ("agreement",):
                result.update(value)
            else:
                result[name] = value
        except Exception:  # one failed or slow section must not hide the others
            result["errors"][name] = traceback.format_exc(limit=6)[-3000:]
            print(f"[{name}] FAILED:\n{result['errors'][name]}", file=sys.stderr, flush=True)
        result["section_s"][name] = round(time.perf_counter() - t0, 1)
        save()
        print(f"[{name}] {time.perf_counter() - t0:.1f} s (total {time.perf_counter() - started:.1f} s)", flush=True)

    # order of importance: the recipe step, the numerics, where decode time goes, tarpo/hard, the generate peer
    guarded("train_tarpo", lambda: section_train(ctx, "tarpo", shape["steps_tarpo"]))
    try:
        ctx["policy"], ctx["tokenizer"] = load_shape_policy(model_dir, device, dtype)
    except Exception:
        result["errors"]["load"] = traceback.format_exc(limit=6)
    if "policy" in ctx:
        for name, fn in (("agreement", lambda: section_agreement(ctx)), ("profile", lambda: section_profile(ctx)),
                         ("bandwidth", lambda: section_bandwidth(ctx))):
            guarded(name, fn)
    guarded("train_hard", lambda: section_train(ctx, "hard", shape["steps_hard"]))  # its own process and peak
    if "policy" in ctx:
        guarded("generate", lambda: section_generate(ctx))
    result["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    save()
    shutil.rmtree(scratch, ignore_errors=True)  # the children's workspaces (data, checkpoints, adapters)
    keys = ("step_seconds", "peak_memory_gib", "rollout_tokens_per_s", "tarpo_over_hard")
    print(json.dumps({k: result.get(k) for k in keys}, indent=1))
    print(f"wrote {out} ({result['meta']['total_s']} s, {len(result['errors'])} failed, "
          f"{len(result['skipped'])} skipped sections)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
