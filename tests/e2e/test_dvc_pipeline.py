"""`dvc repro` end to end in a temporary copy of the repo with a tiny test profile (real stages, real MLflow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline import paths
from tests.e2e.conftest import run

pytestmark = pytest.mark.slow
DVC = [sys.executable, "-m", "dvc"]


def _git_init(repo: Path) -> None:
    run(["git", "init", "-q"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], repo)


def test_dvc_repro_end_to_end_then_nothing_to_do(repo_copy: Path):
    _git_init(repo_copy)
    first = run([*DVC, "repro"], repo_copy, timeout=900)
    for stage in ("prepare", "warmup", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout, first.stdout[-2000:]

    for out in (paths.TRAIN_DATA, paths.EVAL_DATA, paths.PREPARE_METRICS, paths.WARMUP_METRICS, paths.TRAIN_METRICS,
                paths.TRAIN_PLOT, paths.RUN_INFO, paths.EVAL_METRICS, paths.EVAL_PLOT, paths.REGISTER_INFO,
                f"{paths.WARMUP_DIR}/config.json", f"{paths.TRAINED_DIR}/router.safetensors",
                f"{paths.EVAL_DIR}/tarpo.jsonl", f"{paths.EVAL_DIR}/warmup.jsonl"):
        assert (repo_copy / out).is_file(), out
    evaluation = json.loads((repo_copy / paths.EVAL_METRICS).read_text())
    for key in ("warmup/avg_at_k", "tarpo/avg_at_k", "tarpo/pass_at_1", "tarpo/stderr", "improvement",
                "improvement_stderr"):
        assert key in evaluation
    rows = (repo_copy / paths.TRAIN_PLOT).read_text().splitlines()
    assert rows[0].startswith("step,reward_mean") and len(rows) == 1 + 3
    run_id = json.loads((repo_copy / paths.RUN_INFO).read_text())["run_id"]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo_copy / 'mlflow.db'}")
    recorded = client.get_run(run_id)
    assert recorded.data.params["router.loss_weight"] == "0.1"
    assert [m.step for m in client.get_metric_history(run_id, "reward_mean")] == [1, 2, 3]
    assert "eval/tarpo_avg_at_k" in recorded.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "samples" in artifacts and "params.yaml" in artifacts, artifacts
    name = __import__("tarpo.config").config.load_config(repo_copy / "params.yaml").register.name  # the recipe's
    assert client.get_model_version_by_alias(name, "candidate").run_id == run_id

    second = run([*DVC, "repro"], repo_copy)
    assert "Running stage" not in second.stdout, second.stdout
    status = run([*DVC, "status"], repo_copy)
    assert "up to date" in status.stdout.lower(), status.stdout

    # Precise params: a logging-only key changes no stage; train.lr changes train (evaluate and register follow
    # it through train's outputs); an eval key changes evaluate alone.
    import yaml

    original = (repo_copy / "params.yaml").read_text()
    for key, value, changed in ((("train", "log_samples_every"), 7, set()), (("tracking", "run_name"), "x", set()),
                                (("train", "checkpoint_every"), 9, set()), (("train", "lr"), 0.0123, {"train"}),
                                (("eval", "seed"), 99, {"evaluate"})):
        params = yaml.safe_load(original)
        params[key[0]][key[1]] = value
        (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        report = json.loads(run([*DVC, "status", "--json"], repo_copy).stdout or "{}")
        assert set(report) == changed, (key, report)
    (repo_copy / "params.yaml").write_text(original)

    # Readable runs: named after model, mode and seed; stages appended; PNG plots and sample pages logged.
    assert recorded.info.run_name == "tiny-tarpo-s42"
    assert recorded.data.tags["tarpo.stages"].split(",")[:4] == ["prepare", "warmup", "train", "evaluate"]
    assert "prepare/train_count" in recorded.data.metrics and "warmup/final_loss" in recorded.data.metrics
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/train.png", "plots/eval.png"} <= plots, plots
    pages = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"eval/tarpo.html", "eval/warmup.html", "eval/eval_set.json"} <= pages, pages
    assert len(recorded.data.tags["eval.set_hash"]) == 16
    page = (repo_copy / paths.EVAL_DIR / "tarpo.html").read_text()
    assert "gold: <b>" in page and page.count("<section>") == 3
