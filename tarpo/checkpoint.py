"""Atomic, verified training checkpoints that follow the distributed state, and the exported trained model.

A checkpoint is a directory `step-000010/` holding: the LoRA adapter (PEFT format), the router and the
initial (reference) router -- i.e. an evaluable export --, the optimizer state, the scheduler state, one
RNG file per process (`rng-rank<r>.pt`), and `trainer_state.json` (step, data position, tracking run id,
params hash, counters, and the world size / engine that wrote it). It is written into a temporary sibling
and renamed, and the last file written, `COMPLETE`, lists the sha256 of every other file: a directory
without a valid `COMPLETE` is partial or corrupt and resume falls back to the previous one (the authors'
released code could not resume at all).

Sharding: weights and optimizer state go through torch's distributed state-dict API
(`torch.distributed.checkpoint.state_dict`), which gathers DDP, FSDP2 or single-process state alike into one
full, FQN-keyed state of the *trainable* parameters on rank 0 (the frozen backbone is never written), and
scatters it back into whatever sharding the resuming run uses. DeepSpeed keeps its own partitioned optimizer
state: its engine writes it under `deepspeed/` (untested here: needs CUDA). Every process takes part in
`save_checkpoint` and `load_checkpoint`; the checkpoint directory must be on storage all processes share.
Everything read back goes through safetensors, JSON or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from tarpo.router import Router, load_router, save_router

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
DEEPSPEED_DIR = "deepspeed"
ROUTER_PREFIXES = {"router": "router.", "router_initial": "reference_router."}  # file name -> FQN prefix


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial or corrupt."""


@dataclass
class TrainerState:
    step: int = 0                 # optimizer steps completed
    data_position: int = 0        # prompts consumed (global, across processes)
    run_id: str | None = None     # tracking run to continue on resume
    skipped_steps: int = 0        # steps skipped for non-finite loss or gradients
    nonfinite_in_row: int = 0
    params_hash: str | None = None  # hash of what shapes the trajectory (set by the caller; checked on resume)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np.random.get_state()[0], np.random.get_state()[1].tolist(), *np.random.get_state()[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((version, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_weights(policy, directory: Path) -> None:
    """Adapter (if any) + router + initial router of a policy held whole by this process into `directory`."""
    trainable = {name: p.detach() for name, p in policy.named_parameters() if p.requires_grad}
    write_weights(policy, trainable, directory, router_snapshot(policy))


def load_weights(policy, directory: Path) -> None:
    """Load adapter + routers saved by `save_weights` into an existing policy (names and shapes verified)."""
    policy.load_state_dict(read_weights(policy, directory), strict=False)


# ------------------------------------------------------------------ full (unsharded) state of the trainable part
def _state_dict_options(accelerator, **extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # cpu_offload with full_state_dict = only rank 0 receives the gathered tensors (needs a process group)
    return StateDictOptions(full_state_dict=True, cpu_offload=accelerator.num_processes > 1, **extra)


def _raw_optimizer(optimizer):
    """The torch optimizer under Accelerate's wrapper (the state-dict API maps its params to FQNs)."""
    return getattr(optimizer, "optimizer", optimizer)


def trainable_state(accelerator, policy) -> dict[str, torch.Tensor]:
    """Full FQN-keyed trainable parameters on the main process ({} elsewhere); a collective call."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(policy, options=_state_dict_options(accelerator, ignore_frozen_params=True))
    return {k: v.detach().to("cpu").clone() for k, v in state.items()} if accelerator.is_main_process else {}


def optimizer_state(accelerator, policy, optimizer) -> dict:
    """Full FQN-keyed optimizer state on the main process ({} elsewhere); a collective call.

    torch's API would fill an empty optimizer state with a zero-gradient step (changing Adam's step count),
    so a run that never stepped saves its hyper-parameters only.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    raw = _raw_optimizer(optimizer)
    if not raw.state:
        return {"state": {}, "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in raw.param_groups]}
    return get_optimizer_state_dict(policy, raw, options=_state_dict_options(accelerator))


def router_snapshot(policy) -> dict[str, dict[str, torch.Tensor]]:
    """CPU copies of both routers: frozen routers are not in the trainable state but belong in every export."""
    return {name: {k: v.detach().to("cpu").clone() for k, v in getattr(policy, prefix[:-1]).state_dict().items()}
            for name, prefix in ROUTER_PREFIXES.items()}


def write_weights(policy, state: dict[str, torch.Tensor], directory: Path, routers: dict) -> None:
    """`save_weights`' layout from a full trainable state (adapter from `backbone.*`, routers or their snapshot)."""
    if hasattr(policy.backbone, "peft_config"):
        adapter = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        policy.backbone.save_pretrained(str(directory / "adapter"), state_dict=adapter, safe_serialization=True)
    for name, prefix in ROUTER_PREFIXES.items():
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} or routers[name]
        with torch.random.fork_rng(devices=[]):  # building the module draws an init we overwrite
            router = Router(policy.router.hidden_size)
        router.load_state_dict(weights)
        save_router(router, directory, name)


