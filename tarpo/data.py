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

import json
import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    with path.open(encoding="utf-8") as handle:
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
        out.append(Record(id=f"{source}-{Path(path).stem}-{where.rsplit(':', 1)[1]}", prompt=question,
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
                                      str(row.get("unique_id") or f"{source}-{path.stem}-{where.rsplit(':', 1)[1]}")))]
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
        out.append(Record(id=str(rid) if rid not in (None, "") else f"{source}-{path.stem}-{where.rsplit(':', 1)[1]}",
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
