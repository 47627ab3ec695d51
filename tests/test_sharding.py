"""tarpo/sharding.py: what `prepare` hands Accelerate for DeepSpeed (batch geometry, clipping, loss scale) and the
sharding paths it refuses with the fix."""

import json
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DeepSpeedPlugin, DistributedType

from tarpo import sharding


class FakeDeepSpeedAccelerator:
    """What `sharding.prepare` sees of an Accelerator configured for DeepSpeed (needs CUDA to be real)."""

    distributed_type = DistributedType.DEEPSPEED
    is_fsdp2 = False

    def __init__(self, zero_stage: int, num_processes: int = 4):
        self.state = SimpleNamespace(deepspeed_plugin=DeepSpeedPlugin(zero_stage=zero_stage))
        self.num_processes = num_processes
        self.gradient_accumulation_steps = 1
        self.calls = []

    def prepare(self, *objects):
        plugin = self.state.deepspeed_plugin
        # Accelerate 1.15 `_prepare_deepspeed` raises when no dataloader is passed and this is "auto"
        assert not plugin.is_auto("train_micro_batch_size_per_gpu")
        self.calls.append(("prepare", objects, json.loads(json.dumps(plugin.deepspeed_config, default=str))))
        return objects


def test_deepspeed_prepare_gets_batch_geometry_and_clipping_before_prepare():
    accelerator = FakeDeepSpeedAccelerator(zero_stage=2)
    policy, optimizer = torch.nn.Linear(2, 2), object()
    module, prepared = sharding.prepare(accelerator, policy, optimizer, micro_batch_size=2, micro_batches=3,
                                        max_grad_norm=0.1)
    assert (module, prepared) == (policy, optimizer)
    [(name, objects, config)] = accelerator.calls
    assert objects == (policy, optimizer)  # no dataloader needed
    assert config["train_micro_batch_size_per_gpu"] == 2
    assert config["gradient_accumulation_steps"] == 3
    assert config["train_batch_size"] == 2 * 3 * 4
    assert config["gradient_clipping"] == 0.1
    assert accelerator.gradient_accumulation_steps == 3
    # the engine divides each micro-batch loss by 3 and averages 4 processes; our loss is a global sum
    assert sharding.loss_scale(accelerator, 3) == 12.0
    assert sharding.engine_steps_in_backward(accelerator)


def test_unsupported_sharding_is_refused_with_the_fix():
    with pytest.raises(sharding.ShardingError, match="fsdp.yaml"):
        sharding.prepare(FakeDeepSpeedAccelerator(zero_stage=3), None, None, micro_batch_size=1, micro_batches=1,
                         max_grad_norm=1.0)
    fsdp1 = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False, num_processes=2)
    with pytest.raises(sharding.ShardingError, match="fsdp_version: 2"):
        sharding.prepare(fsdp1, None, None, micro_batch_size=1, micro_batches=1, max_grad_norm=1.0)
