"""The trained TARPO model as an MLflow pyfunc: `models:/NAME@champion` -> hybrid generation.

A stock transformers flavour cannot hold the router (the action head), so the logged model is
  tarpo_model.json   base model reference + model/router/rollout settings + system prompt + answer rule
  weights/           `tarpo.checkpoint.save_weights` output: LoRA adapter + router + initial router
  base/              only when bundled (default: `tiny`, whose weights come from the warm-up stage
                     and exist nowhere else): the HF base model dir itself
  code/tarpo         this package (MLflow `code_paths`), so loading needs no checkout
and `load_context` rebuilds the policy through `tarpo.factory.load_policy`, exactly as training does.
A real preset is resolved on the serving machine (preset name / local path), like training.

The served `answer` column is read with the rule the model was trained and evaluated with (`reward.answer_rule`
and `rollout.answer_marker`, stored under "reward" in tarpo_model.json): a model trained to answer in \\boxed{}
serves the boxed answer. A model logged before the rule was recorded (format 1) has no "reward" entry; it is read
with "marker-or-boxed", which returns what the old marker-only reading returned whenever that found an answer,
and the last \\boxed{} where it found none.

mlflow is imported lazily: `TarpoPyfuncModel` is created on first access (module `__getattr__`) with
`__module__`/`__qualname__` pointing here, so cloudpickle stores a reference, not a copy of the class.
"""

from __future__ import annotations

import json
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

MODEL_JSON = "tarpo_model.json"
FORMAT_VERSION = 2        # 2: "reward" (the answer rule) recorded; 1: without it
READABLE_FORMATS = (1, 2)
LEGACY_ANSWER_RULE = "marker-or-boxed"   # format 1 recorded no rule; see the module docstring
OUTPUT_COLUMNS = ("completion", "marked_completion", "answer", "soft_steps")
DEFAULT_PARAMS = {"max_new_tokens": 0, "temperature": 0.0, "greedy": False, "seed": 0, "batch_size": 8}
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate", "pydantic",
                "pyyaml", "numpy", "pandas", "mlflow")


class ServingError(ValueError):
    """Bad input to the served model (one line)."""


def _dump(section) -> dict:
    return section.model_dump(mode="json") if hasattr(section, "model_dump") else dict(section)


def model_spec(*, model_cfg, router_cfg, rollout_cfg, reward_cfg, base_model_dir: str | Path | None, bundled: bool,
               system_prompt: str | None = None) -> dict:
    """The content of tarpo_model.json (everything but weights needed to rebuild and run the policy).

    "reward" keeps the answer rule (with the answer kind and the single-marker rule, for the record): the served
    answer is read as training and evaluation read it.
    """
    from tarpo.models import PRESETS
    from tarpo.rewards import ANSWER_RULES

    preset = PRESETS.get(model_cfg.preset)
    reward_dump = _dump(reward_cfg)
    reward = {k: reward_dump[k] for k in ("kind", "answer_rule", "require_single_marker")}
    if reward["answer_rule"] not in ANSWER_RULES:  # an unresolved config (a recipe value not filled in)
        raise ServingError(f"reward.answer_rule {reward['answer_rule']!r} is not one of {', '.join(ANSWER_RULES)}; "
                           "log the model from a resolved config")
    return {"format": FORMAT_VERSION, "model": _dump(model_cfg), "router": _dump(router_cfg),
            "rollout": _dump(rollout_cfg), "reward": reward, "system_prompt": system_prompt,
            "base": {"preset": model_cfg.preset, "hub_id": getattr(preset, "hub_id", None),
                     "path": str(base_model_dir) if base_model_dir else model_cfg.path, "bundled": bundled}}


def _questions(model_input) -> list[str]:
    """Questions from a DataFrame (`prompt` column, or its only column), a dict of lists, a list or one string."""
    import pandas as pd

    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if isinstance(model_input, pd.DataFrame):
        columns = list(model_input.columns)
        if "prompt" not in columns and len(columns) != 1:
            raise ServingError(f"input needs a 'prompt' column; got columns {columns}")
        model_input = model_input["prompt" if "prompt" in columns else columns[0]].tolist()
    questions = list(model_input)
    if not questions or not all(isinstance(q, str) for q in questions):
        raise ServingError("input must be a non-empty list of strings or a DataFrame with a 'prompt' column")
    return questions


