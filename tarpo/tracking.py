"""Tracking interface used by the trainer and stages; MLflow is one implementation, imported lazily.

`tarpo` talks to a `Tracker`; the `NullTracker` does nothing, so the library never branches on
"is tracking on".
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None: ...


class NullTracker:
    """Accepts everything, records nothing."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        pass
