"""Recipes: the values of every model- and task-dependent knob, chosen by the model (and task) named.

A user who types `--model qwen2.5-7b` means "train what the paper trained on this model", not "the 2-core CPU
profile with a bigger backbone". Every key listed in `RECIPE_KEYS` is `null` in params.yaml and in the schema,
meaning "the recipe's value"; `tarpo.config` fills it. Precedence: recipe < params.yaml < `--set`.

Which recipe (`select_recipe`):
1. `tiny` (and no `model.path`): the embedded CPU profile: the synthetic sums, or `tiny-graph` with `data.task: graph`.
2. a paper preset (qwen2.5-1.5b/3b/7b, llama-3.1-8b): `<preset>-<task>`, task = `data.task` (null = gsm8k).
3. anything else (other presets, local model dirs): the generic recipe of its size class, `generic-<class>-<task>`,
   with lengths capped to half the model's context each and the register name made from the model's name.

A recipe is a flat mapping `dotted.key -> value`, built from a task base plus a few per-model changes, so the
differences read at a glance (and the README table is generated from these dicts). `RECIPES_VERSION` goes up
whenever a value changes: it is logged with each run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

RECIPES_VERSION = 3  # 2: tiny tuned (8 prompts/step, 100 steps, 400 eval problems), eval.every
#                      3: tiny retuned (rollout temperature 1.0, no KL, 130 steps, lr 5e-4); new keys
#                         rollout.temperature and train.beta; recipe tiny-graph added (no tiny value changed)
TASKS = ("gsm8k", "math", "gsm-symbolic")
DEFAULT_TASK = "gsm8k"
SMALL_MODEL_PARAMETERS = 1.0e9  # below this a model is "small": it fits without gradient checkpointing
PAPER_SYSTEM_PROMPT = "Reason step by step, then give the final answer after '####' (or in \\boxed{})."


@dataclass(frozen=True)
class Recipe:
    """One named set of values; `source` says in one line where they come from."""

    name: str
    source: str
    values: dict[str, Any] = field(default_factory=dict)
    base: Optional[str] = None  # the recipe it was derived from (for the README's "differs from" column)


# --------------------------------------------------------------------------------------------- tiny
# The embedded default: exactly what params.yaml set for tiny before recipes existed (a test pins it).
TINY = Recipe("tiny", "embedded 2-core CPU profile: tiny model + synthetic 1-2 step sums, tuned and measured in README", {
    "data.source": "synthetic",
    "data.hub_name": None,
    "data.hub_config": None,
    "data.train_size": 2000,
    "data.eval_size": 400,                        # 400 problems: paired stderr ~0.012 on avg@k
    "data.system_prompt": "Answer after ####.",  # short: the tiny model learns the format in warm-up
    "data.synthetic.min_ops": 1,
    "data.synthetic.max_ops": 2,
    "data.synthetic.max_operand": 9,              # tiny is ~38 % right after warm-up
    "data.synthetic.level": 1,
    "model.dtype": "auto",
    "model.lora.rank": 8,
    "model.lora.alpha": 16.0,
    "model.gradient_checkpointing": False,
    "router.init_bias": [4.6, 0.0],
    "router.lr": 1.0e-3,                          # higher than the paper's 1e-4 so the router moves in 100 steps
    "rollout.group_size": 8,
    "rollout.prompts_per_step": 8,                # 8 x 8 = 64 samples per step: less noisy than 4 x 8 x 2 steps
    "rollout.max_new_tokens": 32,
    "rollout.max_prompt_tokens": 64,
    "rollout.temperature": 1.0,                   # training rollouts only (eval stays 0.5): 34 % of groups all
                                                  # right or all wrong, not 52 % as at 0.5, so more groups teach
    "warmup.enabled": True,
    "warmup.steps": 300,
    "warmup.lr": 1.0e-3,                          # 3e-3 leaves tiny at ~15 %; 1e-3 reaches ~38 % in 300 steps
    "warmup.batch_size": 16,
    "warmup.train_fraction": 1.0,
    "train.steps": 130,                           # tuned on 2 cores (README "Results"): the most that fits 15 min
    "train.beta": 0.0,                            # no KL: the reference pass cost 15 % of a step, and no gain
    "train.lr": 5.0e-4,                           # LoRA on tiny (1e-3: seed 44 +0.009; 2e-3 collapsed); paper 5e-6 is 1.5-7B
    "train.micro_batch_size": 16,
    "train.checkpoint_every": 20,
    "train.keep_checkpoints": 2,
    "eval.num_samples": 4,
    "eval.pass_k": [1, 4],
    "eval.batch_size": 32,
    "eval.max_problems": 400,
    "eval.every": 20,                             # held-out curve: 100 problems x 4 samples, ~12 s a point
    "eval.every_problems": 100,
    "runtime.threads": 1,                         # results depend on it; 1 lets `study --jobs 2` run dvc repro's runs
    "reward.kind": "auto",
    "reward.answer_rule": "marker",
    "register.name": "tarpo-tiny",
})

# The graph-reachability task on tiny (`data.task: graph`): the tiny profile with prompts of ~95 tokens (17 edges)
# and worked paths of <= 27 tokens, sized for a 3-mode x 3-seed study on a 2-core machine shared with others
# (studies/graph/tuning.json records every probe: 400 warm-up steps at lr 1e-3 left tiny at 3 % held-out).
TINY_GRAPH = Recipe("tiny-graph", "tiny on the graph-reachability task (tarpo/graph.py), sized for a 2-core study", {
    **TINY.values,
    "data.source": "graph",
    "data.train_size": 3000,
    "data.eval_size": 200,
    "rollout.max_new_tokens": 32,                 # the longest worked path (6 hops) + answer is 26 tokens
    "rollout.max_prompt_tokens": 112,             # the longest prompt with the chat template is ~100 tokens
    "warmup.steps": 600,                          # the loss still falls slowly at 600 (tuning.json): more did not fit
    "warmup.lr": 3.0e-3,                          # 1e-3: loss flat at 1.49 from step 200 to 400
    "train.steps": 30,                            # what 9 runs fit in ~1 h on 2 shared cores (~20 s a step)
    "eval.max_problems": 200,
    "eval.every": 0,                              # no held-out curve: each point cost a minute on the shared cores
    "eval.every_problems": 50,
    "reward.kind": "text",                        # the gold is a node name: exact words, no math-verify
    "register.name": "tarpo-tiny-graph",
}, base="tiny")

# ----------------------------------------------------------------------------------- paper (per task)
# The authors' training scripts (TARPO, arXiv 2606.05859; their default hyper-parameters): LoRA 32/64 on all
# projections, lr 5e-6 / router 1e-4, 1024/1024 tokens, 8 prompts per optimizer step, one epoch, save every 250
# (keep 3), bf16 on CUDA (dtype auto), gradient checkpointing. Our fixes stay (renormalised soft weights, ...).
_PAPER_COMMON = {
    "data.hub_name": None,
    "data.hub_config": None,
    "data.train_size": None,                      # the whole split: one epoch
    "data.eval_size": None,
    "data.system_prompt": PAPER_SYSTEM_PROMPT,    # instruct models often answer in \boxed{}: accept both
    "data.synthetic.min_ops": 2,                  # synthetic knobs: unused unless data.source=synthetic
    "data.synthetic.max_ops": 3,
    "data.synthetic.max_operand": 20,
    "data.synthetic.level": 1,
    "model.dtype": "auto",                        # bfloat16 on CUDA, float32 on CPU
    "model.lora.rank": 32,
    "model.lora.alpha": 64.0,
    "model.gradient_checkpointing": True,
    "router.init_bias": [4.6, 0.0],               # p_soft ~ 1 % (README of the authors: 1.5B/7B)
    "router.lr": 1.0e-4,
    "rollout.prompts_per_step": 8,
    "rollout.max_new_tokens": 1024,
    "rollout.max_prompt_tokens": 1024,
    "rollout.temperature": 0.5,
    "warmup.enabled": False,                      # real models start from their own weights
    "warmup.steps": 100,                          # used only with warmup.allow_real_model: true
    "warmup.lr": 1.0e-5,
    "warmup.batch_size": 8,
    "warmup.train_fraction": 0.1,
    "train.lr": 5.0e-6,
    "train.beta": 0.005,
    "train.checkpoint_every": 250,
    "train.keep_checkpoints": 3,
    "eval.batch_size": 64,
    "eval.max_problems": None,                    # the whole test split; k as the authors' eval scripts (below)
    "eval.every": 100,                            # as verl's test_freq: a held-out curve, ~10 points per epoch
    "eval.every_problems": 64,
    "runtime.threads": None,                      # torch's default (all cores); set it to compare CPU runs
    "reward.answer_rule": "marker-or-boxed",
}
_TASK_VALUES = {
    # openai/gsm8k main: 7473 train prompts / 8 per step = 934 steps (one epoch); G 4, micro-batch 8 (x4 accumulation)
    "gsm8k": {"data.source": "gsm8k", "data.hub_name": "openai/gsm8k", "data.hub_config": "main",
              "rollout.group_size": 4, "train.micro_batch_size": 8, "train.steps": 934,
              "eval.num_samples": 16, "eval.pass_k": [1, 16], "reward.kind": "numeric"},
    # MATH train 7500 / 8 = 937 steps; G 8, micro-batch 16 (x4). The original hendrycks/competition_math was taken
    # down from the hub; DigitalLearningGmbH/MATH-lighteval is the same 7500/5000 split with problem/solution fields.
    "math": {"data.source": "math", "data.hub_name": "DigitalLearningGmbH/MATH-lighteval", "data.hub_config": "default",
             "rollout.group_size": 8, "train.micro_batch_size": 16, "train.steps": 937,
             "eval.num_samples": 8, "eval.pass_k": [1, 8], "reward.kind": "math"},
    # offline: reasoning-gym gsm_symbolic (GSM8K-derived templates, installs from PyPI); 2000 prompts = 250 steps
    "gsm-symbolic": {"data.source": "reasoning-gym", "data.train_size": 2000, "data.eval_size": 200,
                     "rollout.group_size": 4, "train.micro_batch_size": 8, "train.steps": 250,
                     "eval.num_samples": 16, "eval.pass_k": [1, 16], "reward.kind": "numeric"},
}
_TASK_SOURCES = {"gsm8k": "authors' GSM8K training script", "math": "authors' MATH training script",
                 "gsm-symbolic": "authors' GSM8K training script on offline reasoning-gym gsm_symbolic data,"}

PAPER_MODELS = {  # preset -> per-model changes to the task recipe
    "qwen2.5-1.5b": {},
    "qwen2.5-3b": {"router.init_bias": [2.2, 0.0]},  # authors' README: 2.2 for the 3B (p_soft ~ 10 %)
    "qwen2.5-7b": {},
    "llama-3.1-8b": {},
}


def _task_recipe(task: str) -> Recipe:
    return Recipe(f"paper-{task}", f"{_TASK_SOURCES[task]} defaults (TARPO, arXiv 2606.05859)",
                  {**_PAPER_COMMON, **_TASK_VALUES[task], "register.name": "tarpo-{model}-" + task})


def _paper_recipe(preset: str, task: str) -> Recipe:
    base = _task_recipe(task)
    values = {**base.values, **PAPER_MODELS[preset], "register.name": f"tarpo-{preset}-{task}"}
    return Recipe(f"{preset}-{task}", f"{base.source}, model {preset}", values, base=base.name)


# -------------------------------------------------------------------------------------------- generic
# Models the paper did not train (smollm2-135m, qwen2.5-0.5b, qwen2.5-coder-0.5b, local dirs): the paper task
# recipe, with gradient checkpointing off and the whole rollout batch in one micro-batch below 1B parameters.
_SIZE_CLASS_VALUES = {
    "small": {"model.gradient_checkpointing": False, "train.micro_batch_size": 32},
    "large": {},
}
_SIZE_CLASS_SOURCES = {"small": "under 1B parameters: no gradient checkpointing, micro-batch 32",
                       "large": "1B parameters or more: as the paper"}


def _generic_recipe(size_class: str, task: str) -> Recipe:
    base = _task_recipe(task)
    values = {**base.values, **_SIZE_CLASS_VALUES[size_class]}
    return Recipe(f"generic-{size_class}-{task}", f"{base.source}; {_SIZE_CLASS_SOURCES[size_class]}; "
                  "lengths capped at half the context each", values, base=base.name)


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    TINY,
    TINY_GRAPH,
    *(_task_recipe(t) for t in TASKS),
    *(_paper_recipe(p, t) for p in PAPER_MODELS for t in TASKS),
    *(_generic_recipe(s, t) for s in _SIZE_CLASS_VALUES for t in TASKS),
]}
RECIPE_KEYS: tuple[str, ...] = tuple(TINY.values)  # every recipe sets exactly these keys (a test checks it)


# ------------------------------------------------------------------------------------------ selecting
class RecipeError(ValueError):
    """The model/task combination has no recipe; the message is `dotted.key: what to do`."""


def size_class(parameters: Optional[float]) -> str:
    """`small` below 1B parameters, else `large`; an unknown size counts as large (checkpointing on: slower, never OOM)."""
    return "small" if parameters is not None and parameters < SMALL_MODEL_PARAMETERS else "large"


def model_label(name: str) -> str:
    """A registry-safe label from a preset or directory name: `My Model_v2` -> `my-model-v2`."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.") or "model"


