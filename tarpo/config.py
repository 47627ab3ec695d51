"""Typed, validated configuration for every stage (the schema of params.yaml).

Why pydantic with `extra="forbid"` and strict types: a typo in params.yaml (`loss_wieght`) or a quoted
number must fail loudly before a long run starts, not be ignored. Every problem is collected and
reported as one line `dotted.key: message`; only cli.py turns them into an exit code.

Defaults are the method's normative values (README's params table lists them). Keys whose right value depends
on the model or task default to null = "the recipe's value" (tarpo/recipes.py), filled before validation so every
cross-field rule sees the resolved values. Loading (YAML, --set, recipe filling, sources) is tarpo/config_load.py,
re-exported here.
"""

from __future__ import annotations

import json
import re
import textwrap
import types
import typing
import warnings
from typing import Any, Iterator, Literal, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError


# allow_inf_nan=False: NaN and +-inf are rejected for every float field (a .inf router temperature trained silently)
_STRICT = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)
SEED_MAX = 2**32 - 1  # numpy's limit; larger seeds overflowed deep inside a stage
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_R = "; null = the recipe's value"  # suffix of every recipe key's description (tarpo/recipes.py)
IGNORES_EVAL_PATH = ("synthetic", "reasoning-gym", "hub", "graph")  # sources that make or download their own eval split


# Ranges a float32 step survives. Logits are divided by a temperature: below 0.01 a logit gap of 1 becomes 100 nats,
# the tail probabilities underflow float32 (e^-100 < 1e-38) and log-probs and ratios turn non-finite (greedy decoding
# is eval.greedy). AdamW moves each weight by about lr per step: above 1 a few steps overflow; below 1e-10 the step is
# under half the float32 spacing of a weight of 0.01 (~9e-10) and nothing trains.
MIN_TEMPERATURE = 1e-2
MIN_LR, MAX_LR = 1e-10, 1.0
_LR_BOUND = f" (in [{MIN_LR:g}, {MAX_LR:g}]: a float32 step neither overflows nor vanishes)"
_T_BOUND = f" (>= {MIN_TEMPERATURE:g}: lower, float32 log-probs underflow)"


def _temperature_problem(name: str, value: float | None, below_zero_hint: str) -> tuple[str, str] | None:
    """(key, message) when a sampling temperature is out of its range, else None."""
    if value is None or value >= MIN_TEMPERATURE:
        return None
    if value <= 0:
        return name, f"{name}={value:g} must be > 0; {below_zero_hint}"
    return name, (f"{name}={value:g} is below {MIN_TEMPERATURE:g}: logits / {value:g} underflow float32 log-probs "
                  f"(every step non-finite); use >= {MIN_TEMPERATURE:g}, e.g. 0.1 for near-greedy sampling")


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
    min_ops: Optional[int] = Field(None, ge=1, description=f"Fewest arithmetic operations per generated problem{_R}.")
    max_ops: Optional[int] = Field(None, ge=1, description=f"Most arithmetic operations per generated problem{_R}.")
    max_operand: Optional[int] = Field(None, ge=1, description=f"Largest operand value in generated problems{_R}.")
    level: Optional[int] = Field(None, ge=1, description="Difficulty level L: adds L-1 operations and scales operands by L "
                                 f"(1 = the knobs as given){_R}.")

    @model_validator(mode="after")
    def _ops_order(self) -> "SyntheticConfig":
        if None not in (self.min_ops, self.max_ops) and self.min_ops > self.max_ops:
            _fail([("min_ops", f"min_ops={self.min_ops} is above max_ops={self.max_ops}; "
                               "set min_ops <= max_ops")])
        return self


class FieldsConfig(BaseModel):
    model_config = _STRICT
    prompt: str = Field("question", description="Record field holding the problem text (jsonl/parquet).")
    answer: str = Field("answer", description="Record field holding the gold answer (jsonl/parquet).")
    id: Optional[str] = Field(None, description="Record field holding a unique id; null = row number.")


