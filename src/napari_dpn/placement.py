"""Placing one image's outputs: written completely into a private staging folder, then moved into
place all or none, never replacing a file unless told (``--overwrite``, or an unchanged output of
an earlier run that may be replaced).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import files
from .errors import OutputError, OutputExistsError
from .files import as_output_error, os_error_message, sha256_of
from .outputs import WRITERS, Maps

STAGE_PREFIX = ".napari-dpn-stage-"


@dataclass
class Staged:
    """One image's outputs, written completely into a private staging folder."""

    folder: Path
    files: list[Path]  # in the order of the outputs
    shas: list[str]


def stage_outputs(outputs, maps: Maps, staging: str | os.PathLike | None = None) -> Staged:
    """Write each output (``outputs.WRITERS``, in their order) into a new staging folder in
    ``staging`` (default: the output folder; it must be on the same file system) under its final name."""
    outputs = [Path(p) for p in outputs]
    base = Path(staging) if staging is not None else outputs[0].parent
    folder = base / f"{STAGE_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        folder.mkdir()  # not parents: a task still running after its run ended must not recreate the run folder
    except OSError as exc:
        raise OutputError(os_error_message(exc, outputs[0].parent, "write to")) from None
    try:
        staged = [folder / p.name for p in outputs]
        for writer, path in zip(WRITERS, staged, strict=True):
            writer.write(path, maps)
        return Staged(folder, staged, [sha256_of(f) for f in staged])
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise as_output_error(exc, outputs[0].parent) from None
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
                    files.place_no_clobber(src, dst)
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
            raise as_output_error(exc, outputs[0].parent) from None
        raise


def write_outputs(
    outputs, maps: Maps, overwrite: bool = False, replaceable=(), staging: str | os.PathLike | None = None
) -> list[str]:
    """Write one image's outputs, all or none, and return their sha256s.

    All are first written completely into a private staging folder (``stage_outputs``), then
    moved into place (``place_outputs``: never replacing a file without ``overwrite``, except the
    unchanged ``replaceable`` ones).  OutputExistsError if an output is in the way; OutputError
    (one sentence) for a file-system failure.
    """
    staged = stage_outputs(outputs, maps, staging)
    try:
        place_outputs(staged, outputs, overwrite, replaceable)
        return staged.shas
    finally:
        shutil.rmtree(staged.folder, ignore_errors=True)
