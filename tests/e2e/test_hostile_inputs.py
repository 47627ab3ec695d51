"""Reliability round 2, one table per area: hostile YAML, inconsistent settings, odd data files, tracking outages,
CLI edges. Each row runs the real CLI (CliRunner, in-process) on the bad-input workspace of `workspace_kit` and
checks what `run_row` checks for every bad input: exit 2, one stderr line naming the key or file, no traceback,
nothing in the workspace changed. Rows marked `ok` are inputs that must be ACCEPTED (a BOM, gzip, `1e-5`): exit 0,
no stderr, `expect` in stdout, and `check` on what was written.

Rows that fail while reading their params share the session workspace; the others get a copy.
"""

from __future__ import annotations

import errno
import gzip
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from pipeline import paths
from tests.e2e.workspace_kit import (DATA_ROW, Row, as_dir, chain, copy_workspace, data_rows, forget_mlflow_stores,
                                     fresh_copy, invoke, invoke_row, jsonl_source, patch, put, run_row)
from tests.e2e.workspace_kit import built  # noqa: F401 - the session fixture, used by name

CHECKPOINTS = (paths.CHECKPOINT_DIR, "mlflow.db")
PREPARED = (paths.PREPARED_DIR, paths.PREPARE_METRICS)


@dataclass
class Case(Row):
    ok: bool = False                                   # the input must be accepted: exit 0, `expect` in stdout
    check: Callable[[Path], None] | None = None        # run on the workspace after an accepted row
    lock_store: bool = False                           # a helper process holds mlflow.db with BEGIN EXCLUSIVE
    after: list[str] | None = None                     # a CLI command that must then succeed (how to go on)
    after_expect: str = ""


def _params(case: Case) -> pytest.param:
    return pytest.param(case, id=case.id)


# ------------------------------------------------------------------------------------------ 1. YAML itself
def _bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\neval: {{pass_k: *l{levels - 1}}}\n"


