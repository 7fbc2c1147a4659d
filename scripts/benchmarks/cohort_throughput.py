"""Cohort throughput on this machine: images per second, disk to disk, for `segment` in one process
and on a local Dask cluster of 1, 2, ... workers (the numbers in docs/cohort.md).

Usage: python scripts/benchmarks/cohort_throughput.py FOLDER [--modes serial 1 2] [--repeat 1]
           [--model NAME] [--device cpu] [--out docs/results/cohort_throughput.json]

Each mode segments every photograph of FOLDER into a fresh temporary output folder through
``cohort.Cohort`` (exactly what ``napari-dpn segment [--workers N]`` runs), in the order given,
``--repeat`` times interleaved.  Reported per mode: the wall time from the start to the last image
(cluster start-up and model loads included), and the steady rate between the first and the last
finished image ((n - 1) / time), which is what a long cohort approaches.  The load average is
recorded because the machine may be shared.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _provenance import commit, cpu_model
from napari_dpn.cohort import Cohort, settings_for
from napari_dpn.models import DEFAULT_MODEL
from napari_dpn.planning import images_in


def run_mode(images, mode: str, model: str, device: str, precision: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="napari-dpn-cohort-bench-"))
    workers = None if mode == "serial" else int(mode)
    try:
        settings = settings_for(model, device=device, precision=precision, fusion=None)  # one pass, as measured before
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        done = []
        with Cohort(out, settings) as cohort:
            plan = cohort.plan(images)
            if workers is None:
                cohort.load()
            for result in cohort.run(plan.jobs, workers=workers):
                assert result.status == "done", result.row
                done.append(time.perf_counter() - t0)
        wall = done[-1]
        steady = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else None
        return {
            "mode": mode,
            "images": len(done),
            "wall_s": round(wall, 2),
            "images_per_s_wall": round(len(done) / wall, 3),
            "images_per_s_steady": None if steady is None else round(steady, 3),
            "first_image_s": round(done[0], 2),
            "load_before": round(load0, 2),
            "load_after": round(os.getloadavg()[0], 2),
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--modes", nargs="+", default=["serial", "1", "2"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    images, _ = images_in([args.folder])
    runs = []
    for r in range(args.repeat):
        for mode in args.modes:
            res = run_mode(images, mode, args.model, args.device, args.precision)
            res["round"] = r
            runs.append(res)
            print(json.dumps(res), flush=True)
    import torch

    report = {
        "folder": args.folder,
        "model": args.model,
        "device": args.device,
        "precision": args.precision,
        "runs": runs,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
