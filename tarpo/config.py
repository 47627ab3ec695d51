"""Typed, validated configuration for every stage (the schema of params.yaml).

Why pydantic with `extra="forbid"` and strict types: a typo in params.yaml (`loss_wieght`) or a quoted
number must fail loudly before a long run starts, not be ignored. Every problem is collected and
reported as one line `dotted.key: message`; only cli.py turns them into an exit code.

Defaults are DESIGN.md's normative values, else the reference's training scripts (lr 5e-6, beta 0.005,
weight decay 0.1, grad-norm 0.1, warm-up ratio 0.1 with cosine decay, LoRA r32/a64). params.yaml holds
the small CPU profile that overrides them.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import json
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tarpo.errors import read_text

# allow_inf_nan=False: NaN and +-inf are rejected for every float field (a .inf router temperature trained silently)
_STRICT = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)
SEED_MAX = 2**32 - 1  # numpy's limit; larger seeds overflowed deep inside a stage
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class ConfigError(ValueError):
    """One or more configuration problems, each a line `dotted.key: message`."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _fail(problems: list[tuple[str, str]]) -> None:
    """Raise all cross-field problems of one model at once (field relative to the model)."""
    if problems:
        raise PydanticCustomError("cross_field", "{summary}",
                                  {"summary": "; ".join(m for _, m in problems), "problems": problems})


# ----------------------------------------------------------------------------------------- data
class SyntheticConfig(BaseModel):
    model_config = _STRICT
    min_ops: int = Field(2, ge=1, description="Fewest arithmetic operations per generated problem.")
    max_ops: int = Field(3, ge=1, description="Most arithmetic operations per generated problem.")
    max_operand: int = Field(20, ge=1, description="Largest operand value in generated problems.")
    level: int = Field(1, ge=1, description="Difficulty level L: adds L-1 operations and scales operands by L (1 = the knobs as given).")

    @model_validator(mode="after")
    def _ops_order(self) -> "SyntheticConfig":
        if self.min_ops > self.max_ops:
            _fail([("min_ops", f"min_ops={self.min_ops} is above max_ops={self.max_ops}; "
                               "set min_ops <= max_ops")])
        return self


class FieldsConfig(BaseModel):
    model_config = _STRICT
    prompt: str = Field("question", description="Record field holding the problem text (jsonl/parquet).")
    answer: str = Field("answer", description="Record field holding the gold answer (jsonl/parquet).")
    id: Optional[str] = Field(None, description="Record field holding a unique id; null = row number.")


class ReasoningGymConfig(BaseModel):
    model_config = _STRICT
    dataset: str = Field("gsm_symbolic", description="reasoning-gym dataset name, e.g. gsm_symbolic.")


class DataConfig(BaseModel):
    model_config = _STRICT
    source: Literal["synthetic", "gsm8k", "math", "jsonl", "parquet", "hub", "reasoning-gym"] = Field(
        "synthetic", description="Where problems come from; synthetic and reasoning-gym need no network.")
    train_path: Optional[str] = Field(None, description="Training file or directory (gsm8k/math/jsonl/parquet).")
    eval_path: Optional[str] = Field(None, description="Evaluation file; null = hold out eval_size records.")
    hub_name: Optional[str] = Field(None, description="HF datasets hub name (source=hub), e.g. openai/gsm8k.")
    hub_config: Optional[str] = Field(None, description="HF datasets config name (source=hub), e.g. main.")
    hub_train_split: str = Field("train", description="Hub split used for training.")
    hub_eval_split: str = Field("test", description="Hub split used for evaluation.")
    fields: FieldsConfig = Field(default_factory=FieldsConfig, description="Field mapping for generic records.")
    train_size: Optional[int] = Field(None, ge=1, description="Training records to keep; null = all.")
    eval_size: Optional[int] = Field(None, ge=1, description="Evaluation records to keep; null = all.")
    malformed: Literal["skip", "fail"] = Field(
        "fail", description="Records without prompt or parsable answer: fail, or skip and count them.")
    system_prompt: Optional[str] = Field(
        None, description="System prompt; null = built-in instruction naming rollout.answer_marker.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for generation, shuffling and the train/eval split.")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description="Synthetic generator.")
    reasoning_gym: ReasoningGymConfig = Field(default_factory=ReasoningGymConfig, description="reasoning-gym.")

    @model_validator(mode="after")
    def _source_inputs(self) -> "DataConfig":
        if self.source in ("gsm8k", "math", "jsonl", "parquet") and not self.train_path:
            _fail([("train_path", f"source={self.source} reads local files; set data.train_path "
                                  "(or use source=hub with data.hub_name)")])
        if self.source == "hub" and not self.hub_name:
            _fail([("hub_name", "source=hub needs data.hub_name, e.g. openai/gsm8k")])
        return self


