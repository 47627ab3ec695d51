"""Every bad input and fault we know of, one table row each: exit code 2, one stderr line naming the key or
file, no traceback, and every output already in the workspace byte-identical afterwards.

Rows run in-process through Typer's CliRunner against the session workspace of `workspace_kit` (rows that fail
while reading their params share it, the others get a copy); only the SIGKILL rows and one check of the real
interpreter use subprocesses.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Callable

import pytest
from pydantic import BaseModel

from pipeline import paths
from tarpo.config import TarpoConfig
from tests.e2e.conftest import ROOT, env
from tests.e2e.workspace_kit import (DATA_ROW, GARBAGE, NOT_UTF8, Row, invoke, nan_loss, raise_oserror, as_dir,
                                     chain, copy_workspace, data_rows, delete, edit, edit_bytes, forget_mlflow_stores,
                                     fresh_copy, jsonl_source, patch, put, run_row, snapshot)
from tests.e2e.workspace_kit import built  # noqa: F401 - the session fixture, used by name



# ------------------------------------------------------------------------------------------- the table
def float_fields(model: type[BaseModel] = TarpoConfig, prefix: str = "") -> list[str]:
    """Dotted names of every float (or list-of-float) field of the config, found by walking the schema."""
    found = []
    for name, info in model.model_fields.items():
        args = (info.annotation, *typing.get_args(info.annotation))
        sub = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if sub:
            found += float_fields(sub[0], f"{prefix}{name}.")
        elif "float" in str(info.annotation) and "Literal" not in str(info.annotation):
            found.append(prefix + name)
    return found


def _nested(key: str, value: str) -> str:
    """`a.b.c` = value as nested flow YAML."""
    parts = key.split(".")
    return "".join("{" + p + ": " for p in parts) + value + "}" * len(parts) + "\n"


def _nonfinite_rows() -> list[Row]:
    rows = []
    for key in float_fields():
        listed = key == "router.init_bias"
        nan, inf = ("[.nan, 0]", "[.inf, 0]") if listed else (".nan", ".inf")
        where = key + (".0" if listed else "")
        rows.append(Row(f"nan-{key}", ["train"], f"{where}: expected a finite number", params=_nested(key, nan)))
        rows.append(Row(f"inf-set-{key}", ["train", "--set", f"{key}={inf}"], f"{where}: expected a finite number"))
    for key in ("train.lr", "rollout.temperature", "router.temperature"):
        rows.append(Row(f"neg-inf-{key}", ["warmup", "--set", f"{key}=-.inf"], f"{key}: expected a finite number"))
    return rows


PARAMS_ROWS = [
    Row("params-empty", ["train"], "empty params file", params=""),
    Row("params-comments-only", ["prepare"], "empty params file", params="# all defaults?\n\n"),
    Row("params-not-utf8", ["train"], "not UTF-8 text (byte offset 18", params=b"train:\n  steps: 3 \xff\n"),
    Row("params-utf16", ["evaluate"], "not UTF-8 text (byte offset 0", params="train: {steps: 3}\n".encode("utf-16")),
    Row("params-missing", ["train", "--params", "nope.yaml"], "nope.yaml: file not found"),
    Row("params-is-dir", ["train", "--params", "models"], "models: is a directory, expected a file"),
    Row("params-yaml-syntax", ["train"], "YAML syntax error", params="router:\n  lr: [1\n"),
    Row("params-tab-indent", ["prepare"], "YAML syntax error", params="train:\n\tsteps: 3\n"),
    Row("params-top-list", ["train"], "top level must be a mapping", params="- train\n- router\n"),
    Row("params-top-scalar", ["warmup"], "top level must be a mapping", params="just words\n"),
    Row("params-unknown-section", ["train"], "trian: unknown key; did you mean 'train'?", params="trian: {steps: 3}\n"),
    Row("params-unknown-key", ["train"], "router.loss_wieght: unknown key", params="router: {loss_wieght: 0.2}\n"),
    Row("params-section-scalar", ["evaluate"], "router: expected a mapping of keys", params="router: 3\n"),
    Row("params-string-int", ["train"], "train.steps: expected an integer, got '10'", params="train: {steps: '10'}\n"),
    Row("params-bool-int", ["train"], "train.seed: expected an integer", params="train: {seed: true}\n"),
    Row("params-steps-0", ["train"], "train.steps: must be >= 1, got 0", params="train: {steps: 0}\n"),
    Row("params-seed-overflow", ["train"], "train.seed: must be <=", params="train: {seed: 18446744073709551616}\n"),
    Row("params-seed-negative", ["evaluate"], "eval.seed: must be >= 0", params="eval: {seed: -1}\n"),
    Row("params-data-seed-overflow", ["prepare"], "data.seed: must be <=", params="data: {seed: 1099511627776}\n"),
    Row("params-mode", ["train"], "router.mode: expected one of", params="router: {mode: soft}\n"),
    Row("params-preset-typo", ["train"], "model.preset: unknown preset 'tyny'", params="model: {preset: tyny}\n"),
    Row("params-top-p", ["train"], "rollout.top_p: top_p=1.5 must be in (0, 1]", params="rollout: {top_p: 1.5}\n"),
    Row("params-group-size-1", ["train"], "rollout.group_size: group_size=1", params="rollout: {group_size: 1}\n"),
    Row("params-register-no-tracking", ["register"], "register.enabled: the registry lives in the MLflow store",
        params="tracking: {enabled: false}\n"),
    Row("params-jsonl-no-path", ["prepare"], "data.train_path: source=jsonl reads local files",
        params="data: {source: jsonl}\n"),
    Row("params-pass-k", ["evaluate"], "eval.pass_k: values [8]", params="eval: {num_samples: 4, pass_k: [1, 8]}\n"),
]

SET_ROWS = [
    Row("set-missing-equals", ["train", "--set", "router.lr"], "--set router.lr: expected KEY=VALUE"),
    Row("set-unknown-key", ["train", "--set", "train.stepz=3"], "train.stepz: unknown key; did you mean 'steps'?"),
    Row("set-bad-yaml", ["train", "--set", "train.steps=[1"], "train.steps"),
    Row("set-float-for-int", ["train", "--set", "train.steps=1.5"], "train.steps: expected an integer"),
    Row("set-section-scalar", ["evaluate", "--set", "train=3"], "train: expected a mapping of keys"),
    Row("set-source", ["prepare", "--set", "data.source=nope"], "data.source: expected one of"),
    Row("set-dtype", ["train", "--set", "model.dtype=float8"], "model.dtype: expected one of"),
    Row("set-micro-batch", ["train", "--set", "train.micro_batch_size=3"], "train.micro_batch_size: 3 does not divide"),
    Row("set-top-k-soft", ["train", "--set", "rollout.top_k=5"], "rollout.soft_top_k: soft_top_k=10 exceeds top_k=5"),
    Row("set-probability", ["train", "--set", "router.soft_probability=1.5"], "router.soft_probability: must be <= 1"),
    Row("set-steps-flag-and-typo", ["train", "--steps", "2", "--set", "train.checkpoint_evry=1"],
        "train.checkpoint_evry: unknown key"),
    Row("set-lora-rank-0", ["train", "--set", "model.lora.rank=0"], "model.lora.rank: must be >= 1"),
    Row("set-eval-temperature-0", ["evaluate", "--set", "eval.temperature=0"], "eval.temperature: temperature=0"),
    Row("set-reward-function-missing", ["train", "--set", "reward.function=no_such_plugin:score"],
        "reward.function: cannot import 'no_such_plugin' (ModuleNotFoundError"),
    Row("set-reward-function-signature", ["train", "--set", "reward.function=tarpo.rewards:extract_answer"],
        "reward.function: tarpo.rewards:extract_answer must accept (completion, gold, record)"),
    Row("set-overlong-no-buffer", ["train", "--set", "reward.overlong=penalty"],
        "reward.overlong_buffer: 0 must be in [1, rollout.max_new_tokens="),
    Row("set-dynamic-sampling-2-processes", ["train", "--set", "train.dynamic_sampling=true", "--set",
        "train.num_processes=2", "--set", "train.micro_batch_size=1"], "train.dynamic_sampling: works on one process only"),
]

MODEL_ROWS = [
    Row("model-unknown-preset", ["train", "--model", "tyny"], "--model: 'tyny' is neither a preset nor an existing directory; did you mean 'tiny'?"),
    # The one multi-line message: where we looked and how to get the weights (first line names the preset).
    Row("model-unavailable-preset", ["train", "--model", "qwen2.5-7b"], "model preset 'qwen2.5-7b'", lines=9),
    Row("model-path-missing", ["train", "--model", "/nonexistent/model"], "--model: '/nonexistent/model' is neither a preset nor",
        setup=fresh_copy),
    Row("model-path-no-config", ["train", "--model", "data"], "model path data has no config.json",
        setup=fresh_copy),
    Row("model-path-two-ggufs", ["train", "--model", "ggufs"], "holds several .gguf files",
        setup=chain(put("ggufs/a.gguf", b"x"), put("ggufs/b.gguf", b"y"))),
]

DATA_ROWS = [
    Row("data-train-missing", jsonl_source("absent.jsonl"), "absent.jsonl: file not found",
        setup=put("eval.jsonl", data_rows(8))),
    Row("data-train-not-utf8", jsonl_source(), "train.jsonl: not UTF-8 text (byte offset",
        setup=chain(put("train.jsonl", DATA_ROW.encode() + b'{"question": "caf\xe9", "answer": "#### 1"}\n'),
                    put("eval.jsonl", data_rows(8)))),
    Row("data-eval-not-utf8", jsonl_source(), "eval.jsonl: not UTF-8 text (byte offset 0",
        setup=chain(put("train.jsonl", data_rows(60)), put("eval.jsonl", b"\xff" + DATA_ROW.encode()))),
    Row("data-train-is-dir", jsonl_source(), "train.jsonl: is a directory",
        setup=chain(as_dir("train.jsonl"), put("eval.jsonl", data_rows(8)))),
    Row("data-bad-json-fail", jsonl_source("train.jsonl", "eval.jsonl", "data.malformed=fail"),
        "train.jsonl:2: bad JSON", setup=chain(put("train.jsonl", DATA_ROW + "{oops\n" + data_rows(60)),
                                               put("eval.jsonl", data_rows(8, 100)))),
    Row("data-not-object-fail", jsonl_source("train.jsonl", "eval.jsonl", "data.malformed=fail"),
        "train.jsonl:1: expected a JSON object", setup=chain(put("train.jsonl", "[1, 2]\n" + data_rows(60)),
                                                             put("eval.jsonl", data_rows(8, 100)))),
    Row("data-parquet-garbage", jsonl_source("train.parquet"), "train.parquet: not a readable parquet file",
        setup=chain(put("train.parquet", GARBAGE), put("eval.jsonl", data_rows(8)))),
    # Degenerate splits and record hygiene: the `data` branch rejects them before anything is written.
    Row("data-empty-file", jsonl_source(), "train.jsonl",
        setup=chain(put("train.jsonl", ""), put("eval.jsonl", data_rows(8)))),
    Row("data-blank-file", jsonl_source(), "train.jsonl",
        setup=chain(put("train.jsonl", "\n  \n\n"), put("eval.jsonl", data_rows(8)))),
    Row("data-all-rows-skipped", jsonl_source(), "train.jsonl",
        setup=chain(put("train.jsonl", "{bad\n[1]\n"), put("eval.jsonl", data_rows(8)))),
    Row("data-one-row", jsonl_source(), "train.jsonl",
        setup=chain(put("train.jsonl", DATA_ROW), put("eval.jsonl", data_rows(8)))),
    Row("data-eval-is-train", jsonl_source("train.jsonl", "train.jsonl"), "train.jsonl",
        setup=put("train.jsonl", data_rows(60))),
    Row("data-too-few-rows", ["prepare", "--set", "data.source=jsonl", "--set", "data.train_path=train.jsonl"],
        "train.jsonl", setup=put("train.jsonl", data_rows(5))),
    Row("data-duplicate-ids", jsonl_source("train.jsonl", "eval.jsonl", "data.fields.id=id"), "duplicate",
        setup=chain(
            put("train.jsonl", data_rows(60)),
            put("eval.jsonl", '{"id": "a", "question": "1 + 1?", "answer": "#### 2"}\n'
                              '{"id": "a", "question": "2 + 2?", "answer": "#### 4"}\n' + data_rows(6, 200)))),
    Row("data-prompt-dict", jsonl_source("train.jsonl", "eval.jsonl", "data.malformed=fail"), "train.jsonl:1",
        setup=chain(put("train.jsonl", '{"question": {"a": 1}, "answer": "#### 1"}\n'
                                           + data_rows(60)), put("eval.jsonl", data_rows(8, 100)))),
    Row("data-prompt-number", jsonl_source("train.jsonl", "eval.jsonl", "data.malformed=fail"), "train.jsonl:1",
        setup=chain(put("train.jsonl", '{"question": 17, "answer": "#### 1"}\n'
                                           + data_rows(60)), put("eval.jsonl", data_rows(8, 100)))),
]

TRAIN_JSONL, EVAL_JSONL = paths.TRAIN_DATA, paths.EVAL_DATA
MARKER = f"{paths.WARMUP_DIR}/{paths.WARMUP_MARKER}"
STEPS = f"{paths.CHECKPOINT_DIR}/steps.jsonl"
ROUTER = f"{paths.TRAINED_DIR}/router.safetensors"
STORE = ("mlflow.db",)  # opening a run to check it may touch the sqlite file

ORDER_ROWS = [
    Row("order-warmup-before-prepare", ["warmup"], f"{TRAIN_JSONL}: input file not found; run `python cli.py prepare`",
        setup=delete("data")),
    Row("order-train-before-prepare", ["train"], f"{TRAIN_JSONL}: input file not found", setup=delete("data")),
    Row("order-evaluate-before-prepare", ["evaluate"], f"{EVAL_JSONL}: input file not found", setup=delete("data")),
    Row("order-train-before-warmup", ["train"], f"{MARKER}: missing; run the warmup stage first",
        setup=delete(paths.WARMUP_DIR)),
    Row("order-evaluate-before-warmup", ["evaluate"], f"{MARKER}: missing", setup=delete(paths.WARMUP_DIR)),
    Row("order-evaluate-before-train", ["evaluate"], f"{ROUTER}: input file not found; run `python cli.py train`",
        setup=delete(paths.TRAINED_DIR)),
    Row("order-register-before-evaluate", ["register"], f"{paths.EVAL_METRICS} is missing; run the evaluate stage",
        setup=delete(paths.EVAL_METRICS)),
    Row("order-register-before-train", ["register"], f"{paths.RUN_INFO} is missing; run the train stage",
        setup=delete(paths.RUN_INFO)),
]

INTERMEDIATE_ROWS = [
    Row("warmup-json-malformed-train", ["train"], f"{MARKER}:1: malformed JSON", setup=put(MARKER, '{"ran": tr')),
    Row("warmup-json-malformed-evaluate", ["evaluate"], "re-run `python cli.py warmup`", setup=put(MARKER, "{")),
    Row("warmup-json-list", ["train"], f"{MARKER}: expected a JSON object, got list", setup=put(MARKER, "[true]")),
    Row("warmup-json-not-utf8", ["train"], f"{MARKER}: not UTF-8 text (byte offset 14", setup=put(MARKER, NOT_UTF8)),
    Row("warmup-json-is-dir", ["train"], f"{MARKER}: is a directory, expected a file", setup=as_dir(MARKER)),
    Row("warmup-json-empty", ["register"], f"{MARKER}:1: malformed JSON", setup=put(MARKER, "")),
    Row("run-info-malformed-evaluate", ["evaluate"], f"{paths.RUN_INFO}:1: malformed JSON (", 
        setup=put(paths.RUN_INFO, '{"run_id": ')),
    Row("run-info-not-utf8", ["evaluate"], f"{paths.RUN_INFO}: not UTF-8 text", setup=put(paths.RUN_INFO, NOT_UTF8)),
    Row("run-info-is-dir", ["evaluate"], f"{paths.RUN_INFO}: is a directory", setup=as_dir(paths.RUN_INFO)),
    Row("run-info-list", ["evaluate"], "expected a JSON object, got list", setup=put(paths.RUN_INFO, "[]")),
    Row("run-info-unknown-run", ["evaluate"], "MLflow run 0123456789abcdef is not in the store",
        setup=put(paths.RUN_INFO, '{"run_id": "0123456789abcdef"}'), may_change=STORE),
    Row("run-info-malformed-register", ["register"], f"{paths.RUN_INFO} is not valid JSON",
        setup=put(paths.RUN_INFO, "{oops")),
    Row("steps-log-malformed-line", ["train"], f"{STEPS}:1: malformed JSON",
        setup=edit(STEPS, lambda t: "{torn\n" + t)),
    Row("steps-log-not-utf8", ["train"], f"{STEPS}: not UTF-8 text (byte offset 0",
        setup=edit_bytes(STEPS, lambda b: b"\xff" + b)),
    Row("steps-log-is-dir", ["train"], f"{STEPS}: is a directory", setup=as_dir(STEPS)),
    Row("steps-log-not-object", ["train"], f"{STEPS}:1: expected a JSON object", setup=edit(STEPS, lambda t: "3\n" + t)),
    Row("checkpoint-hash-missing", ["train"], "checkpoints/params.sha256: missing",
        setup=delete(f"{paths.CHECKPOINT_DIR}/params.sha256")),
    Row("train-data-malformed", ["train"], f"{TRAIN_JSONL}:2", setup=edit(TRAIN_JSONL, lambda t: t.replace("\n", "\n{", 1))),
    Row("train-data-missing-field", ["warmup"], f"{TRAIN_JSONL}:1: missing field 'answer'",
        setup=put(TRAIN_JSONL, '{"id": "1", "prompt": "p", "source": "s"}\n')),
    Row("train-data-not-utf8", ["warmup"], f"{TRAIN_JSONL}: not UTF-8 text (byte offset 0", setup=put(TRAIN_JSONL, b"\xc3(")),
    Row("train-data-is-dir", ["train"], f"{TRAIN_JSONL}: is a directory, expected a file",
        setup=as_dir(TRAIN_JSONL)),
    Row("train-data-empty", ["train"], f"{TRAIN_JSONL}: no records to train on", setup=put(TRAIN_JSONL, "")),
    Row("warmup-data-empty", ["warmup"], "no record has a worked solution", setup=put(TRAIN_JSONL, "")),
    Row("warmup-no-solutions", ["warmup"], "no record has a worked solution",
        setup=put(TRAIN_JSONL, '{"id": "1", "prompt": "p", "answer": "1", "source": "s", "solution": ""}\n')),
    Row("eval-data-empty", ["evaluate"], f"{EVAL_JSONL}: no records to evaluate", setup=put(EVAL_JSONL, "\n")),
    Row("eval-data-malformed", ["evaluate"], f"{EVAL_JSONL}:1", setup=put(EVAL_JSONL, "{nope\n")),
    Row("eval-data-missing", ["evaluate"], f"{EVAL_JSONL}: input file not found", setup=delete(EVAL_JSONL)),
    Row("router-missing", ["evaluate"], f"{ROUTER}: input file not found", setup=delete(ROUTER)),
    Row("trained-dir-is-file", ["evaluate"], f"{ROUTER}: input file not found",
        setup=chain(delete(paths.TRAINED_DIR), put(paths.TRAINED_DIR, "x"))),
    Row("eval-metrics-malformed", ["register"], f"{paths.EVAL_METRICS} is not valid JSON",
        setup=put(paths.EVAL_METRICS, "{")),
    Row("eval-metrics-not-utf8", ["register"], f"{paths.EVAL_METRICS} is not valid JSON",
        setup=put(paths.EVAL_METRICS, b"\xff{}")),
    Row("eval-metrics-no-score", ["register"], "has no 'avg_at_k'", setup=put(paths.EVAL_METRICS, '{"x": 1}')),
    Row("eval-metrics-nan-score", ["register"], "cannot rank a non-finite score",
        setup=put(paths.EVAL_METRICS, '{"tarpo/avg_at_k": NaN}')),
    Row("lora-targets-bad", ["train", "--set", "model.lora.targets=[nope_proj]"],
        "model.lora.targets: ['nope_proj'] are not modules of this model", setup=fresh_copy),
    Row("lora-targets-bad-evaluate", ["evaluate", "--set", "model.lora.targets=[q_proj, fc9]"],
        "model.lora.targets: ['fc9'] are not modules of this model", setup=fresh_copy, may_change=STORE),
]

STORE_ROWS = [
    Row("store-garbage-train", ["train"], "mlflow.db is not an SQLite database", setup=put("mlflow.db", GARBAGE)),
    Row("store-garbage-evaluate", ["evaluate"], "mlflow.db is not an SQLite database", setup=put("mlflow.db", GARBAGE)),
    Row("store-garbage-register", ["register"], "mlflow.db is not an SQLite database", setup=put("mlflow.db", GARBAGE)),
    Row("store-garbage-compare", ["compare"], "mlflow.db is not an SQLite database", setup=put("mlflow.db", GARBAGE)),
    Row("store-is-dir", ["train"], "mlflow.db is not an SQLite database", setup=as_dir("mlflow.db")),
    Row("store-deleted-evaluate", ["evaluate"], "mlflow.db does not exist", setup=delete("mlflow.db")),
    Row("store-truncated-evaluate", ["evaluate"], "MLflow store sqlite:///mlflow.db cannot be used",
        setup=edit_bytes("mlflow.db", lambda b: b[:4096] + b"\xde\xad" * ((len(b) - 4096) // 2))),
    Row("store-unreachable-server", ["train", "--set", "tracking.uri=http://127.0.0.1:9"],
        "MLflow tracking server http://127.0.0.1:9 is not reachable", setup=fresh_copy),
    Row("store-dir-missing", ["evaluate", "--set", "tracking.uri=sqlite:///no/such/dir/m.db"],
        "does not exist or is not writable", setup=fresh_copy),
]

CHECKPOINTS = (paths.CHECKPOINT_DIR, "mlflow.db")   # --no-resume and a changed hash clear checkpoints on purpose
FAULT_ROWS = [
    # Disk faults injected at the system call (always run); the tmpfs rows below hit a really full disk.
    Row("fault-fsync-enospc-prepare", ["prepare"], f"error: no space left on device ({paths.PREPARED_DIR}/",
        fault=patch("os.fsync", raise_oserror(errno.ENOSPC))),
    Row("fault-mkstemp-erofs-prepare", ["prepare"], "error: read-only file system (data/prepared/",
        fault=patch("tempfile.mkstemp", raise_oserror(errno.EROFS))),
    Row("fault-replace-eacces-warmup-skip", ["warmup", "--set", "warmup.enabled=false"],
        f"error: permission denied ({paths.WARMUP_DIR}/", fault=patch("os.replace", raise_oserror(errno.EACCES))),
    Row("fault-fsync-edquot-train-hash", ["train"], "error: disk quota exceeded (checkpoints/params.sha256)",
        fault=patch("os.fsync", raise_oserror(errno.EDQUOT))),
    Row("metrics-dir-is-file", ["prepare"], "error: a file is in the way of a directory (metrics)", setup=chain(
        delete("metrics"), put("metrics", "not a directory")), may_change=(paths.PREPARED_DIR,)),
    Row("prepare-metrics-is-dir", ["prepare"], f"error: is a directory, expected a file ({paths.PREPARE_METRICS})",
        setup=as_dir(paths.PREPARE_METRICS), may_change=(paths.PREPARED_DIR,)),
    Row("nan-loss-stops-training", ["train", "--no-resume", "--set", "train.max_nonfinite_steps=0"],
        "error: 1 consecutive steps had a non-finite loss", fault=patch("tarpo.trainer.tarpo_loss", nan_loss),
        may_change=CHECKPOINTS),
    Row("reward-plugin-returns-nan", ["train", "--no-resume", "--set", "reward.function=nan_reward_plugin:reward"],
        "reward.function: nan_reward_plugin:reward returned nan for record",
        setup=put("nan_reward_plugin.py", "def reward(completion, gold, record):\n    return float('nan')\n"),
        may_change=(*CHECKPOINTS, "nan_reward_plugin.py", "__pycache__")),
]

DISK_FULL_ROWS = [  # (row, whether the stage has to run for seconds before its first write)
    Row("disk-full-prepare", ["prepare"], f"error: no space left on device ({paths.PREPARED_DIR}/"),
    Row("disk-full-train", ["train"], "error: no space left on device (checkpoints/params.sha256)"),
    Row("disk-full-warmup-skipped", ["warmup", "--set", "warmup.enabled=false"],
        f"error: no space left on device ({paths.WARMUP_DIR}/"),  # the file in the staged dir is named
]

ROWS = [*PARAMS_ROWS, *_nonfinite_rows(), *SET_ROWS, *MODEL_ROWS, *DATA_ROWS, *ORDER_ROWS, *INTERMEDIATE_ROWS,
        *STORE_ROWS, *FAULT_ROWS]


def _params_of(rows: list[Row]) -> list:
    return [pytest.param(r, id=r.id, marks=[pytest.mark.xfail(strict=True, reason=r.xfail)] if r.xfail else [])
            for r in rows]


@pytest.mark.parametrize("row", _params_of(ROWS))
def test_bad_input(row: Row, built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ws = built if row.shared else copy_workspace(built, tmp_path / "ws")
    run_row(row, ws, tmp_path, monkeypatch)


# ------------------------------------------------------------------------------------------ disk full
def _fill(directory: Path) -> None:
    """Use up every free byte of the file system holding `directory`."""
    with open(directory / ".filler", "wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


@pytest.fixture
def full_disk(built: Path, tmp_path: Path):
    """A copy of the workspace on a small tmpfs with no byte left (needs root; skipped elsewhere)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    size = sum(p.stat().st_size for p in built.rglob("*") if p.is_file()) + (8 << 20)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the fault rows simulate ENOSPC")
    before = os.getcwd()
    try:
        ws = copy_workspace(built, mount / "ws", link=False)
        _fill(mount)
        yield ws
    finally:
        os.chdir(tmp_path)  # leave the mount before unmounting it
        subprocess.run(["umount", "--lazy", str(mount)], check=True)  # MLflow may still hold mlflow.db open
        os.chdir(before)    # later tests rely on the working directory pytest started in


