"""prepare stage: DataConfig in, disjoint train/eval jsonl and flat metrics out."""

import json

import pytest

from pipeline.prepare import run_prepare
from tarpo.config import DataConfig
from tarpo.data import DataError, normalize_prompt, read_prepared


def _run(tmp_path, **data):
    out, metrics = tmp_path / "data" / "prepared", tmp_path / "metrics" / "prepare.json"
    stats = run_prepare(data_cfg=DataConfig(**data), out_dir=out, metrics_path=metrics)
    return out, json.loads(metrics.read_text()), stats


def test_synthetic_default(tmp_path):
    out, metrics, stats = _run(tmp_path, source="synthetic", train_size=40, eval_size=10, seed=5)
    assert metrics == stats
    train, evals = read_prepared(out / "train.jsonl"), read_prepared(out / "eval.jsonl")
    assert (len(train), len(evals)) == (40, 10)
    assert metrics["train_count"] == 40 and metrics["eval_count"] == 10 and metrics["overlap_dropped"] == 0
    assert not {normalize_prompt(r.prompt) for r in train} & {normalize_prompt(r.prompt) for r in evals}
    assert all(r.solution.endswith(f"#### {r.answer}") for r in train)
    assert all(isinstance(v, int) for v in metrics.values())
    assert json.loads((out / "skipped.json").read_text()) == {"problems": []}


def test_synthetic_same_seed_same_files(tmp_path):
    a, _, _ = _run(tmp_path / "a", source="synthetic", train_size=20, eval_size=5, seed=1)
    b, _, _ = _run(tmp_path / "b", source="synthetic", train_size=20, eval_size=5, seed=1)
    for name in ("train.jsonl", "eval.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def _gsm8k_files(tmp_path):
    rows = [{"question": f"Question {i}?", "answer": f"work\n#### {i}"} for i in range(6)]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join([json.dumps(r) for r in rows + rows[:1]] + ["{oops"]) + "\n")
    evals = tmp_path / "test.jsonl"
    evals.write_text("\n".join(json.dumps(r) for r in rows[4:]) + "\n")
    return train, evals


def test_gsm8k_skip_counts_everything(tmp_path):
    train, evals = _gsm8k_files(tmp_path)
    out, metrics, _ = _run(tmp_path, source="gsm8k", train_path=str(train), eval_path=str(evals),
                           malformed="skip")
    assert metrics["skipped_rows"] == 1 and metrics["train_duplicates_dropped"] == 1
    assert metrics["overlap_dropped"] == 2 and metrics["train_count"] == 4 and metrics["eval_count"] == 2
    assert json.loads((out / "skipped.json").read_text())["problems"] == [
        f"{train}:8: bad JSON (Expecting property name enclosed in double quotes)"]


def test_gsm8k_fail_writes_nothing(tmp_path):
    train, evals = _gsm8k_files(tmp_path)
    with pytest.raises(DataError, match=f"{train}:8: bad JSON"):
        _run(tmp_path, source="gsm8k", train_path=str(train), eval_path=str(evals), malformed="fail")
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()


def test_prepare_accepts_duck_typed_config(tmp_path):
    from types import SimpleNamespace
    cfg = SimpleNamespace(source="synthetic", train_path=None, eval_path=None, hub_name=None, hub_config=None,
                          hub_train_split="train", hub_eval_split="test", fields=None, train_size=3,
                          eval_size=2, malformed="skip", seed=0, synthetic={"min_ops": 1, "max_ops": 2},
                          reasoning_gym=None)
    stats = run_prepare(data_cfg=cfg, out_dir=tmp_path / "p", metrics_path=tmp_path / "m.json")
    assert stats["train_count"] == 3 and stats["eval_count"] == 2


def test_degenerate_input_keeps_the_good_prepared_data(tmp_path):
    """Issue 11: a one-row file used to replace good prepared data ("prepared 0 train / 1 eval")."""
    out, _, _ = _run(tmp_path, source="synthetic", train_size=20, eval_size=5, seed=1)
    before = {p.name: p.read_bytes() for p in [*out.iterdir(), tmp_path / "metrics" / "prepare.json"]}
    one_row = tmp_path / "one.jsonl"
    one_row.write_text(json.dumps({"question": "Only?", "answer": "#### 1"}) + "\n")
    with pytest.raises(DataError, match=f"{one_row}: 1 record"):
        _run(tmp_path, source="gsm8k", train_path=str(one_row))
    after = {p.name: p.read_bytes() for p in [*out.iterdir(), tmp_path / "metrics" / "prepare.json"]}
    assert after == before


@pytest.mark.parametrize("data,key", [
    ({"source": "synthetic", "eval_path": "e.jsonl"}, "eval_path"),
    ({"source": "reasoning-gym", "eval_path": "e.jsonl"}, "eval_path"),
    ({"source": "hub", "hub_name": "a/b", "eval_path": "e.jsonl"}, "eval_path"),
    ({"source": "gsm8k", "eval_path": "e.jsonl"}, "eval_path"),
    ({"source": "jsonl"}, "train_path"),
])
def test_data_config_rejects_inputs_the_source_ignores(data, key):
    from tarpo.config import ConfigError, validate_data

    with pytest.raises(ConfigError, match=f"data.{key}: "):
        validate_data({"data": data})


@pytest.mark.parametrize("source", ["gsm8k", "math"])
def test_real_sources_need_no_train_path_in_params(source):
    assert DataConfig(source=source).train_path is None  # the hub, or one line at prepare time
