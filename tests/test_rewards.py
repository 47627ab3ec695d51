"""Reward extraction and equivalence: table-driven cases, answer rules, voting keys, robustness, doctests.

Every expected value below was worked out by hand from the rule in the docstring of tarpo/rewards.py:
the answer is the span after the LAST marker to the end of its line, a number answer is that span's FIRST
number.
"""

import doctest
import typing

import pytest

import tarpo.rewards as rewards
from tarpo.rewards import answer_key, extract_answer, find_answer, make_reward_fn, score

# (completion, gold, kind, require_single_marker, expected reward)
CASES = [
    # plain GSM8K-style numbers
    ("5 + 7 = 12. #### 12", "12", "numeric", False, 1.0),
    ("#### 12", "13", "numeric", False, 0.0),
    ("#### 1,000", "1000", "numeric", False, 1.0),  # commas removed before the number is read
    ("#### 1000", "1,000", "numeric", False, 1.0),  # the same, gold side
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
    # LaTeX via math-verify (a bare 1/2 is not read as its last number)
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
    # list-valued gold: alternatives, never its repr
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
    # issue 11: the span after the last marker ends at its line; its FIRST number is the answer
    ("#### 18\nThis is because 9 * 2 = 18 and 20 - 2 = 18.", "18", "numeric", False, 1.0),
    ("#### 18\nThis is because 9 * 2 = 18 and 20 - 2 = 18.", "18", "auto", False, 1.0),
    ("#### 18 (since 9 * 2)", "18", "numeric", False, 1.0),
    ("#### 18 (since 9 * 2)", "18", "auto", False, 1.0),
    ("#### 19 or 18", "18", "numeric", False, 0.0),
    ("#### 19 or 18", "18", "auto", False, 0.0),
    ("#### 19 or 18", "19", "auto", False, 1.0),
    ("#### 1\nStep 1: 9 * 2 = 18. So 18.", "18", "auto", False, 0.0),  # "#### 1" written as a header
    ("####\n\n42\nbecause 6 * 7", "42", "auto", False, 1.0),  # marker ends its line: next non-blank line
    ("#### 5\nthen #### 6 apples\nno, 7", "6", "auto", False, 1.0),
    ("#### \u201318", "-18", "numeric", False, 1.0),  # en dash minus
    ("#### \u201418", "-18", "auto", False, 1.0),  # em dash minus
    ("#### \u201318", "18", "auto", False, 0.0),
    ("#### \u2013 7", "7", "auto", False, 1.0),  # a dash and a space is punctuation, not a sign
    ("#### -$18", "-18", "numeric", False, 1.0),
    ("#### -$18", "-18", "auto", False, 1.0),
    ("#### $-18", "-18", "auto", False, 1.0),
    ("#### -\\$18", "-18", "auto", False, 1.0),
    ("#### -$18", "18", "auto", False, 0.0),
    ("#### 1 234 567", "1234567", "numeric", False, 1.0),  # space-grouped thousands
    ("#### 1\u2009234\u2009567", "1234567", "auto", False, 1.0),  # thin spaces
    ("#### 1\u202f234", "1234", "auto", False, 1.0),  # narrow no-break space
    ("#### 70\u00a0000", "70000", "auto", False, 1.0),  # no-break space
    ("#### 70 000", "70000", "auto", False, 1.0),
    ("#### 12345 678", "12345678", "numeric", False, 0.0),  # not a thousands grouping: 12345
    ("#### 12 34", "1234", "numeric", False, 0.0),  # "34" is not a group of three
    ("#### \\boxed{18} apples", "18", "auto", False, 1.0),  # a box after the marker is unwrapped
    ("#### \\sqrt{2}", "2", "auto", False, 0.0),  # an expression: its first digit is not its value
    ("#### \\sqrt{4}", "2", "auto", False, 1.0),
    ("#### 2^{3}", "8", "auto", False, 1.0),
    ("#### \\text{18 apples}", "18", "auto", False, 1.0),
]

# (completion, gold, answer_rule, reward, answer_found, marker_found)
RULE_CASES = [
    ("so \\boxed{18}", "18", "boxed", 1.0, True, False),
    ("so \\boxed{18}", "18", "marker", 0.0, False, False),
    ("so \\boxed{18}", "18", "marker-or-boxed", 1.0, True, False),
    ("\\boxed{17} wait, \\boxed{18}.", "18", "boxed", 1.0, True, False),  # the last box
    ("\\boxed{18} #### 17", "18", "marker-or-boxed", 0.0, True, True),  # a marker wins over a box
    ("\\boxed{18} #### 17", "18", "boxed", 1.0, True, True),
    ("#### 1\nreasoning 9 * 2 \\boxed{18}", "18", "marker-or-boxed", 0.0, True, True),
    ("\\boxed{\\frac{1}{2}}", "0.5", "boxed", 1.0, True, False),
    ("\\boxed{\\frac{1}{2}}", "\\frac{2}{4}", "boxed", 1.0, True, False),
    ("\\boxed{}", "18", "boxed", 0.0, False, False),
    ("\\boxed{18", "18", "boxed", 0.0, False, False),  # unbalanced
    ("####", "18", "marker", 0.0, False, True),
    ("#### 18", "18", "marker", 1.0, True, True),
    ("#### 19", "18", "marker", 0.0, True, True),  # found but wrong: not a format problem
    ("18", "18", "marker-or-boxed", 0.0, False, False),
]


