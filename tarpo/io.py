"""Atomic file writers: a reader (DVC, a resumed run, a person) never sees half a file.

Write to a temporary file in the destination's directory (same file system), fsync, then
os.replace, which is atomic on POSIX and Windows. On any error the temporary file is removed
and the previous content, if any, is left untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tarpo.errors import with_filename


def umask_mode(mode: int) -> int:
    """`mode` with the process umask applied: what open() or mkdir() would have created (mkstemp makes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace path with text atomically, creating parent directories."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:  # read-only, full: name the file the user knows
        raise with_filename(exc, target)
    try:
        os.fchmod(fd, umask_mode(0o666))
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            with_filename(exc, target)
        raise
    return target


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (NaN/inf rejected before anything is written), sorted keys, trailing newline."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """One JSON object per line, in the given order; strict JSON as in write_json_atomic."""
    lines = [json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows]
    return write_text_atomic(path, "".join(lines))