# ---------------------------------------------------------------------------------------- model
class LoraConfig(BaseModel):
    model_config = _STRICT
    enabled: bool = Field(True, description="Train a LoRA adapter (false = train the router only).")
    rank: int = Field(32, ge=1, description="LoRA rank r.")
    alpha: float = Field(64.0, gt=0, description="LoRA alpha (scale = alpha / rank).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout probability (0 keeps the training forward equal to the rollout's).")
    targets: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1,
                               description="Module names to adapt; default all attention and MLP projections.")


class ModelConfig(BaseModel):
    model_config = _STRICT
    preset: str = Field("tiny", description="Model preset (python cli.py models list).")
    path: Optional[str] = Field(None, description="Local HF model directory; overrides the preset's source.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto = bfloat16 on CUDA, float32 on CPU.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapter settings.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")


# --------------------------------------------------------------------------------------- router
class RouterConfig(BaseModel):
    model_config = _STRICT
    mode: Literal["tarpo", "hard", "soft-fixed"] = Field(
        "tarpo", description="tarpo = learned router; hard = plain GRPO; soft-fixed = soft with fixed probability.")
    init_bias: Optional[list[float]] = Field(
        None, description="Router bias [b_hard, b_soft]; p_soft = 1/(1+e^(b_hard-b_soft)); null = preset value.")
    temperature: float = Field(1.0, gt=0, description="Router softmax temperature.")
    loss_weight: float = Field(0.1, ge=0, description="Weight lambda of the router policy-gradient term.")
    lr: float = Field(1e-4, gt=0, description="Router learning rate (its own parameter group).")
    soft_probability: float = Field(0.1, ge=0, le=1, description="Soft-step probability for mode=soft-fixed.")

    @field_validator("init_bias", mode="before")
    @classmethod
    def _two_numbers(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) != 2:
            raise PydanticCustomError("init_bias_len", "expected 2 numbers, got {n}", {"n": len(value)})
        return value


# -------------------------------------------------------------------------------------- rollout
class RolloutConfig(BaseModel):
    model_config = _STRICT
    group_size: int = Field(8, description="Completions per prompt (G, >= 2) sharing one advantage baseline.")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per optimizer step.")
    max_new_tokens: int = Field(1024, ge=1, description="Completion length limit (soft steps included).")
    max_prompt_tokens: int = Field(1024, ge=1, description="Prompts longer than this are left-truncated.")
    temperature: float = Field(0.5, description="Token sampling temperature (> 0); the loss uses the same distribution.")
    top_k: int = Field(0, ge=0, description="Token top-k filter; 0 = off.")
    top_p: float = Field(1.0, description="Token nucleus filter in (0, 1]; 1.0 = off.")
    soft_top_k: int = Field(10, description="Tokens mixed in a soft step (renormalised top-k of q_t); >= 1, <= vocabulary and top_k.")
    answer_marker: str = Field("####", min_length=1, description="Text that starts the final answer; "
                               "decisions after it are forced hard.")
    max_latent_steps: Optional[int] = Field(
        None, ge=0, description="Most soft steps per completion (<= max_new_tokens); null = no limit.")
    max_consecutive_latent_steps: Optional[int] = Field(
        None, ge=0, description="Most soft steps in a row (<= max_new_tokens); null = no limit.")

    @model_validator(mode="after")
    def _rules(self) -> "RolloutConfig":
        problems = []
        if self.group_size < 2:
            problems.append(("group_size", f"group_size={self.group_size} must be >= 2: advantages compare "
                                           "completions of the same prompt; set 2 or more (4-8 typical)"))
        if self.temperature <= 0:
            problems.append(("temperature", f"temperature={self.temperature:g} must be > 0; use a small value "
                                            "such as 0.1 for near-greedy sampling"))
        if not 0 < self.top_p <= 1:
            problems.append(("top_p", f"top_p={self.top_p:g} must be in (0, 1]; use 1.0 to turn it off"))
        if self.soft_top_k < 1:
            problems.append(("soft_top_k", f"soft_top_k={self.soft_top_k} must be >= 1 (1 = soft step "
                                           "feeds the most likely token); default 10"))
        elif self.top_k and self.soft_top_k > self.top_k:
            problems.append(("soft_top_k", f"soft_top_k={self.soft_top_k} exceeds top_k={self.top_k}: only "
                                           "top_k tokens have probability; set soft_top_k <= top_k or top_k=0"))
        for name in ("max_latent_steps", "max_consecutive_latent_steps"):
            limit = getattr(self, name)
            if limit is not None and limit > self.max_new_tokens:
                problems.append((name, f"{name}={limit} exceeds max_new_tokens={self.max_new_tokens}; "
                                       f"set it <= {self.max_new_tokens} or null for no limit"))
        _fail(problems)
        return self


