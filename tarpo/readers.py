"""One reader per data source: GSM8K, MATH, generic jsonl/parquet, the Hugging Face hub, reasoning-gym.

Every reader yields `Record(id, prompt, answer, source, solution)`. Rows come from a file (jsonl or
parquet, "path:line" for messages), a MATH directory, or a hub split ("name/split:row"); the same
row parsers read all three, so a GSM8K row means the same thing on disk and on the hub.

Where we deliberately depart from the reference (the authors' released TARPO code)'s data handling:
1. Malformed rows are reported as "path:line: message" and either skipped (counted) or fatal,
   never silently dropped or crashing on a KeyError. A prompt that is not text (a dict, a list, a
   number) is malformed: it is never turned into its Python repr.
2. A list-valued gold becomes its element (one) or "a, b" (several), never a Python repr (the reference
   compared against `str(list)`, quotes and brackets included).
3. Record ids are unique per file or split: a repeat is an error naming both lines.
4. Nothing is fetched implicitly: the hub reader needs `datasets` and a network, and raises
   `HubUnavailable` (saying which) so the caller can name the local-file alternative.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import stat
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from tarpo.errors import InputError, read_text
from tarpo.records import (DataError, ReadReport, Record, Rows, UniqueIds, ascii_digits, clean_gsm8k_solution,
                           gold_from_answer, gold_text)
from tarpo.rewards import DEFAULT_MARKER, last_boxed

GSM8K_HUB = ("openai/gsm8k", "main")  # (name, config) read by source gsm8k without data.train_path
MATH_HUB = ("DigitalLearningGmbH/MATH-lighteval", None)  # Hendrycks MATH (7500 train / 5000 test), same fields
REASONING_GYM_PIN = "reasoning-gym==0.1.25"  # requirements.txt pins the same version
MAX_LINE_BYTES = 8 << 20  # one record; longer is not a problem statement (8 MB of text is ~2M tokens)
MAX_SKIPPED_LINE_BYTES = 1 << 30  # an over-long line is read past (bounded memory) up to this, then refused
GZIP_MAGIC = b"\x1f\x8b"


class HubUnavailable(DataError):
    """The hub dataset cannot be read here (no `datasets`, or no network/cache); `reason` says which."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------- raw rows: (where, row) pairs

def check_input_path(path: str | Path, *, allow_dir: bool = False) -> None:
    """Refuse, before opening, what cannot be read as a data file: a missing path, a symlink loop, a directory
    (unless `allow_dir`) and anything that is not a regular file (a FIFO or a device would block or never end)."""
    path = Path(path)
    try:
        info = path.stat()  # follows symlinks, and never opens: a FIFO with no writer would block open()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataError(f"{path}: a symlink loop (the link leads back to itself); point it at the real file") \
                from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            dangling = f" (a symlink to {os.readlink(path)}, which does not exist)" if path.is_symlink() else ""
            raise DataError(f"{path}: file not found{dangling}") from None
        raise
    if stat.S_ISDIR(info.st_mode):
        if not allow_dir:
            raise DataError(f"{path}: is a directory, expected a file (.jsonl or .parquet)")
        return
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(info.st_mode)), "a special file")
        raise DataError(f"{path}: is {kind}, not a regular file (reading it could block or never end); "
                        "write the data to a file and point at that")


