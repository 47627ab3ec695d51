"""Small helpers shared by the stage modules: atomic directories, the warm-up marker, prompts, hashes."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from pipeline import paths
from tarpo.errors import InputError, read_json, with_filename
from tarpo.io import umask_mode


def write_dir_atomic(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling with `write(tmp)`, then swap it in: readers never see half a directory."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(umask_mode(0o777))  # mkdtemp makes 0700; outputs get the permissions mkdir would give
        write(tmp)
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        unnamed = exc.filename is None or str(tmp) in str(exc.filename)
        raise with_filename(exc, out_dir) if unnamed else exc  # name the output, not its temporary sibling
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def warmup_model_dir(warmup_dir: str | Path = paths.WARMUP_DIR) -> Path | None:
    """The warmed-up HF model dir when the warm-up stage ran, None when it was skipped (use the preset)."""
    marker = Path(warmup_dir) / paths.WARMUP_MARKER
    if not marker.exists():
        raise FileNotFoundError(f"{marker}: missing; run the warmup stage first (python cli.py warmup)")
    return Path(warmup_dir) if read_json(marker, stage="warmup").get("ran") else None


def require_file(path: str | Path, stage: str) -> Path:
    """A clear one-line error naming the missing input and the stage that makes it."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file; run `python cli.py {stage}` to rewrite it")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input file not found; run `python cli.py {stage}` first (or `dvc repro`)")
    return path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def chat_prompts(tokenizer, questions: list[str], data_cfg, rollout_cfg) -> list[str]:
    """Chat-templated prompts with the configured system prompt and answer marker."""
    from tarpo.data import build_prompt

    return [build_prompt(tokenizer, q, data_cfg.system_prompt, marker=rollout_cfg.answer_marker) for q in questions]


def check_tracking(tracking_cfg) -> None:
    """Fail before any work when the tracking store cannot be reached."""
    if tracking_cfg.enabled:
        from tarpo.tracking import check_tracking_uri

        check_tracking_uri(tracking_cfg.uri)


def open_run(tracking_cfg, *, run_id: str | None, tags: dict, stage: str):
    """An MLflow run (new, or continued when run_id is given), or a NullTracker when tracking is off."""
    from tarpo.tracking import open_tracker

    return open_tracker(tracking_cfg, run_id=run_id, run_name=tracking_cfg.run_name, tags=tags, stage=stage)
