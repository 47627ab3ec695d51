"""tarpo/readers.py: one reader per source on fixture files in each published schema; malformed rows by file:line."""

import json
import re
import sys

import pytest

from tarpo.data import read_prepared
from tarpo.readers import read_gsm8k, read_hub, read_math, read_reasoning_gym, read_table
from tarpo.records import DataError, ReadReport, Record
from tarpo.rewards import score
from tests.data_files import GSM8K_ROWS, FakeHub, write_jsonl, write_parquet


# ---------------------------------------------------------------- GSM8K

def test_gsm8k_jsonl(tmp_path):
    records = read_gsm8k(write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS))
    assert [r.answer for r in records] == ["72", "1,000"]
    assert records[0].prompt.startswith("Natalia") and records[0].source == "gsm8k"
    assert "<<" not in records[0].solution and records[0].solution.endswith("#### 72")
    assert len({r.id for r in records}) == 2


def test_gsm8k_parquet(tmp_path):
    records = read_gsm8k(write_parquet(tmp_path / "test.parquet", GSM8K_ROWS))
    assert [r.answer for r in records] == ["72", "1,000"]


MALFORMED_LINES = ['{"question": "q3", "answer": "#### 3"', json.dumps({"answer": "#### 4"}),
                   json.dumps({"question": "q5", "answer": ""}), json.dumps({"question": "q6", "answer": "six"}),
                   "[1, 2]"]


def test_gsm8k_malformed_skip_reports_file_line(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS, MALFORMED_LINES)
    report = ReadReport()
    records = read_gsm8k(path, malformed="skip", report=report)
    assert len(records) == 2 and report.skipped == 5 and report.rows_read == 7
    assert report.problems[0].startswith(f"{path}:3: bad JSON")
    assert report.problems[1] == f"{path}:4: missing field 'question'"
    assert report.problems[2] == f"{path}:5: empty field 'answer'"
    assert report.problems[3] == f"{path}:6: answer has no '#### N' final line"
    assert report.problems[4] == f"{path}:7: expected a JSON object, got list"


@pytest.mark.parametrize("bad", MALFORMED_LINES)
def test_gsm8k_malformed_fail_raises_with_file_line(tmp_path, bad):
    path = write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS + GSM8K_ROWS[:1], [bad])  # bad row on line 4
    with pytest.raises(DataError, match=re.escape(f"{path}:4: ")):
        read_gsm8k(path, malformed="fail")


def test_parquet_malformed_row_number(tmp_path):
    path = write_parquet(tmp_path / "g.parquet", GSM8K_ROWS + [{"question": "q", "answer": None}])
    with pytest.raises(DataError, match=re.escape(f"{path}:3: field 'answer' is null")):
        read_gsm8k(path, malformed="fail")


def test_missing_file_and_bad_policy(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_gsm8k(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="skip' or 'fail"):
        read_gsm8k(write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS), malformed="ignore")


# ---------------------------------------------------------------- MATH

def write_math_dir(root):
    (root / "algebra").mkdir(parents=True)
    (root / "geometry").mkdir()
    (root / "algebra" / "1.json").write_text(json.dumps({
        "problem": "What is $\\frac{2}{4}$ simplified?", "level": "Level 1", "type": "Algebra",
        "solution": "We get \\boxed{1} first, no: $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$."}))
    (root / "geometry" / "7.json").write_text(json.dumps({
        "problem": "Area?", "solution": "It is $\\boxed{\\sqrt{2}}$ units."}))
    return root


def test_math_hendrycks_dir(tmp_path):
    records = read_math(write_math_dir(tmp_path / "MATH" / "test"))
    assert [r.answer for r in records] == ["\\frac{1}{2}", "\\sqrt{2}"]
    assert records[0].id == "math-algebra-1"


def test_math_dir_malformed(tmp_path):
    root = write_math_dir(tmp_path / "test")
    (root / "algebra" / "2.json").write_text('{"problem": "p", "solution": "no box"}')
    (root / "algebra" / "3.json").write_text('{"problem": "p",\n "solution": }')
    report = ReadReport()
    assert len(read_math(root, report=report)) == 2
    assert report.problems == [f"{root / 'algebra' / '2.json'}:1: no \\boxed{{}} answer in 'solution'",
                               f"{root / 'algebra' / '3.json'}:2: bad JSON (Expecting value)"]
    with pytest.raises(DataError, match=re.escape(f"{root / 'algebra' / '2.json'}:1:")):
        read_math(root, malformed="fail")


def test_math_jsonl_and_math500(tmp_path):
    path = write_jsonl(tmp_path / "math500.jsonl", [
        {"problem": "p1", "solution": "... \\boxed{3}", "answer": "\\frac{1}{2}", "unique_id": "test/a/1.json"},
        {"problem": "p2", "solution": "so \\boxed{\\{1,2\\}}"},
        {"problem": "p3", "answer": ["$x=1$", "$x=2$"]}])
    records = read_math(path)
    assert [r.answer for r in records] == ["\\frac{1}{2}", "\\{1,2\\}", "$x=1$, $x=2$"]
    assert records[0].id == "test/a/1.json"


