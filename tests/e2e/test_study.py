"""`cli.py study` end to end on tiny: one shared warm-up and eval set, seeds that change only the RL run, MLflow runs
named and tagged per (mode, seed), a report whose numbers are the runs' own, `compare --study`, and resuming."""

from __future__ import annotations

import json

import pytest

from pipeline import paths
from pipeline.study import run_config
from tarpo.config import load_config
from tarpo.evaluate import avg_at_k
from tests.e2e.conftest import ROOT, TEST_PROFILE, _merge
from tests.e2e.workspace_kit import inside_workspace, invoke

pytestmark = pytest.mark.slow

PROFILE = _merge(TEST_PROFILE, {"data": {"eval_size": 8}, "train": {"steps": 2, "checkpoint_every": 0},
                                "eval": {"every": 2, "every_problems": 3, "max_problems": 6},
                                "register": {"enabled": False}, "runtime": {"threads": 1}})
STUDY = ["study", "--name", "t", "--seeds", "2", "--first-seed", "1", "--modes", "tarpo,hard"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    ws = tmp_path_factory.mktemp("study")
    with inside_workspace(ws, PROFILE):
        first = invoke(STUDY)
        assert first.exit_code == 0, f"{first.output}\n{first.exception!r}"
        again = invoke(STUDY)  # resumes: nothing is re-trained
        parallel = invoke(["study", "--name", "tj", "--seeds", "1", "--first-seed", "2", "--modes", "tarpo,hard",
                           "--jobs", "2"])
        assert parallel.exit_code == 0, f"{parallel.output}\n{parallel.exception!r}"
        compared = invoke(["compare", "--study", "t"])
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri="sqlite:///mlflow.db")
        experiment = client.get_experiment_by_name("tarpo")
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.study = 't'")
        history = {r.info.run_name: [m.step for m in client.get_metric_history(r.info.run_id, "heldout/avg_at_k")]
                   for r in runs}
    return ws, first, again, compared, runs, history


def test_report_numbers_are_the_runs_own(study):
    ws, first, *_ = study
    report = json.loads((ws / "studies/t/study.json").read_text())
    assert report["modes"] == ["tarpo", "hard"] and report["seeds"] == [1, 2]
    assert {(r["mode"], r["seed"]) for r in report["runs"]} == {(m, s) for m in ("tarpo", "hard") for s in (1, 2)}
    for run in report["runs"]:
        rows = [json.loads(line) for line in (ws / f"studies/t/runs/{run['mode']}-s{run['seed']}/eval.jsonl").open()]
        per_problem = [avg_at_k([r >= 1.0 for r in row["rewards"]]) for row in rows]
        assert run["per_problem"] == pytest.approx(per_problem) and len(per_problem) == 6
        assert run["curves"]["heldout_step"] == [0, 2] and len(run["curves"]["step"]) == 2
    tarpo_means = [r["avg_at_k"] for r in report["runs"] if r["mode"] == "tarpo"]
    assert report["summary"]["tarpo"]["avg_at_k"]["mean"] == pytest.approx(sum(tarpo_means) / 2)
    for name in ("study.md", "scores.png", "curves.png"):
        assert (ws / "studies/t" / name).stat().st_size > 0
    assert "| tarpo - hard |" in (ws / "studies/t/study.md").read_text()
    assert "tarpo-s2" in first.output  # the report is printed
    # router diagnostics and lengths (synthetic problems carry no hop count: no per-hop breakdown)
    assert (ws / "studies/t/router.png").stat().st_size > 0 and "by_hops" not in report
    assert report["router"]["seeds"] == 2 and report["start_router"]["decisions"] > 0
    assert report["router_change"]["verdict"] in ("unchanged", "uniform", "shaped", "no data") and "Router diagnostics" in (ws / "studies/t/study.md").read_text()
    for run in report["runs"]:
        rows = [json.loads(line) for line in (ws / f"studies/t/runs/{run['mode']}-s{run['seed']}/eval.jsonl").open()]
        lengths = [n for row in rows for n in row["lengths"]]
        assert run["lengths"]["mean_length"] == pytest.approx(sum(lengths) / len(lengths))
        assert ("router" in run) == (run["mode"] == "tarpo")


def test_seeds_change_the_rl_run_and_nothing_else(study):
    ws, *_ = study
    cfg = load_config(ws / paths.PARAMS)
    a, b = run_config(cfg, "tarpo", 1).model_dump(), run_config(cfg, "hard", 2).model_dump()
    changed = {f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k]}
    assert changed == {"router.mode", "train.seed"}
    runs = ws / "studies/t/runs"
    bases = {json.dumps(json.loads((d / "model" / paths.TRAINED_BASE).read_text())["base"], sort_keys=True)
             for d in runs.iterdir()}
    assert len(bases) == 1  # every run started from the one shared warm-up model (same weights hash)
    problems = {tuple(json.loads(line)["id"] for line in (d / "eval.jsonl").open()) for d in runs.iterdir()}
    assert len(problems) == 1  # the same eval problems, in the same order
    held = {d.name: (d / "heldout.csv").read_text().splitlines()[1] for d in runs.iterdir()}
    assert held["tarpo-s1"] == held["tarpo-s2"]  # step 0 (before any RL step): same start, same eval seed
    s1, s2 = ((runs / f"tarpo-s{s}" / "train.csv").read_text() for s in (1, 2))
    assert s1 != s2  # a different seed is a different RL run (other prompts, other samples)


