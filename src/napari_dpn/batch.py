"""Many photographs through one GPU in batches (``segment --batch-size``; the default on CUDA).

The per-image pipeline (``segmentation.segment``) split in three stages that overlap:

1. **decode** in ``torch.utils.data.DataLoader`` worker processes: read, FOV, scale, resample to the
   working scale, normalise as the model card says (everything before the network, on the CPUs);
2. **network** in this process: images of one size are grouped into batches, copied from pinned
   memory with ``non_blocking`` copies, run in channels_last under fp16 autocast (bf16 on a CPU
   with native bf16, as ``inference.predict`` chooses), and copied back into pinned memory;
3. **map back and write** in a thread pool: resample the probability to the photograph's pixels,
   threshold inside the FOV, write the three outputs (``cohort.finish_job``: all or none, never
   replacing a file) and make the manifest row.

A photograph that needs the network to choose its scale (no circular FOV: the calibre estimate), or
that is too large for one pass (tiles), goes through ``cohort.segment_job`` unchanged; a batch that
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

from .cohort import (
    Result,
    Settings,
    failed_result,
    finish_job,
    segment_job,
    worker_model,
)
from .outputs import Job

DEFAULT_BATCH = 8  # DRIVE-sized images per batch on a GPU (the benchmark's sweet spot is larger: see docs)
MAX_WRITERS = 8


class _CardOnly:
    """What ``segmentation.choose_scale`` reads of a model outside the network's passes."""

    def __init__(self, card):
        self.card = card


class DecodedImages(torch.utils.data.Dataset):
    """Item ``i``: job ``i`` read and prepared for the network, or why it could not be (picklable:
    it travels to the DataLoader's worker processes)."""

    def __init__(self, jobs: list[Job], card, settings: Settings):
        self.jobs, self.card, self.settings = jobs, card, settings

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict:
        from . import scale as scale_mod
        from .fov import estimate_fov
        from .image_io import as_rgb, header_shape, is_greyscale, max_reduction, read_image, reduction_for
        from .preprocess import normalise
        from .segmentation import choose_scale

        t0 = time.perf_counter()
        s = self.settings
        try:
            if reduction_for(header_shape(self.jobs[i].image), max_reduction(s.scale)) > 1:
                return {"index": i, "single": True}  # a huge photograph: the per-image path reads it reduced
            raw = read_image(self.jobs[i].image)
            grey = bool(is_greyscale(raw))
            rgb = as_rgb(raw)
            fov = estimate_fov(rgb)
            needs_network = (
                scale_mod.parse_scale(s.scale) == "auto"
                and scale_mod.working_ppd(self.card) is not None
                and s.field_angle is None
                and scale_mod.fov_diameter(fov) is None
            )
            if needs_network:  # the calibre estimate runs the network: the per-image path does it
                return {"index": i, "single": True}
            sc, _ = choose_scale(_CardOnly(self.card), rgb, fov, s.scale, s.field_angle)
            work = (
                rgb
                if sc.factor == 1.0
                else scale_mod.resample_image(rgb, scale_mod.resampled_shape(rgb.shape, sc.factor))
            )
            x = torch.from_numpy(normalise(work, self.card.input))
        except Exception as exc:  # noqa: BLE001 - becomes this image's manifest row
            return {"index": i, "error": exc, "t0": t0}
        return {
            "index": i,
            "x": x,
            "fov": fov,
            "shape": rgb.shape[:2],
            "scale": sc,
            "grey": grey,
            "decode_seconds": time.perf_counter() - t0,
        }


def _identity(items):
    return items


def _init_loader_worker(_):
    torch.set_num_threads(1)


def default_loader_workers() -> int:
    """Decode processes: the CPUs less one for this process, at most 16."""
    return max(0, min(16, (os.cpu_count() or 1) - 1))


