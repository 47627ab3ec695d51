"""Atomic writers, for files and directories: a reader (DVC, a resumed run, a person) never sees half an output.

A file is written to a temporary sibling (same file system), fsynced, then moved over the target with os.replace,
which is atomic on POSIX and Windows; a directory is filled as a temporary sibling and swapped in. On any error the
temporary is removed and the previous content, if any, is left untouched.

One permission policy for every output: a file gets what open() would give it (0o666 less the umask), a directory
what mkdir() would (0o777 less the umask), never the private 0600 / 0700 that mkstemp / mkdtemp create temporaries
with. `atomic_file`, `atomic_dir` and `output_dir` below apply it; every writer in tarpo/ and pipeline/ goes through
them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tarpo.errors import with_filename

FILE_MODE = 0o666  # before the umask, as open() creates files
DIR_MODE = 0o777   # before the umask, as mkdir() creates directories


def umask_mode(mode: int) -> int:
    """`mode` with the process umask applied: what open() or mkdir() would have created (mkstemp makes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


@contextmanager
def atomic_file(path: str | os.PathLike, *, binary: bool = False) -> Iterator[IO]:
    """A handle to write `path`'s new content to; it replaces `path` when the block ends without an error.

    Text mode is UTF-8 with "\n" line ends. An OSError that names no file, or the temporary, is re-raised naming
    `path` (write() and flush() name no file); one naming another file (a source being read) is left as it is.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:  # read-only, full: name the file the user knows
        raise with_filename(exc, target)
    try:
        os.fchmod(fd, umask_mode(FILE_MODE))
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="\n")) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, tmp_name):
            with_filename(exc, target)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """An empty directory to fill; it replaces the directory `path` when the block ends without an error.

    The old tree is moved aside, the new one renamed in, then the old one deleted; after an error the partial
    directory is deleted and `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, umask_mode(DIR_MODE))
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def output_dir(path: str | os.PathLike) -> Path:
    """Create the (new) directory `path` for an output with the policy's permissions; for staging areas that
    publish their own way (pipeline.publish)."""
    directory = Path(path)
    directory.mkdir()
    os.chmod(directory, umask_mode(DIR_MODE))
    return directory


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace path with text atomically, creating parent directories."""
    with atomic_file(path) as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (NaN/inf rejected before anything is written), sorted keys, trailing newline."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """One JSON object per line, in the given order; strict JSON as in write_json_atomic."""
    lines = [json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows]
    return write_text_atomic(path, "".join(lines))
