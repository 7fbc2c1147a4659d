"""Segmentation throughput on a GPU (or the CPU): images per second for the network alone and disk to
disk, for DRIVE-sized (584x565) images.  Prepared for a lent GPU (issue #13: goal >= 300 images/s);
also runs on the CPU with a small count, which is how the tests check that it works.

Usage:
  python scripts/benchmarks/gpu_throughput.py --folder shared/datasets/DRIVE/test/images --count 2000 \\
      [--batch-sizes 1 8 16 32 64] [--disk-batch-sizes 16 32] [--loader-workers 15] [--device auto] \\
      [--model dpn-release-drive] [--network-iters 50] [--out gpu_throughput.json]
  python scripts/benchmarks/gpu_throughput.py --synthetic --size 96 96 --count 4 --batch-sizes 1 2 \\
      --network-iters 2 --device cpu          # a quick check anywhere

Measured:
- ``network``: a batch already on the device, forward only (channels_last, fp16 autocast on CUDA;
  on the CPU the precision ``inference.predict`` picks), timed between synchronisations;
- ``network+copies``: the same from pinned host memory with non_blocking copies, probabilities
  copied back: what the batch pipeline's network stage costs;
- ``disk``: ``segment --batch-size B`` exactly as the CLI runs it (``cohort.Cohort`` with
  ``batch.batch_results``: DataLoader decode processes, batches grouped by size, writes in threads)
  from ``--count`` image files (the folder's photographs repeated through symbolic links) to a
  fresh output folder, model load excluded; the images/s between the first and the last image
  written (steady) and over the whole run (wall, DataLoader start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _provenance import commit, cpu_model, write_report
from napari_dpn.batch import DEFAULT_BATCH, default_loader_workers, forward_batch
from napari_dpn.cohort import Cohort, settings_for
from napari_dpn.devices import resolve_precision, select_device
from napari_dpn.model import flush_denormals_
from napari_dpn.models import DEFAULT_MODEL, load_model
from napari_dpn.planning import images_in

DRIVE_SIZE = (584, 565)


def synthetic_photo(size: tuple[int, int], seed: int) -> np.ndarray:
    """An orange disc on black with dark curved lines and noise, uint8 RGB (what a decoder returns)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    r = 0.46 * min(h, w)
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= r * r
    img = np.zeros((h, w, 3), np.float32)
    img[disc] = (0.8, 0.35, 0.15)
    for _ in range(6):
        a, b, c = rng.uniform(-1, 1, 3)
        curve = np.abs((yy - h / 2) / h - a * ((xx - w / 2) / w) ** 2 - b * (xx - w / 2) / w - 0.2 * c) < 0.004
        img[curve & disc] *= 0.5
    img += rng.normal(0, 0.02, img.shape).astype(np.float32) * disc[..., None]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def input_folder(args, root: Path) -> Path:
    """``--count`` photographs in ``root``: links to the folder's photographs (repeated), or synthetic PNGs."""
    from PIL import Image

    src = root / "in"
    src.mkdir()
    if args.synthetic:
        base = []
        for k in range(min(args.count, 8)):
            path = root / f"synthetic{k}.png"
            Image.fromarray(synthetic_photo(tuple(args.size), k)).save(path)
            base.append(path)
    else:
        base, _ = images_in([args.folder])
    for k in range(args.count):
        p = base[k % len(base)]
        os.symlink(p.resolve(), src / f"{k:06d}_{p.name}")
    return src


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_rates(model, device, precision, size, batch_sizes, iters) -> list[dict]:
    from napari_dpn.batch import autocast_for

    out = []
    for b in batch_sizes:
        x_host = torch.rand((b, 3, *size), pin_memory=device.type == "cuda")
        x = x_host.to(device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast_for(device, precision):
            for _ in range(2):
                model(x)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                model(x)
            sync(device)
            net = time.perf_counter() - t0
        xs = list(x_host.unbind(0))
        forward_batch(model, xs, device, precision)  # warm
        t0 = time.perf_counter()
        for _ in range(iters):
            forward_batch(model, xs, device, precision)
        copies = time.perf_counter() - t0
        row = {
            "batch": b,
            "network_images_per_s": round(b * iters / net, 1),
            "network_ms_per_batch": round(1000 * net / iters, 2),
            "network_with_copies_images_per_s": round(b * iters / copies, 1),
        }
        if device.type == "cuda":
            row["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(device)
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def disk_rate(args, folder: Path, root: Path, batch: int, settings) -> dict:
    out = root / f"out-b{batch}"
    images, _ = images_in([str(folder)])
    t0 = time.perf_counter()
    times, statuses = [], {}
    with Cohort(out, settings) as cohort:
        plan = cohort.plan(images)
        for result in cohort.run(plan.jobs, batch_size=batch, loader_workers=args.loader_workers):
            times.append(time.perf_counter() - t0)
            statuses[result.status] = statuses.get(result.status, 0) + 1
    shutil.rmtree(out, ignore_errors=True)
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    row = {
        "batch": batch,
        "images": len(times),
        "statuses": statuses,
        "wall_s": round(times[-1], 2),
        "disk_images_per_s_wall": round(len(times) / times[-1], 2),
        "disk_images_per_s_steady": None if steady is None else round(steady, 2),
        "first_image_s": round(times[0], 2),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=None, help="photographs to repeat (default: synthetic ones)")
    ap.add_argument("--synthetic", action="store_true", help="synthetic photographs of --size")
    ap.add_argument("--size", nargs=2, type=int, default=list(DRIVE_SIZE), metavar=("H", "W"))
    ap.add_argument("--count", type=int, default=500, help="images for the disk-to-disk run")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 16, 32, 64])
    ap.add_argument(
        "--disk-batch-sizes",
        nargs="*",
        type=int,
        default=None,
        help="batch sizes of the disk-to-disk runs (default: the pipeline's default)",
    )
    ap.add_argument("--loader-workers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--network-iters", type=int, default=50)
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.folder is None:
        args.synthetic = True
    device = select_device(args.device)
    loaded = load_model(args.model)
    model = loaded.model.to(device).to(memory_format=torch.channels_last).eval()
    flush_denormals_(model)
    precision = "fp16" if device.type == "cuda" else resolve_precision("auto", device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "precision": precision,
        "model": loaded.card.name,
        "image_size": list(args.size),
    }
    print(json.dumps(report), flush=True)
    report["network"] = network_rates(model, device, precision, tuple(args.size), args.batch_sizes, args.network_iters)
    root = Path(tempfile.mkdtemp(prefix="napari-dpn-gpu-bench-"))
    try:
        folder = input_folder(args, root)
        settings = settings_for(args.model, device=str(device), fusion=None)  # batches: one pass per image
        report["disk"] = [
            disk_rate(args, folder, root, b, settings)
            for b in (args.disk_batch_sizes or [DEFAULT_BATCH if device.type == "cuda" else 2])
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.update(
        {
            "count": args.count,
            "folder": args.folder or "synthetic",
            "loader_workers": default_loader_workers() if args.loader_workers is None else args.loader_workers,
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "commit": commit(),
            "command": " ".join(["python", "scripts/benchmarks/gpu_throughput.py", *(argv or sys.argv[1:])]),
        }
    )
    if args.out:
        print(f"wrote {write_report(args.out, report)}")
    return report


if __name__ == "__main__":
    main()
