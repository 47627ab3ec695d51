"""tarpo/data.py: split loading (files, hub, held-out eval, degenerate splits), prompts, prepared files."""

import re
import sys

import pytest

from tarpo.data import build_prompt, default_system_prompt, load_splits, read_prepared
from tarpo.hygiene import normalize_prompt
from tarpo.records import DataError
from tarpo.synthetic import synthetic_problems
from tests.data_files import GSM8K_ROWS, FakeHub, write_jsonl


# ---------------------------------------------------------------- hub and reasoning-gym splits

def _gsm8k_hub_rows(prefix, n):
    return [{"question": f"{prefix} question {i}?", "answer": f"work\n#### {i}"} for i in range(n)]


def test_gsm8k_without_train_path_reads_the_hub(monkeypatch):
    hub = FakeHub({("openai/gsm8k", "train"): _gsm8k_hub_rows("train", 6),
                   ("openai/gsm8k", "test"): _gsm8k_hub_rows("test", 3)})
    monkeypatch.setitem(sys.modules, "datasets", hub)
    splits = load_splits(source="gsm8k")
    assert hub.calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert [r.answer for r in splits.eval] == ["0", "1", "2"] and len(splits.train) == 6
    assert splits.train[0].source == "gsm8k" and splits.train[0].solution.endswith("#### 0")
    assert splits.train[0].id == "gsm8k-train-1" and splits.eval[0].id == "gsm8k-test-1"


def test_math_without_train_path_reads_the_hub(monkeypatch):
    rows = lambda split: [{"problem": f"{split} p{i}", "solution": f"so \\boxed{{{i}}}"} for i in range(3)]  # noqa: E731
    hub = FakeHub({("DigitalLearningGmbH/MATH-lighteval", "train"): rows("train"),
                   ("DigitalLearningGmbH/MATH-lighteval", "test"): rows("test"),
                   ("me/math", "train"): rows("mine"), ("me/math", "test"): rows("mine-test")})
    monkeypatch.setitem(sys.modules, "datasets", hub)
    default = load_splits(source="math")
    assert [r.answer for r in default.eval] == ["0", "1", "2"] and default.eval[0].source == "math"
    mine = load_splits(source="math", hub={"name": "me/math", "config": "all"})
    assert hub.calls[-2:] == [("me/math", "all", "train"), ("me/math", "all", "test")]
    assert mine.train[0].prompt == "mine p0"


@pytest.mark.parametrize("datasets_module", [None, FakeHub({})], ids=["not-installed", "unreachable"])
@pytest.mark.parametrize("source", ["gsm8k", "math"])
def test_real_source_without_file_or_hub_is_one_line_naming_both_fixes(monkeypatch, datasets_module, source):
    monkeypatch.setitem(sys.modules, "datasets", datasets_module)
    with pytest.raises(DataError) as err:
        load_splits(source=source)
    message = str(err.value)
    assert "\n" not in message
    assert f"data.source {source} without data.train_path" in message
    assert "set data.train_path=" in message and "make the hub reachable (pip install datasets" in message
    assert ("not installed" if datasets_module is None else "ConnectionError: Couldn't reach") in message


def test_source_hub_unreachable_names_local_alternative(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", FakeHub({}))
    with pytest.raises(DataError, match="data.hub_name: hub dataset 'x/y'.*set data.source to 'jsonl'"):
        load_splits(source="hub", hub={"name": "x/y"})


def test_reasoning_gym_splits_are_disjoint():
    splits = load_splits(source="reasoning-gym", reasoning_gym_dataset="gsm_symbolic", train_size=12,
                         eval_size=4, seed=0)
    assert len(splits.eval) == 4 and 0 < len(splits.train) <= 12
    assert not {normalize_prompt(r.prompt) for r in splits.train} & {normalize_prompt(r.prompt) for r in splits.eval}


# ---------------------------------------------------------------- files, held-out eval, degenerate splits

def test_load_splits_files(tmp_path):
    shared = {"question": "Shared question?", "answer": "#### 1"}
    train = write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS + [shared, shared], ["not json"])
    evals = write_jsonl(tmp_path / "eval.jsonl", [shared, {"question": "Only eval?", "answer": "#### 2"}])
    splits = load_splits(source="gsm8k", train_path=str(train), eval_path=str(evals))
    assert splits.stats["train_duplicates_dropped"] == 1 and splits.stats["overlap_dropped"] == 1
    assert splits.stats["skipped_rows"] == 1 and splits.problems == [f"{train}:5: bad JSON (Expecting value)"]
    assert splits.stats["train_count"] == 2 and splits.stats["eval_count"] == 2
    train_keys = {normalize_prompt(r.prompt) for r in splits.train}
    assert not train_keys & {normalize_prompt(r.prompt) for r in splits.eval}


def test_load_splits_holds_out_eval_when_no_eval_file(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(20)]
    splits = load_splits(source="gsm8k", train_path=str(write_jsonl(tmp_path / "t.jsonl", rows)),
                         eval_size=5, seed=3)
    assert len(splits.eval) == 5 and len(splits.train) == 15
    again = load_splits(source="gsm8k", train_path=str(tmp_path / "t.jsonl"), eval_size=5, seed=3)
    assert [r.id for r in again.eval] == [r.id for r in splits.eval]


