"""Segmenting a cohort: many photographs, one process or a Dask cluster, one manifest.

One task segments one image through ``segmentation.segment`` and writes its outputs from where it
runs (``outputs.write_outputs``: all three or none, never replacing a file), and returns a
manifest row.  The task is the same in this process (the serial run) and on a Dask worker
(``--workers N``: a local cluster; ``--scheduler ADDRESS``: an existing one).  Each process loads
the model once (``worker_model``, keyed by the weights' sha256).

Only the process that planned the run writes the manifest (``outputs.Manifest``): one line per
finished image, appended and flushed, then one row per image rewritten atomically at the end.

A task stages its three outputs in the run's private folder (``OUT/.napari-dpn-run-<id>/``),
writes an intent (what it is about to place), places them, and turns the intent into a receipt.
When Dask runs a task again because its worker died, the retry returns the receipt (nothing is
written twice) or completes the placement the intent describes (nothing is left half placed).
The next run into the folder does the same for a run that died on this machine (``recover``),
but trusts nothing in the folder it finds: anyone who can write to a shared ``--out`` can plant
one.  Only a folder that holds nothing but what napari-dpn writes, whose every path is an output
this layout gives inside ``--out`` (no links, no ``..``), is completed, and only into free names;
anything else is left alone with one line (``Cohort.notes``).  One run at a time per folder
(``outputs.FolderLock``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DPNError, InputError, OutputExistsError
from .outputs import (
    STAGE_PREFIX,
    STATUSES,
    FolderLock,
    Job,
    Manifest,
    Plan,
    Staged,
    _alive,
    _hostname,
    image_key,
    join_names,
    place_outputs,
    plan_outputs,
    remove_folder,
    sha256_of,
    stage_outputs,
    write_outputs,
)

RUN_PREFIX = ".napari-dpn-run-"


@dataclass(frozen=True)
class Settings:
    """Everything a task needs besides its image, the same for every image of a run (picklable)."""

    model: str  # the name or path the user gave
    model_path: str  # resolved on the planning machine
    model_sha256: str
    model_name: str
    device: str = "auto"  # resolved where the task runs
    threshold: float | None = None
    scale: str | float = "auto"
    field_angle: float | None = None
    fusion: float | None = None  # two-scale factor (segmentation.segment); settings_for reads the card's
    precision: str = "auto"
    torch_threads: int | None = None  # set in each worker process; None: leave as it is

    @property
    def options(self) -> str:
        """What besides the model decides the outputs, as the manifest records it: a re-run with
        other options segments again (like one with another model)."""
        threshold = "card" if self.threshold is None else f"{float(self.threshold):g}"
        angle = "-" if self.field_angle is None else f"{float(self.field_angle):g}"
        fusion = "none" if self.fusion is None else f"{float(self.fusion):g}"
        return f"threshold={threshold} scale={self.scale} field_angle={angle} fusion={fusion}"


def settings_for(model: str, fusion="auto", **kwargs) -> Settings:
    """Settings for ``model`` (a name or a path): resolves the weights file, its sha256 and, for
    ``fusion='auto'``, the two-scale factor its card recommends, here (the manifest records it)."""
    from .models import file_sha256, read_card, resolve_model_path
    from .scale import check_fusion

    path = resolve_model_path(model)
    card = read_card(path)
    return Settings(
        model=str(model),
        model_path=str(path),
        model_sha256=file_sha256(path),
        model_name=card.name,
        fusion=check_fusion(fusion, card),
        **kwargs,
    )


# ----------------------------------------------------------------------------- one model per process

_LOADED: dict[tuple[str, str], object] = {}


def worker_model(settings: Settings):
    """The run's model, loaded once per process (a worker keeps the last one only)."""
    from .errors import WeightsError
    from .models import file_sha256, load_model, resolve_model_path

    key = (settings.model_sha256, str(settings.device))
    if key in _LOADED:
        return _LOADED[key]
    path = Path(settings.model_path)
    if not path.is_file():  # another machine: the shipped or user model of that name there
        path = resolve_model_path(settings.model)
    sha = file_sha256(path)
    if sha != settings.model_sha256:
        raise WeightsError(
            f"the model {path} differs from the one this run was planned with "
            f"(sha256 {sha[:12]} instead of {settings.model_sha256[:12]}); use the same weights everywhere"
        )
    loaded = load_model(path)
    _LOADED.clear()
    _LOADED[key] = loaded
    return loaded


