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
The next run into the folder does the same for a run that died on this machine (``recover``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DPNError, InputError, OutputExistsError
from .outputs import (
    Job,
    Manifest,
    Plan,
    Staged,
    image_key,
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
            outputs=";".join(Path(p).name for p in job.outputs),
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


def receipt_of(job: Job, run_dir: str | None) -> Result | None:
    """The result of an earlier attempt at ``job`` in this run that finished (its worker died after)."""
    if not run_dir:
        return None
    path = _receipt(run_dir, job)
    return _read_receipt(path) if path.exists() else None


def _read_receipt(path: Path) -> Result:
    """A receipt is the intent of a placement that completed: {"job", "result", "stage", ...}."""
    return Result(**json.loads(path.read_text())["result"])


def _job_from(data: dict) -> Job:
    return Job(
        **{
            **data,
            "outputs": tuple(data["outputs"]),
            "replaceable": tuple(tuple(pair) for pair in data.get("replaceable") or ()),
        }
    )


def resume_job(run_dir: str | None, job: Job | None = None, intent: Path | None = None) -> Result | None:
    """Finish what an attempt at ``job`` started and did not finish because its process died while
    moving the outputs into place: the staged outputs still missing are placed, those it placed
    are kept.  None if there is nothing to resume (or the staged files are gone: segment again)."""
    if not run_dir:
        return None
    intent = intent or _intent(run_dir, job)
    if not intent.exists():
        return None
    data = json.loads(intent.read_text())
    job = job or _job_from(data["job"])
    staged = Staged(Path(data["stage"]), [Path(f) for f in data["files"]], list(data["shas"]))
    already = [o for o, sha in zip(job.outputs, staged.shas) if Path(o).is_file() and sha256_of(o) == sha]
    if any(o not in already and not f.exists() for o, f in zip(job.outputs, staged.files)):
        intent.unlink()
        return None
    try:
        return _place_and_confirm(job, staged, Result(**data["result"]), run_dir, already)
    finally:
        remove_folder(staged.folder)


def _alive(pid: int) -> bool:
    try:
        import psutil  # a dependency of distributed; os.kill(pid, 0) would signal the process on Windows

        return psutil.pid_exists(pid)
    except ImportError:
        if os.name == "nt":
            return True  # cannot tell: leave the folder alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def stale_runs(out: Path, keep: Path | None = None) -> list[Path]:
    """Private folders of earlier runs into ``out`` whose process died on this machine."""
    import socket

    found = []
    for folder in sorted(out.glob(f"{RUN_PREFIX}*")):
        if folder == keep or not folder.is_dir():
            continue
        try:
            owner = json.loads((folder / "owner.json").read_text())
            if owner.get("host") == socket.gethostname() and not _alive(int(owner["pid"])):
                found.append(folder)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being created, or another machine's: left alone
    return found


def recover(folder: Path) -> list[Result]:
    """What a run that died left in its private folder: images whose outputs it was placing (the
    placement is completed) and images it finished; the folder is removed."""
    skipped = []
    for intent in sorted(folder.glob("*.placing.json")):
        result = resume_job(str(folder), intent=intent)  # done: it is a receipt now
        if result is not None and result.status != "done":
            skipped.append(result)
    results = [_read_receipt(r) for r in sorted(folder.glob("*.done.json"))]
    remove_folder(folder)
    return results + skipped


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
) -> Iterator[Result]:
    import logging

    distributed = _import_distributed()
    cluster = client = None
    try:
        if scheduler:
            try:  # an address (tcp://host:8786), or the JSON file `dask scheduler --scheduler-file` writes
                client = (
                    distributed.Client(scheduler_file=scheduler, timeout="30s")
                    if Path(scheduler).is_file()
                    else distributed.Client(scheduler, timeout="30s")
                )
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
) -> None:
    """InputError (one sentence) for a combination of run options that cannot work."""
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
    run's private folder, also after an error or Ctrl-C.
    """

    def __init__(self, out: str | os.PathLike, settings: Settings, prob_suffix: str = ".png", overwrite: bool = False):
        from .image_io import ensure_output_folder

        self.out = ensure_output_folder(out, "the output folder")
        self.settings = settings
        self.prob_suffix = prob_suffix
        self.overwrite = overwrite
        self.manifest = Manifest(self.out)
        self.run_dir = self.out / f"{RUN_PREFIX}{uuid.uuid4().hex[:10]}"
        self.recovered: list[Result] = []  # what plan() completed of a run that died

    def __enter__(self) -> Cohort:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def plan(self, images: list[Path]) -> Plan:
        """What this run will do; images skipped because an output is in the way get their row now.

        First, what an earlier run into this folder that died on this machine left half done is
        completed and recorded (``recover``)."""
        self.recovered = []
        for folder in stale_runs(self.out, self.run_dir):
            for result in recover(folder):  # the newest rows: a later run would have recovered the folder
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
    ) -> Iterator[Result]:
        """Segment ``jobs`` and yield each result as it finishes, recorded in the manifest.

        No ``workers`` and no ``scheduler``: in this process; in batches of ``batch_size`` images
        (``batch.py``: default 8 on a GPU, decoded by ``loader_workers`` processes), else one image
        after the other (the default on a CPU).
        ``workers``: a local Dask cluster of that many processes, one image at a time each.
        ``scheduler``: an existing Dask cluster whose workers see the same files.
        """
        check_options(workers, scheduler, batch_size, loader_workers)
        if (batch_size or 1) > 1 and self.settings.fusion is not None:
            raise InputError(
                "batches run one pass per image: give --fusion none with --batch-size, or leave "
                "--batch-size out for two-scale fusion"
            )
        if not jobs:
            return
        import socket

        self.run_dir.mkdir(exist_ok=True)
        _write_json(self.run_dir / "owner.json", {"host": socket.gethostname(), "pid": os.getpid()})
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
            results = _dask_results(jobs, settings, self.run_dir, workers, scheduler, retries, on_cluster)
        try:
            for result in results:
                self.manifest.record(result.row)
                yield result
        finally:
            close = getattr(results, "close", None)
            if close:
                close()

    def close(self) -> None:
        remove_folder(self.run_dir)
        self.manifest.close()