def _autocast(device: torch.device, precision: str):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def forward_batch(model: torch.nn.Module, xs: list[torch.Tensor], device: torch.device, precision: str) -> np.ndarray:
    """Probabilities (n, h, w) float32 for n normalised (3, h, w) tensors of one size."""
    cuda = device.type == "cuda"
    batch = torch.stack([x.to(device, non_blocking=cuda) for x in xs]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), _autocast(device, precision):
        y = model(batch)[:, 0].float()
    out = torch.empty(y.shape, dtype=torch.float32, pin_memory=cuda)
    out.copy_(y, non_blocking=cuda)
    if cuda:
        torch.cuda.current_stream(device).synchronize()
    return out.numpy()


def _post(
    job: Job,
    item: dict,
    prob: np.ndarray,
    settings: Settings,
    threshold: float,
    device: str,
    precision: str,
    net_seconds: float,
    run_dir: str | None,
    t0: float,
) -> Result:
    """Stage 3 for one image: the probability in the photograph's pixels, its outputs and its row."""
    from . import scale as scale_mod
    from .inference import Prediction
    from .segmentation import Segmentation

    try:
        full = prob
        if tuple(prob.shape) != tuple(item["shape"]):
            full = np.clip(scale_mod.resample_image(prob, tuple(item["shape"])), 0.0, 1.0)
        seg = Segmentation(
            probability=np.ascontiguousarray(full, np.float32),
            fov=np.asarray(item["fov"], bool),
            threshold=threshold,
            scale=item["scale"],
            prediction=Prediction(probability=prob, device=device, seconds=net_seconds, precision=precision),
        )
    except Exception as exc:  # noqa: BLE001 - this image's row, as in cohort.segment_job
        return failed_result(job, settings, exc, t0)
    return finish_job(job, settings, seg, item["grey"], t0, run_dir, network_seconds=net_seconds)


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
    ``cohort.segment_job``.
    """
    from .devices import resolve_precision, select_device
    from .inference import _max_pixels
    from .model import flush_denormals_

    loaded = worker_model(settings)
    device = select_device(settings.device)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    model = loaded.model.to(device).to(memory_format=torch.channels_last).eval()
    flush_denormals_(model)
    precision = "fp16" if device.type == "cuda" else resolve_precision(settings.precision, device)
    threshold = float(loaded.card.threshold if settings.threshold is None else settings.threshold)
    limit = _max_pixels(device)
    n_loaders = default_loader_workers() if loader_workers is None else max(0, int(loader_workers))
    loader = torch.utils.data.DataLoader(
        DecodedImages(jobs, loaded.card, settings),
        batch_size=None,
        shuffle=False,
        num_workers=n_loaders,
        collate_fn=_identity,
        pin_memory=device.type == "cuda",
        worker_init_fn=_init_loader_worker,
        prefetch_factor=max(2, 2 * batch_size // max(1, n_loaders)) if n_loaders else None,
    )
    pool = ThreadPoolExecutor(
        max_workers=writers or min(MAX_WRITERS, max(2, os.cpu_count() or 1)), thread_name_prefix="napari-dpn-write"
    )
    pending: deque[Future] = deque()
    buckets: dict[tuple[int, int], list[dict]] = {}

    def run_batch(items: list[dict]) -> Iterator[Result]:
        t0 = time.perf_counter()
        try:
            probs = forward_batch(model, [it["x"] for it in items], device, precision)
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            for it in items:  # one at a time, with tiles and the CPU fallback of inference.predict
                yield segment_job(jobs[it["index"]], settings, run_dir)
            return
        per_image = (time.perf_counter() - t0) / len(items)
        for it, prob in zip(items, probs):
            job = jobs[it["index"]]
            pending.append(
                pool.submit(
                    _post,
                    job,
                    it,
                    prob,
                    settings,
                    threshold,
                    str(device),
                    precision,
                    per_image,
                    run_dir,
                    t0 - it["decode_seconds"],
                )
            )

    def finished(block: bool = False) -> Iterator[Result]:
        while pending and (block or pending[0].done()):
            yield pending.popleft().result()

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
                    yield from run_batch(buckets.pop(key))
            yield from finished()
        for key in list(buckets):
            yield from run_batch(buckets.pop(key))
        yield from finished(block=True)
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)