def select_recipe(*, preset: Optional[str], path: Optional[str], task: Optional[str], model_name: str,
                  parameters: Optional[float] = None, context_length: Optional[int] = None,
                  init_bias: Optional[list[float]] = None) -> Recipe:
    """The recipe for a model (preset and/or local path) and task, specialised to the model.

    Generic recipes take the model's name (register name), context length (lengths capped at half of it each) and
    the preset's router init bias when it has one.
    """
    if preset == "tiny" and path is None:
        if task == "graph":
            return TINY_GRAPH
        if task is not None:
            raise RecipeError(f"data.task: tiny has two tasks (null = the synthetic sums, graph); set data.task=null "
                              f"or graph, or pick a real model for {task}")
        return TINY
    task = task or DEFAULT_TASK
    if task == "graph":
        raise RecipeError("data.task: graph has a recipe for the tiny model only; use --model tiny, or set "
                          "data.task=null and data.source=graph with your own lengths")
    if task not in TASKS:
        raise RecipeError(f"data.task: unknown task {task!r}; one of {', '.join(TASKS)}")
    if preset in PAPER_MODELS:
        return RECIPES[f"{preset}-{task}"]
    generic = RECIPES[f"generic-{size_class(parameters)}-{task}"]
    values = dict(generic.values)
    values["register.name"] = values["register.name"].format(model=model_label(model_name))
    if init_bias is not None:
        values["router.init_bias"] = [float(b) for b in init_bias]
    if context_length:
        for key in ("rollout.max_prompt_tokens", "rollout.max_new_tokens"):
            values[key] = min(values[key], max(1, context_length // 2))
    return Recipe(generic.name, generic.source, values, base=generic.base)


# ------------------------------------------------------------------------------------------ README table
def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return str(value).replace("|", "\\|")


def recipes_table_markdown() -> str:
    """Two tables for the README: every recipe with its source and changes, and each base recipe's values."""
    bases = [r for r in RECIPES.values() if r.base is None]
    lines = ["| recipe | source | differs from its base in |", "|---|---|---|"]
    for recipe in RECIPES.values():
        if recipe.base is None:
            changes = "(base)"
        else:
            base = RECIPES[recipe.base].values
            changes = ", ".join(f"`{k}={_shown(v)}`" for k, v in recipe.values.items() if base.get(k) != v)
            changes = f"`{recipe.base}`: " + (changes or "nothing")
        lines.append(f"| `{recipe.name}` | {recipe.source} | {changes} |")
    lines += ["", "| key | " + " | ".join(f"`{r.name}`" for r in bases) + " |",
              "|---|" + "---|" * len(bases)]
    for key in RECIPE_KEYS:
        lines.append(f"| `{key}` | " + " | ".join(f"`{_shown(r.values[key])}`" for r in bases) + " |")
    return "\n".join(lines) + "\n"
