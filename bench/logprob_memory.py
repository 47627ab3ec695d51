"""Peak memory of one training micro-step on CPU: dense vs chunked token log-probs (tarpo.token_logprobs).

One LoRA micro-step = `replay` forward (token log-probs + entropy metric) + backward, on a recorded rollout
of --batch rows x (--prompt + --completion) tokens, fp32. Two peaks, both relative to the start of the step:
- `peak_extra_mib`: torch's own CPU allocations, replayed in time order from the profiler's memory events
  (exact: every tensor allocation and free, nothing else);
- `rss_peak_extra_mib`: the process's peak resident memory (Linux VmHWM, reset through /proc/self/clear_refs)
  minus the resident memory before the step (noisier: the C allocator keeps and reuses freed memory).
Dense and chunked steps alternate, --repeats each after one warm-up each; min and max reported.
The (B, T, V) fp32 size is printed next to the figures: the dense path holds several such copies.

Usage: python bench/logprob_memory.py --model smollm2-135m --batch 2 --prompt 16 --completion 128 --chunk-tokens 64
Writes JSON to bench/results/logprob_memory-<model>-cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tarpo.token_logprobs as token_logprobs_module  # noqa: E402
from bench.common import clocks, machine_info, model_slug, recorded_rollout  # noqa: E402
from tarpo.io import write_json_atomic  # noqa: E402
from tarpo.models import DEFAULT_LORA_TARGETS, apply_lora, load_model_and_tokenizer, resolve_model  # noqa: E402
from tarpo.policy import HybridPolicy  # noqa: E402
from tarpo.rollout import RolloutSettings, replay  # noqa: E402
from tarpo.router import Router  # noqa: E402


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size


def allocator_peak_bytes(events) -> int:
    """Highest running total of torch's CPU allocations minus frees, in time order (profiler memory events)."""
    running = peak = 0
    for event in sorted(events, key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


def micro_step(policy, record, settings) -> None:
    out = replay(policy, record, settings=settings)
    (out.token_logp.mean() + out.router_logp.mean()).backward()
    policy.zero_grad(set_to_none=True)


def measure(policy, record, settings, chunk_tokens) -> dict:
    """Allocator and RSS peaks (MiB) and wall / CPU seconds of one micro-step with the given chunking."""
    from torch.profiler import ProfilerActivity, profile

    token_logprobs_module.CHUNK_TOKENS = chunk_tokens
    before = rss_kib("VmRSS")
    reset_peak()
    wall, cpu = clocks()
    micro_step(policy, record, settings)
    wall_end, cpu_end = clocks()
    rss_peak = rss_kib("VmHWM")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:  # the same step, profiled
        micro_step(policy, record, settings)
    return {"peak_extra_mib": allocator_peak_bytes(prof.events()) / 2**20, "rss_peak_extra_mib": (rss_peak - before) / 1024,
            "seconds": wall_end - wall, "cpu_seconds": cpu_end - cpu}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--completion", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-tokens", type=int, default=token_logprobs_module.CHUNK_TOKENS,
                        help="rows x positions per chunk; below batch x completion, or there is one chunk only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    resolved = resolve_model(args.model, models_dir=ROOT / "models")
    base, _ = load_model_and_tokenizer(resolved, dtype=torch.float32, device="cpu")
    backbone = apply_lora(base, rank=16, alpha=32, dropout=0.0, targets=DEFAULT_LORA_TARGETS)
    backbone.train()
    hidden = base.config.hidden_size
    policy = HybridPolicy(backbone, Router(hidden, (2.2, 0.0), generator=torch.Generator().manual_seed(0)))
    vocab = policy.vocab_size
    settings = RolloutSettings(max_new_tokens=args.completion, eos_token_ids=(vocab + 1,), pad_token_id=0,
                               temperature=0.5)
    record = recorded_rollout(args.batch, args.prompt, args.completion, vocab)
    default_chunk = token_logprobs_module.CHUNK_TOKENS
    variants = {"dense": None, "chunked": args.chunk_tokens}
    rows = {name: {"peak_extra_mib": [], "rss_peak_extra_mib": [], "seconds": [], "cpu_seconds": []}
            for name in variants}
    for name, chunk in variants.items():  # warm-up (allocator, LoRA caches)
        measure(policy, record, settings, chunk)
    for _ in range(args.repeats):
        for name, chunk in variants.items():
            for key, value in measure(policy, record, settings, chunk).items():
                rows[name][key].append(round(value, 3))
    token_logprobs_module.CHUNK_TOKENS = default_chunk
    full_copy_mib = args.batch * args.completion * vocab * 4 / 2**20
    result = {"model": args.model, "vocab": vocab, "batch": args.batch, "prompt": args.prompt,
              "completion": args.completion, "chunk_tokens": args.chunk_tokens,
              "chunks": -(-args.completion // max(1, args.chunk_tokens // args.batch)), "fp32_BTV_copy_mib": full_copy_mib,
              "machine": machine_info(), "method": "one replay forward+backward (LoRA r16): torch allocator peak "
              "from profiler memory events; RSS peak from VmHWM - VmRSS",
              **rows}
    for name, row in rows.items():
        print(f"{name:8s} allocator peak +{min(row['peak_extra_mib']):7.1f} .. {max(row['peak_extra_mib']):7.1f} MiB, "
              f"RSS +{min(row['rss_peak_extra_mib']):7.1f} .. {max(row['rss_peak_extra_mib']):7.1f} MiB   "
              f"{min(row['seconds']):.2f} s wall {min(row['cpu_seconds']):.2f} s CPU   (one (B, T, V) fp32 copy = "
              f"{full_copy_mib:.0f} MiB)")
    out = args.out or ROOT / "bench" / "results" / f"logprob_memory-{model_slug(args.model)}-cpu.json"
    write_json_atomic(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