class GraphConfig(BaseModel):
    model_config = _STRICT
    nodes: int = Field(14, ge=4, le=22, description="Node names per graph (<= 22 words the tiny tokenizer holds; "
                       ">= 2 * (max_hops + 1): the gold path and the unreachable chain).")
    edges_per_node: float = Field(1.2, ge=0, description="Edges per node the generator aims for (extra edges that "
                                  "would shorten the gold path or reach the other candidate are rejected).")
    min_hops: int = Field(3, ge=1, le=8, description="Fewest hops from the root to the reachable candidate.")
    max_hops: int = Field(6, ge=1, le=8, description="Most hops from the root to the reachable candidate.")
    distractors: int = Field(2, ge=0, description="Dead-end branches leaving the gold path.")

    @model_validator(mode="after")
    def _sizes(self) -> "GraphConfig":
        problems = []
        if self.min_hops > self.max_hops:
            problems.append(("min_hops", f"min_hops={self.min_hops} is above max_hops={self.max_hops}; "
                                         "set min_hops <= max_hops"))
        if self.nodes < 2 * (self.max_hops + 1):
            problems.append(("nodes", f"nodes={self.nodes} is below 2 * (max_hops + 1) = {2 * (self.max_hops + 1)}: "
                                      "the gold path and the unreachable chain need max_hops + 1 nodes each; raise "
                                      "nodes or lower max_hops"))
        _fail(problems)
        return self


class ReasoningGymConfig(BaseModel):
    model_config = _STRICT
    dataset: str = Field("gsm_symbolic", description="reasoning-gym dataset name, e.g. gsm_symbolic.")


class DataConfig(BaseModel):
    model_config = _STRICT
    task: Optional[Literal["gsm8k", "math", "gsm-symbolic", "graph"]] = Field(
        None, description="Task whose recipe real models use (gsm-symbolic = offline reasoning-gym data); "
        "null = gsm8k; tiny: null = synthetic sums, graph = the graph-reachability recipe.")
    source: Optional[Literal["synthetic", "gsm8k", "math", "jsonl", "parquet", "hub", "reasoning-gym", "graph"]] = Field(
        None, description=f"Where problems come from; synthetic, graph and reasoning-gym need no network{_R}.")
    train_path: Optional[str] = Field(None, description="Training file or directory (gsm8k/math/jsonl/parquet); null for gsm8k/math = the hub dataset.")
    eval_path: Optional[str] = Field(None, description="Evaluation file; null = hold out eval_size records.")
    hub_name: Optional[str] = Field(None, description=f"HF datasets hub name, e.g. openai/gsm8k{_R}.")
    hub_config: Optional[str] = Field(None, description=f"HF datasets config name, e.g. main{_R}.")
    hub_train_split: str = Field("train", description="Hub split used for training.")
    hub_eval_split: str = Field("test", description="Hub split used for evaluation.")
    fields: FieldsConfig = Field(default_factory=FieldsConfig, description="Field mapping for generic records.")
    train_size: Optional[int] = Field(None, ge=1, description=f"Training records to keep{_R} (which may be all).")
    eval_size: Optional[int] = Field(None, ge=1, description=f"Evaluation records to keep{_R} (which may be all).")
    malformed: Literal["skip", "fail"] = Field(
        "fail", description="Records without prompt or parsable answer: fail, or skip and count them.")
    system_prompt: Optional[str] = Field(
        None, description=f"System prompt (\"\" = none); must name rollout.answer_marker for answer_rule=marker{_R}.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed for generation, shuffling and the train/eval split.")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description="Synthetic generator.")
    reasoning_gym: ReasoningGymConfig = Field(default_factory=ReasoningGymConfig, description="reasoning-gym.")
    graph: GraphConfig = Field(default_factory=GraphConfig, description="Graph-reachability generator (source graph).")

    @model_validator(mode="after")
    def _source_inputs(self) -> "DataConfig":
        problems = []  # gsm8k/math without train_path read the hub (prepare says what to do if it is unreachable)
        if self.source in ("jsonl", "parquet") and not self.train_path:
            problems.append(("train_path", f"source={self.source} reads local files; set data.train_path "
                                           "(or use source=hub with data.hub_name)"))
        if self.source == "hub" and not self.hub_name:
            problems.append(("hub_name", "source=hub needs data.hub_name, e.g. openai/gsm8k"))
        if self.eval_path and (self.source in IGNORES_EVAL_PATH or not self.train_path):
            why = (f"source={self.source} makes its own eval split" if self.source in IGNORES_EVAL_PATH
                   else "without data.train_path the splits come from the hub")
            problems.append(("eval_path", f"{self.eval_path} would be ignored: {why}; remove data.eval_path, or set "
                                          "data.train_path for local files"))
        _fail(problems)
        return self


