"""register stage: log the trained model to its training run, register a version, move aliases.

Reads the `register`, `tracking`, `model`, `router`, `rollout`, `reward` and `data.system_prompt` params, the run
id the train stage wrote, and the eval metrics. Every new version gets `register.aliases` (default
`candidate`); `register.champion_alias` moves to it only when its `register.champion_metric` is
strictly higher than the current champion's, which is stored on each version as the tag
`eval.<metric>` (so the decision never depends on a run that may have been deleted).
The base recorded with the model is what train really loaded (`models/tarpo/base.json`): the warm-up output is
bundled only when training started from it (after checking it is unchanged); tiny is bundled (it exists nowhere
else); presets and local dirs are referenced by name/path.
Writes `metrics/register.json` atomically: version, aliases set, champion decision with both numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline import paths
from pipeline.evaluate import EVAL_SET_TAG  # run tag written by evaluate; copied onto each version
from pipeline.publish import fault_point, signals_held
from tarpo.io import write_json_atomic

TRAINED_SECTION = "tarpo"  # eval.json keys are "<model>/<metric>"; the registered model is the TARPO one


class RegisterError(RuntimeError):
    """A missing input or metric; the message is one line naming it."""


def _read_json(path: str | Path, stage: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RegisterError(f"{path} is missing; run the {stage} stage first")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RegisterError(f"{path} is not valid JSON ({exc})") from None


def metric_value(metrics: dict, name: str, path: str | Path = "eval metrics") -> float:
    """`name` from eval metrics: the exact key, else `tarpo/<name>` (the trained model's section).

    >>> metric_value({"warmup/avg_at_k": 0.1, "tarpo/avg_at_k": 0.3}, "avg_at_k")
    0.3
    """
    for key in (name, f"{TRAINED_SECTION}/{name}"):
        if key in metrics:
            value = float(metrics[key])
            if not math.isfinite(value):
                raise RegisterError(f"{path}: {key} is {value}; cannot rank a non-finite score")
            return value
    raise RegisterError(f"{path} has no {name!r} (nor {TRAINED_SECTION}/{name}); register.champion_metric "
                        f"must be one of: {', '.join(sorted(metrics))}")


def _current_champion(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_decision(client, name: str, alias: str, metric: str, value: float, version: str,
                      eval_set: str | None = None) -> dict:
    """Whether `version` takes `alias`, with both numbers and the reason. Scores are compared only when both
    versions were evaluated on the same eval set (tag `eval.set_hash`: same problems, samples and settings);
    a champion without the tag (registered before it existed) is compared as before."""
    current = _current_champion(client, name, alias)
    decision = {"alias": alias, "metric": metric, "value": value, "previous_version": None,
                "previous_value": None, "eval_set": eval_set}
    if current is None:
        return {**decision, "promoted": True, "reason": "no champion yet"}
    decision["previous_version"] = int(current.version)
    theirs = current.tags.get(EVAL_SET_TAG)
    if eval_set and theirs and theirs != eval_set:
        return {**decision, "promoted": False,
                "reason": f"champion v{current.version} was evaluated on another eval set ({theirs} vs {eval_set}): "
                          f"{metric} values are not comparable; evaluate both on the same problems and settings"}
    try:
        previous = float(current.tags[f"eval.{metric}"])
    except (KeyError, ValueError):
        return {**decision, "promoted": True, "reason": f"champion v{current.version} has no eval.{metric} tag"}
    decision["previous_value"] = previous if math.isfinite(previous) else None
    promoted = not math.isfinite(previous) or value > previous
    reason = (f"{metric} {value:.4f} {'>' if promoted else '<='} champion v{current.version}'s {previous:.4f}")
    return {**decision, "promoted": promoted, "reason": reason}


def trained_base(trained_dir: str | Path) -> tuple[str | None, bool]:
    """(base dir to record, bundle it?) from models/tarpo/base.json, the start weights train really loaded."""
    from tarpo.model_info import weights_sha256

    base = _read_json(Path(trained_dir) / paths.TRAINED_BASE, "train").get("base") or {}
    if any(str(b.get("weights_sha256", "")).startswith("random:") for b in (base, base.get("made_from") or {})):
        raise RegisterError(f"{trained_dir} was trained from {base.get('path')}, a `models make-shape` directory "
                            "with RANDOM weights (benchmarks only): not registered; train a real model to register")
    if not base.get("from_warmup"):
        return base.get("path"), base.get("preset") == "tiny"
    if not Path(base["path"]).is_dir() or weights_sha256(base["path"]) != base.get("weights_sha256"):
        raise RegisterError(f"{base['path']} changed since training started from it (weights fingerprint differs); "
                            "rerun train (or dvc repro) before registering")
    return base["path"], True


def verify_trained_dir(trained_dir: str | Path, lora_enabled: bool) -> None:
    """Load what will be registered (every router, the LoRA adapter) before any registry version exists: a missing
    adapter or a truncated router registered a broken version under the candidate alias."""
    from safetensors.torch import load_file

    from tarpo.checkpoint import ROUTER_PREFIXES
    from tarpo.router import RouterLoadError, load_router

    trained_dir = Path(trained_dir)
    again = "; re-run train (or dvc repro) before registering"
    for name in ROUTER_PREFIXES:
        try:
            hidden = int(_read_json(trained_dir / f"{name}.json", "train")["hidden_size"])
            load_router(trained_dir, hidden, name=name)
        except RouterLoadError as exc:
            raise RegisterError(f"{exc}{again}") from None
        except (KeyError, TypeError, ValueError):
            raise RegisterError(f"{trained_dir / f'{name}.json'}: no hidden_size{again}") from None
    if not lora_enabled:
        return
    adapter = trained_dir / "adapter"
    for part in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter / part).is_file():
            raise RegisterError(f"{adapter / part}: missing (model.lora.enabled=true){again}")
    _read_json(adapter / "adapter_config.json", "train")
    try:
        load_file(str(adapter / "adapter_model.safetensors"))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a torn file
        raise RegisterError(f"{adapter / 'adapter_model.safetensors'}: cannot be read ({str(exc)[:120]}){again}") \
            from None


def served_rollout(cfg):
    """The rollout settings the registered model serves with: the training rollouts' own, except the sampling
    temperature, which is the evaluation's (the temperature its registered scores were measured at)."""
    return cfg.rollout.model_copy(update={"temperature": cfg.eval.temperature})


def run_register(*, cfg, trained_dir: str | Path = paths.TRAINED_DIR, base_model_dir: str | Path | None = None,
                 eval_metrics_path: str | Path = paths.EVAL_METRICS, run_info_path: str | Path = paths.RUN_INFO,
                 metrics_path: str | Path = paths.REGISTER_INFO) -> dict:
    """Log + register the trained model, set aliases; returns what it wrote to `metrics_path`.

    `base_model_dir` None = the base recorded by train (trained_base); tests pass a dir explicitly.
    """
    reg = cfg.register
    if not reg.enabled:
        result = {"registered": False, "reason": "register.enabled=false"}
        write_json_atomic(metrics_path, result)
        return result
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact file otherwise
    from mlflow import MlflowClient, register_model

    from tarpo.serving import log_tarpo_model
    from tarpo.tracking import check_tracking_uri

    check_tracking_uri(cfg.tracking.uri)
    run_id = _read_json(run_info_path, "train").get("run_id")
    if not run_id:
        raise RegisterError(f"{run_info_path} has no run_id; train with tracking.enabled=true before registering")
    value = metric_value(_read_json(eval_metrics_path, "evaluate"), reg.champion_metric, eval_metrics_path)
    verify_trained_dir(trained_dir, cfg.model.lora.enabled)
    bundle = None
    if base_model_dir is None:
        base_model_dir, bundle = trained_base(trained_dir)
    model_uri = log_tarpo_model(run_id, trained_dir=trained_dir, base_model_dir=base_model_dir, bundle_base=bundle,
                                model_cfg=cfg.model, router_cfg=cfg.router, rollout_cfg=served_rollout(cfg),
                                reward_cfg=cfg.reward, tracking_uri=cfg.tracking.uri,
                                system_prompt=cfg.data.system_prompt)
    client = MlflowClient(tracking_uri=cfg.tracking.uri, registry_uri=cfg.tracking.uri)
    eval_set = client.get_run(run_id).data.tags.get(EVAL_SET_TAG)   # set by the evaluate stage
    tags = {f"eval.{reg.champion_metric}": repr(value), "run_id": run_id, **({EVAL_SET_TAG: eval_set} if eval_set else {})}
    with signals_held():  # Ctrl-C / SIGTERM: a version gets its aliases and metrics/register.json, or never exists
        version = register_model(model_uri, reg.name, tags=tags)
        fault_point("register", "version")
        for alias in reg.aliases:
            client.set_registered_model_alias(reg.name, alias, version.version)
        decision = champion_decision(client, reg.name, reg.champion_alias, reg.champion_metric, value,
                                     version.version, eval_set)
        aliases = list(reg.aliases)
        if decision["promoted"]:
            client.set_registered_model_alias(reg.name, reg.champion_alias, version.version)
            aliases.append(reg.champion_alias)
        result = {"registered": True, "name": reg.name, "version": int(version.version), "run_id": run_id,
                  "model_uri": model_uri, "aliases": aliases, "champion": decision}
        write_json_atomic(metrics_path, result)
    return result
