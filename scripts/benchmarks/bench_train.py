"""Seconds per training step of the real engine (crop, loss, backward, Adam) on this device.

    python scripts/benchmarks/bench_train.py                      # dpn and dpn-release, crops 512 and 736
    python scripts/benchmarks/bench_train.py --arch dpn --crop 512 --no-channels-last --threads 1 --amp bf16
    python scripts/benchmarks/bench_train.py --compare            # speed-ups side by side (see below)

Each configuration trains a fresh network on one synthetic fundus image for ``--steps`` steps
(then cancels, so nothing but a checkpoint is written) and reports the median step time after
``--warmup`` steps.  ``--compare`` runs the variants in :data:`VARIANTS` step by step in turn in
one process, so that a machine shared with other jobs slows them all alike and their ratios stay
meaningful.  Results for the reference CPU are in docs/training-speed.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: _provenance

from _provenance import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def _image(size: int):
    from synthetic_fundus import fundus

    return fundus(size, seed=0, n_vessels=12)


def bench(
    arch: str, crop: int, steps: int, warmup: int, device: str, channels_last: bool, amp: str, batch_size: int = 1
) -> float:
    from napari_dpn.training import StepEvent, TrainConfig, train

    stamps = []

    def on_event(event):
        if isinstance(event, StepEvent):
            stamps.append(time.perf_counter())

    config = TrainConfig(
        steps=steps + 1,
        crop=crop,
        architecture=arch,
        device=device,
        amp=amp,
        channels_last=channels_last,
        batch_size=batch_size,
        val_every=0,
        checkpoint_every=0,
        name="bench",
    )
    with tempfile.TemporaryDirectory() as out:
        train(config, [_image(crop + 32)], out_dir=out, callback=on_event, should_stop=lambda: len(stamps) >= steps)
    times = np.diff(stamps)[warmup - 1 :]
    return statistics.median(times)


# (label, channels_last, amp, threads or None for torch's default)
VARIANTS = (
    ("NCHW fp32 (before)", False, "off", None),
    ("channels_last fp32", True, "off", None),
    ("channels_last bf16 autocast", True, "bf16", None),
    ("channels_last fp32, 1 thread", True, "off", 1),
)


def compare(arch: str, crop: int, steps: int, warmup: int, device: str) -> dict[str, float]:
    """Median step time of every variant, the variants taking turns step by step."""
    from napari_dpn.training import TrainConfig
    from napari_dpn.training.trainer import _Trainer

    default_threads = torch.get_num_threads()
    trainers = {}
    with tempfile.TemporaryDirectory() as out:
        for label, cl, amp, _ in VARIANTS:
            config = TrainConfig(
                steps=steps,
                crop=crop,
                architecture=arch,
                device=device,
                amp=amp,
                channels_last=cl,
                val_every=0,
                checkpoint_every=0,
                name="bench",
            )
            trainers[label] = _Trainer(config, [_image(crop + 32)], None, None, out, None, None, None, None)
        times = {label: [] for label in trainers}
        for step in range(warmup + steps):
            for label, _, _, threads in VARIANTS:
                torch.set_num_threads(threads or default_threads)
                t0 = time.perf_counter()
                trainers[label].train_step()
                if step >= warmup:
                    times[label].append(time.perf_counter() - t0)
        torch.set_num_threads(default_threads)
    return {label: statistics.median(t) for label, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["dpn", "dpn-release"])
    p.add_argument("--crop", nargs="+", type=int, default=[512, 736])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"))
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--compare", action="store_true", help="the VARIANTS side by side, taking turns")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_dpn.devices import select_device

    dev = select_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    print(
        f"device {dev} ({name}); torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"channels_last {not args.no_channels_last}; amp {args.amp}; batch {args.batch_size}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    if args.compare:
        for arch in args.arch:
            for crop in args.crop:
                res = compare(arch, crop, args.steps, args.warmup, args.device)
                base = next(iter(res.values()))
                for label, sec in res.items():
                    print(f"{arch:<12} crop {crop}: {sec:.3f} s/step  x{base / sec:.2f}  {label}", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return 0
    for arch in args.arch:
        for crop in args.crop:
            s = bench(
                arch, crop, args.steps, args.warmup, args.device, not args.no_channels_last, args.amp, args.batch_size
            )
            print(f"{arch:<12} crop {crop}: {s:.3f} s/step", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
