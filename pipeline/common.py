"""Small helpers shared by the stage modules: the warm-up marker, prompts, hashes, closing the run.

Output sets are written through pipeline.publish."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterator

from pipeline import paths
from tarpo.errors import InputError, read_json


class BaseModelMismatch(RuntimeError):
    """The start weights a stage would use are not the configured model's; the message says what to run."""


def configured_base(cfg, models_dir: str | Path = paths.MODELS_DIR) -> dict:
    """{preset, path, weights_sha256} of the model the config names (tiny is built on first use)."""
    from tarpo.model_info import weights_sha256
    from tarpo.models import resolve_model

    resolved = resolve_model(cfg.model.preset, cfg.model.path, models_dir)
    where = resolved.path / resolved.gguf_file if resolved.gguf_file else resolved.path
    return {"preset": cfg.model.preset, "path": str(where),
            "weights_sha256": weights_sha256(resolved.path, resolved.gguf_file)}


def read_warmup_marker(warmup_dir: str | Path = paths.WARMUP_DIR) -> dict | None:
    marker = Path(warmup_dir) / paths.WARMUP_MARKER
    return read_json(marker, stage="warmup") if marker.exists() else None


def _describe(base: dict | None) -> str:
    if not base:
        return "an unrecorded model (a warm-up from before base fingerprints)"
    return f"{base.get('preset') or 'local model'} ({base.get('path')}, weights {str(base.get('weights_sha256'))[:12]})"


def choose_base(cfg, warmup_dir: str | Path = paths.WARMUP_DIR, models_dir: str | Path = paths.MODELS_DIR,
                log=print) -> tuple[Path | None, dict]:
    """(start weights dir or None = the configured model, record of what will really be loaded).

    The warm-up output is the start only when warm-up is on for this config AND it was made from the configured
    model (same weights fingerprint). Warm-up on but its output made from another model stops with what to run;
    warm-up off never uses it, whatever is in models/warmup.
    """
    configured = configured_base(cfg, models_dir)
    marker = read_warmup_marker(warmup_dir)
    if not cfg.warmup.enabled:
        if marker and marker.get("ran"):
            log(f"not using {warmup_dir} (warm-up is off for {_describe(configured)}): training starts from the "
                "configured model")
        return None, {**configured, "from_warmup": False}
    if marker is None:
        raise FileNotFoundError(f"{Path(warmup_dir) / paths.WARMUP_MARKER}: missing; run the warmup stage first "
                                "(python cli.py warmup, or dvc repro)")
    made_from = marker.get("made_from")
    if not marker.get("ran") or not made_from or made_from.get("weights_sha256") != configured["weights_sha256"]:
        what = _describe(made_from) if marker.get("ran") else "nothing (it was skipped)"
        raise BaseModelMismatch(f"{warmup_dir} was made from {what}, not from the configured model "
                                f"{_describe(configured)}; run `python cli.py warmup` with the same params/--model "
                                "first (or dvc repro), or set warmup.enabled=false")
    from tarpo.model_info import weights_sha256

    record = {"preset": cfg.model.preset, "path": str(warmup_dir), "weights_sha256": weights_sha256(warmup_dir),
              "from_warmup": True, "made_from": made_from}
    return Path(warmup_dir), record


def check_trained_base(trained_dir: str | Path, base: dict) -> None:
    """Stop when models/tarpo was trained from other start weights than the ones this config selects."""
    info_path = Path(trained_dir) / paths.TRAINED_BASE
    trained_on = read_json(info_path, stage="train").get("base") if info_path.exists() else None
    if trained_on and trained_on.get("weights_sha256") != base["weights_sha256"]:
        raise BaseModelMismatch(f"{trained_dir} was trained from {_describe(trained_on)}, but the config selects "
                                f"{_describe(base)}; use the params/--model it was trained with, or retrain")


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


def count_long_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int) -> int:
    """How many prompts the rollout will left-truncate (it keeps their last max_prompt_tokens tokens)."""
    return sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) > max_prompt_tokens for p in prompts)


def check_tracking(tracking_cfg) -> None:
    """Fail before any work when the tracking store cannot be reached."""
    if tracking_cfg.enabled:
        from tarpo.tracking import check_tracking_uri

        check_tracking_uri(tracking_cfg.uri)


def open_run(tracking_cfg, *, run_id: str | None, tags: dict, stage: str, run_name: str | None = None):
    """An MLflow run (new, or continued when run_id is given), or a NullTracker when tracking is off.
    A new run is named `tracking.run_name`, else `run_name` (the caller's readable default)."""
    from tarpo.tracking import open_tracker

    return open_tracker(tracking_cfg, run_id=run_id, run_name=tracking_cfg.run_name or run_name, tags=tags,
                        stage=stage)


@contextlib.contextmanager
def closing_run(tracker) -> Iterator[None]:
    """Close `tracker`'s run when the block ends: FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED; never left RUNNING."""
    try:
        yield
    except BaseException as exc:
        tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.close("FINISHED")


def model_label(model_cfg) -> str:
    """The preset name, else the local directory's name (for run names and tags)."""
    return model_cfg.preset or Path(str(model_cfg.path).rstrip("/")).name
