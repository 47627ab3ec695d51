"""The TARPO objective: group advantages, clipped token and router policy terms, k3 KL, aggregation.

Pure functions over tensors; the trainer supplies log-probs from `tarpo.rollout.replay`.

For completion i with advantage A_i and per-token quantities at step t:
  token term   -min(rho_t A_i, clip(rho_t, 1-eps_low, 1+eps_high) A_i) + beta * k3(ref, new)   over completion_mask
  router term  lambda * [ same clipped form on the router ratio + beta * k3 on the router ]   over decision_mask
with rho = exp(logp_new - logp_old) and k3(ref, new) = exp(ref - new) - (ref - new) - 1.

Which distributions each term uses:
- the clipped ratio rho uses log q_t, the sampling distribution with its top-k / top-p filters: the policy
  gradient is taken for the distribution that produced the tokens;
- the token KL compares the tempered, UNFILTERED distributions p_t = softmax(z_t / tau) of the policy and the
  reference at the sampled tokens. Under filters the two policies have different supports and KL(q_theta || q_ref)
  is infinite whenever the policy keeps a token the reference filtered out (the -1e4 log-prob floor made that
  ~1e4 per token); p_t has the whole vocabulary as support, so the KL is finite and smooth, and with no filter
  configured p_t = q_t and nothing changes. The samples come from q_theta rather than p_theta, a small
  bias of the estimator that k3 tolerates (it stays >= 0 per sample). TRL's GRPO scores its KL the same way
  (temperature-scaled logits, no filter).
- log-ratios are zeroed wherever a mask excludes the step BEFORE exp, so padded or forced steps contribute
  exactly 0 and never inf * 0 = NaN, in the value or in the gradient.

Departures from the reference (the authors' released TARPO code):
1. The router term covers sampled decisions only (decision_mask); forced-hard steps add nothing (the reference's
   pushed the router toward hard after the marker when the advantage was positive, toward soft when negative).
2. `router.loss_weight` (lambda) scales the router KL too, and the router KL is reported (the reference scaled
   only the router's policy-gradient term and never logged its KL).
3. PPO clipping with epsilon low/high and num_iterations >= 1; with num_iterations = 1 the old log-probs are
   the detached new ones, which is exactly the reference's on-policy update (ratio 1, gradient of logp).
4. Aggregation `seq-mean` (reference), `token-mean` (DAPO) or `dr-grpo` (constant normaliser); the
   normaliser is taken over the whole rollout batch so that micro-batching does not change the loss.
5. TRL's `loss_type` names are accepted too. `grpo`, `dapo` and `dr_grpo` are the same losses as
   `seq-mean`, `token-mean` and `dr-grpo` (TRL's grpo averages per-sequence means over the local batch, then over
   accumulation steps and processes, which for equal-sized micro-batches is the mean over the whole batch; its
   dapo divides by the active tokens of the global batch; its dr_grpo by batch x max_completion_length), so they
   are aliases. `bnpo` is different: each micro-batch is divided by ITS OWN active tokens and the micro-batch
   losses are averaged, so it depends on how the batch is cut into micro-batches (with one micro-batch on one
   process it equals token-mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("seq-mean", "token-mean", "dr-grpo", "grpo", "bnpo", "dr_grpo", "dapo")  # = TrainConfig's Literal
# TRL loss_type names that are exactly one of ours (see 5. above); bnpo has its own branch in `aggregate`.
AGGREGATION_ALIASES = {"grpo": "seq-mean", "dapo": "token-mean", "dr_grpo": "dr-grpo"}
ADVANTAGE_SCALINGS = ("group", "batch", "none")


def group_advantages(rewards: torch.Tensor, group_size: int, scaling: str = "group", epsilon: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean_G r) / (std_G r + eps); rewards (N,) ordered group by group -> (N,).

    scaling: "group" divides by each group's unbiased std, "batch" by the whole batch's std, "none" only centres.
    All-equal groups get advantage 0.
    """
    if scaling not in ADVANTAGE_SCALINGS:
        raise ValueError(f"advantage scaling must be one of {ADVANTAGE_SCALINGS}, got {scaling!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(1, keepdim=True)
    if scaling == "group":
        centred = centred / (grouped.std(1, unbiased=True, keepdim=True) + epsilon)
    elif scaling == "batch":
        centred = centred / (rewards.float().std(unbiased=True) + epsilon)
    return centred.reshape(-1)


def k3(ref_logp: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) on samples from pi_theta; >= 0, 0 when equal.

    Where `mask` is False the log-ratio is set to 0 before exp, so the term is exactly 0 there.

    >>> k3(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -50.0]), mask=torch.tensor([True, False])).tolist()
    [0.0, 0.0]
    >>> round(k3(torch.tensor([-1.0]), torch.tensor([-2.0])).item(), 6)  # e - 1 - 1
    0.718282
    """
    delta = _masked_log_ratio(ref_logp, logp, mask)
    return torch.expm1(delta) - delta


def _masked_log_ratio(numerator: torch.Tensor, denominator: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """numerator - denominator, and 0 where mask is False (so a later exp cannot overflow there)."""
    delta = numerator - denominator
    return delta if mask is None else torch.where(mask.bool(), delta, torch.zeros_like(delta))


def clipped_policy_term(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                        eps_low: float, eps_high: float, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step PPO loss -min(rho A, clip(rho) A) and where clipping was active. logp (B, T), advantages (B,).

    Where `mask` (B, T) is False the ratio is taken as 1 (log-ratio zeroed before exp); callers mask those steps out.
    """
    ratio = torch.exp(_masked_log_ratio(logp, logp_old, mask))
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).detach()


