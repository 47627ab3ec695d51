"""Trained-weights export/import: adapter + routers round trip into a fresh policy (loading checks every router)."""

import json

import pytest
import torch

from tarpo.checkpoint import CheckpointError, load_weights, save_weights
from tarpo.models import apply_lora
from tarpo.policy import HybridPolicy
from tarpo.router import Router, RouterLoadError, save_router
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


# ------------------------------------------------------------------ distributed-state checkpoints, one process
from types import SimpleNamespace  # noqa: E402

from safetensors.torch import load_file  # noqa: E402

from tarpo.checkpoint import (TrainerState, choose_checkpoint, list_checkpoints, load_checkpoint,  # noqa: E402
                              optimizer_state, read_weights, router_snapshot, save_checkpoint, trainable_state,
                              write_weights)

ONE_PROCESS = SimpleNamespace(num_processes=1, is_main_process=True, process_index=0, wait_for_everyone=lambda: None)


def trained_policy_and_optimizer(seed=1):
    policy = lora_policy(seed=seed)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    loss = sum((p.float() ** 2).sum() for p in policy.parameters() if p.requires_grad)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return policy, optimizer


def test_weights_from_the_gathered_state_match_peft_and_router_files(tmp_path):
    policy, _ = trained_policy_and_optimizer()
    reference = tmp_path / "reference"  # PEFT's and the router's own save paths
    policy.backbone.save_pretrained(str(reference / "adapter"), safe_serialization=True)
    save_router(policy.router, reference)
    save_router(policy.reference_router, reference, name="router_initial")
    write_weights(policy, trainable_state(ONE_PROCESS, policy), tmp_path / "ours", router_snapshot(policy))
    for name in ("adapter/adapter_model.safetensors", "router.safetensors", "router_initial.safetensors"):
        ours, reference = load_file(tmp_path / "ours" / name), load_file(tmp_path / "reference" / name)
        assert ours.keys() == reference.keys() and ours
        assert all(torch.equal(ours[k], reference[k]) for k in ours), name
    state = read_weights(lora_policy(seed=2), tmp_path / "ours")  # the inverse, keyed like named_parameters
    params = dict(policy.named_parameters())
    assert set(state) == {n for n, p in params.items() if p.requires_grad or "reference_router" in n}
    assert all(torch.equal(state[n], params[n].detach()) for n in state)


def test_a_frozen_router_is_exported_from_its_snapshot(tmp_path):
    policy = lora_policy()
    policy.router.requires_grad_(False)  # router.mode hard: only LoRA trains
    state = trainable_state(ONE_PROCESS, policy)
    assert not any(k.startswith("router.") for k in state)
    write_weights(policy, state, tmp_path, router_snapshot(policy))
    assert torch.equal(load_file(tmp_path / "router.safetensors")["linear.bias"], policy.router.linear.bias)


def test_saving_before_any_step_leaves_the_optimizer_untouched():
    policy = lora_policy()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    saved = optimizer_state(ONE_PROCESS, policy, optimizer)
    assert not optimizer.state and saved["state"] == {}  # torch's API would take a zero-gradient step


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_checkpoint_round_trip_restores_weights_optimizer_rng_and_state(tmp_path):
    policy, optimizer = trained_policy_and_optimizer()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    scheduler.step()
    state = TrainerState(step=7, data_position=28, run_id="abc", params_hash="h1")
    path = save_checkpoint(tmp_path, ONE_PROCESS, policy, optimizer, scheduler, state, keep=2,
                           routers=router_snapshot(policy))
    expected_rng = torch.rand(3)
    fresh = lora_policy(seed=3)
    fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda step: 0.5)
    assert choose_checkpoint(tmp_path, ONE_PROCESS) == path
    loaded = load_checkpoint(path, ONE_PROCESS, fresh, fresh_optimizer, fresh_scheduler)
    assert loaded == state
    assert torch.equal(torch.rand(3), expected_rng)  # RNG as at save time
    for (name, a), b in zip(policy.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name
    a, b = optimizer.state_dict(), fresh_optimizer.state_dict()
    as_lists = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in a["param_groups"]]
    assert as_lists == b["param_groups"]  # (betas come back as a list from torch's state-dict API)
    for key in a["state"]:
        assert all(torch.equal(a["state"][key][k], b["state"][key][k]) for k in a["state"][key])
    assert fresh_scheduler.last_epoch == scheduler.last_epoch
    assert json.loads((path / "trainer_state.json").read_text())["saved_by"] == {"world_size": 1, "engine": "single"}


def test_a_checkpoint_written_with_other_params_is_skipped(tmp_path):
    policy, optimizer = trained_policy_and_optimizer()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for step, digest in ((1, "old"), (2, "new"), (3, "other")):
        save_checkpoint(tmp_path, ONE_PROCESS, policy, optimizer, scheduler,
                        TrainerState(step=step, params_hash=digest), keep=5, routers=router_snapshot(policy))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001", "step-000002", "step-000003"]
    said = []
    assert choose_checkpoint(tmp_path, ONE_PROCESS, warn=said.append, params_hash="new").name == "step-000002"
    assert "written with other params" in said[0]
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary directory left behind
