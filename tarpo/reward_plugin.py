"""Reward functions as plugins: `reward.function: package.module:callable` replaces the built-in answer rules.

The contract (README "Reward plugins"):

    def my_reward(completion: str, gold: str, record: dict) -> float

- `completion`: the decoded completion text (what the built-in rules read);
- `gold`: the record's gold answer;
- `record`: the prepared record as a dict, `{"id", "prompt", "answer", "source", "solution"}` (a copy: changing it
  changes nothing);
- returns a finite number in [REWARD_MIN, REWARD_MAX] = [-1, 1] (1 = fully right; bool counts as 0/1).

Why this shape: one completion at a time keeps a plugin a plain function with a doctest, like our own rules; the
record lets a reward use fields beyond the gold (the source, a worked solution). The spec is resolved once per
process (`load_reward_function` is cached): config validation imports the module, checks that the name is callable
and that its signature accepts (completion, gold, record); the trainer reuses that same object. A plugin that
returns something else stops training with one line naming `reward.function`, the value and the record.
The module is imported from the installed packages or from the working directory (the repository root for
`python cli.py` and `dvc repro`); its code is not a DVC dependency of the train stage, and it is not hashed into
the checkpoints' params hash (the spec string is): after editing a plugin, train with --no-resume.
Evaluation keeps scoring correctness with the built-in rules, so avg@k stays comparable across reward functions.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import numbers
import os
import re
import sys
from typing import Any, Callable, Sequence

from tarpo.errors import InputError

REWARD_MIN, REWARD_MAX = -1.0, 1.0
KEY = "reward.function"
_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class RewardFunctionError(InputError):
    """The configured reward function returned something outside its contract (a user error: exit 2)."""


@functools.lru_cache(maxsize=8)
def load_reward_function(spec: str) -> Callable[[str, str, dict], float]:
    """The callable named by `package.module:attr` (cached: each process imports it once).

    Raises ValueError with a one-line reason (the config layer prefixes the key)."""
    if not _SPEC.match(spec):
        raise ValueError(f"{spec!r} is not package.module:callable (e.g. examples.reward_plugin:correct_and_brief)")
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` would: a module beside params.yaml is importable
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure inside the user's module is reported, not raised
        raise ValueError(f"cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{spec} is not callable (it is {type(target).__name__} {target!r:.40})")
    try:
        inspect.signature(target).bind("completion", "gold", {})
    except TypeError as exc:
        raise ValueError(f"{spec} must accept (completion, gold, record): {exc}") from None
    except ValueError:  # builtins without a signature: trust them
        pass
    return target


def check_reward(value: Any, spec: str, record_id: str) -> float:
    """`value` as a float if it honours the contract, else RewardFunctionError naming the key and the record."""
    if isinstance(value, numbers.Real):  # bool, int, float, numpy scalars
        number = float(value)
        if math.isfinite(number) and REWARD_MIN <= number <= REWARD_MAX:
            return number
    raise RewardFunctionError(f"{KEY}: {spec} returned {value!r} for record {record_id!r}; it must return a finite "
                              f"number in [{REWARD_MIN:g}, {REWARD_MAX:g}]")


def plugin_reward_fn(spec: str) -> Callable[..., list[float]]:
    """The trainer's reward (texts, golds, rollout, records=...) -> floats, calling the plugin once per completion."""
    function = load_reward_function(spec)

    def reward(texts: Sequence[str], golds: Sequence[str], rollout=None, *, records: Sequence[Any]) -> list[float]:
        if not len(texts) == len(golds) == len(records):
            raise ValueError(f"{len(texts)} completions, {len(golds)} golds, {len(records)} records")
        out = []
        for text, gold, record in zip(texts, golds, records):
            row = record.to_dict() if hasattr(record, "to_dict") else dict(record)
            out.append(check_reward(function(text, gold, row), spec, str(row.get("id"))))
        return out

    return reward
