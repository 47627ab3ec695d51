"""Atomic, verified training checkpoints and the exported trained model.

A checkpoint is a directory `step-000010/` holding: the LoRA adapter (PEFT format), the router and the
initial (reference) router, optimizer and scheduler state, all RNG states, and `trainer_state.json`
(step, data position, run id, counters). It is written into a temporary sibling and renamed, and the
last file written, `COMPLETE`, lists the sha256 of every other file: a directory without a valid
`COMPLETE` is partial or corrupt and resume falls back to the previous one (fixes reference W7).
Everything read back goes through safetensors, JSON or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tarpo.router import load_router, save_router

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial or corrupt."""


@dataclass
class TrainerState:
    step: int = 0                 # optimizer steps completed
    data_position: int = 0        # prompts consumed (global, across processes)
    run_id: str | None = None     # tracking run to continue on resume
    skipped_steps: int = 0        # steps skipped for non-finite loss or gradients
    nonfinite_in_row: int = 0


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
    """Adapter (if any) + router + initial router into `directory`."""
    backbone = policy.backbone
    if hasattr(backbone, "peft_config"):
        backbone.save_pretrained(str(directory / "adapter"), safe_serialization=True)
    save_router(policy.router, directory)
    save_router(policy.reference_router, directory, name="router_initial")


def load_weights(policy, directory: Path) -> None:
    """Load adapter + routers saved by `save_weights` into an existing policy (shapes verified)."""
    hidden = policy.router.hidden_size
    policy.router.load_state_dict(load_router(directory, hidden).state_dict())
    policy.reference_router.load_state_dict(load_router(directory, hidden, name="router_initial").state_dict())
    adapter = directory / "adapter"
    if hasattr(policy.backbone, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = adapter / "adapter_model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{directory}: LoRA adapter weights missing ({weights})")
        result = set_peft_model_state_dict(policy.backbone, load_file(str(weights)))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise CheckpointError(f"{weights}: adapter does not fit this model (unexpected keys {unexpected[:3]})")


def save_checkpoint(root: Path, policy, optimizer, scheduler, state: TrainerState, keep: int) -> Path:
    """Write `root/step-NNNNNN` atomically and prune to the newest `keep` checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        save_weights(policy, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): _sha256(p) for p in files}
        (tmp / COMPLETE).write_text(json.dumps(manifest, indent=2))
        for path in [*files, tmp / COMPLETE]:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
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


def load_checkpoint(directory: Path, policy, optimizer, scheduler) -> TrainerState:
    """Restore everything saved by `save_checkpoint`; verifies the checkpoint first."""
    verify_checkpoint(directory)
    load_weights(policy, directory)
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(directory / "rng.pt", weights_only=True))
    return TrainerState(**json.loads((directory / STATE_FILE).read_text()))


def newest_valid_checkpoint(root: Path, warn=lambda message: None) -> Path | None:
    """The newest checkpoint that verifies; corrupt ones are reported through `warn` and skipped."""
    for directory in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(directory)
            return directory
        except CheckpointError as exc:
            warn(f"skipping checkpoint {exc}; trying the previous one")
    return None
