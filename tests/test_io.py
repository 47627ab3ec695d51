"""Atomic writers: complete files or the old content, never a half-written file."""

import json

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
