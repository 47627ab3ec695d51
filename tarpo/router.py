"""The router (action head): Linear(hidden, 2) on the final-norm hidden state.

Index 0 = hard (feed the sampled token's embedding), 1 = soft (feed the top-k mix).

Departures from the reference (the authors' released TARPO code):
1. Parameters stay in fp32 whatever the backbone dtype: a bf16 bias of 4.6 cannot move at lr 1e-4 (the
   reference kept the head in bf16, its bias in effect frozen).
2. The init bias is always applied and must have exactly two numbers (the reference's default was None: bias 0,
   p_soft 0.5 at init, unvalidated).
3. Saving and loading is explicit and verified: a missing or mis-shaped router is an error, never a silently
   random head (the reference only warned when its head failed to load).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

ROUTER_WEIGHTS = "router.safetensors"
ROUTER_META = "router.json"
HARD, SOFT = 0, 1


class RouterLoadError(RuntimeError):
    """The router files are missing, unreadable, or do not fit the backbone."""


class Router(nn.Module):
    """Two-way action head. fp32 parameters; casts its input to fp32."""

    def __init__(self, hidden_size: int, init_bias: Sequence[float] = (4.6, 0.0), init_std: float = 1e-3,
                 generator: torch.Generator | None = None):
        super().__init__()
        if len(init_bias) != 2:
            raise ValueError(f"router init_bias: expected 2 numbers, got {len(init_bias)}")
        self.hidden_size = hidden_size
        self.linear = nn.Linear(hidden_size, 2, bias=True, dtype=torch.float32)
        with torch.no_grad():
            self.linear.weight.normal_(0.0, init_std, generator=generator)
            self.linear.bias.copy_(torch.tensor([float(b) for b in init_bias]))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., d) any dtype -> router logits (..., 2) fp32."""
        return self.linear(hidden.float())


def initial_soft_probability(init_bias: Sequence[float]) -> float:
    """p_soft at init with weights ~ 0: 1 / (1 + e^(b_hard - b_soft))."""
    return 1.0 / (1.0 + math.exp(float(init_bias[0]) - float(init_bias[1])))


def save_router(router: Router, directory: str | Path, name: str = "router") -> None:
    """Write `<name>.safetensors` + `<name>.json` into directory (caller handles atomicity of the dir)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in router.state_dict().items()}
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps({"hidden_size": router.hidden_size, "actions": ["hard", "soft"]}))


def load_router(directory: str | Path, hidden_size: int, name: str = "router") -> Router:
    """Load and verify a router saved by `save_router`; raises RouterLoadError on any mismatch."""
    from safetensors.torch import load_file

    path = Path(directory) / f"{name}.safetensors"
    if not path.is_file():
        raise RouterLoadError(f"router weights not found: {path} (a checkpoint must contain the trained router)")
    try:
        state = load_file(str(path))
    except Exception as exc:  # corrupt file
        raise RouterLoadError(f"cannot read router weights {path}: {exc}") from exc
    expected = {"linear.weight": (2, hidden_size), "linear.bias": (2,)}
    for key, shape in expected.items():
        if key not in state:
            raise RouterLoadError(f"{path}: missing tensor '{key}'")
        if tuple(state[key].shape) != shape:
            raise RouterLoadError(
                f"{path}: '{key}' has shape {tuple(state[key].shape)}, expected {shape} for hidden size {hidden_size}")
    extra = set(state) - set(expected)
    if extra:
        raise RouterLoadError(f"{path}: unexpected tensors {sorted(extra)}")
    router = Router(hidden_size)
    router.load_state_dict(state)
    return router
