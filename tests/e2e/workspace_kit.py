"""The workspace the bad-input table runs against, the helpers that break it, and the check every row makes.

One tiny workspace is built once per session (prepare, warmup, train, evaluate on `tiny`); a row that can write
gets its own copy (large files hard-linked: every writer replaces files, none edits them in place).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import tqdm.auto
import yaml
from typer.testing import CliRunner

import cli
from pipeline import paths
from tests.e2e.conftest import ROOT, TEST_PROFILE, _merge

# Libraries that bind a logging handler to sys.stderr on first use are imported here, not inside a CliRunner
# invocation (which swaps sys.stderr): their warnings must not land in a row's captured stderr.
import mlflow  # noqa: F401,E402
import peft  # noqa: F401,E402
import transformers  # noqa: F401,E402

PROFILE = _merge(TEST_PROFILE, {"train": {"steps": 2, "keep_checkpoints": 2},
                                "eval": {"num_samples": 2, "pass_k": [1], "max_problems": 2}})
LARGE_FILE = 2 << 20                        # bytes; see _fingerprint
LINKED_SUFFIXES = (".safetensors", ".pt")   # big, and only ever replaced, never edited in place


# ----------------------------------------------------------------------------------------- workspace
def invoke(argv: list[str]):
    return CliRunner().invoke(cli.app, argv)


@contextlib.contextmanager
def inside_workspace(ws: Path, profile: dict) -> Iterator[Path]:
    """Run in-process CLI commands in `ws`: params.yaml = the repo's merged with `profile`, cwd = ws, MLflow stores
    forgotten (their URI is relative); the working directory pytest started in comes back afterwards."""
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), profile)
    (ws / paths.PARAMS).write_text(yaml.safe_dump(params, sort_keys=False))
    old = Path.cwd()
    os.chdir(ws)
    forget_mlflow_stores()
    try:
        yield ws
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """prepare -> warmup -> train -> evaluate on `tiny`, in-process, once."""
    ws = tmp_path_factory.mktemp("bad-inputs") / "ws"
    ws.mkdir()
    with inside_workspace(ws, PROFILE):
        for stage in ("prepare", "warmup", "train", "evaluate"):
            result = invoke([stage])
            assert result.exit_code == 0, f"{stage}: {result.output}\n{result.exception!r}"
    return ws


def _copy_file(src: str, dst: str) -> None:
    if src.endswith(LINKED_SUFFIXES):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def forget_mlflow_stores() -> None:
    """MLflow caches one store (and its open sqlite connections) per URI string, and `sqlite:///mlflow.db` is
    relative: without this, a row in its own workspace copy would talk to the previous row's database."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._model_registry.registry import ModelRegistryStoreRegistry
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    for registry in (TrackingStoreRegistry, ModelRegistryStoreRegistry):
        registry._get_store_with_resolved_uri.cache_clear()
    for store in (SqlAlchemyStore, RegistryStore):  # engines (and their pooled connections) are cached by URI too
        for engine in store._engine_map.values():
            engine.dispose()
        store._engine_map.clear()


