"""tarpo/config.py: schema, overrides, cross-field rules, preset resolution, flattening, README table."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from pydantic import BaseModel

from tarpo import config as C
from tarpo.config import (ConfigError, TarpoConfig, flatten_config, load_config, params_table_markdown,
                          parse_override, resolve_config, resolve_dtype, shorthand_overrides)

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def problems_of(path, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


@pytest.fixture
def fake_presets(monkeypatch):
    """Two presets with known vocabularies/biases, independent of tarpo/models.py."""
    presets = {"tiny": SimpleNamespace(name="tiny", hub_id=None, init_bias=(4.6, 0.0), vocab_size=512),
               "big-3b": SimpleNamespace(name="big-3b", hub_id="x/y", init_bias=(2.2, 0.0), vocab_size=None)}
    monkeypatch.setattr("tarpo.config_load._load_presets", lambda: presets)
    return presets


# ------------------------------------------------------------------------------------ params.yaml
def test_committed_params_validate_and_resolve():
    cfg = load_config(PARAMS)
    assert cfg.model.preset == "tiny" and cfg.data.source == "synthetic"
    resolved = resolve_config(cfg)
    assert resolved.router.init_bias == [4.6, 0.0]  # tiny recipe (p_soft ~ 1 %)
    assert resolved.warmup.enabled is True  # tiny recipe: warm-up on
    assert resolved.eval.max_new_tokens == cfg.rollout.max_new_tokens
    assert cfg.eval.max_new_tokens is None, "resolve_config must return a copy"


def test_committed_params_set_every_key():
    """params.yaml is the full embedded profile: every schema key is written out."""
    data = yaml.safe_load(PARAMS.read_text())
    written = set(flatten_config(TarpoConfig.model_validate(data)))
    def keys(node, prefix=""):
        return {k for key, v in node.items() for k in (keys(v, f"{prefix}{key}.") if isinstance(v, dict)
                                                         else [f"{prefix}{key}"])}
    assert keys(data) == written


def test_schema_defaults_are_valid_and_documented():
    TarpoConfig()  # defaults satisfy every cross-field rule

    def walk(model: type[BaseModel]):
        assert model.model_config.get("extra") == "forbid", model.__name__
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            sub = C._submodel(field.annotation)
            if sub:
                walk(sub)
    walk(TarpoConfig)


def test_reference_training_defaults():
    cfg = TarpoConfig(model={"preset": "qwen2.5-1.5b"})  # the paper's model: its recipe
    train, router, rollout = cfg.train, cfg.router, cfg.rollout
    assert (train.lr, train.beta, train.weight_decay, train.max_grad_norm, train.warmup_ratio) == \
        (5e-6, 0.005, 0.1, 0.1, 0.1)
    assert (router.lr, router.loss_weight, rollout.temperature, rollout.soft_top_k, rollout.top_k) == \
        (1e-4, 0.1, 0.5, 10, 0)
    assert rollout.answer_marker == "####" and train.lr_schedule == "cosine"


# ------------------------------------------------------------------------------------ overrides
@pytest.mark.parametrize("text, key, value", [
    ("router.loss_weight=0.2", "router.loss_weight", 0.2),
    ("train.lr=1e-4", "train.lr", 1e-4),  # YAML 1.1 would give the string "1e-4"
    ("train.steps=10", "train.steps", 10),
    ("router.init_bias=[2.2, 0]", "router.init_bias", [2.2, 0]),
    ("router.init_bias=null", "router.init_bias", None),
    ("tracking.enabled=false", "tracking.enabled", False),
    ("data.system_prompt=say x=1", "data.system_prompt", "say x=1"),
    ("model.lora={rank: 4}", "model.lora", {"rank": 4}),
    ("rollout.answer_marker='####'", "rollout.answer_marker", "####"),
])
def test_parse_override_types_values(text, key, value):
    parsed_key, parsed = parse_override(text)
    assert parsed_key == key and parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("text, message", [
    ("router.loss_weight", "--set router.loss_weight: expected KEY=VALUE, e.g. router.loss_weight=0.2"),
    ("=3", "--set =3: expected KEY=VALUE, e.g. router.loss_weight=0.2"),
    ("router.los_weight=1", "router.los_weight: unknown key; did you mean 'loss_weight'?"),
    ("rollot.group_size=4", "rollot.group_size: unknown key; did you mean 'rollout'?"),
    ("router.lr.x=1", "router.lr.x: router.lr is not a section, it has no keys"),
    ("router.lr=[1", "router.lr: value '[1' is not valid YAML (expected ',' or ']', but got '<stream end>')"),
])
def test_parse_override_errors(text, message):
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert info.value.problems == [message]


def test_overrides_merge_into_file_and_win(tmp_path):
    path = write(tmp_path, "model:\n  lora: {rank: 8, alpha: 16.0}\ntrain: {steps: 5}\n")
    cfg = load_config(path, ["model.lora={rank: 4}", "train.steps=7", "train.steps=9"])
    assert (cfg.model.lora.rank, cfg.model.lora.alpha, cfg.train.steps) == (4, 16.0, 9)


@pytest.mark.parametrize("sets,line", [
    (["train.steps=7", "train.steps=9"], "train.steps: set twice (train.steps=7, then train.steps=9)"),
    (["model.lora={rank: 4}", "model.lora.rank=8"], "model.lora.rank: set twice (model.lora.rank=4, then "
                                                     "model.lora.rank=8)"),
    (["model.lora.rank=8", "model.lora={}"], "model.lora: set twice (model.lora.rank=8, then model.lora={})"),
    (["train.steps=9", "train.steps=9", "train.seed=1"], None),  # the same value twice is harmless
])
def test_the_cli_refuses_a_key_set_twice_to_different_values(sets, line):
    """Which of two user overrides wins must not be a silent guess (it was: the last one)."""
    from tarpo.config_load import overrides_set_twice

    assert overrides_set_twice(sets) == ([line + " by --set, --steps or --model; give it once"] if line else [])


def test_all_problems_are_collected(tmp_path):
    path = write(tmp_path, "router: {init_bias: [1, 2, 3], mode: soft}\nrollout: {group_size: 1}\n")
    assert problems_of(path, ["train.stepz=1", "eval.pass_k=[0]"]) == [
        "train.stepz: unknown key; did you mean 'steps'?",
        "router.mode: expected one of 'tarpo', 'hard' or 'soft-fixed', got 'soft'",
        "router.init_bias: expected 2 numbers, got 3",
        "rollout.group_size: group_size=1 must be >= 2: advantages compare completions of the same prompt; "
        "set 2 or more (4-8 typical)",
        "eval.pass_k: values [0] not in [1, num_samples=4]; lower them or raise eval.num_samples",  # tiny recipe: 4
    ]


def test_yaml_file_problems(tmp_path):
    assert problems_of(tmp_path / "nope.yaml") == [
        f"{tmp_path / 'nope.yaml'}: file not found (pass the params file, e.g. params.yaml)"]
    bad = write(tmp_path, "router:\n  mode: tarpo\n  lr: [1\n")
    assert problems_of(bad) == [f"{bad}:4: YAML syntax error: expected ',' or ']', but got '<stream end>'"]
    listed = write(tmp_path, "- router\n- train\n")
    assert problems_of(listed) == [f"{listed}: top level must be a mapping of sections (data:, model:, ...), got list"]


def test_empty_file_is_an_error_and_braces_mean_all_defaults(tmp_path):
    empty = write(tmp_path, "# nothing\n")
    assert problems_of(empty) == [f"{empty}: empty params file; write `{{}}` to run on the built-in defaults"]
    assert load_config(write(tmp_path, "{}\n")) == TarpoConfig()


def test_strict_types_do_not_coerce(tmp_path):
    path = write(tmp_path, "train: {steps: '10', seed: true}\nrouter: {lr: 1e-3}\n")
    assert problems_of(path) == ["train.steps: expected an integer, got '10'",
                                 "train.seed: expected an integer, got True"]


# ------------------------------------------------------------------------------------ presets
def test_preset_rules_use_preset_metadata(tmp_path, fake_presets):
    assert problems_of(write(tmp_path, "model: {preset: tyny}\n")) == [
        "model.preset: unknown preset 'tyny'; did you mean 'tiny'?"]
    assert problems_of(write(tmp_path, "rollout: {soft_top_k: 600}\n")) == [
        "rollout.soft_top_k: 600 exceeds the vocabulary of tiny (512 tokens); set soft_top_k <= 512"]
    big = load_config(write(tmp_path, "model: {preset: big-3b}\nrollout: {soft_top_k: 600}\n"))  # vocab unknown
    assert resolve_config(big).router.init_bias == [2.2, 0.0]
    assert resolve_config(big).warmup.enabled is False


def test_explicit_init_bias_wins_over_preset(tmp_path, fake_presets):
    cfg = load_config(write(tmp_path, "router: {init_bias: [1.5, 0.5]}\n"))
    assert resolve_config(cfg).router.init_bias == [1.5, 0.5]


def test_tolerant_without_models_module(tmp_path, monkeypatch):
    monkeypatch.setattr("tarpo.config_load._load_presets", lambda: None)
    cfg = load_config(write(tmp_path, "model: {preset: some-future-model}\n"))
    assert cfg.register.name == "tarpo-some-future-model-gsm8k"  # generic recipe, size unknown -> large
    assert cfg.model.gradient_checkpointing is True and cfg.router.init_bias == [4.6, 0.0]
    assert shorthand_overrides(model="whatever") == ['model.preset="whatever"', "model.path=null"]


@pytest.mark.skipif(importlib.util.find_spec("tarpo.models") is None, reason="tarpo/models.py not written yet")
def test_real_presets_paper_biases():
    presets = C._load_presets()
    cfg = TarpoConfig.model_validate({"model": {"preset": "qwen2.5-3b"}})
    assert resolve_config(cfg).router.init_bias == [2.2, 0.0]
    assert list(presets["qwen2.5-7b"].init_bias) == [4.6, 0.0]


def test_shorthand_model(tmp_path, fake_presets):
    assert shorthand_overrides(model="big-3b") == ['model.preset="big-3b"', "model.path=null"]
    assert shorthand_overrides(model=str(tmp_path)) == [f'model.path="{tmp_path}"', "model.preset=null"]
    assert shorthand_overrides(steps=3, seed=1) == ["train.steps=3", "train.seed=1"]
    with pytest.raises(ConfigError) as info:
        shorthand_overrides(model="tinny")
    assert info.value.problems == ["--model: 'tinny' is neither a preset nor an existing directory; "
                                   "did you mean 'tiny'?"]
    (tmp_path / "config.json").write_text('{"model_type": "llama", "vocab_size": 100, "max_position_embeddings": 256}')
    cfg = load_config(PARAMS, shorthand_overrides(model=str(tmp_path)))
    assert cfg.model.path == str(tmp_path) and cfg.model.preset is None


# ------------------------------------------------------------------------------------ helpers
@pytest.mark.parametrize("dtype, device, expected", [
    ("auto", "cpu", torch.float32), ("auto", "cuda", torch.bfloat16), ("auto", "cuda:1", torch.bfloat16),
    ("float16", "cpu", torch.float16), ("bfloat16", torch.device("cpu"), torch.bfloat16),
])
def test_resolve_dtype(dtype, device, expected):
    assert resolve_dtype(dtype, device) is expected


def test_resolve_dtype_reads_config():
    cfg = TarpoConfig.model_validate({"model": {"dtype": "float16"}})
    assert resolve_dtype(cfg, "cuda") is torch.float16 and resolve_dtype(TarpoConfig(), "cpu") is torch.float32


def test_flatten_config():
    flat = flatten_config(load_config(PARAMS))
    assert flat["router.init_bias"] == "[4.6, 0.0]" and flat["rollout.answer_marker"] == "####"
    assert flat["model.lora.rank"] == "8" and flat["eval.pass_k"] == "[1, 4]"
    assert flat["tracking.enabled"] == "true" and all(isinstance(v, str) for v in flat.values())


def test_params_table_lists_every_key():
    table = params_table_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(flatten_config(TarpoConfig()))
    assert "| `rollout.group_size` | int \\| null | `null` | Completions per prompt (G, >= 2)" in table
    assert "| `train.lr` | float \\| null (>= 1e-10, <= 1.0) | `null` |" in table   # the float32-safe range


def test_readme_params_table_is_current():
    from scripts.render_params_table import render
    readme = (ROOT / "README.md").read_text()
    assert render(readme) == readme, "run: python scripts/render_params_table.py"
