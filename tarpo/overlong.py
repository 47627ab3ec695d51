"""Overlong completions: DAPO's soft length penalty, or no loss for truncated completions.

A completion that hits `max_new_tokens` before its end-of-sequence token was cut, not finished: its reward (usually
0, no answer) says "too long", not "wrong", and training on it teaches the policy little. Two remedies from DAPO
(Yu et al. 2025, "DAPO: an open-source LLM reinforcement learning system at scale", section 3.4):

- `penalty` (soft overlong punishment, the paper's equation 13): with L_max = max_new_tokens and L_cache = buffer,
      R_length(y) = 0                               if |y| <= L_max - L_cache
                  = ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
                  = -1                              if |y| > L_max  (cannot happen here: decoding stops at L_max)
  added to the task reward. |y| counts every completion step, soft ones included (each is one decoding step of
  the length budget), up to and including the end-of-sequence token.
- `filter` (overlong filtering): completions stopped by the length limit get no loss (token and router terms),
  but they STAY in their group's reward mean and std. The group baseline estimates the expected reward of the
  policy for the prompt, and truncating is part of what the policy does; dropping them would raise the baseline of
  prompts the policy often rambles on and keep groups of unequal size. TRL's `mask_truncated_completions` does the
  same (its advantages are computed before the mask is applied).
"""

from __future__ import annotations

from typing import Sequence

import torch

OVERLONG_MODES = ("none", "filter", "penalty")  # = RewardConfig.overlong's Literal (a test keeps them equal)


def length_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment per completion; lengths (B,) in steps -> (B,) fp32 in [-1, 0].

    >>> length_penalty(torch.tensor([6, 7, 8, 10]), max_new_tokens=10, buffer=4).tolist()
    [0.0, -0.25, -0.5, -1.0]
    """
    if not 0 < buffer <= max_new_tokens:
        raise ValueError(f"overlong buffer must be in [1, max_new_tokens={max_new_tokens}], got {buffer}")
    expected = max_new_tokens - buffer
    over = (lengths.float() - expected).clamp_min(0)
    return 0.0 - (over / buffer).clamp_max(1.0)  # 0.0 - x, not -x: no -0.0 for completions in budget


def truncated_rows(stop_reason: Sequence[str]) -> torch.Tensor:
    """(B,) bool: rows the length limit stopped (no end-of-sequence token generated)."""
    return torch.tensor([reason == "max_tokens" for reason in stop_reason], dtype=torch.bool)
