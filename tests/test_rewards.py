"""Reward extraction and equivalence: table-driven cases, robustness, speed, doctests."""

import doctest

import pytest

import tarpo.rewards as rewards
from tarpo.rewards import extract_answer, make_reward_fn, score

# (completion, gold, kind, require_single_marker, expected reward)
CASES = [
    # plain GSM8K-style numbers
    ("5 + 7 = 12. #### 12", "12", "numeric", False, 1.0),
    ("#### 12", "13", "numeric", False, 0.0),
    ("#### 1,000", "1000", "numeric", False, 1.0),  # B8
    ("#### 1000", "1,000", "numeric", False, 1.0),  # B8, gold side
    ("#### 1,234,567", "1234567", "numeric", False, 1.0),
    ("#### $1,000.00", "1000", "numeric", False, 1.0),  # currency + decimals
    ("#### \\$18", "18", "numeric", False, 1.0),
    ("#### €5", "5", "numeric", False, 1.0),
    ("#### 18.", "18", "numeric", False, 1.0),  # trailing period
    ("#### 18.0", "18", "numeric", False, 1.0),
    ("#### 18.50", "18.5", "numeric", False, 1.0),
    ("#### 14 apples", "14", "numeric", False, 1.0),  # units
    ("#### 12 cm^2", "12", "numeric", False, 1.0),  # unit power is not a number
    ("#### -5", "-5", "numeric", False, 1.0),  # negatives
    ("#### \u22125", "-5", "numeric", False, 1.0),  # unicode minus
    ("#### 5", "-5", "numeric", False, 0.0),
    ("#### 3/4", "0.75", "numeric", False, 1.0),  # simple fractions
    ("#### 50%", "50", "numeric", False, 1.0),  # percentages
    ("#### 50\\%", "50", "numeric", False, 1.0),
    ("#### \uff11\uff12", "12", "numeric", False, 1.0),  # full-width digits
    ("#### 1{,}000", "1000", "numeric", False, 1.0),  # LaTeX thousands separator
    ("#### 1,2", "12", "numeric", False, 0.0),  # not a thousands group: last number is 2
    ("so 3 - 1 = 2 #### 2", "2", "numeric", False, 1.0),
    ("The answer is #### x = 7", "7", "auto", False, 1.0),
    ("#### 1,000", "Natalia ... #### 1000", "numeric", False, 1.0),  # full GSM8K solution as gold
    # LaTeX via math-verify (B16)
    ("#### 1/2", "\\frac{1}{2}", "math", False, 1.0),
    ("#### \\frac{1}{2}", "\\frac{1}{2}", "math", False, 1.0),
    ("#### 0.5", "\\frac{1}{2}", "math", False, 1.0),
    ("#### \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "math", False, 1.0),
    ("#### $\\dfrac{1}{2}$", "\\boxed{\\frac{1}{2}}", "math", False, 1.0),
    ("#### \\frac{2}{4}", "\\frac{1}{2}", "auto", False, 1.0),
    ("#### \\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", "math", False, 1.0),
    ("#### 2", "\\frac{1}{2}", "auto", False, 0.0),  # gold's last digit is not the answer
    ("#### 3\\pi", "3\\pi", "math", False, 1.0),
    ("#### 1/3", "\\frac{1}{2}", "math", False, 0.0),
    ("#### \\frac{1}{2}", "0.5", "auto", False, 1.0),
    # list-valued gold (B17): alternatives
    ("#### 4", ["3", "4"], "auto", False, 1.0),
    ("#### 5", ["3", "4"], "auto", False, 0.0),
    ("#### \\frac{1}{2}", ["0.5"], "math", False, 1.0),
    # marker rules
    ("no marker, 12", "12", "auto", False, 0.0),
    ("#### 11 then #### 12", "12", "auto", False, 1.0),  # last marker wins
    ("#### 11 then #### 12", "12", "auto", True, 0.0),  # single-marker rule
    ("reasoning #### 12", "12", "auto", True, 1.0),
    ("####", "12", "auto", False, 0.0),
    # garbage and hostile text
    ("", "12", "auto", False, 0.0),
    ("#### }}}{{{\\frac{", "12", "auto", False, 0.0),
    ("#### \\boxed{1", "\\frac{1}{2}", "math", False, 0.0),
    ("#### \u6c34\u00e9\U0001f600", "12", "auto", False, 0.0),
    ("#### NaN", "12", "auto", False, 0.0),
    ("#### 1/0", "12", "numeric", False, 0.0),
    ("#### 10^{10^{10^{10}}}", "\\frac{1}{2}", "math", False, 0.0),
]


@pytest.mark.parametrize("completion,gold,kind,single,expected", CASES)
def test_score_table(completion, gold, kind, single, expected):
    result = score(completion, gold, kind=kind, require_single_marker=single)
    assert result.reward == expected, (completion, gold, result.parts)


def test_table_is_large_enough():
    assert len(CASES) >= 40


def test_parts_report_marker_and_format():
    twice = score("#### 4 #### 4", "4", require_single_marker=True)
    assert twice.reward == 0.0
    assert twice.parts == {"correct": 1.0, "has_answer": 1.0, "marker_count": 2.0,
                           "format_ok": 0.0, "answer_clipped": 0.0}
    missing = score("just 4", "4")
    assert missing.parts["has_answer"] == 0.0 and missing.parts["marker_count"] == 0.0


def test_custom_marker():
    assert score("Answer: 9", "9", marker="Answer:").reward == 1.0
    assert score("#### 9", "9", marker="Answer:").reward == 0.0


def test_extract_answer_rules():
    assert extract_answer("a #### b #### 42.") == "42"
    assert extract_answer("####   7  ") == "7"
    assert extract_answer("nothing") is None


@pytest.mark.parametrize("bad", [None, 12, b"#### 12", ["#### 12"]])
def test_non_string_completion_scores_zero(bad):
    assert score(bad, "12").reward == 0.0


def test_answer_key_groups_equal_numbers():
    assert score("#### 1,000.0", "1").answer == score("#### 1000", "1").answer
    assert score("#### 12", "1").answer != score("#### 13", "1").answer
    assert score("no marker", "1").answer == ""


@pytest.mark.parametrize("completion", [
    "x" * 1_000_000 + " #### 14",
    "#### " + "9" * 1_000_000,
    "#### " + "\\frac{" * 200_000,
    "#### " + "{" * 500_000 + "}" * 500_000,
    "####" * 250_000,
    "\\boxed{" * 150_000 + "#### 1/2",
], ids=["filler-then-answer", "huge-number", "open-fracs", "deep-braces", "markers-only", "open-boxed"])
def test_megabyte_completion_is_scored(completion):
    """Hostile megabyte completions get a reward (no recursion error, no catastrophic backtracking hang);
    their latency is measured by bench/latency.py, not asserted here."""
    assert len(completion) >= 1_000_000
    for kind, gold in (("auto", "14"), ("math", "\\frac{1}{2}")):
        result = score(completion, gold, kind=kind)
        assert result.reward in (0.0, 1.0)


def test_megabyte_correct_answer_is_still_found():
    assert score("x" * 1_000_000 + " #### 14", "14").reward == 1.0


def test_reward_fn_interface():
    fn = make_reward_fn(kind="numeric", require_single_marker=True)
    results = fn(["#### 3", "#### 3 #### 3", "3"], ["3", "3", "3"])
    assert [r.reward for r in results] == [1.0, 0.0, 0.0]
    assert [float(r) for r in fn(["#### 3"], ["3"], object())] == [1.0]  # trainer's (texts, golds, rollout)
    with pytest.raises(ValueError, match="2 completions but 1 golds"):
        fn(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="kind"):
        make_reward_fn(kind="fuzzy")


def test_doctests_pass():
    outcome = doctest.testmod(rewards)
    assert outcome.attempted >= 15 and outcome.failed == 0
