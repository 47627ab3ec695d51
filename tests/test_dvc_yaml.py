"""dvc.yaml names exactly the paths defined once in pipeline/paths.py, and each stage's code deps exist."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline import paths

ROOT = Path(__file__).resolve().parent.parent
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC["stages"]


def _names(entries) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries or []}


def _written(stage: str) -> set[str]:
    s = STAGES[stage]
    return _names(s.get("outs")) | _names(s.get("metrics")) | _names(s.get("plots"))


def test_stage_order_and_commands():
    assert list(STAGES) == ["prepare", "warmup", "train", "evaluate", "register"]
    for name, stage in STAGES.items():
        assert stage["cmd"] == f"python cli.py {name}"


def test_outputs_match_paths_module():
    assert _written("prepare") == {paths.PREPARED_DIR, paths.PREPARE_METRICS}
    assert _written("warmup") == {paths.WARMUP_DIR, paths.WARMUP_METRICS, paths.WARMUP_PLOT}
    assert _written("train") == {paths.CHECKPOINT_DIR, paths.TRAINED_DIR, paths.RUN_INFO, paths.TRAIN_METRICS,
                                 paths.TRAIN_PLOT}
    assert _written("evaluate") == {paths.EVAL_DIR, paths.EVAL_METRICS, paths.EVAL_PLOT}
    assert _written("register") == {paths.REGISTER_INFO}
    assert paths.TRAIN_DATA.startswith(paths.PREPARED_DIR + "/") and paths.EVAL_DATA.startswith(paths.PREPARED_DIR + "/")


def test_checkpoints_survive_a_killed_run():
    entry = next(e for e in STAGES["train"]["outs"] if isinstance(e, dict) and paths.CHECKPOINT_DIR in e)
    assert entry[paths.CHECKPOINT_DIR]["persist"] is True


def test_data_deps_are_upstream_outputs():
    deps = {stage: _names(s["deps"]) for stage, s in STAGES.items()}
    assert paths.TRAIN_DATA in deps["warmup"] and paths.TRAIN_DATA in deps["train"]
    assert paths.EVAL_DATA in deps["evaluate"]
    assert {paths.WARMUP_DIR} <= deps["train"] and {paths.WARMUP_DIR, paths.TRAINED_DIR, paths.RUN_INFO} <= deps["evaluate"]
    assert {paths.TRAINED_DIR, paths.EVAL_METRICS, paths.RUN_INFO} <= deps["register"]


def test_code_deps_cover_the_stage_module_and_exist():
    for stage, s in STAGES.items():
        deps = _names(s["deps"])
        assert f"pipeline/{stage}.py" in deps and "cli.py" in deps
        code = [d for d in deps if d.endswith(".py")]
        missing = [d for d in code if not (ROOT / d).is_file()]
        assert not missing or stage == "register", f"{stage}: missing deps {missing}"


def test_metrics_are_not_cached_and_params_are_scoped():
    for stage, s in STAGES.items():
        for entry in s.get("metrics", []):
            assert next(iter(entry.values()))["cache"] is False
        assert s["params"], stage
    assert STAGES["prepare"]["params"] == ["data", "model.preset", "model.path"]  # the data recipe follows the model
    assert "router" not in STAGES["warmup"]["params"]


def repo_imports(start: list[str]) -> set[str]:
    """Repo .py files reachable from `start` through any import statement (function-level ones included)."""
    import ast

    seen, todo = set(), list(start)
    while todo:
        rel = todo.pop()
        if rel in seen or not (ROOT / rel).is_file():
            continue
        seen.add(rel)
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.split(".")[0] in ("tarpo", "pipeline"):
                    candidate = name.replace(".", "/") + ".py"
                    if (ROOT / candidate).is_file():
                        todo.append(candidate)
    return {s for s in seen if not s.endswith("__init__.py")}


CLI_IMPORTS = {"train": ["tarpo/models.py", "pipeline/common.py"], "register": ["pipeline/common.py"]}  # cli.py


def test_code_deps_are_exactly_the_imported_modules():
    for stage, s in STAGES.items():
        declared = {d for d in _names(s["deps"]) if d.endswith(".py")}
        expected = repo_imports([f"pipeline/{stage}.py", "tarpo/config.py", *CLI_IMPORTS.get(stage, [])]) | {"cli.py"}
        assert declared == expected, f"{stage}: missing {sorted(expected - declared)}, extra {sorted(declared - expected)}"