# ---------------------------------------------------------------------------------------- model
class LoraConfig(BaseModel):
    model_config = _STRICT
    enabled: bool = Field(True, description="Train a LoRA adapter (false = train the router only).")
    rank: Optional[int] = Field(None, ge=1, description=f"LoRA rank r{_R}.")
    alpha: Optional[float] = Field(None, gt=0, description=f"LoRA alpha (scale = alpha / rank){_R}.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout probability (0 keeps the training forward equal to the rollout's).")
    targets: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1,
                               description="Module names to adapt; default all attention and MLP projections.")


class ModelConfig(BaseModel):
    model_config = _STRICT
    preset: Optional[str] = Field("tiny", description="Model preset (python cli.py models list); null with model.path "
                                  "= a local model described by its own config (its size class picks the recipe).")
    path: Optional[str] = Field(None, description="Local HF model directory or .gguf file; with a preset it must be a "
                                "copy of that preset (same vocabulary).")
    dtype: Optional[Literal["auto", "float32", "bfloat16", "float16"]] = Field(
        None, description=f"Weights dtype; auto = bfloat16 on CUDA, float32 on CPU{_R}.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapter settings.")
    gradient_checkpointing: Optional[bool] = Field(None, description=f"Recompute activations to save memory{_R}.")


# --------------------------------------------------------------------------------------- router
class RouterConfig(BaseModel):
    model_config = _STRICT
    mode: Literal["tarpo", "hard", "soft-fixed"] = Field(
        "tarpo", description="tarpo = learned router; hard = plain GRPO; soft-fixed = soft with fixed probability.")
    init_bias: Optional[list[float]] = Field(
        None, description=f"Router bias [b_hard, b_soft]; p_soft = 1/(1+e^(b_hard-b_soft)){_R}.")
    temperature: float = Field(1.0, gt=0, description=f"Router softmax temperature{_T_BOUND}.")
    loss_weight: float = Field(0.1, ge=0, description="Weight lambda of the router policy-gradient term.")
    lr: Optional[float] = Field(None, ge=MIN_LR, le=MAX_LR, description=f"Router learning rate (its own parameter "
                                f"group){_LR_BOUND}{_R}.")
    soft_probability: float = Field(0.1, ge=0, le=1, description="Soft-step probability for mode=soft-fixed.")
    soft_noise: Literal["none", "gumbel", "gaussian"] = Field(
        "none", description="Noise on soft steps' inputs, recorded so that training replays it (every rollout: "
        "training, evaluation, serving; no effect with mode=hard): gumbel = top-k weights become "
        "softmax(log w + scale * Gumbel(0,1)); gaussian = scale x embedding RMS x N(0, I) added to the mixed "
        "embedding; none = the plain mixture.")
    soft_noise_scale: float = Field(
        1.0, gt=0, description="Size of router.soft_noise: gumbel = multiplier of the Gumbel draws against log w "
        "(1 = a Gumbel-softmax at temperature 1, -> 0 = no noise); gaussian = noise std in units of the embedding "
        "table's RMS entry (1 = as large as a typical embedding entry).")

    @model_validator(mode="after")
    def _temperature_range(self) -> "RouterConfig":
        _fail([p for p in [_temperature_problem("temperature", self.temperature, "")] if p])
        return self

    @field_validator("init_bias", mode="before")
    @classmethod
    def _two_numbers(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) != 2:
            raise PydanticCustomError("init_bias_len", "expected 2 numbers, got {n}", {"n": len(value)})
        return value