# ----------------------------------------------------------------------------- one image


@dataclass
class Result:
    """What a task returns: its manifest row and what the caller prints or reports."""

    row: dict
    name: str = ""
    summary: dict | None = None  # Segmentation.summary() (the --json report)
    notes: list[str] = field(default_factory=list)
    describe: str = ""  # the scale used, in words
    grey: bool = False
    network_seconds: float | None = None

    @property
    def status(self) -> str:
        return self.row["status"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _row(job: Job, settings: Settings, status: str, error: str = "", seconds: float | None = None, **more) -> dict:
    return {
        "image": image_key(job.image),
        "status": status,
        "error": error,
        "seconds": None if seconds is None else round(seconds, 3),
        "model": settings.model_name,
        "model_sha256": settings.model_sha256,
        "options": settings.options,
        **more,
    }


def _sentence(exc: BaseException) -> str:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return (
            "out of memory while segmenting it; use fewer workers per machine, a smaller --batch-size or --device cpu"
        )
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, DPNError) else f"segmentation failed ({type(exc).__name__}: {text[:300]})"


def failed_result(job: Job, settings: Settings, exc: BaseException, t0: float) -> Result:
    """The row of an image that could not be read or segmented: its one sentence."""
    return Result(_row(job, settings, "failed", _sentence(exc), time.perf_counter() - t0), job.name)


def segment_job(job: Job, settings: Settings, run_dir: str | None = None) -> Result:
    """Segment one image and write its outputs; a problem with this image is a row, not an exception.

    Raises only for what stops the whole run: the model cannot be loaded, or the output folder
    cannot be written (a full disk, a read-only folder).
    """
    from .image_io import max_reduction, read_photograph
    from .segmentation import segment

    earlier = receipt_of(job, run_dir) or resume_job(run_dir, job)
    if earlier is not None:  # an earlier attempt finished (or was placing its outputs) when its worker died
        return earlier
    t0 = time.perf_counter()
    if settings.torch_threads:
        import torch

        if torch.get_num_threads() != settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
    loaded = worker_model(settings)
    try:
        photo = read_photograph(job.image, max_reduction(settings.scale))  # a huge one averaged down as read
        grey = photo.grey
        seg = segment(
            loaded,
            photo.rgb,
            shape=photo.shape,
            threshold=settings.threshold,
            scale=settings.scale,
            field_angle=settings.field_angle,
            fusion=settings.fusion,
            device=settings.device,
            precision=settings.precision,
        )
    except Exception as exc:  # noqa: BLE001 - one bad photograph must not stop a cohort
        return failed_result(job, settings, exc, t0)
    return finish_job(job, settings, seg, grey, t0, run_dir)


