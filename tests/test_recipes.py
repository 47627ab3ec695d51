"""tarpo/recipes.py + recipe resolution in tarpo/config.py: values, precedence, sources, local models, checks."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from tarpo import recipes as R
from tarpo.config import (ConfigError, TarpoConfig, flatten_config, load_config, load_config_with_sources,
                          resolve_config, shorthand_overrides)
from tarpo.model_info import describe_local, estimate_parameters, weights_sha256

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
NEW_KEYS = {"data.task": "null", "warmup.allow_real_model": "false", "reward.kind": "auto",
            "reward.answer_rule": "marker", "reward.require_single_marker": "false",
            "router.soft_noise": "none", "router.soft_noise_scale": "1.0", "eval.router": "learned",
            # off: training is bit-identical to before these keys existed
            "train.dynamic_sampling": "false", "train.dynamic_sampling_max_rounds": "2", "reward.function": "null",
            "reward.overlong": "none", "reward.overlong_buffer": "0",
            # the graph generator's knobs: read only by data.source graph
            "data.graph.nodes": "14", "data.graph.edges_per_node": "1.2", "data.graph.min_hops": "3",
            "data.graph.max_hops": "6", "data.graph.distractors": "2"}


def problems(overrides, path=PARAMS) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


def local_dir(root: Path, vocab: int = 1000, context: int = 1024, hidden: int = 64, layers: int = 2) -> Path:
    """A model directory described only by its config (enough for the recipe and the checks)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": vocab, "max_position_embeddings": context, "hidden_size": hidden,
        "num_hidden_layers": layers, "intermediate_size": 2 * hidden, "num_attention_heads": 4}))
    return root


# ------------------------------------------------------------------------------------------ tiny
def test_tiny_resolved_config_is_pinned():
    """`dvc repro` on the committed params resolves to exactly the pinned config. The embedded default is measured
    (README "Results", studies/embedded/): a change here is deliberate, regenerates this file and reruns the study."""
    before = json.loads((Path(__file__).parent / "tiny_resolved_config.json").read_text())
    now = flatten_config(resolve_config(load_config(PARAMS)))
    assert {k: v for k, v in now.items() if k not in NEW_KEYS} == before
    assert {k: now[k] for k in NEW_KEYS} == NEW_KEYS


def test_committed_params_set_no_recipe_value():
    """params.yaml holds only what tiny needs beyond its recipe: every recipe key is null there."""
    _, sources = load_config_with_sources(PARAMS)
    assert {k: v for k, v in sources.items() if k in R.RECIPE_KEYS and v != "recipe tiny"} == {}


def test_every_recipe_sets_every_recipe_key_and_schema_leaves_them_null():
    for recipe in R.RECIPES.values():
        assert set(recipe.values) == set(R.RECIPE_KEYS), recipe.name
    empty = TarpoConfig.model_construct()  # no validation: the schema's own defaults
    for key in R.RECIPE_KEYS:
        section, *rest = key.split(".")
        if section == "reward":
            continue  # RewardConfig keeps its defaults (shared with the data branch); recipes still fill them
        node = getattr(empty, section)
        for part in rest:
            node = getattr(node, part) if hasattr(node, part) else None
        assert node is None, f"{key} must default to null (= the recipe's value)"


