"""Study breakdowns (tarpo/study_breakdown.py, via tarpo.study_report.build_report) against hand computations."""

import pytest

from tarpo.router_diagnostics import summarize_decisions
from tarpo.study_report import build_report, report_markdown, run_record

HOPS = [3, 3, 4, 4]
WARMUP = [0.5, 0.0, 0.25, 0.25]
PER_PROBLEM = {("tarpo", 1): [1.0, 0.5, 0.5, 0.0], ("tarpo", 2): [0.5, 0.5, 0.25, 0.25],
               ("hard", 1): [0.5, 0.5, 0.0, 0.0], ("hard", 2): [0.5, 0.0, 0.25, 0.25]}


def _decisions(p, repeat=20):
    """p_soft at entropies 0.0, 0.05 and 2.0 (three bins), each decision repeated so every bin is comparable."""
    return summarize_decisions({"p_soft": list(p) * repeat, "entropy": [0.0, 0.05, 2.0] * repeat,
                                "position": [0, 5, 9] * repeat, "soft": [0, 1, 0] * repeat})


def _runs():
    runs = []
    for (mode, seed), values in PER_PROBLEM.items():
        soft = 0.1 * seed if mode == "tarpo" else 0.0
        run = run_record(mode, seed, values, WARMUP)
        run["by_hops"] = {"3": {"soft_share": soft, "mean_explicit_length": 10.0 + seed},
                          "4": {"soft_share": 2 * soft, "mean_explicit_length": 14.0}}
        run["lengths"] = {"mean_length": 12.0 + seed, "mean_explicit_length": 11.0, "soft_share": soft}
        if mode == "tarpo":
            run["router"] = _decisions([0.1 * seed, 0.2, 0.3])
        runs.append(run)
    return runs


def _report(start_p=(0.1, 0.2, 0.3)):
    return build_report(_runs(), WARMUP, meta={"eval_set": {"num_problems": 4, "num_samples": 4}}, hops=HOPS,
                        diagnostics={"start_router": _decisions(list(start_p)),
                                     "warmup_lengths": {"mean_length": 9.0, "mean_explicit_length": 8.0,
                                                        "soft_share": 0.01}})


def test_per_hop_accuracy_and_paired_difference_by_hand():
    hops = _report()["by_hops"]
    assert hops["3"]["problems"] == 2 and hops["3"]["warmup_avg_at_k"] == pytest.approx(0.25)
    # tarpo on hop 3: seed 1 (1.0 + 0.5)/2 = 0.75, seed 2 0.5 -> mean 0.625, stderr |0.75-0.5|/2
    tarpo3 = hops["3"]["modes"]["tarpo"]["avg_at_k"]
    assert tarpo3["mean"] == pytest.approx(0.625) and tarpo3["stderr_over_seeds"] == pytest.approx(0.125)
    # tarpo - hard on hop 4: seed 1 (0.25 - 0)=0.25, seed 2 0 -> 0.125; per problem over seeds: 0.25, 0 -> se 0.125
    pair = hops["4"]["paired"]["tarpo - hard"]
    assert pair["mean"] == pytest.approx(0.125) and pair["stderr_over_seeds"] == pytest.approx(0.125)
    assert pair["stderr_over_problems"] == pytest.approx(0.125)
    assert hops["4"]["modes"]["tarpo"]["soft_share"]["mean"] == pytest.approx(0.3)
    assert hops["3"]["modes"]["hard"]["mean_explicit_length"]["mean"] == pytest.approx(11.5)


def test_lengths_and_router_over_seeds_by_hand():
    report = _report()
    assert report["lengths"]["tarpo"]["mean_length"]["mean"] == pytest.approx(13.5)
    router = report["router"]
    assert router["seeds"] == 2 and router["p_soft_mean"]["mean"] == pytest.approx((0.2 + 0.7 / 3) / 2)
    first_bin = router["by_entropy"][0]
    assert first_bin["mean"] == pytest.approx(0.15) and first_bin["count"] == 40
    # seed 2 puts 0.2 where the start router had 0.1: bin means 0.15, 0.2, 0.3 vs 0.1, 0.2, 0.3 -> x1.5, x1, x1
    assert report["router_change"]["verdict"] == "shaped"
    assert report["router_change"]["ratios"] == pytest.approx([1.5, 1.0, 1.0])


def test_a_router_that_did_not_move_is_called_so():
    report = _report(start_p=(0.15, 0.2, 0.3))
    assert report["router_change"]["verdict"] == "unchanged"
    assert "did NOT move" in report_markdown(report)
    uniform = _report(start_p=(0.3, 0.4, 0.6))   # trained 0.15, 0.2, 0.3: half the start everywhere
    assert "moved only uniformly: its p_soft is x0.50-x0.50" in report_markdown(uniform)


def test_markdown_shows_the_breakdown_numbers():
    report = _report()
    text = report_markdown(report)
    assert "| 3 | 2 | 0.250 | 0.625 ± 0.125 |" in text
    assert "| 4 | 2 | 0.250 |" in text and "+0.125 ± 0.125 / 0.125" in text
    assert "| warm-up (start router) | 9.00 | 8.00 | 0.0100 |" in text
    assert "| tarpo | 13.50 ± 0.50 | 11.00 ± 0.00 |" in text
    assert "moved unevenly: its p_soft is x1.00 to x1.50" in text


def test_reports_without_hops_or_diagnostics_are_unchanged():
    runs = [run_record(m, s, v, WARMUP) for (m, s), v in PER_PROBLEM.items()]
    report = build_report(runs, WARMUP, meta={"eval_set": {"num_problems": 4, "num_samples": 4}})
    assert not {"by_hops", "lengths", "router", "start_router"} & set(report)
    assert "Per hop count" not in report_markdown(report) and "Router diagnostics" not in report_markdown(report)


def test_figures_draw(tmp_path):
    from tarpo.plots import save_png
    from tarpo.study_breakdown import hops_figure, router_figure

    report = _report()
    save_png(hops_figure(report), tmp_path / "hops.png")
    save_png(router_figure({"tarpo": report["router"]}, report["start_router"]), tmp_path / "router.png")
    assert (tmp_path / "hops.png").stat().st_size > 1000 and (tmp_path / "router.png").stat().st_size > 1000
