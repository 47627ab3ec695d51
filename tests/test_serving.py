"""tarpo/serving.py: the registered pyfunc loads from `models:/NAME@champion` and generates on tiny."""

import json

import pytest

from tarpo.checkpoint import save_weights
from tarpo.config import TarpoConfig
from tarpo.factory import load_policy
from tarpo.models import build_tiny
from tarpo.serving import (LEGACY_ANSWER_RULE, OUTPUT_COLUMNS, ServingError, _questions, answer_rule_of, generate,
                           model_spec)
from tarpo.tracking import MlflowTracker
from tests.mlflow_store import fresh_store, one_torch_thread

_one_thread = pytest.fixture(autouse=True)(one_torch_thread)


def test_questions_from_every_input_shape():
    import pandas as pd

    assert _questions("2+2?") == ["2+2?"]
    assert _questions(["a", "b"]) == ["a", "b"]
    assert _questions({"prompt": ["a"]}) == ["a"]
    assert _questions(pd.DataFrame({"prompt": ["a", "b"], "other": [1, 2]})) == ["a", "b"]
    assert _questions(pd.DataFrame({"question": ["a"]})) == ["a"]  # the only column
    with pytest.raises(ServingError, match="'prompt' column; got columns \\['q', 'x'\\]"):
        _questions(pd.DataFrame({"q": ["a"], "x": ["b"]}))
    with pytest.raises(ServingError):
        _questions([1, 2])


def test_spec_records_the_base_reference():
    cfg = TarpoConfig(model={"preset": "qwen2.5-7b"})
    spec = model_spec(model_cfg=cfg.model, router_cfg=cfg.router, rollout_cfg=cfg.rollout, reward_cfg=cfg.reward,
                      base_model_dir=None, bundled=False)
    assert spec["base"] == {"preset": "qwen2.5-7b", "hub_id": "Qwen/Qwen2.5-7B-Instruct", "path": None,
                            "bundled": False}
    assert spec["rollout"]["answer_marker"] == "####" and spec["rollout"]["soft_top_k"] == 10
    assert spec["model"]["lora"]["rank"] == 32 and spec["router"]["mode"] == "tarpo"
    # the real-model recipe reads answers after the marker or else in the last box; serving must read them so too
    assert spec["reward"] == {"kind": "numeric", "answer_rule": "marker-or-boxed", "require_single_marker": False}
    assert answer_rule_of(spec) == "marker-or-boxed"
    with pytest.raises(ServingError, match="reward.answer_rule None is not one of marker, boxed"):
        model_spec(model_cfg=cfg.model, router_cfg=cfg.router, rollout_cfg=cfg.rollout, base_model_dir=None,
                   reward_cfg={"kind": "auto", "answer_rule": None, "require_single_marker": False}, bundled=False)


# one completion that every answer rule reads differently: boxed 12, marker 13
TWO_ANSWERS = "so \\boxed{12}. #### 13"
RULE_ANSWERS = {"boxed": "12", "marker": "13", "marker-or-boxed": "13"}


def test_a_model_logged_without_an_answer_rule_reads_marker_or_boxed():
    """Format-1 specs (logged before the rule was recorded) keep the marker answer they served, and a boxed one
    where the marker rule found nothing."""
    legacy = {"format": 1, "rollout": {"answer_marker": "####"}}
    assert answer_rule_of(legacy) == LEGACY_ANSWER_RULE == "marker-or-boxed"


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    cfg = TarpoConfig(model={"lora": {"rank": 4, "alpha": 8}}, rollout={"max_new_tokens": 4})
    policy, tokenizer, _ = load_policy(cfg.model, cfg.router, device="cpu",
                                       base_path=build_tiny(tmp_path_factory.mktemp("tiny") / "base"), seed=3)
    return cfg, policy, tokenizer