def finish_job(
    job: Job,
    settings: Settings,
    seg,
    grey: bool,
    t0: float,
    run_dir: str | None = None,
    network_seconds: float | None = None,
) -> Result:
    """Write one segmented image's outputs and make its row.

    With ``run_dir`` (every run of a ``Cohort``) the outputs are staged there, an intent file
    records what is about to be placed, and once all three are in place the intent becomes the
    receipt; a process that dies in between leaves the intent, which ``resume_job`` completes.
    """
    import numpy as np

    from . import scale as scale_mod

    mask = seg.mask()

    def result_for(shas: list[str]) -> Result:
        fov_px = int(seg.fov.sum())
        diameter = seg.scale.fov_diameter or scale_mod.fov_diameter(seg.fov)
        row = _row(
            job,
            settings,
            "done",
            "",
            time.perf_counter() - t0,
            device=seg.prediction.device,
            scale_factor=seg.scale.factor,
            scale_method=seg.scale.method,
            fov_diameter=None if diameter is None else round(float(diameter), 1),
            vessel_density=round(float(np.count_nonzero(mask)) / fov_px, 5) if fov_px else None,
            outputs=join_names(Path(p).name for p in job.outputs),
            output_sha256=";".join(shas),
        )
        return Result(
            row,
            job.name,
            seg.summary(),
            [n for n in (seg.prediction.note, seg.scale.note) if n],
            seg.scale.describe(),
            grey,
            seg.prediction.seconds if network_seconds is None else network_seconds,
        )

    if not run_dir:
        try:
            shas = write_outputs(
                job.outputs, seg.probability, mask, seg.fov, overwrite=job.overwrite, replaceable=job.replaceable
            )
        except OutputExistsError as exc:  # appeared while the run went on (e.g. saved from napari)
            return _skipped(job.name, exc, _row(job, settings, "skipped"))
        return result_for(shas)
    staged = stage_outputs(job.outputs, seg.probability, mask, seg.fov, staging=run_dir)
    try:
        result = result_for(staged.shas)
        _write_json(
            _intent(run_dir, job),
            {
                "job": dataclasses.asdict(job),
                "result": result.to_dict(),
                "stage": str(staged.folder),
                "files": [str(f) for f in staged.files],
                "shas": staged.shas,
            },
        )
        return _place_and_confirm(job, staged, result, run_dir)
    finally:
        remove_folder(staged.folder)


def _write_json(path: Path, data: dict) -> None:
    from .image_io import atomic_write

    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(data))


def _skipped(name: str, exc: BaseException, like: dict) -> Result:
    row = {k: like.get(k) for k in ("image", "model", "model_sha256", "options")}
    return Result({**row, "status": "skipped", "error": str(exc), "seconds": like.get("seconds")}, name)


def _place_and_confirm(job: Job, staged: Staged, result: Result, run_dir: str, already=()) -> Result:
    intent = _intent(run_dir, job)
    try:
        place_outputs(staged, job.outputs, job.overwrite, job.replaceable, already)
    except OutputExistsError as exc:  # appeared while the run went on (e.g. saved from napari)
        intent.unlink(missing_ok=True)
        return _skipped(job.name, exc, result.row)
    except BaseException:  # place_outputs undid its part
        intent.unlink(missing_ok=True)
        raise
    os.replace(intent, _receipt(run_dir, job))
    return result


def _intent(run_dir: str, job: Job) -> Path:
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


def receipt_of(job: Job, run_dir: str | None) -> Result | None:
    """The result of an earlier attempt at ``job`` in this run that finished (its worker died after)."""
    if not run_dir or job is None:
        return None
    path = _receipt(run_dir, job)
    data = _own_record(path, job) if path.exists() else None
    try:
        return _checked_result(data.get("result"), job) if data else None
    except Untrusted:
        return None


def _job_from(data: dict) -> Job:
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
    intent = _intent(run_dir, job)
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
        return _place_and_confirm(job, staged, result, run_dir, already)
    finally:
        remove_folder(staged.folder)


# ----------------------------------------------------------------------------- what a dead run left

