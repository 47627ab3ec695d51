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


def _every_writer(root):
    """Each atomic writer of tarpo/ and pipeline/ writes one output under `root`; returns {name: (path, is_dir)}."""
    import io
    from contextlib import contextmanager

    from pipeline.publish import publishing
    from tarpo.io import atomic_dir, atomic_file
    from tarpo.models import _write_atomically
    from tarpo.offline import concat_verified
    from matplotlib.figure import Figure

    from tarpo.plots import save_png

    @contextmanager
    def stream():
        yield io.BytesIO(b"gguf"), 4

    write_json_atomic(root / "m.json", {"ok": 1})
    with atomic_file(root / "blob.bin", binary=True) as handle:
        handle.write(b"\0")
    with atomic_dir(root / "tree") as tmp:
        (tmp / "f").write_text("x")
    _write_atomically(root / "pulled", lambda tmp: (tmp / "config.json").write_text("{}"), preset="tiny")
    save_png(Figure(figsize=(1, 1)), root / "plot.png")
    concat_verified([stream], root / "joined.gguf", None, total=4)
    with publishing("test", [root / "staged"]) as outputs:  # how stages write output directories
        write_json_atomic(outputs.dir(root / "staged") / "w.json", {"w": 1})
    return {"json": ("m.json", False), "atomic_file": ("blob.bin", False), "atomic_dir": ("tree", True),
            "models._write_atomically": ("pulled", True), "plots.save_png": ("plot.png", False),
            "offline.concat_verified": ("joined.gguf", False), "publish.dir": ("staged", True)}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_outputs_get_umask_permissions_not_mkstemp_ones(tmp_path, umask):
    """One permission policy: what open() / mkdir() give under the umask; mkstemp alone gives 0600, mkdtemp 0700,
    and a fixed 0o644 ignores a private (0o077) or group-writable (0o002) umask."""
    old = os.umask(umask)
    try:
        outputs = _every_writer(tmp_path)
    finally:
        os.umask(old)
    modes = {name: oct(stat.S_IMODE((tmp_path / rel).stat().st_mode)) for name, (rel, _) in outputs.items()}
    assert modes == {name: oct((0o777 if is_dir else 0o666) & ~umask) for name, (_, is_dir) in outputs.items()}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".tarpo-publish") == []


def test_a_failed_write_leaves_the_old_output_intact(tmp_path):
    from tarpo.io import atomic_dir, atomic_file
    from tarpo.models import _write_atomically
    from tarpo.offline import OfflineSourceError, concat_verified
    from matplotlib.figure import Figure

    from tarpo.plots import save_png

    class Broken(RuntimeError):
        pass

    def fail(*_args, **_kwargs):
        raise Broken

    figure = Figure(figsize=(1, 1))
    figure.savefig = fail  # a figure that fails half-way through being saved

    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "old").write_text("old")
    for name in ("blob.bin", "plot.png", "joined.gguf"):
        (tmp_path / name).write_bytes(b"old")
    with pytest.raises(Broken), atomic_file(tmp_path / "blob.bin", binary=True) as handle:
        handle.write(b"new, half")
        fail()
    with pytest.raises(Broken), atomic_dir(tmp_path / "tree") as tmp:
        (tmp / "new").write_text("new")
        fail()
    with pytest.raises(Broken):
        _write_atomically(tmp_path / "tree", fail)
    with pytest.raises(Broken):
        save_png(figure, tmp_path / "plot.png")
    with pytest.raises(OfflineSourceError, match="sha256"):
        concat_verified([lambda: _bytes_stream(b"new")], tmp_path / "joined.gguf", "0" * 64, total=3)
    assert [p.name for p in (tmp_path / "tree").iterdir()] == ["old"]
    assert {n: (tmp_path / n).read_bytes() for n in ("blob.bin", "plot.png", "joined.gguf")} == dict.fromkeys(
        ("blob.bin", "plot.png", "joined.gguf"), b"old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "joined.gguf", "plot.png", "tree"]  # no temps


def _bytes_stream(data: bytes):
    import io
    from contextlib import contextmanager

    @contextmanager
    def opened():
        yield io.BytesIO(data), len(data)

    return opened()


def test_a_failed_write_names_the_target_not_the_temporary(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        write_json_atomic(tmp_path / "m.json", {"ok": 1})
    assert info.value.filename == str(tmp_path / "m.json") and list(tmp_path.iterdir()) == []