# ------------------------------------------------------------------------------- warmup / train
class WarmupConfig(BaseModel):
    model_config = _STRICT
    enabled: Optional[bool] = Field(None, description="Supervised warm-up before TARPO; null = on for tiny only.")
    steps: int = Field(200, ge=1, description="Warm-up optimizer steps.")
    lr: float = Field(1e-3, gt=0, description="Warm-up learning rate.")
    batch_size: int = Field(16, ge=1, description="Warm-up examples per step.")
    train_fraction: float = Field(0.5, gt=0, le=1, description="Fraction of training records used for warm-up.")


class TrainConfig(BaseModel):
    model_config = _STRICT
    steps: int = Field(200, ge=1, description="Optimizer steps (one rollout batch each).")
    lr: float = Field(5e-6, gt=0, description="Backbone (LoRA) learning rate.")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warm-up.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps with linear lr warm-up.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(0.1, gt=0, description="Global gradient-norm clip (router included).")
    beta: float = Field(0.005, ge=0, description="KL coefficient against the reference (adapter off, initial router).")
    clip_epsilon_low: float = Field(0.2, gt=0, description="PPO ratio clip below: 1 - eps_low.")
    clip_epsilon_high: float = Field(0.2, gt=0, description="PPO ratio clip above: 1 + eps_high (DAPO: 0.28).")
    num_iterations: int = Field(1, ge=1, description="Updates per rollout batch; 1 = on-policy (reference).")
    loss_aggregation: Literal["seq-mean", "token-mean", "dr-grpo"] = Field(
        "seq-mean", description="seq-mean (reference), token-mean (DAPO) or dr-grpo.")
    advantage_scaling: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group std, the batch std, or nothing.")
    advantage_epsilon: float = Field(1e-4, gt=0, description="Added to the std before dividing.")
    gradient_accumulation_steps: Optional[int] = Field(
        None, ge=1, description="Micro-batches per optimizer step; null = derived (rollout batch / micro_batch_size"
        " / num_processes); if set it must equal that.")
    micro_batch_size: int = Field(16, ge=1, description="Completions per forward/backward pass per process; divides prompts_per_step x group_size / num_processes.")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed for sampling, data order and initialisation.")
    checkpoint_every: int = Field(250, ge=0, description="Steps between checkpoints; 0 = only at the end.")
    keep_checkpoints: int = Field(3, ge=1, description="Checkpoints kept on disk (oldest deleted).")
    max_nonfinite_steps: int = Field(3, ge=0, description="Consecutive non-finite losses tolerated (step skipped).")
    num_processes: int = Field(1, ge=1, description="Processes for accelerate launch; divides rollout.prompts_per_step.")
    accelerate_config: Optional[str] = Field(None, description="accelerate config file; null = defaults.")
    log_samples_every: int = Field(10, ge=0, description="Steps between logged rollout samples; 0 = never.")


