"""What `segment` reads and writes in a folder: which files are photographs, which images still need
their outputs, writing one image's outputs all-or-nothing without replacing anything, and the
manifest (one CSV row per image) that makes a re-run skip what is done.

Shared by the serial run and the Dask workers (``cohort.py``); the CLI only prints.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import InputError, OutputError, OutputExistsError

MANIFEST_NAME = "napari-dpn-manifest.csv"
MANIFEST_FIELDS = (
    "image",
    "status",
    "error",
    "seconds",
    "device",
    "scale_factor",
    "scale_method",
    "fov_diameter",
    "vessel_density",
    "model",
    "model_sha256",
    "options",
    "outputs",
    "output_sha256",
    "finished",
)
STATUSES = ("done", "failed", "skipped")
_SEP = ";"  # between the names (and the sha256s) of an image's outputs
ERROR_LIMIT = 4000  # characters of a row's error sentence (a field over 128 KB was a csv traceback)


def join_names(names) -> str:
    """The ``outputs`` cell: names joined by ``;``, where a ``%`` or ``;`` inside a name is written
    ``%25`` / ``%3B`` so that the list splits back into the same names (plain names are unchanged)."""
    return _SEP.join(str(n).replace("%", "%25").replace(_SEP, "%3B") for n in names)


def split_names(text: str) -> list[str]:
    """The names :func:`join_names` joined."""
    import re

    decode = {"%25": "%", "%3B": ";", "%3b": ";"}
    return [re.sub(r"%(25|3[Bb])", lambda m: decode[m.group(0)], n) for n in (text or "").split(_SEP) if n]


# ----------------------------------------------------------------------------- the photographs


def images_in(paths: list[str]) -> tuple[list[Path], list[str]]:
    """(photographs to segment, notes about files left out).

    In a folder, annotations, masks and probability maps (ours: ``*_vessels.png``...; the
    datasets': ``*_manual1.gif``, ``*_1stHO.png``, ``*.ah.ppm``...) are left out with one summary
    note; a file named explicitly (or by a shell glob) that is one of them is left out with a note.
    """
    from .annotations import not_a_photograph, photographs_in
    from .image_io import IMAGE_SUFFIXES

    found: list[Path] = []
    notes: list[str] = []
    for text in paths:
        p = Path(text).expanduser()
        if p.is_dir():
            photos = photographs_in(p)
            left = [
                q
                for q in p.iterdir()
                if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".") and q not in photos
            ]
            found += photos
            if left:
                notes.append(
                    f"left out {len(left)} file(s) in {p} that are annotations, masks or probability "
                    f"maps, not photographs (e.g. {sorted(left)[0].name})"
                )
        elif p.is_file():
            why = not_a_photograph(p)
            if why:
                notes.append(f"left out {p.name}: it is {why}, not a photograph")
            else:
                found.append(p)
        else:
            raise InputError(f"no such file or folder: {p}")
    if not found:
        raise InputError(
            "no photographs found in "
            + ", ".join(paths)
            + (
                f"; {notes[0]}"
                if len(notes) == 1
                else " (only annotations, masks or probability maps)"
                if notes
                else ""
            )
        )
    return found, notes


def image_key(path: str | os.PathLike) -> str:
    """How the manifest names an image: its absolute path (the same from any working folder)."""
    return str(Path(path).expanduser().resolve())


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Job:
    """One image to segment and where its three outputs go.

    ``overwrite``: replace whatever is there (``--overwrite``).  ``replaceable``: {output path:
    sha256} of outputs an earlier run wrote with another model and nobody changed since; only
    these may be replaced without ``overwrite`` (checked again just before the replacement).
    """

    index: int
    image: str
    outputs: tuple[str, str, str]  # probability, vessels, FOV
    overwrite: bool = False
    replaceable: tuple[tuple[str, str], ...] = ()
    previous_model: str | None = None

    @property
    def name(self) -> str:
        return Path(self.image).name


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # manifest rows: outputs in the way
    done: list[str] = field(default_factory=list)  # image names done earlier with this model
    rerun: list[Job] = field(default_factory=list)  # jobs that replace another model's outputs


def _existing(paths) -> list[Path]:
    return [Path(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]


def _ours_unchanged(row: dict, outputs: tuple[Path, Path, Path]) -> dict[str, str] | None:
    """{path: sha256} of the existing outputs if every one of them is exactly what the manifest row
    says napari-dpn wrote; None if one was changed (a correction saved from napari) or is unknown."""
    names = split_names(row.get("outputs") or "")
    shas = [s for s in (row.get("output_sha256") or "").split(_SEP) if s]
    recorded = dict(zip(names, shas)) if len(names) == len(shas) else {}
    found = {}
    for path in _existing(outputs):
        want = recorded.get(path.name)
        if not want or not path.is_file() or path.is_symlink() or sha256_of(path) != want:
            return None
        found[str(path)] = want
    return found


def plan_outputs(
    images: list[Path],
    out: Path,
    prob_suffix: str,
    overwrite: bool,
    manifest: Manifest | None = None,
    model_sha256: str = "",
    options: str = "",
) -> Plan:
    """What to do with each image.

    Refuses two images whose outputs would share a name.  An image none of whose outputs exists is
    segmented; with ``overwrite`` every image is.  Otherwise an image the manifest records as done
    with this model (same sha256) and the same ``options`` (threshold, scale) is skipped as done; one
    done with another model or other options whose outputs are unchanged since is segmented again
    (its outputs replaced); one any of whose outputs exists for another reason (e.g. a correction
    saved from napari as ``<stem>_vessels.png``) is skipped.
    """
    from .annotations import output_paths, same_stem, same_stem_message

    clashes = same_stem(images)
    if clashes:
        raise InputError(same_stem_message(clashes))
    plan = Plan()
    for path in images:
        outputs = output_paths(path, out, prob_suffix)
        prob, vessels, fov = outputs  # name the correction first: it is what a user would lose
        existing = _existing((vessels, fov, prob))
        job = Job(index=len(plan.jobs), image=str(path), outputs=tuple(str(o) for o in outputs), overwrite=overwrite)
        if not existing or overwrite:
            plan.jobs.append(job)
            continue
        row = manifest.get(path) if manifest is not None else None
        if row and row["status"] == "done" and len(existing) == 3:
            same_model = bool(model_sha256) and row.get("model_sha256") == model_sha256
            if same_model and row.get("options", "") == options:
                plan.done.append(path.name)
                continue
            mine = _ours_unchanged(row, outputs)
            if mine is not None:
                before = row.get("model") or "another model"
                if same_model:
                    before += f" and other options ({row.get('options') or 'unknown'})"
                job = Job(
                    index=job.index,
                    image=job.image,
                    outputs=job.outputs,
                    replaceable=tuple(mine.items()),
                    previous_model=before,
                )
                plan.jobs.append(job)
                plan.rerun.append(job)
                continue
            what = f"{existing[0].name} was changed after napari-dpn wrote it in {out}"
        elif row and row["status"] == "skipped" and row["error"].startswith(existing[0].name + " "):
            what = row["error"]  # the same file is still in the way: the same sentence
        else:
            what = f"{existing[0].name} already exists in {out}"
        plan.skipped.append(skipped_row(path, what))
    return plan


def skipped_row(image, sentence: str) -> dict:
    return {"image": image_key(image), "status": "skipped", "error": sentence}


# ----------------------------------------------------------------------------- writing an image's outputs

STAGE_PREFIX = ".napari-dpn-stage-"


@dataclass
class Staged:
    """One image's three outputs, written completely into a private staging folder."""

    folder: Path
    files: list[Path]  # in the order of the outputs
    shas: list[str]


def _as_output_error(exc: OSError, where) -> OutputError:
    from .image_io import os_error_message

    return OutputError(os_error_message(exc, getattr(exc, "filename", None) or where))


def stage_outputs(outputs, prob, vessels, fov, staging: str | os.PathLike | None = None) -> Staged:
    """Write (probability, vessels, FOV) into a new staging folder in ``staging`` (default: the
    output folder; it must be on the same file system) under their final names."""
    from . import image_io

    outputs = [Path(p) for p in outputs]
    base = Path(staging) if staging is not None else outputs[0].parent
    folder = base / f"{STAGE_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        folder.mkdir()  # not parents: a task still running after its run ended must not recreate the run folder
    except OSError as exc:
        raise OutputError(image_io.os_error_message(exc, outputs[0].parent, "write to")) from None
    try:
        files = [folder / p.name for p in outputs]
        image_io.write_probability(files[0], prob, overwrite=False)
        image_io.write_mask(files[1], vessels, overwrite=False)
        image_io.write_mask(files[2], fov, overwrite=False)
        return Staged(folder, files, [sha256_of(f) for f in files])
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _as_output_error(exc, outputs[0].parent) from None
        raise


def _backup_of(staged: Staged, dst: Path) -> Path:
    return staged.folder / f"{dst.name}.previous"


def place_outputs(
    staged: Staged, outputs, overwrite: bool = False, replaceable=(), already=(), undo_already: bool = True
) -> None:
    """Move staged outputs into place, all or none.

    Without ``overwrite`` an existing name is never replaced (a hard link, which fails on an
    existing name), except the files in ``replaceable`` ({path: sha256}) that still hold exactly
    that content; a replaced file is kept in the staging folder until the end.  ``already``: outputs
    an earlier, interrupted call placed (they hold the staged content; skipped).  If one output
    cannot be placed, every output placed for this image (by this call or in ``already``) is removed
    and every file replaced is restored (``undo_already=False``: the ``already`` ones are kept, for
    a recovery that cannot prove it wrote them).  OutputExistsError if an output is in the way;
    OutputError (one sentence) for a file-system failure.
    """
    from . import image_io

    outputs = [Path(p) for p in outputs]
    replaceable = dict(replaceable)
    already = {str(p) for p in already}
    placed: list[Path] = [p for p in outputs if str(p) in already] if undo_already else []
    try:
        for src, dst in zip(staged.files, outputs):
            if str(dst) in already:
                continue
            there = dst.exists() or dst.is_symlink()
            if there and (overwrite or str(dst) in replaceable):
                if not overwrite and sha256_of(dst) != replaceable[str(dst)]:
                    raise OutputExistsError(f"{dst} was changed while the run went on and was not replaced.")
                backup = _backup_of(staged, dst)
                backup.unlink(missing_ok=True)  # left by an interrupted call: the same old file
                try:
                    os.link(dst, backup)
                except OSError:  # a symlink, or no hard links on this file system
                    shutil.copy2(dst, backup, follow_symlinks=False)
                os.replace(src, dst)
            else:
                try:
                    image_io._place_no_clobber(src, dst)
                except FileExistsError:
                    raise OutputExistsError(f"{dst} already exists and was not replaced.") from None
            placed.append(dst)
    except BaseException as exc:  # a full disk, a file saved meanwhile, Ctrl-C: undo this image
        for dst in placed:
            backup = _backup_of(staged, dst)
            with contextlib.suppress(OSError):
                if backup.exists():
                    os.replace(backup, dst)
                else:
                    dst.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _as_output_error(exc, outputs[0].parent) from None
        raise


def write_outputs(
    outputs, prob, vessels, fov, overwrite: bool = False, replaceable=(), staging: str | os.PathLike | None = None
) -> list[str]:
    """Write one image's (probability, vessels, FOV), all or none, and return their sha256s.

    All three are first written completely into a private staging folder (``stage_outputs``), then
    moved into place (``place_outputs``: never replacing a file without ``overwrite``, except the
    unchanged ``replaceable`` ones).  OutputExistsError if an output is in the way; OutputError
    (one sentence) for a file-system failure.
    """
    staged = stage_outputs(outputs, prob, vessels, fov, staging)
    try:
        place_outputs(staged, outputs, overwrite, replaceable)
        return staged.shas
    finally:
        shutil.rmtree(staged.folder, ignore_errors=True)


# ----------------------------------------------------------------------------- the manifest


def _cell(value, key: str = "") -> str:
    """A value as the manifest writes it.  Text is kept exactly (a file name with a tab, a newline
    or two spaces is the csv module's to quote, not ours to change: a re-run must find it again);
    only the error sentence is bounded."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    if key == "error" and len(text) > ERROR_LIMIT:
        text = text[: ERROR_LIMIT - 1] + "\u2026"
    return text


@contextlib.contextmanager
def _any_field_size():
    """Read fields of any size (the csv module stops at 128 KB with a traceback)."""
    old = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(old)


class Manifest:
    """``napari-dpn-manifest.csv`` in the output folder: one row per image (its last state).

    During a run each finished image is appended as one line (flushed to disk), so a run that is
    killed keeps what it finished; :meth:`close` rewrites the file atomically with one row per image.
    A line cut short by a crash is ignored when the file is read.  Only the process that plans the
    run (the Dask client) writes it.
    """

    SYNC_EVERY = 1.0  # seconds between fsyncs of appended lines (each line is flushed at once)

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / MANIFEST_NAME
        self.rows: dict[str, dict] = {}
        self._synced = 0.0
        self.changed = False  # rows to rewrite: appended now, duplicates or a torn line in the file
        # A torn last row may end inside a quoted name: a line appended after it would become part of
        # that name, so such a file is rewritten whole before the first append.
        self._torn = False
        if self.path.exists() or self.path.is_symlink():
            self._read()

    def _read(self) -> None:
        # Never through a link (rows would be appended to whatever it points at) nor from a FIFO or a
        # device (the read would wait for ever): in a shared folder anyone may have put one there.
        if self.path.is_symlink() or not self.path.is_file():
            what = "a symbolic link" if self.path.is_symlink() else "not a plain file"
            raise OutputError(
                f"{self.path} is {what}, not a manifest napari-dpn wrote; remove it or choose another --out."
            )
        try:
            with open(self.path, encoding="utf-8", newline="") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc if isinstance(exc, UnicodeDecodeError) else exc.strerror
            raise OutputError(f"Cannot read {self.path}: {reason}; move it away to start a new manifest.") from None
        reader = csv.DictReader(io.StringIO(text))
        try:
            with _any_field_size():
                fields = reader.fieldnames
                if not fields or not {"image", "status", "model_sha256"} <= set(fields):
                    raise OutputError(
                        f"{self.path} is not a napari-dpn manifest; move it away or choose another --out."
                    )
                rows = list(reader)
        except csv.Error as exc:
            raise OutputError(
                f"Cannot read {self.path}: it is damaged near line {reader.line_num} ({exc}); "
                "move it away to start a new manifest."
            ) from None
        for row in rows:
            if None in row or any(v is None for v in row.values()) or row["status"] not in STATUSES or not row["image"]:
                self.changed = self._torn = True  # torn or foreign line: dropped when the file is rewritten
                continue
            if row["image"] in self.rows:
                self.changed = True
            self.rows[row["image"]] = {k: row.get(k, "") or "" for k in MANIFEST_FIELDS}
        if text and not text.endswith("\n"):
            self.changed = self._torn = True

    def get(self, image) -> dict | None:
        return self.rows.get(image_key(image))

    def record(self, row: dict) -> bool:
        """Append one image's row (unless the manifest already says exactly that); True if written."""
        row = {k: _cell(row.get(k), k) for k in MANIFEST_FIELDS}
        if not row["finished"]:
            row["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        old = self.rows.get(row["image"])
        if old and all(old.get(k, "") == row[k] for k in MANIFEST_FIELDS if k != "finished"):
            return False
        line = io.StringIO()
        writer = csv.DictWriter(line, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        if not self.path.exists():
            from .image_io import atomic_write

            writer.writeheader()
            writer.writerow(row)
            with atomic_write(self.path, overwrite=False) as tmp:
                Path(tmp).write_text(line.getvalue(), encoding="utf-8")
            self.rows[row["image"]] = row
        elif self._torn:
            self.rows[row["image"]] = row
            self._rewrite()
        else:
            writer.writerow(row)
            self._append(line.getvalue())
            self.rows[row["image"]] = row
        self.changed = True
        return True

    def _append(self, text: str) -> None:
        from .image_io import os_error_message

        try:
            with open(self.path, "r+b") as f:
                f.seek(0, os.SEEK_END)
                if f.tell():
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # a line torn by a crash: end it, it will be ignored
                        text = "\n" + text
                f.seek(0, os.SEEK_END)
                f.write(text.encode("utf-8"))
                f.flush()
                # A killed process loses nothing flushed; fsync (for a crash of the machine) at most once
                # a second, so a GPU writing hundreds of images a second does not wait for the disk.
                if time.monotonic() - self._synced >= self.SYNC_EVERY:
                    os.fsync(f.fileno())
                    self._synced = time.monotonic()
        except OSError as exc:
            raise OutputError(os_error_message(exc, self.path)) from None

    def close(self) -> None:
        """Rewrite the file atomically with one row per image, if anything changed."""
        if not self.changed or not self.rows:
            return
        self._rewrite()
        self.changed = False

    def _rewrite(self) -> None:
        from .image_io import atomic_write

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows.values():
            writer.writerow(row)
        with atomic_write(self.path) as tmp:
            Path(tmp).write_text(buf.getvalue(), encoding="utf-8")
        self._torn = False

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for row in self.rows.values():
            out[row["status"]] += 1
        return out


def read_manifest(folder_or_file: str | os.PathLike) -> list[dict]:
    """The rows of a manifest (one per image), for scripts and tests."""
    path = Path(folder_or_file)
    return list(Manifest(path.parent if path.is_file() else path).rows.values())


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


# ----------------------------------------------------------------------------- one run at a time per folder

LOCK_NAME = ".napari-dpn-segment.lock"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when it cannot be told)."""
    try:
        import psutil  # a dependency of distributed; os.kill(pid, 0) would signal the process on Windows

        return psutil.pid_exists(pid)
    except ImportError:
        if os.name == "nt":
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


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
            raise _as_output_error(exc, self.path) from None
        try:
            if not _is_regular(os.fstat(fd)):
                raise OutputError(f"{self.path} is not napari-dpn's lock file; remove it.")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy(self._holder()) from None
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    return self._try_exclusive()
                raise _as_output_error(exc, self.path) from None
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
            if holder and holder.get("host") == _hostname() and not _alive(int(holder.get("pid", 0))):
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # a run that died left it
                return False
            raise self._busy(holder) from None
        except OSError as exc:
            raise _as_output_error(exc, self.path) from None

    def _write_owner(self) -> None:
        import json

        text = json.dumps({"host": _hostname(), "pid": os.getpid(), "started": _now()}).encode()
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, text)
        except OSError as exc:
            self.release()
            raise _as_output_error(exc, self.path) from None

    def _holder(self) -> dict:
        import json

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
            + ("" if holder.get("host") in (None, _hostname()) else f" (delete {self.path} if that run is gone)")
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


def _is_regular(st) -> bool:
    import stat

    return stat.S_ISREG(st.st_mode)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
