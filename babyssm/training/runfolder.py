"""One writer per run folder, and what an interrupted writer left behind.

``RunLock(run_dir)`` takes an exclusive ``fcntl.flock`` on ``RUN_DIR/.babyssm.lock``
for as long as training writes the folder. The kernel releases the lock when the
holder dies in any way (SIGKILL included), so a lock is never stale; the file itself
stays (deleting it would let a third process lock a different inode). The holder
writes its PID into the file, so that a second ``babyssm train --out RUN_DIR``
refuses in one line naming it.

``remove_stale_temps(run_dir)``, called under the lock, deletes the temporary files
of atomic writes (``.NAME.XXXXXXXX.tmp.EXT``, see ``babyssm.io.atomic_write``)
that a killed writer left in the run folder and its milestone folders: under the
lock no live writer can own one. (``eval/`` is left alone: evaluation does not take
the lock, and may be writing there.)

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> with RunLock(d) as lock:
...     lock.holder() == os.getpid()
True
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from babyssm.errors import BabySSMError

LOCK_FILE = ".babyssm.lock"
# tempfile.mkstemp's names: prefix ".{stem}.", 8 characters of [a-z0-9_], suffix ".tmp{ext}".
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def run_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a run folder to write, or a one-line error when it names a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BabySSMError(f"{flag} {path} is a file, not a folder; choose a folder for the run")
    return path


class RunLock:
    """Exclusive lock on a run folder (created if missing); a context manager."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = run_folder(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise BabySSMError(f"cannot create {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.holder()
            who = f"process {pid}" if pid else "another process"
            raise BabySSMError(f"{self.run_dir} is in use: {who} is training into it (lock {self.path}); "
                               "wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def holder(self) -> int | None:
        """The PID written by the lock's holder (the last one, if nobody holds it now)."""
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def remove_stale_temps(run_dir: str | os.PathLike) -> list[Path]:
    """Delete atomic-write leftovers in ``run_dir`` and its milestone folders; returns them."""
    run_dir = Path(run_dir)
    folders = [run_dir, *sorted((run_dir / "milestones").glob("*"))]
    stale = [p for d in folders if d.is_dir() for p in d.iterdir() if p.is_file() and TEMP_NAME.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
