"""Dataset readers, a seeded synthetic task, split hygiene and prompt building.

Every reader yields `Record(id, prompt, answer, source, solution)`; `answer` is the bare gold that
`tarpo.rewards.score` compares against, `solution` a worked solution ending in "#### N" when the
source has one (used by the supervised warm-up).

Where we deliberately depart from the reference (tarpo-reference.md §5-6):
1. Malformed rows are reported as "path:line: message" and either skipped (counted) or fatal,
   never silently dropped or crashing on a KeyError.
2. A list-valued gold becomes its element (one) or "a, b" (several), never a Python repr (B17).
3. Train and eval are made disjoint on normalised prompt text, and duplicates are dropped.
4. Nothing is fetched implicitly: the hub reader needs `datasets` and a network, and says which
   local-file source to use instead when either is missing.
"""

from __future__ import annotations

import io
import json
import random
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tarpo.errors import read_text
from tarpo.rewards import DEFAULT_MARKER, last_boxed

SOURCES = ("synthetic", "gsm8k", "math", "jsonl", "parquet", "hub", "reasoning-gym")


def default_system_prompt(marker: str = DEFAULT_MARKER) -> str:
    """Our own wording of the reference's instruction: reason first, answer after the marker."""
    return (f"You are a helpful assistant who solves problems step by step. Work through the problem "
            f"first, then write the final answer after {marker} on the last line, like this: "
            f"<your reasoning> {marker} <final answer>.")


DEFAULT_SYSTEM_PROMPT = default_system_prompt()


class DataError(ValueError):
    """A data problem a user must fix; the message names the file and line when there is one."""


@dataclass(frozen=True)
class Record:
    """One problem. `answer` is the bare gold; `solution` a worked solution ("" when unknown)."""

    id: str
    prompt: str
    answer: str
    source: str
    solution: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: Mapping) -> Record:
        return cls(id=str(row["id"]), prompt=row["prompt"], answer=row["answer"],
                   source=row["source"], solution=row.get("solution", "") or "")


@dataclass
class ReadReport:
    """What a read skipped and why: one "path:line: message" per malformed row."""

    rows_read: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def merge(self, other: ReadReport) -> None:
        self.rows_read += other.rows_read
        self.skipped += other.skipped
        self.problems.extend(other.problems)


class _Rows:
    """Applies the malformed-row policy: `skip` records the problem, `fail` raises it."""

    def __init__(self, policy: str, report: ReadReport | None):
        if policy not in ("skip", "fail"):
            raise ValueError(f"malformed policy must be 'skip' or 'fail', got {policy!r}")
        self.policy, self.report = policy, report if report is not None else ReadReport()

    def bad(self, where: str, message: str) -> None:
        problem = f"{where}: {message}"
        if self.policy == "fail":
            raise DataError(problem)
        self.report.skipped += 1
        self.report.problems.append(problem)


# ---------------------------------------------------------------- gold handling

def gold_text(value) -> str:
    """A gold value as text: numbers without ".0", lists joined (B17), None -> ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(gold_text(v) for v in value if gold_text(v))
    return str(value).strip()


def gold_from_answer(text: str, marker: str = DEFAULT_MARKER) -> str:
    """The bare gold of an answer field: after the last marker, else the last \\boxed{}, else as is."""
    if marker in text:
        return text[text.rfind(marker) + len(marker):].strip().rstrip(".").strip()
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else text.strip()


def clean_gsm8k_solution(text: str) -> str:
    """GSM8K worked solution without calculator annotations ("<<48/2=24>>")."""
    return re.sub(r"<<[^<>]*>>", "", text).strip()


# ---------------------------------------------------------------- raw row sources

def _iter_jsonl(path: Path, rows: _Rows) -> Iterator[tuple[str, dict]]:
    """(where, row) per non-blank line; bad JSON and non-objects are reported with path:line."""
    with io.StringIO(read_text(path), newline=None) as handle:  # names the file and byte offset of bad UTF-8
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            rows.report.rows_read += 1
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                rows.bad(where, f"bad JSON ({err.msg})")
                continue
            if not isinstance(row, dict):
                rows.bad(where, f"expected a JSON object, got {type(row).__name__}")
                continue
            yield where, row


def _iter_parquet(path: Path, rows: _Rows) -> Iterator[tuple[str, dict]]:
    """(where, row) per parquet row; `line` is the 1-based row number."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from err
    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable parquet file ({err})") from err
    for number, row in enumerate(table.to_pylist(), start=1):
        rows.report.rows_read += 1
        yield f"{path}:{number}", row


