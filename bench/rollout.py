"""Rollout throughput on CPU: our eager hybrid rollout vs `transformers` `generate`, side by side (issue 3, item 6).

Same model, batch, prompt and lengths for every variant; every completion is forced to full length
(`generate`: min_new_tokens = max_new_tokens; ours: an end-of-sequence id outside the vocabulary), sampling at
temperature 0.5 with no top-k / top-p filter, fp32, no LoRA (the rollout engine alone is measured).

Variants (timed round-robin, one warm-up each first, median of --repeats):
  generate         model.generate(do_sample=True, ...)                    the baseline
  hard             tarpo.rollout.rollout, router mode `hard` (plain GRPO rollout: marker check, no router)
  tarpo_bias2.2    router mode `tarpo`, router init bias (2.2, 0) -> p_soft ~ 10 %
  tarpo_bias0.0    router mode `tarpo`, router init bias (0.0, 0) -> p_soft ~ 50 %
The `####` answer marker is tracked in every rollout variant (it forces decisions hard once seen).

Length scaling: per-step time (total / steps) of `tarpo_bias2.2` and of `generate` at --new-tokens vs
--long-tokens (default 64 vs 512). Attention over a longer context makes every step dearer for both; the
marker check itself is a (B,) gather per step, timed alone as `marker_step_us`. If our ratio long/short is
close to generate's, none of our per-step bookkeeping grows with length.

Ratios are measured in one process, variants interleaved, so a CPU shared with other jobs slows all of them
alike; absolute tokens/s depend on the load (recorded: load average at start and end). Each run records wall
AND process CPU time; the goal (`goals`) is judged on round-by-round CPU-time ratios: their interquartile
interval must lie wholly on one side of the goal for a verdict ('met' / 'missed'), else 'inconclusive'. On a CPU shared with
other jobs use --threads 1: with 2 intra-op threads per process and load 5-7 on 2 cores, repeats of the same
rollout varied several-fold (OpenMP threads spinning against other processes).

Usage:
  python bench/rollout.py --model tiny --threads 1 --profile
  python bench/rollout.py --model smollm2-135m --threads 1 --batch 4 --repeats 3 --long-repeats 1 --profile
  python bench/rollout.py --model tiny --batch 2 --new-tokens 8 --long-tokens 16 --repeats 1 --out /tmp/r.json
Writes JSON atomically to bench/results/rollout-<model>-cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import clocks, goal_row, machine_info, model_slug, paired_ratios, spread  # noqa: E402
from tarpo.io import write_json_atomic  # noqa: E402
from tarpo.marker import MarkerMatcher  # noqa: E402
from tarpo.models import load_model_and_tokenizer, resolve_model  # noqa: E402
from tarpo.policy import HybridPolicy  # noqa: E402
from tarpo.rollout import RolloutSettings, rollout  # noqa: E402
from tarpo.router import Router  # noqa: E402

TEMPERATURE = 0.5
MARKER = "####"


def load_backbone(name: str):
    is_path = "/" in name or Path(name).exists()
    resolved = resolve_model(Path(name).name if is_path else name, name if is_path else None,
                             models_dir=ROOT / "models")
    started = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(resolved, dtype=torch.float32, device="cpu")
    return model, tokenizer, time.perf_counter() - started


def random_prompts(tokenizer, vocab: int, batch: int, length: int, seed: int) -> torch.Tensor:
    """(batch, length) ids drawn from ordinary (non-special) tokens; no padding, so every variant sees the same."""
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(min(len(tokenizer), vocab)) if i not in special])
    g = torch.Generator().manual_seed(seed)
    return allowed[torch.randint(len(allowed), (batch, length), generator=g)]


class Bench:
    def __init__(self, model, tokenizer, batch: int, prompt_len: int, seed: int):
        self.model, self.tokenizer = model, tokenizer
        self.vocab = model.get_output_embeddings().weight.shape[0]
        self.ids = random_prompts(tokenizer, self.vocab, batch, prompt_len, seed)
        self.mask = torch.ones_like(self.ids)
        self.marker = MarkerMatcher.from_tokenizer(tokenizer, MARKER, self.vocab)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else self.pad
        hidden = model.config.hidden_size
        self.policies = {bias: HybridPolicy(model, Router(hidden, (bias, 0.0), generator=torch.Generator().manual_seed(0)))
                         for bias in (2.2, 0.0)}
        self.seed = seed
        self.last_soft_ratio: dict[str, float] = {}

    def settings(self, mode: str, new_tokens: int) -> RolloutSettings:
        # eos id outside the vocabulary: never sampled, so every row runs the full length (like min_new_tokens)
        return RolloutSettings(max_new_tokens=new_tokens, eos_token_ids=(self.vocab + 1,), pad_token_id=self.pad,
                               marker=self.marker, temperature=TEMPERATURE, top_k=0, top_p=1.0, soft_top_k=10,
                               router_mode=mode)

    def run(self, variant: str, new_tokens: int) -> tuple[float, float]:
        """(wall, CPU) seconds for one full rollout of the batch."""
        if variant == "generate":
            torch.manual_seed(self.seed)  # generate samples from the global RNG
            wall, cpu = clocks()
            with torch.no_grad():
                out = self.model.generate(input_ids=self.ids, attention_mask=self.mask, do_sample=True,
                                          temperature=TEMPERATURE, top_k=0, top_p=1.0,
                                          min_new_tokens=new_tokens, max_new_tokens=new_tokens,
                                          pad_token_id=self.pad, eos_token_id=self.eos)
            wall_end, cpu_end = clocks()
            assert out.shape[1] - self.ids.shape[1] == new_tokens, "generate stopped early"
            return wall_end - wall, cpu_end - cpu
        mode, bias = ("hard", 2.2) if variant == "hard" else ("tarpo", float(variant.split("bias")[1]))
        generator = torch.Generator().manual_seed(self.seed)
        wall, cpu = clocks()
        result = rollout(self.policies[bias], self.ids, self.mask, settings=self.settings(mode, new_tokens),
                         generator=generator)
        wall_end, cpu_end = clocks()
        assert result.completion_ids.shape[1] == new_tokens, "rollout stopped early"
        self.last_soft_ratio[variant] = float(result.soft_mask.float().mean())
        return wall_end - wall, cpu_end - cpu


def timed(bench: Bench, jobs: list[tuple[str, int, int]]) -> dict:
    """jobs: (variant, new_tokens, repeats). One warm-up per variant, then round-robin over the jobs, so load drift on a
    shared CPU hits every variant and length alike. Returns {(variant, new_tokens): stats}."""
    warmed = set()
    for v, n, _ in jobs:  # one warm-up per variant (allocator, kernels, lazy inits), at its first length
        if v not in warmed:
            bench.run(v, n)
            warmed.add(v)
    seconds = {(v, n): [] for v, n, _ in jobs}
    cpu_seconds = {(v, n): [] for v, n, _ in jobs}
    soft = {(v, n): [] for v, n, _ in jobs}
    for round_ in range(max(r for _, _, r in jobs)):
        for v, n, repeats in jobs:
            if round_ >= repeats:
                continue
            bench.last_soft_ratio.pop(v, None)
            wall, cpu = bench.run(v, n)
            seconds[(v, n)].append(wall)
            cpu_seconds[(v, n)].append(cpu)
            if v in bench.last_soft_ratio:
                soft[(v, n)].append(bench.last_soft_ratio[v])
    batch = bench.ids.shape[0]
    out = {}
    for (v, n), values in seconds.items():
        med = statistics.median(values)
        cpu = cpu_seconds[(v, n)]
        out[(v, n)] = {"seconds": values, "median_seconds": med, "min_seconds": min(values),
                       "tokens_per_s": batch * n / med, "tokens_per_s_best": batch * n / min(values),
                       "per_step_ms": 1000 * med / n, "per_step_ms_best": 1000 * min(values) / n,
                       "cpu_seconds": cpu, "cpu": spread(cpu), "wall": spread(values),
                       "tokens_per_cpu_s": batch * n / statistics.median(cpu),
                       "per_step_cpu_ms": 1000 * statistics.median(cpu) / n}
        if soft[(v, n)]:
            out[(v, n)]["soft_ratio"] = statistics.mean(soft[(v, n)])
    return out


def marker_step_us(bench: Bench, iterations: int = 20000) -> float:
    states = torch.zeros(bench.ids.shape[0], dtype=torch.long)
    tokens = bench.ids[:, 0].clone()
    started = time.perf_counter()
    for _ in range(iterations):
        states = bench.marker.step(states, tokens)
        bench.marker.seen(states)
    return 1e6 * (time.perf_counter() - started) / iterations


def profile_rollout(bench: Bench, new_tokens: int, top: int = 25) -> list[dict]:
    """cProfile of one `tarpo_bias2.2` rollout: the top functions by own (tottime) time."""
    profiler = cProfile.Profile()
    profiler.enable()
    bench.run("tarpo_bias2.2", new_tokens)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
        rows.append({"function": f"{Path(filename).name}:{line}({func})", "calls": nc, "tottime_s": round(tt, 4),
                     "cumtime_s": round(ct, 4)})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:top]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny | smollm2-135m | any preset | path (HF dir or .gguf)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--long-tokens", type=int, default=512, help="length for the per-step scaling check")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (>= 7 for an IQR that means much)")
    parser.add_argument("--long-repeats", type=int, default=None, help="repeats at --long-tokens (default --repeats)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of one tarpo rollout to the JSON")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    model, tokenizer, load_s = load_backbone(args.model)
    bench = Bench(model, tokenizer, args.batch, args.prompt_len, args.seed)
    variants = ["generate", "hard", "tarpo_bias2.2", "tarpo_bias0.0"]
    scaling_variants = ["generate", "tarpo_bias2.2"]
    long_repeats = args.long_repeats or args.repeats
    measured = timed(bench, [(v, args.new_tokens, args.repeats) for v in variants]
                     + [(v, args.long_tokens, long_repeats) for v in scaling_variants])
    main_timings = {v: measured[(v, args.new_tokens)] for v in variants}
    long_timings = {v: measured[(v, args.long_tokens)] for v in scaling_variants}

    gen = main_timings["generate"]["tokens_per_s"]
    ratios = {f"{v}_over_generate": main_timings[v]["tokens_per_s"] / gen for v in variants if v != "generate"}
    ratios["tarpo_bias2.2_over_hard"] = main_timings["tarpo_bias2.2"]["tokens_per_s"] / main_timings["hard"]["tokens_per_s"]
    best_gen = main_timings["generate"]["tokens_per_s_best"]
    ratios_best = {f"{v}_over_generate": main_timings[v]["tokens_per_s_best"] / best_gen for v in variants
                   if v != "generate"}
    ratios_best["tarpo_bias2.2_over_hard"] = (main_timings["tarpo_bias2.2"]["tokens_per_s_best"]
                                              / main_timings["hard"]["tokens_per_s_best"])
    scaling = {}
    for v in scaling_variants:
        short, long_ = main_timings[v]["per_step_ms"], long_timings[v]["per_step_ms"]
        best_short, best_long = main_timings[v]["per_step_ms_best"], long_timings[v]["per_step_ms_best"]
        scaling[v] = {"per_step_ms_short": short, "per_step_ms_long": long_, "long_over_short": long_ / short,
                      "long_over_short_best": best_long / best_short}
    scaling["ours_growth_over_generate_growth"] = (scaling["tarpo_bias2.2"]["long_over_short"]
                                                   / scaling["generate"]["long_over_short"])
    paired = {f"{v}_over_generate": paired_ratios(main_timings["generate"]["cpu_seconds"],
                                                  main_timings[v]["cpu_seconds"]) for v in variants if v != "generate"}
    goals = {"rollout_over_generate": goal_row(
        "tarpo rollout (bias 2.2) tokens/s >= 0.9 x generate's (paired CPU-time ratios per round)",
        paired["tarpo_bias2.2_over_generate"], 0.9, "higher")}
    result = {
        "benchmark": "rollout", "model": args.model, "device": "cpu", "dtype": "float32", "lora": False,
        "settings": {"threads": torch.get_num_threads(), "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                     "long_tokens": args.long_tokens, "repeats": args.repeats,
                     "long_repeats": long_repeats, "temperature": TEMPERATURE,
                     "top_k": 0, "top_p": 1.0, "soft_top_k": 10, "answer_marker": MARKER, "seed": args.seed,
                     "vocab_size": bench.vocab, "forced_length": True},
        "machine": info, "model_load_seconds": load_s,
        "timings": main_timings, "long_timings": long_timings, "ratios": ratios,
        "ratios_best_of_repeats": ratios_best, "length_scaling": scaling,
        "cpu_throughput_ratios": {name: spread(values) for name, values in paired.items()}, "goals": goals,
        "marker_step_us": marker_step_us(bench),
    }
    if args.profile:
        result["profile_tarpo_top_tottime"] = profile_rollout(bench, args.new_tokens)
    result["machine"]["load_average_end"] = list(os.getloadavg())
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"rollout-{model_slug(args.model)}-cpu.json"
    write_json_atomic(out, result)

    print(f"model {args.model}: batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"load avg {info['load_average_start'][0]:.2f} -> {result['machine']['load_average_end'][0]:.2f}")
    for v in variants:
        t = main_timings[v]
        extra = f"  soft ratio {t['soft_ratio']:.3f}" if "soft_ratio" in t else ""
        print(f"  {v:15s} {t['tokens_per_s']:9.1f} tokens/s  {t['per_step_ms']:8.2f} ms/step{extra}")
    for name, value in ratios.items():
        print(f"  ratio {name:28s} {value:.3f} (median)  {ratios_best.get(name, float('nan')):.3f} (best)")
    for v in scaling_variants:
        s = scaling[v]
        print(f"  per-step {v:15s} {args.new_tokens}: {s['per_step_ms_short']:.2f} ms  {args.long_tokens}: "
              f"{s['per_step_ms_long']:.2f} ms  ratio {s['long_over_short']:.3f} (best-of-repeats "
              f"{s['long_over_short_best']:.3f})")
    for name, row in goals.items():
        print(f"  goal {row['goal']}: IQR [{row['q1']:.3f}, {row['q3']:.3f}] min {row['min']:.3f} -> {row['verdict']}")
    print(f"  marker step {result['marker_step_us']:.1f} us/step; wrote {out}")
    return result


if __name__ == "__main__":
    main()
