"""Process-wide numerics every stage sets first: the CPU thread count and deterministic kernels.

Why: float sums are not associative, and torch splits a reduction differently with 1, 2 or 16 intra-op
threads, so the same seed on two machines with different core counts drifts apart within a few RL steps.
Fixing the count (`runtime.threads`) makes runs on equal CPUs bit-identical; different CPU instruction sets
(AVX2 vs AVX-512) still round differently, which no setting removes (README "What varies").
"""

from __future__ import annotations


def apply_runtime(runtime_cfg, *, cuda: bool | None = None) -> dict[str, object]:
    """Set torch's intra-op threads and deterministic algorithms from the `runtime` section; returns what is
    now in effect (logged with the run).

    Deterministic algorithms default to on for CPU runs and off on CUDA (where they cost speed and need
    CUBLAS_WORKSPACE_CONFIG); `warn_only` keeps an op without a deterministic version working.
    """
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    if runtime_cfg.threads is not None:
        torch.set_num_threads(runtime_cfg.threads)
    deterministic = (not cuda) if runtime_cfg.deterministic is None else runtime_cfg.deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    return {"threads": torch.get_num_threads(), "deterministic": deterministic}