# ------------------------------------------------------------------------------------------ paper
@pytest.mark.parametrize("preset", list(R.PAPER_MODELS))
@pytest.mark.parametrize("task, group, micro, prompts_in_split", [("gsm8k", 4, 8, 7473), ("math", 8, 16, 7500)])
def test_paper_recipes_take_the_authors_settings(preset, task, group, micro, prompts_in_split):
    cfg = load_config(PARAMS, shorthand_overrides(model=preset) + [f"data.task={task}"])
    assert (cfg.train.lr, cfg.router.lr, cfg.train.beta, cfg.train.max_grad_norm) == (5e-6, 1e-4, 0.005, 0.1)
    assert (cfg.model.lora.rank, cfg.model.lora.alpha, len(cfg.model.lora.targets)) == (32, 64.0, 7)  # all projections
    assert (cfg.train.warmup_ratio, cfg.train.lr_schedule, cfg.model.dtype) == (0.1, "cosine", "auto")
    assert (cfg.rollout.group_size, cfg.train.micro_batch_size) == (group, micro)
    assert (cfg.rollout.max_prompt_tokens, cfg.rollout.max_new_tokens) == (1024, 1024)
    # per-device batch x accumulation 4 = the authors' completions per optimizer step (32 GSM8K, 64 MATH)
    assert cfg.accumulation_steps() == 4
    assert cfg.train.steps == prompts_in_split // cfg.rollout.prompts_per_step  # one epoch
    assert (cfg.train.checkpoint_every, cfg.train.keep_checkpoints, cfg.train.seed) == (250, 3, 42)
    assert cfg.model.gradient_checkpointing is True and cfg.warmup.enabled is False
    assert cfg.router.init_bias == ([2.2, 0.0] if preset == "qwen2.5-3b" else [4.6, 0.0])
    assert cfg.register.name == f"tarpo-{preset}-{task}"
    assert cfg.data.source == task and cfg.data.hub_name in ("openai/gsm8k", "DigitalLearningGmbH/MATH-lighteval")
    assert (cfg.reward.kind, cfg.reward.answer_rule) == ({"gsm8k": "numeric", "math": "math"}[task], "marker-or-boxed")
    assert cfg.rollout.answer_marker in cfg.data.system_prompt and "boxed" in cfg.data.system_prompt


def test_offline_task_uses_reasoning_gym():
    cfg = load_config(PARAMS, shorthand_overrides(model="qwen2.5-1.5b") + ["data.task=gsm-symbolic"])
    assert (cfg.data.source, cfg.data.reasoning_gym.dataset, cfg.reward.kind) == ("reasoning-gym", "gsm_symbolic",
                                                                                  "numeric")


