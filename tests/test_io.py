"""Atomic writers: complete files or the old content, never a half-written file."""

import errno
import json
import os
import stat

import pytest

from tarpo.io import write_json_atomic, write_jsonl_atomic


def test_json_and_jsonl_roundtrip(tmp_path):
    path = write_json_atomic(tmp_path / "m" / "metrics.json", {"b": 1.5, "a": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é", "b": 1.5}
    rows = [{"i": 1}, {"i": 2}]
    path = write_jsonl_atomic(tmp_path / "rows.jsonl", iter(rows))
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    path = write_json_atomic(tmp_path / "m.json", {"ok": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"bad": float("nan")})
    with pytest.raises(TypeError):
        write_jsonl_atomic(tmp_path / "m.json", [{"x": object()}])
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_outputs_get_umask_permissions_not_mkstemp_ones(tmp_path):
    from pipeline.publish import publishing

    out = tmp_path / "model"
    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "m.json", {"ok": 1})
        with publishing("test", [out]) as outputs:  # how stages write output directories
            write_json_atomic(outputs.dir(out) / "w.json", {"w": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone gives 0600
    assert stat.S_IMODE(out.stat().st_mode) == 0o755   # mkdtemp alone gives 0700


def test_a_failed_write_names_the_target_not_the_temporary(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        write_json_atomic(tmp_path / "m.json", {"ok": 1})
    assert info.value.filename == str(tmp_path / "m.json") and list(tmp_path.iterdir()) == []
