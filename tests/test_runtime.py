"""tarpo.runtime: every stage fixes the intra-op thread count and (on CPU) deterministic algorithms first."""

import torch
from typer.testing import CliRunner

import cli
from tarpo.config import RuntimeConfig
from tarpo.runtime import apply_runtime


def test_threads_and_determinism_are_set_and_reported():
    got = apply_runtime(RuntimeConfig(threads=3), cuda=False)
    assert got == {"threads": 3, "deterministic": True} and torch.get_num_threads() == 3
    assert torch.are_deterministic_algorithms_enabled()
    assert apply_runtime(RuntimeConfig(threads=2), cuda=True)["deterministic"] is False  # null: off on CUDA
    assert not torch.are_deterministic_algorithms_enabled()
    assert apply_runtime(RuntimeConfig(threads=2, deterministic=True), cuda=True)["deterministic"] is True
    before = torch.get_num_threads()
    assert apply_runtime(RuntimeConfig(threads=None), cuda=False)["threads"] == before  # null: left alone


def test_every_stage_command_applies_the_runtime_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("runtime: {threads: 3}\n")
    result = CliRunner().invoke(cli.app, ["prepare", "--set", "data.train_size=4", "--set", "data.eval_size=2"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 3  # (the conftest fixture puts 1 back afterwards)


def test_bad_runtime_values_are_one_line_errors(tmp_path):
    (tmp_path / "p.yaml").write_text("runtime: {threads: 0}\n")
    result = CliRunner().invoke(cli.app, ["config", "validate", str(tmp_path / "p.yaml")])
    assert result.exit_code == 2 and "runtime.threads" in result.output and "Traceback" not in result.output