# ------------------------------------------------------------------------------------------ precedence
def test_precedence_recipe_then_params_then_set(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model: {preset: qwen2.5-7b}\ntrain: {lr: 1.0e-3, steps: null}\nrollout: {group_size: 6}\n")
    cfg, sources = load_config_with_sources(path, ["rollout.group_size=2", "model.lora={rank: 4}"])
    assert (cfg.train.steps, sources["train.steps"]) == (934, "recipe qwen2.5-7b-gsm8k")  # null = recipe
    assert (cfg.train.lr, sources["train.lr"]) == (1e-3, "params.yaml")                   # file beats recipe
    assert (cfg.rollout.group_size, sources["rollout.group_size"]) == (2, "--set")       # --set beats file
    assert (cfg.model.lora.rank, cfg.model.lora.alpha) == (4, 64.0)                      # merged, rest from recipe
    assert sources["model.lora.alpha"] == "recipe qwen2.5-7b-gsm8k" and sources["model.lora.rank"] == "--set"
    assert sources["train.weight_decay"] == "default" and sources["eval.max_new_tokens"].startswith("derived")


def test_switching_model_switches_the_whole_recipe():
    tiny = load_config(PARAMS)
    big = load_config(PARAMS, shorthand_overrides(model="qwen2.5-7b"))
    changed = {k for k in R.RECIPE_KEYS if flatten_config(tiny)[k] != flatten_config(big)[k]}
    assert {"train.lr", "router.lr", "model.lora.rank", "rollout.max_new_tokens", "register.name",
            "data.source", "data.system_prompt", "warmup.enabled", "train.steps"} <= changed


def test_tiny_has_two_tasks():
    assert problems(["data.task=math"]) == [
        "data.task: tiny has two tasks (null = the synthetic sums, graph); set data.task=null or graph, or pick a "
        "real model for math"]
    graph = load_config(PARAMS, ["data.task=graph"])
    assert (graph.data.source, graph.reward.kind, graph.register.name) == ("graph", "text", "tarpo-tiny-graph")
    assert problems(["data.task=graph", "model.preset=qwen2.5-7b"])[0].startswith(
        "data.task: graph has a recipe for the tiny model only")


# ------------------------------------------------------------------------------------------ local dirs / generic
def test_local_dir_gets_generic_recipe_and_never_tiny_rules(tmp_path):
    model = local_dir(tmp_path / "My Model", vocab=1000, context=1024)
    cfg = load_config(PARAMS, shorthand_overrides(model=str(model)) + ["rollout.soft_top_k=600"])  # tiny: <= 512
    assert cfg.model.preset is None and not cfg.is_tiny()
    assert cfg.warmup.enabled is False and cfg.register.name == "tarpo-my-model-gsm8k"
    assert (cfg.rollout.max_prompt_tokens, cfg.rollout.max_new_tokens) == (512, 512)  # half of its 1024 each
    assert cfg.model.gradient_checkpointing is False  # small class (estimated well under 1B parameters)
    assert problems(shorthand_overrides(model=str(model)) + ["rollout.soft_top_k=1001"]) == [
        "rollout.soft_top_k: 1001 exceeds the vocabulary of My Model (1000 tokens); set soft_top_k <= 1000"]


def test_size_class_from_the_models_own_config(tmp_path):
    big = local_dir(tmp_path / "big", vocab=32000, context=4096, hidden=2048, layers=24)  # ~1.14B by its config
    cfg = load_config(PARAMS, shorthand_overrides(model=str(big)))
    assert cfg.model.gradient_checkpointing is True and cfg.train.micro_batch_size == 8
    assert (cfg.rollout.max_prompt_tokens, cfg.rollout.max_new_tokens) == (1024, 1024)


def test_other_presets_use_generic_small():
    cfg = load_config(PARAMS, shorthand_overrides(model="smollm2-135m"))
    assert cfg.register.name == "tarpo-smollm2-135m-gsm8k" and cfg.train.micro_batch_size == 32
    assert cfg.train.lr == 5e-6 and cfg.warmup.enabled is False


def test_preset_with_path_must_be_a_copy(tmp_path):
    model = local_dir(tmp_path / "copy", vocab=1000, context=4096)
    assert problems(["model.preset=qwen2.5-7b", f"model.path={model}"]) == [
        f"model.path: {model} has a vocabulary of 1000 tokens, preset qwen2.5-7b 152064: it is not a copy of that "
        "preset; set model.preset=null to use it by itself"]
    assert problems(["model.preset=null", f"model.path={tmp_path / 'nowhere'}"]) == [
        f"model.path: model path {tmp_path / 'nowhere'} does not exist"]


# ------------------------------------------------------------------------------------------ validation
def test_warmup_on_a_real_model_needs_confirmation():
    real = shorthand_overrides(model="qwen2.5-1.5b") + ["warmup.enabled=true"]
    assert problems(real) == [
        "warmup.enabled: true on qwen2.5-1.5b fully fine-tunes its weights at warmup.lr=1e-05; set "
        "warmup.allow_real_model=true to confirm, or warmup.enabled=false"]
    assert load_config(PARAMS, real + ["warmup.allow_real_model=true"]).warmup.enabled is True


def test_context_window_of_the_preset():
    assert problems(shorthand_overrides(model="smollm2-135m") + ["rollout.max_new_tokens=8000"]) == [
        "rollout.max_new_tokens: rollout.max_prompt_tokens 1024 + 8000 new tokens = 9024 exceeds the context length "
        "of smollm2-135m (8192 tokens); lower them to a sum <= 8192"]


def test_marker_rule_only_for_marker_answers():
    no_marker = ["data.system_prompt=Think, then answer in \\boxed{}."]
    assert problems(no_marker)[0].startswith("data.system_prompt: does not mention rollout.answer_marker '####'")
    assert load_config(PARAMS, no_marker + ["reward.answer_rule=boxed"]).reward.answer_rule == "boxed"


# ------------------------------------------------------------------------------------------ model facts
def test_parameter_estimate_matches_a_built_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from tarpo.models import build_tiny

    built = build_tiny(tmp_path / "t", seed=0)
    counted = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(built)).parameters())
    config = json.loads((built / "config.json").read_text())
    # RMSNorm weights and q/k/v biases are left out of the estimate: they are < 0.2 % of a model
    assert estimate_parameters(config) == pytest.approx(counted, rel=2e-3)
    info = describe_local(built)
    assert (info.architecture, info.vocab_size, info.context_length, info.chat_template) == ("qwen2", 512, 1024, True)
    assert info.eos_token == "<|im_end|>"


