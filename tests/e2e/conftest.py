"""Helpers for end-to-end tests: a throw-away copy of the repo with a tiny test profile in params.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = str(Path(sys.executable).parent)

# Small enough for seconds per stage on the tiny model; still runs every stage for real.
TEST_PROFILE = {
    "data": {"train_size": 48, "eval_size": 6, "system_prompt": "Answer after ####."},
    "rollout": {"group_size": 2, "prompts_per_step": 2, "max_new_tokens": 10, "max_prompt_tokens": 64},
    "warmup": {"steps": 3, "batch_size": 4},
    "train": {"steps": 3, "micro_batch_size": 4, "checkpoint_every": 1, "log_samples_every": 1},
    "eval": {"num_samples": 2, "pass_k": [1, 2], "batch_size": 8, "max_problems": 3},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def copy_repo(dest: Path, profile: dict | None = TEST_PROFILE) -> Path:
    """Tracked + untracked-but-not-ignored files of the repo (what a fresh clone would hold) into dest."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file() and not name.startswith(("bench/results", "docs/images")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    if profile:
        params = yaml.safe_load((dest / "params.yaml").read_text())
        (dest / "params.yaml").write_text(yaml.safe_dump(_merge(params, profile), sort_keys=False))
    return dest


def env() -> dict:
    """The venv first on PATH (dvc runs `python cli.py ...`), one thread per process, no colour."""
    return {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1",
            "TQDM_DISABLE": "1", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}


def run(cmd: list[str], cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    return copy_repo(tmp_path / "repo")
