"""One ``segment`` run at a time per output folder: ``OUT/.napari-dpn-segment.lock``."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from pathlib import Path

from .errors import OutputError
from .files import as_output_error, hostname, pid_alive, utc_now

LOCK_NAME = ".napari-dpn-segment.lock"


class FolderLock:
    """``OUT/.napari-dpn-segment.lock``: one ``segment`` run at a time per output folder.

    Two runs into one folder both segmented everything and then marked each other's images
    "skipped".  The lock is an exclusive lock on the file (``flock``), which the system releases
    when its process dies however it dies, so a lock left by a killed run is taken over at once;
    the file holds the host, the pid and the start time, for the sentence that refuses a second
    run.  Where the file system has no locks, the file itself is the lock (created exclusively) and
    one left by a process that no longer runs on this machine is stale and taken over.
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None
        self._held = False

    def acquire(self) -> FolderLock:
        for _ in range(5):  # another run's release can swap the file under us: try again
            if self._try():
                self._held = True
                self._write_owner()
                return self
        raise self._busy(self._holder())

    def _try(self) -> bool:
        try:
            import fcntl
        except ImportError:  # Windows: the file is the lock
            return self._try_exclusive()
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"{self.path} is a symbolic link, not napari-dpn's lock; remove it.") from None
            raise as_output_error(exc, self.path) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OutputError(f"{self.path} is not napari-dpn's lock file; remove it.")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(self._holder()) from None
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    return self._try_exclusive()
                raise as_output_error(exc, self.path) from None
            try:  # still the file of that name (not one a finishing run unlinked meanwhile)?
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                return False
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        self._fd = fd
        return True

    def _try_exclusive(self) -> bool:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            return True
        except FileExistsError:
            holder = self._holder()
            if holder and holder.get("host") == hostname() and not pid_alive(int(holder.get("pid", 0))):
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # a run that died left it
                return False
            raise self._busy(holder) from None
        except OSError as exc:
            raise as_output_error(exc, self.path) from None

    def _write_owner(self) -> None:
        text = json.dumps({"host": hostname(), "pid": os.getpid(), "started": utc_now()}).encode()
        assert self._fd is not None  # only called while the lock is held
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, text)
        except OSError as exc:
            self.release()
            raise as_output_error(exc, self.path) from None

    def _holder(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                return dict(json.loads(f.read(4096).decode()))
        except (OSError, ValueError, TypeError):
            return {}

    def _busy(self, holder: dict) -> OutputError:
        who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "started") if isinstance(holder.get(k), (str, int)))
        return OutputError(
            f"another napari-dpn segment run{f' ({who})' if who else ''} is writing to {self.path.parent}; "
            f"run one at a time per output folder: wait for it, or choose another --out"
            + ("" if holder.get("host") in (None, hostname()) else f" (delete {self.path} if that run is gone)")
        )

    def release(self) -> None:
        """Remove the file (while still holding it, so that no other run takes the old one) and unlock."""
        if self._fd is None:
            return
        if self._held:
            with contextlib.suppress(OSError):
                if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self._fd).st_ino:
                    self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd, self._held = None, False

    def __del__(self):  # a Cohort never closed (a script, a test) still lets the next run in
        with contextlib.suppress(Exception):
            self.release()
