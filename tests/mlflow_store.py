"""Test helper: a fresh MLflow sqlite store per test, copied from one migrated template.

Creating the tables takes ~10 s (alembic migrations); a file copy takes milliseconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

_TEMPLATE: Path | None = None


def fresh_store(tmp_path: Path, tmp_path_factory) -> str:
    """A sqlite URI in tmp_path holding an empty, migrated MLflow database."""
    global _TEMPLATE
    if _TEMPLATE is None:
        from mlflow import MlflowClient

        directory = tmp_path_factory.mktemp("mlflow-template")
        MlflowClient(tracking_uri=f"sqlite:///{directory}/mlflow.db").search_experiments()
        _TEMPLATE = directory / "mlflow.db"
    shutil.copy(_TEMPLATE, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def one_torch_thread():
    """Generator for a fixture: torch on one thread (2-thread CPU runs under load were ~100x slower here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
