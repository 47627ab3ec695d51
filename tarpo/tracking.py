"""Tracking interface used by the trainer and stages; MLflow is one implementation, imported lazily.

`tarpo` talks to a `Tracker`; the `NullTracker` does nothing, so the library never branches on
"is tracking on". `MlflowTracker` talks to the store through `MlflowClient` (no fluent global
"active run"), so a train stage and a register stage in one process cannot trip over each other.

Departures from plain `mlflow.log_params` / `log_metrics`, on purpose:
1. Param values longer than MLflow's limit are cut with a visible marker instead of raising; params
   and metrics go out in batches within MLflow's per-request limits, so 300 keys never crash.
2. Non-finite metric values (a skipped step's NaN loss) are dropped, not logged: MLflow stores them,
   but they break the UI's charts and `compare`.
3. Resuming a run re-logs only changed params, as `param.changed.<key>` tags: MLflow params are
   immutable and a second, different value would raise at the end of a long run.
4. `check_tracking_uri` fails in seconds with one line naming the URI, before any training starts; a corrupt
   store (not an SQLite file, or one MLflow cannot query) is one line too, never a SQLAlchemy traceback.
5. A resumed run replays the steps after its checkpoint; a (metric, step) point already stored is not logged
   again, so the curves have one point per step.
6. Outages are bounded and never lose training: MLflow's HTTP retries (7, backoff factor 2: minutes against a dead
   server) are cut to HTTP_RETRY_DEFAULTS unless the user set them; a locked sqlite store or a server answering 5xx
   is named before work starts; `GuardedTracker` turns any store failure into one TrackingUnavailable, and while
   the trainer runs it only records it, so the trainer can checkpoint the step it is on before it stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

TRUNCATION_MARKER = "...[truncated]"
MAX_PARAM_VALUE = 6000      # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000        # MAX_TAG_VAL_LENGTH
MAX_KEY = 250               # MAX_ENTITY_KEY_LENGTH
PARAMS_PER_BATCH = 100      # MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000    # MAX_METRICS_PER_BATCH
CONNECT_TIMEOUT_S = 3.0
LOCK_WAIT_S = 10.0            # how long a locked sqlite store may stay locked before we say so
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}   # a dead server costs seconds, not minutes
STAGES_TAG = "tarpo.stages"   # every stage that logged to the run, in order (dvc.stage = the one that made it)


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or written; the message is one line naming the URI."""


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    @property
    def run_id(self) -> str | None: ...

    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Accepts everything, records nothing."""

    run_id = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        pass

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


# ------------------------------------------------------------------------------------ helpers
def truncate(value: str, limit: int) -> str:
    """`value` cut to `limit` characters, ending in TRUNCATION_MARKER when it was cut.

    >>> truncate("abcdef", 20)
    'abcdef'
    >>> len(truncate("x" * 10_000, 6000)), truncate("x" * 10_000, 6000).endswith(TRUNCATION_MARKER)
    (6000, True)
    """
    return value if len(value) <= limit else value[:limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys with string values.

    >>> flatten_params({"a": {"b": 1, "c": [1, 2]}, "d": None})
    {'a.b': '1', 'a.c': '[1, 2]', 'd': 'None'}
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else str(value)
    return flat


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (`sqlite:///rel.db`, `sqlite:////abs.db`), None for `:memory:`."""
    rest = uri[len("sqlite://"):]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:])


def _looks_like_sqlite(path: Path) -> bool:
    """An SQLite file starts with this header; an empty file is a new database."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    return head in (b"", b"SQLite format 3\x00")


def bound_http_retries() -> None:
    """MLflow's HTTP retry and timeout settings, bounded where the user has not set them (read at each request)."""
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _lock_line(uri: str, path: Path) -> str:
    return (f"MLflow store {uri}: {path} is locked by another process (a train, study or `mlflow ui` writing to it, "
            "or one that hangs); wait for it or stop it, then re-run; or set tracking.enabled=false")


