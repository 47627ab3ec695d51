"""A seeded synthetic task: multi-step arithmetic word problems with worked solutions (no network).

The embedded default's data: a vocabulary small enough for the `tiny` model, exact golds, a worked
solution ending in "#### N" per problem for the supervised warm-up, and difficulty levels.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from tarpo.hygiene import normalize_prompt
from tarpo.records import DataError, Record
from tarpo.rewards import DEFAULT_MARKER


_PEOPLE = (("Tom", "he"), ("Ann", "she"), ("Sam", "he"), ("Mia", "she"), ("Ben", "he"), ("Eva", "she"))
_ITEMS = ("apples", "pens", "books", "coins", "cards", "eggs", "balls", "cups")
# One fixed phrase per operation keeps the vocabulary tiny and the mapping text -> operation exact.
_PHRASES = {"+": "buys {x} more", "-": "gives away {x}", "*": "gets {x} times as many"}
_MAX_FACTOR = 3  # "times as many" stays small so answers do not explode with the op count


def _next_step(rng: random.Random, value: int, max_operand: int) -> tuple[str, int]:
    """One (operation, operand) that keeps the running total a non-negative integer."""
    choices = ["+"] + (["-"] if value > 0 else []) + (["*"] if 0 < value <= max_operand else [])
    op = rng.choice(choices)
    if op == "+":
        return op, rng.randint(1, max_operand)
    if op == "-":
        return op, rng.randint(1, min(value, max_operand))
    return op, rng.randint(2, _MAX_FACTOR)


def _apply(op: str, value: int, x: int) -> int:
    return {"+": value + x, "-": value - x, "*": value * x}[op]


def synthetic_problem(rng: random.Random, min_ops: int, max_ops: int, max_operand: int
                      ) -> tuple[str, str, str]:
    """(question, worked solution ending in "#### N", gold N) for one random problem."""
    name, pronoun = rng.choice(_PEOPLE)
    item = rng.choice(_ITEMS)
    value = rng.randint(1, max_operand)
    sentences, steps = [f"{name} has {value} {item}."], []
    for i in range(rng.randint(min_ops, max_ops)):
        op, x = _next_step(rng, value, max_operand)
        phrase = _PHRASES[op].format(x=x)
        sentences.append(f"{pronoun.capitalize()} {phrase}." if i == 0 else f"Then {pronoun} {phrase}.")
        new_value = _apply(op, value, x)
        steps.append(f"{value} {op} {x} = {new_value}.")
        value = new_value
    sentences.append(f"How many {item} does {pronoun} have now?")
    return " ".join(sentences), f"{' '.join(steps)} {DEFAULT_MARKER} {value}", str(value)


def synthetic_problems(n: int, seed: int, min_ops: int = 1, max_ops: int = 3, max_operand: int = 20,
                       *, level: int = 1, exclude: Iterable[str] = (),
                       source: str = "synthetic") -> list[Record]:
    """n distinct seeded arithmetic word problems (deterministic per seed; needs no network).

    Difficulty `level` L >= 1 builds on the base knobs: L - 1 more operations per problem and
    operands up to L * max_operand (level 1 = the knobs as given). Prompts whose normalised text
    is in `exclude` (e.g. the eval set) are never produced.
    """
    if level < 1 or not (1 <= min_ops <= max_ops) or max_operand < 1 or n < 0:
        raise DataError(f"synthetic needs level >= 1, 1 <= min_ops <= max_ops, max_operand >= 1, "
                        f"n >= 0; got level={level}, min_ops={min_ops}, max_ops={max_ops}, "
                        f"max_operand={max_operand}, n={n}")
    min_ops, max_ops, max_operand = min_ops + level - 1, max_ops + level - 1, max_operand * level
    rng, seen, out = random.Random(seed), {normalize_prompt(p) for p in exclude}, []
    misses = 0  # consecutive repeats: many in a row means the problem space is exhausted
    while len(out) < n and misses < 2000:
        question, solution, gold = synthetic_problem(rng, min_ops, max_ops, max_operand)
        key = normalize_prompt(question)
        misses += 1
        if key not in seen:
            seen.add(key)
            misses = 0
            out.append(Record(id=f"{source}-{seed}-{len(out)}", prompt=question, answer=gold,
                              source=source, solution=solution))
    if len(out) < n:
        raise DataError(f"synthetic: only {len(out)} distinct problems of {n} requested with "
                        f"max_ops={max_ops}, max_operand={max_operand}; raise them or ask for fewer")
    return out
