"""tarpo/study_report.py: run records, the report's means and paired differences, its markdown and reading,
against hand computations (3 problems x 2 seeds)."""

import math

import pytest

from tarpo.study import mean_stderr  # checked by hand in tests/test_study.py
from tarpo.study_report import build_report, reading, report_markdown, run_record

WARMUP = [0.25, 0.5, 0.0]
HAND_RUNS = {  # (mode, seed) -> per-problem avg@k over the same 3 problems
    ("tarpo", 1): [0.5, 0.75, 0.0], ("tarpo", 2): [0.25, 1.0, 0.25],
    ("hard", 1): [0.25, 0.75, 0.0], ("hard", 2): [0.5, 0.5, 0.0],
}


def _report():
    runs = [run_record(m, s, v, WARMUP, soft_ratio=0.01 * s) for (m, s), v in HAND_RUNS.items()]
    return build_report(runs, WARMUP, meta={"eval_set": {"num_problems": 3, "num_samples": 4}})


def test_run_record_is_the_paired_improvement_over_the_warmup_model():
    r = run_record("tarpo", 1, HAND_RUNS[("tarpo", 1)], WARMUP)
    # differences 0.25, 0.25, 0.0: mean 1/6; deviations 1/12, 1/12, -1/6 -> squares 1/144 + 1/144 + 4/144 = 6/144
    assert r["avg_at_k"] == pytest.approx(1.25 / 3)
    assert r["improvement"] == pytest.approx(1 / 6)
    stderr = math.sqrt(6 / 144 / 2 / 3)
    assert r["improvement_stderr"] == pytest.approx(stderr)
    assert r["improvement_z"] == pytest.approx((1 / 6) / stderr)
    assert run_record("hard", 9, WARMUP, WARMUP)["improvement_z"] is None  # zero stderr: no z, and valid JSON
    with pytest.raises(ValueError, match="problems"):
        run_record("hard", 1, [0.5], WARMUP)


def test_report_means_and_paired_differences_by_hand():
    report = _report()
    tarpo, hard = report["summary"]["tarpo"], report["summary"]["hard"]
    # run means: tarpo s1 1.25/3, s2 1.5/3; hard s1 1.0/3, s2 1.0/3
    assert tarpo["avg_at_k"]["mean"] == pytest.approx(2.75 / 6)
    assert tarpo["avg_at_k"]["stderr_over_seeds"] == pytest.approx(abs(1.25 / 3 - 1.5 / 3) / 2)  # n=2: |a-b|/2
    assert hard["avg_at_k"]["stderr_over_seeds"] == pytest.approx(0.0)
    # vs warm-up (mean 0.75/3): per seed 0.5/3 and 0.75/3
    assert tarpo["vs_warmup"]["per_seed"] == pytest.approx([0.5 / 3, 0.75 / 3])
    assert tarpo["vs_warmup"]["mean"] == pytest.approx(1.25 / 6)
    # tarpo - hard per seed: (1.25 - 1.0)/3 and (1.5 - 1.0)/3; per problem averaged over seeds:
    # p1 ((0.5-0.25) + (0.25-0.5))/2 = 0, p2 ((0.75-0.75) + (1.0-0.5))/2 = 0.25, p3 (0 + 0.25)/2 = 0.125
    pair = report["paired"]["tarpo - hard"]
    assert pair["per_seed"] == pytest.approx([0.25 / 3, 0.5 / 3])
    assert pair["mean"] == pytest.approx(0.375 / 3)
    assert pair["stderr_over_seeds"] == pytest.approx(abs(0.25 / 3 - 0.5 / 3) / 2)
    assert pair["stderr_over_problems"] == pytest.approx(mean_stderr([0.0, 0.25, 0.125])[1])
    assert "tarpo - soft-fixed" not in report["paired"]  # only pairs that ran
    assert tarpo["soft_ratio"]["mean"] == pytest.approx(0.015)
    assert report["seeds"] == [1, 2] and report["modes"] == ["tarpo", "hard"]
    assert [r["mode"] + str(r["seed"]) for r in report["runs"]] == ["tarpo1", "tarpo2", "hard1", "hard2"]


def test_seeds_beating_warmup_counts_z_above_two():
    report = _report()
    z = {(r["mode"], r["seed"]): r["improvement_z"] for r in report["runs"]}
    expected = sum(1 for (m, _), v in z.items() if m == "tarpo" and v is not None and v > 2)
    assert report["summary"]["tarpo"]["seeds_beating_warmup_by_2_stderr"] == expected
    assert report["summary"]["hard"]["seeds_beating_warmup_by_2_stderr"] == 0  # hard s1: +0.083 +- 0.083, z 1


def test_markdown_shows_the_numbers_of_the_report():
    report = _report()
    text = report_markdown(report)
    assert f"{report['summary']['tarpo']['avg_at_k']['mean']:.3f} ± " in text
    assert "| tarpo - hard | +0.125 |" in text
    assert "3 problems x 4 samples" in text and "2 seeds (1, 2)" in text
    one_seed = build_report([run_record("tarpo", 1, HAND_RUNS[("tarpo", 1)], WARMUP)], WARMUP)
    assert one_seed["summary"]["tarpo"]["avg_at_k"]["stderr_over_seeds"] is None  # NaN is not JSON
    assert "| tarpo-s1 |" in report_markdown(one_seed)


def test_reading_calls_a_difference_only_beyond_two_stderrs():
    """The bar is 2 x the larger of the stderr over seeds and over problems: seeds that happen to agree (stderr over
    seeds near 0 with 2-3 seeds) do not make an evaluation-noise-sized difference real."""
    report = _report()
    lines = reading(report)
    pair = report["paired"]["tarpo - hard"]  # +0.125: beyond 2 x 0.0417 over seeds, within 2 x 0.0722 over problems
    assert 2 * pair["stderr_over_seeds"] < pair["mean"] < 2 * pair["stderr_over_problems"]
    assert "- tarpo - hard: +0.125 (within 2 stderrs: no difference detectable at this size)." in lines
    tarpo = report["summary"]["tarpo"]["vs_warmup"]  # +0.208 > 2 x 0.0833 (over problems, the larger): called
    assert tarpo["mean"] > 2 * max(tarpo["stderr_over_seeds"], tarpo["stderr_over_problems"])
    assert any(line.startswith("- TARPO (learned router) vs the warm-up model: +0.208 (better") for line in lines)
    tied = build_report([run_record("tarpo", s, v, WARMUP) for s, v in ((1, [0.5, 0.5, 0.0]), (2, [0.0, 0.5, 0.0]))],
                        WARMUP)
    assert "within 2 stderrs" in reading(tied)[1]
