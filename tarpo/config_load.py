"""Loading params: YAML + dotted overrides -> recipe filled -> validated TarpoConfig, with one line per problem.

Split from tarpo/config.py (the schema). Why here: reading the file, typing `--set` values, turning pydantic
errors into `dotted.key: message` lines, filling the recipe (tarpo/recipes.py) and saying where each value came
from are one idea, "how a config is made", distinct from "what a config is". tarpo.config re-exports the API.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import json
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from tarpo.errors import read_text
from tarpo.config import ConfigError, ModelConfig, TarpoConfig, _fail, _submodel, flatten_config
from tarpo.recipes import Recipe, RecipeError, select_recipe
from tarpo.yaml_loader import YamlRefused, load_yaml

# -------------------------------------------------------------------------------- YAML + errors
def _model_at(path: Sequence[str | int]) -> type[BaseModel] | None:
    """The config model class found by walking field names from the root, or None."""
    model: type[BaseModel] = TarpoConfig
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        sub = _submodel(field.annotation) if field else None
        if sub is None:
            return None
        model = sub
    return model


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    """The nearest choice (case ignored: `TINY` -> 'tiny'), else the list of choices."""
    lowered = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f"did you mean {lowered[match[0]]!r}?" if match else f"allowed: {', '.join(choices)}"


_TYPE_NAMES = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
               "string_type": "a string", "list_type": "a list", "model_type": "a mapping of keys",
               "dict_type": "a mapping of keys", "float_parsing": "a number", "int_from_float": "an integer",
               "finite_number": "a finite number"}
_YAML11_BOOLS = ("yes", "no", "on", "off", "y", "n")
INT64_MAX = 2**63 - 1  # torch and numpy hold integers in 64 bits; a larger value overflows deep inside a stage
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _message(error: dict) -> str:
    """One short sentence for one pydantic error: what was given and what is allowed."""
    kind, ctx, given = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "extra_forbidden":
        model = _model_at(error["loc"][:-1])
        return "unknown key; " + _did_you_mean(str(error["loc"][-1]), list(model.model_fields) if model else [])
    if kind == "invalid_key":
        return f"a key must be a name, got {given!r} (an unquoted null, number or true as a key?)"
    if kind == "bool_type" and isinstance(given, str) and given.lower() in _YAML11_BOOLS:
        return f"expected true or false, got {given!r} (YAML 1.1's yes/no/on/off are text here: write true or false)"
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {given!r}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return f"must be {_BOUNDS[kind]} {bound:g}, got {given!r}"
    if kind == "literal_error":
        return f"expected one of {ctx['expected']}, got {given!r}"
    if kind == "too_short":
        return f"needs at least {ctx['min_length']} item(s)/character(s), got {given!r}"
    return error["msg"].removeprefix("Value error, ")


def _format_errors(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        if error["type"] == "cross_field":
            problems += [".".join([*loc, field]) + f": {msg}" for field, msg in error["ctx"]["problems"]]
        else:
            problems.append(f"{'.'.join(loc) or '<root>'}: {_message(error)}")
    return problems


# ------------------------------------------------------------------------------ loading + overrides
def parse_override(text: str) -> tuple[str, Any]:
    """`"router.loss_weight=0.2"` -> ("router.loss_weight", 0.2); the value is typed as a YAML scalar/list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"--set {text}: expected KEY=VALUE, e.g. router.loss_weight=0.2"])
    parts = key.split(".")
    model: type[BaseModel] | None = TarpoConfig
    for depth, part in enumerate(parts):
        if model is None:
            raise ConfigError([f"{key}: {'.'.join(parts[:depth])} is not a section, it has no keys"])
        if part not in model.model_fields:
            raise ConfigError([f"{key}: unknown key; {_did_you_mean(part, list(model.model_fields))}"])
        model = _submodel(model.model_fields[part].annotation)
    try:
        value = load_yaml(raw)
    except YamlRefused as exc:
        raise ConfigError([f"{key}: value {raw!r} refused: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{key}: value {raw!r} is not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    return key, value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    """Set data[a][b][c] for "a.b.c", merging mappings so `--set model.lora={rank: 4}` keeps other keys."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        node[leaf] = _merge(node[leaf], value)
    else:
        node[leaf] = value


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged


def _read_yaml(path: Path) -> dict:
    """Read the params file as a mapping, turning every file/YAML problem into a ConfigError line."""
    if not path.exists():  # a directory is named as such by read_text
        raise ConfigError([f"{path}: file not found (pass the params file, e.g. params.yaml)"])
    try:
        data = load_yaml(read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        kind = "" if isinstance(exc, YamlRefused) else "YAML syntax error: "
        raise ConfigError([f"{where}: {kind}{getattr(exc, 'problem', None) or exc}"]) from None
    if data is None:  # an empty file is far more often a mistake than a wish for every default
        raise ConfigError([f"{path}: empty params file; write `{{}}` to run on the built-in defaults"])
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: top level must be a mapping of sections (data:, model:, ...), "
                           f"got {type(data).__name__}"])
    return data


def _huge_ints(node: Any, key: str = "") -> list[str]:
    """`key: message` for every integer beyond 64 bits in raw params (pydantic's int has no upper bound)."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _huge_ints(v, f"{key}.{k}" if key else str(k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _huge_ints(v, f"{key}.{i}")]
    if isinstance(node, int) and not isinstance(node, bool) and abs(node) > INT64_MAX:
        digits = str(abs(node))
        shown = digits if len(digits) <= 24 else f"{digits[:6]}... ({len(digits)} digits)"
        return [f"{key}: {'-' if node < 0 else ''}{shown} is beyond the 64-bit integer range (at most {INT64_MAX})"]
    return []


def validate_data(data: dict) -> TarpoConfig:
    """Validate an already-parsed mapping; all problems (schema, cross-field, preset) in one ConfigError."""
    try:
        cfg = TarpoConfig.model_validate(data)
    except ValidationError as exc:
        problems = _format_errors(exc)
        reported = {p.partition(":")[0] for p in problems}
        covered = lambda key: any(key == r or key.startswith(r + ".") for r in reported)  # noqa: E731
        raise ConfigError(problems + [p for p in _huge_ints(data) if not covered(p.partition(":")[0])]) from None
    if huge := _huge_ints(data):
        raise ConfigError(huge)
    try:
        problems = _model_problems(cfg)
    except RecipeError as exc:
        problems = [str(exc)]
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TarpoConfig:
    """Load params.yaml, apply dotted overrides, fill the recipe, validate. ConfigError lists every problem."""
    return load_config_with_sources(path, overrides)[0]


def _leaf_keys(value: Any, key: str) -> list[str]:
    """`model.lora={rank: 4}` sets model.lora.rank only (the other lora keys keep their sources)."""
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaf_keys(v, f"{key}.{k}")]
    return [key]


def overrides_set_twice(overrides: Sequence[str]) -> list[str]:
    """One line per key that the user's overrides (`--set`, `--steps`, `--model`) give twice with different values:
    which one wins would be a silent guess. The same value twice is harmless. Programmatic callers of load_config
    may still layer overrides (the last wins); the CLI refuses."""
    given: list[tuple[str, Any]] = []
    problems = []
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError:
            continue  # reported by load_config with its own message
        leaves = [(leaf, _leaf_value(value, key, leaf)) for leaf in _leaf_keys(value, key)]
        for leaf, new in leaves:
            clash = next(((k, v) for k, v in given if (k == leaf and v != new) or k.startswith(leaf + ".")
                          or leaf.startswith(k + ".")), None)
            if clash is not None:
                problems.append(f"{leaf}: set twice ({clash[0]}={json.dumps(clash[1])}, then {leaf}={json.dumps(new)}) "
                                "by --set, --steps or --model; give it once")
                break
        given += leaves
    return problems


def _leaf_value(value: Any, key: str, leaf: str) -> Any:
    for part in leaf[len(key):].split(".")[1:]:
        value = value[part]
    return value


def load_config_with_sources(path: str | Path, overrides: Sequence[str] = ()) -> tuple[TarpoConfig, dict[str, str]]:
    """`load_config` plus, for every key, where its value came from (recipe < params file < --set)."""
    file_data = _read_yaml(Path(path))
    data, problems, set_keys = copy.deepcopy(file_data), [], []
    for text in overrides:
        try:
            key, value = parse_override(text)
            _set_dotted(data, key, value)
            set_keys += _leaf_keys(value, key)
        except ConfigError as exc:
            problems += exc.problems
    try:
        cfg = validate_data(data)
    except ConfigError as exc:
        problems += [p for p in exc.problems if p not in problems]
    if problems:
        raise ConfigError(problems)
    return cfg, config_sources(cfg, file_data, set_keys, Path(path).name)


# ------------------------------------------------------------------------------------- recipes
def _load_presets() -> dict | None:
    """tarpo.models.PRESETS, imported lazily (it pulls in torch/transformers); None if unavailable."""
    models = _models_module()
    return getattr(models, "PRESETS", None) if models is not None else None


def _models_module():
    try:
        return importlib.import_module("tarpo.models")
    except ImportError:
        return None


def model_facts(preset: str | None, path: str | None) -> dict:
    """What the recipe and the checks need to know about the configured model, read without loading weights:
    name, vocab_size, context_length, parameters, init_bias (None where unknown). A local path is described by
    its own config; a preset by its metadata. Raises RecipeError for an unknown preset or a missing path."""
    if path is not None:
        try:
            from tarpo.model_info import describe_local
            from tarpo.models import ModelNotAvailable
        except ImportError:
            return {"name": preset or Path(path).name}
        try:
            info = describe_local(path)
        except ModelNotAvailable as exc:
            raise RecipeError(f"model.path: {exc}") from None
        spec = (_load_presets() or {}).get(preset) if preset else None
        return {"name": preset or info.name, "vocab_size": info.vocab_size, "context_length": info.context_length,
                "parameters": info.parameters, "init_bias": getattr(spec, "init_bias", None),
                "preset_vocab_size": getattr(spec, "vocab_size", None)}
    presets = _load_presets()
    spec = presets.get(preset) if presets is not None else None
    if presets is not None and spec is None:
        raise RecipeError(f"model.preset: unknown preset {preset!r}; {_did_you_mean(str(preset), list(presets))}")
    return {"name": preset, "vocab_size": getattr(spec, "vocab_size", None),
            "context_length": getattr(spec, "context_length", None), "parameters": getattr(spec, "parameters", None),
            "init_bias": getattr(spec, "init_bias", None)}


def recipe_for(preset: str | None, path: str | None, task: str | None) -> Recipe:
    """The recipe of a model (preset and/or local path) and task; RecipeError says which key to change."""
    if preset is None and path is None:
        raise RecipeError("model.preset: null needs model.path (a local model); set a preset, e.g. tiny")
    if preset == "tiny" and path is not None:
        raise RecipeError(f"model.path: {path} is set together with model.preset=tiny; a local model is described "
                          "by its own config: set model.preset=null (or use --model DIR)")
    facts = model_facts(preset, path)
    return select_recipe(preset=preset, path=path, task=task, model_name=facts["name"],
                         parameters=facts.get("parameters"), context_length=facts.get("context_length"),
                         init_bias=facts.get("init_bias"))


def _plain(node: Any) -> Any:
    """A deep copy with pydantic sections turned into dicts (TarpoConfig(model=ModelConfig(...)) is allowed)."""
    if isinstance(node, BaseModel):
        node = node.model_dump()
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    return copy.deepcopy(node)


def apply_recipe(data: Any) -> Any:
    """Raw params with every null/absent recipe key set to the selected recipe's value (params and --set win)."""
    if not isinstance(data, dict):
        return data
    data = _plain(data)
    model = data.get("model", {})
    section = data.get("data", {})
    if not isinstance(model, dict) or not isinstance(section, dict):
        return data  # pydantic reports the wrong type
    preset = model.get("preset", ModelConfig.model_fields["preset"].default)
    path, task = model.get("path"), section.get("task")
    if not all(v is None or isinstance(v, str) for v in (preset, path, task)):
        return data
    try:
        recipe = recipe_for(preset, path, task)
    except RecipeError as exc:
        key, _, message = str(exc).partition(": ")
        _fail([(key, message)])
    for key, value in recipe.values.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            if node.get(leaf) is None:
                node[leaf] = copy.deepcopy(value)
    return data


def _model_problems(cfg: TarpoConfig) -> list[str]:
    """Rules that need the model's own facts: vocabulary, context window, a preset's copy."""
    facts = model_facts(cfg.model.preset, cfg.model.path)
    name, problems = facts["name"], []
    vocab, context = facts.get("vocab_size"), facts.get("context_length")
    if vocab and cfg.rollout.soft_top_k > vocab:
        problems.append(f"rollout.soft_top_k: {cfg.rollout.soft_top_k} exceeds the vocabulary of {name} "
                        f"({vocab} tokens); set soft_top_k <= {vocab}")
    if vocab and cfg.rollout.top_k > vocab:
        problems.append(f"rollout.top_k: {cfg.rollout.top_k} exceeds the vocabulary of {name} ({vocab} tokens), so "
                        f"it filters nothing; set top_k <= {vocab}, or 0 for no top-k filter")
    expected = facts.get("preset_vocab_size")
    if expected and vocab and expected != vocab:
        problems.append(f"model.path: {cfg.model.path} has a vocabulary of {vocab} tokens, preset {cfg.model.preset} "
                        f"{expected}: it is not a copy of that preset; set model.preset=null to use it by itself")
    ro = cfg.rollout
    longest = max(ro.max_new_tokens, cfg.eval.max_new_tokens or 0)
    if context and ro.max_prompt_tokens + longest > context:
        key = "eval.max_new_tokens" if longest > ro.max_new_tokens else "rollout.max_new_tokens"
        problems.append(f"{key}: rollout.max_prompt_tokens {ro.max_prompt_tokens} + {longest} new tokens = "
                        f"{ro.max_prompt_tokens + longest} exceeds the context length of {name} ({context} tokens); "
                        f"lower them to a sum <= {context}")
    return problems


def config_sources(cfg: TarpoConfig, file_data: dict, set_keys: Sequence[str],
                   file_label: str = "params.yaml") -> dict[str, str]:
    """Where each resolved value came from: `--set`, the params file, `recipe NAME`, `derived` or `default`."""
    recipe = recipe_for(cfg.model.preset, cfg.model.path, cfg.data.task)

    def in_file(key: str) -> bool:
        node: Any = file_data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return node is not None

    sources = {}
    for key in flatten_config(cfg):
        if any(key == s or key.startswith(s + ".") for s in set_keys):
            sources[key] = "--set"
        elif in_file(key):
            sources[key] = file_label
        elif key in recipe.values:
            sources[key] = f"recipe {recipe.name}"
        elif key == "eval.max_new_tokens":
            sources[key] = "derived (rollout.max_new_tokens)"
        else:
            sources[key] = "default"
    return sources


def shorthand_overrides(model: str | None = None, steps: int | None = None,
                        seed: int | None = None) -> list[str]:
    """CLI shorthands (`--model`, `--steps`, `--seed`) as dotted overrides, applied after `--set`.

    `--model DIR` sets model.path and model.preset=null: the directory is described by its own config.
    """
    overrides = []
    if model is not None:
        presets = _load_presets()
        is_local = Path(model).is_dir() or (Path(model).is_file() and model.endswith(".gguf"))
        if (presets is not None and model in presets) or (presets is None and not is_local):
            overrides += [f"model.preset={json.dumps(model)}", "model.path=null"]
        elif is_local:
            overrides += [f"model.path={json.dumps(str(model))}", "model.preset=null"]
        else:
            raise ConfigError([f"--model: {model!r} is neither a preset nor an existing directory; "
                               f"{unknown_model_hint(model, presets)}"])
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    return overrides


def unknown_model_hint(name: str, presets: dict) -> str:
    """What to do with a model name that is no preset: the preset of a hub id, a download for another hub id,
    else the nearest preset name."""
    by_hub = {spec.hub_id.lower(): key for key, spec in presets.items() if getattr(spec, "hub_id", None)}
    wanted = name.strip("/").lower()
    preset = by_hub.get(wanted) or by_hub.get(wanted + "-instruct")
    if preset is not None:
        return f"the preset for it is {preset!r} ({presets[preset].hub_id}): use that name"
    if "/" in name.strip("/") and not name.startswith((".", "/", "~")):
        local = f"models/{name.strip('/').split('/')[-1]}"
        return (f"it looks like a hub id, and no preset has it (python cli.py models list); download it first, e.g. "
                f"`huggingface-cli download {name} --local-dir {local}`, then pass --model {local}")
    return _did_you_mean(name, list(presets))


def resolve_config(cfg: TarpoConfig) -> TarpoConfig:
    """A copy with the derived nulls filled (eval length = rollout length); recipe keys are already filled."""
    if cfg.eval.max_new_tokens is not None:
        return cfg.model_copy(deep=True)
    evaluation = cfg.eval.model_copy(update={"max_new_tokens": cfg.rollout.max_new_tokens})
    return cfg.model_copy(update={"eval": evaluation}, deep=True)
