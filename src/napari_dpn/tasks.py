"""One image of a ``segment`` run, where it runs (this process or a Dask worker): the model loaded
once per process, the image segmented (``segmentation.segment``), its outputs placed all or none
through the run's records (``recovery``), and its ``Result``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from . import scale as scale_mod
from .big_photographs import max_reduction, read_photograph
from .errors import OutputExistsError, WeightsError
from .files import remove_folder, write_json
from .manifest import join_names
from .models import file_sha256, load_model, resolve_model_path
from .outputs import Maps
from .placement import stage_outputs, write_outputs
from .planning import Job
from .recovery import intent_path, place_and_confirm, receipt_of, resume_job
from .results import Result, Settings, failed_result, make_row, skipped_result
from .segmentation import Segmentation, segment

_LOADED: dict[tuple[str, str], object] = {}


def worker_model(settings: Settings):
    """The run's model, loaded once per process (a worker keeps the last one only)."""
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


def segment_job(job: Job, settings: Settings, run_dir: str | None = None) -> Result:
    """Segment one image and write its outputs; a problem with this image is a row, not an exception.

    Raises only for what stops the whole run: the model cannot be loaded, or the output folder
    cannot be written (a full disk, a read-only folder).
    """
    earlier = receipt_of(job, run_dir) or resume_job(run_dir, job)
    if earlier is not None:  # an earlier attempt finished (or was placing its outputs) when its worker died
        return earlier
    t0 = time.perf_counter()
    if settings.torch_threads and torch.get_num_threads() != settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    loaded = worker_model(settings)
    try:
        photo = read_photograph(job.image, max_reduction(settings.scale))  # a huge one averaged down as read
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
    return finish_job(job, settings, seg, photo.grey, t0, run_dir)


def _done_result(
    job: Job, settings: Settings, seg: Segmentation, maps: Maps, shas: list[str], grey: bool, t0: float, net
) -> Result:
    """The result of an image whose outputs are written (their sha256s ``shas``)."""
    fov_px = int(np.count_nonzero(seg.fov))
    diameter = seg.scale.fov_diameter or scale_mod.fov_diameter(seg.fov)
    row = make_row(
        job,
        settings,
        "done",
        "",
        time.perf_counter() - t0,
        device=seg.prediction.device,
        scale_factor=seg.scale.factor,
        scale_method=seg.scale.method,
        fov_diameter=None if diameter is None else round(float(diameter), 1),
        vessel_density=round(float(np.count_nonzero(maps.vessels)) / fov_px, 5) if fov_px else None,
        outputs=join_names(Path(p).name for p in job.outputs),
        output_sha256=";".join(shas),
    )
    notes = [n for n in (seg.prediction.note, seg.scale.note) if n]
    seconds = seg.prediction.seconds if net is None else net
    return Result(row, job.name, seg.summary(), notes, seg.scale.describe(), grey, seconds)


def finish_job(
    job: Job,
    settings: Settings,
    seg: Segmentation,
    grey: bool,
    t0: float,
    run_dir: str | None = None,
    network_seconds: float | None = None,
) -> Result:
    """Write one segmented image's outputs (``outputs.WRITERS``) and make its row.

    With ``run_dir`` (every run of a ``Cohort``) the outputs are staged there, an intent file
    records what is about to be placed, and once all are in place the intent becomes the
    receipt; a process that dies in between leaves the intent, which ``recovery.resume_job`` completes.
    """
    maps = Maps(seg.probability, seg.mask(), seg.fov)
    if not run_dir:
        try:
            shas = write_outputs(job.outputs, maps, overwrite=job.overwrite, replaceable=job.replaceable)
        except OutputExistsError as exc:  # appeared while the run went on (e.g. saved from napari)
            return skipped_result(job.name, exc, make_row(job, settings, "skipped"))
        return _done_result(job, settings, seg, maps, shas, grey, t0, network_seconds)
    staged = stage_outputs(job.outputs, maps, staging=run_dir)
    try:
        result = _done_result(job, settings, seg, maps, staged.shas, grey, t0, network_seconds)
        record = {
            "job": dataclasses.asdict(job),
            "result": result.to_dict(),
            "stage": str(staged.folder),
            "files": [str(f) for f in staged.files],
            "shas": staged.shas,
        }
        write_json(intent_path(run_dir, job), record)
        return place_and_confirm(job, staged, result, run_dir)
    finally:
        remove_folder(staged.folder)
