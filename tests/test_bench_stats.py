"""Benchmark statistics and verdicts (bench/common.py) and the README results section (bench/report.py)."""

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = load("common")
report = load("report")


def test_spread_matches_textbook_quartiles():
    values = [7.0, 1.0, 3.0, 5.0, 9.0, 2.0, 4.0]  # sorted: 1 2 3 4 5 7 9
    stats = common.spread(values)
    assert (stats["min"], stats["median"], stats["max"], stats["n"]) == (1.0, 4.0, 9.0, 7)
    assert (stats["q1"], stats["q3"]) == (2.5, 6.0)  # inclusive method: halfway between 2,3 and 5,7
    assert stats["iqr"] == pytest.approx(3.5)
    assert stats["median"] == statistics.median(values)
    assert common.spread([2.0])["iqr"] == 0.0


@pytest.mark.parametrize("q1, q3, goal, better, expected", [
    (1.00, 1.05, 1.1, "lower", "met"), (1.05, 1.12, 1.1, "lower", "inconclusive"), (1.11, 1.2, 1.1, "lower", "missed"),
    (0.91, 1.00, 0.9, "higher", "met"), (0.85, 0.95, 0.9, "higher", "inconclusive"),
    (0.70, 0.89, 0.9, "higher", "missed"), (1.1, 1.1, 1.1, "lower", "met"), (0.9, 0.9, 0.9, "higher", "met")])
def test_verdict_only_when_the_interval_clears_the_goal(q1, q3, goal, better, expected):
    assert common.verdict({"q1": q1, "q3": q3}, goal, better) == expected


def test_goal_row_uses_paired_ratios():
    ratios = common.paired_ratios([2.0, 4.0, 3.0], [2.0, 2.0, 3.0])
    assert ratios == [1.0, 2.0, 1.0]
    row = common.goal_row("x", ratios, 1.1, "lower")
    assert row["interval"] == [1.0, 1.5] and row["verdict"] == "inconclusive" and row["median"] == 1.0
    with pytest.raises(ValueError):
        common.verdict({"q1": 1, "q3": 1}, 1, "sideways")


def fake_results(tmp_path: Path, gpu: dict | None = None) -> Path:
    machine = {"cpu_model": "EPYC", "cpu_count": 2, "torch_threads": 1, "load_average_start": [5.0, 5, 5]}
    goal = common.goal_row("g", [0.92, 0.94, 0.96, 0.97, 0.98, 0.99, 1.0, 1.02, 1.04], 0.9, "higher")
    timing = {"wall": common.spread([1.0, 1.2]), "cpu": common.spread([0.9, 1.0]), "tokens_per_s": 10.0}
    (tmp_path / "rollout-tiny-cpu.json").write_text(json.dumps({
        "model": "tiny", "machine": machine, "goals": {"rollout_over_generate": goal},
        "settings": {"batch": 2, "prompt_len": 8, "new_tokens": 8}, "timings": {"generate": timing}}))
    if gpu is not None:
        (tmp_path / "gpu-nvidia-h100-80gb-hbm3-2026-11-27.json").write_text(json.dumps(gpu))
    return tmp_path


def test_results_section_states_goal_interval_verdict_and_machine(tmp_path):
    section = report.results_section(fake_results(tmp_path))
    assert "| CPU rollout >= 0.9x generate (tiny) | IQR [0.960, 1.000]" in section
    assert "**met**" in section and "EPYC (2 cores, 1 thread), load 5.0" in section
    assert "| GPU >= 5,000 tok/s, 7B shape, H100 | not yet measured |" in section
    readme = "intro\n" + section + "after\n"
    assert report.render(readme, section) == readme  # idempotent between the markers
    assert report.render("intro\n", section).endswith(section)


def test_results_section_reads_a_gpu_run(tmp_path):
    gpu = {"meta": {"card": "NVIDIA H100 80GB HBM3"},
           "timings": {"fast_tarpo": {"tokens_per_s": 5200.0}, "fast_hard": {"tokens_per_s": 6000.0}}}
    section = report.results_section(fake_results(tmp_path, gpu))
    assert "| GPU >= 5,000 tok/s, 7B shape, H100 | 5200 tok/s over 512 steps (decode only nan), single run | **met** " \
           "| NVIDIA H100" in section
    assert "tarpo/hard tokens/s 0.867, single run | **missed**" in section


def test_other_cards_only_indicate_the_h100_goal_and_a_missing_hard_run_says_why(tmp_path):
    gpu = {"meta": {"card": "NVIDIA H200"}, "timings": {"fast_tarpo": {"tokens_per_s": 8642.0}},
           "errors": {"fast_hard": "Traceback ...\nSectionTimeout: over its limit of 75 s\n"}}
    section = report.results_section(fake_results(tmp_path, gpu))
    assert "| not measured on an H100 (met on this card) | NVIDIA H200" in section
    assert "| not measured: fast_hard section: SectionTimeout: over its limit of 75 s | - | NVIDIA H200" in section


def test_readme_results_are_generated_from_the_committed_json():
    """After adding or rerunning a result, run `python bench/report.py` (this test then passes again)."""
    readme = (ROOT / "bench" / "README.md").read_text()
    assert report.render(readme, report.results_section()) == readme
