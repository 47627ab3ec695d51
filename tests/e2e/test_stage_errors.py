"""Stage commands as a user meets them: bad params, missing inputs, missing weights, a killed train run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import paths
from tests.e2e.conftest import env, run

CLI = [sys.executable, "cli.py"]


def test_bad_params_exit_2_before_any_work(repo_copy: Path):
    result = run([*CLI, "train", "--set", "train.steps=0", "--set", "router.loss_wieght=1"], repo_copy, check=False)
    assert result.returncode == 2
    assert set(result.stderr.splitlines()) == {"router.loss_wieght: unknown key; did you mean 'loss_weight'?",
                                               "train.steps: must be >= 1, got 0"}
    assert "Traceback" not in result.stderr
    assert not (repo_copy / paths.CHECKPOINT_DIR).exists() and not (repo_copy / "mlflow.db").exists()


def test_missing_data_file_is_named(repo_copy: Path):
    result = run([*CLI, "warmup"], repo_copy, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data/prepared/train.jsonl: input file not found; run `python cli.py prepare` first" in result.stderr


def test_unavailable_preset_stops_before_any_work(repo_copy: Path):
    result = run([*CLI, "train", "--model", "qwen2.5-7b"], repo_copy, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "qwen2.5-7b" in result.stderr and "models pull" in result.stderr
    assert not (repo_copy / paths.CHECKPOINT_DIR).exists()  # its latency: bench/latency.py


@pytest.mark.slow
def test_killed_train_leaves_no_model_and_resumes(repo_copy: Path):
    sets = ["--set", "train.steps=6", "--set", "tracking.enabled=false", "--set", "register.enabled=false"]
    run([*CLI, "prepare", *sets], repo_copy)
    run([*CLI, "warmup", *sets], repo_copy)
    committed_metrics = (repo_copy / paths.TRAIN_METRICS).read_bytes()   # the committed DVC baseline
    proc = subprocess.Popen([*CLI, "train", *sets], cwd=repo_copy, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    second = repo_copy / paths.CHECKPOINT_DIR / "step-000002" / "COMPLETE"
    deadline = time.monotonic() + 300
    while not second.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert second.is_file(), "train never wrote its second checkpoint"
    assert not (repo_copy / paths.TRAINED_DIR).exists()
    assert (repo_copy / paths.TRAIN_METRICS).read_bytes() == committed_metrics   # a killed run rewrites nothing

    result = run([*CLI, "train", *sets], repo_copy)
    assert "resumed from" in result.stdout + result.stderr
    assert (repo_copy / paths.TRAINED_DIR / "router.safetensors").is_file()
    rows = (repo_copy / paths.TRAIN_PLOT).read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert '"resumed": 1' in (repo_copy / paths.TRAIN_METRICS).read_text()