def read_weights(policy, directory: Path) -> dict[str, torch.Tensor]:
    """Adapter + routers of `directory` as a full FQN-keyed state for `policy` (inverse of `write_weights`)."""
    hidden = policy.router.hidden_size
    state = {}
    for name, prefix in ROUTER_PREFIXES.items():
        with torch.random.fork_rng(devices=[]):
            router = load_router(directory, hidden, name=name)
        state.update({prefix + k: v for k, v in router.state_dict().items()})
    backbone = policy.backbone
    if hasattr(backbone, "peft_config"):
        from safetensors.torch import load_file

        weights = directory / "adapter" / "adapter_model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{directory}: LoRA adapter weights missing ({weights})")
        saved = load_file(str(weights))
        adapter_name = getattr(backbone, "active_adapter", "default")
        # PEFT saves `...lora_A.weight` for the parameter `...lora_A.<adapter>.weight`
        wanted = {name.replace(f".{adapter_name}", ""): name for name, p in backbone.named_parameters()
                  if p.requires_grad or "lora_" in name}
        unexpected = sorted(set(saved) - set(wanted))
        missing = sorted(set(wanted) - set(saved))
        if unexpected or missing:
            raise CheckpointError(f"{weights}: adapter does not fit this model "
                                  f"(unexpected {unexpected[:3]}, missing {missing[:3]})")
        state.update({"backbone." + wanted[k]: v for k, v in saved.items()})
    return state


# ------------------------------------------------------------------ checkpoints
def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(root: Path, accelerator, policy, optimizer, scheduler, state: TrainerState, keep: int, *,
                    routers: dict, weights: dict | None = None, engine: str = "single", engine_module=None) -> Path:
    """Write `root/step-NNNNNN` atomically and prune to the newest `keep`; every process must call it.

    Order: gather the full trainable and optimizer state (collective), the main process creates the
    temporary directory, every process writes its RNG file (and DeepSpeed its engine shards), then the
    main process writes the rest, the `COMPLETE` manifest last, and renames. `weights` is
    `trainable_state(...)` when the caller already gathered it.
    """
    weights = trainable_state(accelerator, policy) if weights is None else weights
    optim = optimizer_state(accelerator, policy, optimizer) if engine != "deepspeed" else {}
    main = accelerator.is_main_process
    final = root / f"step-{state.step:06d}"
    tmp = root / f".{final.name}.tmp"
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    try:
        rng_file = tmp / f"rng-rank{accelerator.process_index}.pt"
        torch.save(rng_state(), rng_file)
        _fsync(rng_file)
        if engine == "deepspeed":  # partitioned optimizer state, one file per rank
            engine_module.save_checkpoint(str(tmp / DEEPSPEED_DIR), tag="engine", exclude_frozen_parameters=True)
        accelerator.wait_for_everyone()
        if main:
            write_weights(policy, weights, tmp, routers)
            if engine != "deepspeed":
                torch.save(optim, tmp / OPTIMIZER_FILE)
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            saved_by = {"world_size": accelerator.num_processes, "engine": engine}
            (tmp / STATE_FILE).write_text(json.dumps({**asdict(state), "saved_by": saved_by}, indent=2))
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {str(p.relative_to(tmp)): _sha256(p) for p in files}
            (tmp / COMPLETE).write_text(json.dumps(manifest, indent=2))
            for path in [*files, tmp / COMPLETE]:
                _fsync(path)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint dirs oldest first (temporary and foreign dirs ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit())


