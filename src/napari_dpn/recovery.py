"""A run's records and what a dead run left.

A task stages its outputs in the run's private folder (``OUT/.napari-dpn-run-<id>/``), writes an
intent (what it is about to place), places them, and turns the intent into a receipt.  When Dask
runs a task again because its worker died, the retry returns the receipt (nothing is written twice)
or completes the placement the intent describes (nothing is left half placed).  The next run into
the folder does the same for a run that died on this machine (``recover``), but trusts nothing in
the folder it finds: anyone who can write to a shared ``--out`` can plant one.  Only a folder that
holds nothing but what napari-dpn writes, whose every path is an output this layout gives inside
``--out`` (no links, no ``..``), is completed, and only into free names; anything else is left
alone with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OutputExistsError
from .files import hostname, pid_alive, remove_folder, sha256_of
from .manifest import STATUSES, image_key
from .outputs import WRITERS, output_name_pattern, output_paths
from .placement import STAGE_PREFIX, Staged, place_outputs
from .planning import Job
from .results import Result, skipped_result

RUN_PREFIX = ".napari-dpn-run-"


def place_and_confirm(job: Job, staged: Staged, result: Result, run_dir: str, already=()) -> Result:
    """Place ``job``'s staged outputs (its intent written) and turn the intent into the receipt."""
    intent = intent_path(run_dir, job)
    try:
        place_outputs(staged, job.outputs, job.overwrite, job.replaceable, already)
    except OutputExistsError as exc:  # appeared while the run went on (e.g. saved from napari)
        intent.unlink(missing_ok=True)
        return skipped_result(job.name, exc, result.row)
    except BaseException:  # place_outputs undid its part
        intent.unlink(missing_ok=True)
        raise
    os.replace(intent, _receipt(run_dir, job))
    return result


def intent_path(run_dir: str, job: Job) -> Path:
    return Path(run_dir) / f"{job.index}.placing.json"


def _receipt(run_dir: str, job: Job) -> Path:
    return Path(run_dir) / f"{job.index}.done.json"


def _own_record(path: Path, job: Job) -> dict | None:
    """This run's record about ``job`` (an intent, or a receipt: the intent of a placement that
    completed), or None.  A record whose job is not exactly the one this run gave (one put into the
    run's folder by someone else) is never used."""
    try:
        data = _read_json(path)
    except Untrusted:
        return None
    return data if data.get("job") == json.loads(json.dumps(dataclasses.asdict(job))) else None


def receipt_of(job: Job | None, run_dir: str | None) -> Result | None:
    """The result of an earlier attempt at ``job`` in this run that finished (its worker died after)."""
    if not run_dir or job is None:
        return None
    path = _receipt(run_dir, job)
    data = _own_record(path, job) if path.exists() else None
    try:
        return _checked_result(data.get("result"), job) if data else None
    except Untrusted:
        return None


def job_from(data: dict) -> Job:
    """The ``Job`` a record's ``job`` field holds (``dataclasses.asdict`` of it, through JSON)."""
    return Job(
        **{
            **data,
            "outputs": tuple(data["outputs"]),
            "replaceable": tuple(tuple(pair) for pair in data.get("replaceable") or ()),
        }
    )


def resume_job(run_dir: str | None, job: Job | None) -> Result | None:
    """Finish what an attempt at ``job`` (as this run gave it) started and did not finish because
    its process died while moving the outputs into place: the staged outputs still missing are
    placed, those it placed are kept.  None if there is nothing to resume (or the staged files are
    gone: segment again).  The intent must be about exactly ``job`` and name a stage folder of the
    run's own (``_checked_stage``), else it is dropped: it was not written by this run."""
    if not run_dir or job is None:
        return None
    intent = intent_path(run_dir, job)
    if not intent.exists():
        return None
    data = _own_record(intent, job)
    try:
        staged = _checked_stage(data, Path(run_dir), job) if data else None
        result = _checked_result(data.get("result"), job) if data else None
    except Untrusted:
        staged = result = None
    if staged is None or result is None:
        intent.unlink(missing_ok=True)
        return None

    def holds(path: Path, sha: str) -> bool:
        return path.is_file() and not path.is_symlink() and sha256_of(path) == sha

    already = [o for o, sha in zip(job.outputs, staged.shas) if holds(Path(o), sha)]
    if any(o not in already and not f.exists() for o, f in zip(job.outputs, staged.files)):
        intent.unlink()
        return None
    try:
        return place_and_confirm(job, staged, result, run_dir, already)
    finally:
        remove_folder(staged.folder)


