"""Decode attention that reads the KV cache in its KV-head layout, registered with `transformers`.

Why: with a 4-D mask under torch.compile, `transformers`' SDPA integration expands K and V from the KV heads
to every query head (`repeat_kv`) at every decode step; at the Qwen2.5-7B shape (28 query / 4 KV heads) that
writes and reads about 20 GB per step, more than the weights. For a one-query step the expansion is not
needed: the G = H / H_kv query heads that share a KV head are stacked as G "query positions" of that KV
head, and one SDPA call over (B, H_kv, G, D) queries and (B, H_kv, L, D) keys gives the same result. The
(B, 1, 1, L) mask broadcasts over the stacked heads because they all belong to the same step.

`transformers` maps query head h to KV head h // G (`repeat_kv` is an expand on a new axis after the KV
axis), so query heads are grouped by a plain reshape (B, H, 1, D) -> (B, H_kv, G, D).

Used only while the fast rollout decodes (`decode_attention_active`); prefill and training keep the model's
own attention. Steps with more than one query fall back to `transformers`' SDPA function.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

DECODE_ATTENTION = "tarpo_decode"


def decode_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """`transformers` attention function: query (B, H, q, D), key/value (B, H_kv, L, D), additive or bool mask
    (B, 1, q, L) -> output (B, q, H, D) and no weights. q == 1 runs grouped, without expanding K/V."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or heads % kv_heads or dropout or kwargs.get("softcap") is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)  # (B, H_kv, G, D)
    if attention_mask is not None:
        attention_mask = attention_mask[..., : key.shape[-2]]  # (B, 1, 1, L) broadcasts over H_kv and G
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2), None  # (B, 1, H, D_v)


def register_decode_attention() -> None:
    """Make `DECODE_ATTENTION` a valid `config._attn_implementation` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)


@contextlib.contextmanager
def decode_attention_active(config) -> Iterator[None]:
    """Within the block, the model of `config` (its text config) attends with `decode_attention`."""
    register_decode_attention()
    previous = config._attn_implementation
    config._attn_implementation = DECODE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
