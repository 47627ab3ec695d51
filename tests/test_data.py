"""Readers on fixture files in each published schema, split hygiene, synthetic task, prompts."""

import json
import operator
import re
import sys

import pytest

from tarpo.data import (DataError, ReadReport, Record, build_prompt, dedupe, default_system_prompt,
                        drop_overlap, gold_text, load_splits, normalize_prompt, read_gsm8k, read_hub,
                        read_math, read_prepared, read_reasoning_gym, read_table, synthetic_problems)
from tarpo.rewards import score

GSM8K_ROWS = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nTotal 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "A shop sells 1,000 pens. How many?", "answer": "It sells 1,000.\n#### 1,000"},
]


def write_jsonl(path, rows, raw_lines=()):
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


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


def test_gold_text_lists_and_numbers():  # a list gold is never its Python repr
    assert gold_text(["3"]) == "3"
    assert gold_text([1, 2.0]) == "1, 2"
    assert gold_text(18.0) == "18" and gold_text(None) == ""


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


class FakeHub:
    """Stands in for `datasets` (the hub download is the one thing that cannot run here)."""

    def __init__(self, tables):
        self.tables, self.calls = tables, []

    def load_dataset(self, name, config=None, split=None):
        self.calls.append((name, config, split))
        if (name, split) not in self.tables:
            raise ConnectionError(f"Couldn't reach {name}\nsecond line of the error")
        return list(self.tables[(name, split)])


def _gsm8k_hub_rows(prefix, n):
    return [{"question": f"{prefix} question {i}?", "answer": f"work\n#### {i}"} for i in range(n)]


def test_hub_rows_table_schema(monkeypatch):
    rows = [{"question": "q1", "answer": "w #### 7"}, {"question": "q2", "answer": "w #### "}]
    monkeypatch.setitem(sys.modules, "datasets", FakeHub({("openai/gsm8k", "train"): rows}))
    report = ReadReport()
    records = read_hub("openai/gsm8k", split="train", report=report)
    assert [(r.answer, r.source) for r in records] == [("7", "gsm8k")]
    assert report.problems == ["openai/gsm8k/train:2: empty answer in field 'answer'"]


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


def test_reasoning_gym_splits_are_disjoint():
    splits = load_splits(source="reasoning-gym", reasoning_gym_dataset="gsm_symbolic", train_size=12,
                         eval_size=4, seed=0)
    assert len(splits.eval) == 4 and 0 < len(splits.train) <= 12
    assert not {normalize_prompt(r.prompt) for r in splits.train} & {normalize_prompt(r.prompt) for r in splits.eval}


def test_reasoning_gym_missing_or_unknown_dataset(monkeypatch):
    with pytest.raises(DataError, match="data.reasoning_gym.dataset: 'no_such_task'"):
        read_reasoning_gym("no_such_task", size=2, seed=0)
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import fails as if not installed
    with pytest.raises(DataError, match=re.escape("pip install reasoning-gym==0.1.25")):
        read_reasoning_gym("gsm_symbolic", size=2, seed=0)


# ---------------------------------------------------------------- hygiene

def _rec(i, prompt):
    return Record(id=str(i), prompt=prompt, answer="1", source="s")


def test_dedupe_and_overlap_on_normalised_prompt():
    train = [_rec(0, "What is 2+2?"), _rec(1, "  what IS   2+2? "), _rec(2, "Other"), _rec(3, "Held out")]
    kept, dups = dedupe(train)
    assert dups == 1 and [r.id for r in kept] == ["0", "2", "3"]
    kept, overlap = drop_overlap(kept, [_rec(9, "HELD\tout")])
    assert overlap == 1 and [r.id for r in kept] == ["0", "2"]
    assert normalize_prompt("Ｔom  has") == "tom has"


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


# ---------------------------------------------------------------- ids, prompt types, degenerate splits

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


# ---------------------------------------------------------------- synthetic

_OPS = {"buys (\\d+) more": operator.add, "gives away (\\d+)": operator.sub,
        "gets (\\d+) times as many": operator.mul}


def evaluate_question(question):
    """Independent check: rebuild the computation from the question's sentences."""
    value = int(re.match(r"\w+ has (\d+) \w+\.", question).group(1))
    ops = 0
    for sentence in question.split(". ")[1:]:
        for pattern, fn in _OPS.items():
            if m := re.search(pattern, sentence):
                value, ops = fn(value, int(m.group(1))), ops + 1
    return value, ops


def test_synthetic_deterministic_per_seed():
    assert synthetic_problems(50, seed=7) == synthetic_problems(50, seed=7)
    assert synthetic_problems(50, seed=7) != synthetic_problems(50, seed=8)


def test_synthetic_golds_are_right():
    for record in synthetic_problems(300, seed=1, min_ops=1, max_ops=4, max_operand=30):
        value, _ = evaluate_question(record.prompt)
        assert record.answer == str(value) and value >= 0
        assert record.solution.endswith(f"#### {value}")
        for step in record.solution.split(" #### ")[0].split(". "):
            a, op, b, _, c = step.rstrip(".").split()
            assert {"+": operator.add, "-": operator.sub, "*": operator.mul}[op](int(a), int(b)) == int(c)


def test_synthetic_levels_change_ops_and_operands():
    def op_counts(problems):
        return {evaluate_question(r.prompt)[1] for r in problems}
    assert op_counts(synthetic_problems(100, seed=0, min_ops=1, max_ops=2, level=1)) == {1, 2}
    assert op_counts(synthetic_problems(100, seed=0, min_ops=1, max_ops=2, level=3)) == {3, 4}
    big = synthetic_problems(200, seed=0, min_ops=1, max_ops=1, max_operand=10, level=4)
    assert max(int(n) for r in big for n in re.findall(r"\d+", r.prompt)) > 10


def test_synthetic_vocabulary_is_small_and_unique():
    problems = synthetic_problems(500, seed=2, min_ops=2, max_ops=3)
    words = {w for r in problems for w in re.findall(r"[A-Za-z]+", r.prompt + r.solution)}
    assert len(words) < 50
    assert len({normalize_prompt(r.prompt) for r in problems}) == 500


def test_synthetic_exclude_and_too_small_space():
    eval_set = synthetic_problems(20, seed=0, max_ops=1, max_operand=3)
    train = synthetic_problems(20, seed=1, max_ops=1, max_operand=3, exclude=[r.prompt for r in eval_set])
    assert not {r.prompt for r in train} & {r.prompt for r in eval_set}
    with pytest.raises(DataError, match="only .* distinct problems"):
        synthetic_problems(10_000, seed=0, min_ops=1, max_ops=1, max_operand=1)


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
