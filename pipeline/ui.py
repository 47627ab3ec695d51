"""`cli.py ui`: the `mlflow ui` command line for the configured store (the CLI runs it).

Binds 127.0.0.1 unless the user asks otherwise: the UI has no authentication.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def _mlflow_executable() -> str:
    """The `mlflow` script next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "mlflow"
    if beside.is_file():
        return str(beside)
    return shutil.which("mlflow") or "mlflow"


def ui_command(tracking_cfg, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    """argv for `mlflow ui` on the store in `tracking_cfg.uri` (a server URI needs no UI: open it).

    One worker by default: a personal UI needs no more, and MLflow's default starts several processes of
    ~200 MB each."""
    if tracking_cfg.uri.startswith(("http://", "https://")):
        raise ValueError(f"tracking.uri {tracking_cfg.uri} is already a server; open it in a browser")
    return [_mlflow_executable(), "ui", "--backend-store-uri", tracking_cfg.uri, "--host", host, "--port", str(port),
            "--workers", str(workers)]
