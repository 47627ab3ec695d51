"""A stage's output SET published as one unit: after a kill at any point, every output is old or every one is new.

Each file is already written atomically (tarpo.io); a stage writes several, and a kill between two renames left
new data beside old metrics. Here every output is first written to a staged sibling (`.NAME.new-TOKEN`, same file
system, so renames are atomic), then published:

1. a journal listing (target, staged, backup) is written atomically under `<root>/.tarpo-publish/`: the commit
   point (before it, a kill leaves all old outputs; after it, the set is rolled forward);
2. each target is renamed to its backup, each staged path to its target; then backups and journal are removed.

SIGINT/SIGTERM are held back while the journal and the renames happen, so a signal lets the publication finish
first; a SIGKILL (or power loss) half-way is finished by `recover`, which the workspace lock runs before any stage
reads anything (and each publication runs for its own root). Every step of rolling forward is idempotent.
`<root>` is the common directory of the targets: the workspace for the pipeline's stages, a run's directory in a
study. `TARPO_FAULT_POINT=<stage>:<point>:<pause|kill>` stops a publication at a point (staged, journal,
renamed-1; `register:version` right after a registry version is created) for tests; unset, it is inert.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

from pipeline import paths
from tarpo.io import output_dir, write_json_atomic

FAULT_ENV = "TARPO_FAULT_POINT"      # <stage>:<staged|journal|renamed-1>:<pause|kill>
FAULT_READY_ENV = "TARPO_FAULT_READY"  # a paused process creates this file, then waits for a signal
POINTS = ("staged", "journal", "renamed-1")


class OutputSet:
    """The outputs of one stage run: `file(target)` / `dir(target)` give the staged path to write instead."""

    def __init__(self, stage: str, targets: list[str | Path]):
        self.stage = stage
        self.targets = [Path(t) for t in targets]
        self.root = Path(os.path.commonpath([str(t.absolute().parent) for t in self.targets]))
        self.token = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.staged = {t: t.with_name(f".{t.name}.new-{self.token}") for t in self.targets}
        self.committed = False   # once the journal exists, the staged files belong to it (recover needs them)
        recover(self.root, log=lambda _: None)   # a publication of an earlier, killed run comes first
        for target in self.targets:  # what a run killed before its commit point staged (no journal names it)
            for orphan in [*target.parent.glob(f".{target.name}.new-*"), *target.parent.glob(f".{target.name}.old-*")]:
                _remove(orphan)

    def file(self, target: str | Path) -> Path:
        """Where to write the output file `target` (its directory exists)."""
        if Path(target).is_dir():  # a directory in the way is the user's: say so, never swap it out
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        return self._staged(target)

    def dir(self, target: str | Path) -> Path:
        """An empty directory to fill in place of the output directory `target` (the permissions of any output:
        tarpo.io.output_dir)."""
        return output_dir(self._staged(target))

    def _staged(self, target: str | Path) -> Path:
        staged = self.staged[Path(target)]
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    def name_targets(self, exc: OSError) -> OSError:
        """`exc` naming the output the user knows, not its staged sibling."""
        for target, staged in self.staged.items():
            for attr in ("filename", "filename2"):
                value = getattr(exc, attr, None)
                if value is not None and str(staged) in str(value):
                    setattr(exc, attr, str(value).replace(str(staged), str(target)))
        return exc

    def discard(self) -> None:
        if self.committed:
            return
        for staged in self.staged.values():
            _remove(staged)

    def publish(self) -> None:
        """Swap every staged output in, as one unit (see the module docstring)."""
        missing = [str(t) for t, s in self.staged.items() if not os.path.lexists(s)]
        if missing:
            raise RuntimeError(f"{self.stage}: outputs never written: {', '.join(missing)}")  # a bug, not the user's
        fault_point(self.stage, "staged")
        entries = [{"target": _rel(t, self.root), "staged": _rel(s, self.root),
                    "backup": _rel(t.with_name(f".{t.name}.old-{self.token}"), self.root)}
                   for t, s in self.staged.items()]
        journal = self.root / paths.PUBLISH_DIR / f"{self.stage}-{self.token}.json"
        with signals_held():
            write_json_atomic(journal, {"stage": self.stage, "entries": entries})
            self.committed = True
            fault_point(self.stage, "journal")
            _roll_forward(journal, self.root, fault=self.stage)


@contextlib.contextmanager
def publishing(stage: str, targets: list[str | Path]) -> Iterator[OutputSet]:
    """Stage the outputs inside the block; publish them together when it ends normally, else drop them all."""
    outputs = OutputSet(stage, targets)
    try:
        yield outputs
        outputs.publish()
    except OSError as exc:
        raise outputs.name_targets(exc)
    finally:
        outputs.discard()  # nothing left after a publication; everything staged after an error or a signal


def recover(root: str | Path = ".", log=print) -> list[str]:
    """Finish every publication a killed process left under `root` (roll forward); returns their stages."""
    done = []
    for journal in sorted((Path(root) / paths.PUBLISH_DIR).glob("*.json")):
        try:
            stage = json.loads(journal.read_text()).get("stage", journal.stem)
        except ValueError:  # a torn journal cannot exist (written atomically); one left by hand is skipped
            continue
        _roll_forward(journal, Path(root))
        log(f"finished publishing the outputs of an interrupted `{stage}` run ({journal.name})")
        done.append(stage)
    return done


def _roll_forward(journal: Path, root: Path, fault: str | None = None) -> None:
    entries = json.loads(journal.read_text())["entries"]
    for number, entry in enumerate(entries, start=1):
        target, staged, backup = (root / entry[k] for k in ("target", "staged", "backup"))
        if os.path.lexists(staged):
            if os.path.lexists(target) and not os.path.lexists(backup):
                os.replace(target, backup)
            elif os.path.lexists(target):   # the backup was taken already: what is there now is not the old one
                _remove(target)
            os.replace(staged, target)
        elif not os.path.lexists(target) and os.path.lexists(backup):  # staged file lost by hand: keep the old one
            os.replace(backup, target)
        if fault and number == 1:
            fault_point(fault, "renamed-1")
    for entry in entries:
        _remove(root / entry["backup"])
    journal.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def _rel(path: Path, root: Path) -> str:
    return os.path.relpath(path.absolute(), root)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (they are delivered right after it)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def fault_point(stage: str, point: str) -> None:
    """Test hook (TARPO_FAULT_POINT): pause here until a signal arrives, or SIGKILL this process here."""
    wanted = os.environ.get(FAULT_ENV, "")
    if not wanted.startswith(f"{stage}:{point}:"):
        return
    action = wanted.rsplit(":", 1)[1]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    ready = os.environ.get(FAULT_READY_ENV)
    if ready:
        Path(ready).write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not signal.sigpending():  # a held signal ends the pause too
        time.sleep(0.05)
