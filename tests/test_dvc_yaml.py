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
    assert _written("train") == {paths.TRAINED_DIR, paths.RUN_INFO, paths.TRAIN_METRICS, paths.TRAIN_PLOT,
                                 paths.TRAIN_FIGURE, paths.HELDOUT_PLOT}
    assert _written("evaluate") == {paths.EVAL_DIR, paths.EVAL_METRICS, paths.EVAL_PLOT, paths.EVAL_FIGURE}
    assert _written("register") == {paths.REGISTER_INFO}
    assert Path(paths.TRAIN_PLOT).with_suffix(".png") == Path(paths.TRAIN_FIGURE)   # the stages write them side by side
    assert Path(paths.EVAL_PLOT).with_suffix(".png") == Path(paths.EVAL_FIGURE)
    assert paths.TRAIN_DATA.startswith(paths.PREPARED_DIR + "/") and paths.EVAL_DATA.startswith(paths.PREPARED_DIR + "/")


def test_checkpoints_are_no_output_so_a_killed_run_resumes_and_the_run_cache_works():
    """DVC deletes a stage's outputs before running it, and an uncached (cache: false) output turns the run-cache
    off for the stage: checkpoints/ is a side effect that git and DVC ignore, never an output."""
    for name, stage in STAGES.items():
        assert paths.CHECKPOINT_DIR not in _written_all(stage)
        if name == "register":   # its effect is in the MLflow registry: it must run, never be restored from cache
            continue
        for entry in stage.get("outs", []):
            assert not isinstance(entry, dict) or next(iter(entry.values())).get("cache", True), entry
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert f"/{paths.CHECKPOINT_DIR}/" in ignored


def _written_all(stage: dict) -> set[str]:
    return _names(stage.get("outs")) | _names(stage.get("metrics")) | _names(stage.get("plots"))


def _params(stage: str) -> set[str]:
    return {p.split("#")[0].strip() for p in STAGES[stage]["params"]}


def _covers(params: set[str], key: str) -> bool:
    """True when `key` (dotted) is a declared param or inside a declared section."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in params for i in range(1, len(parts) + 1))


LOGGING_ONLY = ("train.checkpoint_every", "train.keep_checkpoints", "train.log_samples_every", "tracking.run_name")


def test_logging_only_keys_rerun_nothing_and_training_keys_rerun_train_onwards():
    for stage in STAGES:
        for key in LOGGING_ONLY:
            assert not _covers(_params(stage), key), f"{stage} reruns when {key} changes"
    for key in ("train.lr", "router.loss_weight", "rollout.group_size", "reward.answer_rule"):
        assert _covers(_params("train"), key), key
        assert not _covers(_params("prepare"), key) and not _covers(_params("warmup"), key), key
    assert _covers(_params("evaluate"), "eval.num_samples") and not _covers(_params("train"), "eval.num_samples")


def test_every_train_key_that_changes_the_trajectory_is_a_param_of_train():
    from tarpo.config import TrainConfig

    for name in TrainConfig.model_fields:
        key = f"train.{name}"
        assert _covers(_params("train"), key) != (key in LOGGING_ONLY), key


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
        assert declared == expected, (f"{stage}: missing {sorted(expected - declared)}, extra "
                                      f"{sorted(declared - expected)}; run python scripts/sync_dvc_deps.py")


def test_committed_lock_is_the_baseline_of_this_dvc_yaml_and_params():
    """dvc.lock and the small metrics/plots files are committed, so `dvc metrics diff` and `dvc exp show` have a
    baseline in a fresh clone; the lock must describe the stages, params and outputs declared now."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(lock["stages"]) == set(STAGES)
    for name, stage in STAGES.items():
        locked = lock["stages"][name]
        assert locked["cmd"] == stage["cmd"], name
        recorded = locked["params"]["params.yaml"]
        assert set(recorded) == _params(name), (name, sorted(set(recorded) ^ _params(name)))
        for key, value in recorded.items():
            node = params
            for part in key.split("."):
                node = node[part]
            assert node == value, f"{name}: {key} is {node!r} in params.yaml but {value!r} in dvc.lock; run dvc repro"
        assert {out["path"] for out in locked["outs"]} == _written_all(stage), name
    for path in (paths.PREPARE_METRICS, paths.WARMUP_METRICS, paths.TRAIN_METRICS, paths.EVAL_METRICS,
                 paths.REGISTER_INFO, paths.WARMUP_PLOT, paths.TRAIN_PLOT, paths.EVAL_PLOT):
        assert (ROOT / path).is_file(), f"{path} is part of the committed baseline"
