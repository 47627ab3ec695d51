"""User-caused input and file-system failures, and the readers that raise them with one line.

`tarpo` raises; only `cli.py` prints the line and exits with code 2. Every message names the file, and where
it helps the byte offset or line, and which stage rewrites the file, so the fix is in the line itself. Errors
that are not caused by the user (a bug) are never turned into these classes: they keep their traceback.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, Callable

# errno -> what the user is told; anything else an OSError says is left to its traceback.
_OS_PROBLEMS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EISDIR: "is a directory, expected a file", errno.ENOTDIR: "a parent is not a directory",
                errno.EEXIST: "a file is in the way of a directory"}
_DISK_FULL_TEXTS = ("No space left on device", "StorageFull")


class InputError(ValueError):
    """An input file cannot be read as what it should be: not UTF-8, a directory, malformed JSON."""


def _rerun(stage: str | None) -> str:
    return f"; re-run `python cli.py {stage}`" if stage else ""


def read_text(path: str | os.PathLike, *, stage: str | None = None) -> str:
    """UTF-8 text of `path`; a directory or undecodable bytes raise InputError naming the file (and byte)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file{_rerun(stage)}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte offset {exc.start}: {data[exc.start:exc.start + 1]!r})"
                         f"{_rerun(stage)}") from None


def read_json(path: str | os.PathLike, *, stage: str) -> dict[str, Any]:
    """The JSON object in `path`; anything else raises InputError naming file, line and the stage that rewrites it."""
    text = read_text(path, stage=stage)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}){_rerun(stage)}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(value).__name__}{_rerun(stage)}")
    return value


def read_jsonl_log(path: str | os.PathLike, *, stage: str, warn: Callable[[str], None]) -> list[dict]:
    """Rows of an append-only JSON-lines log; a torn LAST line (a kill mid-append) is dropped with a warning.

    A malformed line anywhere else is not a kill's doing, so it raises InputError naming file and line.
    """
    lines = read_text(path, stage=stage).splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                warn(f"{path}:{number}: dropping a torn last line (an interrupted write)")
                continue
            raise InputError(f"{path}:{number}: malformed JSON ({exc.msg}){_rerun(stage)}") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object{_rerun(stage)}")
        rows.append(row)
    return rows


def disk_error_line(exc: BaseException) -> str | None:
    """One line for a file-system failure the user can fix (disk full, read-only, a directory in the way), else None.

    Writers outside Python's io (safetensors, torch.save) report a full disk only in their message text.
    """
    if isinstance(exc, OSError) and exc.errno in _OS_PROBLEMS:
        where = f" ({exc.filename2 or exc.filename})" if exc.filename else ""
        return f"error: {_OS_PROBLEMS[exc.errno]}{where}"
    if not isinstance(exc, OSError) and any(text in str(exc) for text in _DISK_FULL_TEXTS):
        return f"error: no space left on device ({str(exc).splitlines()[0][:200]})"
    return None


def with_filename(exc: OSError, path: str | os.PathLike) -> OSError:
    """`exc` naming `path`, the file the user knows: write() and flush() name no file, os.replace the temporary."""
    exc.filename, exc.filename2 = str(path), None
    return exc

