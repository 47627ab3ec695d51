"""Log-probs of the recorded tokens (and the entropy metric) without (B, T, V) fp32 copies of the logits.

The dense way (logits -> fp32 -> / temperature -> log_softmax -> gather, plus the entropy's temporaries)
holds several full-vocabulary fp32 tensors per micro-batch, one of them kept for backward: 2.5 GB each at
8 x 512 tokens and a 152k vocabulary. Here the output layer and `tarpo.sampling` run over chunks of about
`chunk_tokens` positions; with gradients and more than one chunk, each chunk is checkpointed, so backward
recomputes its logits (one more pass of the output layer) instead of keeping them. A single chunk keeps
its log-probs for backward as the dense path does: that is at most `chunk_tokens` x V, the same bound, and
small batches do not pay the recomputation (+20 % of a smollm2 micro-step on CPU). Same functions, same numbers as the dense
path (`chunk_tokens=None`), up to summation order in the output layer's backward.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from tarpo.sampling import entropy_from_logprobs, filters_active, gather_logprob, sampling_logprobs, tempered_logprobs

CHUNK_TOKENS = 1024  # rows x positions per chunk: about 0.6 GB per fp32 copy at a 152k vocabulary


def token_logprobs(hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor, *,
                   temperature: float, top_k: int = 0, top_p: float = 1.0, with_entropy: bool = True,
                   chunk_tokens: int | None = 0, vocab_size: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """hidden (B, T, d), ids (B, T) -> (log q(ids), log p(ids), entropy of q), each (B, T) fp32.

    q is the sampling distribution (temperature, top-k, top-p); p = softmax(z / tau) unfiltered, what the
    token KL compares (tarpo.objective). When no filter is active (known from `vocab_size`; None = assume
    active) p is q and the SAME tensor is returned twice. Both carry gradient.
    head: hidden -> (…, V) logits (the policy's output layer). chunk_tokens: 0 = `CHUNK_TOKENS` (read at call
    time, so a benchmark can switch the whole trainer to dense), None = one dense pass.
    The entropy is a metric: computed without gradient, and only when asked (not for the reference pass).
    """
    batch, steps = ids.shape
    chunk_tokens = CHUNK_TOKENS if chunk_tokens == 0 else chunk_tokens
    width = steps if chunk_tokens is None else max(1, chunk_tokens // max(batch, 1))
    recompute = torch.is_grad_enabled() and width < steps  # several chunks: keep none of them for backward
    filtered = vocab_size is None or filters_active(vocab_size, top_k, top_p)
    logps, tempered, entropies = [], [], []
    for start in range(0, steps, width):
        piece = _chunk_scorer(head, temperature, top_k, top_p, entropies if with_entropy else None, filtered)
        h, y = hidden[:, start:start + width], ids[:, start:start + width]
        logp, logp_tempered = checkpoint(piece, h, y, use_reentrant=False) if recompute else piece(h, y)
        logps.append(logp)
        tempered.append(logp_tempered)
    token_logp = torch.cat(logps, 1)
    return (token_logp, torch.cat(tempered, 1) if filtered else token_logp,
            torch.cat(entropies, 1) if with_entropy else None)


def _chunk_scorer(head, temperature, top_k, top_p, entropies: list | None, filtered: bool):
    """Scoring function of one chunk; appends the chunk's entropy on its first call only (a checkpointed
    chunk runs again in backward, and the metric must be neither recomputed nor duplicated)."""
    calls = []

    def score(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head(h)
        log_q = sampling_logprobs(logits, temperature, top_k, top_p)  # (B, c, V) fp32
        if entropies is not None and not calls:
            with torch.no_grad():
                entropies.append(entropy_from_logprobs(log_q.detach()))
        calls.append(1)
        logp = gather_logprob(log_q, y)
        return logp, (gather_logprob(tempered_logprobs(logits, temperature), y) if filtered else logp)

    return score