def _check_not_locked(uri: str, path: Path, wait_s: float | None = None) -> None:
    """Read the schema of an existing sqlite store, read-only: a writer holding it longer than `wait_s`, or a file
    sqlite cannot read (truncated, overwritten), is one line before any work instead of MLflow's traceback later."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                                timeout=LOCK_WAIT_S if wait_s is None else wait_s)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise TrackingUnavailable(_lock_line(uri, path)) from None
        raise TrackingUnavailable(f"MLflow store {uri} cannot be used ({path}: {exc}); repair or move it away, "
                                  "or set tracking.enabled=false") from None
    except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
        raise TrackingUnavailable(f"MLflow store {uri} cannot be used ({path}: {exc}); repair or move it away, "
                                  "or set tracking.enabled=false") from None


def check_tracking_uri(uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise TrackingUnavailable unless the store at `uri` answers (http) or can be written (sqlite, file)."""
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    bound_http_retries()
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
                return
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:  # up but failing: every request would fail after its retries
                raise TrackingUnavailable(f"MLflow tracking server {uri} answers HTTP {exc.code} ({exc.reason}): it "
                                          "is up but failing; check its logs, or set tracking.uri=sqlite:///mlflow.db,"
                                          " or tracking.enabled=false") from None
            return  # the server answered; a 404 on /health (a proxy) is not our problem here
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailable(f"MLflow tracking server {uri} is not reachable ({reason}); start it, or set "
                                      "tracking.uri=sqlite:///mlflow.db, or tracking.enabled=false") from None
    if scheme == "sqlite":
        path = _sqlite_path(uri)
        directory = (path.parent if path is not None else Path(".")).resolve()
        if path is not None and path.exists() and not os.access(path, os.W_OK):
            raise TrackingUnavailable(f"MLflow store {uri}: {path} is not writable")
        if path is not None and (path.is_dir() or (path.is_file() and not _looks_like_sqlite(path))):
            raise TrackingUnavailable(f"MLflow store {uri}: {path} is not an SQLite database (a directory or a "
                                      "corrupt file); move it away, or point tracking.uri at the real store")
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            raise TrackingUnavailable(f"MLflow store {uri}: directory {directory} does not exist or is not writable")
        if path is not None and path.is_file() and path.stat().st_size:
            _check_not_locked(uri, path)
    elif scheme in ("", "file"):
        directory = Path(urllib.parse.urlparse(uri).path if scheme else uri).resolve()
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent
        if not os.access(directory, os.W_OK):
            raise TrackingUnavailable(f"MLflow store {uri}: {directory} is not writable")


