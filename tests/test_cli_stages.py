"""cli.py stage commands: --help everywhere, exit 2 on bad params before any work, ui binds to localhost."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import cli

runner = CliRunner()
STAGES = ["prepare", "warmup", "train", "evaluate", "register", "run", "compare", "ui"]


@pytest.mark.parametrize("command", STAGES)
def test_help(command):
    result = runner.invoke(cli.app, [command, "--help"])
    assert result.exit_code == 0 and "--params" in result.output


@pytest.mark.parametrize("command", ["prepare", "warmup", "train", "evaluate", "register", "run"])
def test_bad_params_exit_2_and_write_nothing(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train: {steps: 0}\n")
    result = runner.invoke(cli.app, [command])
    assert result.exit_code == 2
    assert "train.steps: must be >= 1, got 0" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_ui_binds_to_localhost_by_default(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.setattr("subprocess.call", lambda argv: seen.setdefault("argv", argv) and 0)
    result = runner.invoke(cli.app, ["ui", "--port", "5055"])
    assert result.exit_code == 0, result.output
    argv = seen["argv"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5055"
