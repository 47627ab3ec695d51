"""tarpo/tracking.py against a real MLflow sqlite store in tmp_path (no network)."""

import math
import sys

import pytest

from tarpo.config import TrackingConfig
from tarpo.tracking import (TRUNCATION_MARKER, MlflowTracker, NullTracker, TrackingUnavailable,
                            check_tracking_uri, open_tracker)
from tests.mlflow_store import fresh_store


@pytest.fixture
def store(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default artifact root (./mlruns) stays in tmp
    return fresh_store(tmp_path, tmp_path_factory)


def _tracker(store, tmp_path, **kw):
    return MlflowTracker(store, "exp", artifact_location=str(tmp_path / "artifacts"), **kw)


def test_import_needs_no_mlflow():
    code = "import sys, tarpo.tracking, tarpo.serving; assert 'mlflow' not in sys.modules"
    import subprocess
    from pathlib import Path
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_long_and_many_params_do_not_crash(store, tmp_path):
    tracker = _tracker(store, tmp_path, run_name="params")
    params = {f"group{i % 7}.key{i}": i for i in range(300)}
    params["data.system_prompt"] = "x" * 10_000
    params["nested"] = {"deeper": {"value": [1, 2]}}
    tracker.log_params(params)
    tracker.log_params(params)  # same values again: no error
    tracker.close()
    run = tracker.client.get_run(tracker.run_id)
    assert len(run.data.params) == 302
    long_value = run.data.params["data.system_prompt"]
    assert len(long_value) == 6000 and long_value.endswith(TRUNCATION_MARKER)
    assert run.data.params["nested.deeper.value"] == "[1, 2]"


def test_metrics_per_step_and_non_finite_skipped(store, tmp_path):
    tracker = _tracker(store, tmp_path)
    for step in range(1, 4):
        tracker.log_metrics({"reward_mean": step / 10, "loss": math.nan if step == 2 else 1.0 / step}, step=step)
    tracker.log_metrics({f"m{i}": float(i) for i in range(1500)}, step=4)  # more than one batch
    tracker.close()
    history = tracker.client.get_metric_history(tracker.run_id, "reward_mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [m.step for m in tracker.client.get_metric_history(tracker.run_id, "loss")] == [1, 3]
    assert tracker.client.get_run(tracker.run_id).data.metrics["m1499"] == 1499.0


def test_artifacts_text_figure_and_tags(store, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracker = _tracker(store, tmp_path, tags={"stage": "train"}, stage="train")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    tracker.log_artifact(str(tmp_path / "params.yaml"))
    tracker.log_text("<b>soft</b>", "samples/step-000001.html")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    tracker.log_figure(fig, "plots/reward.png")
    plt.close(fig)
    tracker.close()
    listed = {a.path for a in tracker.client.list_artifacts(tracker.run_id)}
    assert {"params.yaml", "samples", "plots"} <= listed
    tags = tracker.client.get_run(tracker.run_id).data.tags
    assert tags["stage"] == "train" and tags["dvc.stage"] == "train"


def test_git_commit_tag_in_a_repo(store, tmp_path, monkeypatch):
    import subprocess
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    monkeypatch.chdir(repo)
    tracker = _tracker(store, tmp_path)
    tags = tracker.client.get_run(tracker.run_id).data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    assert tags["git.dirty"] == "false" and len(tags["dvc.lock.sha256"]) == 64


def test_resume_continues_the_same_run(store, tmp_path):
    first = _tracker(store, tmp_path, run_name="resumable")
    first.log_params({"train.steps": 10})
    first.log_metrics({"reward_mean": 0.1}, step=1)
    first.close("KILLED")
    second = _tracker(store, tmp_path, run_id=first.run_id)
    assert second.run_id == first.run_id
    assert second.client.get_run(first.run_id).info.status == "RUNNING"
    second.log_params({"train.steps": 20})  # a changed param becomes a tag, not an error
    second.log_metrics({"reward_mean": 0.2}, step=2)
    second.close()
    run = second.client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.steps"] == "10"
    assert run.data.tags["param.changed.train.steps"] == "20"
    assert [m.step for m in second.client.get_metric_history(first.run_id, "reward_mean")] == [1, 2]
    assert len(second.client.search_runs([run.info.experiment_id])) == 1


def test_resume_unknown_run_is_one_line(store, tmp_path):
    with pytest.raises(TrackingUnavailable, match="cannot resume MLflow run 0123") as info:
        _tracker(store, tmp_path, run_id="0123456789abcdef0123456789abcdef")
    assert "\n" not in str(info.value)


def test_unreachable_server_fails_naming_uri():
    """One line naming the URI (how fast it fails is measured by bench/latency.py, not asserted here)."""
    with pytest.raises(TrackingUnavailable, match="http://127.0.0.1:9") as info:
        check_tracking_uri("http://127.0.0.1:9")
    assert "\n" not in str(info.value)
    with pytest.raises(TrackingUnavailable, match="http://127.0.0.1:9"):
        open_tracker(TrackingConfig(uri="http://127.0.0.1:9"))


def test_unwritable_sqlite_directory(tmp_path):
    with pytest.raises(TrackingUnavailable, match="sqlite:////nonexistent-dir/x.db"):
        check_tracking_uri("sqlite:////nonexistent-dir/x.db")
    check_tracking_uri(f"sqlite:///{tmp_path}/ok.db")
    check_tracking_uri("sqlite:///mlflow.db")


def test_open_tracker_disabled_is_null():
    tracker = open_tracker(TrackingConfig(enabled=False))
    assert isinstance(tracker, NullTracker) and tracker.run_id is None
    tracker.log_params({"a": 1})
    tracker.close("FAILED")


def test_open_tracker_enabled(store):
    tracker = open_tracker(TrackingConfig(uri=store, experiment="via-config", run_name="named"), tags={"k": "v"})
    tracker.close()
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.run_name == "named" and run.data.tags["k"] == "v"


def test_later_stages_are_appended_not_overwriting_the_creating_stage(store, tmp_path):
    train = _tracker(store, tmp_path, stage="train", run_name="tiny-tarpo-s42")
    train.close()
    for stage in ("evaluate", "register", "evaluate"):
        _tracker(store, tmp_path, run_id=train.run_id, stage=stage).close()
    run = train.client.get_run(train.run_id)
    assert run.info.run_name == "tiny-tarpo-s42"
    assert run.data.tags["dvc.stage"] == "train"
    assert run.data.tags["tarpo.stages"] == "train,evaluate,register"


def test_resume_logs_each_step_once(store, tmp_path):
    """A killed run resumed from an older checkpoint replays steps it already logged: one point per step."""
    first = _tracker(store, tmp_path)
    for step in (1, 2, 3):  # step 3 was logged, then the process was killed; the checkpoint is at step 2
        first.log_metrics({"reward_mean": step / 10}, step=step)
    second = _tracker(store, tmp_path, run_id=first.run_id)
    for step in (3, 4):
        second.log_metrics({"reward_mean": step / 10, "kl": 0.5}, step=step)
    second.log_metrics({"eval/avg": 1.0})  # no step (evaluate): always logged
    history = second.client.get_metric_history(first.run_id, "reward_mean")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.step for m in second.client.get_metric_history(first.run_id, "kl")] == [3, 4]  # new key: all


def test_stale_run_is_marked_killed_once(store, tmp_path):
    from tarpo.tracking import end_stale_run

    cfg = TrackingConfig(uri=store)
    killed = _tracker(store, tmp_path)  # never closed: its process died
    assert end_stale_run(cfg, killed.run_id)
    assert killed.client.get_run(killed.run_id).info.status == "KILLED"
    assert not end_stale_run(cfg, killed.run_id)  # not RUNNING any more: left alone
    assert not end_stale_run(cfg, "0123456789abcdef0123456789abcdef")  # unknown run: nothing to end
    assert not end_stale_run(TrackingConfig(enabled=False), killed.run_id)


def test_corrupt_store_and_missing_run_are_one_line(store, tmp_path):
    from tarpo.tracking import check_run

    run_id = _tracker(store, tmp_path).run_id
    check_run(TrackingConfig(uri=store), run_id)
    with pytest.raises(TrackingUnavailable, match="MLflow run 0123 is not in the store"):
        check_run(TrackingConfig(uri=store), "0123")
    with pytest.raises(TrackingUnavailable, match=r"absent.db does not exist"):
        check_run(TrackingConfig(uri=f"sqlite:///{tmp_path}/absent.db"), run_id)
    assert not (tmp_path / "absent.db").exists()
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(TrackingUnavailable, match="junk.db is not an SQLite database"):
        check_tracking_uri(f"sqlite:///{tmp_path}/junk.db")


_RACE = """
import sys, time
from tarpo.tracking import MlflowTracker
start, uri, root = float(sys.argv[1]), sys.argv[2], sys.argv[3]
time.sleep(max(0.0, start - time.time()))  # every process opens the new store at the same moment
MlflowTracker(uri, "race", artifact_location=root + "/artifacts").close()
"""


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """Two `study` commands (or workers) starting together used to lose a run to alembic's migration race."""
    import subprocess
    import time
    from pathlib import Path

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    start = str(time.time() + 12)  # past the ~5 s it takes each process to import MLflow on 2 busy cores
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, start, uri, str(tmp_path)], cwd=Path(__file__).parents[1],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert len(runs) == 4
