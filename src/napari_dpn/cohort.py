"""Segmenting a cohort: many photographs, one process or a Dask cluster, one manifest.

``Cohort`` is the run: it takes the folder's lock (``lock``), completes what a dead run left
(``recovery``), plans (``planning``), runs each image's task (``tasks.segment_job``: here, in GPU
batches (``batch``) or on Dask (``cluster``)) and records each result in the manifest
(``manifest``).  Only the process that planned the run writes the manifest: one line per finished
image, appended and flushed, then one row per image rewritten atomically at the end.  One run at
a time per folder; run folders that are not all napari-dpn's are left alone with one line
(``Cohort.notes``).
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

from .batch import batch_results
from .cluster import SCHEDULER_TIMEOUT, check_options, dask_results, local_threads
from .devices import select_device
from .errors import DPNError, InputError
from .files import hostname, remove_folder, write_json
from .image_writers import ensure_output_folder
from .lock import FolderLock
from .manifest import Manifest
from .models import file_sha256, read_card, resolve_model_path
from .planning import Job, Plan, plan_outputs
from .recovery import RUN_PREFIX, dead_runs, receipt_of, record_index, recover, resume_job
from .results import Result, Settings, sentence
from .scale import check_fusion
from .tasks import segment_job, worker_model


def settings_for(model: str, fusion="auto", **kwargs) -> Settings:
    """Settings for ``model`` (a name or a path): resolves the weights file, its sha256 and, for
    ``fusion='auto'``, the two-scale factor its card recommends, here (the manifest records it)."""
    path = resolve_model_path(model)
    card = read_card(path)
    return Settings(
        model=str(model),
        model_path=str(path),
        model_sha256=file_sha256(path),
        model_name=card.name,
        fusion=cast("float | None", check_fusion(fusion, card)),  # with a card, 'auto' is its number
        **kwargs,
    )


class Cohort:
    """A segmentation run into one output folder: plan, run (here or on Dask), manifest.

    Use as a context manager; leaving it rewrites the manifest (one row per image) and removes the
    run's private folder, also after an error or Ctrl-C: the images whose outputs were placed by
    then get their rows first (their receipts), and a placement a worker began is completed.
    Only one Cohort at a time holds an output folder (``lock.FolderLock``; a second one is an
    OutputError that says so).
    """

    def __init__(self, out: str | os.PathLike, settings: Settings, prob_suffix: str = ".png", overwrite: bool = False):
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
        write_json(self.run_dir / "owner.json", {"host": hostname(), "pid": os.getpid()})
        results = self._results(
            jobs, workers, scheduler, retries, on_cluster, batch_size, loader_workers, scheduler_timeout
        )
        self._running = results
        try:
            for result in results:
                self.manifest.record(result.row)
                yield result
        finally:
            self._stop()

    def _results(self, jobs, workers, scheduler, retries, on_cluster, batch_size, loader_workers, scheduler_timeout):
        """The results of ``jobs`` as they finish: in this process (in batches on a GPU) or on Dask."""
        run_dir = str(self.run_dir)
        if workers is None and scheduler is None:
            if batch_size is None:
                # Batches on a GPU; two-scale fusion runs image by image (the batch path has one pass).
                cuda = select_device(self.settings.device).type == "cuda"
                batch_size = 8 if cuda and self.settings.fusion is None else 1
            if batch_size > 1:
                return batch_results(jobs, self.settings, run_dir, batch_size, loader_workers)
            return (segment_job(job, self.settings, run_dir) for job in jobs)
        settings = self.settings
        if scheduler is None and settings.torch_threads is None:
            settings = dataclasses.replace(settings, torch_threads=local_threads(workers))
        return dask_results(jobs, settings, self.run_dir, workers, scheduler, retries, on_cluster, scheduler_timeout)

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
            self.notes.append(f"kept {self.run_dir} for the next run into {self.out} to complete ({sentence(exc)})")
            return
        remove_folder(self.run_dir)

    def _job_of(self, record: Path) -> Job | None:
        """The job of this run a record in its folder is about (by its file name), or None."""
        index = record_index(record)
        return None if index is None else self._jobs.get(index)

    def close(self) -> None:
        """End the run: stop its workers, record what they placed, rewrite the manifest, unlock."""
        try:
            self._stop()
            self._settle()
            self.manifest.close()
        finally:
            self._lock.release()
