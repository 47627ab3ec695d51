"""tarpo/attention.py: decode attention in the KV-head layout against textbook attention, and its switch."""

import pytest
import torch

from tarpo.attention import DECODE_ATTENTION, decode_attention, decode_attention_active
from tiny_models import random_policy


def reference_attention(query, key, value, additive_mask, scale):
    """Textbook attention with K/V repeated per query head (what `repeat_kv` does): (B, H, 1, D) out."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    weights = torch.softmax(query @ key.transpose(-1, -2) * scale + additive_mask, dim=-1)
    return weights @ value


def test_decode_attention_equals_repeated_kv_attention():
    g = torch.Generator().manual_seed(0)
    B, H, H_kv, L, D = 3, 6, 2, 11, 4
    query, key, value = (torch.randn(*shape, generator=g, dtype=torch.float64)
                         for shape in ((B, H, 1, D), (B, H_kv, L, D), (B, H_kv, L, D)))
    allowed = torch.rand(B, 1, 1, L, generator=g) < 0.7
    allowed[..., 0] = True
    mask = torch.zeros(B, 1, 1, L, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
    out, weights = decode_attention(None, query, key, value, mask, scaling=0.3)
    assert weights is None and out.shape == (B, 1, H, D)
    expected = reference_attention(query, key, value, mask, 0.3).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_decode_attention_active_switches_and_restores_the_implementation():
    policy = random_policy()
    config = policy.causal_lm.config
    before = config._attn_implementation
    with decode_attention_active(config):
        assert config._attn_implementation == DECODE_ATTENTION
    assert config._attn_implementation == before
    with pytest.raises(RuntimeError), decode_attention_active(config):
        raise RuntimeError("restored even on error")
    assert config._attn_implementation == before