def test_load_splits_errors():
    with pytest.raises(DataError, match="data.source: unknown source 'csv'"):
        load_splits(source="csv", train_path="x")
    with pytest.raises(DataError, match="data.train_path: required"):
        load_splits(source="jsonl")


def _rows(n, start=0):
    return [{"question": f"Question {i}?", "answer": f"#### {i}"} for i in range(start, start + n)]


@pytest.mark.parametrize("case", ["empty", "blank", "all-skipped", "one-row", "same-file", "not-above-eval-size",
                                  "empty-eval-file", "train-all-overlap", "directory"])
def test_degenerate_splits_are_one_clear_error(tmp_path, case):
    train, other = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    kwargs, expected = {}, ""
    if case == "empty":
        train.write_text("")
        expected = f"{train}: no records (empty or blank); point data.train_path at a file"
    elif case == "blank":
        train.write_text("\n  \n\t\n")
        expected = f"{train}: no records (empty or blank)"
    elif case == "all-skipped":
        write_jsonl(train, [{"question": "q", "answer": "no marker"}, {"answer": "#### 1"}])
        kwargs = {"malformed": "skip"}
        expected = (f"{train}: all 2 rows were malformed and skipped (first: {train}:1: answer has no '#### N' "
                    "final line)")
    elif case == "one-row":
        write_jsonl(train, _rows(1))
        expected = f"{train}: 1 record(s), not more than the 1 held out for evaluation"
    elif case == "same-file":
        write_jsonl(train, _rows(5))
        kwargs = {"eval_path": str(tmp_path / "." / "train.jsonl")}
        expected = "data.eval_path: " + str(tmp_path / "." / "train.jsonl") + " is the training file"
    elif case == "not-above-eval-size":
        write_jsonl(train, _rows(5))
        kwargs = {"eval_size": 5}
        expected = f"{train}: 5 record(s), not more than the 5 held out for evaluation; add records, lower data.eval_size"
    elif case == "empty-eval-file":
        write_jsonl(train, _rows(5))
        other.write_text("\n")
        kwargs = {"eval_path": str(other)}
        expected = f"{other}: no records (empty or blank); point data.eval_path at a file"
    elif case == "train-all-overlap":
        write_jsonl(train, _rows(3))
        write_jsonl(other, _rows(3))
        kwargs = {"eval_path": str(other)}
        expected = "the train split is empty after dropping 0 duplicates and 3 prompts that are also in the eval set"
    else:
        train.mkdir()
        expected = f"{train}: is a directory"
    with pytest.raises(DataError) as err:
        load_splits(source="gsm8k", train_path=str(train), **kwargs)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_smallest_usable_file_splits_two_and_one(tmp_path):
    splits = load_splits(source="gsm8k", train_path=str(write_jsonl(tmp_path / "t.jsonl", _rows(3))))
    assert (len(splits.train), len(splits.eval)) == (2, 1)
    with pytest.raises(DataError, match="only 1 training problem"):   # 2 rows: 1 held out, 1 left to train on
        load_splits(source="gsm8k", train_path=str(write_jsonl(tmp_path / "u.jsonl", _rows(2))))


@pytest.mark.parametrize("source,extra", [("synthetic", {}), ("reasoning-gym", {"reasoning_gym_dataset": "x"}),
                                          ("hub", {"hub": {"name": "a/b"}}), ("gsm8k", {})])
def test_eval_path_ignored_by_the_source_is_an_error(source, extra):
    with pytest.raises(DataError, match="data.eval_path: "):
        load_splits(source=source, eval_path="eval.jsonl", **extra)


# ---------------------------------------------------------------- prompts and prepared files

class TemplateTokenizer:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"


def test_build_prompt_uses_chat_template_and_system_prompt():
    text = build_prompt(TemplateTokenizer(), "  Tom has 3 apples.  ")
    assert text == f"system:{default_system_prompt()}|user:Tom has 3 apples.|assistant:"
    assert "####" in default_system_prompt() and "Answer:" in default_system_prompt("Answer:")
    assert build_prompt(TemplateTokenizer(), "q", "Be brief.") == "system:Be brief.|user:q|assistant:"
    assert build_prompt(TemplateTokenizer(), "q", "") == "user:q|assistant:"
    assert build_prompt(object(), "q", "S").endswith("User: q\nAssistant:")


def test_build_prompt_with_real_tokenizer_template():
    import transformers
    from tokenizers import Tokenizer, models
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, "a")))
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert build_prompt(tok, "q?", "S") == "<system>S<user>q?<assistant>"


def test_read_prepared_roundtrip(tmp_path):
    records = synthetic_problems(3, seed=0)
    path = write_jsonl(tmp_path / "train.jsonl", [r.to_dict() for r in records])
    assert read_prepared(path) == records
    write_jsonl(path, [{"id": "1", "prompt": "p"}])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: missing field 'answer'")):
        read_prepared(path)
