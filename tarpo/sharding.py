"""What the trainer needs from the distributed engine beyond a plain `accelerator.prepare(policy, optimizer)`.

The trainer speaks to one interface whatever Accelerate was configured with (one process, DDP, FSDP2,
DeepSpeed ZeRO-1/2); the differences live here, each for a reason found in Accelerate 1.15's code:

1. DeepSpeed: `prepare` needs a micro-batch size when no dataloader is prepared, and the engine steps on
   its own at the gradient-accumulation boundary. We tell it the micro-batch size, the number of
   micro-batches per optimizer step and our clipping threshold before `prepare`, and mark every
   micro-batch but the last as "not a boundary" (`sync_gradients`), so the engine steps once per update.
   The engine divides each micro-batch loss by its accumulation count; `loss_scale` undoes that because our
   loss is already normalised over the whole batch. ZeRO-3 is refused: the rollout reads parameters outside
   `forward` (embedding table, heads), which ZeRO-3 partitions; FSDP2 is the parameter-sharding path.
2. DDP and FSDP: every micro-batch but the last runs under `accelerator.no_sync`, so gradients are
   all-reduced (DDP) or reduce-scattered (FSDP2) once per update instead of once per micro-batch.
3. FSDP2: the rollout and the replay inputs call the backbone's pieces directly (decoder, heads, embedding
   table), not through the root `forward`. The root is lazily initialised right after `prepare` (FSDP2
   otherwise takes the first module that runs forward, a decoder layer, for the root) and its parameter
   group (embeddings, final norm, heads, routers) is all-gathered before such direct use; decoder layers
   gather their own parameters in their forward hooks. Before state-dict work everything is resharded.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class ShardingError(RuntimeError):
    """The distributed configuration cannot run this trainer (says which setting to change)."""


def engine_name(accelerator) -> str:
    """`single`, `ddp`, `fsdp2`, `fsdp1` or `deepspeed`: which code path the trainer takes."""
    kind = str(accelerator.distributed_type).split(".")[-1]
    if kind == "DEEPSPEED":
        return "deepspeed"
    if kind == "FSDP":
        return "fsdp2" if accelerator.is_fsdp2 else "fsdp1"
    return "ddp" if accelerator.num_processes > 1 else "single"


def configure_deepspeed(accelerator, *, micro_batch_size: int, micro_batches: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config with our batch geometry and clipping before `prepare` (it needs a batch size)."""
    plugin = accelerator.state.deepspeed_plugin
    if int(plugin.zero_stage) >= 3:
        raise ShardingError("DeepSpeed ZeRO-3 partitions the parameters that the rollout reads outside forward; "
                            "use configs/accelerate/fsdp.yaml (FSDP2) to shard parameters, or ZeRO-2")
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = micro_batches
    config["train_batch_size"] = micro_batch_size * micro_batches * accelerator.num_processes
    config["gradient_clipping"] = max_grad_norm
    accelerator.gradient_accumulation_steps = micro_batches  # else prepare warns about a mismatch


def prepare(accelerator, policy, optimizer, *, micro_batch_size: int, micro_batches: int, max_grad_norm: float):
    """`accelerator.prepare(policy, optimizer)` made to work for every engine; returns (module, optimizer)."""
    engine = engine_name(accelerator)
    if engine == "fsdp1":
        raise ShardingError("FSDP1 is not supported; set fsdp_version: 2 in the accelerate config "
                            "(configs/accelerate/fsdp.yaml)")
    if engine == "deepspeed":
        configure_deepspeed(accelerator, micro_batch_size=micro_batch_size, micro_batches=micro_batches,
                            max_grad_norm=max_grad_norm)
    module, optimizer = accelerator.prepare(policy, optimizer)
    if engine == "fsdp2":
        # FSDP2 picks as root the first FSDP module that runs forward; our rollout calls decoder layers
        # before the root ever runs, so initialise from the root now (no public API for this).
        module._get_fsdp_state()._lazy_init()
    return module, optimizer


def loss_scale(accelerator, micro_batches: int) -> float:
    """Factor on our globally normalised loss so that the engine's gradient is the gradient of that loss.

    DDP, FSDP and DeepSpeed average gradients over processes (x num_processes); DeepSpeed also divides every
    micro-batch loss by its gradient-accumulation count (x micro_batches).
    """
    scale = float(accelerator.num_processes)
    if engine_name(accelerator) == "deepspeed":
        scale *= micro_batches
    return scale


@contextlib.contextmanager
def micro_batch(accelerator, module, last: bool) -> Iterator[None]:
    """Context for one micro-batch's forward + backward: no gradient sync unless `last`.

    `sync_gradients` is what `accelerator.backward` hands DeepSpeed as the accumulation boundary; `no_sync`
    stops DDP's all-reduce and FSDP2's reduce-scatter (a no-op for one process and ZeRO-2).
    """
    previous = accelerator.sync_gradients
    accelerator.sync_gradients = last
    try:
        with contextlib.nullcontext() if last else accelerator.no_sync(module):
            yield
    finally:
        accelerator.sync_gradients = previous


def engine_steps_in_backward(accelerator) -> bool:
    """True when the optimizer step already happened inside the last `backward` (DeepSpeed)."""
    return engine_name(accelerator) == "deepspeed"


def _fsdp_modules(module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def gather_root(accelerator, module) -> None:
    """Make the root's parameters (embedding table, heads, routers) plain tensors for direct use (FSDP2 only)."""
    if engine_name(accelerator) == "fsdp2":
        module.unshard()


def reshard(accelerator, module) -> None:
    """Return every FSDP2 parameter group to its sharded state (before state-dict work)."""
    if engine_name(accelerator) == "fsdp2":
        for fsdp_module in _fsdp_modules(module):
            fsdp_module.reshard()


def scalar(value) -> float:
    """A Python float from a tensor, a DTensor (FSDP2 grad norms) or a number."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(torch.as_tensor(value).detach().cpu())
