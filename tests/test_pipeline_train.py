"""pipeline.train: the params hash that guards resume, checkpoint housekeeping and the accelerate command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline import paths
from pipeline import train as stage
from tarpo.config import load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def inputs(tmp_path: Path):
    (tmp_path / "train.jsonl").write_text('{"id": "1", "prompt": "p", "answer": "1", "source": "s"}\n')
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / paths.WARMUP_MARKER).write_text('{"ran": false}')
    return tmp_path


def _hash(inputs: Path, *sets: str) -> str:
    cfg = load_config(ROOT / "params.yaml", list(sets))
    return stage.params_hash(cfg, inputs / "train.jsonl", inputs / "warmup")


def test_hash_changes_with_training_params_and_data_only(inputs: Path):
    base = _hash(inputs)
    assert _hash(inputs, "train.checkpoint_every=7", "train.log_samples_every=3") == base
    assert _hash(inputs, "router.loss_weight=0.2") != base
    assert _hash(inputs, "train.steps=3") != base
    (inputs / "train.jsonl").write_text('{"id": "1", "prompt": "q", "answer": "1", "source": "s"}\n')
    assert _hash(inputs) != base


def test_checkpoints_kept_for_same_hash_and_cleared_otherwise(tmp_path: Path):
    root, said = tmp_path / "checkpoints", []
    stage.prepare_checkpoints(root, "aaa", resume=True, log=said.append)
    (root / "step-000001").mkdir()
    stage.prepare_checkpoints(root, "aaa", resume=True, log=said.append)
    assert (root / "step-000001").is_dir() and not said
    stage.prepare_checkpoints(root, "bbb", resume=True, log=said.append)
    assert not (root / "step-000001").exists() and "params changed" in said[0]
    (root / "step-000001").mkdir()
    stage.prepare_checkpoints(root, "bbb", resume=False, log=said.append)
    assert not (root / "step-000001").exists() and "--no-resume" in said[1]
    assert (root / stage.HASH_FILE).read_text().strip() == "bbb"


def test_launch_command_and_when_to_launch(monkeypatch):
    cfg = load_config(ROOT / "params.yaml", ["train.num_processes=2"])
    monkeypatch.delenv(stage.LAUNCHED_ENV, raising=False)
    assert stage.needs_launch(cfg) and not stage.needs_launch(load_config(ROOT / "params.yaml"))
    cmd = stage.launch_command(cfg, ["train", "--resume"], cuda=False)
    assert cmd[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
    assert "--multi_gpu" in cmd and "--cpu" not in cmd  # --cpu would start one process without MPI
    assert cmd[-2:] == ["train", "--resume"] and cmd[-3].endswith("cli.py")
    with_config = load_config(ROOT / "params.yaml", ["train.accelerate_config=configs/accelerate/multi_gpu.yaml"])
    monkeypatch.chdir(ROOT)
    assert "--config_file" in stage.launch_command(with_config, [], cuda=True)
    monkeypatch.setenv(stage.LAUNCHED_ENV, "1")
    assert not stage.needs_launch(cfg)
    monkeypatch.delenv(stage.LAUNCHED_ENV)
    monkeypatch.setenv("WORLD_SIZE", "2")  # the user ran `accelerate launch ... cli.py train` (e.g. multi-node)
    assert not stage.needs_launch(cfg) and stage.launched_externally()


def test_plot_rows_and_summary():
    rows = [{"step": i, "reward_mean": i / 10, "accuracy": i / 10, "soft_ratio": 0.01, "lr": 1e-3} for i in (1, 2)]
    text = stage._plot_csv(rows)
    assert text.splitlines()[0] == ",".join(stage.PLOT_COLUMNS)
    assert text.splitlines()[2].startswith("2,0.2,")
    summary = stage.summary_metrics(rows)
    assert summary["steps"] == 2 and summary["reward_mean_last5"] == pytest.approx(0.15)