@pytest.mark.parametrize("row", _params_of(DISK_FULL_ROWS))
def test_disk_full(row: Row, full_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    run_row(row, full_disk, tmp_path, monkeypatch)


# ------------------------------------------------------------------------- real processes: SIGKILL, exit
CLI = [sys.executable, str(ROOT / "cli.py")]
AFTER_WARMUP = (paths.TRAINED_DIR, paths.CHECKPOINT_DIR, paths.RUN_INFO, paths.TRAIN_METRICS, paths.TRAIN_PLOT)


def _kill_when(argv: list[str], ws: Path, ready: Callable[[], bool], timeout_s: float = 120) -> None:
    proc = subprocess.Popen([*CLI, *argv], cwd=ws, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the stage ended before it could be killed"


KILL_ROWS = [
    # (row run after the kill, stage killed, what to remove first so the killed stage's outputs are absent, ready?)
    (Row("sigkill-train-then-evaluate", ["evaluate"], f"{ROUTER}: input file not found; run `python cli.py train`"),
     ["train", "--set", "train.steps=50"], AFTER_WARMUP,
     lambda ws: (ws / paths.CHECKPOINT_DIR / "step-000001" / "COMPLETE").is_file()),
    (Row("sigkill-warmup-then-train", ["train"], f"{MARKER}: missing; run the warmup stage first"),
     ["warmup", "--set", "warmup.steps=100000"], (paths.WARMUP_DIR, *AFTER_WARMUP),
     lambda ws: (ws / "models" / "tiny" / "config.json").is_file() and time.sleep(4) is None),
]


@pytest.mark.slow  # a real process has to start, load the model and reach a checkpoint before it is killed
@pytest.mark.parametrize("row,killed,remove,ready", [pytest.param(*k, id=k[0].id) for k in KILL_ROWS])
def test_sigkill_loses_nothing(row, killed, remove, ready, built, tmp_path, monkeypatch):
    ws = copy_workspace(built, tmp_path / "ws")
    for rel in remove:
        delete(rel)(ws)
    before = snapshot(ws)
    _kill_when(killed, ws, lambda: ready(ws))
    after = snapshot(ws)
    kept = (*CHECKPOINTS, paths.LOCK_FILE)  # the lock file names the killed holder still (the kernel freed the lock)
    lost = [rel for rel, digest in before.items() if not rel.startswith(kept) and after.get(rel) != digest]
    half = [rel for rel in after.keys() - before.keys() if not rel.startswith(kept)]
    assert not lost and not half, f"the kill changed {lost} and left {half}"
    run_row(row, ws, tmp_path, monkeypatch)


def test_real_interpreter_exit_code_and_one_line(built: Path):
    """The installed entry point, not CliRunner: exit status 2 and one line from the real interpreter."""
    done = subprocess.run([*CLI, "train", "--set", "train.lr=.nan"], cwd=built, env=env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines() == ["train.lr: expected a finite number, got nan"]


def test_the_table_is_big_enough():
    ids = [r.id for r in ROWS + DISK_FULL_ROWS] + [k[0].id for k in KILL_ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 120, len(ids)


@pytest.mark.parametrize("bug", [KeyError("internal"), OSError(errno.EIO, "I/O error"), UnicodeDecodeError(
    "utf-8", b"\xff", 0, 1, "invalid start byte")], ids=["KeyError", "EIO", "bare-UnicodeDecodeError"])
def test_internal_bugs_keep_their_traceback(bug, tmp_path, monkeypatch):
    """Only known user-caused failures become one line: anything else must reach the developer whole."""
    def broken(**kwargs):
        raise bug

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.setattr("pipeline.prepare.run_prepare", broken)
    result = invoke(["prepare"])
    assert result.exit_code == 1 and result.exception is bug


@pytest.mark.slow
def test_a_killed_run_that_is_not_resumed_is_marked_killed(built, tmp_path, monkeypatch):
    """SIGKILL leaves the MLflow run RUNNING; the next train that does not continue it closes it as KILLED."""
    import json

    from mlflow.tracking import MlflowClient

    ws = copy_workspace(built, tmp_path / "ws")
    first = ws / paths.CHECKPOINT_DIR / "step-000001"
    for rel in AFTER_WARMUP:
        delete(rel)(ws)
    _kill_when(["train", "--set", "train.steps=50"], ws, lambda: (first / "COMPLETE").is_file())
    killed = json.loads((first / "trainer_state.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{ws}/mlflow.db")
    assert client.get_run(killed).info.status == "RUNNING"
    monkeypatch.chdir(ws)
    forget_mlflow_stores()
    result = invoke(["train", "--no-resume", "--set", "train.steps=1"])
    forget_mlflow_stores()
    assert result.exit_code == 0, result.output
    assert client.get_run(killed).info.status == "KILLED"
    assert json.loads((ws / paths.RUN_INFO).read_text())["run_id"] != killed