_RUN_NAME = re.compile(re.escape(RUN_PREFIX) + r"[0-9a-f]{10}")
_STAGE_NAME = re.compile(re.escape(STAGE_PREFIX) + r"[0-9a-f]{12}")
_RECORD_NAME = re.compile(r"(\d{1,9})\.(placing|done)\.json")
# image_io.atomic_write's temporary files; the outputs (and their backups) a stage folder holds (any name)
_TMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp(\.[A-Za-z]{1,5})?", re.DOTALL)
_OUTPUT_NAME = re.compile(r".+_(probability\.png|probability\.tif|vessels\.png|fov\.png)(\.previous)?", re.DOTALL)
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
    """The job a record describes, if it is one this run layout makes: its three outputs are the
    names ``segment`` gives its image, in ``out`` itself.  Never ``overwrite`` nor ``replaceable``:
    a recovery places only into free names."""
    from .annotations import output_paths

    if not isinstance(data, dict) or data.get("index") != index:
        raise Untrusted(f"record {index} does not describe image {index}")
    image, outputs = data.get("image"), data.get("outputs")
    if not isinstance(image, str) or not image or "\0" in image:
        raise Untrusted(f"record {index} names no image")
    if not (isinstance(outputs, list) and len(outputs) == 3 and all(isinstance(o, str) and o for o in outputs)):
        raise Untrusted(f"record {index} does not name three outputs")
    if any("\0" in o for o in outputs):
        raise Untrusted(f"record {index} does not name three outputs")
    got = [Path(o) for o in outputs]
    suffix = ".tif" if got[0].name.endswith("_probability.tif") else ".png"
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
        and len(shas) == 3
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
    records = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path, name = Path(entry.path), entry.name
        if _STAGE_NAME.fullmatch(name):
            _lstat_ours(path, folder=True)
            for inner in os.scandir(path):
                if not (_OUTPUT_NAME.fullmatch(inner.name) or _TMP_NAME.fullmatch(inner.name)):
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
        return _skipped(job.name, exc, result.row), (
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
        if host == _hostname() and (pid == os.getpid() or not _alive(pid)):
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


# ----------------------------------------------------------------------------- where the tasks run


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise InputError(
            "--workers and --scheduler need Dask's distributed scheduler; "
            "install it with: pip install 'dask[distributed]'"
        ) from None
    return distributed


SCHEDULER_TIMEOUT = 10.0  # seconds for --scheduler to answer as a Dask scheduler (--scheduler-timeout)


def _scheduler_address(scheduler: str) -> str:
    """The address in ``scheduler``: itself, or the one in the scheduler file it names (read here,
    so that an empty or half-written file is a sentence, not Dask's AssertionError)."""
    path = Path(scheduler).expanduser()
    if "://" in scheduler or not (path.is_file() or path.suffix.lower() == ".json"):
        return scheduler
    if not path.exists():
        raise InputError(f"there is no scheduler file {path}; give the file the scheduler writes, or its address")
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError as exc:
        from .image_io import os_error_message

        raise InputError(os_error_message(exc, path, "read the scheduler file")) from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    address = data.get("address") if isinstance(data, dict) else None
    if not isinstance(address, str) or not address:
        state = "empty" if not text.strip() else "not a complete Dask scheduler file (no address in it)"
        raise InputError(
            f"the scheduler file {path} is {state}; if the scheduler is still starting, wait until "
            "it has written the file and run again"
        )
    return address


def _probe_scheduler(address: str, timeout: float) -> None:
    """InputError (one sentence) unless a Dask scheduler answers at ``address`` within ``timeout``
    seconds: Dask's own connection waits for ever on a port that accepts and never answers (an
    HTTP server), whatever its timeout says."""
    import asyncio
    import threading

    async def identity():
        from distributed.comm import connect
        from distributed.security import Security

        # The TLS settings a Client takes from the Dask configuration, so a secured cluster answers too.
        comm = await connect(address, timeout=timeout, **Security().get_connection_args("client"))
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    outcome: dict = {}

    def ask():
        try:
            outcome["identity"] = asyncio.run(asyncio.wait_for(identity(), timeout))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as a sentence
            outcome["error"] = exc

    thread = threading.Thread(target=ask, name="napari-dpn-scheduler-probe", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    error = outcome.get("error")
    if thread.is_alive() or isinstance(error, TimeoutError):
        raise InputError(
            f"no Dask scheduler answered at {address} within {timeout:g} s; check that it is a Dask "
            "scheduler's address and that the scheduler runs (--scheduler-timeout waits longer)"
        )
    if error is not None:
        text = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"cannot reach the Dask scheduler at {address} ({text})")
    answer = outcome.get("identity")
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        raise InputError(f"{address} answered, but not as a Dask scheduler; give the scheduler's address")


def _worker_check(folder: str) -> str | None:
    """Run on each worker: can it create files in the output folder?  None, or why not."""
    probe = Path(folder) / f".napari-dpn-worker-check.{uuid.uuid4().hex[:8]}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def dashboard_link(client, local: bool = True) -> str | None:
    """The Dask dashboard's address, None when it cannot show one (its pages need bokeh where the
    scheduler runs: checked here for a ``local`` cluster)."""
    import importlib.util

    try:
        if local and importlib.util.find_spec("bokeh") is None:
            return None
        if not client.scheduler_info().get("services", {}).get("dashboard"):
            return None
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - only a link to print
        return None


def _dask_results(
    jobs: list[Job],
    settings: Settings,
    run_dir: Path,
    workers: int | None,
    scheduler: str | None,
    retries: int,
    on_cluster: Callable[[str], None] | None,
    scheduler_timeout: float = SCHEDULER_TIMEOUT,
) -> Iterator[Result]:
    import logging

    distributed = _import_distributed()
    cluster = client = None
    try:
        if scheduler:
            # An address (tcp://host:8786), or the JSON file `dask scheduler --scheduler-file` writes.
            address = _scheduler_address(scheduler)
            _probe_scheduler(address, scheduler_timeout)
            try:
                client = distributed.Client(address, timeout=f"{scheduler_timeout}s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise InputError(
                    f"cannot reach the Dask scheduler at {scheduler} ({' '.join(str(exc).split())})"
                ) from None
            problems = {addr: why for addr, why in client.run(_worker_check, str(run_dir.parent)).items() if why}
            if problems:
                addr, why = next(iter(problems.items()))
                raise InputError(
                    f"the Dask worker {addr} cannot write to {run_dir.parent} ({why}); "
                    "the workers must see the same files as this machine"
                )
        else:
            import dask

            # Dask's defaults cost a segmentation worker half its speed (measured, docs/cohort.md): a fixed
            # MALLOC_TRIM_THRESHOLD_ stops glibc from keeping the large activation buffers (every forward
            # pass page-faults them in again), and the statistical profiler takes the GIL every 10 ms.
            with dask.config.set(
                {
                    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                    "distributed.worker.profile.enabled": False,
                }
            ):
                cluster = distributed.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                    silence_logs=logging.ERROR,
                )
            client = distributed.Client(cluster)
        if on_cluster:
            n = len(client.scheduler_info().get("workers", {}))
            link = dashboard_link(client, local=scheduler is None)
            on_cluster(
                f"Dask {'cluster at ' + scheduler if scheduler else 'local cluster'} with {n} worker(s); "
                + (f"dashboard: {link}" if link else "no dashboard here (pip install 'bokeh>=3.1' for one)")
            )
        tag = run_dir.name[len(RUN_PREFIX) :]
        futures = {
            client.submit(
                segment_job,
                job,
                settings,
                str(run_dir),
                key=f"napari-dpn-segment-{tag}-{job.index}",
                retries=retries,
                pure=False,
            ): job
            for job in jobs
        }
        try:
            for fut in distributed.as_completed(futures):
                job = futures[fut]
                if fut.status == "error":
                    exc = fut.exception()
                    if not isinstance(exc, distributed.KilledWorker):
                        raise exc
                    yield Result(
                        _row(
                            job,
                            settings,
                            "failed",
                            "the worker segmenting it died each time it tried "
                            "(out of memory, or a crash in an image decoder)",
                        ),
                        job.name,
                    )
                else:
                    yield fut.result()
                fut.release()
        finally:
            client.cancel(list(futures))
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def check_options(
    workers: int | None = None,
    scheduler: str | None = None,
    batch_size: int | None = None,
    loader_workers: int | None = None,
    scheduler_timeout: float = SCHEDULER_TIMEOUT,
) -> None:
    """InputError (one sentence) for a combination of run options that cannot work."""
    import math

    if not (math.isfinite(scheduler_timeout) and scheduler_timeout > 0):
        raise InputError(f"--scheduler-timeout must be a number of seconds above 0, got {scheduler_timeout}")
    for flag, value in (("--workers", workers), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be 1 or more, got {value}")
    if loader_workers is not None and loader_workers < 0:
        raise InputError(f"--loader-workers must be 0 or more, got {loader_workers}")
    if workers is not None and scheduler:
        raise InputError("give --workers (a cluster on this machine) or --scheduler (an existing one), not both")
    if (workers is not None or scheduler) and (batch_size or 1) > 1:
        raise InputError(
            "--batch-size is for one process (a GPU); with --workers or --scheduler each "
            "worker segments one image at a time"
        )


def local_threads(workers: int) -> int:
    """Torch threads per worker of a local cluster: OMP_NUM_THREADS if this process was given one
    (Dask sets it to 1 in every worker), else the CPUs shared out among the workers."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, (os.cpu_count() or 1) // workers)


class Cohort:
    """A segmentation run into one output folder: plan, run (here or on Dask), manifest.

    Use as a context manager; leaving it rewrites the manifest (one row per image) and removes the
    run's private folder, also after an error or Ctrl-C: the images whose outputs were placed by
    then get their rows first (their receipts), and a placement a worker began is completed.
    Only one Cohort at a time holds an output folder (``outputs.FolderLock``; a second one is an
    OutputError that says so).
    """

    def __init__(self, out: str | os.PathLike, settings: Settings, prob_suffix: str = ".png", overwrite: bool = False):
        from .image_io import ensure_output_folder

        # Absolute: what a run records (its intents) must name the same files from any folder.
        self.out = Path(os.path.abspath(ensure_output_folder(out, "the output folder")))
        self.settings = settings
        self.prob_suffix = prob_suffix
        self.overwrite = overwrite
        self._lock = FolderLock(self.out).acquire()
        try:
            self.manifest = Manifest(self.out)
        except BaseException:
            self._lock.release()
            raise
        self.run_dir = self.out / f"{RUN_PREFIX}{uuid.uuid4().hex[:10]}"
        self.recovered: list[Result] = []  # what plan() completed of a run that died
        self.notes: list[str] = []  # lines for the user: run folders left alone, recoveries left incomplete
        self._running = None  # the results of run() while they are being produced
        self._jobs: dict[int, Job] = {}  # the jobs of run(), by index: what its records may describe

    def __enter__(self) -> Cohort:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def plan(self, images: list[Path]) -> Plan:
        """What this run will do; images skipped because an output is in the way get their row now.

        First, what an earlier run into this folder that died on this machine left half done is
        completed and recorded (``recover``); a run folder that is not all napari-dpn's is left
        alone, with a line in ``notes``."""
        self.recovered = []
        folders, notes = dead_runs(self.out, self.run_dir)
        self.notes += notes
        for folder in folders:
            results, notes = recover(folder, self.out)
            self.notes += notes
            for result in results:  # the newest rows: a later run would have recovered the folder
                self.manifest.record(result.row)
                self.recovered.append(result)
        s = self.settings
        plan = plan_outputs(
            images, self.out, self.prob_suffix, self.overwrite, self.manifest, s.model_sha256, s.options
        )
        for row in plan.skipped:
            self.manifest.record({**row, "model": s.model_name, "model_sha256": s.model_sha256, "options": s.options})
        return plan

    def load(self):
        """The model in this process (checks the weights before any worker starts; its warnings)."""
        return worker_model(self.settings)

    def run(
        self,
        jobs: list[Job],
        workers: int | None = None,
        scheduler: str | None = None,
        retries: int = 1,
        on_cluster: Callable[[str], None] | None = None,
        batch_size: int | None = None,
        loader_workers: int | None = None,
        scheduler_timeout: float = SCHEDULER_TIMEOUT,
    ) -> Iterator[Result]:
        """Segment ``jobs`` and yield each result as it finishes, recorded in the manifest.

        No ``workers`` and no ``scheduler``: in this process; in batches of ``batch_size`` images
        (``batch.py``: default 8 on a GPU, decoded by ``loader_workers`` processes), else one image
        after the other (the default on a CPU).
        ``workers``: a local Dask cluster of that many processes, one image at a time each.
        ``scheduler``: an existing Dask cluster whose workers see the same files (an address or a
        scheduler file; ``scheduler_timeout`` seconds to answer as a Dask scheduler).
        """
        check_options(workers, scheduler, batch_size, loader_workers, scheduler_timeout)
        if (batch_size or 1) > 1 and self.settings.fusion is not None:
            raise InputError(
                "batches run one pass per image: give --fusion none with --batch-size, or leave "
                "--batch-size out for two-scale fusion"
            )
        if not jobs:
            return
        self._jobs = {job.index: job for job in jobs}
        self.run_dir.mkdir()
        _write_json(self.run_dir / "owner.json", {"host": _hostname(), "pid": os.getpid()})
        if workers is None and scheduler is None:
            if batch_size is None:
                from .devices import select_device

                # Batches on a GPU; two-scale fusion runs image by image (the batch path has one pass).
                cuda = select_device(self.settings.device).type == "cuda"
                batch_size = 8 if cuda and self.settings.fusion is None else 1
            if batch_size > 1:
                from .batch import batch_results

                results = batch_results(jobs, self.settings, str(self.run_dir), batch_size, loader_workers)
            else:
                results = (segment_job(job, self.settings, str(self.run_dir)) for job in jobs)
        else:
            settings = self.settings
            if scheduler is None and settings.torch_threads is None:
                settings = dataclasses.replace(settings, torch_threads=local_threads(workers))
            results = _dask_results(
                jobs, settings, self.run_dir, workers, scheduler, retries, on_cluster, scheduler_timeout
            )
        self._running = results
        try:
            for result in results:
                self.manifest.record(result.row)
                yield result
        finally:
            self._stop()

    def _stop(self) -> None:
        """Stop producing results (closes a Dask cluster of this run, the batch pipeline)."""
        results, self._running = self._running, None
        close = getattr(results, "close", None)
        if close:
            close()

    def _settle(self) -> None:
        """Before the run's folder goes: the rows of images whose outputs were placed but whose
        results never reached this process (Ctrl-C while they were on their way), and the
        placements a worker began and did not finish.  On a failure (a full disk) the folder is
        kept: the next run into ``out`` completes it (``recover``)."""
        if not self.run_dir.is_dir():
            return
        run_dir = str(self.run_dir)
        try:
            for intent in sorted(self.run_dir.glob("*.placing.json")):
                resume_job(run_dir, self._job_of(intent))  # a receipt now, or gone
            for receipt in sorted(self.run_dir.glob("*.done.json")):
                result = receipt_of(self._job_of(receipt), run_dir)
                if result is not None:
                    self.manifest.record(result.row)
        except (DPNError, OSError, ValueError, KeyError, TypeError) as exc:
            self.notes.append(f"kept {self.run_dir} for the next run into {self.out} to complete ({_sentence(exc)})")
            return
        remove_folder(self.run_dir)

    def _job_of(self, record: Path) -> Job | None:
        """The job of this run a record in its folder is about (by its file name), or None."""
        match = _RECORD_NAME.fullmatch(record.name)
        return self._jobs.get(int(match.group(1))) if match else None

    def close(self) -> None:
        """End the run: stop its workers, record what they placed, rewrite the manifest, unlock."""
        try:
            self._stop()
            self._settle()
            self.manifest.close()
        finally:
            self._lock.release()