def _fingerprint(path: Path) -> str:
    """sha256 of the bytes; for large files (model weights) size, mtime and inode: every writer we have either
    replaces a file (new inode) or writes into it (new mtime), and hashing 30 MB twice per row is most of the time."""
    info = path.stat()
    if info.st_size > LARGE_FILE:
        return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(ws: Path) -> dict[str, str]:
    """A fingerprint of every file under the workspace, by relative path."""
    return {str(p.relative_to(ws)): _fingerprint(p) for p in sorted(ws.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ setup helpers
def fresh_copy(ws: Path) -> None:
    """Changes nothing: the row runs a stage far enough that a bug could write, so it gets its own copy."""


def put(rel: str, content: str | bytes) -> Callable[[Path], None]:
    """Replace (never edit in place: the file may be hard-linked) `rel` with `content`."""
    def setup(ws: Path) -> None:
        path = ws / rel
        if path.is_dir():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def delete(rel: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        path = ws / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return setup


def as_dir(rel: str) -> Callable[[Path], None]:
    """A directory where a file should be."""
    def setup(ws: Path) -> None:
        delete(rel)(ws)
        (ws / rel / "oops").mkdir(parents=True)
    return setup


def edit(rel: str, change: Callable[[str], str]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        put(rel, change((ws / rel).read_text()))(ws)
    return setup


def edit_bytes(rel: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        put(rel, change((ws / rel).read_bytes()))(ws)
    return setup


def chain(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        for one in setups:
            one(ws)
    return setup


def patch(target: str, value) -> Callable[[pytest.MonkeyPatch], None]:
    return lambda monkeypatch: monkeypatch.setattr(target, value)


def raise_oserror(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def nan_loss(*args, **kwargs):
    import torch

    from tarpo.objective import tarpo_loss
    loss, stats = tarpo_loss(*args, **kwargs)
    return loss * torch.tensor(float("nan")), stats


NOT_UTF8 = b'{"ran": true}\n\xff\xfe'
GARBAGE = b"\x00\x01garbage, not what this file should hold\xff" * 8
DATA_ROW = '{"question": "What is 2 + 3?", "answer": "#### 5"}\n'


def data_rows(n: int, start: int = 0) -> str:
    return "".join(f'{{"question": "What is {i} + 1?", "answer": "#### {i + 1}"}}\n' for i in range(start, start + n))


def jsonl_source(train: str = "train.jsonl", eval_: str = "eval.jsonl", *extra: str) -> list[str]:
    return ["prepare", "--set", "data.source=jsonl", "--set", f"data.train_path={train}",
            "--set", f"data.eval_path={eval_}", *[a for e in extra for a in ("--set", e)]]


# ------------------------------------------------------------------------------------------- a row
@dataclass
class Row:
    id: str
    argv: list[str]
    expect: str                                            # the one stderr line contains this
    params: str | bytes | None = None                      # written to a file outside the workspace, --params
    setup: Callable[[Path], None] | None = None            # breaks the workspace copy first
    fault: Callable[[pytest.MonkeyPatch], None] | None = None
    may_change: tuple[str, ...] = ()                       # path prefixes a row may legitimately rewrite
    lines: int = 1                                         # stderr lines (only the unavailable-preset help has more)
    xfail: str | None = None

    @property
    def shared(self) -> bool:
        """Rows that stop while reading their params cannot write: they share the built workspace."""
        return self.setup is None and self.fault is None and self.argv[0] != "prepare"


def copy_workspace(src: Path, dest: Path, link: bool = True) -> Path:
    shutil.copytree(src, dest, copy_function=_copy_file if link else shutil.copy2)
    return dest


def row_argv(row: Row, tmp_path: Path) -> list[str]:
    """The row's command line, with its params (if any) written to a file outside the workspace and named: by
    --params, or as the path argument of `config validate/show`."""
    argv = list(row.argv)
    if row.params is not None:
        params = tmp_path / "row-params.yaml"
        params.write_bytes(row.params if isinstance(row.params, bytes) else row.params.encode())
        argv += [str(params)] if argv[0] == "config" else ["--params", str(params)]
    return argv


def invoke_row(row: Row, ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Break the workspace as the row says and run its command: (result, snapshot before, snapshot after)."""
    if row.setup is not None:
        row.setup(ws)
    argv = row_argv(row, tmp_path)
    monkeypatch.chdir(ws)
    forget_mlflow_stores()
    before = snapshot(ws)
    bar = tqdm.auto.tqdm
    monkeypatch.setattr("tqdm.auto.tqdm", lambda *args, **kw: bar(*args, **{**kw, "disable": True}))  # TQDM_DISABLE
    monkeypatch.setattr("transformers.utils.logging._tqdm_active", False)
    if row.fault is not None:
        row.fault(monkeypatch)
    with warnings.catch_warnings():  # library deprecation warnings are not ours; the real CLI runs with them off
        warnings.simplefilter("ignore")
        result = invoke(argv)
    forget_mlflow_stores()
    monkeypatch.undo()  # the fault must not reach the snapshot below
    return result, before, snapshot(ws)


def run_row(row: Row, ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Break, run, and check one row: exit 2, one stderr line with `row.expect`, no traceback, nothing lost."""
    result, before, after = invoke_row(row, ws, tmp_path, monkeypatch)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.exception!r}\n{result.output[-2000:]}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    assert len(lines) == row.lines, f"expected {row.lines} stderr line(s), got {lines}"
    assert row.expect in lines[0], f"{row.expect!r} not in {lines[0]!r}"
    # the lock file is bookkeeping: it names its holder while held (a SIGKILLed one's details stay until the next)
    allowed = lambda rel: rel.startswith(row.may_change) or rel == paths.LOCK_FILE  # noqa: E731
    lost = [rel for rel, digest in before.items() if not allowed(rel) and after.get(rel) != digest]
    created = [rel for rel in after.keys() - before.keys() if not allowed(rel)]
    assert not lost and not created, f"changed or removed: {lost}; created: {created}"


