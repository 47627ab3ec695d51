"""The evaluate stage with eval.router=hard on the session workspace: both models run hard-only, and the files say so."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import paths
from tests.e2e.workspace_kit import PROFILE, _merge, copy_workspace, forget_mlflow_stores, inside_workspace, invoke
from tests.e2e.workspace_kit import built  # noqa: F401 - the session fixture, used by name


def test_evaluate_stage_with_eval_router_hard(built: Path, tmp_path: Path):
    learned = json.loads((built / paths.EVAL_METRICS).read_text())
    assert learned["eval_router_hard"] == 0.0
    ws = copy_workspace(built, tmp_path / "ws")
    with inside_workspace(ws, _merge(PROFILE, {"eval": {"router": "hard"}})):
        result = invoke(["evaluate"])
        forget_mlflow_stores()
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    hard = json.loads((ws / paths.EVAL_METRICS).read_text())
    assert hard["eval_router_hard"] == 1.0
    assert hard["warmup/soft_ratio"] == 0.0 and hard["tarpo/soft_ratio"] == 0.0
    assert hard["tarpo/mean_explicit_length"] == hard["tarpo/mean_length"]
    eval_set = json.loads((ws / paths.EVAL_DIR / paths.EVAL_SET).read_text())
    assert eval_set["settings"]["router"] == "hard"
    rows = [json.loads(line) for line in (ws / paths.EVAL_DIR / "tarpo.jsonl").read_text().splitlines()]
    assert rows and all(n == 0 for row in rows for n in row["soft_steps"])