# ----------------------------------------------------------------------------- what a dead run left

_RUN_NAME = re.compile(re.escape(RUN_PREFIX) + r"[0-9a-f]{10}")
_STAGE_NAME = re.compile(re.escape(STAGE_PREFIX) + r"[0-9a-f]{12}")
_RECORD_NAME = re.compile(r"(\d{1,9})\.(placing|done)\.json")
# files.atomic_write's temporary files (the outputs and their backups: outputs.output_name_pattern)
_TMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp(\.[A-Za-z]{1,5})?", re.DOTALL)
_JSON_LIMIT = 4 << 20


class Untrusted(Exception):
    """A run folder, or a part of one, that is not what napari-dpn writes; the message says why."""


def _lstat_ours(path: Path, folder: bool = False) -> os.stat_result:
    """lstat of a file (or ``folder``) napari-dpn could have made: no link, the right type, this user's."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise Untrusted(f"{path.name} cannot be read ({exc.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise Untrusted(f"{path.name} is a symbolic link")
    if not (stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)):
        raise Untrusted(f"{path.name} is not a {'folder' if folder else 'plain file'}")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise Untrusted(f"{path.name} belongs to another user (uid {st.st_uid})")
    return st


def _read_json(path: Path) -> dict:
    """A small JSON object from a plain file of ours (never through a link, never a FIFO that blocks)."""
    _lstat_ours(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise Untrusted(f"{path.name} is not a plain file")
            data = f.read(_JSON_LIMIT + 1)
    except OSError as exc:
        raise Untrusted(f"{path.name} cannot be read ({exc.strerror})") from None
    try:
        value = json.loads(data) if len(data) <= _JSON_LIMIT else None
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise Untrusted(f"{path.name} is not a record napari-dpn wrote")
    return value


def _same_folder(path: Path, folder: Path) -> bool:
    return os.path.abspath(path) == os.path.abspath(folder) or (
        path.is_absolute() and os.path.realpath(path) == os.path.realpath(folder)
    )


def _checked_job(data, out: Path, index: int) -> Job:
    """The job a record describes, if it is one this run layout makes: its outputs are the
    names ``segment`` gives its image, in ``out`` itself.  Never ``overwrite`` nor ``replaceable``:
    a recovery places only into free names."""
    if not isinstance(data, dict) or data.get("index") != index:
        raise Untrusted(f"record {index} does not describe image {index}")
    image, outputs = data.get("image"), data.get("outputs")
    if not isinstance(image, str) or not image or "\0" in image:
        raise Untrusted(f"record {index} names no image")
    n = len(WRITERS)
    if not (isinstance(outputs, list) and len(outputs) == n and all(isinstance(o, str) and o for o in outputs)):
        raise Untrusted(f"record {index} does not name {n} outputs")
    if any("\0" in o for o in outputs):
        raise Untrusted(f"record {index} does not name {n} outputs")
    got = [Path(o) for o in outputs]
    suffix = ".tif" if any(w.suffix is None and g.name.endswith(".tif") for w, g in zip(WRITERS, got)) else ".png"
    want = output_paths(image, out, suffix)
    for g, w in zip(got, want):
        if ".." in g.parts:
            raise Untrusted(f"it names an output with '..' in its path ({g})")
        if g.name != w.name or not _same_folder(g.parent, out):
            raise Untrusted(f"it names {g}, which is not an output of {w.name.rsplit('_', 1)[0]} in {out}")
    return Job(index=index, image=image, outputs=tuple(str(w) for w in want))


def _checked_result(data, job: Job) -> Result:
    fields = {f.name for f in dataclasses.fields(Result)}
    row = data.get("row") if isinstance(data, dict) else None
    if (
        not isinstance(row, dict)
        or not set(data) <= fields
        or not all(isinstance(k, str) and (v is None or isinstance(v, (str, int, float))) for k, v in row.items())
        or row.get("status") not in STATUSES
        or row.get("image") != image_key(job.image)
    ):
        raise Untrusted(f"record {job.index} is not a result napari-dpn wrote for {job.name}")
    try:
        return Result(**data)
    except TypeError:
        raise Untrusted(f"record {job.index} is not a result napari-dpn wrote for {job.name}") from None


def _checked_stage(data: dict, folder: Path, job: Job) -> Staged:
    stage, files, shas = data.get("stage"), data.get("files"), data.get("shas")
    if not isinstance(stage, str) or ".." in Path(stage).parts:
        raise Untrusted(f"record {job.index} names a stage folder outside it ({stage})")
    where = Path(stage)
    if not _same_folder(where.parent, folder) or not _STAGE_NAME.fullmatch(where.name):
        raise Untrusted(f"record {job.index} names a stage folder that is not one napari-dpn made in it ({stage})")
    where = folder / where.name
    if os.path.lexists(where):
        _lstat_ours(where, folder=True)
    want = [where / Path(o).name for o in job.outputs]
    if not (
        isinstance(files, list)
        and all(isinstance(f, str) and ".." not in Path(f).parts and _same_folder(Path(f).parent, where) for f in files)
        and [Path(f).name for f in files] == [w.name for w in want]
    ):
        raise Untrusted(f"record {job.index} names staged files that are not its outputs")
    if not (
        isinstance(shas, list)
        and len(shas) == len(want)
        and all(isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in shas)
    ):
        raise Untrusted(f"record {job.index} holds no sha256s")
    for f in want:
        if os.path.lexists(f):
            _lstat_ours(f)  # a plain file of this user, never a link that would be placed as an output
    return Staged(where, want, list(shas))


@dataclass
class _DeadRun:
    """A dead run's folder, checked: everything in it is something napari-dpn writes."""

    folder: Path
    intents: list[tuple[Job, Staged, Result]] = field(default_factory=list)
    receipts: list[Result] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # to remove: files first, then folders
    folders: list[Path] = field(default_factory=list)