# -------------------------------------------------------------------------------------- rollout
class RolloutConfig(BaseModel):
    model_config = _STRICT
    group_size: Optional[int] = Field(None, description=f"Completions per prompt (G, >= 2) sharing one advantage baseline{_R}.")
    prompts_per_step: Optional[int] = Field(None, ge=1, description=f"Prompts per optimizer step{_R}.")
    max_new_tokens: Optional[int] = Field(None, ge=1, description=f"Completion length limit (soft steps included){_R}.")
    max_prompt_tokens: Optional[int] = Field(None, ge=1, description="Prompts longer than this are left-truncated "
                                             f"(counted and warned about){_R}.")
    temperature: Optional[float] = Field(None, description="Token sampling temperature in training rollouts"
                                         f"{_T_BOUND}; the loss uses the same distribution{_R}.")
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
        if self.group_size is not None and self.group_size < 2:
            problems.append(("group_size", f"group_size={self.group_size} must be >= 2: advantages compare "
                                           "completions of the same prompt; set 2 or more (4-8 typical)"))
        problems += [p for p in [_temperature_problem("temperature", self.temperature,
                                                       "use a small value such as 0.1 for near-greedy sampling")] if p]
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
            if limit is not None and self.max_new_tokens is not None and limit > self.max_new_tokens:
                problems.append((name, f"{name}={limit} exceeds max_new_tokens={self.max_new_tokens}; "
                                       f"set it <= {self.max_new_tokens} or null for no limit"))
        total, run = self.max_latent_steps, self.max_consecutive_latent_steps
        if None not in (total, run) and run > total:
            problems.append(("max_consecutive_latent_steps", f"max_consecutive_latent_steps={run} exceeds "
                             f"max_latent_steps={total}: a run of soft steps can never be longer than their total; "
                             f"set it <= {total} or null"))
        _fail(problems)
        return self


# ------------------------------------------------------------------------------- warmup / train
class WarmupConfig(BaseModel):
    model_config = _STRICT
    enabled: Optional[bool] = Field(None, description=f"Supervised warm-up before TARPO (recipes: on for tiny only){_R}.")
    allow_real_model: bool = Field(False, description="Confirm warmup.enabled=true on a model other than tiny "
                                   "(a full fine-tune of its weights at warmup.lr).")
    steps: Optional[int] = Field(None, ge=1, description=f"Warm-up optimizer steps{_R}.")
    lr: Optional[float] = Field(None, ge=MIN_LR, le=MAX_LR, description=f"Warm-up learning rate{_LR_BOUND}{_R}.")
    batch_size: Optional[int] = Field(None, ge=1, description=f"Warm-up examples per step{_R}.")
    train_fraction: Optional[float] = Field(None, gt=0, le=1, description=f"Fraction of training records used for warm-up{_R}.")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed of the warm-up (batches) and of the start router; "
                      "separate from train.seed, so a seed sweep shares one warm-up model.")


class TrainConfig(BaseModel):
    model_config = _STRICT
    steps: Optional[int] = Field(None, ge=1, description=f"Optimizer steps (one rollout batch each){_R}.")
    lr: Optional[float] = Field(None, ge=MIN_LR, le=MAX_LR, description=f"Backbone (LoRA) learning rate{_LR_BOUND}"
                                f"{_R}.")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warm-up.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps with linear lr warm-up.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(0.1, gt=0, description="Global gradient-norm clip (router included).")
    beta: Optional[float] = Field(None, ge=0, description="KL coefficient against the reference (adapter off, initial "
                                  f"router); 0 = no KL and no reference pass{_R}.")
    clip_epsilon_low: float = Field(0.2, gt=0, description="PPO ratio clip below: 1 - eps_low.")
    clip_epsilon_high: float = Field(0.2, gt=0, description="PPO ratio clip above: 1 + eps_high (DAPO: 0.28).")
    num_iterations: int = Field(1, ge=1, description="Updates per rollout batch; 1 = on-policy (reference).")
    loss_aggregation: Literal["seq-mean", "token-mean", "dr-grpo", "grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "seq-mean", description="seq-mean (reference), token-mean (DAPO) or dr-grpo; TRL's loss_type names grpo, dapo, "
        "dr_grpo are the same three, bnpo divides each micro-batch by its own tokens (README: loss normalisations).")
    advantage_scaling: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group std, the batch std, or nothing.")
    advantage_epsilon: float = Field(1e-4, gt=0, description="Added to the std before dividing.")
    gradient_accumulation_steps: Optional[int] = Field(
        None, ge=1, description="Micro-batches per optimizer step; null = derived (rollout batch / micro_batch_size"
        " / num_processes); if set it must equal that.")
    micro_batch_size: Optional[int] = Field(None, ge=1, description="Completions per forward/backward pass per process; "
                                            f"divides prompts_per_step x group_size / num_processes{_R}.")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed for sampling, data order and initialisation.")
    checkpoint_every: Optional[int] = Field(None, ge=0, description=f"Steps between checkpoints; 0 = only at the end{_R}.")
    keep_checkpoints: Optional[int] = Field(None, ge=1, description=f"Checkpoints kept on disk (oldest deleted){_R}.")
    max_nonfinite_steps: int = Field(3, ge=0, description="Consecutive non-finite losses tolerated (step skipped).")
    num_processes: int = Field(1, ge=1, description="Processes for accelerate launch; divides rollout.prompts_per_step.")
    accelerate_config: Optional[str] = Field(None, description="accelerate config file; null = defaults.")
    log_samples_every: int = Field(10, ge=0, description="Steps between logged rollout samples; 0 = never.")
    dynamic_sampling: bool = Field(False, description="DAPO dynamic sampling: groups whose rewards are all equal (no "
                                   "advantage) are replaced by groups of new prompts, up to "
                                   "dynamic_sampling_max_rounds extra rollouts per step; one process only.")
    dynamic_sampling_max_rounds: int = Field(2, ge=1, description="Most extra rollout rounds per step with "
                                             "dynamic_sampling; each draws as many new prompts as groups are still "
                                             "missing; groups left unfilled keep equal rewards (advantage 0).")


