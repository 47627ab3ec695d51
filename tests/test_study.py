"""tarpo/study.py: study statistics against hand computations (3 problems x 2-3 seeds)."""

import math

import pytest

from tarpo.study import mean_stderr, mode_summary, paired_difference


def test_mean_stderr_by_hand():
    mean, stderr = mean_stderr([0.2, 0.4, 0.9])
    assert mean == pytest.approx(0.5)
    # deviations -0.3, -0.1, 0.4 -> squares 0.09 + 0.01 + 0.16 = 0.26; / (n-1) = 0.13; / n = 0.043333
    assert stderr == pytest.approx(math.sqrt(0.26 / 2 / 3))
    assert math.isnan(mean_stderr([0.5])[1])
    with pytest.raises(ValueError):
        mean_stderr([])


def test_mode_summary_is_over_seeds_not_problems():
    runs = {1: [1.0, 0.0, 0.5], 2: [0.5, 0.5, 0.5], 3: [1.0, 1.0, 0.25]}
    # run means: 0.5, 0.5, 0.75 -> mean 0.583333; deviations -1/12, -1/12, 2/12 -> sum sq 6/144; /2/3 = 1/144
    summary = mode_summary(runs)
    assert summary["mean"] == pytest.approx(7 / 12)
    assert summary["stderr_over_seeds"] == pytest.approx(1 / 12)
    assert (summary["min"], summary["max"], summary["seeds"]) == (0.5, 0.75, 3)


def test_paired_difference_uses_same_seed_and_same_problem():
    a = {1: [1.0, 0.5, 0.0], 2: [1.0, 1.0, 0.5], 7: [0.0, 0.0, 0.0]}   # seed 7 has no partner: ignored
    b = {1: [0.5, 0.5, 0.0], 2: [0.0, 1.0, 0.5], 3: [1.0, 1.0, 1.0]}
    d = paired_difference(a, b)
    # seed 1: (0.5 + 0 + 0) / 3 = 1/6; seed 2: (1 + 0 + 0) / 3 = 1/3
    assert d["per_seed"] == pytest.approx([1 / 6, 1 / 3])
    assert d["mean"] == pytest.approx(0.25)
    assert d["stderr_over_seeds"] == pytest.approx(math.sqrt(((1 / 12) ** 2 * 2) / 1 / 2))
    # per problem, averaged over the two seeds: (0.5+1)/2 = 0.75, 0, 0 -> mean 0.25, sd^2 = (0.25+0.0625*2)/2
    assert d["stderr_over_problems"] == pytest.approx(math.sqrt((0.5 ** 2 + 0.25 ** 2 * 2) / 2 / 3))
    assert (d["seeds"], d["problems"]) == (2, 3)


def test_runs_on_different_problem_sets_are_refused():
    with pytest.raises(ValueError, match="different numbers of problems"):
        paired_difference({1: [1.0, 0.0]}, {1: [1.0]})
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({1: [1.0]}, {2: [1.0]})