def _inspect(folder: Path, out: Path) -> _DeadRun:
    """Check a dead run's folder all through before anything in it is used (Untrusted: why not)."""
    run = _DeadRun(folder)
    _lstat_ours(folder, folder=True)
    records, outputs = {}, output_name_pattern()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path, name = Path(entry.path), entry.name
        if _STAGE_NAME.fullmatch(name):
            _lstat_ours(path, folder=True)
            for inner in os.scandir(path):
                if not (outputs.fullmatch(inner.name) or _TMP_NAME.fullmatch(inner.name)):
                    raise Untrusted(f"its stage folder holds {inner.name}, which napari-dpn does not write")
                _lstat_ours(Path(inner.path))
                run.files.append(Path(inner.path))
            run.folders.append(path)
            continue
        _lstat_ours(path)
        match = _RECORD_NAME.fullmatch(name)
        if match:
            records[name] = (int(match.group(1)), match.group(2))
        elif name != "owner.json" and not _TMP_NAME.fullmatch(name):
            raise Untrusted(f"it holds {name}, which napari-dpn does not write")
        run.files.append(path)
    for name, (index, kind) in records.items():
        data = _read_json(folder / name)
        job = _checked_job(data.get("job"), out, index)
        result = _checked_result(data.get("result"), job)
        if kind == "done":
            run.receipts.append(result)
        else:
            run.intents.append((job, _checked_stage(data, folder, job), result))
    run.folders.append(folder)
    return run