def test_mlflow_runs_are_named_and_tagged_with_a_heldout_curve(study):
    *_, compared, runs, history = study
    assert sorted(r.info.run_name for r in runs) == ["hard-s1", "hard-s2", "tarpo-s1", "tarpo-s2"]
    for run in runs:
        tags = run.data.tags
        assert (tags["study"], tags["mode"], f"{tags['mode']}-s{tags['seed']}") == ("t", tags["mode"], run.info.run_name)
        assert "eval/tarpo_avg_at_k" in run.data.metrics and "eval/improvement_stderr" in run.data.metrics
        assert run.data.metrics["eval/eval_router_hard"] == 0.0  # eval.router: learned
        assert history[run.info.run_name] == [0, 2]
        assert run.data.params["runtime.threads"] == "1"  # the thread count is recorded with the run
    ws = study[0]
    for run in runs:  # the router diagnostics are artifacts of the TARPO runs (the store keeps them under the run id)
        found = list(ws.glob(f"**/{run.info.run_id}/artifacts/diagnostics/router_diagnostics.*"))
        assert len(found) == (2 if run.data.tags["mode"] == "tarpo" else 0), run.info.run_name
    assert compared.exit_code == 0, compared.output
    assert "tarpo-s1" in compared.output and "hard-s2" in compared.output
    assert "tarpo: " in compared.output and "(2 seeds)" in compared.output


def test_rerunning_resumes_without_training_again(study):
    _, _, again, _, runs, _ = study
    assert again.exit_code == 0, again.output
    assert again.output.count("already done") == 4
    assert len(runs) == 4  # no new MLflow runs


def test_bad_study_options_are_one_line_errors(tmp_path):
    result = invoke(["study", "--modes", "tarpo,greedy", "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 2 and "--modes: greedy not in tarpo, hard, soft-fixed" in result.output
    assert "Traceback" not in result.output


def test_heldout_evaluation_never_changes_the_training_run(study, tmp_path):
    """eval.every evaluates with its own seeded generator: the rewards and the trained weights are the same with
    and without it; with it the curve lands in heldout.csv, the figure and metrics/train.json."""
    from safetensors.torch import load_file

    from pipeline.train import run_train

    ws, *_ = study
    shared = ws / "studies/t/shared"
    out = {}
    for every in (0, 1):
        cfg = load_config(ws / paths.PARAMS, [f"eval.every={every}", "tracking.enabled=false"])
        d = tmp_path / f"every{every}"
        metrics = run_train(cfg=cfg, train_path=shared / paths.TRAIN_DATA, eval_path=shared / paths.EVAL_DATA,
                            warmup_dir=shared / paths.WARMUP_DIR, checkpoint_dir=d / "checkpoints",
                            trained_dir=d / "model", metrics_path=d / "train.json", plot_path=d / "train.csv",
                            heldout_plot_path=d / "heldout.csv", run_info_path=d / "run_info.json",
                            models_dir=ws / paths.MODELS_DIR, log=lambda _: None, progress=False)
        weights = {name: load_file(path) for name in ("adapter/adapter_model.safetensors", "router.safetensors")
                   if (path := d / "model" / name).is_file()}
        out[every] = (d, metrics, weights)
    (d0, m0, w0), (d1, m1, w1) = out[0], out[1]
    columns = lambda d: [line.rsplit(",", 1)[0] for line in (d / "train.csv").read_text().splitlines()]  # noqa: E731
    assert columns(d0) == columns(d1)  # every column but the step's wall time
    assert len(w0) == 2 and w0.keys() == w1.keys()
    for name in w0:
        for key in w0[name]:
            assert (w0[name][key] == w1[name][key]).all(), f"{name}:{key}"
    assert "heldout_last_avg_at_k" in m1 and "heldout_last_avg_at_k" not in m0
    assert [line.split(",")[0] for line in (d1 / "heldout.csv").read_text().splitlines()] == ["step", "0", "1", "2"]
    assert (d1 / "train.png").stat().st_size > 0


def test_parallel_jobs_give_the_same_runs(study):
    ws, *_ = study
    one, two = (json.loads((ws / f"studies/{n}/study.json").read_text()) for n in ("t", "tj"))
    assert [(r["mode"], r["seed"], r["per_problem"]) for r in one["runs"] if r["seed"] == 2] == \
        [(r["mode"], r["seed"], r["per_problem"]) for r in two["runs"]]
    assert len(two["runs"]) == 2
    assert (ws / "studies/tj/runs/hard-s2.log").read_text().count("held-out avg@k") >= 3


def test_default_seeds_start_at_train_seed_so_the_first_tarpo_run_is_dvc_repros(tmp_path, monkeypatch):
    from pipeline import study as study_module

    seen = {}

    class Spy(study_module.Study):
        def run(self):
            seen.update(name=self.name, seeds=self.seeds)
            (self.root).mkdir(parents=True, exist_ok=True)
            (self.root / "study.md").write_text("ok\n")
            return {}

    monkeypatch.setattr(study_module, "Study", Spy)
    monkeypatch.chdir(tmp_path)
    result = invoke(["study", "--seeds", "3", "--params", str(ROOT / "params.yaml"), "--set", "train.seed=7"])
    assert result.exit_code == 0, result.output
    assert seen == {"name": "embedded", "seeds": [7, 8, 9]}
