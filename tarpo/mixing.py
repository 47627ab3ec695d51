"""THE input-embedding function shared by the rollout and the training forward.

e_t = E[y_t]                      if the step was hard,
e_t = sum_j w_j E[v_j]            if soft, with v_j the top-k ids of q_t and w_j = q_t(v_j) / sum_i q_t(v_i),
e_t = sum_j w_j E[v_j] + s * n_t  if soft with gaussian noise (n_t ~ N(0, I), s = noise std, see below).

Soft-input noise (`router.soft_noise`), for within-group diversity of soft steps; soft steps only:
- gumbel: w <- softmax(log w + scale * g), g ~ Gumbel(0, 1) per top-k entry (a Gumbel-softmax at temperature 1
  on the renormalised weights; scale -> 0 gives w back). The perturbed weights ARE the recorded weights, so the
  training forward rebuilds the input from the record like any soft step.
- gaussian: n_t is a pure function of one integer seed per step (`gaussian_noise`), and the rollout records that
  seed and the std s = scale * RMS of the embedding table (the noise is relative to the size of an embedding
  entry, so one scale means the same on every model). Why a seed and not the vector: the vector is d floats per
  step (14 KB at d = 3584) for every row and step of every rollout batch; the seed is 8 bytes, and the training
  forward regenerates the vectors of the soft positions only.

Departures from the reference:
1. The rollout and the training forward build soft inputs through this one function, with the same
   renormalised weights and the same arithmetic (fp32 accumulation, cast to the embedding dtype): the
   reference mixed unnormalised probabilities in fp32 at rollout and normalised weights in bf16 in
   training, so the inputs it trained on were not the ones it had generated from.
2. Recorded weights are constants: no gradient flows through the mixture (as in the reference).
"""

from __future__ import annotations

import math

import torch

from tarpo.sampling import standard_gumbel

SOFT_NOISE_KINDS = ("none", "gumbel", "gaussian")  # = the Literal of config.RouterConfig.soft_noise (a test checks)
NOISE_SEED_LIMIT = 2**31  # gaussian noise seeds are drawn in [0, NOISE_SEED_LIMIT)
_MASK32 = 0xFFFFFFFF
_SEED_SALT = 0x9E3779B9


def topk_mixture_weights(log_q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids of q and their renormalised weights. log_q (..., V) -> ids (..., k), weights (..., k) fp32."""
    top_logp, top_ids = torch.topk(log_q.float(), k, dim=-1)
    weights = torch.softmax(top_logp, dim=-1)  # = q(v_j) / sum_i q(v_i); filtered ids get weight 0
    return top_ids, weights


def gumbel_perturbed_weights(weights: torch.Tensor, uniforms: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(log w + scale * g) with g = -log(-log u) ~ Gumbel(0, 1). (..., k) -> (..., k) fp32.

    Zero weights (ids the token filters removed) stay exactly zero; scale -> 0 gives w back; at scale 1 the
    largest perturbed weight is a sample from w (Gumbel-max).
    """
    return torch.softmax(torch.log(weights.float()) + scale * standard_gumbel(uniforms), dim=-1)


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2^32 for int64 x in [0, 2^32), in 16-bit halves so that no product overflows int64."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32 constants) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def gaussian_noise(seeds: torch.Tensor, dim: int) -> torch.Tensor:
    """Standard normal vectors that depend only on the seeds: seeds (...) int -> (..., dim) fp32.

    Counter-based (a hash of (seed, counter), then Box-Muller), so the rollout and the training forward make the
    same vector from a recorded seed on any batch shape, with no generator state, and inside a CUDA graph.
    """
    counters = torch.arange(2 * dim, device=seeds.device, dtype=torch.long)  # two uniforms per output
    seeds = seeds.long().unsqueeze(-1) & _MASK32
    mixed = _hash32(_hash32(seeds) ^ _hash32(counters))  # (..., 2 dim); symmetric in seed and counter, hence:
    bits = _hash32(mixed ^ _hash32(seeds ^ _SEED_SALT)) >> 8  # a second seed-keyed round; 24 bits fit fp32
    uniforms = (bits.float() + 0.5) * (1.0 / 2**24)  # in (0, 1): the log below is finite
    u1, u2 = uniforms[..., :dim], uniforms[..., dim:]
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


def embedding_rms(embedding_weight: torch.Tensor, rows_per_chunk: int = 16384) -> torch.Tensor:
    """Root mean square of the table's entries, fp32 (), in row chunks: no fp32 copy of a large table."""
    total = torch.zeros((), dtype=torch.float32, device=embedding_weight.device)
    for start in range(0, embedding_weight.shape[0], rows_per_chunk):
        total = total + embedding_weight[start:start + rows_per_chunk].detach().float().pow(2).sum()
    return (total / embedding_weight.numel()).sqrt()


def soft_embeddings(embedding_weight: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                    noise_seeds: torch.Tensor | None = None, noise_std: torch.Tensor | None = None) -> torch.Tensor:
    """sum_j w_j E[v_j] (+ noise_std * gaussian_noise(noise_seeds)), in fp32, cast to the table's dtype.

    topk_ids / topk_weights (..., k), noise_seeds / noise_std (...) or None -> (..., d).
    """
    vectors = embedding_weight[topk_ids].float()  # (..., k, d)
    mixed = (topk_weights.float().unsqueeze(-1) * vectors).sum(-2)  # same arithmetic per row, any batch shape
    if noise_seeds is not None:
        mixed = mixed + noise_std.float().unsqueeze(-1) * gaussian_noise(noise_seeds, mixed.shape[-1])
    return mixed.to(embedding_weight.dtype)


def mix_inputs(embedding_weight: torch.Tensor, token_ids: torch.Tensor, topk_ids: torch.Tensor,
               topk_weights: torch.Tensor, soft_mask: torch.Tensor, noise_seeds: torch.Tensor | None = None,
               noise_std: torch.Tensor | None = None) -> torch.Tensor:
    """Next-step inputs: E[token_ids] where hard, the top-k mixture where soft_mask is set.

    token_ids (...), topk_ids / topk_weights (..., k), soft_mask (...) bool -> (..., d). Gaussian noise: seeds
    shaped like token_ids and a std broadcastable to it (e.g. (B, 1)), or both None.
    Only soft positions gather k embeddings (and draw noise), so a training batch with few soft steps stays cheap.
    """
    embeds = embedding_weight[token_ids]
    if soft_mask.any():
        embeds = embeds.clone()
        noise = (None, None) if noise_seeds is None else (
            noise_seeds[soft_mask], torch.broadcast_to(noise_std, token_ids.shape)[soft_mask])
        embeds[soft_mask] = soft_embeddings(embedding_weight, topk_ids[soft_mask], topk_weights[soft_mask], *noise)
    return embeds.detach()


def mix_inputs_dense(embedding_weight: torch.Tensor, token_ids: torch.Tensor, topk_ids: torch.Tensor,
                     topk_weights: torch.Tensor, soft_mask: torch.Tensor, noise_seeds: torch.Tensor | None = None,
                     noise_std: torch.Tensor | None = None) -> torch.Tensor:
    """Same values as `mix_inputs`, computed for every row with no data-dependent branch.

    For the decode step (B rows, one position): no host synchronisation, so it can live inside a CUDA graph.
    Hard rows get E[token_ids] exactly, whatever the noise.
    """
    hard = embedding_weight[token_ids]
    soft = soft_embeddings(embedding_weight, topk_ids, topk_weights, noise_seeds, noise_std)
    return torch.where(soft_mask.unsqueeze(-1), soft, hard).detach()