_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _open_lines(path: Path):
    """A binary handle on `path`, decompressing gzip (recognised by its magic bytes, whatever the name)."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _raw_lines(handle) -> Iterator[tuple[int, bytes, int]]:
    """(byte offset, line, full length) per line; a line longer than MAX_LINE_BYTES comes back cut, its rest
    read and dropped so that memory stays bounded whatever the file holds."""
    offset = 0
    while chunk := handle.readline(MAX_LINE_BYTES + 1):
        length = len(chunk)
        if length > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while rest := handle.readline(1 << 20):
                length += len(rest)
                if rest.endswith(b"\n"):
                    break
                if length > MAX_SKIPPED_LINE_BYTES:  # a stream without newlines: stop reading, in bounded time too
                    raise DataError(f"{getattr(handle, 'name', 'the file')}: a line of more than "
                                    f"{MAX_SKIPPED_LINE_BYTES} bytes; this is not a JSON-lines file")
            chunk = chunk[:MAX_LINE_BYTES]
        yield offset, chunk, length
        offset += length


def _decoded(path: Path, offset: int, chunk: bytes, first: bool) -> str:
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = offset + exc.start
        raise InputError(f"{path}: not UTF-8 text (byte offset {at}: {chunk[exc.start:exc.start + 1]!r})") from None
    return text.removeprefix("\ufeff") if first else text  # a BOM (Windows editors) is not part of the data


def iter_jsonl(path: Path, rows: Rows) -> Iterator[tuple[str, dict]]:
    """(where, row) per non-blank line; bad JSON and non-objects are reported with path:line.

    Read as a stream of bounded lines: a BOM, CRLF or lone-CR line ends and gzip are accepted; a line over
    MAX_LINE_BYTES and a cut-off last line (no newline, bad JSON: a truncated file) are named as such.
    """
    path = Path(path)
    check_input_path(path)
    number = 0
    try:
        with _open_lines(path) as handle:
            for offset, chunk, length in _raw_lines(handle):
                if length > MAX_LINE_BYTES:
                    number += 1
                    rows.report.rows_read += 1
                    rows.bad(f"{path}:{number}", f"a line of {length} bytes, more than the {MAX_LINE_BYTES} bytes one "
                                                 "record may hold (is this a JSON-lines file?)")
                    continue
                text = _decoded(path, offset, chunk, first=offset == 0).replace("\r\n", "\n").replace("\r", "\n")
                parts = text.split("\n")
                if text.endswith("\n"):
                    parts.pop()
                for i, part in enumerate(parts):
                    number += 1
                    if part.strip():
                        cut = i == len(parts) - 1 and not text.endswith("\n")
                        yield from _parse_row(f"{path}:{number}", part, rows, cut)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"{path}: a damaged gzip file ({err}); re-download or re-compress it") from None


def _parse_row(where: str, line: str, rows: Rows, cut: bool) -> Iterator[tuple[str, dict]]:
    rows.report.rows_read += 1
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        truncated = "; it is the last line and has no newline: the file looks truncated (an interrupted copy " \
                    "or write?)" if cut else ""
        rows.bad(where, f"bad JSON ({err.msg}){truncated}")
        return
    if not isinstance(row, dict):
        rows.bad(where, f"expected a JSON object, got {type(row).__name__}")
        return
    yield where, row


def _iter_parquet(path: Path, rows: Rows) -> Iterator[tuple[str, dict]]:
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


def _iter_table(path: Path, rows: Rows) -> Iterator[tuple[str, dict]]:
    check_input_path(path)
    if path.suffix == ".parquet":
        return _iter_parquet(path, rows)
    return iter_jsonl(path, rows)


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text[:limit]}" if text else type(err).__name__


def _iter_hub(name: str, config: str | None, split: str, rows: Rows) -> Iterator[tuple[str, dict]]:
    """(where, row) per row of a hub split, "name/split:row". Loads eagerly so failures come first."""
    try:
        import datasets
    except ImportError as err:
        raise HubUnavailable(f"hub dataset {name!r} needs the 'datasets' package (pip install datasets)",
                             "the 'datasets' package is not installed: pip install datasets") from err
    try:
        table = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # noqa: BLE001 - offline, missing split, auth: all end the same way
        reason = f"it could not be loaded ({_first_line(err)})"
        raise HubUnavailable(f"hub dataset {name!r} (config {config!r}, split {split!r}): {reason}",
                             reason) from err

    def walk() -> Iterator[tuple[str, dict]]:
        for number, row in enumerate(table, start=1):
            rows.report.rows_read += 1
            yield f"{name}/{split}:{number}", dict(row)

    return walk()


def _row_id(source: str, stem: str, where: str) -> str:
    """Default id "<source>-<file stem or split>-<line>": unique across the train and eval files."""
    return f"{source}-{stem}-{where.rsplit(':', 1)[1]}"


# ---------------------------------------------------------------- fields

def _text(row: Mapping, name: str, where: str, rows: Rows) -> str | None:
    """The non-empty text of row[name] (a prompt): anything but a string is malformed, never coerced."""
    value = row.get(name)
    if value is None:
        rows.bad(where, f"field {name!r} is null" if name in row else f"missing field {name!r}")
        return None
    if not isinstance(value, str):
        rows.bad(where, f"field {name!r} must be text, got {type(value).__name__}")
        return None
    if not value.strip():
        rows.bad(where, f"empty field {name!r}")
        return None
    return value.strip()


def _answer(row: Mapping, name: str, where: str, rows: Rows) -> str | None:
    """A gold: text, a number or a list of them (never turned into a list's repr); a mapping is malformed."""
    value = row.get(name)
    if value is None:
        rows.bad(where, f"field {name!r} is null" if name in row else f"missing field {name!r}")
        return None
    items = value if isinstance(value, list) else [value]
    if isinstance(value, Mapping) or any(isinstance(v, (Mapping, list)) for v in items):
        rows.bad(where, f"field {name!r} must be text, a number or a list of them, got {_shape(value)}")
        return None
    text = value.strip() if isinstance(value, str) else gold_text(value)
    if not text:
        rows.bad(where, f"empty field {name!r}")
        return None
    return ascii_digits(text)


def _shape(value) -> str:
    if isinstance(value, list):
        inner = next(type(v).__name__ for v in value if isinstance(v, (Mapping, list)))
        return f"a list holding a {inner}"
    return type(value).__name__


# ---------------------------------------------------------------- row parsers

def _gsm8k_records(pairs: Iterable[tuple[str, dict]], rows: Rows, source: str, stem: str) -> list[Record]:
    """GSM8K published schema: `question`, `answer` ending in "#### N"."""
    out, ids = [], UniqueIds()
    for where, row in pairs:
        question = _text(row, "question", where, rows)
        answer = _answer(row, "answer", where, rows) if question is not None else None
        if question is None or answer is None:
            continue
        if DEFAULT_MARKER not in answer or not gold_from_answer(answer):
            rows.bad(where, f"answer has no '{DEFAULT_MARKER} N' final line")
            continue
        record = Record(id=_row_id(source, stem, where), prompt=question, answer=gold_from_answer(answer),
                        source=source, solution=clean_gsm8k_solution(answer))
        ids.check(record.id, where)
        out.append(record)
    return out


def _math_record(row: Mapping, where: str, rows: Rows, source: str, rid: str) -> Record | None:
    """MATH row: `problem` + (`answer` if given, MATH-500 style, else last \\boxed{} of `solution`)."""
    problem = _text(row, "problem", where, rows)
    if problem is None:
        return None
    answer = ascii_digits(gold_text(row.get("answer"))) if not isinstance(row.get("answer"), Mapping) else ""
    solution = row.get("solution") if isinstance(row.get("solution"), str) else ""
    if not answer:
        if not solution:
            rows.bad(where, "missing field 'answer' and 'solution'")
            return None
        answer = ascii_digits((last_boxed(solution) or "").strip())
        if not answer:
            rows.bad(where, "no \\boxed{} answer in 'solution'")
            return None
    return Record(id=rid, prompt=problem, answer=answer, source=source, solution="")


def _math_rows(pairs: Iterable[tuple[str, dict]], rows: Rows, source: str, stem: str) -> list[Record]:
    out, ids = [], UniqueIds()
    for where, row in pairs:
        rid = str(row.get("unique_id") or _row_id(source, stem, where))
        if (record := _math_record(row, where, rows, source, rid)) is not None:
            ids.check(record.id, where)
            out.append(record)
    return out


def _table_records(pairs: Iterable[tuple[str, dict]], rows: Rows, source: str, stem: str,
                   fields: Mapping[str, str | None]) -> list[Record]:
    """Generic rows with a field mapping {prompt, answer, id}; answers go through gold_from_answer."""
    out, ids = [], UniqueIds()
    for where, row in pairs:
        prompt = _text(row, fields["prompt"], where, rows)
        answer = _answer(row, fields["answer"], where, rows) if prompt is not None else None
        if prompt is None or answer is None:
            continue
        gold = gold_from_answer(answer)
        if not gold:
            rows.bad(where, f"empty answer in field {fields['answer']!r}")
            continue
        rid = row.get(fields["id"]) if fields["id"] else None
        record = Record(id=str(rid) if rid not in (None, "") else _row_id(source, stem, where),
                        prompt=prompt, answer=gold, source=source,
                        solution=clean_gsm8k_solution(answer) if DEFAULT_MARKER in answer else "")
        ids.check(record.id, where)
        out.append(record)
    return out


def _fields(fields: Mapping[str, str | None] | None, prompt: str = "prompt") -> dict[str, str | None]:
    return {"prompt": prompt, "answer": "answer", "id": None, **(fields or {})}


# ---------------------------------------------------------------- readers

def read_gsm8k(path: str | Path, *, malformed: str = "skip", report: ReadReport | None = None,
               source: str = "gsm8k") -> list[Record]:
    """GSM8K published schema (jsonl or parquet): `question`, `answer` ending in "#### N"."""
    path, rows = Path(path), Rows(malformed, report)
    return _gsm8k_records(_iter_table(path, rows), rows, source, path.stem)


def read_math(path: str | Path, *, malformed: str = "skip", report: ReadReport | None = None,
              source: str = "math") -> list[Record]:
    """MATH: a Hendrycks split dir (`subject/*.json`), or jsonl/parquet (MATH-500 style allowed)."""
    path, rows = Path(path), Rows(malformed, report)
    if not path.is_dir():
        return _math_rows(_iter_table(path, rows), rows, source, path.stem)
    files = sorted(path.glob("*/*.json")) or sorted(path.glob("*.json"))
    if not files:
        raise DataError(f"{path}: no MATH files (expected {path}/<subject>/<n>.json)")
    out = []
    for file in files:
        rows.report.rows_read += 1
        try:
            row = json.loads(read_text(file))
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
    path, rows = Path(path), Rows(malformed, report)
    return _table_records(_iter_table(path, rows), rows, source or path.stem, path.stem, _fields(fields))


def read_hub(name: str, *, split: str, config: str | None = None,
             fields: Mapping[str, str | None] | None = None, malformed: str = "skip",
             report: ReadReport | None = None, schema: str = "table", source: str | None = None) -> list[Record]:
    """A Hugging Face hub dataset through `datasets` (imported lazily; needs a network or its cache).

    schema: "gsm8k" or "math" parse rows as those readers do; "table" uses the field mapping.
    Raises HubUnavailable (a DataError) when `datasets` is missing or the dataset cannot be loaded.
    """
    rows = Rows(malformed, report)
    source = source or name.split("/")[-1]
    pairs = _iter_hub(name, config, split, rows)
    if schema == "gsm8k":
        return _gsm8k_records(pairs, rows, source, split)
    if schema == "math":
        return _math_rows(pairs, rows, source, split)
    return _table_records(pairs, rows, source, split, _fields(fields, prompt="question"))


def read_reasoning_gym(dataset: str, *, size: int, seed: int) -> list[Record]:
    """Problems generated locally by reasoning-gym (Apache-2.0; GSM8K-derived `gsm_symbolic`, ...).

    `solution` is the generator's worked solution when it ends in "#### <gold>" (gsm_symbolic's does),
    so the supervised warm-up can use it.
    """
    try:
        import reasoning_gym
    except ImportError as err:
        raise DataError(f"data.source 'reasoning-gym' needs the 'reasoning-gym' package "
                        f"(pip install {REASONING_GYM_PIN}, pinned in requirements.txt), "
                        "or use data.source 'synthetic'") from err
    try:
        entries = list(reasoning_gym.create_dataset(dataset, size=size, seed=seed))
    except Exception as err:  # noqa: BLE001 - unknown dataset name etc.
        raise DataError(f"data.reasoning_gym.dataset: {dataset!r}: {_first_line(err)}") from err
    out = []
    for i, entry in enumerate(entries):
        gold = gold_text(entry.get("answer"))
        cot = (entry.get("metadata") or {}).get("answer_cot")
        has_marker = isinstance(cot, str) and DEFAULT_MARKER in cot
        solution = cot.strip() if has_marker and gold_from_answer(cot) == gold else ""
        out.append(Record(id=f"{dataset}-{seed}-{i}", prompt=str(entry["question"]).strip(), answer=gold,
                          source=dataset, solution=solution))
    return out
