"""Issue 25's data-loss defects, each reproduced as a careless user met it: models pull over other files, a
repeated study mode, temperatures and learning rates no float32 step survives, a broken models/tarpo registered,
checkpoints deleted before a tracking store failed, a read-only checkpoints/."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
from tarpo.config import ConfigError, load_config
from tarpo.errors import InputError

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- models pull
@pytest.mark.parametrize("out, expect", [
    ("data", "--out data: already exists and is a directory `models pull` did not make"),
    ("README.md", "--out README.md: already exists and is a file"),
    (".", "--out .: already exists and is a directory `models pull` did not make"),
    ("README.md/x", "--out README.md/x: README.md is a file, not a directory"),
    ("other", "--out other: already exists and is an earlier pull of 'smollm2-135m'"),
])
def test_pull_never_replaces_what_it_did_not_make(out, expect, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "train.jsonl").write_text("{}\n")
    (tmp_path / "README.md").write_text("# mine\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".tarpo-pull.json").write_text('{"preset": "smollm2-135m"}\n')
    before = _tree(tmp_path)
    result = CliRunner().invoke(cli.app, ["models", "pull", "tiny", "--out", out])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [result.stderr.strip()] and expect in result.stderr
    assert "Traceback" not in result.output
    assert _tree(tmp_path) == before


def test_pull_replaces_its_own_earlier_pull_of_the_same_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result = CliRunner().invoke(cli.app, ["models", "pull", "tiny", "--out", "m"])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / ".tarpo-pull.json").is_file()


# ------------------------------------------------------------------------------------------------ study
def test_study_refuses_a_repeated_mode_and_caps_jobs():
    from pipeline.study import Study, capped_jobs
    from tarpo.config import TarpoConfig

    with pytest.raises(InputError, match="--modes: tarpo listed more than once"):
        Study(TarpoConfig(), "x", seeds=[1, 2], modes=["tarpo", "hard", "tarpo"])
    assert capped_jobs(100, 6, 16) == 6 and capped_jobs(8, 12, 2) == 2 and capped_jobs(1, 1, 1) == 1


@pytest.mark.parametrize("argv", [["--modes", "tarpo,tarpo"], ["--jobs", "0"], ["--jobs", "-3"], ["--seeds", "0"]])
def test_study_bad_options_exit_2_before_any_work(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["study", "--params", str(PARAMS), *argv])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (tmp_path / "studies").exists()


# ------------------------------------------------------------------------------- float32-safe ranges
@pytest.mark.parametrize("key, value, expect", [
    ("rollout.temperature", "1e-300", "rollout.temperature: temperature=1e-300 is below 0.01"),
    ("eval.temperature", "0.005", "eval.temperature: temperature=0.005 is below 0.01"),
    ("router.temperature", "1e-300", "router.temperature: temperature=1e-300 is below 0.01"),
    ("train.lr", "1e-300", "train.lr: must be >= 1e-10"),
    ("router.lr", "2.0", "router.lr: must be <= 1"),
    ("warmup.lr", "10", "warmup.lr: must be <= 1"),
])
def test_temperatures_and_lrs_outside_float32_safe_ranges_do_not_validate(key, value, expect):
    with pytest.raises(ConfigError) as err:
        load_config(PARAMS, [f"{key}={value}"])
    assert len(err.value.problems) == 1 and expect in err.value.problems[0]


@pytest.mark.parametrize("key, value", [("rollout.temperature", "0.01"), ("train.lr", "1.0"), ("router.lr", "1e-10")])
def test_the_bounds_themselves_validate(key, value):
    load_config(PARAMS, [f"{key}={value}"])


# --------------------------------------------------------------------------------- checkpoints first
def test_read_only_checkpoints_fail_before_anything_is_deleted(tmp_path, monkeypatch):
    from pipeline.train import prepare_checkpoints

    root = tmp_path / "checkpoints"
    (root / "step-000001").mkdir(parents=True)
    (root / "params.sha256").write_text("old\n")
    before = _tree(tmp_path)
    real_access = __import__("os").access
    monkeypatch.setattr("pipeline.train.os.access",  # root ignores permission bits: say what a user would see
                        lambda p, mode: False if Path(p).name == "step-000001" else real_access(p, mode))
    with pytest.raises(PermissionError) as err:
        prepare_checkpoints(root, "new", resume=True, log=lambda _: None)
    assert err.value.errno == errno.EACCES and err.value.filename.endswith("step-000001")
    assert _tree(tmp_path) == before
    monkeypatch.undo()
    prepare_checkpoints(root, "new", resume=True, log=lambda _: None)   # writable again: params changed, fresh
    assert sorted(p.name for p in root.iterdir()) == ["params.sha256"]
