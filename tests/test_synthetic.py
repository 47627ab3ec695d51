"""tarpo/synthetic.py: the seeded arithmetic word problems, checked against an independent evaluator."""

import operator
import re

import pytest

from tarpo.hygiene import normalize_prompt
from tarpo.records import DataError
from tarpo.synthetic import synthetic_problems


_OPS = {"buys (\\d+) more": operator.add, "gives away (\\d+)": operator.sub,
        "gets (\\d+) times as many": operator.mul}


def evaluate_question(question):
    """Independent check: rebuild the computation from the question's sentences."""
    value = int(re.match(r"\w+ has (\d+) \w+\.", question).group(1))
    ops = 0
    for sentence in question.split(". ")[1:]:
        for pattern, fn in _OPS.items():
            if m := re.search(pattern, sentence):
                value, ops = fn(value, int(m.group(1))), ops + 1
    return value, ops


def test_synthetic_deterministic_per_seed():
    assert synthetic_problems(50, seed=7) == synthetic_problems(50, seed=7)
    assert synthetic_problems(50, seed=7) != synthetic_problems(50, seed=8)


def test_synthetic_golds_are_right():
    for record in synthetic_problems(300, seed=1, min_ops=1, max_ops=4, max_operand=30):
        value, _ = evaluate_question(record.prompt)
        assert record.answer == str(value) and value >= 0
        assert record.solution.endswith(f"#### {value}")
        for step in record.solution.split(" #### ")[0].split(". "):
            a, op, b, _, c = step.rstrip(".").split()
            assert {"+": operator.add, "-": operator.sub, "*": operator.mul}[op](int(a), int(b)) == int(c)


def test_synthetic_levels_change_ops_and_operands():
    def op_counts(problems):
        return {evaluate_question(r.prompt)[1] for r in problems}
    assert op_counts(synthetic_problems(100, seed=0, min_ops=1, max_ops=2, level=1)) == {1, 2}
    assert op_counts(synthetic_problems(100, seed=0, min_ops=1, max_ops=2, level=3)) == {3, 4}
    big = synthetic_problems(200, seed=0, min_ops=1, max_ops=1, max_operand=10, level=4)
    assert max(int(n) for r in big for n in re.findall(r"\d+", r.prompt)) > 10


def test_synthetic_vocabulary_is_small_and_unique():
    problems = synthetic_problems(500, seed=2, min_ops=2, max_ops=3)
    words = {w for r in problems for w in re.findall(r"[A-Za-z]+", r.prompt + r.solution)}
    assert len(words) < 50
    assert len({normalize_prompt(r.prompt) for r in problems}) == 500


def test_synthetic_exclude_and_too_small_space():
    eval_set = synthetic_problems(20, seed=0, max_ops=1, max_operand=3)
    train = synthetic_problems(20, seed=1, max_ops=1, max_operand=3, exclude=[r.prompt for r in eval_set])
    assert not {r.prompt for r in train} & {r.prompt for r in eval_set}
    with pytest.raises(DataError, match="only .* distinct problems"):
        synthetic_problems(10_000, seed=0, min_ops=1, max_ops=1, max_operand=1)