def _settings(spec: dict, tokenizer, vocab_size: int, params: dict):
    from tarpo.config import RolloutConfig, RouterConfig
    from tarpo.rollout import RolloutSettings

    rollout_cfg, router_cfg = RolloutConfig(**spec["rollout"]), RouterConfig(**spec["router"])
    overrides: dict[str, Any] = {"greedy_tokens": bool(params["greedy"]), "greedy_router": bool(params["greedy"])}
    if params["max_new_tokens"]:
        overrides["max_new_tokens"] = int(params["max_new_tokens"])
    if params["temperature"]:
        overrides["temperature"] = float(params["temperature"])
    return RolloutSettings.from_config(rollout_cfg, router_cfg, tokenizer, vocab_size, **overrides)


def generate(policy, tokenizer, spec: dict, questions: list[str], params: dict | None = None):
    """Hybrid generation for `questions`; a DataFrame with OUTPUT_COLUMNS, one row per question."""
    import pandas as pd
    import torch

    from tarpo.data import build_prompt
    from tarpo.render import completion_text, render_text
    from tarpo.rewards import find_answer
    from tarpo.rollout import encode_prompts, rollout

    params = {**DEFAULT_PARAMS, **{k: v for k, v in (params or {}).items() if v is not None}}
    marker = spec["rollout"]["answer_marker"]
    answer_rule = answer_rule_of(spec)
    settings = _settings(spec, tokenizer, policy.vocab_size, params)
    generator = torch.Generator(device=policy.device).manual_seed(int(params["seed"]))
    prompts = [build_prompt(tokenizer, q, spec.get("system_prompt"), marker=marker) for q in questions]
    rows = []
    batch_size = max(1, int(params["batch_size"]))
    for start in range(0, len(prompts), batch_size):
        ids, mask = encode_prompts(tokenizer, prompts[start:start + batch_size],
                                   spec["rollout"]["max_prompt_tokens"], device=policy.device)
        out = rollout(policy, ids, mask, settings=settings, generator=generator)
        for row in range(out.num_rows):
            text = completion_text(tokenizer, out, row)
            rows.append({"completion": text, "marked_completion": render_text(tokenizer, out, row),
                         "answer": find_answer(text, answer_rule, marker) or "",
                         "soft_steps": int(out.soft_counts[row])})
    return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def answer_rule_of(spec: dict) -> str:
    """The rule that reads the served answer: the recorded `reward.answer_rule`, else (format 1) the legacy one."""
    return (spec.get("reward") or {}).get("answer_rule", LEGACY_ANSWER_RULE)


def load_served_policy(model_json: str | Path, weights_dir: str | Path, base_dir: str | Path | None = None,
                       device: str | None = None):
    """(policy, tokenizer, spec) from logged artifacts; `base_dir` is the bundled base model, if any."""
    from tarpo.config import ModelConfig, RouterConfig
    from tarpo.factory import load_policy

    spec = json.loads(Path(model_json).read_text())
    if spec.get("format") not in READABLE_FORMATS:
        raise ServingError(f"{model_json}: format {spec.get('format')!r} is not one of "
                           f"{', '.join(map(str, READABLE_FORMATS))}; re-log the model")
    base = base_dir if base_dir is not None else spec["base"]["path"]
    if base is not None and not Path(base).exists():
        base = None  # the training machine's path: fall back to resolving the preset here
    policy, tokenizer, _ = load_policy(ModelConfig(**spec["model"]), RouterConfig(**spec["router"]), device=device,
                                       trained_dir=weights_dir, base_path=base)
    policy.eval()
    return policy, tokenizer, spec


def _make_pyfunc_class():
    import mlflow.pyfunc
    import pandas as pd

    def _predict(self, context, model_input, params=None):
        return generate(self.policy, self.tokenizer, self.spec, _questions(model_input), params)

    # A DataFrame hint is one MLflow accepts without inferring a schema from it (the explicit signature()
    # does that job); without any hint MLflow warns on every class creation, past any warnings filter.
    _predict.__annotations__ = {"model_input": pd.DataFrame}

    class TarpoPyfuncModel(mlflow.pyfunc.PythonModel):
        """Rebuilds the hybrid policy from the logged artifacts and generates with it."""

        def load_context(self, context):
            import os

            artifacts = context.artifacts
            self.policy, self.tokenizer, self.spec = load_served_policy(
                artifacts["tarpo_model"], artifacts["weights"], artifacts.get("base"),
                device=os.environ.get("TARPO_SERVING_DEVICE") or None)

        predict = _predict

    TarpoPyfuncModel.__module__ = __name__
    TarpoPyfuncModel.__qualname__ = "TarpoPyfuncModel"
    return TarpoPyfuncModel