def test_weights_fingerprint(tmp_path, monkeypatch):
    import hashlib

    import tarpo.model_info as M

    (tmp_path / "model.safetensors").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    whole = hashlib.sha256(b"model.safetensors:1048576\n" + bytes(range(256)) * 4096).hexdigest()
    assert weights_sha256(tmp_path) == whole
    monkeypatch.setattr(M, "FULL_HASH_LIMIT", 1000)
    monkeypatch.setattr(M, "SAMPLE_BYTES", 16)
    monkeypatch.setattr(M, "SAMPLE_STRIDE", 1 << 16)
    sampled = weights_sha256(tmp_path)
    assert sampled.startswith("sampled:") and sampled != "sampled:" + whole
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[1 << 16] ^= 1  # a sampled byte
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    assert weights_sha256(tmp_path) != sampled


def test_readme_lists_every_recipe():
    readme = (ROOT / "README.md").read_text()
    assert R.recipes_table_markdown() in readme, "run: python scripts/render_params_table.py"
    assert all(f"| `{name}` |" in readme for name in R.RECIPES)


def test_select_recipe_is_pure_and_typed():
    hints = typing.get_type_hints(R.select_recipe)
    assert hints["return"] is R.Recipe
    recipe = R.select_recipe(preset=None, path="/x", task="math", model_name="x", parameters=5e8, context_length=600)
    assert recipe.name == "generic-small-math" and recipe.values["rollout.max_new_tokens"] == 300
    assert R.RECIPES["generic-small-math"].values["rollout.max_new_tokens"] == 1024  # the stored recipe untouched


def test_config_show_prints_paper_values_with_sources(monkeypatch):
    import yaml
    from typer.testing import CliRunner

    import cli

    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(cli.app, ["config", "show", "--model", "qwen2.5-7b", "--set", "train.steps=5"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "  lr: 5.0e-06   # recipe qwen2.5-7b-gsm8k" in lines and "  lr: 0.0001   # recipe qwen2.5-7b-gsm8k" in lines
    assert "  beta: 0.005   # recipe qwen2.5-7b-gsm8k" in lines and "  temperature: 0.5   # recipe qwen2.5-7b-gsm8k" in lines
    assert "  steps: 5   # --set" in lines and "  weight_decay: 0.1   # params.yaml" in lines
    assert "  name: tarpo-qwen2.5-7b-gsm8k   # recipe qwen2.5-7b-gsm8k" in lines
    shown = yaml.safe_load(result.stdout)  # the comments leave valid params
    assert TarpoConfig.model_validate(shown).model.lora.rank == 32


def test_config_show_explain_puts_each_keys_help_text_above_it(monkeypatch):
    """`config show --explain`: every leaf key is preceded by its Field description (new keys included), and the
    output still loads as the same params."""
    import yaml
    from typer.testing import CliRunner

    import cli
    from tarpo.config import leaf_fields

    monkeypatch.chdir(ROOT)
    plain = CliRunner().invoke(cli.app, ["config", "show"])
    result = CliRunner().invoke(cli.app, ["config", "show", "--explain"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    help_above, section, comments = {}, "", []
    for line in lines:
        if line.strip().startswith("#"):
            comments.append(line.strip()[2:])
            continue
        if not line.startswith(" "):
            section = line.rstrip(":")
        elif comments:
            help_above[f"{section}.{line.split(':')[0].strip()}"] = " ".join(comments)
        comments = []
    descriptions = {key: " ".join(field.description.split()) for key, field in leaf_fields()}
    for key in ("train.dynamic_sampling", "reward.overlong", "reward.function", "router.soft_noise", "eval.router"):
        assert help_above[key] == descriptions[key], key
    top_level = {key: text for key, text in descriptions.items() if key.count(".") == 1}
    assert {key: help_above.get(key) for key in top_level} == top_level
    assert yaml.safe_load(result.stdout) == yaml.safe_load(plain.stdout)