@pytest.mark.parametrize("rule", sorted(RULE_ANSWERS))
def test_generate_reads_the_answer_with_the_recorded_rule(rule, tiny_policy, monkeypatch):
    """tiny's random weights write no box, so the completion text is fixed; everything else is the serving path."""
    import tarpo.render

    cfg, policy, tokenizer = tiny_policy
    reward = cfg.reward.model_copy(update={"answer_rule": rule})
    spec = model_spec(model_cfg=cfg.model, router_cfg=cfg.router, rollout_cfg=cfg.rollout, reward_cfg=reward,
                      base_model_dir=None, bundled=False)
    monkeypatch.setattr(tarpo.render, "completion_text", lambda tokenizer, out, row: TWO_ANSWERS)
    out = generate(policy, tokenizer, spec, ["What is 6 times 7?"], {"max_new_tokens": 2})
    assert out["answer"].tolist() == [RULE_ANSWERS[rule]]


@pytest.mark.slow
def test_champion_loads_and_generates(tmp_path, tmp_path_factory, monkeypatch):
    """A model trained and evaluated with boxed answers is registered, loaded back and serves boxed answers."""
    import mlflow
    import pandas as pd

    import tarpo.render
    from pipeline.register import run_register

    monkeypatch.chdir(tmp_path)
    uri = fresh_store(tmp_path, tmp_path_factory)
    base = build_tiny(tmp_path / "base")
    cfg = TarpoConfig(model={"lora": {"rank": 4, "alpha": 8}}, rollout={"max_new_tokens": 10},
                      reward={"answer_rule": "boxed"}, data={"system_prompt": "Put the answer in \\\\boxed{}."},
                      tracking={"uri": uri}, register={"name": "tarpo-serving"})
    policy, tokenizer, _ = load_policy(cfg.model, cfg.router, device="cpu", base_path=base, seed=3)
    save_weights(policy, tmp_path / "trained")
    tracker = MlflowTracker(uri, "exp", artifact_location=str(tmp_path / "artifacts"))
    tracker.close()
    (tmp_path / "run_info.json").write_text(json.dumps({"run_id": tracker.run_id}))
    (tmp_path / "eval.json").write_text(json.dumps({"tarpo/avg_at_k": 0.5}))
    run_register(cfg=cfg, trained_dir=tmp_path / "trained", base_model_dir=base, eval_metrics_path=tmp_path / "eval.json",
                 run_info_path=tmp_path / "run_info.json", metrics_path=tmp_path / "register.json")

    import shutil
    shutil.rmtree(base)  # the registered model is self-contained: tiny's base travels with it
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/tarpo-serving@champion")
    questions = ["Tom has 3 apples and buys 4 more. How many apples does he have?", "What is 6 times 7?"]
    params = {"max_new_tokens": 6, "seed": 11, "temperature": 0.7}
    out = model.predict(pd.DataFrame({"prompt": questions}), params=params)
    assert list(out.columns) == list(OUTPUT_COLUMNS) and len(out) == 2
    assert all(isinstance(t, str) and t for t in out["completion"])
    assert all(0 <= s <= 6 for s in out["soft_steps"])
    assert out["marked_completion"].str.replace("⟦", "").str.replace("⟧", "").tolist() == out["completion"].tolist()

    again = model.predict(questions, params=params)  # a plain list works too; same seed, same text
    assert again["completion"].tolist() == out["completion"].tolist()
    spec = {"rollout": cfg.rollout.model_dump(mode="json"), "router": cfg.router.model_dump(mode="json"),
            "system_prompt": cfg.data.system_prompt}  # the recipe's prompt, logged with the model
    direct = generate(policy, tokenizer, spec, questions, params)  # the policy before logging
    assert direct["completion"].tolist() == out["completion"].tolist()

    # tiny's random weights write no box: fix the decoded text, and the served answer is the boxed one
    monkeypatch.setattr(tarpo.render, "completion_text", lambda tokenizer, out, row: TWO_ANSWERS)
    assert model.predict(questions[:1], params=params)["answer"].tolist() == [RULE_ANSWERS["boxed"]]