# ------------------------------------------------------------------------- eval / tracking / registry
class EvalConfig(BaseModel):
    model_config = _STRICT
    num_samples: int = Field(8, ge=1, description="Samples per problem (k of avg@k).")
    pass_k: list[int] = Field(default_factory=lambda: [1, 8], description="k values for pass@k and maj@k, each in [1, num_samples].")
    temperature: float = Field(0.5, description="Sampling temperature for evaluation (> 0).")
    greedy: bool = Field(True, description="Also compute greedy (temperature 0) accuracy.")
    router_greedy: bool = Field(False, description="Route by the router's argmax instead of sampling it.")
    batch_size: int = Field(16, ge=1, description="Sequences decoded together.")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="null = rollout.max_new_tokens.")
    max_problems: Optional[int] = Field(None, ge=1, description="Evaluate the first N problems; null = all.")
    seed: int = Field(1234, ge=0, le=SEED_MAX, description="Seed for evaluation sampling.")

    @model_validator(mode="after")
    def _rules(self) -> "EvalConfig":
        problems = []
        if self.temperature <= 0:
            problems.append(("temperature", f"temperature={self.temperature:g} must be > 0; greedy decoding is "
                                            "eval.greedy=true"))
        bad = [k for k in self.pass_k if not 1 <= k <= self.num_samples]
        if bad:
            problems.append(("pass_k", f"values {bad} not in [1, num_samples={self.num_samples}]; "
                                       "lower them or raise eval.num_samples"))
        if len(set(self.pass_k)) != len(self.pass_k):
            problems.append(("pass_k", f"duplicate values in {self.pass_k}; list each k once"))
        _fail(problems)
        return self


class TrackingConfig(BaseModel):
    model_config = _STRICT
    enabled: bool = Field(True, description="Log runs to MLflow.")
    uri: str = Field("sqlite:///mlflow.db", min_length=1, description="MLflow tracking URI.")
    experiment: str = Field("tarpo", min_length=1, description="MLflow experiment name.")
    run_name: Optional[str] = Field(None, description="MLflow run name; null = generated.")


class RegisterConfig(BaseModel):
    model_config = _STRICT
    enabled: bool = Field(True, description="Register the trained model in the MLflow registry.")
    name: str = Field("tarpo", min_length=1, description="Registered model name.")
    aliases: list[str] = Field(default_factory=lambda: ["candidate"], description="Aliases set on each new version.")
    champion_alias: str = Field("champion", description="Alias moved to a version that beats the champion.")
    champion_metric: str = Field("avg_at_k", description="Eval metric (higher is better) that picks the champion.")

    @model_validator(mode="after")
    def _rules(self) -> "RegisterConfig":
        problems = []
        for alias in [*self.aliases, self.champion_alias]:
            if not _ALIAS_RE.match(alias) or re.fullmatch(r"[vV]\d+", alias):
                problems.append(("aliases", f"alias {alias!r} is not valid in MLflow; use letters, digits, "
                                            "_ or - and not the reserved form v<number>"))
        if self.champion_alias in self.aliases:
            problems.append(("champion_alias", f"{self.champion_alias!r} is also in aliases; the champion "
                                               "alias is moved by comparison, remove it from aliases"))
        _fail(problems)
        return self


