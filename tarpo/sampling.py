"""The token sampling distribution q_t and seeded sampling from it.

q_t = softmax(filter(z_t / tau)) with optional top-k and top-p filters (tau = rollout.temperature).
The same function serves the rollout (to sample) and the training forward (to score), so the policy
gradient is taken for the distribution that produced the data (the authors' released code scored tokens at
temperature 1 over the whole vocabulary while it sampled at 0.5 with top-50: a gradient for another distribution).

The token KL is NOT scored under q_t: top-k / top-p give the policy and the reference different supports,
and KL(q_theta || q_ref) is infinite as soon as the policy keeps a token the reference filtered out. The KL
compares the tempered, unfiltered distributions p_t = softmax(z_t / tau) instead (`tempered_logprobs`),
which share the full vocabulary as support (see `tarpo.objective.k3`).

Sampling uses Gumbel-max with uniforms drawn from an explicit `torch.Generator`: the eager rollout and
the CUDA fast path consume the random stream identically and therefore pick identical tokens.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")
# Floor for the log-prob of a token that the filters removed (possible only when scoring after the
# policy moved, num_iterations > 1): finite so that ratios become 0 instead of NaN.
LOGP_FLOOR = -1e4


def tempered_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p = log softmax(z / tau) over the whole vocabulary (no filter): what the token KL compares.

    logits (..., V) -> (..., V) fp32, every entry finite.
    """
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def filters_active(vocab: int, top_k: int = 0, top_p: float = 1.0) -> bool:
    """True when top-k or top-p removes tokens, i.e. q_t differs from the tempered p_t."""
    return bool(top_k and 0 < top_k < vocab) or top_p < 1.0


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """log q over the vocabulary; filtered entries are -inf. logits (..., V) -> (..., V) fp32.

    top-k keeps every token whose scaled logit reaches the k-th largest (ties at the boundary are all kept);
    top-p then keeps the smallest prefix, by decreasing probability, whose mass reaches top_p.

    >>> log_q = sampling_logprobs(torch.tensor([2.0, 1.0, 0.0, 0.0]), temperature=1.0, top_k=2)
    >>> [round(p, 4) for p in log_q.exp().tolist()]
    [0.7311, 0.2689, 0.0, 0.0]
    """
    scaled = logits.float() / temperature
    vocab = scaled.shape[-1]
    if top_k and 0 < top_k < vocab:
        kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = mass_before >= top_p  # keep the smallest prefix whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, NEG_INF)
    return torch.log_softmax(scaled, dim=-1)


def gather_logprob(log_q: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log q[ids] with a finite floor for filtered ids. log_q (..., V), ids (...) -> (...)."""
    return log_q.gather(-1, ids.unsqueeze(-1)).squeeze(-1).clamp_min(LOGP_FLOOR)


def entropy_from_logprobs(log_q: torch.Tensor) -> torch.Tensor:
    """Entropy of each distribution, ignoring filtered (-inf) entries. (..., V) -> (...)."""
    probs = log_q.exp()
    return -(probs * log_q.masked_fill(probs == 0, 0.0)).sum(-1)


def standard_gumbel(uniforms: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) draws -log(-log u) from uniforms in [0, 1), clamped so that every draw is finite."""
    tiny = torch.finfo(torch.float32).tiny
    return -torch.log(-torch.log(uniforms.clamp(min=tiny, max=1.0 - 1e-7)))


def gumbel_argmax(log_q: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample from softmax(log_q) with Gumbel-max, given uniforms in [0, 1) of the same shape."""
    return torch.argmax(log_q + standard_gumbel(uniforms), dim=-1)