# ---------------------------------------------------------------- generic, hub, reasoning-gym

def test_generic_jsonl_with_field_mapping(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"q": "Two plus two?", "a": 4, "key": "k1"}, {"q": "Boxed?", "a": "\\boxed{5}", "key": "k2"},
        {"q": "No answer", "key": "k3"}])
    report = ReadReport()
    records = read_table(path, fields={"prompt": "q", "answer": "a", "id": "key"}, report=report)
    assert [(r.id, r.answer, r.source) for r in records] == [("k1", "4", "mine"), ("k2", "5", "mine")]
    assert report.problems == [f"{path}:3: missing field 'a'"]


def test_generic_parquet(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", [{"prompt": "p", "answer": "#### 9"}])
    assert read_table(path)[0].answer == "9"


def test_hub_rows_table_schema(monkeypatch):
    rows = [{"question": "q1", "answer": "w #### 7"}, {"question": "q2", "answer": "w #### "}]
    monkeypatch.setitem(sys.modules, "datasets", FakeHub({("openai/gsm8k", "train"): rows}))
    report = ReadReport()
    records = read_hub("openai/gsm8k", split="train", report=report)
    assert [(r.answer, r.source) for r in records] == [("7", "gsm8k")]
    assert report.problems == ["openai/gsm8k/train:2: empty answer in field 'answer'"]


def test_reasoning_gym_gsm_symbolic_real_reader():
    """The real package (pinned in requirements.txt): golds checked by reasoning-gym's own scorer."""
    import reasoning_gym

    records = read_reasoning_gym("gsm_symbolic", size=4, seed=7)
    assert records == read_reasoning_gym("gsm_symbolic", size=4, seed=7)  # seeded
    assert records != read_reasoning_gym("gsm_symbolic", size=4, seed=8)
    dataset = reasoning_gym.create_dataset("gsm_symbolic", size=4, seed=7)
    for record, entry in zip(records, dataset):
        assert record.prompt == entry["question"] and record.source == "gsm_symbolic"
        assert dataset.score_answer(answer=record.answer, entry=entry) == 1.0
        assert score(record.solution, record.answer, kind="numeric").reward == 1.0  # warm-up solution
    assert [r.id for r in records] == [f"gsm_symbolic-7-{i}" for i in range(4)]


def test_reasoning_gym_missing_or_unknown_dataset(monkeypatch):
    with pytest.raises(DataError, match="data.reasoning_gym.dataset: 'no_such_task'"):
        read_reasoning_gym("no_such_task", size=2, seed=0)
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import fails as if not installed
    with pytest.raises(DataError, match=re.escape("pip install reasoning-gym==0.1.25")):
        read_reasoning_gym("gsm_symbolic", size=2, seed=0)


# ---------------------------------------------------------------- ids, prompt types

def test_duplicate_ids_name_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"question": "a?", "answer": "1", "key": "k1"},
                                                 {"question": "b?", "answer": "2", "key": "k2"},
                                                 {"question": "c?", "answer": "3", "key": "k1"}])
    with pytest.raises(DataError, match=re.escape(f"{path}:3: duplicate id 'k1' (first at {path}:1)")):
        read_table(path, fields={"id": "key", "prompt": "question"})
    math = write_jsonl(tmp_path / "m.jsonl", [{"problem": "p", "answer": "1", "unique_id": "u"},
                                             {"problem": "q", "answer": "2", "unique_id": "u"}])
    with pytest.raises(DataError, match=re.escape(f"{math}:2: duplicate id 'u' (first at {math}:1)")):
        read_math(math)
    prepared = write_jsonl(tmp_path / "eval.jsonl", [Record("x", "p", "1", "s").to_dict(),
                                                     Record("x", "q", "2", "s").to_dict()])
    with pytest.raises(DataError, match=re.escape(f"{prepared}:2: duplicate id 'x' (first at {prepared}:1)")):
        read_prepared(prepared)


@pytest.mark.parametrize("prompt,kind", [({"text": "q"}, "dict"), (["q"], "list"), (12, "int"), (1.5, "float"),
                                         (True, "bool")])
def test_non_string_prompts_are_rejected_with_file_line(tmp_path, prompt, kind):
    path = write_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS + [{"question": prompt, "answer": "#### 3"}])
    with pytest.raises(DataError, match=re.escape(f"{path}:3: field 'question' must be text, got {kind}")):
        read_gsm8k(path, malformed="fail")
    report = ReadReport()
    assert len(read_gsm8k(path, malformed="skip", report=report)) == 2 and report.skipped == 1
    table = write_jsonl(tmp_path / "t.jsonl", [{"prompt": prompt, "answer": "3"}])
    with pytest.raises(DataError, match=re.escape(f"{table}:1: field 'prompt' must be text")):
        read_table(table, malformed="fail")


def test_dict_answer_is_rejected_not_stringified(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "q", "answer": {"value": 3}}])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'answer' must be text, a number or a list")):
        read_table(path, malformed="fail")
