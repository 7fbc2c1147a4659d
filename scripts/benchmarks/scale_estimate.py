"""How well the scale of a photograph is found without metadata (issue #9, item 3).

Usage: python scripts/benchmarks/scale_estimate.py DATASETS_ROOT [--model NAME] [--rescale 1 2]
           [--out docs/results/scale_estimate.json]

For every test image of DRIVE, STARE, CHASE_DB1 and AV-WIDE (optionally also upscaled), the true
resampling factor (the model's working px/deg over the image's: FOV diameter / the dataset's field
angle; AV-WIDE: its calibre factor) against two estimates: a 45 degree guess on the FOV diameter,
and the vessel calibre of coarse passes (``segmentation.scale_from_calibre``).  Reports the
median and worst absolute error in percent of the true factor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _provenance import write_report
from napari_dpn.datasets import DATASETS, load_split, sample_factor
from napari_dpn.models import DEFAULT_MODEL, load_model
from napari_dpn.scale import from_fov, resample_image, resample_mask, working_ppd
from napari_dpn.segmentation import scale_from_calibre

SPLITS = {ds: DATASETS[ds].default_split for ds in ("drive", "stare", "chase", "avwide")}  # the paper's test splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--rescale", nargs="+", type=float, default=[1.0])
    ap.add_argument("--out", default="docs/results/scale_estimate.json")
    args = ap.parse_args()
    loaded = load_model(args.model)
    target = working_ppd(loaded.card)
    rows, summary = [], {}
    for ds, split in SPLITS.items():
        for k in args.rescale:
            errs = {"angle45": [], "calibre": []}
            for sample in load_split(ds, args.root, split).test:
                rgb, _, fov = sample.load()
                true = sample_factor(sample, fov, target) / k
                if k != 1.0:
                    size = (round(rgb.shape[0] * k), round(rgb.shape[1] * k))
                    rgb, fov = resample_image(rgb, size), resample_mask(fov, size)
                guess = from_fov(fov, loaded.card, None).factor if not DATASETS[ds].whole_frame_fov else None
                cal = scale_from_calibre(loaded, rgb, fov, precision="fp32")[0]
                row = {
                    "dataset": ds,
                    "image": sample.name,
                    "rescale": k,
                    "true": round(true, 3),
                    "angle45": None if guess is None else round(guess, 3),
                    "calibre": round(cal.factor, 3),
                    "calibre_method": cal.method,
                }
                rows.append(row)
                if guess is not None:
                    errs["angle45"].append(abs(guess / true - 1))
                errs["calibre"].append(abs(cal.factor / true - 1))
                print(row, flush=True)
            summary[f"{ds} x{k:g}"] = {
                m: {"median_pct": round(100 * float(np.median(e)), 1), "max_pct": round(100 * float(np.max(e)), 1)}
                if e
                else None
                for m, e in errs.items()
            }
            print(f"{ds} x{k:g}: {summary[f'{ds} x{k:g}']}", flush=True)
    result = {
        "model": args.model,
        "working_ppd": target,
        "summary": summary,
        "rows": rows,
    }
    write_report(args.out, result)


if __name__ == "__main__":
    main()
