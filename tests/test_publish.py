"""pipeline/publish.py: a stage's output set is all old or all new, whatever point a process is killed at."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import paths
from pipeline.publish import FAULT_ENV, FAULT_READY_ENV, publishing, recover

ROOT = Path(__file__).resolve().parents[1]

# A stage with a directory and two files: version N writes N everywhere, so a mix is visible.
WRITER = """
import sys
from pipeline.publish import publishing
version = sys.argv[1]
with publishing("demo", ["data/prepared", "metrics/demo.json", "plots/demo.csv"]) as out:
    d = out.dir("data/prepared")
    (d / "train.jsonl").write_text(version)
    (d / "eval.jsonl").write_text(version)
    out.file("metrics/demo.json").write_text(version)
    out.file("plots/demo.csv").write_text(version)
"""
FILES = ("data/prepared/train.jsonl", "data/prepared/eval.jsonl", "metrics/demo.json", "plots/demo.csv")


def versions(ws: Path) -> set[str]:
    return {(ws / f).read_text() if (ws / f).exists() else "missing" for f in FILES}


def leftovers(ws: Path) -> list[str]:
    return sorted(str(p.relative_to(ws)) for p in ws.rglob(".*") if p.name != paths.PUBLISH_DIR)


def write(ws: Path, version: str, fault: str | None = None, wait: bool = False):
    env = {**os.environ, "PYTHONPATH": str(ROOT), FAULT_READY_ENV: str(ws / "ready")}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    proc = subprocess.Popen([sys.executable, "-c", WRITER, version], cwd=ws, env=env, stderr=subprocess.PIPE,
                            text=True)
    if wait:
        return proc
    proc.wait(timeout=60)
    return proc


def test_a_publication_replaces_the_whole_set(tmp_path):
    assert write(tmp_path, "1").returncode == 0
    assert write(tmp_path, "2").returncode == 0
    assert versions(tmp_path) == {"2"}
    assert leftovers(tmp_path) == []
    assert not list((tmp_path / paths.PUBLISH_DIR).iterdir())


def test_an_error_while_staging_keeps_every_old_output(tmp_path, monkeypatch):
    assert write(tmp_path, "1").returncode == 0
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZeroDivisionError):
        with publishing("demo", ["data/prepared", "metrics/demo.json"]) as out:
            (out.dir("data/prepared") / "train.jsonl").write_text("2")
            1 / 0
    assert versions(tmp_path) == {"1"} and leftovers(tmp_path) == []


def test_a_directory_in_place_of_an_output_file_is_never_swapped_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics" / "demo.json").mkdir(parents=True)
    with pytest.raises(IsADirectoryError) as err:
        with publishing("demo", ["metrics/demo.json"]) as out:
            out.file("metrics/demo.json").write_text("1")
    assert err.value.filename == "metrics/demo.json"
    assert (tmp_path / "metrics" / "demo.json").is_dir() and leftovers(tmp_path) == []


@pytest.mark.parametrize("point, killed_by, expect", [
    ("staged", signal.SIGKILL, "1"),     # before the journal: the old set stays, the staged files are dropped
    ("journal", None, "2"),              # the commit point passed: rolled forward by the next start
    ("renamed-1", None, "2"),            # half the renames done: rolled forward
])
def test_sigkill_at_each_point_leaves_old_or_new_after_recovery(tmp_path, point, killed_by, expect):
    assert write(tmp_path, "1").returncode == 0
    if killed_by is None:  # the process kills itself with SIGKILL at the point
        proc = write(tmp_path, "2", fault=f"demo:{point}:kill")
    else:
        proc = write(tmp_path, "2", fault=f"demo:{point}:pause", wait=True)
        _wait_for(tmp_path / "ready", proc)
        proc.send_signal(killed_by)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    torn = versions(tmp_path)
    assert recover(tmp_path, log=lambda _: None) == (["demo"] if expect == "2" else [])
    assert versions(tmp_path) == {expect}
    if point == "renamed-1":  # on disk the set was torn until the journal was rolled forward
        assert len(torn) > 1, torn
    assert write(tmp_path, "3").returncode == 0   # the next publication also drops what the killed one staged
    assert versions(tmp_path) == {"3"} and leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_renames_waits_until_the_set_is_published(tmp_path, sig):
    assert write(tmp_path, "1").returncode == 0
    proc = write(tmp_path, "2", fault="demo:renamed-1:pause", wait=True)
    _wait_for(tmp_path / "ready", proc)
    proc.send_signal(sig)   # held back: the publication finishes, then the signal ends the process
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert versions(tmp_path) == {"2"} and leftovers(tmp_path) == []


def _wait_for(path: Path, proc) -> None:
    deadline = time.monotonic() + 60
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), proc.stderr.read() if proc.poll() is not None else "never reached the fault point"
