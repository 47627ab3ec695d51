"""THE input-embedding function shared by the rollout and the training forward.

e_t = E[y_t]                      if the step was hard,
e_t = sum_j w_j E[v_j]            if soft, with v_j the top-k ids of q_t and w_j = q_t(v_j) / sum_i q_t(v_i).

Departures from the reference:
1. The rollout and the training forward build soft inputs through this one function, with the same
   renormalised weights and the same arithmetic (fp32 accumulation, cast to the embedding dtype): the
   reference mixed unnormalised probabilities in fp32 at rollout and normalised weights in bf16 in
   training (B4).
2. Recorded weights are constants: no gradient flows through the mixture (as in the reference).
"""

from __future__ import annotations

import torch


def topk_mixture_weights(log_q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids of q and their renormalised weights. log_q (..., V) -> ids (..., k), weights (..., k) fp32."""
    top_logp, top_ids = torch.topk(log_q.float(), k, dim=-1)
    weights = torch.softmax(top_logp, dim=-1)  # = q(v_j) / sum_i q(v_i); filtered ids get weight 0
    return top_ids, weights


def soft_embeddings(embedding_weight: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
    """sum_j w_j E[v_j], accumulated in fp32 and cast to the table's dtype. (..., k) -> (..., d)."""
    vectors = embedding_weight[topk_ids].float()  # (..., k, d)
    mixed = (topk_weights.float().unsqueeze(-1) * vectors).sum(-2)  # same arithmetic per row, any batch shape
    return mixed.to(embedding_weight.dtype)


def mix_inputs(embedding_weight: torch.Tensor, token_ids: torch.Tensor, topk_ids: torch.Tensor,
               topk_weights: torch.Tensor, soft_mask: torch.Tensor) -> torch.Tensor:
    """Next-step inputs: E[token_ids] where hard, the top-k mixture where soft_mask is set.

    token_ids (...), topk_ids / topk_weights (..., k), soft_mask (...) bool -> (..., d).
    Only soft positions gather k embeddings, so a training batch with few soft steps stays cheap.
    """
    embeds = embedding_weight[token_ids]
    if soft_mask.any():
        embeds = embeds.clone()
        embeds[soft_mask] = soft_embeddings(embedding_weight, topk_ids[soft_mask], topk_weights[soft_mask])
    return embeds.detach()


def mix_inputs_dense(embedding_weight: torch.Tensor, token_ids: torch.Tensor, topk_ids: torch.Tensor,
                     topk_weights: torch.Tensor, soft_mask: torch.Tensor) -> torch.Tensor:
    """Same values as `mix_inputs`, computed for every row with no data-dependent branch.

    For the decode step (B rows, one position): no host synchronisation, so it can live inside a CUDA graph.
    """
    hard = embedding_weight[token_ids]
    soft = soft_embeddings(embedding_weight, topk_ids, topk_weights)
    return torch.where(soft_mask.unsqueeze(-1), soft, hard).detach()
