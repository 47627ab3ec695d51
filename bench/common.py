"""Shared helpers for the CPU benchmarks: machine facts recorded next to every result."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine_info() -> dict:
    """Cores, CPU model, thread count, versions and the load average at start (the CPU may be shared)."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {"cpu_count": os.cpu_count(), "cpu_model": cpu_model, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_start": list(os.getloadavg())}


def model_slug(name: str) -> str:
    return Path(name).stem if ("/" in name or name.endswith(".gguf")) else name
