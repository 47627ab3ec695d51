"""pipeline/compare.py and pipeline/ui.py: the run table and the `mlflow ui` argv."""

import pytest

from pipeline.compare import compare_runs
from pipeline.ui import ui_command
from tarpo.config import TrackingConfig
from tarpo.tracking import MlflowTracker
from tests.mlflow_store import fresh_store


def test_last_runs_side_by_side(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = fresh_store(tmp_path, tmp_path_factory)
    cfg = TrackingConfig(uri=uri, experiment="cmp")
    assert "no experiment 'cmp'" in compare_runs(cfg)
    for i, weight in enumerate((0.1, 0.2, 0.3)):
        tracker = MlflowTracker(uri, "cmp", run_name=f"run{i}", artifact_location=str(tmp_path / "a"))
        tracker.log_params({"model.preset": "tiny", "router.loss_weight": weight, "train.steps": 5})
        for step in (1, 2):
            tracker.log_metrics({"reward_mean": step * weight, "soft_ratio": 0.05}, step=step)
        tracker.log_metrics({"train/reward_mean_last5": 1.5 * weight, "eval/tarpo_num_problems": 20.0 * (i + 1)})
        tracker.log_metrics({"eval/tarpo_avg_at_k": weight, "eval/warmup_avg_at_k": 0.01, "eval/tarpo_pass_at_8": 0.9})
        tracker.close()
    text = compare_runs(cfg, last=2)
    lines = {line.split()[0] if not line.startswith("eval") else " ".join(line.split()[:2]): line
             for line in text.splitlines()}
    assert "run2 (" in lines["run"] and "run1 (" in lines["run"] and "run0" not in text
    assert lines["router.loss_weight"].split()[1:] == ["0.3", "0.2"]
    row = {label: next(line for line in text.splitlines() if line.startswith(label)).removeprefix(label).split()
           for label in ("reward (last 5 mean)", "reward (last step)", "eval problems")}
    assert row["reward (last 5 mean)"] == ["0.45", "0.3"]   # smoothed, from metrics/train.json
    assert row["reward (last step)"] == ["0.6", "0.4"]
    assert row["eval problems"] == ["60", "40"]
    assert lines["eval avg_at_k"].split()[2:] == ["0.3", "0.2"]  # the TARPO model's, not the warm-up's
    assert lines["eval pass_at_8"].split()[2:] == ["0.9", "0.9"]
    assert lines["router.mode"].split()[1:] == ["-", "-"] and lines["status"].split()[1:] == ["FINISHED"] * 2


def test_ui_command_binds_localhost():
    argv = ui_command(TrackingConfig(uri="sqlite:///mlflow.db"))
    assert argv[0].endswith("mlflow")
    assert argv[1:] == ["ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1", "--port", "5000",
                        "--workers", "1"]
    assert ui_command(TrackingConfig(), host="0.0.0.0", port=8080)[-5:] == ["0.0.0.0", "--port", "8080", "--workers", "1"]
    with pytest.raises(ValueError, match="http://mlflow:5000 is already a server"):
        ui_command(TrackingConfig(uri="http://mlflow:5000"))