_PYFUNC_CLASS = None


def __getattr__(name: str):
    """`tarpo.serving.TarpoPyfuncModel`, built on first use so importing this module needs no mlflow."""
    global _PYFUNC_CLASS
    if name == "TarpoPyfuncModel":
        if _PYFUNC_CLASS is None:
            _PYFUNC_CLASS = _make_pyfunc_class()
        return _PYFUNC_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def signature():
    """Input: one string column (named `prompt` in a DataFrame, or a plain list); output: OUTPUT_COLUMNS.

    The input column is unnamed on purpose: a named one makes MLflow reject a plain list of strings.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    outputs = Schema([ColSpec("string", c) for c in OUTPUT_COLUMNS[:3]] + [ColSpec("long", "soft_steps")])
    kinds = {"max_new_tokens": "long", "temperature": "double", "greedy": "boolean", "seed": "long",
             "batch_size": "long"}
    params = ParamSchema([ParamSpec(k, kinds[k], v) for k, v in DEFAULT_PARAMS.items()])
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=outputs, params=params)


def requirements() -> list[str]:
    """Pinned to what this process runs (explicit, so MLflow does not load the model to infer them)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def log_tarpo_model(tracker_or_run_id, *, trained_dir: str | Path, base_model_dir: str | Path | None, model_cfg,
                    router_cfg, rollout_cfg, reward_cfg, name: str = "model", system_prompt: str | None = None,
                    bundle_base: bool | None = None, tracking_uri: str | None = None) -> str:
    """Log the pyfunc model to a run (a tracker or a run id); returns its model URI.

    `bundle_base` None = bundle the base dir for `tiny` only. `tracking_uri` defaults to the tracker's
    store, else MLflow's current one.
    """
    import mlflow

    run_id = tracker_or_run_id if isinstance(tracker_or_run_id, str) else tracker_or_run_id.run_id
    uri = tracking_uri or getattr(tracker_or_run_id, "uri", None)
    if uri:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    trained_dir = Path(trained_dir)
    if not (trained_dir / "router.safetensors").is_file():
        raise ServingError(f"{trained_dir} holds no trained weights (router.safetensors missing); run the train stage")
    bundled = model_cfg.preset == "tiny" if bundle_base is None else bundle_base
    if bundled and (base_model_dir is None or not Path(base_model_dir).is_dir()):
        raise ServingError(f"base model dir {base_model_dir} does not exist; it must be bundled for {model_cfg.preset}")
    import tarpo

    with tempfile.TemporaryDirectory(prefix="tarpo-model-") as tmp:
        spec_path = Path(tmp) / MODEL_JSON
        spec = model_spec(model_cfg=model_cfg, router_cfg=router_cfg, rollout_cfg=rollout_cfg, reward_cfg=reward_cfg,
                          base_model_dir=base_model_dir, bundled=bundled, system_prompt=system_prompt)
        spec_path.write_text(json.dumps(spec, indent=2))
        artifacts = {"tarpo_model": str(spec_path), "weights": str(trained_dir)}
        if bundled:
            artifacts["base"] = str(base_model_dir)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            return _log(name, artifacts, tarpo)
        with mlflow.start_run(run_id=run_id, nested=active is not None):
            return _log(name, artifacts, tarpo)


def _log(name: str, artifacts: dict, package) -> str:
    import warnings

    import mlflow.pyfunc

    with warnings.catch_warnings():
        # advice that does not apply: the signature is explicit, and an input example would make MLflow
        # load the whole model once more just to validate it
        warnings.filterwarnings("ignore", message=".*(type hints|input example was not provided).*")
        entry = Path(package.__file__).parent / "pyfunc_model.py"   # models from code: no pickled object
        info = mlflow.pyfunc.log_model(name=name, python_model=str(entry), artifacts=artifacts,
                                       code_paths=[str(Path(package.__file__).parent)], signature=signature(),
                                       pip_requirements=requirements())
    return info.model_uri
