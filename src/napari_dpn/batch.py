"""Many photographs through one GPU in batches (``segment --batch-size``; the default on CUDA).

The per-image pipeline (``segmentation.segment``) split in three stages that overlap:

1. **decode** in ``torch.utils.data.DataLoader`` worker processes: read, FOV, scale, resample to the
   working scale, normalise as the model card says (everything before the network, on the CPUs);
2. **network** in this process: images of one size are grouped into batches, copied from pinned
   memory with ``non_blocking`` copies, run in channels_last under fp16 autocast (bf16 on a CPU
   with native bf16, as ``inference.predict`` chooses), and copied back into pinned memory;
3. **map back and write** in a thread pool: resample the probability to the photograph's pixels,
   threshold inside the FOV, write the outputs (``tasks.finish_job``: all or none, never
   replacing a file) and make the manifest row.

Stages 1 and 3 are ``segmentation.prepare`` and ``segmentation.finish``, as ``segment`` runs them.
A photograph that needs the network to choose its scale (``scale='calibre'``), or that is too large
for one pass (tiles), goes through ``tasks.segment_job`` unchanged; a batch that
runs out of GPU memory is retried one image at a time the same way.  Each image's probability is
what ``segment`` computes, up to the rounding of another batch size.  Runs on the CPU too (that is
how the tests check it), where it is not faster than one image at a time.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from . import segmentation
from .big_photographs import header_shape, max_reduction, reduction_for
from .devices import resolve_precision, select_device
from .image_io import is_greyscale, read_image
from .inference import Prediction, max_pixels_for
from .model import flush_denormals_
from .planning import Job
from .preprocess import normalise
from .results import Result, Settings, failed_result
from .scale import resample_image, resampled_shape
from .tasks import finish_job, segment_job, worker_model

DEFAULT_BATCH = 8  # DRIVE-sized images per batch on a GPU (the benchmark's sweet spot is larger: see docs)
MAX_WRITERS = 8


class DecodedImages(torch.utils.data.Dataset):
    """Item ``i``: job ``i`` read and prepared for the network (``segmentation.prepare``), or why it
    could not be (picklable: it travels to the DataLoader's worker processes)."""

    def __init__(self, jobs: list[Job], card, settings: Settings):
        self.jobs, self.card, self.settings = jobs, card, settings

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict:
        t0 = time.perf_counter()
        s = self.settings
        try:
            if reduction_for(header_shape(self.jobs[i].image), max_reduction(s.scale)) > 1:
                return {"index": i, "single": True}  # a huge photograph: the per-image path reads it reduced
            raw = read_image(self.jobs[i].image)
            prep = segmentation.prepare(self.card, raw, scale=s.scale, field_angle=s.field_angle)
            if prep.scale is None:  # the calibre estimate runs the network: the per-image path does it
                return {"index": i, "single": True}
            rgb, sc = prep.rgb, prep.scale
            work = rgb if sc.factor == 1.0 else resample_image(rgb, resampled_shape(rgb.shape, sc.factor))
            x = torch.from_numpy(normalise(work, self.card.input))
        except Exception as exc:  # noqa: BLE001 - becomes this image's manifest row
            return {"index": i, "error": exc, "t0": t0}
        return {
            "index": i,
            "x": x,
            "fov": prep.fov,
            "shape": rgb.shape[:2],
            "scale": sc,
            "grey": bool(is_greyscale(raw)),
            "decode_seconds": time.perf_counter() - t0,
        }


def _identity(items):
    return items


def _init_loader_worker(_):
    torch.set_num_threads(1)


def default_loader_workers() -> int:
    """Decode processes: the CPUs less one for this process, at most 16."""
    return max(0, min(16, (os.cpu_count() or 1) - 1))


def autocast_for(device: torch.device, precision: str):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def forward_batch(model: torch.nn.Module, xs: list[torch.Tensor], device: torch.device, precision: str) -> np.ndarray:
    """Probabilities (n, h, w) float32 for n normalised (3, h, w) tensors of one size."""
    cuda = device.type == "cuda"
    batch = torch.stack([x.to(device, non_blocking=cuda) for x in xs]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_for(device, precision):
        y = model(batch)[:, 0].float()
    out = torch.empty(y.shape, dtype=torch.float32, pin_memory=cuda)
    out.copy_(y, non_blocking=cuda)
    if cuda:
        torch.cuda.current_stream(device).synchronize()
    return out.numpy()


def _post(
    job: Job, item: dict, prob: np.ndarray, settings: Settings, how: dict, run_dir: str | None, t0: float
) -> Result:
    """Stage 3 for one image (``segmentation.finish``): the probability in the photograph's pixels,
    its outputs and its row.  ``how``: threshold, device, precision and network seconds per image."""
    try:
        full = segmentation.to_photo_pixels(prob, tuple(item["shape"]))
        pred = Prediction(probability=prob, device=how["device"], seconds=how["seconds"], precision=how["precision"])
        seg = segmentation.finish(full, np.asarray(item["fov"], bool), item["scale"], pred, how["threshold"])
    except Exception as exc:  # noqa: BLE001 - this image's row, as in tasks.segment_job
        return failed_result(job, settings, exc, t0)
    return finish_job(job, settings, seg, item["grey"], t0, run_dir, network_seconds=how["seconds"])


def _loader(jobs: list[Job], card, settings: Settings, batch_size: int, loader_workers, cuda: bool):
    """Stage 1 in ``loader_workers`` processes (default: ``default_loader_workers``), in job order."""
    n = default_loader_workers() if loader_workers is None else max(0, int(loader_workers))
    return torch.utils.data.DataLoader(
        DecodedImages(jobs, card, settings),
        batch_size=None,
        shuffle=False,
        num_workers=n,
        collate_fn=_identity,
        pin_memory=cuda,
        worker_init_fn=_init_loader_worker,
        prefetch_factor=max(2, 2 * batch_size // max(1, n)) if n else None,
    )


class _Batches:
    """Stage 2 in this process, stage 3 in a thread pool: ``run`` one batch of items of one size,
    ``finished`` the results written so far (in order)."""

    def __init__(self, jobs: list[Job], settings: Settings, run_dir: str | None, writers: int | None):
        self.jobs, self.settings, self.run_dir = jobs, settings, run_dir
        loaded = worker_model(settings)
        self.card = loaded.card
        self.device = device = select_device(settings.device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.model = loaded.model.to(device).to(memory_format=torch.channels_last).eval()
        flush_denormals_(self.model)
        self.precision = "fp16" if device.type == "cuda" else resolve_precision(settings.precision, device)
        self.threshold = float(loaded.card.threshold if settings.threshold is None else settings.threshold)
        self.limit = max_pixels_for(device)
        self.pool = ThreadPoolExecutor(
            max_workers=writers or min(MAX_WRITERS, max(2, os.cpu_count() or 1)), thread_name_prefix="napari-dpn-write"
        )
        self.pending: deque[Future] = deque()

    def run(self, items: list[dict]) -> Iterator[Result]:
        t0 = time.perf_counter()
        try:
            probs = forward_batch(self.model, [it["x"] for it in items], self.device, self.precision)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            for it in items:  # one at a time, with tiles and the CPU fallback of inference.predict
                yield segment_job(self.jobs[it["index"]], self.settings, self.run_dir)
            return
        how = {
            "threshold": self.threshold,
            "device": str(self.device),
            "precision": self.precision,
            "seconds": (time.perf_counter() - t0) / len(items),
        }
        for it, prob in zip(items, probs):
            job = self.jobs[it["index"]]
            start = t0 - it["decode_seconds"]
            self.pending.append(self.pool.submit(_post, job, it, prob, self.settings, how, self.run_dir, start))

    def finished(self, block: bool = False) -> Iterator[Result]:
        while self.pending and (block or self.pending[0].done()):
            yield self.pending.popleft().result()

    def close(self) -> None:
        for fut in self.pending:
            fut.cancel()
        self.pool.shutdown(wait=True)


def batch_results(
    jobs: list[Job],
    settings: Settings,
    run_dir: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    loader_workers: int | None = None,
    writers: int | None = None,
) -> Iterator[Result]:
    """Segment ``jobs`` in batches on ``settings.device``; yield each image's result as it is written.

    Raises only for what stops a run (the model, a full or read-only output folder), like
    ``tasks.segment_job``.
    """
    batches = _Batches(jobs, settings, run_dir, writers)
    loader = _loader(jobs, batches.card, settings, batch_size, loader_workers, batches.device.type == "cuda")
    buckets: dict[tuple[int, int], list[dict]] = {}
    limit = batches.limit
    try:
        for item in loader:
            job = jobs[item["index"]]
            if "error" in item:
                yield failed_result(job, settings, item["error"], item["t0"])
            elif item.get("single") or item["x"].shape[1] * item["x"].shape[2] > limit:
                yield segment_job(job, settings, run_dir)
            else:
                key = tuple(item["x"].shape[1:])
                bucket = buckets.setdefault(key, [])
                bucket.append(item)
                if len(bucket) >= max(1, min(batch_size, limit // (key[0] * key[1]))):
                    yield from batches.run(buckets.pop(key))
            yield from batches.finished()
        for key in list(buckets):
            yield from batches.run(buckets.pop(key))
        yield from batches.finished(block=True)
    finally:
        batches.close()
