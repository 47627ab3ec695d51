"""Ctrl-C and SIGTERM during prepare, evaluate, train and register, one table row each: a real `cli.py` process is
stopped at a point (a checkpoint written, the outputs staged, half the renames done, a version created), then the
exit code, the one stderr line, the output set (all old or all new, never torn) and the MLflow run are checked;
the train rows then resume.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import paths
from pipeline.publish import FAULT_ENV, FAULT_READY_ENV
from tests.e2e.conftest import ROOT, env
from tests.e2e.workspace_kit import copy_workspace, forget_mlflow_stores, snapshot
from tests.e2e.workspace_kit import built  # noqa: F401 - the session fixture, used by name

OUTPUT_SETS = {
    "prepare": (paths.PREPARED_DIR, paths.PREPARE_METRICS),
    "evaluate": (paths.EVAL_DIR, paths.EVAL_METRICS, paths.EVAL_PLOT, paths.EVAL_FIGURE),
    "train": (paths.TRAINED_DIR, paths.RUN_INFO, paths.TRAIN_METRICS, paths.TRAIN_PLOT, paths.TRAIN_FIGURE,
              paths.HELDOUT_PLOT),
    "register": (paths.REGISTER_INFO,),
}


MLFLOW_REGISTRY_LINES = ("Successfully registered model", "Created version")  # MLflow's own, on every register


@dataclass
class Row:
    id: str
    argv: list[str]
    stop_at: str                 # "<stage>:<point>" (pipeline.publish fault point) or "checkpoint-1"
    sig: int
    expect: str                  # "old" or "new": the output set afterwards
    exit_code: int


ROWS = [
    Row("prepare-sigterm-staged", ["prepare", "--set", "data.train_size=40"], "prepare:staged", signal.SIGTERM,
        "old", 143),
    Row("prepare-sigint-mid-publish", ["prepare", "--set", "data.train_size=40"], "prepare:renamed-1",
        signal.SIGINT, "new", 130),
    Row("evaluate-sigterm-staged", ["evaluate", "--set", "eval.seed=7"], "evaluate:staged", signal.SIGTERM, "old", 143),
    Row("register-sigterm-version", ["register"], "register:version", signal.SIGTERM, "new", 143),
]


def _start(ws: Path, argv: list[str], stop_at: str | None) -> subprocess.Popen:
    extra = {FAULT_READY_ENV: str(ws / "ready")}
    if stop_at and ":" in stop_at:
        extra[FAULT_ENV] = f"{stop_at}:pause"
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *argv], cwd=ws, env={**env(), **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not path.exists():
        proc.kill()
        raise AssertionError(f"never reached the stop point:\n{proc.communicate()[1][-3000:]}")


def _stop(ws: Path, argv: list[str], stop_at: str, sig: int) -> tuple[int, list[str], str]:
    proc = _start(ws, argv, stop_at)
    marker = ws / paths.CHECKPOINT_DIR / "step-000001" / "COMPLETE" if stop_at == "checkpoint-1" else ws / "ready"
    _wait_for(marker, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    (ws / "ready").unlink(missing_ok=True)
    return proc.returncode, _messages(err), out


def _messages(stderr: str) -> list[str]:
    """stderr without progress bars (tqdm redraws with \r) and MLflow's own registry lines."""
    lines = [line[line.index("interrupted ("):] if "interrupted (" in line else line for line in stderr.splitlines()]
    return [line for line in lines if line.strip() and "%|" not in line and not line.startswith(MLFLOW_REGISTRY_LINES)]


def _set(ws: Path, stage: str) -> dict[str, str]:
    return {k: v for k, v in snapshot(ws).items() if k.startswith(OUTPUT_SETS[stage])}


def _run_status(ws: Path) -> str:
    from mlflow.tracking import MlflowClient

    forget_mlflow_stores()
    run_id = json.loads((ws / paths.RUN_INFO).read_text())["run_id"]
    status = MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}").get_run(run_id).info.status
    forget_mlflow_stores()
    return status


def _consistent(ws: Path, stage: str) -> None:
    """The set belongs together (what a mix of two runs breaks)."""
    if stage == "prepare":
        stats = json.loads((ws / paths.PREPARE_METRICS).read_text())
        assert len((ws / paths.TRAIN_DATA).read_text().splitlines()) == stats["train_count"]
        assert len((ws / paths.EVAL_DATA).read_text().splitlines()) == stats["eval_count"]
    if stage == "train":
        info = json.loads((ws / paths.RUN_INFO).read_text())
        assert json.loads((ws / paths.TRAINED_DIR / paths.TRAINED_BASE).read_text())["run_id"] == info["run_id"]
        assert json.loads((ws / paths.TRAIN_METRICS).read_text())["steps"] == info["steps"]
    if stage == "register":
        assert json.loads((ws / paths.REGISTER_INFO).read_text())["registered"] is True
    leftovers = [p for p in snapshot(ws) if ".new-" in p or ".old-" in p or p.startswith(paths.PUBLISH_DIR)]
    assert not leftovers, leftovers


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_signal_leaves_the_output_set_old_or_new(row: Row, built: Path, tmp_path: Path):
    ws = copy_workspace(built, tmp_path / "ws")
    stage = row.argv[0]
    before = _set(ws, stage)
    code, lines, _ = _stop(ws, row.argv, row.stop_at, row.sig)
    assert code == row.exit_code, lines
    assert len(lines) == 1 and "Traceback" not in "\n".join(lines), lines
    assert lines[0].startswith(f"interrupted ({signal.Signals(row.sig).name}): `{stage}` stopped"), lines
    after = _set(ws, stage)
    if row.expect == "old":
        assert after == before
    else:
        assert after and after != before
    _consistent(ws, stage)
    if stage in ("evaluate", "register"):
        assert _run_status(ws) != "RUNNING"


@pytest.mark.slow
def test_sigterm_during_train_then_at_its_publication_then_resume(built: Path, tmp_path: Path):
    """Killed after its first checkpoint, then again with its outputs staged: both times the old model and run
    info stay and the MLflow run is KILLED, not RUNNING; the third run resumes and publishes a consistent set."""
    ws = copy_workspace(built, tmp_path / "ws")
    shutil.rmtree(ws / paths.CHECKPOINT_DIR)   # the stop point is this run's first checkpoint
    argv = ["train", "--steps", "3"]
    before = _set(ws, "train")
    code, lines, _ = _stop(ws, argv, "checkpoint-1", signal.SIGTERM)
    assert code == 143 and lines == [lines[0]] and "resumes from checkpoints/" in lines[0], lines
    assert _set(ws, "train") == before
    code, lines, out = _stop(ws, argv, "train:staged", signal.SIGTERM)
    assert code == 143 and len(lines) == 1, lines
    assert "resumed from" in out, out[-2000:]
    assert _set(ws, "train") == before
    from mlflow.tracking import MlflowClient

    forget_mlflow_stores()
    runs = MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}").search_runs(["0", "1"])
    forget_mlflow_stores()
    assert "RUNNING" not in {r.info.status for r in runs}
    assert "KILLED" in {r.info.status for r in runs}
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv], cwd=ws, env=env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr
    _consistent(ws, "train")
    assert json.loads((ws / paths.RUN_INFO).read_text())["steps"] == 3
    assert _run_status(ws) == "FINISHED"
