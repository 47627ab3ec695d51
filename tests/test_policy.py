"""HybridPolicy.reference(): the adapter-free backbone plus the INITIAL router, fed the same inputs as the policy."""

import copy

import pytest
import torch

from tarpo.models import apply_lora
from tarpo.policy import HybridPolicy
from tarpo.router import Router
from tiny_models import HIDDEN, mixed_prompts, random_backbone


def perturbed_lora_policy():
    """A LoRA policy whose adapter and router have moved away from their initial values, and an untouched
    deep copy of the base model (the independent reference)."""
    base = random_backbone("qwen2", seed=3)
    pristine = copy.deepcopy(base)
    router = Router(HIDDEN, (0.5, 0.0), generator=torch.Generator().manual_seed(0))
    policy = HybridPolicy(apply_lora(base, rank=4, alpha=8), router)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name or name.startswith("router."):
                param.add_(torch.randn(param.shape, generator=g) * 0.3)
    return policy, pristine, Router(HIDDEN, (0.5, 0.0), generator=torch.Generator().manual_seed(0))


def forward_inputs(policy):
    ids, mask = mixed_prompts(4, width=7)
    embeds = policy.embedding_weight.detach()[ids]
    embeds[:, -2] = 0.5 * embeds[:, -2] + 0.5 * embeds[:, -3]  # a soft (mixed) input, as the rollout feeds
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return embeds, mask, positions


@torch.no_grad()
def test_reference_is_the_base_model_and_the_initial_router():
    policy, pristine, initial_router = perturbed_lora_policy()
    embeds, mask, positions = forward_inputs(policy)
    tokens, routers = policy(embeds, mask, positions, first_scored=2)
    with policy.reference():
        ref_tokens, ref_routers = policy(embeds, mask, positions, first_scored=2)
    hidden = pristine.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    expected_tokens = pristine.lm_head(hidden[:, 2:]).float()
    torch.testing.assert_close(ref_tokens, expected_tokens, rtol=0, atol=1e-5)
    torch.testing.assert_close(ref_routers, initial_router(hidden[:, 2:]), rtol=0, atol=1e-6)
    assert (tokens - ref_tokens).abs().max() > 1e-2, "the perturbed adapter must change the policy"
    assert (routers - ref_routers).abs().max() > 1e-2, "the perturbed router must change the policy"


@torch.no_grad()
def test_reference_context_restores_the_policy_even_after_an_error():
    policy, _, _ = perturbed_lora_policy()
    embeds, mask, positions = forward_inputs(policy)
    before = policy(embeds, mask, positions, first_scored=0)
    with pytest.raises(RuntimeError, match="inside"):
        with policy.reference():
            raise RuntimeError("inside")
    after = policy(embeds, mask, positions, first_scored=0)
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def test_reference_router_is_frozen_and_separate():
    policy, _, _ = perturbed_lora_policy()
    assert not any(p.requires_grad for p in policy.reference_router.parameters())
    assert policy.reference_router.linear.weight.data_ptr() != policy.router.linear.weight.data_ptr()