def git_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """The commit (MLflow's own tag name, shown in the UI) and whether the tree had uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"mlflow.source.git.commit": commit, "git.dirty": str(bool(status)).lower()}


def dvc_tags(stage: str | None = None, root: str | Path | None = None) -> dict[str, str]:
    """DVC stage (from the env DVC sets for every stage command), experiment name, and dvc.lock's sha256."""
    tags: dict[str, str] = {}
    stage = stage or os.environ.get("DVC_STAGE")
    if stage:
        tags["dvc.stage"] = stage
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    lock = Path(root or os.environ.get("DVC_ROOT") or ".") / "dvc.lock"
    if lock.is_file():
        tags["dvc.lock.sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
    return tags


# ------------------------------------------------------------------------------------ MLflow
class MlflowTracker:
    """One MLflow run: new, or the run `run_id` continued (status set back to RUNNING)."""

    def __init__(self, uri: str, experiment: str, *, run_name: str | None = None, run_id: str | None = None,
                 tags: Mapping[str, Any] | None = None, stage: str | None = None,
                 artifact_location: str | None = None):
        import logging

        from mlflow.tracking import MlflowClient

        # MLflow logs "Creating initial MLflow database tables..." at INFO for every new sqlite store.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        self.uri = uri
        bound_http_retries()
        with store_errors(uri):
            if run_id is None:
                self.client, self.experiment_id = open_experiment(uri, experiment, artifact_location)
            else:  # the run's store exists already: nothing to create
                self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            if run_id is not None:
                run = self._existing_run(run_id)
                self.experiment_id = run.info.experiment_id
                self._run_id = run_id
                self._logged_params = dict(run.data.params)
                self._last_step = {key: max(m.step for m in self.client.get_metric_history(run_id, key))
                                   for key in run.data.metrics}  # a resumed run replays steps: log each once
                self.client.update_run(run_id, status="RUNNING")
            else:
                run = self.client.create_run(self.experiment_id, run_name=run_name)
                self._run_id = run.info.run_id
                self._logged_params, self._last_step = {}, {}
            stage_tags = dvc_tags(stage)
            stage_name = stage_tags.get("dvc.stage")
            if run_id is not None:
                # A continued run keeps the stage that created it; later stages are appended, never overwrite it.
                stage_tags.pop("dvc.stage", None)
                if stage_name:
                    stages = [s for s in run.data.tags.get(STAGES_TAG, "").split(",") if s]
                    stage_tags[STAGES_TAG] = ",".join(stages + [stage_name] * (stage_name not in stages))
            elif stage_name:
                stage_tags[STAGES_TAG] = stage_name
            self.set_tags({**git_tags(), **stage_tags, **(tags or {})})

    def _existing_run(self, run_id: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            raise TrackingUnavailable(f"cannot resume MLflow run {run_id}: it is not in the store {self.uri}; "
                                      "delete the checkpoints to start a new run, or point tracking.uri at "
                                      "the store that holds it") from None

    @property
    def run_id(self) -> str:
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        new, changed = [], {}
        for key, value in flatten_params(params).items():
            key, value = key[:MAX_KEY], truncate(value, MAX_PARAM_VALUE)
            old = self._logged_params.get(key)
            if old is None:
                new.append(Param(key, value))
                self._logged_params[key] = value
            elif old != value:
                changed[f"param.changed.{key}"] = value
        for start in range(0, len(new), PARAMS_PER_BATCH):
            self.client.log_batch(self._run_id, params=new[start:start + PARAMS_PER_BATCH])
        self.set_tags(changed)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        rows = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number) and (step is None or step > self._last_step.get(key[:MAX_KEY], -1)):
                rows.append(Metric(key[:MAX_KEY], number, now_ms, step or 0))
        for start in range(0, len(rows), METRICS_PER_BATCH):
            self.client.log_batch(self._run_id, metrics=rows[start:start + METRICS_PER_BATCH])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self._run_id, text, artifact_file)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        if Path(local_path).is_dir():
            self.client.log_artifacts(self._run_id, str(local_path), artifact_path)
        else:
            self.client.log_artifact(self._run_id, str(local_path), artifact_path)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self._run_id, figure, artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        rows = [RunTag(str(k)[:MAX_KEY], truncate(str(v), MAX_TAG_VALUE)) for k, v in tags.items()]
        for start in range(0, len(rows), PARAMS_PER_BATCH):
            self.client.log_batch(self._run_id, tags=rows[start:start + PARAMS_PER_BATCH])

    def close(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED; a resumed run may be closed again later."""
        self.client.set_terminated(self._run_id, status=status)

    def __enter__(self) -> "MlflowTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FINISHED" if exc_type is None else "KILLED" if exc_type is KeyboardInterrupt else "FAILED")


def default_run_name(model: str, mode: str, seed: int, experiment: str | None = None) -> str:
    """A readable run name: the DVC experiment's name when DVC runs one, else `<model>-<mode>-s<seed>`.

    >>> default_run_name("qwen2.5-7b", "tarpo", 3)
    'qwen2.5-7b-tarpo-s3'
    >>> default_run_name("/data/My Model/", "hard", 1)
    'My-Model-hard-s1'
    >>> default_run_name("tiny", "tarpo", 42, experiment="bushy-lamb")
    'bushy-lamb'
    """
    if experiment:
        return experiment
    label = Path(model.rstrip("/\\")).name if ("/" in model or "\\" in model) else model
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "model"
    return f"{label}-{mode}-s{seed}"


@contextlib.contextmanager
def store_setup_lock(uri: str) -> Iterator[None]:
    """Serialise opening a sqlite store: processes that create (migrate) a new store, or the same experiment, at
    the same moment race in alembic ("expected to match one row") and one of them fails. An exclusive lock on
    `<db>.lock` beside the database; other stores, and systems without fcntl, need none."""
    path = _sqlite_path(uri) if uri.startswith("sqlite:") else None
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        fcntl = None
    if path is None or fcntl is None or not path.parent.is_dir():
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_experiment(uri: str, experiment: str, artifact_location: str | None = None):
    """(client, experiment id) of `experiment` in the store at `uri`, which is created (tables, experiment) or
    restored from deletion as needed, under `store_setup_lock` so that processes starting together do not race."""
    from mlflow.tracking import MlflowClient

    with store_setup_lock(uri):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return client, client.create_experiment(experiment, artifact_location=artifact_location)
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return client, found.experiment_id


@contextlib.contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """A store MLflow cannot open or query (a corrupt sqlite file, a directory in its place) -> TrackingUnavailable."""
    from mlflow.exceptions import MlflowException

    known: tuple[type[BaseException], ...] = (MlflowException,)
    try:
        from sqlalchemy.exc import SQLAlchemyError

        known += (SQLAlchemyError,)
    except ImportError:
        pass
    try:
        yield
    except TrackingUnavailable:
        raise
    except known as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        path = _sqlite_path(uri) if uri.startswith("sqlite:") else None
        if "database is locked" in reason and path is not None:
            raise TrackingUnavailable(_lock_line(uri, path)) from None
        raise TrackingUnavailable(f"MLflow store {uri} cannot be used ({reason}); repair or move it away, "
                                  "or set tracking.enabled=false") from None


def check_run(tracking_cfg, run_id: str) -> None:
    """Raise TrackingUnavailable unless the store opens and holds `run_id`; changes nothing (checked before writes)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_cfg.uri
    check_tracking_uri(uri)
    path = _sqlite_path(uri) if uri.startswith("sqlite:") else None
    missing = f"MLflow run {run_id} is not in the store {uri}; re-run the train stage, or point tracking.uri at the " \
              "store that holds it"
    if path is not None and not path.is_file():  # do not create an empty store just to find the run missing
        raise TrackingUnavailable(f"{missing} ({path} does not exist)")
    with store_errors(uri):
        try:
            MlflowClient(tracking_uri=uri).get_run(run_id)
        except MlflowException:
            raise TrackingUnavailable(missing) from None


def end_stale_run(tracking_cfg, run_id: str, status: str = "KILLED") -> bool:
    """Mark `run_id` KILLED when it is still RUNNING (its process died and it is not being continued)."""
    if not tracking_cfg.enabled:
        return False
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_cfg.uri)
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
    except MlflowException:  # not in this store (tracking was off, or another store): nothing to end
        return False
    client.set_terminated(run_id, status=status)
    return True