@dataclass(frozen=True)
class Normaliser:
    """Sizes of the WHOLE rollout batch, so that per-micro-batch losses add up to the batch loss."""

    rows: int
    tokens: int
    max_new_tokens: int
    micro_batches: int = 1  # micro-batches in the batch over all processes (bnpo averages their losses)


def aggregate(per_step: torch.Tensor, completion_mask: torch.Tensor, mode: str, norm: Normaliser) -> torch.Tensor:
    """This micro-batch's share of the batch loss. per_step (B, T) already masked to zero where it must not count.

    seq-mean: mean over rows of (sum over the row / row length); token-mean: sum / all tokens in the batch;
    dr-grpo: sum / (rows * max_new_tokens); bnpo: (sum / this micro-batch's tokens) / micro-batches.
    TRL's names grpo, dapo, dr_grpo are aliases of seq-mean, token-mean, dr-grpo.
    """
    mode = AGGREGATION_ALIASES.get(mode, mode)
    if mode == "bnpo":
        return per_step.sum() / completion_mask.sum().clamp_min(1) / norm.micro_batches
    if mode == "seq-mean":
        lengths = completion_mask.sum(1).clamp_min(1)
        return (per_step.sum(1) / lengths).sum() / norm.rows
    if mode == "token-mean":
        return per_step.sum() / max(norm.tokens, 1)
    if mode == "dr-grpo":
        return per_step.sum() / (norm.rows * norm.max_new_tokens)
    raise ValueError(f"loss aggregation must be one of {AGGREGATIONS}, got {mode!r}")


@dataclass(frozen=True)
class LossSettings:
    clip_epsilon_low: float = 0.2
    clip_epsilon_high: float = 0.2
    beta: float = 0.005
    router_weight: float = 0.1  # lambda; 0 turns the router term off (modes hard / soft-fixed)
    aggregation: str = "seq-mean"


@dataclass(frozen=True)
class LossInputs:
    """Everything the loss reads for one micro-batch; all (B, T) except advantages (B,).

    token_logp / old_token_logp are under the sampling distribution q_t (filters included);
    tempered_token_logp / ref_token_logp under the tempered, unfiltered p_t (the KL's distribution).
    tempered_token_logp None means "same as token_logp", which is exact when no top-k / top-p filter is set.
    """

    token_logp: torch.Tensor
    router_logp: torch.Tensor
    old_token_logp: torch.Tensor
    old_router_logp: torch.Tensor
    ref_token_logp: torch.Tensor | None
    ref_router_logp: torch.Tensor | None
    advantages: torch.Tensor
    completion_mask: torch.Tensor
    decision_mask: torch.Tensor
    tempered_token_logp: torch.Tensor | None = None


def tarpo_loss(x: LossInputs, settings: LossSettings, norm: Normaliser) -> tuple[torch.Tensor, dict[str, tuple[float, float]]]:
    """Loss of one micro-batch and its statistics as {name: (sum, count)} (merge with `merge_stats`)."""
    mask = x.completion_mask.float()
    decided = (x.decision_mask & x.completion_mask).float()
    token_pg, token_clipped = clipped_policy_term(x.token_logp, x.old_token_logp, x.advantages,
                                                  settings.clip_epsilon_low, settings.clip_epsilon_high,
                                                  x.completion_mask)
    per_step = token_pg * mask
    stats = {"token_clip_fraction": _masked_sum(token_clipped.float(), mask)}
    if x.ref_token_logp is not None and settings.beta:
        kl_logp = x.token_logp if x.tempered_token_logp is None else x.tempered_token_logp
        token_kl = k3(x.ref_token_logp, kl_logp, x.completion_mask)
        per_step = per_step + settings.beta * token_kl * mask
        stats["kl_token"] = _masked_sum(token_kl.detach(), mask)
    if settings.router_weight:
        router_pg, router_clipped = clipped_policy_term(x.router_logp, x.old_router_logp, x.advantages,
                                                        settings.clip_epsilon_low, settings.clip_epsilon_high,
                                                        decided.bool())
        router_step = router_pg
        stats["router_clip_fraction"] = _masked_sum(router_clipped.float(), decided)
        if x.ref_router_logp is not None and settings.beta:
            router_kl = k3(x.ref_router_logp, x.router_logp, decided.bool())
            router_step = router_step + settings.beta * router_kl
            stats["kl_router"] = _masked_sum(router_kl.detach(), decided)
        per_step = per_step + settings.router_weight * router_step * decided
    loss = aggregate(per_step, x.completion_mask, settings.aggregation, norm)
    return loss, stats


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    return float((values * mask).sum()), float(mask.sum())


def merge_stats(parts: list[dict[str, tuple[float, float]]]) -> dict[str, float]:
    """Combine per-micro-batch (sum, count) statistics into means."""
    totals: dict[str, list[float]] = {}
    for part in parts:
        for name, (total, count) in part.items():
            acc = totals.setdefault(name, [0.0, 0.0])
            acc[0] += total
            acc[1] += count
    return {name: (s / c if c else 0.0) for name, (s, c) in totals.items()}


def advantage_stats(advantages: torch.Tensor, rewards: torch.Tensor, group_size: int) -> dict[str, float]:
    """Reward and advantage summary for logging, including the share of groups with no signal."""
    grouped = rewards.float().view(-1, group_size)
    return {
        "reward_mean": float(rewards.float().mean()), "reward_std": float(rewards.float().std()) if rewards.numel() > 1 else 0.0,
        "advantage_mean": float(advantages.mean()), "advantage_std": float(advantages.std()) if advantages.numel() > 1 else 0.0,
        "advantage_min": float(advantages.min()), "advantage_max": float(advantages.max()),
        "zero_std_groups": float((grouped.std(1) == 0).float().mean()),
    }