@pytest.mark.parametrize("completion,gold,kind,single,expected", CASES)
def test_score_table(completion, gold, kind, single, expected):
    result = score(completion, gold, kind=kind, require_single_marker=single)
    assert result.reward == expected, (completion, gold, result.parts)


def test_table_is_large_enough():
    assert len(CASES) >= 70


@pytest.mark.parametrize("completion,gold,rule,expected,found,marker", RULE_CASES)
def test_answer_rules(completion, gold, rule, expected, found, marker):
    result = score(completion, gold, answer_rule=rule)
    assert (result.reward, result.answer_found, result.marker_found) == (expected, found, marker)


def test_unknown_rule_and_single_marker_without_marker_rule_are_refused():
    with pytest.raises(ValueError, match="answer_rule"):
        make_reward_fn(answer_rule="last-line")
    with pytest.raises(ValueError, match="require_single_marker needs answer_rule 'marker'"):
        make_reward_fn(answer_rule="boxed", require_single_marker=True)
    with pytest.raises(ValueError, match="answer rule"):
        find_answer("x", "nope")


VOTE_ANSWERS = ["70 000", "70000", "70,000", "70 000 apples", "$70,000.00", "70000.0", "70 001",
                "19 or 18", "19", "18", "18 (since 9 * 2)", "\u201318", "-18", "-$18",
                "\\frac{1}{2}", "0.5", "1/2", "\\sqrt{2}", "2", "2^{1}", "x = 7", "7", "", "seven"]
VOTE_GOLDS = ["70000", "18", "19", "-18", "0.5", "2", "7"]


@pytest.mark.parametrize("kind", ["auto", "numeric"])
def test_voting_key_is_the_rewards_reading(kind):
    """Two answers with the same voting key score the same against every gold (issue 11: "70 000"
    voted with 70000 but scored 0)."""
    keyed = {}
    for answer in VOTE_ANSWERS:
        result = score(f"#### {answer}", VOTE_GOLDS, kind=kind)  # list gold: any alternative
        assert result.answer == answer_key(answer, kind)
        per_gold = tuple(score(f"#### {answer}", gold, kind=kind).reward for gold in VOTE_GOLDS)
        if result.answer:
            assert keyed.setdefault(result.answer, per_gold) == per_gold, (answer, result.answer)
    assert answer_key("70 000") == answer_key("70000") and score("#### 70 000", "70000").reward == 1.0
    assert answer_key("19 or 18") != answer_key("18")


def test_reward_config_mirrors_the_library():
    from tarpo.config import RewardConfig, TarpoConfig

    assert typing.get_args(RewardConfig.model_fields["kind"].annotation) == rewards.KINDS
    assert typing.get_args(RewardConfig.model_fields["answer_rule"].annotation) == rewards.ANSWER_RULES
    cfg = TarpoConfig().reward
    assert cfg.model_dump() == {"kind": "auto", "answer_rule": "marker", "require_single_marker": False,
                                "function": None, "overlong": "none", "overlong_buffer": 0}
    assert all(f.description for f in RewardConfig.model_fields.values())
    fn = make_reward_fn(marker="####", **cfg.rule_settings())  # what the train and evaluate stages call
    assert [r.reward for r in fn(["#### 18 (since 9 * 2)"], ["18"])] == [1.0]


def test_params_yaml_reward_section_is_the_default():
    from tarpo.config import RewardConfig, load_config

    from pathlib import Path

    assert load_config(Path(__file__).resolve().parents[1] / "params.yaml").reward == RewardConfig()


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
    assert extract_answer("#### 7\r\nbecause") == "7"
    assert extract_answer("####  \n  \n") == ""
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
    """Hostile text never raises (speed is bench material: no timing assertion in a unit test)."""
    assert len(completion) >= 1_000_000
    for kind, gold in (("auto", "14"), ("math", "\\frac{1}{2}")):
        for rule in rewards.ANSWER_RULES:
            assert score(completion, gold, kind=kind, answer_rule=rule).reward in (0.0, 1.0)


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
    assert outcome.attempted >= 25 and outcome.failed == 0
