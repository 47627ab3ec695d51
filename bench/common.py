"""Shared helpers for the CPU benchmarks: machine facts recorded next to every result."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Sequence

import torch


def machine_info() -> dict:
    """Cores, CPU model, thread count, versions and the load average at start (the CPU may be shared)."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {"cpu_count": os.cpu_count(), "cpu_model": cpu_model, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_start": list(os.getloadavg())}


def model_slug(name: str) -> str:
    return Path(name).stem if ("/" in name or name.endswith(".gguf")) else name


# ------------------------------------------------------------------ timing that holds on a shared machine

def clocks() -> tuple[float, float]:
    """(wall, CPU) seconds now. CPU time is this process's (`time.process_time`): on a CPU shared with other
    jobs it counts only the cycles we got, so it moves far less than wall time; with one torch thread it is
    the work done."""
    return time.perf_counter(), time.process_time()


def spread(values: Sequence[float]) -> dict:
    """min, quartiles, median, max and IQR of repeats (inclusive quartiles; needs at least one value)."""
    values = sorted(values)
    if len(values) == 1:
        q1 = median = q3 = values[0]
    else:
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"n": len(values), "min": values[0], "q1": q1, "median": median, "q3": q3, "max": values[-1],
            "iqr": q3 - q1}


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two interleaved variants (round i of each met the same load)."""
    return [a / b for a, b in zip(numerators, denominators)]


def verdict(stats: dict, goal: float, better: str) -> str:
    """'met' / 'missed' only when the interquartile interval lies wholly on one side of the goal, else
    'inconclusive'. better: 'lower' (goal is a ceiling) or 'higher' (goal is a floor)."""
    low, high = stats["q1"], stats["q3"]
    if better == "lower":
        return "met" if high <= goal else "missed" if low > goal else "inconclusive"
    if better == "higher":
        return "met" if low >= goal else "missed" if high < goal else "inconclusive"
    raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")


def goal_row(description: str, ratios: Sequence[float], goal: float, better: str) -> dict:
    """A goal with its measured interval (paired CPU-time ratios) and the verdict."""
    stats = spread(ratios)
    return {"goal": description, "threshold": goal, "better": better, "ratios": list(ratios), **stats,
            "interval": [stats["q1"], stats["q3"]], "verdict": verdict(stats, goal, better)}


def recorded_rollout(batch: int, prompt: int, completion: int, vocab: int, soft: bool = True, seed: int = 4):
    """A synthetic recorded rollout for training-step benchmarks: random prompt / completion ids, every step
    alive and decided, ~10 % soft steps (top-10 mixtures) when `soft`. CPU tensors."""
    from tarpo.rollout import Rollout

    g = torch.Generator().manual_seed(seed)
    k = 10
    soft_mask = (torch.rand(batch, completion, generator=g) < 0.1) if soft else torch.zeros(
        batch, completion, dtype=torch.bool)
    topk_ids = torch.randint(0, vocab, (batch, completion, k), generator=g) * soft_mask[..., None]
    weights = torch.softmax(torch.randn(batch, completion, k, generator=g), -1) * soft_mask[..., None]
    ones = torch.ones(batch, completion, dtype=torch.bool)
    return Rollout(prompt_ids=torch.randint(10, vocab, (batch, prompt), generator=g),
                   prompt_mask=torch.ones(batch, prompt, dtype=torch.long),
                   completion_ids=torch.randint(10, vocab, (batch, completion), generator=g), completion_mask=ones,
                   token_logp=torch.zeros(batch, completion), soft_mask=soft_mask, decision_mask=ones,
                   router_logp=torch.zeros(batch, completion), topk_ids=topk_ids, topk_weights=weights.float(),
                   stop_reason=("max_tokens",) * batch, soft_counts=soft_mask.long().sum(1))
