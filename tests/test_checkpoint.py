"""Trained-weights export/import: adapter + routers round trip into a fresh policy (reference W13, invariant 9)."""

import pytest
import torch

from tarpo.checkpoint import CheckpointError, load_weights, save_weights
from tarpo.models import apply_lora
from tarpo.policy import HybridPolicy
from tarpo.router import Router, RouterLoadError
from tiny_models import random_backbone


def lora_policy(seed=0):
    backbone = random_backbone("qwen2", seed=0)
    backbone.requires_grad_(False)
    torch.manual_seed(seed)
    return HybridPolicy(apply_lora(backbone, rank=4, alpha=8), Router(32, (4.6, 0.0)))


def test_trained_weights_round_trip(tmp_path):
    trained = lora_policy(seed=1)
    with torch.no_grad():
        for name, p in trained.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_()
        trained.router.linear.bias += 0.7
    save_weights(trained, tmp_path)
    fresh = lora_policy(seed=2)
    load_weights(fresh, tmp_path)
    a = {k: v for k, v in trained.state_dict().items()}
    b = fresh.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert fresh.reference_router.linear.bias.tolist() == pytest.approx([4.6, 0.0])


def test_missing_adapter_or_router_is_an_error(tmp_path):
    trained = lora_policy()
    save_weights(trained, tmp_path)
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter weights missing"):
        load_weights(lora_policy(), tmp_path)
    (tmp_path / "router.safetensors").unlink()
    with pytest.raises(RouterLoadError):
        load_weights(lora_policy(), tmp_path)