# --------------------------------------------------------------------------------------- reward
class RewardConfig(BaseModel):
    model_config = _STRICT
    kind: Literal["auto", "numeric", "math", "text"] = Field(
        "auto", description="Answer equivalence: numeric (first number, exact), math (math-verify), auto (a stated "
        "number is compared exactly with a number gold, anything else through math-verify), text (the same words, "
        "case and a final period aside: names such as the graph task's).")
    answer_rule: Literal["marker", "boxed", "marker-or-boxed"] = Field(
        "marker", description="Where the answer is: after the last rollout.answer_marker (to the end of its line), "
        "the last \\boxed{}, or the marker when the completion has one and else the last \\boxed{}.")
    require_single_marker: bool = Field(
        False, description="Reward 0 unless the marker appears exactly once (needs answer_rule marker).")
    function: Optional[str] = Field(None, description="Training reward plugin package.module:callable, called as "
                                    "f(completion, gold, record) -> float in [-1, 1]; null = the built-in rules "
                                    "above (evaluation always uses them).")
    overlong: Literal["none", "filter", "penalty"] = Field(
        "none", description="Completions that reach rollout.max_new_tokens: none; filter = no loss for truncated ones "
        "(kept in their group's statistics); penalty = DAPO's soft length penalty (see overlong_buffer).")
    overlong_buffer: int = Field(0, ge=0, description="overlong=penalty: the penalty falls linearly from 0 at "
                                 "max_new_tokens - overlong_buffer to -1 at max_new_tokens; in [1, max_new_tokens].")

    @field_validator("function")
    @classmethod
    def _importable(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            from tarpo.reward_plugin import load_reward_function

            load_reward_function(value)  # ValueError -> "reward.function: <why>"
        return value

    def rule_settings(self) -> dict:
        """The built-in rules' keyword arguments (tarpo.rewards.make_reward_fn); the other keys are not rules."""
        return self.model_dump(include={"kind", "answer_rule", "require_single_marker"})

    @model_validator(mode="after")
    def _single_marker_needs_marker(self) -> "RewardConfig":
        if self.require_single_marker and self.answer_rule != "marker":
            _fail([("require_single_marker", f"require_single_marker=true needs answer_rule=marker, got "
                                             f"{self.answer_rule}; set one or the other")])
        return self


# ------------------------------------------------------------------------- eval / tracking / registry
class EvalConfig(BaseModel):
    model_config = _STRICT
    num_samples: Optional[int] = Field(None, ge=1, description=f"Samples per problem (k of avg@k){_R}.")
    pass_k: Optional[list[int]] = Field(None, description=f"k values for pass@k and maj@k, each in [1, num_samples]{_R}.")
    temperature: float = Field(0.5, description=f"Sampling temperature for evaluation{_T_BOUND}.")
    greedy: bool = Field(True, description="Also compute greedy (temperature 0) accuracy.")
    router_greedy: bool = Field(False, description="Route by the router's argmax instead of sampling it.")
    router: Literal["learned", "hard"] = Field(
        "learned", description="Router at evaluation (evaluate stage, eval.every curve, studies): learned = the "
        "trained router; hard = every step hard (\"train soft, run hard\"). The registered model keeps the "
        "learned router.")
    batch_size: Optional[int] = Field(None, ge=1, description=f"Sequences decoded together{_R}.")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="null = rollout.max_new_tokens.")
    max_problems: Optional[int] = Field(None, ge=1, description=f"Evaluate the first N problems{_R} (which may be all).")
    seed: int = Field(1234, ge=0, le=SEED_MAX, description="Seed for evaluation sampling.")
    every: Optional[int] = Field(None, ge=0, description="Steps between held-out evaluations during training (the "
                                 f"first every_problems eval problems, sampled only); 0 = off{_R}.")
    every_problems: Optional[int] = Field(None, ge=1, description=f"Eval problems used during training{_R}.")

    @model_validator(mode="after")
    def _rules(self) -> "EvalConfig":
        problems = []
        problems += [p for p in [_temperature_problem("temperature", self.temperature,
                                                       "greedy decoding is eval.greedy=true")] if p]
        pass_k, num_samples = self.pass_k or [], self.num_samples or max(self.pass_k or [1])
        bad = [k for k in pass_k if not 1 <= k <= num_samples]
        if bad:
            problems.append(("pass_k", f"values {bad} not in [1, num_samples={self.num_samples}]; "
                                       "lower them or raise eval.num_samples"))
        if len(set(pass_k)) != len(pass_k):
            problems.append(("pass_k", f"duplicate values in {self.pass_k}; list each k once"))
        _fail(problems)
        return self


