"""Inference speed and peak memory for DRIVE-, CHASE- and HRF-sized images on the current device.

Usage: python scripts/benchmarks/bench_inference.py [--device auto] [--repeats 3] [--markdown]

Each size runs in a fresh subprocess so that its peak resident memory (CPU) or peak
allocated memory (CUDA) is its own.  Prints a table; --markdown prints it for docs/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: _provenance

SIZES = {"DRIVE 565x584": (584, 565), "CHASE_DB1 999x960": (960, 999), "HRF 3504x2336": (2336, 3504)}
ARCHS = ("dpn", "dpn-release")


def _one(arch: str, h: int, w: int, device: str, repeats: int) -> dict:
    import resource

    import numpy as np
    import torch

    from napari_dpn.architectures import FRESH_INPUT
    from napari_dpn.devices import select_device
    from napari_dpn.inference import predict
    from napari_dpn.model import build_model
    from napari_dpn.models import LoadedModel, ModelCard, load_model

    dev = select_device(device)
    if arch == "dpn-release":
        loaded = load_model("dpn-release-drive")
    else:
        loaded = LoadedModel(
            build_model("dpn").eval(), ModelCard(name="dpn", architecture="dpn", input=dict(FRESH_INPUT))
        )
    img = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    pred = predict(loaded, img, device=dev)  # warm-up (and CUDA/cuDNN autotuning)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred = predict(loaded, img, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated()
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "arch": arch,
        "h": h,
        "w": w,
        "device": str(dev),
        "seconds": min(times),
        "median": sorted(times)[len(times) // 2],
        "peak_bytes": peak,
        "tiles": pred.tiles,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        arch, h, w = args.one[0], int(args.one[1]), int(args.one[2])
        print(json.dumps(_one(arch, h, w, args.device, args.repeats)))
        return
    import torch

    rows = []
    for label, (h, w) in SIZES.items():
        for arch in ARCHS:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--device",
                    args.device,
                    "--repeats",
                    str(args.repeats),
                    "--one",
                    arch,
                    str(h),
                    str(w),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["size"] = label
            rows.append(r)
            print(
                f"{label:<20} {arch:<12} {r['seconds']:.3f} s (median {r['median']:.3f})  "
                f"peak {r['peak_bytes'] / 2**30:.2f} GiB  tiles {r['tiles']}  [{r['device']}]",
                file=sys.stderr,
            )
    from _provenance import commit, cpu_model

    cpu = cpu_model()
    if args.markdown:
        print(
            f"device: {rows[0]['device']}; CPU: {cpu}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
            f"commit {commit()}"
        )
        print()
        print(f"| image | network | seconds per image (best of {args.repeats}) | peak memory | tiles |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['size']} | {r['arch']} | {r['seconds']:.2f} | {r['peak_bytes'] / 2**30:.2f} GiB | {r['tiles']} |"
            )


if __name__ == "__main__":
    main()
