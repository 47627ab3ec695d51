"""pipeline/register.py: versions, aliases and the champion decision in a real MLflow registry."""

import json

import pytest

from pipeline.register import RegisterError, metric_value, run_register, served_rollout
from tarpo.checkpoint import save_weights
from tarpo.config import TarpoConfig
from tarpo.factory import load_policy
from tarpo.models import build_tiny
from tarpo.tracking import MlflowTracker
from tests.mlflow_store import fresh_store, one_torch_thread

_one_thread = pytest.fixture(autouse=True)(one_torch_thread)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """(config, base dir, trained dir): the tiny base and a LoRA adapter + routers saved from it."""
    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny(root / "base")
    cfg = TarpoConfig(model={"lora": {"rank": 4, "alpha": 8}}, rollout={"max_new_tokens": 12})
    policy, _, _ = load_policy(cfg.model, cfg.router, device="cpu", base_path=base)
    save_weights(policy, root / "trained")
    return cfg, base, root / "trained"


def registered(tmp_path, tmp_path_factory, monkeypatch, tiny_model, name="tarpo-test"):
    """A function registering one trained run with a given eval score; returns register.json."""
    monkeypatch.chdir(tmp_path)
    uri = fresh_store(tmp_path, tmp_path_factory)
    base_cfg, base, trained = tiny_model
    cfg = base_cfg.model_copy(update={"tracking": base_cfg.tracking.model_copy(update={"uri": uri}),
                                      "register": base_cfg.register.model_copy(update={"name": name})})

    def register(score: float, run: int, eval_set: str = "set-a") -> dict:
        tracker = MlflowTracker(uri, "exp", artifact_location=str(tmp_path / "artifacts"), run_name=f"r{run}",
                                tags={"eval.set_hash": eval_set})
        tracker.close()
        (tmp_path / "run_info.json").write_text(json.dumps({"run_id": tracker.run_id}))
        (tmp_path / "eval.json").write_text(json.dumps({"warmup/avg_at_k": 0.0, "tarpo/avg_at_k": score}))
        out = tmp_path / "metrics" / "register.json"
        result = run_register(cfg=cfg, trained_dir=trained, base_model_dir=base, run_info_path=tmp_path / "run_info.json",
                              eval_metrics_path=tmp_path / "eval.json", metrics_path=out)
        assert json.loads(out.read_text()) == result
        return result

    return cfg, register


def test_champion_moves_only_to_better_versions(tmp_path, tmp_path_factory, monkeypatch, tiny_model):
    from mlflow import MlflowClient

    cfg, register = registered(tmp_path, tmp_path_factory, monkeypatch, tiny_model)
    client = MlflowClient(tracking_uri=cfg.tracking.uri, registry_uri=cfg.tracking.uri)

    def holder(alias):
        return int(client.get_model_version_by_alias("tarpo-test", alias).version)

    first = register(0.30, 1)
    assert first["version"] == 1 and first["aliases"] == ["candidate", "champion"]
    assert first["champion"]["promoted"] and first["champion"]["previous_version"] is None
    assert (holder("candidate"), holder("champion")) == (1, 1)

    worse = register(0.20, 2)
    assert worse["version"] == 2 and worse["aliases"] == ["candidate"]
    assert worse["champion"] | {"reason": None} == {"alias": "champion", "metric": "avg_at_k", "value": 0.2,
                                                   "previous_version": 1, "previous_value": 0.3, "promoted": False,
                                                   "reason": None, "eval_set": "set-a"}
    assert (holder("candidate"), holder("champion")) == (2, 1)

    better = register(0.45, 3)
    assert better["aliases"] == ["candidate", "champion"] and better["champion"]["previous_value"] == 0.3
    assert (holder("candidate"), holder("champion")) == (3, 3)
    assert client.get_model_version("tarpo-test", "3").tags["eval.avg_at_k"] == "0.45"
    assert client.get_model_version("tarpo-test", "3").tags["eval.set_hash"] == "set-a"

    elsewhere = register(0.90, 4, eval_set="set-b")   # higher, but on other problems: not comparable
    assert not elsewhere["champion"]["promoted"] and "another eval set" in elsewhere["champion"]["reason"]
    assert (holder("candidate"), holder("champion")) == (4, 3)


def test_register_disabled_writes_a_note(tmp_path):
    cfg = TarpoConfig(register={"enabled": False})
    out = tmp_path / "register.json"
    assert run_register(cfg=cfg, trained_dir=tmp_path, base_model_dir=None, eval_metrics_path=tmp_path / "e.json",
                        run_info_path=tmp_path / "r.json", metrics_path=out)["registered"] is False
    assert json.loads(out.read_text())["registered"] is False


def test_missing_inputs_are_one_line(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TarpoConfig(tracking={"uri": fresh_store(tmp_path, tmp_path_factory)})
    with pytest.raises(RegisterError, match="run_info.json is missing; run the train stage"):
        run_register(cfg=cfg, trained_dir=tmp_path, base_model_dir=None, eval_metrics_path=tmp_path / "eval.json",
                     run_info_path=tmp_path / "run_info.json")


def test_metric_lookup():
    assert metric_value({"avg_at_k": 0.5, "tarpo/avg_at_k": 0.1}, "avg_at_k") == 0.5
    assert metric_value({"tarpo/pass_at_8": 0.7}, "pass_at_8") == 0.7
    with pytest.raises(RegisterError, match="must be one of: tarpo/avg_at_k"):
        metric_value({"tarpo/avg_at_k": 0.1}, "accuracy")


def test_served_model_samples_at_the_evaluation_temperature():
    """tiny trains at rollout temperature 1.0 but is scored at eval.temperature 0.5: the registered model serves at
    the temperature of its registered scores, with every other rollout setting as trained."""

    cfg = TarpoConfig()
    assert (cfg.rollout.temperature, cfg.eval.temperature) == (1.0, 0.5)
    served = served_rollout(cfg)
    assert served.temperature == 0.5
    assert served.model_dump() | {"temperature": None} == cfg.rollout.model_dump() | {"temperature": None}
