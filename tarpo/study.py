"""Statistics of a seeded study: several RL runs (modes x seeds) evaluated on the SAME held-out problems.

Two sources of noise: which problems were drawn (shared by every run, so it cancels in paired
differences) and the RL run itself (seed). We therefore report, per mode, the mean over seeds of each
run's held-out avg@k with the standard error OVER SEEDS (the spread a user sees rerunning with another
seed), and for a pair of modes the per-seed paired difference (same seed, same problems), again with the
standard error over seeds, plus the pooled per-problem paired standard error (problems x seeds) for
reference. Pure functions over plain lists, so a hand computation can check them.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

RunScores = Mapping[int, Sequence[float]]   # seed -> per-problem avg@k (same problem order in every run)


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample std with n-1, / sqrt(n)); stderr is nan for a single value.

    >>> [round(x, 4) for x in mean_stderr([1.0, 2.0, 3.0])]
    [2.0, 0.5774]
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_stderr needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _check_same_problems(runs: RunScores) -> int:
    lengths = {len(v) for v in runs.values()}
    if len(lengths) != 1:
        raise ValueError(f"runs were evaluated on different numbers of problems: {sorted(lengths)}")
    return lengths.pop()


def mode_summary(runs: RunScores) -> dict[str, float]:
    """One mode: mean over seeds of the run's mean avg@k, stderr over seeds, and the range."""
    _check_same_problems(runs)
    run_means = [sum(v) / len(v) for _, v in sorted(runs.items())]
    mean, stderr = mean_stderr(run_means)
    return {"mean": mean, "stderr_over_seeds": stderr, "min": min(run_means), "max": max(run_means),
            "seeds": len(run_means)}


def paired_difference(a: RunScores, b: RunScores) -> dict[str, float]:
    """a - b over the seeds both have: per-seed mean difference on the same problems, its mean and stderr
    over seeds, and the pooled stderr over problems of the per-problem difference averaged over seeds."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no seed in common between the two modes")
    problems = _check_same_problems({**{("a", s): a[s] for s in seeds}, **{("b", s): b[s] for s in seeds}})
    per_seed = [sum(x - y for x, y in zip(a[s], b[s])) / problems for s in seeds]
    mean, stderr = mean_stderr(per_seed)
    per_problem = [sum(a[s][p] - b[s][p] for s in seeds) / len(seeds) for p in range(problems)]
    _, pooled = mean_stderr(per_problem)
    return {"mean": mean, "stderr_over_seeds": stderr, "stderr_over_problems": pooled, "seeds": len(seeds),
            "per_seed": per_seed, "problems": problems}