def verify_checkpoint(directory: Path) -> None:
    """Raise CheckpointError unless every file listed in COMPLETE is present with its sha256."""
    marker = directory / COMPLETE
    if not marker.is_file():
        raise CheckpointError(f"{directory.name}: no {COMPLETE} marker (partial write)")
    try:
        manifest = json.loads(marker.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{directory.name}: unreadable {COMPLETE} ({exc})") from exc
    for name, digest in manifest.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory.name}: missing {name}")
        if _sha256(path) != digest:
            raise CheckpointError(f"{directory.name}: {name} is corrupt (sha256 mismatch)")


def load_checkpoint(directory: Path, accelerator, policy, optimizer, scheduler, *, engine: str = "single",
                    engine_module=None, warn=lambda message: None) -> TrainerState:
    """Restore everything saved by `save_checkpoint` into the (possibly sharded) policy; every process calls it.

    The caller verified the checkpoint (`choose_checkpoint`). Weights and optimizer state are scattered into
    the current sharding, so a run may resume under another engine; RNG states are per process.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(policy, read_weights(policy, directory),
                         options=StateDictOptions(full_state_dict=True, strict=False))
    raw = _raw_optimizer(optimizer)
    if engine == "deepspeed":
        engine_module.load_checkpoint(str(directory / DEEPSPEED_DIR), tag="engine", load_module_strict=False,
                                      load_optimizer_states=True, load_lr_scheduler_states=False)
    else:
        optim = torch.load(directory / OPTIMIZER_FILE, weights_only=True)
        if not optim["state"]:
            for group, saved in zip(raw.param_groups, optim["param_groups"]):
                group.update(saved)
        elif all(isinstance(key, int) for key in optim["state"]):  # written by a single process before sharding
            raw.load_state_dict(optim)
        else:
            set_optimizer_state_dict(policy, raw, optim, options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    rank = accelerator.process_index
    rng_file = next((f for f in (directory / f"rng-rank{rank}.pt", directory / "rng.pt") if f.is_file()), None)
    if rng_file is None:
        warn(f"{directory.name}: no RNG state for process {rank} (written by fewer processes); keeping this "
             f"process's seeded state (rollouts are seeded per step and rank and do not depend on it)")
    else:
        set_rng_state(torch.load(rng_file, weights_only=True))
    saved = json.loads((directory / STATE_FILE).read_text())
    known = {f.name for f in fields(TrainerState)}
    return TrainerState(**{k: v for k, v in saved.items() if k in known})


def choose_checkpoint(root: Path, accelerator, warn=lambda message: None,
                      params_hash: str | None = None) -> Path | None:
    """The newest valid checkpoint as chosen by the main process, the same on every process.

    A checkpoint whose recorded params hash differs from `params_hash` (when both are known) is skipped.
    """
    from accelerate.utils import broadcast_object_list

    choice = [None]
    if accelerator.is_main_process:
        found = newest_valid_checkpoint(root, warn=warn, params_hash=params_hash)
        choice = [str(found) if found else None]
    broadcast_object_list(choice)
    return Path(choice[0]) if choice[0] else None


def newest_valid_checkpoint(root: Path, warn=lambda message: None, params_hash: str | None = None) -> Path | None:
    """The newest checkpoint that verifies (and, given `params_hash`, was written with it); others are reported."""
    for directory in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(directory)
            if params_hash is not None:
                recorded = json.loads((directory / STATE_FILE).read_text()).get("params_hash")
                if recorded not in (None, params_hash):
                    raise CheckpointError(f"{directory.name}: written with other params (hash {recorded[:12]})")
            return directory
        except CheckpointError as exc:
            warn(f"skipping checkpoint {exc}; trying the previous one")
    return None
