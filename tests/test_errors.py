"""tarpo/errors.py: each reader's one line names the file, the place in it and the stage that rewrites it."""

import errno

import pytest

from tarpo.errors import InputError, disk_error_line, read_json, read_jsonl_log, read_text


def test_read_text_names_directory_and_byte_offset(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match=r"d: is a directory, expected a file; re-run `python cli.py train`"):
        read_text(tmp_path / "d", stage="train")
    (tmp_path / "t.json").write_bytes("{\"é\": 1}".encode() + b"\xff\xfe")
    with pytest.raises(InputError, match=r"t.json: not UTF-8 text \(byte offset 9: b'\\xff'\)$"):
        read_text(tmp_path / "t.json")


def test_read_json_names_line_and_stage(tmp_path):
    path = tmp_path / "run_info.json"
    path.write_text('{\n  "run_id": \n}')
    with pytest.raises(InputError) as info:
        read_json(path, stage="train")
    assert str(info.value) == f"{path}:3: malformed JSON (Expecting value); re-run `python cli.py train`"
    path.write_text("[1]")
    with pytest.raises(InputError, match="expected a JSON object, got list"):
        read_json(path, stage="train")
    path.write_text('{"run_id": "abc"}')
    assert read_json(path, stage="train") == {"run_id": "abc"}


def test_torn_last_line_is_dropped_with_a_warning_anything_else_is_an_error(tmp_path):
    path, said = tmp_path / "steps.jsonl", []
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')
    assert read_jsonl_log(path, stage="train", warn=said.append) == [{"step": 1}, {"step": 2}]
    assert said == [f"{path}:3: dropping a torn last line (an interrupted write)"]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(InputError, match=r"steps.jsonl:2: malformed JSON"):
        read_jsonl_log(path, stage="train", warn=said.append)


def test_disk_error_line_only_for_what_the_user_can_fix():
    full = OSError(errno.ENOSPC, "No space left on device", "metrics/eval.json")
    assert disk_error_line(full) == "error: no space left on device (metrics/eval.json)"
    moved = OSError(errno.EISDIR, "Is a directory", ".eval.json.tmp", None, "metrics/eval.json")
    assert disk_error_line(moved) == "error: is a directory, expected a file (metrics/eval.json)"
    assert disk_error_line(RuntimeError("Error while serializing: IoError: No space left on device (os error 28)"))
    assert disk_error_line(OSError(errno.EIO, "I/O error")) is None   # not the user's: keeps its traceback
    assert disk_error_line(ValueError("bug")) is None