def _iter_table(path: Path, rows: _Rows) -> Iterator[tuple[str, dict]]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".parquet":
        return _iter_parquet(path, rows)
    return _iter_jsonl(path, rows)


def _row_id(source: str, path: Path, where: str) -> str:
    """Default id "<source>-<file stem>-<line>": unique across the train and eval files."""
    return f"{source}-{path.stem}-{where.rsplit(':', 1)[1]}"


def _field(row: Mapping, name: str, where: str, rows: _Rows) -> str | None:
    """The non-empty text of row[name]; reports a missing or empty field and returns None."""
    if name not in row or row[name] is None:
        rows.bad(where, f"missing field {name!r}")
        return None
    text = gold_text(row[name]) if not isinstance(row[name], str) else row[name].strip()
    if not text:
        rows.bad(where, f"empty field {name!r}")
        return None
    return text


# ---------------------------------------------------------------- readers

def read_gsm8k(path: str | Path, *, malformed: str = "skip", report: ReadReport | None = None,
               source: str = "gsm8k") -> list[Record]:
    """GSM8K published schema (jsonl or parquet): `question`, `answer` ending in "#### N"."""
    rows, out = _Rows(malformed, report), []
    for where, row in _iter_table(Path(path), rows):
        question, answer = _field(row, "question", where, rows), _field(row, "answer", where, rows)
        if question is None or answer is None:
            continue
        if DEFAULT_MARKER not in answer or not gold_from_answer(answer):
            rows.bad(where, f"answer has no '{DEFAULT_MARKER} N' final line")
            continue
        out.append(Record(id=_row_id(source, Path(path), where), prompt=question,
                          answer=gold_from_answer(answer), source=source,
                          solution=clean_gsm8k_solution(answer)))
    return out


def _math_record(row: Mapping, where: str, rows: _Rows, source: str, rid: str) -> Record | None:
    """MATH row: `problem` + (`answer` if given, MATH-500 style, else last \\boxed{} of `solution`)."""
    problem = _field(row, "problem", where, rows)
    if problem is None:
        return None
    answer = gold_text(row.get("answer"))
    solution = row.get("solution") if isinstance(row.get("solution"), str) else ""
    if not answer:
        if not solution:
            rows.bad(where, "missing field 'answer' and 'solution'")
            return None
        answer = (last_boxed(solution) or "").strip()
        if not answer:
            rows.bad(where, "no \\boxed{} answer in 'solution'")
            return None
    return Record(id=rid, prompt=problem, answer=answer, source=source, solution="")


def read_math(path: str | Path, *, malformed: str = "skip", report: ReadReport | None = None,
              source: str = "math") -> list[Record]:
    """MATH: a Hendrycks split dir (`subject/*.json`), or jsonl/parquet (MATH-500 style allowed)."""
    path, rows = Path(path), _Rows(malformed, report)
    if not path.is_dir():
        return [r for where, row in _iter_table(path, rows)
                if (r := _math_record(row, where, rows, source,
                                      str(row.get("unique_id") or _row_id(source, path, where))))]
    files = sorted(path.glob("*/*.json")) or sorted(path.glob("*.json"))
    if not files:
        raise DataError(f"{path}: no MATH files (expected {path}/<subject>/<n>.json)")
    out = []
    for file in files:
        rows.report.rows_read += 1
        try:
            row = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            rows.bad(f"{file}:{err.lineno}", f"bad JSON ({err.msg})")
            continue
        if not isinstance(row, dict):
            rows.bad(f"{file}:1", "expected a JSON object")
            continue
        rid = f"{source}-{file.parent.name}-{file.stem}"
        if (record := _math_record(row, f"{file}:1", rows, source, rid)) is not None:
            out.append(record)
    return out