def _flow_bomb(levels: int = 6) -> str:
    """The same in one flow value, as `--set` takes it: 10**6 ones after expansion."""
    parts = ["&a0 [" + ", ".join(["1"] * 10) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


YAML_CASES = [
    Case("yaml-billion-laughs", ["prepare"], "aliases expand this document to more than 100000 values", params=_bomb()),
    Case("yaml-alias-bomb-in-set", ["prepare", "--set", f"eval.pass_k={_flow_bomb()}"],
         "refused: aliases expand this document to more than 100000 values"),
    Case("yaml-recursive-alias", ["prepare"], "an alias refers to a node that contains it", params="eval: &a {x: *a}\n"),
    Case("yaml-duplicate-section", ["prepare"], ":3: duplicate key 'train' (first at line 1)",
         params="train: {steps: 3}\nrouter: {lr: 0.1}\ntrain: {seed: 1}\n"),
    Case("yaml-duplicate-key", ["prepare"], ":3: duplicate key 'lr' (first at line 2)",
         params="router:\n  lr: 0.1\n  lr: 0.2\n"),
    Case("yaml-duplicate-in-set", ["prepare", "--set", "model.lora={rank: 4, rank: 8}"], "duplicate key 'rank'"),
    Case("yaml-merge-key-override-ok", ["config", "validate"], "ok:",  # a key beside `<<` overrides: no duplicate
         params="rollout: {<<: {top_p: 0.5, top_k: 40}, top_p: 0.9}\n", ok=True),
    Case("yaml-tab-in-indent", ["prepare"], "YAML syntax error", params="router:\n  lr: 0.1\n\tloss_weight: 0.2\n"),
    Case("yaml-top-int", ["prepare"], "top level must be a mapping of sections (data:, model:, ...), got int",
         params="3\n"),
    Case("yaml-top-string", ["prepare"], "top level must be a mapping", params="params.yaml\n"),
    Case("yaml-top-list-of-sections", ["prepare"], "top level must be a mapping", params="- train: {steps: 3}\n"),
    Case("yaml-1e-5-is-a-float", ["prepare"], "train.steps: expected an integer, got 'yes'",
         params="train: {lr: 1e-5, steps: yes}\nrouter: {lr: 2E-4}\n"),
    Case("yaml-1e-5-ok", ["config", "validate"], "ok:", params="train: {lr: 1e-5}\nrouter: {lr: 3e-4}\n", ok=True),
    Case("yaml-yes-is-text-for-a-string", ["prepare"], "model.preset: unknown preset 'yes'",
         params="model: {preset: yes}\n"),
    Case("yaml-on-for-a-bool", ["prepare"], "tracking.enabled: expected true or false, got 'on' (YAML 1.1",
         params="tracking: {enabled: on}\n"),
    Case("yaml-no-for-a-bool", ["prepare"], "register.enabled: expected true or false, got 'no'",
         params="register: {enabled: no}\n"),
    Case("yaml-leading-zero-is-decimal", ["prepare"], "eval.pass_k: values [10] not in [1, num_samples=2]",
         params="eval: {num_samples: 2, pass_k: [1, 010]}\n"),
    Case("yaml-sexagesimal-is-text", ["prepare"], "train.steps: expected an integer, got '1:30'",
         params="train: {steps: 1:30}\n"),
    Case("yaml-date-is-text", ["prepare"], "train.steps: expected an integer, got '2026-01-01'",
         params="train: {steps: 2026-01-01}\n"),
    Case("yaml-underscore-int-is-text", ["prepare"], "train.steps: expected an integer, got '1_000'",
         params="train: {steps: 1_000}\n"),
    Case("yaml-huge-int", ["config", "show", "--set", "train.steps=1" + "0" * 30],  # show: no run if it regressed
         "train.steps: 100000... (31 digits) is beyond the 64-bit integer range"),
    Case("yaml-int-2-63", ["prepare"], "eval.max_problems: 9223372036854775808 is beyond the 64-bit integer range",
         params="eval: {max_problems: 9223372036854775808}\n"),
    Case("yaml-huge-negative-in-list", ["prepare"], "eval.pass_k: values [-9223372036854775809] not in [1, "
         "num_samples=4]", params="eval: {pass_k: [-9223372036854775809]}\n"),  # one line: the bound covers it
    Case("yaml-int-too-long-to-convert", ["prepare"], ":1: 999999999999... (5000 characters) is not a usable integer",
         params="train: {steps: " + "9" * 5000 + "}\n"),
    Case("yaml-huge-float", ["prepare"], "train.lr: expected a finite number, got inf", params="train: {lr: 1e999}\n"),
    Case("yaml-nested-too-deep", ["prepare"], "nested too deeply", params="train: " + "[" * 3000 + "]" * 3000 + "\n"),
    Case("yaml-wrong-type-in-list", ["prepare"], "model.lora.targets.1: expected a string, got 3",
         params="model: {lora: {targets: [q_proj, 3]}}\n"),
    Case("yaml-wrong-type-deep", ["prepare"], "router.init_bias.0: expected a number, got 'a'",
         params="router: {init_bias: [a, 0]}\n"),
    Case("yaml-mapping-for-a-number", ["prepare"], "model.lora.rank: expected an integer, got {'r': 4}",
         params="model: {lora: {rank: {r: 4}}}\n"),
    Case("yaml-python-tag", ["prepare"], "could not determine a constructor for the tag",
         params='train: !!python/object/apply:os.system ["echo hacked"]\n'),
    Case("yaml-null-key", ["prepare"], "None: a key must be a name, got None", params="~: 3\n"),
    Case("yaml-number-key", ["prepare"], "train.3: a key must be a name, got 3", params="train: {3: steps}\n"),
    Case("yaml-not-utf8-in-comment", ["prepare"], "not UTF-8 text (byte offset 5", params=b"# caf\xe9\ntrain: {}\n"),
    Case("yaml-bom-ok", ["config", "validate"], "ok:", params="\ufefftrain: {steps: 3}\n".encode(), ok=True),
]


# ---------------------------------------------------------------------------------- 2. inconsistent settings
def _set(*pairs: str, stage: str = "prepare") -> list[str]:
    """`prepare` loads and checks the whole config like every stage, and were a check to regress, it would
    write in the row's own copy in seconds (and fail the row) instead of training."""
    return [stage, *[a for p in pairs for a in ("--set", p)]]


SETTINGS_CASES = [
    Case("group-size-1", _set("rollout.group_size=1"), "rollout.group_size: group_size=1 must be >= 2"),
    Case("group-size-0", _set("rollout.group_size=0", stage="prepare"), "rollout.group_size: group_size=0"),
    Case("top-k-0-is-off-ok", ["config", "validate", "--set", "rollout.top_k=0"], "ok:", ok=True),
    Case("top-k-negative", _set("rollout.top_k=-1"), "rollout.top_k: must be >= 0"),
    Case("top-k-above-vocab", _set("rollout.top_k=513"), "rollout.top_k: 513 exceeds the vocabulary of tiny (512"),
    Case("top-k-equals-vocab-ok", ["config", "validate", "--set", "rollout.top_k=512"], "ok:", ok=True),
    Case("soft-top-k-above-vocab", _set("rollout.soft_top_k=600"), "rollout.soft_top_k: 600 exceeds the vocabulary"),
    Case("soft-top-k-above-top-k", _set("rollout.top_k=5", "rollout.soft_top_k=6"), "soft_top_k=6 exceeds top_k=5"),
    Case("soft-top-k-0", _set("rollout.soft_top_k=0"), "rollout.soft_top_k: soft_top_k=0 must be >= 1"),
    Case("latent-above-max-new", _set("rollout.max_new_tokens=10", "rollout.max_latent_steps=11"),
         "rollout.max_latent_steps: max_latent_steps=11 exceeds max_new_tokens=10"),
    Case("consecutive-above-max-new", _set("rollout.max_new_tokens=10", "rollout.max_consecutive_latent_steps=20"),
         "rollout.max_consecutive_latent_steps: max_consecutive_latent_steps=20 exceeds max_new_tokens=10"),
    Case("consecutive-above-total", _set("rollout.max_latent_steps=3", "rollout.max_consecutive_latent_steps=4"),
         "rollout.max_consecutive_latent_steps: max_consecutive_latent_steps=4 exceeds max_latent_steps=3"),
    Case("latent-negative", _set("rollout.max_latent_steps=-1"), "rollout.max_latent_steps: must be >= 0"),
    Case("set-through-scalar", _set("train.lr.x=1"), "train.lr.x: train.lr is not a section, it has no keys"),
    Case("set-through-deep-scalar", _set("model.lora.rank.low=1"), "model.lora.rank is not a section"),
    Case("set-section-to-list", _set("train=[1, 2]"), "train: expected a mapping of keys"),
    Case("set-unparsable-bracket", _set("router.init_bias=[1, 2"), "router.init_bias: value '[1, 2' is not valid"),
    Case("set-unparsable-colon", _set("train.lr=: x"), "train.lr: value ': x' is not valid YAML"),
    Case("set-unparsable-alias", _set("train.steps=*nope"), "train.steps: value '*nope' is not valid YAML"),
    Case("set-no-key", _set("=3"), "--set =3: expected KEY=VALUE"),
    Case("set-empty-key-part", _set("train..steps=3"), "train..steps: unknown key"),
    Case("set-twice", _set("train.steps=3", "train.steps=4"),
         "train.steps: set twice (train.steps=3, then train.steps=4) by --set, --steps or --model; give it once"),
    Case("set-twice-same-value-ok", ["config", "validate", "--set", "train.steps=3", "--set", "train.steps=3"],
         "ok:", ok=True),
    Case("set-and-steps", ["train", "--steps", "2", "--set", "train.steps=5"],
         "train.steps: set twice (train.steps=5, then train.steps=2)", setup=fresh_copy),
    Case("set-section-then-key", _set("model.lora={rank: 4}", "model.lora.rank=8", stage="prepare"),
         "model.lora.rank: set twice (model.lora.rank=4, then model.lora.rank=8)"),
    Case("set-path-and-model", ["prepare", "--set", "model.path=models/tiny", "--model", "tiny"],
         'model.path: set twice (model.path="models/tiny", then model.path=null)'),
    Case("preset-typo-set", _set("model.preset=qwen2.5-7"), "model.preset: unknown preset 'qwen2.5-7'; did you mean "
         "'qwen2.5-7b'?"),
    Case("preset-typo-file", ["prepare"], "model.preset: unknown preset 'smollm-135m'; did you mean 'smollm2-135m'?",
         params="model: {preset: smollm-135m}\n"),
    Case("preset-case", _set("model.preset=TINY"), "model.preset: unknown preset 'TINY'; did you mean 'tiny'?"),
    Case("prompts-not-divisible", _set("rollout.prompts_per_step=3", "train.num_processes=2"),
         "rollout.prompts_per_step: 3 prompts cannot be split over train.num_processes=2"),
    Case("synthetic-ops-order", _set("data.synthetic.min_ops=3", "data.synthetic.max_ops=2", stage="prepare"),
         "data.synthetic.min_ops: min_ops=3 is above max_ops=2", setup=fresh_copy, may_change=PREPARED),
]


# ------------------------------------------------------------------------------------------- 3. data files
def _gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


def _records(rel: str = paths.TRAIN_DATA) -> Callable[[Path], list[dict]]:
    return lambda ws: [json.loads(line) for line in (ws / rel).read_text().splitlines()]


def prepared(n: int, first: dict | None = None) -> Callable[[Path], None]:
    """The prepare stage wrote `n` training records, the first with these fields (by id order of the file)."""
    def check(ws: Path) -> None:
        rows = _records()(ws)
        assert len(rows) == n, len(rows)
        if first:
            match = [r for r in rows if r["id"].endswith("-1")]
            assert match and all(match[0][k] == v for k, v in first.items()), (match, first)
    return check


def fifo(rel: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        os.mkfifo(ws / rel)
    return setup


def symlink(rel: str, target: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        os.symlink(target, ws / rel)
    return setup


def unreadable(name: str):
    """open() of `name` fails with EACCES as it would for a user without read permission (root, which runs these
    tests, ignores permission bits, so the refusal is injected where the kernel would make it)."""
    import builtins

    real = builtins.open

    def fake(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name == name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real(file, *args, **kwargs)
    return patch("builtins.open", fake)


EVAL = put("eval.jsonl", data_rows(8, 100))


def src(train: str = "train.jsonl", *extra: str) -> list[str]:
    """prepare on local jsonl files, keeping every training record (the test profile keeps 48)."""
    return jsonl_source(train, "eval.jsonl", "data.train_size=1000", *extra)
TRAIN60 = data_rows(60)
Q = '{"question": "What is 2 + 2?", "answer": %s}\n'
DATA_CASES = [
    Case("data-bom-ok", src(), "prepared 60 train", setup=chain(put("train.jsonl", "\ufeff" + TRAIN60), EVAL),
         ok=True, check=prepared(60), may_change=PREPARED),
    Case("data-crlf-ok", src(), "prepared 60 train", ok=True, check=prepared(60), may_change=PREPARED,
         setup=chain(put("train.jsonl", TRAIN60.replace("\n", "\r\n")), EVAL)),
    Case("data-lone-cr-ok", src(), "prepared 60 train", ok=True, check=prepared(60), may_change=PREPARED,
         setup=chain(put("train.jsonl", TRAIN60.replace("\n", "\r")), EVAL)),
    Case("data-gzip-ok", src("train.jsonl.gz"), "prepared 60 train", ok=True, check=prepared(60),
         may_change=PREPARED, setup=chain(put("train.jsonl.gz", _gz(TRAIN60)), EVAL)),
    Case("data-gzip-named-jsonl-ok", src(), "prepared 60 train", ok=True, check=prepared(60),
         may_change=PREPARED, setup=chain(put("train.jsonl", _gz(TRAIN60)), EVAL)),
    Case("data-gzip-damaged", src("train.jsonl.gz"), "train.jsonl.gz: a damaged gzip file",
         setup=chain(put("train.jsonl.gz", _gz(TRAIN60)[:-12]), EVAL)),
    Case("data-gzip-not-utf8", src("train.jsonl.gz"), "train.jsonl.gz: not UTF-8 text (byte offset",
         setup=chain(put("train.jsonl.gz", gzip.compress(b'{"question": "caf\xe9"}\n')), EVAL)),
    Case("data-truncated-last-line", src(), "train.jsonl:61: bad JSON (Unterminated string starting at); it "
         "is the last line and has no newline: the file looks truncated",
         setup=chain(put("train.jsonl", TRAIN60 + '{"question": "What is 1'), EVAL)),
    Case("data-no-final-newline-ok", src(), "prepared 60 train", ok=True, check=prepared(60),
         may_change=PREPARED, setup=chain(put("train.jsonl", TRAIN60.rstrip("\n")), EVAL)),
    Case("data-huge-line", src(), "train.jsonl:61: a line of 9437221 bytes, more than the 8388608 bytes",
         setup=chain(put("train.jsonl", TRAIN60 + json.dumps({"question": "x" * (9 << 20), "answer": "#### 1"})
                         + "\n"), EVAL)),
    Case("data-huge-line-skipped", src("train.jsonl", "data.malformed=skip"),
         "prepared 60 train", ok=True, check=prepared(60), may_change=PREPARED,
         setup=chain(put("train.jsonl", "x" * (9 << 20) + "\n" + TRAIN60), EVAL)),
    Case("data-gold-list-ok", src(), "prepared 61 train", ok=True, may_change=PREPARED,
         check=prepared(61, {"answer": "4, 5"}), setup=chain(put("train.jsonl", Q % "[4, 5]" + TRAIN60), EVAL)),
    Case("data-gold-list-of-mapping", src(), "train.jsonl:1: field 'answer' must be text, a number or a list "
         "of them, got a list holding a dict", setup=chain(put("train.jsonl", Q % '[{"n": 4}]' + TRAIN60), EVAL)),
    Case("data-gold-nested-list", src(), "got a list holding a list",
         setup=chain(put("train.jsonl", Q % "[[4]]" + TRAIN60), EVAL)),
    Case("data-gold-null", src(), "train.jsonl:1: field 'answer' is null",
         setup=chain(put("train.jsonl", Q % "null" + TRAIN60), EVAL)),
    Case("data-gold-empty", src(), "train.jsonl:1: empty field 'answer'",
         setup=chain(put("train.jsonl", Q % '""' + TRAIN60), EVAL)),
    Case("data-gold-whitespace", src(), "train.jsonl:1: empty field 'answer'",
         setup=chain(put("train.jsonl", Q % '" \\t "' + TRAIN60), EVAL)),
    Case("data-gold-empty-list", src(), "train.jsonl:1: empty field 'answer'",
         setup=chain(put("train.jsonl", Q % "[]" + TRAIN60), EVAL)),
    Case("data-prompt-whitespace", src(), "train.jsonl:1: empty field 'question'",
         setup=chain(put("train.jsonl", '{"question": " \\n\\t ", "answer": "#### 1"}\n' + TRAIN60), EVAL)),
    Case("data-prompt-null", src(), "train.jsonl:1: field 'question' is null",
         setup=chain(put("train.jsonl", '{"question": null, "answer": "#### 1"}\n' + TRAIN60), EVAL)),
    Case("data-non-ascii-digits-ok", src(), "prepared 61 train", ok=True, may_change=PREPARED,
         check=prepared(61, {"answer": "7", "prompt": "What is ٣ + ٤?"}),
         setup=chain(put("train.jsonl", '{"question": "What is ٣ + ٤?", "answer": "#### ٧"}\n' + TRAIN60), EVAL)),
    Case("data-full-width-digits-ok", src(), "prepared 61 train", ok=True, may_change=PREPARED,
         check=prepared(61, {"answer": "12"}),
         setup=chain(put("train.jsonl", '{"question": "What is 6 + 6?", "answer": "#### １２"}\n' + TRAIN60), EVAL)),
    Case("data-train-fifo", src(), "train.jsonl: is a FIFO (named pipe), not a regular file",
         setup=chain(fifo("train.jsonl"), EVAL)),
    Case("data-eval-fifo", src(), "eval.jsonl: is a FIFO (named pipe), not a regular file",
         setup=chain(put("train.jsonl", TRAIN60), fifo("eval.jsonl"))),
    Case("data-char-device", src("/dev/zero"), "/dev/zero: is a character device, not a regular file",
         setup=EVAL),
    Case("data-eval-is-dir", src(), "eval.jsonl: is a directory, expected a file",
         setup=chain(put("train.jsonl", TRAIN60), as_dir("eval.jsonl"))),
    Case("data-no-read-permission", src(), "error: permission denied (train.jsonl)",
         setup=chain(put("train.jsonl", TRAIN60), EVAL), fault=unreadable("train.jsonl")),
    Case("data-symlink-loop", src(), "train.jsonl: a symlink loop",
         setup=chain(symlink("train.jsonl", "loop.jsonl"), symlink("loop.jsonl", "train.jsonl"), EVAL)),
    Case("data-dangling-symlink", src(), "train.jsonl: file not found (a symlink to gone.jsonl",
         setup=chain(symlink("train.jsonl", "gone.jsonl"), EVAL)),
    Case("data-symlink-ok", src(), "prepared 60 train", ok=True, check=prepared(60), may_change=PREPARED,
         setup=chain(put("real.jsonl", TRAIN60), symlink("train.jsonl", "real.jsonl"), EVAL)),
    Case("data-parquet-named-jsonl", src(), "train.jsonl: not UTF-8 text (byte offset",
         setup=chain(put("train.jsonl", b"PAR1\x15\x04\x15\xff\x00" + DATA_ROW.encode()), EVAL)),
]


# ------------------------------------------------------------------------------- 5. tracking and registry
TRACKING_CASES = [
    Case("store-locked-train", ["train"], "mlflow.db is locked by another process", lock_store=True,
         fault=patch("tarpo.tracking.LOCK_WAIT_S", 0.2)),
    Case("store-locked-evaluate", ["evaluate"], "mlflow.db is locked by another process", lock_store=True,
         fault=patch("tarpo.tracking.LOCK_WAIT_S", 0.2)),
    Case("store-locked-register", ["register"], "mlflow.db is locked by another process", lock_store=True,
         fault=patch("tarpo.tracking.LOCK_WAIT_S", 0.2)),
    Case("store-locked-compare", ["compare"], "mlflow.db is locked by another process", lock_store=True,
         fault=patch("tarpo.tracking.LOCK_WAIT_S", 0.2)),
    Case("store-truncated-train", ["train"], "MLflow store sqlite:///mlflow.db cannot be used",
         setup=lambda ws: put("mlflow.db", (ws / "mlflow.db").read_bytes()[:8192])(ws)),
    Case("store-truncated-register", ["register"], "MLflow store sqlite:///mlflow.db cannot be used",
         setup=lambda ws: put("mlflow.db", (ws / "mlflow.db").read_bytes()[:8192])(ws)),
    Case("store-truncated-compare", ["compare"], "MLflow store sqlite:///mlflow.db cannot be used",
         setup=lambda ws: put("mlflow.db", (ws / "mlflow.db").read_bytes()[:8192])(ws)),
    Case("store-header-then-garbage", ["evaluate"], "MLflow store sqlite:///mlflow.db cannot be used",
         setup=put("mlflow.db", b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 4096)),
    Case("server-closed-port", ["train", "--set", "tracking.uri=http://127.0.0.1:{closed_port}"],
         "MLflow tracking server http://127.0.0.1:{closed_port} is not reachable", setup=fresh_copy),
    Case("server-500-train", ["train", "--set", "tracking.uri=http://127.0.0.1:{server_500}"],
         "MLflow tracking server http://127.0.0.1:{server_500} answers HTTP 500", setup=fresh_copy),
    Case("server-500-compare", ["compare", "--set", "tracking.uri=http://127.0.0.1:{server_500}"],
         "answers HTTP 500"),
    Case("artifacts-not-writable", ["train", "--no-resume", "--set", "tracking.experiment=fresh"],
         "MLflow tracking at sqlite:///mlflow.db failed ([Errno 20] Not a directory", may_change=CHECKPOINTS,
         setup=put("mlruns", "a file where MLflow keeps artifacts")),
    Case("store-fails-mid-training", ["train", "--no-resume", "--steps", "3", "--set", "train.checkpoint_every=5"],
         "MLflow tracking at sqlite:///mlflow.db "
         "failed (database is locked); training stopped at step 2, checkpointed in checkpoints/step-000002: fix the "
         "store and run `python cli.py train` to resume there, or resume without tracking: `python cli.py train --set "
         "tracking.enabled=false --set register.enabled=false`", may_change=CHECKPOINTS,
         fault=lambda mp: mp.setattr("tarpo.tracking.MlflowTracker.log_metrics", _fails_at_step(2)),
         after=["train", "--steps", "3", "--set", "tracking.enabled=false", "--set", "register.enabled=false"],
         after_expect="resumed from checkpoints/step-000002 (step 2)"),  # the step it stopped at was kept
]


def _fails_at_step(bad_step: int):
    from tarpo.tracking import MlflowTracker

    real = MlflowTracker.log_metrics

    def log_metrics(self, metrics, step=None):
        if step == bad_step:
            from mlflow.exceptions import MlflowException
            raise MlflowException("database is locked")
        return real(self, metrics, step=step)
    return log_metrics


# ------------------------------------------------------------------------------------------- 6. CLI edges
CLI_CASES = [
    Case("compare-last-0", ["compare", "--last", "0"], "error: Invalid value for '--last' / '-n': Input should be "
         "greater than or equal to 1 (see `"),
    Case("compare-last-huge", ["compare", "--last", "99999999999999999999999"], "less than or equal to 50000"),
    Case("compare-last-text", ["compare", "--last", "five"], "Invalid value for '--last' / '-n'"),
    Case("unknown-command", ["trian"], "error: No such command 'trian'. Did you mean 'train'?"),
    Case("unknown-subcommand", ["config", "valid"], "No such command 'valid'. Did you mean 'validate'?"),
    Case("unknown-option", ["train", "--stepz", "3"], "error: No such option: --stepz (Possible options:"),
    Case("option-missing-value", ["train", "--set"], "error: Option '--set' requires an argument"),
    Case("option-bad-int", ["train", "--steps", "abc"], "Invalid value for '--steps'"),
    Case("steps-0", ["train", "--steps", "0"], "Invalid value for '--steps': Input should be greater than or equal to 1"),
    Case("missing-argument", ["models", "pull"], "error: Missing argument 'name'"),
    Case("pull-unknown-preset", ["models", "pull", "tyny"], "unknown model preset 'tyny' (did you mean 'tiny'?)"),
    Case("pull-hub-id", ["models", "pull", "Qwen/Qwen2.5-7B-Instruct"], "unknown model preset "
         "'Qwen/Qwen2.5-7B-Instruct' (the preset for it is 'qwen2.5-7b' (Qwen/Qwen2.5-7B-Instruct): use that name)"),
    Case("model-hub-id-of-a-preset", ["train", "--model", "Qwen/Qwen2.5-0.5B"], "--model: 'Qwen/Qwen2.5-0.5B' is "
         "neither a preset nor an existing directory; the preset for it is 'qwen2.5-0.5b'"),
    Case("model-hub-id-unknown", ["evaluate", "--model", "someorg/some-model"], "it looks like a hub id, and no "
         "preset has it (python cli.py models list); download it first, e.g. `huggingface-cli download "
         "someorg/some-model --local-dir models/some-model`, then pass --model models/some-model"),
    Case("model-typo", ["config", "show", "--model", "qwen2.5-7"], "did you mean 'qwen2.5-7b'?"),
    Case("model-relative-path-missing", ["train", "--model", "./models/nope"], "'./models/nope' is neither a preset "
         "nor an existing directory"),
]


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def servers():
    """{closed_port}: a loopback port nobody listens on; {server_500}: a loopback server answering 500 to all."""
    class Failing(http.server.BaseHTTPRequestHandler):
        def _fail(self):
            self.send_response(500, "Internal Server Error")
            self.send_header("Content-Length", "0")
            self.end_headers()
        do_GET = do_POST = do_PATCH = do_DELETE = _fail

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    try:
        yield {"closed_port": str(closed), "server_500": str(server.server_address[1])}
    finally:
        server.shutdown()
        server.server_close()


LOCKER = """import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


def _start_locker(ws: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(ws / "mlflow.db")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def run_case(case: Case, built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fill: dict | None = None):
    if fill:
        case = Case(**{**case.__dict__, "argv": [a.format(**fill) for a in case.argv],
                       "expect": case.expect.format(**fill)})
    ws = built if case.shared and not case.ok and not case.lock_store else copy_workspace(built, tmp_path / "ws")
    locker = _start_locker(ws) if case.lock_store else None
    try:
        if not case.ok:
            run_row(case, ws, tmp_path, monkeypatch)
        else:
            _run_accepted(case, ws, tmp_path, monkeypatch)
    finally:
        if locker is not None:
            locker.stdin.close()
            locker.wait(timeout=30)
    if case.after:
        monkeypatch.chdir(ws)
        forget_mlflow_stores()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = invoke(case.after)
        forget_mlflow_stores()
        assert result.exit_code == 0 and case.after_expect in result.stdout, result.output[-2000:]


def _run_accepted(case: Case, ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An input that must be accepted: exit 0, `expect` in stdout, only `may_change` paths written."""
    result, before, after = invoke_row(case, ws, tmp_path, monkeypatch)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.exception!r}\n{result.output[-2000:]}"
    assert case.expect in result.stdout and "Traceback" not in result.output, result.output[-2000:]
    changed = [rel for rel in {*before, *after} if before.get(rel) != after.get(rel)
               and not rel.startswith(case.may_change)]
    assert not changed, f"changed: {changed}"
    if case.check is not None:
        case.check(ws)


# ----------------------------------------------------------------------------------------------- the tables
@pytest.mark.parametrize("case", [_params(c) for c in YAML_CASES])
def test_hostile_yaml(case, built, tmp_path, monkeypatch):
    run_case(case, built, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", [_params(c) for c in SETTINGS_CASES])
def test_inconsistent_settings(case, built, tmp_path, monkeypatch):
    run_case(case, built, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", [_params(c) for c in DATA_CASES])
def test_odd_data_files(case, built, tmp_path, monkeypatch):
    run_case(case, built, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", [_params(c) for c in TRACKING_CASES])
def test_tracking_outages(case, built, tmp_path, monkeypatch, servers):
    run_case(case, built, tmp_path, monkeypatch, servers)


@pytest.mark.parametrize("case", [_params(c) for c in CLI_CASES])
def test_cli_edges(case, built, tmp_path, monkeypatch):
    run_case(case, built, tmp_path, monkeypatch)
