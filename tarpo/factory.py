"""Build a HybridPolicy from the `model` and `router` config sections.

Resolve the backbone (preset or path), load it in the right dtype, freeze it, add LoRA, create the
fp32 router with its init bias, and optionally load trained weights (adapter + routers) saved by
`tarpo.checkpoint.save_weights`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tarpo.checkpoint import load_weights
from tarpo.config import resolve_dtype
from tarpo.models import apply_lora, load_model_and_tokenizer, resolve_model
from tarpo.policy import HybridPolicy
from tarpo.router import Router


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_policy(model_cfg, router_cfg, *, device: str | None = None, seed: int = 0, trained_dir: str | Path | None = None,
                base_path: str | Path | None = None, models_dir: str | Path = "models", router_seed: int | None = None):
    """(policy, tokenizer, resolved model).

    `seed` initialises the adapter; `router_seed` (default: `seed`) the start router, which the pipeline ties to
    warmup.seed so that a seed sweep (train.seed) starts every run from the same policy.

    `base_path` replaces the configured model's weights. Callers pass only start weights MADE FROM the configured
    model (pipeline.common.choose_base checks the warm-up output's fingerprint): never another model's.
    """
    device = device or default_device()
    resolved = resolve_model(model_cfg.preset, str(base_path) if base_path else model_cfg.path, models_dir)
    dtype = resolve_dtype(model_cfg.dtype, device)
    backbone, tokenizer = load_model_and_tokenizer(resolved, dtype=dtype, device=device)
    backbone.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model_cfg.lora.enabled:
            lora = model_cfg.lora
            backbone = apply_lora(backbone, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, targets=lora.targets)
        if model_cfg.gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hidden = backbone.config.hidden_size if hasattr(backbone, "config") else backbone.get_base_model().config.hidden_size
    init_bias = router_cfg.init_bias if router_cfg.init_bias is not None else (4.6, 0.0)
    router = Router(hidden, init_bias, generator=torch.Generator().manual_seed(seed if router_seed is None else router_seed))
    policy = HybridPolicy(backbone, router).to(device)
    if trained_dir is not None:
        load_weights(policy, Path(trained_dir))
    return policy, tokenizer, resolved