def read_table(path: str | Path, *, fields: Mapping[str, str | None] | None = None,
               malformed: str = "skip", report: ReadReport | None = None,
               source: str | None = None) -> list[Record]:
    """Any jsonl/parquet with a field mapping {prompt, answer, id}; answers go through gold_from_answer."""
    path, rows, out = Path(path), _Rows(malformed, report), []
    fields = {"prompt": "prompt", "answer": "answer", "id": None, **(fields or {})}
    source = source or path.stem
    for where, row in _iter_table(path, rows):
        prompt = _field(row, fields["prompt"], where, rows)
        answer = _field(row, fields["answer"], where, rows) if prompt is not None else None
        if prompt is None or answer is None:
            continue
        gold = gold_from_answer(answer)
        if not gold:
            rows.bad(where, f"empty answer in field {fields['answer']!r}")
            continue
        rid = row.get(fields["id"]) if fields["id"] else None
        out.append(Record(id=str(rid) if rid not in (None, "") else _row_id(source, path, where),
                          prompt=prompt, answer=gold, source=source,
                          solution=clean_gsm8k_solution(answer) if DEFAULT_MARKER in answer else ""))
    return out


def read_hub(name: str, *, split: str, config: str | None = None,
             fields: Mapping[str, str | None] | None = None, malformed: str = "skip",
             report: ReadReport | None = None) -> list[Record]:
    """A Hugging Face hub dataset through `datasets` (imported lazily; needs a network or its cache)."""
    hint = (f"download the files yourself and set data.source to 'jsonl', 'parquet', 'gsm8k' or "
            f"'math' with data.train_path / data.eval_path")
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"hub dataset {name!r} needs the 'datasets' package (pip install datasets); "
                        f"or {hint}") from err
    try:
        table = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # noqa: BLE001 - offline, missing split, auth: all end the same way
        raise DataError(f"hub dataset {name!r} (config {config!r}, split {split!r}) could not be "
                        f"loaded ({type(err).__name__}: {err}); offline? {hint}") from err
    rows, out = _Rows(malformed, report), []
    fields = {"prompt": "question", "answer": "answer", "id": None, **(fields or {})}
    for number, row in enumerate(table, start=1):
        rows.report.rows_read += 1
        where = f"{name}/{split}:{number}"
        prompt = _field(row, fields["prompt"], where, rows)
        answer = _field(row, fields["answer"], where, rows) if prompt is not None else None
        if prompt is not None and answer is not None and gold_from_answer(answer):
            rid = row.get(fields["id"]) if fields["id"] else None
            out.append(Record(id=str(rid or f"{name}-{split}-{number}"), prompt=prompt,
                              answer=gold_from_answer(answer), source=name.split("/")[-1],
                              solution=clean_gsm8k_solution(answer) if DEFAULT_MARKER in answer else ""))
        elif prompt is not None and answer is not None:
            rows.bad(where, "empty answer")
    return out


def read_reasoning_gym(dataset: str, *, size: int, seed: int) -> list[Record]:
    """Problems generated locally by reasoning-gym (optional package; Apache-2.0)."""
    try:
        import reasoning_gym
    except ImportError as err:
        raise DataError("data.source 'reasoning-gym' needs the 'reasoning-gym' package "
                        "(pip install reasoning-gym), or use data.source 'synthetic'") from err
    try:
        entries = reasoning_gym.create_dataset(dataset, size=size, seed=seed)
    except Exception as err:  # noqa: BLE001 - unknown dataset name etc.
        raise DataError(f"reasoning-gym dataset {dataset!r}: {err}") from err
    return [Record(id=f"{dataset}-{seed}-{i}", prompt=str(e["question"]).strip(),
                   answer=gold_text(e["answer"]), source=dataset)
            for i, e in enumerate(entries)]


