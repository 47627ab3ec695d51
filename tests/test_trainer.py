"""Trainer: learning goes the right way, SIGKILL + resume equals an uninterrupted run, 2 processes agree."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tarpo.checkpoint import list_checkpoints

DRIVER = Path(__file__).with_name("train_driver.py")
ROOT = Path(__file__).resolve().parents[1]


def run_driver(out, *args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(DRIVER), "--out", str(out), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"driver failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def steps_logged(out, rank=0):
    path = Path(out) / f"steps-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def first_last(values, n=5):
    return sum(values[:n]) / n, sum(values[-n:]) / n


@pytest.mark.slow
def test_reward_on_first_token_rises(tmp_path):
    run_driver(tmp_path, "--steps", 20, "--reward", "first-even")
    rewards = [row["reward_mean"] for row in steps_logged(tmp_path)]
    start, end = first_last(rewards, 3)
    assert end > 0.85 and end - start > 0.2, rewards


@pytest.mark.slow
@pytest.mark.parametrize("reward,direction", [("pay-soft", 1), ("penalise-soft", -1)])
def test_soft_ratio_follows_a_routing_reward(tmp_path, reward, direction):
    run_driver(tmp_path, "--steps", 12, "--reward", reward, "--lr", 1e-3, "--router-lr", 3e-2)
    ratios = [row["soft_ratio"] for row in steps_logged(tmp_path)]
    start, end = first_last(ratios, 3)
    assert direction * (end - start) > 0.2, ratios


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    common = ("--steps", 6, "--checkpoint-every", 2, "--iterations", 2, "--max-consecutive", 2)
    run_driver(full, *common)
    proc = run_driver(killed, *common, "--kill-after", 4, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [c.name for c in list_checkpoints(killed / "checkpoints")] == ["step-000002", "step-000004"]
    first_part = [row["step"] for row in steps_logged(killed)]
    run_driver(killed, *common, "--resume")
    all_steps = [row["step"] for row in steps_logged(killed)]
    assert first_part == [1, 2, 3, 4]
    assert all_steps == [1, 2, 3, 4, 5, 6], "a step ran twice or was skipped"
    a = torch.load(full / "params-rank0.pt")
    b = torch.load(killed / "params-rank0.pt")
    assert (a - b).abs().max().item() <= 1e-6
    rewards_full = [row["reward_mean"] for row in steps_logged(full)]
    assert [row["reward_mean"] for row in steps_logged(killed)] == rewards_full


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path):
    run_driver(tmp_path, "--steps", 4, "--checkpoint-every", 2)
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    (newest / "router.safetensors").write_bytes(b"garbage")
    from tarpo.checkpoint import newest_valid_checkpoint

    warnings = []
    found = newest_valid_checkpoint(tmp_path / "checkpoints", warn=warnings.append)
    assert found.name == "step-000002"
    assert "router.safetensors is corrupt" in warnings[0]
    shutil.rmtree(found)
    (found.parent / ".step-000006.tmp-x").mkdir()  # a partial write is ignored
    assert newest_valid_checkpoint(tmp_path / "checkpoints", warn=warnings.append) is None


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_then_training_stops(tmp_path):
    proc = run_driver(tmp_path, "--steps", 6, "--reward", "nan", check=False)
    assert proc.returncode != 0
    assert "consecutive steps had a non-finite loss" in proc.stderr
    rows = steps_logged(tmp_path)
    assert len(rows) == 2 and all(row["skipped"] == 1.0 for row in rows)


@pytest.mark.slow
def test_two_process_cpu_run_keeps_ranks_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # On CPU, accelerate's `--cpu` launcher needs MPI for several processes; `--multi_gpu` goes through
    # torchrun and the processes then run on CPU with the gloo backend.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           str(DRIVER), "--out", str(tmp_path), "--steps", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(tmp_path / "params-rank0.pt"), torch.load(tmp_path / "params-rank1.pt")
    assert torch.equal(a, b)
    initial = tmp_path / "checkpoints"
    assert list_checkpoints(initial)[-1].name == "step-000003"
    rows = steps_logged(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert not (tmp_path / "steps-rank1.jsonl").exists()  # only the main process reports