def open_tracker(tracking_cfg, *, run_id: str | None = None, run_name: str | None = None,
                 tags: Mapping[str, Any] | None = None, stage: str | None = None) -> Tracker:
    """The tracker for a `tracking` config section: NullTracker when disabled, else a checked MLflow run."""
    if not tracking_cfg.enabled:
        return NullTracker()
    check_tracking_uri(tracking_cfg.uri)
    return GuardedTracker(MlflowTracker(tracking_cfg.uri, tracking_cfg.experiment, run_id=run_id, tags=tags,
                                        run_name=run_name or tracking_cfg.run_name, stage=stage), tracking_cfg.uri)


def _store_failures() -> tuple[type[BaseException], ...]:
    """What a store outage raises: MLflow's own errors, the database's, HTTP's, and the file system's (artifacts)."""
    from mlflow.exceptions import MlflowException

    found: list[type[BaseException]] = [MlflowException, OSError]
    for module, name in (("sqlalchemy.exc", "SQLAlchemyError"), ("requests.exceptions", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ImportError:
            pass
    return tuple(found)


class GuardedTracker:
    """A tracker whose store failures become one TrackingUnavailable (the first is kept in `failure`; every call
    after it does nothing, close included, since the store is gone).

    Outside `deferred()` the failure is raised at once: a stage stops with one line. Inside it, it is only
    recorded: the trainer checks `failure` after each step, checkpoints that step and raises it, so an outage
    costs no training. Attributes it does not define (`client`, ...) are the wrapped tracker's.
    """

    def __init__(self, inner, uri: str):
        self.inner, self.uri = inner, uri
        self.failure: TrackingUnavailable | None = None
        self._deferring = False

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    @property
    def run_id(self) -> str | None:
        return self.inner.run_id

    @contextlib.contextmanager
    def deferred(self) -> Iterator["GuardedTracker"]:
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False

    def _call(self, method: str, *args, **kwargs) -> None:
        if self.failure is not None:
            return
        try:
            getattr(self.inner, method)(*args, **kwargs)
        except _store_failures() as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            self.failure = TrackingUnavailable(f"MLflow tracking at {self.uri} failed ({reason})")
            if not self._deferring:
                raise TrackingUnavailable(f"{self.failure}; fix the store (or its artifact directory) and re-run, or "
                                          "set tracking.enabled=false") from None

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._call("log_params", params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._call("log_metrics", metrics, step=step)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", text, artifact_file)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self._call("log_artifact", local_path, artifact_path)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._call("log_figure", figure, artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._call("set_tags", tags)

    def close(self, status: str = "FINISHED") -> None:
        self._call("close", status)
