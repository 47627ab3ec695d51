"""DAPO's dynamic sampling: drop groups whose rewards are all equal and refill the batch with new prompts' groups.

A group whose G completions all earn the same reward has advantage 0 everywhere: it adds nothing to the policy
gradient (only to the KL), yet it takes its share of the batch. DAPO (Yu et al. 2025, section 3.2) over-samples
and keeps only groups with 0 < accuracy < 1; verl calls it `filter_groups`. Here, per optimizer step:

  round 0: the step's `prompts_per_step` prompts, exactly as without dynamic sampling (same prompts, same seed);
  round r = 1..max_rounds, while informative groups are missing: as many NEW prompts as groups are missing, taken
  from the data stream right after the ones already used, rolled out with a seed of their own (seed, step, r);
  the batch: the informative groups in the order they were drawn; if the rounds run out first, the remaining
  places go to zero-variance groups (earliest first), so the batch keeps its size and its loss normaliser.

The data position advances by every prompt drawn, so a resumed run draws what an uninterrupted one would. The
decision uses the final reward (after any overlong penalty), the one the advantages see. One process only: on
several processes the kept groups would have to move between processes (the config refuses it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Sequence

import torch

from tarpo.rollout import Rollout

# (B, P) fields left-padded like the prompts; (B, T[, k]) fields right-padded past the last step
_PROMPT_FIELDS = ("prompt_ids", "prompt_mask")
_STEP_FIELDS = ("completion_ids", "completion_mask", "token_logp", "soft_mask", "decision_mask", "router_logp",
                "topk_ids", "topk_weights", "noise_seeds")


def concat_rollouts(parts: Sequence[Rollout], pad_token_id: int) -> Rollout:
    """Rows of several rollouts as one record: prompts left-padded to the widest, steps right-padded to the longest.

    Padding is what a single rollout has anyway (pad ids, masks False, log-probs and weights 0), so replaying the
    result reproduces each part's log-probs."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.prompt_ids.shape[1] for p in parts)
    steps = max(p.completion_ids.shape[1] for p in parts)
    out: dict[str, Any] = {}
    for f in fields(Rollout):
        values = [getattr(p, f.name) for p in parts]
        if all(v is None for v in values):  # optional records (the gaussian soft-noise seeds) absent in every part
            out[f.name] = None
            continue
        if f.name in _PROMPT_FIELDS:
            fill = pad_token_id if f.name == "prompt_ids" else 0
            values = [torch.nn.functional.pad(v, (width - v.shape[1], 0), value=fill) for v in values]
        elif f.name in _STEP_FIELDS:
            fill = pad_token_id if f.name == "completion_ids" else 0
            values = [_pad_steps(v, steps, fill) for v in values]
        out[f.name] = torch.cat(values) if torch.is_tensor(values[0]) else tuple(x for v in values for x in v)
    return Rollout(**out)


def _pad_steps(value: torch.Tensor, steps: int, fill) -> torch.Tensor:
    missing = steps - value.shape[1]
    if not missing:
        return value
    pad = (0, 0, 0, missing) if value.dim() == 3 else (0, missing)
    return torch.nn.functional.pad(value, pad, value=fill)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N / G,) bool: groups whose rewards are not all equal. rewards (N,) ordered group by group.

    >>> informative_groups(torch.tensor([1., 1., 0., 1., 0., 0.]), 2).tolist()
    [False, True, False]
    """
    grouped = rewards.float().view(-1, group_size)
    return (grouped != grouped[:, :1]).any(1)


@dataclass(frozen=True)
class Sample:
    """Rollouts and everything per row that goes with them (rows ordered group by group)."""

    rollout: Rollout
    texts: list[str]
    rewards: list[float]
    prompts: list[str]
    answers: list[str]
    records: list | None = None


@dataclass(frozen=True)
class FillStats:
    rounds: int            # extra rollout rounds run
    extra_prompts: int     # prompts drawn beyond prompts_per_step (the data position advances by these too)
    generated_groups: int  # all groups rolled out this step
    filtered_groups: int   # of those, groups with equal rewards
    sampled_reward_sum: float  # over every completion generated

    def metrics(self, group_size: int) -> dict[str, float]:
        return {"dynamic_filtered_share": self.filtered_groups / self.generated_groups,
                "dynamic_extra_rollouts": float(self.extra_prompts * group_size),
                "dynamic_rounds": float(self.rounds),
                "dynamic_sampled_reward_mean": self.sampled_reward_sum / (self.generated_groups * group_size)}


def fill_batch(first: Sample, draw: Callable[[int, int], Sample], *, group_size: int, max_rounds: int,
               pad_token_id: int) -> tuple[Sample, FillStats]:
    """The step's batch: `first`'s informative groups, topped up by `draw(round, prompts)` for up to `max_rounds`."""
    target = first.rollout.num_rows // group_size
    samples, kept, spare = [first], [], []  # (sample index, group index)
    rounds = extra = 0

    def sort(index: int) -> None:
        for g, useful in enumerate(informative_groups(torch.tensor(samples[index].rewards), group_size).tolist()):
            (kept if useful else spare).append((index, g))

    sort(0)
    while len(kept) < target and rounds < max_rounds:
        rounds += 1
        missing = target - len(kept)
        samples.append(draw(rounds, missing))
        extra += missing
        sort(len(samples) - 1)
    chosen = kept + spare[:target - len(kept)]
    stats = FillStats(rounds=rounds, extra_prompts=extra, generated_groups=target + extra,
                      filtered_groups=len(spare), sampled_reward_sum=sum(sum(s.rewards) for s in samples))
    if not rounds and len(kept) == target:
        return first, stats
    return _take(samples, chosen, group_size, pad_token_id), stats


def _take(samples: list[Sample], chosen: list[tuple[int, int]], group_size: int, pad_token_id: int) -> Sample:
    """The chosen groups of all samples as one Sample."""
    offsets, total = [], 0
    for s in samples:
        offsets.append(total)
        total += s.rollout.num_rows
    merged = concat_rollouts([s.rollout for s in samples], pad_token_id)
    rows = [offsets[i] + g * group_size + j for i, g in chosen for j in range(group_size)]
    local = [(i, g * group_size + j) for i, g in chosen for j in range(group_size)]

    def pick(name: str) -> list:
        return [getattr(samples[i], name)[r] for i, r in local]

    records = pick("records") if samples[0].records is not None else None
    return replace(samples[0], rollout=merged.select(rows), texts=pick("texts"), rewards=pick("rewards"),
                   prompts=pick("prompts"), answers=pick("answers"), records=records)