# ---------------------------------------------------------------- synthetic task

_PEOPLE = (("Tom", "he"), ("Ann", "she"), ("Sam", "he"), ("Mia", "she"), ("Ben", "he"), ("Eva", "she"))
_ITEMS = ("apples", "pens", "books", "coins", "cards", "eggs", "balls", "cups")
# One fixed phrase per operation keeps the vocabulary tiny and the mapping text -> operation exact.
_PHRASES = {"+": "buys {x} more", "-": "gives away {x}", "*": "gets {x} times as many"}
_MAX_FACTOR = 3  # "times as many" stays small so answers do not explode with the op count


def _next_step(rng: random.Random, value: int, max_operand: int) -> tuple[str, int]:
    """One (operation, operand) that keeps the running total a non-negative integer."""
    choices = ["+"] + (["-"] if value > 0 else []) + (["*"] if 0 < value <= max_operand else [])
    op = rng.choice(choices)
    if op == "+":
        return op, rng.randint(1, max_operand)
    if op == "-":
        return op, rng.randint(1, min(value, max_operand))
    return op, rng.randint(2, _MAX_FACTOR)


def _apply(op: str, value: int, x: int) -> int:
    return {"+": value + x, "-": value - x, "*": value * x}[op]


def synthetic_problem(rng: random.Random, min_ops: int, max_ops: int, max_operand: int
                      ) -> tuple[str, str, str]:
    """(question, worked solution ending in "#### N", gold N) for one random problem."""
    name, pronoun = rng.choice(_PEOPLE)
    item = rng.choice(_ITEMS)
    value = rng.randint(1, max_operand)
    sentences, steps = [f"{name} has {value} {item}."], []
    for i in range(rng.randint(min_ops, max_ops)):
        op, x = _next_step(rng, value, max_operand)
        phrase = _PHRASES[op].format(x=x)
        sentences.append(f"{pronoun.capitalize()} {phrase}." if i == 0 else f"Then {pronoun} {phrase}.")
        new_value = _apply(op, value, x)
        steps.append(f"{value} {op} {x} = {new_value}.")
        value = new_value
    sentences.append(f"How many {item} does {pronoun} have now?")
    return " ".join(sentences), f"{' '.join(steps)} {DEFAULT_MARKER} {value}", str(value)


def synthetic_problems(n: int, seed: int, min_ops: int = 1, max_ops: int = 3, max_operand: int = 20,
                       *, level: int = 1, exclude: Iterable[str] = (),
                       source: str = "synthetic") -> list[Record]:
    """n distinct seeded arithmetic word problems (deterministic per seed; needs no network).

    Difficulty `level` L >= 1 builds on the base knobs: L - 1 more operations per problem and
    operands up to L * max_operand (level 1 = the knobs as given). Prompts whose normalised text
    is in `exclude` (e.g. the eval set) are never produced.
    """
    if level < 1 or not (1 <= min_ops <= max_ops) or max_operand < 1 or n < 0:
        raise DataError(f"synthetic needs level >= 1, 1 <= min_ops <= max_ops, max_operand >= 1, "
                        f"n >= 0; got level={level}, min_ops={min_ops}, max_ops={max_ops}, "
                        f"max_operand={max_operand}, n={n}")
    min_ops, max_ops, max_operand = min_ops + level - 1, max_ops + level - 1, max_operand * level
    rng, seen, out = random.Random(seed), {normalize_prompt(p) for p in exclude}, []
    misses = 0  # consecutive repeats: many in a row means the problem space is exhausted
    while len(out) < n and misses < 2000:
        question, solution, gold = synthetic_problem(rng, min_ops, max_ops, max_operand)
        key = normalize_prompt(question)
        misses += 1
        if key not in seen:
            seen.add(key)
            misses = 0
            out.append(Record(id=f"{source}-{seed}-{len(out)}", prompt=question, answer=gold,
                              source=source, solution=solution))
    if len(out) < n:
        raise DataError(f"synthetic: only {len(out)} distinct problems of {n} requested with "
                        f"max_ops={max_ops}, max_operand={max_operand}; raise them or ask for fewer")
    return out


