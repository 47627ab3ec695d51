"""Issue 25 rows on the built tiny workspace (workspace_kit's check: exit 2, one line, nothing changed): register
with a broken models/tarpo creates no registry version; train on an unusable store keeps its checkpoints even when
the params changed; a read-only checkpoints/ is one line; all steps skipped as non-finite exports nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import paths
from tests.e2e.workspace_kit import (Row, copy_workspace, delete, edit_bytes, forget_mlflow_stores, nan_loss, patch,
                                     run_row)
from tests.e2e.workspace_kit import built  # noqa: F401 - the session fixture, used by name

ROUTER = f"{paths.TRAINED_DIR}/router.safetensors"
STORE = ("mlflow.db",)
CHECKPOINTS = (paths.CHECKPOINT_DIR, "mlflow.db")


def _truncated_store(data: bytes) -> bytes:
    return data[:4096] + b"\xde\xad" * ((len(data) - 4096) // 2)


def _not_writable(name: str):
    import os

    real = os.access
    return lambda path, mode: False if Path(path).name == name else real(path, mode)


ROWS = [
    Row("register-adapter-missing", ["register"], f"{paths.TRAINED_DIR}/adapter/adapter_config.json: missing",
        setup=delete(f"{paths.TRAINED_DIR}/adapter"), may_change=STORE),
    Row("register-router-truncated", ["register"], f"cannot read router weights {ROUTER}",
        setup=edit_bytes(ROUTER, lambda b: b[:len(b) // 2]), may_change=STORE),
    Row("register-initial-router-missing", ["register"], "router_initial.safetensors",
        setup=delete(f"{paths.TRAINED_DIR}/router_initial.safetensors"), may_change=STORE),
    # the store check before any work (tarpo.tracking) stops it; checkpoints/ stays byte-identical (no may_change)
    Row("train-store-truncated-params-changed", ["train", "--set", "train.seed=7"],
        "mlflow.db: database disk image is malformed", setup=edit_bytes("mlflow.db", _truncated_store)),
    Row("train-checkpoints-read-only", ["train", "--set", "train.seed=7"],
        f"error: permission denied ({paths.CHECKPOINT_DIR})", fault=patch("pipeline.train.os.access",
                                                                          _not_writable(paths.CHECKPOINT_DIR))),
    Row("train-all-steps-skipped", ["train", "--no-resume", "--steps", "2"], "error: all 2 steps were skipped",
        fault=patch("tarpo.trainer.tarpo_loss", nan_loss), may_change=CHECKPOINTS),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_data_loss_row(row: Row, built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ws = copy_workspace(built, tmp_path / "ws")
    run_row(row, ws, tmp_path, monkeypatch)
    if row.argv[0] == "register":  # verified before the version exists: the registry holds none
        from mlflow.tracking import MlflowClient

        forget_mlflow_stores()
        versions = MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}").search_model_versions()
        forget_mlflow_stores()
        assert list(versions) == []
