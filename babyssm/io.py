"""Files babyssm writes: atomically, with checksums, as JSON.

Every file babyssm writes appears whole or not at all: ``atomic_write`` writes a
temporary file in the same folder (same extension, so writers such as matplotlib's
``savefig`` pick the format from it), flushes and fsyncs it, ``os.replace``s it over
the old one and syncs the folder entry. An interrupted write leaves the previous good
file in place, never a torn one.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write_json(folder / "a.json", {"x": [1, 2]})
>>> read_json(folder / "a.json"), sha256_file(folder / "a.json")[:12]
({'x': [1, 2]}, 'dda6eb65d477')
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1 << 20  # read size when hashing large files


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, then make the result appear at ``path`` all at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder (os.replace cannot cross file systems); same extension (see the module docstring).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes the file private; the result should not be
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def umask() -> int:
    """The process' umask (files are created ``0o666 & ~umask()``, folders ``0o777 & ~umask()``)."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def sync_folder(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (POSIX: the folder entry must be synced too)."""
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(folder, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in blocks (corpora and archives do not fit in memory)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            sha.update(block)
    return sha.hexdigest()