# ---------------------------------------------------------------- split hygiene

def normalize_prompt(text: str) -> str:
    """Key for duplicate/overlap checks: unicode-folded, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def dedupe(records: Iterable[Record]) -> tuple[list[Record], int]:
    """First occurrence of each normalised prompt, and how many later copies were dropped."""
    seen, kept, dropped = set(), [], 0
    for record in records:
        key = normalize_prompt(record.prompt)
        if key in seen:
            dropped += 1
        else:
            seen.add(key)
            kept.append(record)
    return kept, dropped


def drop_overlap(train: Iterable[Record], eval_records: Iterable[Record]) -> tuple[list[Record], int]:
    """Train without any prompt that is also in eval (eval is the set we must not train on)."""
    eval_keys = {normalize_prompt(r.prompt) for r in eval_records}
    train = list(train)
    kept = [r for r in train if normalize_prompt(r.prompt) not in eval_keys]
    return kept, len(train) - len(kept)


def sample_records(records: list[Record], size: int | None, seed: int) -> list[Record]:
    """A seeded subset of `size` records in their original order (all when size is None or larger)."""
    if size is None or size >= len(records):
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), size))
    return [records[i] for i in keep]


# ---------------------------------------------------------------- prompts

def build_prompt(tokenizer, question: str, system_prompt: str | None = None, *,
                 marker: str = DEFAULT_MARKER) -> str:
    """Chat-templated prompt text (generation prompt added) for one question.

    system_prompt None -> default_system_prompt(marker); "" -> no system message. A tokenizer
    without a chat template gets a plain "System/User/Assistant" layout.
    """
    system_prompt = default_system_prompt(marker) if system_prompt is None else system_prompt
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question.strip()})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"


# ---------------------------------------------------------------- train/eval splits

SYNTHETIC_DEFAULT_SIZES = (1000, 200)  # (train, eval) when the config leaves sizes unset
HOLDOUT_FRACTION = 0.1  # eval share held out of the train file when no eval file is given


@dataclass
class Splits:
    """Disjoint, de-duplicated train and eval records plus the counts the prepare stage reports."""

    train: list[Record]
    eval: list[Record]
    stats: dict[str, int]
    problems: list[str]


def _read_file(source: str, path: str | Path, fields, malformed: str, report: ReadReport) -> list[Record]:
    if source == "gsm8k":
        return read_gsm8k(path, malformed=malformed, report=report)
    if source == "math":
        return read_math(path, malformed=malformed, report=report)
    return read_table(path, fields=fields, malformed=malformed, report=report)


def _read_raw(source: str, *, train_path, eval_path, fields, hub: Mapping, train_size, eval_size,
              malformed: str, seed: int, synthetic: Mapping, reasoning_gym_dataset,
              train_report: ReadReport, eval_report: ReadReport) -> tuple[list[Record], list[Record]]:
    """Raw (train, eval) records for one source, before de-duplication and the overlap check."""
    if source == "synthetic":
        n_train, n_eval = (train_size or SYNTHETIC_DEFAULT_SIZES[0], eval_size or SYNTHETIC_DEFAULT_SIZES[1])
        knobs = {k: v for k, v in synthetic.items() if v is not None}
        eval_records = synthetic_problems(n_eval, seed, **knobs)
        train = synthetic_problems(n_train, seed + 1, exclude=[r.prompt for r in eval_records], **knobs)
        return train, eval_records
    if source == "reasoning-gym":
        if not reasoning_gym_dataset:
            raise DataError("data.reasoning_gym.dataset: required for data.source 'reasoning-gym'")
        n_train, n_eval = (train_size or SYNTHETIC_DEFAULT_SIZES[0], eval_size or SYNTHETIC_DEFAULT_SIZES[1])
        return (read_reasoning_gym(reasoning_gym_dataset, size=n_train, seed=seed + 1),
                read_reasoning_gym(reasoning_gym_dataset, size=n_eval, seed=seed))
    if source == "hub":
        if not hub.get("name"):
            raise DataError("data.hub_name: required for data.source 'hub'")
        read = lambda split, rep: read_hub(hub["name"], split=split, config=hub.get("config"),  # noqa: E731
                                           fields=fields, malformed=malformed, report=rep)
        return (read(hub.get("train_split") or "train", train_report),
                read(hub.get("eval_split") or "test", eval_report))
    if source not in SOURCES:
        raise DataError(f"data.source: unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if not train_path:
        raise DataError(f"data.train_path: required for data.source {source!r}")
    train = _read_file(source, train_path, fields, malformed, train_report)
    if eval_path:
        return train, _read_file(source, eval_path, fields, malformed, eval_report)
    n_eval = eval_size or max(1, int(len(train) * HOLDOUT_FRACTION))
    held = set(random.Random(seed).sample(range(len(train)), min(n_eval, len(train))))
    return ([r for i, r in enumerate(train) if i not in held],
            [r for i, r in enumerate(train) if i in held])


def load_splits(*, source: str, train_path: str | None = None, eval_path: str | None = None,
                fields: Mapping[str, str | None] | None = None, hub: Mapping | None = None,
                train_size: int | None = None, eval_size: int | None = None, malformed: str = "skip",
                seed: int = 0, synthetic: Mapping | None = None,
                reasoning_gym_dataset: str | None = None) -> Splits:
    """Read train/eval for a source, drop duplicates and train/eval overlap, then subsample (seeded).

    With no eval file, eval is held out of the train file (eval_size, or 10 %).
    """
    train_report, eval_report = ReadReport(), ReadReport()
    train, eval_records = _read_raw(
        source, train_path=train_path, eval_path=eval_path, fields=fields, hub=hub or {},
        train_size=train_size, eval_size=eval_size, malformed=malformed, seed=seed,
        synthetic=synthetic or {}, reasoning_gym_dataset=reasoning_gym_dataset,
        train_report=train_report, eval_report=eval_report)
    eval_records, eval_dups = dedupe(eval_records)
    train, train_dups = dedupe(train)
    train, overlap = drop_overlap(train, eval_records)
    train = sample_records(train, train_size, seed)
    eval_records = sample_records(eval_records, eval_size, seed + 1)
    stats = {
        "train_rows_read": train_report.rows_read, "eval_rows_read": eval_report.rows_read,
        "train_skipped_rows": train_report.skipped, "eval_skipped_rows": eval_report.skipped,
        "skipped_rows": train_report.skipped + eval_report.skipped,
        "train_duplicates_dropped": train_dups, "eval_duplicates_dropped": eval_dups,
        "duplicates_dropped": train_dups + eval_dups, "overlap_dropped": overlap,
        "train_count": len(train), "eval_count": len(eval_records),
    }
    return Splits(train=train, eval=eval_records, stats=stats,
                  problems=train_report.problems + eval_report.problems)


def read_prepared(path: str | Path) -> list[Record]:
    """Records written by the prepare stage; any bad line is fatal (prepare wrote it)."""
    records, rows = [], _Rows("fail", None)
    for where, row in _iter_jsonl(Path(path), rows):
        missing = [k for k in ("id", "prompt", "answer", "source") if k not in row]
        if missing:
            raise DataError(f"{where}: missing field {missing[0]!r}; re-run the prepare stage")
        records.append(Record.from_dict(row))
    return records
