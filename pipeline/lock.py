"""One workspace, one writer: the stage commands hold an exclusive lock on `.tarpo.lock` while they run.

Two `train` runs at once on one workspace both succeeded and interleaved checkpoints/steps.jsonl. The lock is an
fcntl.flock on a file in the workspace, so the kernel releases it when its process dies (no stale lock to delete
after a kill -9). The holder writes its pid, command and start time into the file; a second command refuses with
one line naming them. Processes the holder starts (accelerate's children, `cli.py run` calling each stage) run
under its lock: they find its pid in TARPO_WORKSPACE_LOCK and the lock file, and take nothing. Under a launcher
the user started (`accelerate launch`, srun), only global rank 0 takes the lock. Once held, the journals of a
publication a killed process left behind are finished first (pipeline.publish.recover).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from pipeline import paths

HELD_ENV = "TARPO_WORKSPACE_LOCK"   # pid of the process holding the lock, inherited by the processes it starts


class WorkspaceBusy(RuntimeError):
    """Another process holds the workspace lock; the message names it."""


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _runs_under_holder(path: Path) -> bool:
    """True in a process started by the lock's holder (or in the holder itself: `cli.py run`)."""
    held = os.environ.get(HELD_ENV)
    return bool(held) and (held == str(os.getpid()) or str(_holder(path).get("pid")) == held)


def _not_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0") or 0) > 0


def describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it is starting: no details yet)"
    return f"pid {holder['pid']} (`{holder.get('command', '?')}`, started {holder.get('started', '?')})"


@contextlib.contextmanager
def workspace_lock(command: str, root: str | Path = ".", log=print) -> Iterator[None]:
    """Hold the workspace's write lock for the block; WorkspaceBusy (naming the holder) when another has it."""
    path = Path(root) / paths.LOCK_FILE
    if _runs_under_holder(path) or _not_rank_zero():
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkspaceBusy(f"{path}: this workspace is in use by {describe(_holder(path))}; one workspace has "
                                "one writer: wait for it to finish or stop it, or use another workspace (a copy "
                                "or a DVC experiment)") from None
        holder = {"pid": os.getpid(), "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError:  # a full disk: the lock holds all the same; the stage's own first write says what is wrong
            pass
        previous = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = str(os.getpid())
        try:
            from pipeline.publish import recover

            recover(root, log=log)
            yield
        finally:
            if previous is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = previous
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock (the kernel also does when the process dies)


def command_line() -> str:
    """What the holder is, for the message: `python cli.py train --steps 3`."""
    return " ".join(["python", Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