# ---------------------------------------------------------------------------------------- root
# `register` is the documented section name; it shadows ABCMeta.register on the class only, not on instances.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class TarpoConfig(BaseModel):
        model_config = _STRICT
        data: DataConfig = Field(default_factory=DataConfig, description="Dataset and prompts (prepare stage).")
        model: ModelConfig = Field(default_factory=ModelConfig, description="Backbone and LoRA.")
        router: RouterConfig = Field(default_factory=RouterConfig, description="Hard/soft action head.")
        rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Hybrid decoding.")
        warmup: WarmupConfig = Field(default_factory=WarmupConfig, description="Supervised warm-up stage.")
        train: TrainConfig = Field(default_factory=TrainConfig, description="TARPO optimisation.")
        eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation stage.")
        tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking.")
        register: RegisterConfig = Field(default_factory=RegisterConfig, description="MLflow model registry.")

        @model_validator(mode="after")
        def _cross_section(self) -> "TarpoConfig":
            problems = []
            ro, tr = self.rollout, self.train
            if ro.prompts_per_step % tr.num_processes:
                problems.append(("rollout.prompts_per_step", f"{ro.prompts_per_step} prompts cannot be split over "
                                 f"train.num_processes={tr.num_processes}; use a multiple of {tr.num_processes}"))
            else:
                per_process = ro.prompts_per_step // tr.num_processes * ro.group_size
                if per_process % tr.micro_batch_size:
                    problems.append(("train.micro_batch_size", f"{tr.micro_batch_size} does not divide the "
                                     f"{per_process} completions per process (prompts_per_step x group_size / "
                                     f"num_processes); pick a divisor of {per_process}"))
                elif tr.gradient_accumulation_steps not in (None, per_process // tr.micro_batch_size):
                    problems.append(("train.gradient_accumulation_steps", f"{tr.gradient_accumulation_steps} != "
                                     f"{per_process // tr.micro_batch_size} micro-batches per rollout batch; set "
                                     f"{per_process // tr.micro_batch_size} or null"))
            if self.register.enabled and not self.tracking.enabled:
                problems.append(("register.enabled", "the registry lives in the MLflow store; set "
                                 "tracking.enabled=true or register.enabled=false"))
            _fail(problems)
            return self

        def accumulation_steps(self) -> int:
            """Micro-batches per optimizer step on each process (the derived default of the setting)."""
            per_process = self.rollout.prompts_per_step // self.train.num_processes * self.rollout.group_size
            return per_process // self.train.micro_batch_size


# -------------------------------------------------------------------------------- YAML + errors
class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.2), not the string PyYAML 1.1 would give."""


# PyYAML's own float rule needs a dot and a signed exponent; this one adds `1e-4`, `1.0e3`, `-2E5`.
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


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


def _submodel(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else f"allowed: {', '.join(choices)}"


_TYPE_NAMES = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
               "string_type": "a string", "list_type": "a list", "model_type": "a mapping of keys",
               "dict_type": "a mapping of keys", "float_parsing": "a number", "int_from_float": "an integer",
               "finite_number": "a finite number"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _message(error: dict) -> str:
    """One short sentence for one pydantic error: what was given and what is allowed."""
    kind, ctx, given = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "extra_forbidden":
        model = _model_at(error["loc"][:-1])
        return "unknown key; " + _did_you_mean(str(error["loc"][-1]), list(model.model_fields) if model else [])
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
        value = yaml.load(raw, Loader=_Loader)
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
        data = yaml.load(read_text(path), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: YAML syntax error: {getattr(exc, 'problem', None) or exc}"]) from None
    if data is None:  # an empty file is far more often a mistake than a wish for every default
        raise ConfigError([f"{path}: empty params file; write `{{}}` to run on the built-in defaults"])
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: top level must be a mapping of sections (data:, model:, ...), "
                           f"got {type(data).__name__}"])
    return data


def validate_data(data: dict) -> TarpoConfig:
    """Validate an already-parsed mapping; all problems (schema, cross-field, preset) in one ConfigError."""
    try:
        cfg = TarpoConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
    problems = _preset_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TarpoConfig:
    """Load params.yaml, apply dotted overrides, validate. Raises ConfigError listing every problem."""
    data = copy.deepcopy(_read_yaml(Path(path)))
    problems = []
    for text in overrides:
        try:
            _set_dotted(data, *parse_override(text))
        except ConfigError as exc:
            problems += exc.problems
    try:
        cfg = validate_data(data)
    except ConfigError as exc:
        problems += [p for p in exc.problems if p not in problems]
    if problems:
        raise ConfigError(problems)
    return cfg


# ------------------------------------------------------------------------------------- presets
def _load_presets() -> dict | None:
    """tarpo.models.PRESETS, imported lazily (it pulls in torch/transformers); None if unavailable."""
    try:
        return importlib.import_module("tarpo.models").PRESETS
    except (ImportError, AttributeError):
        return None


def _preset_problems(cfg: TarpoConfig) -> list[str]:
    presets = _load_presets()
    if presets is None:
        return []
    preset = presets.get(cfg.model.preset)
    if preset is None:
        return [f"model.preset: unknown preset {cfg.model.preset!r}; {_did_you_mean(cfg.model.preset, list(presets))}"]
    vocab = getattr(preset, "vocab_size", None)
    if vocab and cfg.rollout.soft_top_k > vocab:
        return [f"rollout.soft_top_k: {cfg.rollout.soft_top_k} exceeds the vocabulary of {preset.name} "
                f"({vocab} tokens); set soft_top_k <= {vocab}"]
    return []


def shorthand_overrides(model: str | None = None, steps: int | None = None,
                        seed: int | None = None) -> list[str]:
    """CLI shorthands (`--model`, `--steps`, `--seed`) as dotted overrides, applied after `--set`."""
    overrides = []
    if model is not None:
        presets = _load_presets()
        is_dir = Path(model).is_dir()
        if (presets is not None and model in presets) or (presets is None and not is_dir):
            overrides += [f"model.preset={json.dumps(model)}", "model.path=null"]
        elif is_dir:
            overrides.append(f"model.path={json.dumps(str(model))}")
        else:
            raise ConfigError([f"--model: {model!r} is neither a preset nor an existing directory; "
                               f"{_did_you_mean(model, list(presets))}"])
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    return overrides


def resolve_config(cfg: TarpoConfig) -> TarpoConfig:
    """A copy with every "null = default" filled: preset init bias, warm-up auto, eval length."""
    presets = _load_presets() or {}
    preset = presets.get(cfg.model.preset)
    router, warmup, evaluation = cfg.router, cfg.warmup, cfg.eval
    if router.init_bias is None and preset is not None:
        router = router.model_copy(update={"init_bias": [float(b) for b in preset.init_bias]})
    if warmup.enabled is None:
        warmup = warmup.model_copy(update={"enabled": cfg.model.preset == "tiny"})
    if evaluation.max_new_tokens is None:
        evaluation = evaluation.model_copy(update={"max_new_tokens": cfg.rollout.max_new_tokens})
    return cfg.model_copy(update={"router": router, "warmup": warmup, "eval": evaluation}, deep=True)


def resolve_dtype(cfg_or_dtype: TarpoConfig | str, device: Any) -> "torch.dtype":  # noqa: F821
    """auto -> bfloat16 on CUDA, float32 elsewhere (CPUs here lack fast bf16: DESIGN.md)."""
    import torch

    name = cfg_or_dtype.model.dtype if isinstance(cfg_or_dtype, TarpoConfig) else cfg_or_dtype
    if name == "auto":
        name = "bfloat16" if torch.device(device).type == "cuda" else "float32"
    if name not in ("float32", "bfloat16", "float16"):
        raise ConfigError([f"model.dtype: expected auto, float32, bfloat16 or float16, got {name!r}"])
    return getattr(torch, name)


# ------------------------------------------------------------------------------- flatten + table
def flatten_config(cfg: BaseModel) -> dict[str, str]:
    """{"router.lr": "0.0001", ...}: dotted keys with YAML-style values (for tracking params)."""
    def walk(node: Any, prefix: str) -> dict[str, str]:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                out.update(walk(value, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: node if isinstance(node, str) else json.dumps(node)}
    return walk(cfg.model_dump(mode="json"), "")


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: list) -> str:
    marks = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "len >="}
    found = [f"{mark} {getattr(m, attr)}" for m in metadata for attr, mark in marks.items() if hasattr(m, attr)]
    return f" ({', '.join(found)})" if found else ""


def params_table_markdown() -> str:
    """Markdown table of every params.yaml key: type, default, description (README; never hand-edited)."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            sub = _submodel(field.annotation)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")
                continue
            default = field.get_default(call_default_factory=True)
            shown = "null" if default is None else default if isinstance(default, str) else json.dumps(default)
            rows.append(f"| `{prefix}{name}` | {_type_name(field.annotation)}{_bounds(field.metadata)} "
                        f"| `{shown}` | {field.description} |")
    walk(TarpoConfig, "")
    return "\n".join(rows) + "\n"


def dump_yaml(cfg: TarpoConfig) -> str:
    """The config as YAML in schema order (what `config show` prints)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None)
