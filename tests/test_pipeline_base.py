"""The model trained is the model named: warm-up fingerprints, base selection, base records, evaluate --model.

One small workspace per module: prepared synthetic data, a 2-step tiny warm-up (the output `dvc repro` makes) and a
second local model (another seed, vocabulary 640) to switch to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline import paths
from pipeline.common import BaseModelMismatch, check_trained_base, choose_base, configured_base
from pipeline.evaluate import run_evaluate_model
from pipeline.prepare import run_prepare
from pipeline.register import RegisterError, trained_base
from pipeline.train import run_train
from pipeline.warmup import run_warmup
from tarpo.config import load_config, shorthand_overrides
from tarpo.model_info import weights_sha256
from tarpo.models import build_tiny

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
SMALL = ["data.train_size=16", "data.eval_size=4", "data.source=synthetic", "warmup.steps=2", "warmup.batch_size=4",
         "tracking.enabled=false", "register.enabled=false", "rollout.group_size=2", "rollout.prompts_per_step=2",
         "rollout.max_new_tokens=6", "rollout.max_prompt_tokens=64", "train.steps=1", "train.micro_batch_size=4",
         "eval.num_samples=1", "eval.pass_k=[1]", "eval.batch_size=4", "eval.max_problems=2", "eval.greedy=false",
         "eval.every=0"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    cfg = load_config(PARAMS, SMALL)
    run_prepare(data_cfg=cfg.data, out_dir=root / "data", metrics_path=root / "prepare.json")
    run_warmup(cfg=cfg, train_path=root / "data/train.jsonl", out_dir=root / "warmup", metrics_path=root / "w.json",
               plot_path=root / "w.csv", models_dir=root / "models", progress=False)
    other = build_tiny(root / "other-model", seed=7, vocab_size=640)
    return root, cfg, other


def _other_cfg(other: Path, *extra: str):
    return load_config(PARAMS, [*SMALL, *shorthand_overrides(model=str(other)), *extra])


def test_warmup_records_the_base_it_was_made_from(ws):
    root, cfg, _ = ws
    marker = json.loads((root / "warmup" / paths.WARMUP_MARKER).read_text())
    assert marker["ran"]
    assert marker["made_from"] == {"preset": "tiny", "path": str(root / "models" / "tiny"),
                                   "weights_sha256": weights_sha256(root / "models" / "tiny")}
    base, record = choose_base(cfg, root / "warmup", root / "models", log=lambda _: None)
    assert base == root / "warmup" and record["from_warmup"] is True
    assert record["weights_sha256"] == weights_sha256(root / "warmup") != marker["made_from"]["weights_sha256"]


def test_train_with_another_model_loads_that_model_never_the_warmup(ws, tmp_path, monkeypatch):
    root, _, other = ws
    import tarpo.factory

    loaded, real_load = [], tarpo.factory.load_policy

    def spy(*args, **kwargs):
        policy, tokenizer, resolved = real_load(*args, **kwargs)
        loaded.append((resolved.path, policy.vocab_size, kwargs.get("base_path")))
        return policy, tokenizer, resolved

    monkeypatch.setattr(tarpo.factory, "load_policy", spy)
    said: list[str] = []
    cfg = _other_cfg(other)
    assert cfg.warmup.enabled is False and not cfg.is_tiny()
    run_train(cfg=cfg, train_path=root / "data/train.jsonl", warmup_dir=root / "warmup",
              checkpoint_dir=tmp_path / "checkpoints", trained_dir=tmp_path / "tarpo", metrics_path=tmp_path / "m.json",
              plot_path=tmp_path / "p.csv", heldout_plot_path=tmp_path / "h.csv", run_info_path=tmp_path / "run_info.json",
              models_dir=root / "models",
              log=said.append, progress=False)
    assert loaded == [(other, 640, None)]  # its own weights and vocabulary, no base_path override
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["base"] == {"preset": None, "path": str(other), "weights_sha256": weights_sha256(other),
                            "from_warmup": False}
    assert json.loads((tmp_path / "tarpo" / paths.TRAINED_BASE).read_text())["base"] == info["base"]
    assert any(f"not using {root / 'warmup'}" in line for line in said)
    # evaluate/register with the tiny config refuse this adapter; with the same model they accept it
    tiny_base = choose_base(load_config(PARAMS, SMALL), root / "warmup", root / "models", log=lambda _: None)[1]
    with pytest.raises(BaseModelMismatch, match="was trained from local model"):
        check_trained_base(tmp_path / "tarpo", tiny_base)
    check_trained_base(tmp_path / "tarpo", info["base"])
    assert trained_base(tmp_path / "tarpo") == (str(other), False)  # referenced by path, never bundled


def test_warmup_made_from_another_model_stops_with_what_to_run(ws, tmp_path):
    root, cfg, other = ws
    stale = shutil.copytree(root / "warmup", tmp_path / "warmup")
    marker = json.loads((stale / paths.WARMUP_MARKER).read_text())
    marker["made_from"] = configured_base(_other_cfg(other), root / "models")
    (stale / paths.WARMUP_MARKER).write_text(json.dumps(marker))
    with pytest.raises(BaseModelMismatch) as info:
        choose_base(cfg, stale, root / "models")
    message = str(info.value)
    assert f"was made from local model ({other}, weights {weights_sha256(other)[:12]})" in message
    assert "not from the configured model tiny" in message and "python cli.py warmup" in message
    assert "\n" not in message


def test_skipped_warmup_with_warmup_expected_stops(ws, tmp_path):
    _, cfg, _ = ws
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / paths.WARMUP_MARKER).write_text('{"ran": false}')
    with pytest.raises(BaseModelMismatch, match="was made from nothing"):
        choose_base(cfg, tmp_path / "w", ws[0] / "models")


def test_register_bundles_the_warmup_only_while_unchanged(ws, tmp_path):
    root, cfg, _ = ws
    _, record = choose_base(cfg, root / "warmup", root / "models", log=lambda _: None)
    (tmp_path / "tarpo").mkdir()
    (tmp_path / "tarpo" / paths.TRAINED_BASE).write_text(json.dumps({"base": record}))
    assert trained_base(tmp_path / "tarpo") == (str(root / "warmup"), True)
    changed = dict(record, weights_sha256="0" * 64)
    (tmp_path / "tarpo" / paths.TRAINED_BASE).write_text(json.dumps({"base": changed}))
    with pytest.raises(RegisterError, match="changed since training"):
        trained_base(tmp_path / "tarpo")


def test_evaluate_one_model_by_itself_counts_long_prompts(ws, tmp_path):
    root, _, other = ws
    from tarpo.data import read_prepared
    from tarpo.models import load_tiny_tokenizer

    cfg = _other_cfg(other, "rollout.max_prompt_tokens=40")
    metrics, out_dir = run_evaluate_model(cfg=cfg, eval_path=root / "data/eval.jsonl", out_root=tmp_path,
                                          models_dir=root / "models", log=lambda _: None)
    assert out_dir == tmp_path / "other-model" and (out_dir / "completions.jsonl").is_file()
    assert json.loads((out_dir / "metrics.json").read_text()) == metrics
    assert metrics["base"]["weights_sha256"] == weights_sha256(other) and 0 <= metrics["avg_at_k"] <= 1
    tokenizer = load_tiny_tokenizer()  # independent count: chat-templated prompt longer than 40 tokens
    records = read_prepared(root / "data/eval.jsonl")[:2]
    texts = [tokenizer.apply_chat_template(
        [{"role": "system", "content": cfg.data.system_prompt}, {"role": "user", "content": r.prompt}],
        tokenize=False, add_generation_prompt=True) for r in records]
    expected = sum(len(tokenizer.encode(t, add_special_tokens=False)) > 40 for t in texts)
    assert metrics["prompts_truncated"] == expected > 0


def test_cli_evaluate_model_needs_no_trained_model(ws, tmp_path, monkeypatch):
    import cli

    _, _, other = ws
    monkeypatch.chdir(tmp_path)
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    args = ["evaluate", "--model", str(other), *[a for s in SMALL for a in ("--set", s)]]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "other-model: avg_at_k" in result.output
    assert (tmp_path / paths.SINGLE_EVAL_DIR / "other-model" / "metrics.json").is_file()
    assert not (tmp_path / paths.EVAL_METRICS).exists()  # the pipeline's comparison is untouched