def _complete(job: Job, staged: Staged, result: Result) -> tuple[Result | None, str | None]:
    """Finish placing what a dead run began: free names only; what it placed is never removed (it
    cannot be told apart from a file someone else made).  (result or None, a line or None)."""
    outputs = [Path(o) for o in job.outputs]

    def holds(path: Path, sha: str) -> bool:
        return path.is_file() and not path.is_symlink() and sha256_of(path) == sha

    already = [o for o, sha in zip(outputs, staged.shas) if holds(o, sha)]
    lacking = [o for o, f in zip(outputs, staged.files) if o not in already and not f.is_file()]
    if lacking:
        if not already:
            return None, None  # nothing was placed: this run segments it again
        return None, (
            f"{job.name}: a run that died left only some of its outputs ({', '.join(o.name for o in already)}); "
            "they were left as they are (--overwrite segments it again)"
        )
    try:
        place_outputs(staged, outputs, already=already, undo_already=False)
    except OutputExistsError as exc:
        return skipped_result(job.name, exc, result.row), (
            f"{job.name}: a run that died left its outputs incomplete, and {exc} They were left as they are."
        )
    return result, None


def dead_runs(out: Path, keep: Path | None = None) -> tuple[list[Path], list[str]]:
    """(folders of earlier runs into ``out`` whose process died on this machine, lines about run
    folders that are not what napari-dpn makes).  A folder being created, or one of a run on
    another machine or still running, is left alone without a word."""
    found, notes = [], []
    for entry in sorted(os.scandir(out), key=lambda e: e.name):
        folder = Path(entry.path)
        if not entry.name.startswith(RUN_PREFIX) or folder == keep:
            continue
        if entry.is_symlink() or not entry.is_dir(follow_symlinks=False) or not _RUN_NAME.fullmatch(entry.name):
            notes.append(_left_alone(folder, "napari-dpn never makes a run folder like it"))
            continue
        if not os.path.lexists(folder / "owner.json"):
            continue  # being created: nothing in it is used
        try:
            owner = _read_json(folder / "owner.json")
            host, pid = owner["host"], int(owner["pid"])
        except Untrusted as exc:
            notes.append(_left_alone(folder, f"it is not all napari-dpn's ({exc})"))
            continue
        except (KeyError, TypeError, ValueError, OverflowError):
            continue  # not one of ours: nothing in it is used
        # This process holds the folder's lock, so a folder it owns is from a run of it that ended.
        if host == hostname() and (pid == os.getpid() or not pid_alive(pid)):
            found.append(folder)
    return found, notes


def _left_alone(folder: Path, why: str) -> str:
    return f"left {folder} alone: {why}; delete it yourself if no run of yours is using it"


def recover(folder: Path, out: Path | None = None) -> tuple[list[Result], list[str]]:
    """What a run that died left in its private folder ``folder`` in ``out``: images whose outputs
    it was placing (the placement is completed into free names) and images it finished (their rows);
    then the folder is removed.  Nothing is done unless every part of the folder is what napari-dpn
    writes (``_inspect``); then one line says why it was left alone.  (results, lines)."""
    folder = Path(os.path.abspath(folder))
    out = Path(os.path.abspath(out)) if out is not None else folder.parent
    try:
        run = _inspect(folder, out)
    except Untrusted as exc:
        return [], [_left_alone(folder, f"it is not all napari-dpn's ({exc})")]
    except Exception as exc:  # noqa: BLE001 - whatever a planted folder holds, it is only reported
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        return [], [_left_alone(folder, f"it is not all napari-dpn's ({why})")]
    results, notes = list(run.receipts), []
    for job, staged, result in run.intents:
        done, note = _complete(job, staged, result)
        results += [done] if done is not None else []
        notes += [note] if note else []
    for path in run.files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    for path in run.folders:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            notes.append(f"could not remove {path} ({exc.strerror}); delete it yourself")
            break
    return results, notes


def record_index(record: Path) -> int | None:
    """The index of the job a record in a run's folder is about (by its file name), or None."""
    match = _RECORD_NAME.fullmatch(record.name)
    return int(match.group(1)) if match else None
