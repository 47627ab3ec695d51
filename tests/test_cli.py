"""cli.py: exit codes, one-line user errors, config show output, models commands, --help everywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

import cli
from tarpo import config as C

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

# (params file text, --set overrides, exact stderr lines). Each one must exit with code 2.
BAD_CASES = {
    "init_bias_3": ("router:\n  init_bias: [4.6, 0, 1]\n", [], ["router.init_bias: expected 2 numbers, got 3"]),
    "init_bias_1_set": ("", ["router.init_bias=[4.6]"], ["router.init_bias: expected 2 numbers, got 1"]),
    "group_size_1": ("rollout: {group_size: 1}\n", [], [
        "rollout.group_size: group_size=1 must be >= 2: advantages compare completions of the same prompt; "
        "set 2 or more (4-8 typical)"]),
    "typo_key": ("router: {loss_wieght: 0.2}\n", [], ["router.loss_wieght: unknown key; did you mean 'loss_weight'?"]),
    "typo_section": ("trian: {steps: 3}\n", [], ["trian: unknown key; did you mean 'train'?"]),
    "typo_nested": ("model:\n  lora: {rnak: 4}\n", [], ["model.lora.rnak: unknown key; did you mean 'rank'?"]),
    "typo_set": ("", ["train.stepz=3"], ["train.stepz: unknown key; did you mean 'steps'?"]),
    "soft_top_k_0": ("rollout: {soft_top_k: 0}\n", [], [
        "rollout.soft_top_k: soft_top_k=0 must be >= 1 (1 = soft step feeds the most likely token); default 10"]),
    "soft_top_k_vocab": ("rollout: {soft_top_k: 600}\n", [], [
        "rollout.soft_top_k: 600 exceeds the vocabulary of tiny (512 tokens); set soft_top_k <= 512"]),
    "soft_top_k_over_top_k": ("rollout: {top_k: 5}\n", [], [
        "rollout.soft_top_k: soft_top_k=10 exceeds top_k=5: only top_k tokens have probability; "
        "set soft_top_k <= top_k or top_k=0"]),
    "latent_over_length": ("rollout: {max_new_tokens: 32, max_latent_steps: 64, max_consecutive_latent_steps: 33}\n",
                           [], ["rollout.max_latent_steps: max_latent_steps=64 exceeds max_new_tokens=32; "
                                "set it <= 32 or null for no limit",
                                "rollout.max_consecutive_latent_steps: max_consecutive_latent_steps=33 exceeds "
                                "max_new_tokens=32; set it <= 32 or null for no limit"]),
    "clip_eps_0": ("train: {clip_epsilon_low: 0, clip_epsilon_high: -0.1}\n", [], [
        "train.clip_epsilon_low: must be > 0, got 0", "train.clip_epsilon_high: must be > 0, got -0.1"]),
    "micro_batch": ("train: {micro_batch_size: 5}\n", [], [
        "train.micro_batch_size: 5 does not divide the 64 completions per process (prompts_per_step x group_size"
        " / num_processes); pick a divisor of 64"]),
    "processes": ("rollout: {prompts_per_step: 6}\ntrain: {num_processes: 4}\n", [], [
        "rollout.prompts_per_step: 6 prompts cannot be split over train.num_processes=4; use a multiple of 4"]),
    "accumulation": ("train: {gradient_accumulation_steps: 3}\n", [], [
        "train.gradient_accumulation_steps: 3 != 4 micro-batches per rollout batch; set 4 or null"]),
    "pass_k": ("eval: {num_samples: 4, pass_k: [1, 8]}\n", [], [
        "eval.pass_k: values [8] not in [1, num_samples=4]; lower them or raise eval.num_samples"]),
    "temperatures": ("rollout: {temperature: 0}\neval: {temperature: -1.0}\n", [], [
        "rollout.temperature: temperature=0 must be > 0; use a small value such as 0.1 for near-greedy sampling",
        "eval.temperature: temperature=-1 must be > 0; greedy decoding is eval.greedy=true"]),
    "top_p": ("", ["rollout.top_p=1.5"], ["rollout.top_p: top_p=1.5 must be in (0, 1]; use 1.0 to turn it off"]),
    "mode": ("router: {mode: soft}\n", [], [
        "router.mode: expected one of 'tarpo', 'hard' or 'soft-fixed', got 'soft'"]),
    "string_int": ("train: {steps: '10'}\n", [], ["train.steps: expected an integer, got '10'"]),
    "preset": ("model: {preset: tyny}\n", [], ["model.preset: unknown preset 'tyny'; did you mean 'tiny'?"]),
    "jsonl_no_path": ("data: {source: jsonl}\n", [], [
        "data.train_path: source=jsonl reads local files; set data.train_path (or use source=hub with data.hub_name)"]),
    "register_needs_tracking": ("tracking: {enabled: false}\n", [], [
        "register.enabled: the registry lives in the MLflow store; set tracking.enabled=true or "
        "register.enabled=false"]),
    "section_scalar": ("router: 3\n", [], ["router: expected a mapping of keys, got 3"]),
    "probability": ("router: {soft_probability: 1.5}\n", [], ["router.soft_probability: must be <= 1, got 1.5"]),
    "alias": ("register: {aliases: [candidate, champion]}\n", [], [
        "register.champion_alias: 'champion' is also in aliases; the champion alias is moved by comparison, "
        "remove it from aliases"]),
    "missing_equals": ("", ["router.lr"], ["--set router.lr: expected KEY=VALUE, e.g. router.loss_weight=0.2"]),
    # issue 10: checks on the resolved (recipe-filled) values
    "context": ("rollout: {max_prompt_tokens: 1000, max_new_tokens: 100}\n", [], [
        "rollout.max_new_tokens: rollout.max_prompt_tokens 1000 + 100 new tokens = 1100 exceeds the context length "
        "of tiny (1024 tokens); lower them to a sum <= 1024"]),
    "eval_context": ("eval: {max_new_tokens: 990}\n", [], [
        "eval.max_new_tokens: rollout.max_prompt_tokens 64 + 990 new tokens = 1054 exceeds the context length "
        "of tiny (1024 tokens); lower them to a sum <= 1024"]),
    "marker_not_in_prompt": ("data: {system_prompt: Answer briefly.}\n", [], [
        "data.system_prompt: does not mention rollout.answer_marker '####', which reward.answer_rule=marker needs; "
        "name it in the prompt or set reward.answer_rule=marker-or-boxed"]),
    "eval_path_ignored": ("data: {eval_path: mine.jsonl}\n", [], [
        "data.eval_path: mine.jsonl would be ignored: source=synthetic makes its own eval split; remove "
        "data.eval_path, or set data.train_path for local files"]),
    "tiny_with_path": ("model: {path: /somewhere}\n", [], [
        "model.path: /somewhere is set together with model.preset=tiny; a local model is described by its own "
        "config: set model.preset=null (or use --model DIR)"]),
}


@pytest.fixture
def tiny_presets(monkeypatch):
    """Preset metadata for the vocabulary/preset rules, so these tests do not depend on tarpo/models.py."""
    monkeypatch.setattr("tarpo.config_load._load_presets", lambda: {
        "tiny": SimpleNamespace(name="tiny", hub_id=None, init_bias=(4.6, 0.0), vocab_size=512, context_length=1024)})


def invoke(*args: str):
    return runner.invoke(cli.app, list(args))


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_params_one_line_per_problem_exit_2(name, tmp_path, tiny_presets):
    text, sets, expected = BAD_CASES[name]
    path = tmp_path / "bad.yaml"
    path.write_text(text or "train: {steps: 3}\n")
    result = invoke("config", "validate", str(path), *[a for s in sets for a in ("--set", s)])
    assert (result.exit_code, result.stderr.splitlines(), result.stdout) == (2, expected, "")
    assert "Traceback" not in result.output


def test_distinct_bad_cases_are_many():
    assert len({tuple(case[2]) for case in BAD_CASES.values()}) >= 15


def test_yaml_syntax_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("router:\n  mode: tarpo\n   lr: 3\n")
    result = invoke("config", "validate", str(bad))
    assert result.exit_code == 2
    assert result.stderr == f"{bad}:3: YAML syntax error: mapping values are not allowed here\n"
    result = invoke("config", "validate", str(tmp_path / "none.yaml"))
    assert (result.exit_code, result.stderr) == (
        2, f"{tmp_path / 'none.yaml'}: file not found (pass the params file, e.g. params.yaml)\n")


def test_subprocess_validate_bad_and_good(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("router:\n  init_bias: [4.6, 0.0, 1.0]\n")
    proc = subprocess.run([sys.executable, "cli.py", "config", "validate", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, "router.init_bias: expected 2 numbers, got 3\n", "")
    proc = subprocess.run([sys.executable, "cli.py", "config", "validate"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (0, "ok: params.yaml\n"), proc.stderr


def test_validate_good_file(tmp_path):
    result = invoke("config", "validate", str(ROOT / "params.yaml"))
    assert (result.exit_code, result.stdout) == (0, f"ok: {ROOT / 'params.yaml'}\n")


def test_show_resolves_presets_and_overrides(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = invoke("config", "show", "--set", "router.loss_weight=0.25", "--set", "train.lr=1e-5")
    assert result.exit_code == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["router"]["loss_weight"] == 0.25 and shown["train"]["lr"] == 1e-5
    assert shown["router"]["init_bias"] == [4.6, 0.0]  # preset default filled in
    assert shown["eval"]["max_new_tokens"] == shown["rollout"]["max_new_tokens"]
    assert C.TarpoConfig.model_validate(shown).router.loss_weight == 0.25  # output is itself valid params


def test_show_model_shorthand(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    shown = yaml.safe_load(invoke("config", "show", "--model", "qwen2.5-3b").stdout)
    assert shown["model"]["preset"] == "qwen2.5-3b" and shown["router"]["init_bias"] == [2.2, 0.0]
    (tmp_path / "config.json").write_text('{"model_type": "llama", "vocab_size": 100, "max_position_embeddings": 256}')
    result = invoke("config", "show", "--model", str(tmp_path))
    shown = yaml.safe_load(result.stdout)
    assert shown["model"]["path"] == str(tmp_path) and shown["model"]["preset"] is None
    assert shown["warmup"]["enabled"] is False and shown["rollout"]["max_new_tokens"] == 128  # half its context
    assert f'path: {tmp_path}   # --set' in result.stdout


def test_show_collects_shorthand_and_set_errors(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = invoke("config", "show", "--model", "tinny", "--set", "train.stepz=1")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "--model: 'tinny' is neither a preset nor an existing directory; did you mean 'tiny'?",
        "train.stepz: unknown key; did you mean 'steps'?"]


@pytest.mark.parametrize("command", [[], ["config"], ["config", "validate"], ["config", "show"],
                                     ["models"], ["models", "list"], ["models", "pull"]])
def test_help_on_every_command(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.stdout


def test_every_command_has_help_text():
    groups = [cli.app, cli.config_app, cli.models_app]
    commands = [c for g in groups for c in g.registered_commands]
    assert {c.callback.__name__ for c in commands} >= {"config_validate", "config_show", "models_list", "models_pull"}
    assert all(c.callback.__doc__ for c in commands)


# ------------------------------------------------------------------------------------ models
class FakeModels:
    class ModelNotAvailable(RuntimeError):
        pass

    pulled: list = []

    @staticmethod
    def available_presets():
        return [SimpleNamespace(name="tiny", hub_id=None, architecture="qwen2", available=True, source="built"),
                SimpleNamespace(name="qwen2.5-7b", hub_id="Qwen/Qwen2.5-7B-Instruct", architecture="qwen2",
                                available=False, source="missing: python cli.py models pull qwen2.5-7b")]

    @classmethod
    def pull_model(cls, name, out_dir, **options):
        if name != "tiny":
            raise cls.ModelNotAvailable(f"model preset '{name}' is not available here; run: pip install x")
        cls.pulled.append(out_dir)
        return Path("models/tiny") if out_dir is None else out_dir


@pytest.fixture
def fake_models(monkeypatch):
    monkeypatch.setattr(cli, "_models", lambda: FakeModels)
    real = cli._user_error_types
    monkeypatch.setattr(cli, "_user_error_types", lambda: (*real(), FakeModels.ModelNotAvailable))
    FakeModels.pulled = []
    return FakeModels


def test_models_list_table(fake_models):
    result = invoke("models", "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["preset", "hub", "id", "architecture", "available", "source"]
    assert lines[1].split() == ["tiny", "-", "qwen2", "yes", "built"]
    assert lines[2].split()[:4] == ["qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", "qwen2", "no"]
    assert len({line.index("architecture") if i == 0 else line.index("qwen2 ") for i, line in enumerate(lines)}) == 1


def test_models_pull_and_error(fake_models, tmp_path):
    result = invoke("models", "pull", "tiny", "--out", str(tmp_path / "t"))
    assert (result.exit_code, result.stdout) == (0, f"pulled tiny -> {tmp_path / 't'}\n")
    assert invoke("models", "pull", "tiny").stdout == "pulled tiny -> models/tiny\n"
    result = invoke("models", "pull", "qwen2.5-7b")
    assert (result.exit_code, result.stderr) == (2, "model preset 'qwen2.5-7b' is not available here; "
                                                    "run: pip install x\n")


def test_models_list_real():
    result = invoke("models", "list")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert {"tiny", "qwen2.5-0.5b", "qwen2.5-7b", "llama-3.1-8b", "smollm2-135m"} <= set(rows)
    assert rows["tiny"].split()[3] == "yes"


def test_models_pull_unknown_real():
    result = invoke("models", "pull", "tyny")
    assert result.exit_code == 2 and "did you mean 'tiny'?" in result.stderr and "Traceback" not in result.output


def test_unexpected_errors_are_not_swallowed():
    with pytest.raises(ZeroDivisionError):
        with cli.user_errors():
            1 / 0


def test_models_pull_tiny_real(tmp_path):
    out = tmp_path / "tiny"
    result = invoke("models", "pull", "tiny", "--out", str(out))
    assert (result.exit_code, result.stdout.splitlines()[-1]) == (0, f"pulled tiny -> {out}"), result.output
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
