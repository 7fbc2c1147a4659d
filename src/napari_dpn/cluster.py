"""Where the tasks of a ``segment`` run go when they do not run in this process: a local Dask cluster
(``--workers N``) or an existing one (``--scheduler ADDRESS``, probed first so that a wrong address
is one sentence), and the checks of the run options.  Each task is ``tasks.segment_job``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import InputError
from .files import os_error_message
from .planning import Job
from .recovery import RUN_PREFIX
from .results import Result, Settings, make_row
from .tasks import segment_job


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
    try:
        if local and importlib.util.find_spec("bokeh") is None:
            return None
        if not client.scheduler_info().get("services", {}).get("dashboard"):
            return None
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - only a link to print
        return None


def _remote_client(distributed, scheduler: str, timeout: float, out: Path):
    """A client of the existing cluster ``scheduler`` whose every worker can write to ``out``."""
    # An address (tcp://host:8786), or the JSON file `dask scheduler --scheduler-file` writes.
    address = _scheduler_address(scheduler)
    _probe_scheduler(address, timeout)
    try:
        client = distributed.Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({' '.join(str(exc).split())})") from None
    problems = {addr: why for addr, why in client.run(_worker_check, str(out)).items() if why}
    if problems:
        addr, why = next(iter(problems.items()))
        client.close()
        raise InputError(
            f"the Dask worker {addr} cannot write to {out} ({why}); the workers must see the same files as this machine"
        )
    return client


def _local_cluster(distributed, workers: int | None):
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
        return distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )


def _describe(client, scheduler: str | None) -> str:
    n = len(client.scheduler_info().get("workers", {}))
    link = dashboard_link(client, local=scheduler is None)
    return f"Dask {'cluster at ' + scheduler if scheduler else 'local cluster'} with {n} worker(s); " + (
        f"dashboard: {link}" if link else "no dashboard here (pip install 'bokeh>=3.1' for one)"
    )


def _gather(distributed, client, jobs: list[Job], settings: Settings, run_dir: Path, retries: int) -> Iterator[Result]:
    """Submit one task per job and yield each result as it finishes (a worker that died each time
    it tried: the image's row)."""
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
            if fut.status != "error":
                yield fut.result()
            elif isinstance(fut.exception(), distributed.KilledWorker):
                why = "the worker segmenting it died each time it tried (out of memory, or a crash in an image decoder)"
                yield Result(make_row(job, settings, "failed", why), job.name)
            else:
                raise fut.exception()
            fut.release()
    finally:
        client.cancel(list(futures))


def dask_results(
    jobs: list[Job],
    settings: Settings,
    run_dir: Path,
    workers: int | None,
    scheduler: str | None,
    retries: int,
    on_cluster: Callable[[str], None] | None,
    scheduler_timeout: float = SCHEDULER_TIMEOUT,
) -> Iterator[Result]:
    """Segment ``jobs`` on a local cluster of ``workers`` processes or on the cluster ``scheduler``;
    yield each result as it finishes.  Closing the generator cancels the tasks and closes the cluster."""
    distributed = _import_distributed()
    cluster = client = None
    try:
        if scheduler:
            client = _remote_client(distributed, scheduler, scheduler_timeout, run_dir.parent)
        else:
            cluster = _local_cluster(distributed, workers)
            client = distributed.Client(cluster)
        if on_cluster:
            on_cluster(_describe(client, scheduler))
        yield from _gather(distributed, client, jobs, settings, run_dir, retries)
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
