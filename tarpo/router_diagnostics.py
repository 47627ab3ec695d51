"""Router diagnostics: where a policy goes soft, against the token distribution's entropy and the position.

Why: a study's accuracy table cannot tell a router that learned where latent steps help from one that never
moved. Here a policy decodes each problem once (the evaluation's sampling settings, router sampled), the recorded
rollout is replayed to read, at every step whose decision was sampled, the router's p_soft and the entropy of the
token distribution q_t there; the binned means, and the same for the start router, show whether anything changed.

`collect_decisions` needs a model; everything after it is pure functions over plain lists (tested by hand).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

ENTROPY_EDGES = (0.0, 0.01, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, math.inf)   # nats: template tokens sit near 0, names above 1
POSITION_EDGES = (0, 4, 8, 12, 16, 20, 24, 28, math.inf)      # completion step t


def collect_decisions(policy, tokenizer, prompts: Sequence[str], settings, *, seed: int, batch_size: int,
                      max_prompt_tokens: int | None) -> dict[str, list]:
    """One sampled completion per prompt; per sampled decision its row, step, token entropy, p_soft and action.

    p_soft is read from the replayed router log-prob of the recorded action (exp for soft, 1 - exp for hard),
    i.e. the probability the rollout sampled from. Also per row: completion length and soft steps.
    """
    import torch

    from tarpo.fast_rollout import run_rollout
    from tarpo.rollout import encode_prompts, replay

    out: dict[str, list] = {k: [] for k in ("row", "position", "entropy", "p_soft", "soft", "length", "soft_steps")}
    policy.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        ids, mask = encode_prompts(tokenizer, chunk, max_prompt_tokens, policy.device)
        generator = torch.Generator(device=policy.device).manual_seed(seed + start)
        with torch.no_grad():
            batch = run_rollout(policy, ids, mask, settings=settings, generator=generator, engine="auto")
            replayed = replay(policy, batch, settings=settings, with_entropy=True)
        chosen = replayed.router_logp.exp()                                        # (B, T) p(recorded action)
        p_soft = torch.where(batch.soft_mask, chosen, 1.0 - chosen)
        decided = batch.decision_mask & batch.completion_mask
        for row in range(batch.num_rows):
            steps = decided[row].nonzero().flatten().tolist()
            out["row"] += [start + row] * len(steps)
            out["position"] += steps
            out["entropy"] += replayed.token_entropy[row, steps].tolist()
            out["p_soft"] += p_soft[row, steps].tolist()
            out["soft"] += batch.soft_mask[row, steps].long().tolist()
            out["length"].append(int(batch.completion_mask[row].sum()))
            out["soft_steps"].append(int(batch.soft_counts[row]))
    return out


# ------------------------------------------------------------------------------------------ pure
def binned_means(x: Sequence[float], y: Sequence[float], edges: Sequence[float]) -> list[dict]:
    """Per bin [edges[i], edges[i+1]) of x: the count and mean of y (None when empty).

    >>> binned_means([0.0, 0.5, 2.0], [1.0, 3.0, 5.0], [0.0, 1.0, math.inf])
    [{'low': 0.0, 'high': 1.0, 'count': 2, 'mean': 2.0}, {'low': 1.0, 'high': None, 'count': 1, 'mean': 5.0}]
    """
    bins = []
    for low, high in zip(edges, edges[1:]):
        ys = [b for a, b in zip(x, y) if low <= a < high]
        bins.append({"low": float(low), "high": None if math.isinf(high) else float(high), "count": len(ys),
                     "mean": sum(ys) / len(ys) if ys else None})
    return bins


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when either side is constant or there are fewer than 3 points.

    >>> round(pearson([1, 2, 3], [2, 4, 7]), 4)
    0.9934
    """
    n = len(x)
    if n < 3:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def summarize_decisions(decisions: Mapping[str, Sequence]) -> dict:
    """p_soft against entropy and against position (binned), their overall means, and the correlation."""
    p_soft, entropy, position = decisions["p_soft"], decisions["entropy"], decisions["position"]
    n = len(p_soft)
    return {"decisions": n, "p_soft_mean": sum(p_soft) / n if n else None,
            "soft_share": sum(decisions["soft"]) / n if n else None,
            "p_soft_entropy_corr": pearson(entropy, p_soft),
            "by_entropy": binned_means(entropy, p_soft, ENTROPY_EDGES),
            "by_position": binned_means(position, p_soft, POSITION_EDGES)}


def group_shares(groups: Sequence, rows: Sequence[Mapping]) -> dict[str, dict]:
    """Per group value (e.g. hop count) of each problem: soft-step share, mean steps and mean explicit tokens per
    completion, over the rows of an evaluation (ProblemResult rows: lengths, explicit_lengths, soft_steps).

    >>> rows = [{"lengths": [10, 8], "explicit_lengths": [9, 8], "soft_steps": [1, 0]},
    ...         {"lengths": [4], "explicit_lengths": [4], "soft_steps": [0]}]
    >>> group_shares([3, 4], rows)["3"]
    {'problems': 1, 'soft_share': 0.05555555555555555, 'mean_length': 9.0, 'mean_explicit_length': 8.5}
    """
    if len(groups) != len(rows):
        raise ValueError(f"{len(groups)} group labels for {len(rows)} evaluated problems")
    out = {}
    for value in sorted(set(groups)):
        mine = [r for g, r in zip(groups, rows) if g == value]
        lengths = [n for r in mine for n in r["lengths"]]
        explicit = [n for r in mine for n in r["explicit_lengths"]]
        soft = sum(n for r in mine for n in r["soft_steps"])
        out[str(value)] = {"problems": len(mine), "soft_share": soft / sum(lengths) if sum(lengths) else 0.0,
                           "mean_length": sum(lengths) / len(lengths), "mean_explicit_length": sum(explicit) / len(explicit)}
    return out


MIN_BIN_DECISIONS = 20   # bins with fewer decisions (in either model) are too noisy to compare


def router_change(trained: Mapping, start: Mapping, tolerance: float = 0.1) -> dict:
    """How the trained router's p_soft per entropy bin compares with the start router's (ratios trained / start, on
    bins with at least MIN_BIN_DECISIONS decisions in both), and a verdict:
    `unchanged` (every ratio within 1 +- tolerance), `uniform` (all ratios within a factor 1 + tolerance of each other:
    only the bias moved, not where the router goes soft), `shaped` (otherwise), `no data` (no comparable bin).

    >>> bins = lambda *ps: {"by_entropy": [{"count": 50, "mean": p} for p in ps]}
    >>> [router_change(bins(*t), bins(0.01, 0.01))["verdict"] for t in ((0.0105, 0.0098), (0.02, 0.021), (0.01, 0.03))]
    ['unchanged', 'uniform', 'shaped']
    """
    ratios = [a["mean"] / b["mean"] for a, b in zip(trained["by_entropy"], start["by_entropy"])
              if min(a["count"], b["count"]) >= MIN_BIN_DECISIONS and a["mean"] is not None and b["mean"]]
    if not ratios:
        return {"verdict": "no data", "ratios": []}
    if all(abs(r - 1.0) <= tolerance for r in ratios):
        verdict = "unchanged"
    elif max(ratios) <= (1.0 + tolerance) * min(ratios):
        verdict = "uniform"
    else:
        verdict = "shaped"
    return {"verdict": verdict, "ratios": ratios, "min_ratio": min(ratios), "max_ratio": max(ratios),
            "tolerance": tolerance}
