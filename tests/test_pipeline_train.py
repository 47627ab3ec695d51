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


def test_missing_hash_file_never_deletes_checkpoints(tmp_path: Path):
    from tarpo.errors import InputError

    root = tmp_path / "checkpoints"
    (root / "step-000001").mkdir(parents=True)
    with pytest.raises(InputError, match="params.sha256: missing.*--no-resume"):
        stage.prepare_checkpoints(root, "aaa", resume=True)
    assert (root / "step-000001").is_dir()
    stage.prepare_checkpoints(root, "aaa", resume=False, log=lambda m: None)  # asked for explicitly
    assert not (root / "step-000001").exists()


def test_step_log_drops_a_torn_last_line_and_cuts_at_the_resumed_step(tmp_path: Path):
    log, said = tmp_path / "steps.jsonl", []
    log.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    assert stage._read_step_log(log, 1, said.append) == [{"step": 1, "loss": 1.0}]
    assert stage._read_step_log(log, 5, said.append)[-1]["step"] == 2 and "torn last line" in said[0]


def test_checkpoint_run_id_reads_the_newest_readable_state(tmp_path: Path):
    root = tmp_path / "checkpoints"
    assert stage._checkpoint_run_id(root) is None
    for step, text in ((1, '{"run_id": "old"}'), (2, '{"run_id": "new"}'), (3, "{torn")):
        (root / f"step-00000{step}").mkdir(parents=True)
        (root / f"step-00000{step}" / "trainer_state.json").write_text(text)
    assert stage._checkpoint_run_id(root) == "new"
