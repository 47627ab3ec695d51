"""pipeline/lock.py: one writer per workspace, between real processes; the kernel frees the lock of a dead one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import paths
from pipeline.lock import HELD_ENV, WorkspaceBusy, workspace_lock

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from pipeline.lock import workspace_lock
with workspace_lock("python cli.py train --steps 3"):
    open("held", "w").close()
    time.sleep(120)
"""


def hold(ws: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(HELD_ENV, None)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=ws, env=env)
    deadline = time.monotonic() + 60
    while not (ws / "held").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (ws / "held").exists(), "the holder never took the lock"
    return proc


def cli(ws: Path, *argv: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    if extra_env is None:
        env.pop(HELD_ENV, None)
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv, "--params", str(ROOT / "params.yaml")],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=300)


IN_CHILD = """
from pipeline.lock import workspace_lock
with workspace_lock("child"):
    print("ran")
"""


def child(ws: Path, held: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), HELD_ENV: held}
    return subprocess.run([sys.executable, "-c", IN_CHILD], cwd=ws, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_first_and_a_killed_holder_frees_the_lock(tmp_path, monkeypatch):
    monkeypatch.delenv(HELD_ENV, raising=False)
    holder = hold(tmp_path)
    try:
        busy = cli(tmp_path, "prepare")
        assert busy.returncode == 2 and "Traceback" not in busy.stderr
        assert busy.stderr.splitlines() == [busy.stderr.strip()]  # one line
        assert f"in use by pid {holder.pid} (`python cli.py train --steps 3`, started " in busy.stderr
        assert not (tmp_path / paths.PREPARED_DIR).exists()      # refused before any work
        # accelerate's children of a `train` (they inherit its pid in the env) must not wait for their own parent
        assert child(tmp_path, str(holder.pid)).stdout == "ran\n"
        stranger = child(tmp_path, "1")   # names a process that does not hold it
        assert stranger.returncode != 0 and "in use by pid" in stranger.stderr
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: only the kernel can release the lock
        holder.wait()
    with workspace_lock("after the kill", tmp_path, log=lambda _: None):
        assert f'"pid": {os.getpid()}' in (tmp_path / paths.LOCK_FILE).read_text()


def test_lock_in_process_is_reentrant_and_released(tmp_path, monkeypatch):
    monkeypatch.delenv(HELD_ENV, raising=False)
    with workspace_lock("outer", tmp_path, log=lambda _: None):
        with workspace_lock("inner", tmp_path, log=lambda _: None):  # `cli.py run` calls each stage under it
            assert os.environ[HELD_ENV] == str(os.getpid())
        assert str(os.getpid()) in (tmp_path / paths.LOCK_FILE).read_text()
    assert HELD_ENV not in os.environ and (tmp_path / paths.LOCK_FILE).read_text() == ""
    with workspace_lock("again", tmp_path, log=lambda _: None):
        pass


def test_the_lock_finishes_an_interrupted_publication_first(tmp_path, monkeypatch):
    monkeypatch.delenv(HELD_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    from pipeline.publish import OutputSet

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "a.json").write_text("old")
    outputs = OutputSet("demo", ["metrics/a.json", "plots/b.csv"])   # their common directory holds the journal
    outputs.file("metrics/a.json").write_text("new")
    outputs.file("plots/b.csv").write_text("new")
    monkeypatch.setattr("pipeline.publish.fault_point", lambda stage, point: (_ for _ in ()).throw(SystemExit)
                        if point == "renamed-1" else None)
    with pytest.raises(SystemExit):  # as if killed right after the first rename
        outputs.publish()
    assert not (tmp_path / "plots" / "b.csv").exists()
    messages = []
    with workspace_lock("next stage", tmp_path, log=messages.append):
        assert [(tmp_path / n).read_text() for n in ("metrics/a.json", "plots/b.csv")] == ["new", "new"]
    assert "finished publishing the outputs of an interrupted `demo` run" in messages[0]


def test_busy_message_names_the_holder(tmp_path):
    holder = hold(tmp_path)
    try:
        with pytest.raises(WorkspaceBusy, match=rf"in use by pid {holder.pid} "):
            with workspace_lock("second", tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