class RuntimeConfig(BaseModel):
    model_config = _STRICT
    threads: Optional[int] = Field(None, ge=1, description="CPU intra-op threads in every stage (torch and BLAS), "
                                   f"fixed because the thread count changes float results{_R}; null there = torch's "
                                   "default (all cores).")
    deterministic: Optional[bool] = Field(None, description="torch deterministic algorithms; null = on for CPU runs, "
                                          "off on CUDA (slower there).")


class TrackingConfig(BaseModel):
    model_config = _STRICT
    enabled: bool = Field(True, description="Log runs to MLflow.")
    uri: str = Field("sqlite:///mlflow.db", min_length=1, description="MLflow tracking URI.")
    experiment: str = Field("tarpo", min_length=1, description="MLflow experiment name.")
    run_name: Optional[str] = Field(None, description="MLflow run name; null = generated.")


class RegisterConfig(BaseModel):
    model_config = _STRICT
    enabled: bool = Field(True, description="Register the trained model in the MLflow registry.")
    name: Optional[str] = Field(None, min_length=1, description=f"Registered model name{_R}.")
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
        reward: RewardConfig = Field(default_factory=RewardConfig, description="Answer rule and equivalence.")
        runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="CPU threads, determinism.")
        tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking.")
        register: RegisterConfig = Field(default_factory=RegisterConfig, description="MLflow model registry.")

        @model_validator(mode="before")
        @classmethod
        def _apply_recipe(cls, data: Any) -> Any:
            """Fill every null recipe key with the value of the recipe this model and task select."""
            return apply_recipe(data)

        @model_validator(mode="after")
        def _cross_section(self) -> "TarpoConfig":
            problems = []
            ro, tr = self.rollout, self.train
            if self.warmup.enabled and not self.is_tiny() and not self.warmup.allow_real_model:
                problems.append(("warmup.enabled", f"true on {self.model.preset or self.model.path} fully fine-tunes its "
                                 f"weights at warmup.lr={self.warmup.lr:g}; set warmup.allow_real_model=true to "
                                 "confirm, or warmup.enabled=false"))
            prompt = self.data.system_prompt
            if self.reward.answer_rule == "marker" and prompt and ro.answer_marker not in prompt:
                problems.append(("data.system_prompt", f"does not mention rollout.answer_marker {ro.answer_marker!r}, "
                                 "which reward.answer_rule=marker needs; name it in the prompt or set "
                                 "reward.answer_rule=marker-or-boxed"))
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
            if self.reward.overlong == "penalty" and not 0 < self.reward.overlong_buffer <= ro.max_new_tokens:
                problems.append(("reward.overlong_buffer", f"{self.reward.overlong_buffer} must be in [1, "
                                 f"rollout.max_new_tokens={ro.max_new_tokens}] for reward.overlong=penalty; DAPO "
                                 "uses a fifth of the length limit"))
            if tr.dynamic_sampling and tr.num_processes > 1:
                problems.append(("train.dynamic_sampling", f"works on one process only, got train.num_processes="
                                 f"{tr.num_processes} (refilled groups would have to move between processes); set "
                                 "train.num_processes=1 or train.dynamic_sampling=false"))
            if self.register.enabled and not self.tracking.enabled:
                problems.append(("register.enabled", "the registry lives in the MLflow store; set "
                                 "tracking.enabled=true or register.enabled=false"))
            _fail(problems)
            return self

        def is_tiny(self) -> bool:
            """The embedded tiny model (its own rules: warm-up, bundled base); a local dir never is."""
            return self.model.preset == "tiny" and self.model.path is None

        def accumulation_steps(self) -> int:
            """Micro-batches per optimizer step on each process (the derived default of the setting)."""
            per_process = self.rollout.prompts_per_step // self.train.num_processes * self.rollout.group_size
            return per_process // self.train.micro_batch_size

