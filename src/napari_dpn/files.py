"""The file system, once: atomic writes, no-clobber moves, sha256 of a file, JSON records, whether a
process still runs, and one sentence for a failed file-system call.

Shared by the image writers (``image_writers``), the models (``models``), the cohort run (``placement``,
``recovery``, ``lock``) and the training lock, so that each behaves the same everywhere (one
``pid_alive``: ``os.kill(pid, 0)`` would end the process on Windows).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from .errors import OutputError, OutputExistsError

# Why a file-system call failed, by errno (never by the message, which depends on the platform and
# its language).  Everything not listed falls back to the system's own text for that errno.
_OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file would be larger than this file system allows",
    errno.EACCES: "permission denied (the folder is read-only for you)",
    errno.EPERM: "permission denied (the folder is read-only for you)",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.ENOENT: "the folder does not exist",
    errno.EEXIST: "a file of that name is in the way",
    errno.ELOOP: "the path has a loop of symbolic links",
    errno.EMFILE: "too many files are open",
    errno.ENFILE: "too many files are open",
    errno.EBUSY: "it is in use",
}
# Rust (safetensors) and C++ wrappers carry the errno in their text only: "(os error 28)".
_WRAPPED_ERRNO = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")


def fs_errno(exc: BaseException | None) -> int | None:
    """The errno of the file-system failure behind ``exc``: its own, that of an OSError it was
    raised from (or while handling), or the one a wrapper (safetensors' "os error 28") quotes.
    None when no file-system failure is behind it."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and isinstance(exc.errno, int):
            return exc.errno
        match = _WRAPPED_ERRNO.search(str(exc)) if not isinstance(exc, OSError) else None
        if match:
            return int(match[1] or match[2])
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def os_error_message(exc: BaseException, path: str | os.PathLike, action: str = "write") -> str:
    """One sentence for a failed file-system call: what could not be done to which file, and why
    (by errno, :func:`fs_errno`; an OSError without one gives its own text)."""
    code = fs_errno(exc)
    reason = _OS_REASONS.get(code) if code is not None else None
    if reason is None and code is not None:
        reason = os.strerror(code)
    if reason is None:
        reason = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).rstrip(".")
    return f"Cannot {action} {path}: {reason}."


def as_output_error(exc: OSError, where) -> OutputError:
    """An OSError as the OutputError (one sentence) that names the file it was about."""
    return OutputError(os_error_message(exc, getattr(exc, "filename", None) or where))


def exists_message(path: Path) -> str:
    return f"{path} already exists and was not replaced."


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary file keeps the target's suffix so writers that choose the format by suffix
    work; it is removed if the block raises.  Readers never see a half-written file.  With
    ``overwrite=False`` an existing ``path`` is never replaced, not even one that appears while
    the block runs (OutputExistsError).  File-system failures (read-only folder, full disk), also
    those a writer wraps in its own exception type, raise OutputError with one sentence (by errno).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:  # pathlib's checks raise for a name too long, a loop of links...
        if not folder.is_dir():
            if folder.exists():
                raise OutputError(f"Cannot write {path}: {folder} is a file, not a folder.")
            raise OutputError(f"Cannot write {path}: the folder {folder} does not exist.")
        if path.is_dir():
            raise OutputError(f"Cannot write {path}: it is a folder.")
        if not overwrite and (path.exists() or path.is_symlink()):
            raise OutputExistsError(exists_message(path))
    except OSError as exc:
        raise OutputError(os_error_message(exc, path)) from None
    tmp = folder / f".{path.stem[:120]}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}"  # short: the name may be long
    # os.open (not mkstemp, which makes 0600 files) so the result gets the usual permissions
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise OutputError(os_error_message(exc, path)) from None
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            place_no_clobber(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError) and not overwrite:
            raise OutputExistsError(exists_message(path)) from None
        raise OutputError(os_error_message(exc, path)) from None
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, OutputError) and fs_errno(exc) is not None:
            # a writer that wraps the OSError (safetensors: SafetensorError "... (os error 28)")
            raise OutputError(os_error_message(exc, path)) from None
        raise


def place_no_clobber(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (FileExistsError), atomically where the
    file system has hard links (``link`` fails on an existing name; ``replace`` would not)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares): check, then replace
        if path.exists() or path.is_symlink():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink(missing_ok=True)


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (weights, outputs), read a megabyte at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` as JSON, atomically (a reader never sees half a record)."""
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(data))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when it cannot be told)."""
    try:
        import psutil  # a dependency of distributed; os.kill(pid, 0) would end the process on Windows

        return psutil.pid_exists(pid)
    except ImportError:
        if os.name == "nt":
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # exists, owned by someone else
            return True
        return True


def hostname() -> str:
    return socket.gethostname()


def utc_now() -> str:
    """Now, as the records write it (ISO 8601, UTC, seconds)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def remove_folder(path: str | os.PathLike) -> None:
    """Remove a run's private folder (staging, receipts) if it is there (a link put in its place:
    the link only, never what it points at)."""
    if os.path.islink(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - e.g. NFS silly-rename files of a killed worker
        if exc.errno not in (errno.ENOTEMPTY, errno.EBUSY):
            raise
