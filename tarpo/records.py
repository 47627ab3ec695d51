"""The problem record every reader yields, the data error, the malformed-row policy, gold text.

Shared by the readers (`tarpo.readers`), the synthetic generator (`tarpo.synthetic`), split hygiene
(`tarpo.hygiene`) and the prepare entry point (`tarpo.data`); it imports none of them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from tarpo.rewards import DEFAULT_MARKER, last_boxed


class DataError(ValueError):
    """A data problem a user must fix; the message names the file and line when there is one."""


@dataclass(frozen=True)
class Record:
    """One problem. `answer` is the bare gold; `solution` a worked solution ("" when unknown); `meta` what a
    generator knows about the problem (the graph task's hop count), None for every other source."""

    id: str
    prompt: str
    answer: str
    source: str
    solution: str = ""
    meta: dict | None = field(default=None, compare=False, hash=False)

    def to_dict(self) -> dict:
        row = asdict(self)
        if row["meta"] is None:  # sources without meta write the same lines as before it existed
            del row["meta"]
        return row

    @classmethod
    def from_dict(cls, row: Mapping) -> Record:
        return cls(id=str(row["id"]), prompt=row["prompt"], answer=row["answer"],
                   source=row["source"], solution=row.get("solution", "") or "", meta=row.get("meta"))


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


class Rows:
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


class UniqueIds:
    """Record ids must be unique per split: evaluation and logs refer to problems by id.

    A repeat is always fatal (it is not a malformed row that skipping would fix), and names both places.
    """

    def __init__(self):
        self.first_seen: dict[str, str] = {}

    def check(self, record_id: str, where: str) -> None:
        first = self.first_seen.setdefault(record_id, where)
        if first != where:
            raise DataError(f"{where}: duplicate id {record_id!r} (first at {first}); ids must be unique "
                            "per split: fix the file or map no id field (data.fields.id: null numbers rows)")


# ---------------------------------------------------------------- gold handling

def gold_text(value) -> str:
    """A gold value as text: numbers without ".0", lists joined with ", " (never a list's repr), None -> ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(gold_text(v) for v in value if gold_text(v))
    return str(value).strip()


def ascii_digits(text: str) -> str:
    """Decimal digits of any script as ASCII: a gold "٧" (Arabic-Indic) or "７" (full-width) is "7", which is
    what completions write; left as it was, no answer could ever equal it.

    >>> ascii_digits("١٢٣٫٥ apples"), ascii_digits("７"), ascii_digits("x²")
    ('123٫5 apples', '7', 'x²')
    """
    return "".join(str(unicodedata.decimal(c)) if not c.isascii() and unicodedata.decimal(c, None) is not None else c
                   for c in text)


def gold_from_answer(text: str, marker: str = DEFAULT_MARKER) -> str:
    """The bare gold of an answer field: after the last marker, else the last \\boxed{}, else as is."""
    if marker in text:
        return text[text.rfind(marker) + len(marker):].strip().rstrip(".").strip()
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else text.strip()


def clean_gsm8k_solution(text: str) -> str:
    """GSM8K worked solution without calculator annotations ("<<48/2=24>>")."""
    return re.sub(r"<<[^<>]*>>", "", text).strip()