def _submodel(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def resolve_dtype(cfg_or_dtype: TarpoConfig | str, device: Any) -> "torch.dtype":  # noqa: F821
    """auto -> bfloat16 on CUDA, float32 elsewhere (without hardware bf16 a CPU decodes 2x, trains 7-20x slower)."""
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


def leaf_fields(model: type[BaseModel] = TarpoConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, pydantic FieldInfo) for every params.yaml leaf, in schema order."""
    for name, field in model.model_fields.items():
        sub = _submodel(field.annotation)
        if sub is not None:
            yield from leaf_fields(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def params_table_markdown() -> str:
    """Markdown table of every params.yaml key: type, default, description (README; never hand-edited)."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, field in leaf_fields():
        default = field.get_default(call_default_factory=True)
        shown = "null" if default is None else default if isinstance(default, str) else json.dumps(default)
        rows.append(f"| `{key}` | {_type_name(field.annotation)}{_bounds(field.metadata)} "
                    f"| `{shown}` | {field.description} |")
    return "\n".join(rows) + "\n"


def dump_yaml(cfg: TarpoConfig, sources: dict[str, str] | None = None, *, explain: bool = False) -> str:
    """The config as YAML in schema order (what `config show` prints); with `sources`, each value is followed by
    a comment naming where it came from (`# recipe qwen2.5-7b-gsm8k`); with `explain`, each value is preceded by
    its help text as a comment. The output is itself valid params."""
    help_text = {key: field.description for key, field in leaf_fields()} if explain else {}
    if sources is None and not explain:
        return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None)
    lines: list[str] = []

    def walk(node: dict, prefix: str, indent: str) -> None:
        for key, value in node.items():
            if help_text.get(prefix + key):  # a leaf, or a dict-valued leaf such as data.fields
                lines.extend(f"{indent}# {part}" for part in textwrap.wrap(help_text[prefix + key], 100, break_on_hyphens=False, break_long_words=False))
            if isinstance(value, dict):
                lines.append(f"{indent}{key}:")
                walk(value, f"{prefix}{key}.", indent + "  ")
                continue
            text = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=True, width=1 << 20)
            source = f"   # {sources.get(prefix + key, 'default')}" if sources is not None else ""
            lines.append(f"{indent}{text.strip()[1:-1]}{source}")
    walk(cfg.model_dump(mode="json"), "", "")
    return "\n".join(lines) + "\n"


# The loading API lives in tarpo/config_load.py (it needs the classes above); re-exported for callers.
from tarpo.config_load import (_did_you_mean, _load_presets, apply_recipe, config_sources,  # noqa: E402,F401
                               load_config, load_config_with_sources, model_facts, parse_override, recipe_for,
                               resolve_config, shorthand_overrides, validate_data)
