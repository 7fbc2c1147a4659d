"""The manifest: ``napari-dpn-manifest.csv`` in a ``segment`` output folder, one CSV row per image
(its last state), which makes a re-run skip what is done.  Only the process that plans the run writes it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import time
from pathlib import Path

from .errors import OutputError
from .files import atomic_write, os_error_message, utc_now

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
SEP = ";"  # between the names (and the sha256s) of an image's outputs
ERROR_LIMIT = 4000  # characters of a row's error sentence (a field over 128 KB was a csv traceback)


def join_names(names) -> str:
    """The ``outputs`` cell: names joined by ``;``, where a ``%`` or ``;`` inside a name is written
    ``%25`` / ``%3B`` so that the list splits back into the same names (plain names are unchanged)."""
    return SEP.join(str(n).replace("%", "%25").replace(SEP, "%3B") for n in names)


def split_names(text: str) -> list[str]:
    """The names :func:`join_names` joined."""
    decode = {"%25": "%", "%3B": ";", "%3b": ";"}
    return [re.sub(r"%(25|3[Bb])", lambda m: decode[m.group(0)], n) for n in (text or "").split(SEP) if n]


def image_key(path: str | os.PathLike) -> str:
    """How the manifest names an image: its absolute path (the same from any working folder)."""
    return str(Path(path).expanduser().resolve())


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
            row["finished"] = utc_now()
        old = self.rows.get(row["image"])
        if old and all(old.get(k, "") == row[k] for k in MANIFEST_FIELDS if k != "finished"):
            return False
        line = io.StringIO()
        writer = csv.DictWriter(line, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        if not self.path.exists():
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
