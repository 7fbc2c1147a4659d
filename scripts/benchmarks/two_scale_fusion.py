"""Issue #9 item 7: does fusing the probability maps of two working scales help, above all on thin vessels?

Usage: python scripts/benchmarks/two_scale_fusion.py DATASETS_ROOT [--model dpn-universal]
           [--finer 1.5] [--datasets drive stare chase avwide] [--guess] [--out docs/results/two_scale_fusion.json]

For every test image: the map at the scale `segment` chooses (the dataset's field angle given),
the map at ``--finer`` x that scale, and their mean and maximum, all resampled back to the
photograph's pixels; also a pass at the scale / ``--finer`` ("coarser": the mean with it alone,
"three": the mean of all three).  ``--guess``: no field angle given (the 45 degree guess, as most
users run it) instead of the dataset's. AUC pooled over FOV pixels (AV-WIDE: the whole frame), for all vessels and for
thin ones only: ground-truth vessel pixels that a 3x3 opening removes (under 3 px wide in the
dataset's own pixels) against every background pixel, thick vessel pixels left out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _provenance import write_report
from napari_dpn import metrics
from napari_dpn.datasets import DATASETS, load_split
from napari_dpn.models import load_model
from napari_dpn.segmentation import _run, choose_scale

TEST_SPLITS = {
    ds: DATASETS[ds].default_split for ds in ("drive", "stare", "chase", "avwide")
}  # the paper's test splits
VARIANTS = ("working", "finer", "mean", "max", "coarser", "three")


def thin_vessels(gt: np.ndarray) -> np.ndarray:
    """Ground-truth vessel pixels under 3 px wide (what a 3x3 opening removes)."""
    return gt & ~ndi.binary_opening(gt, structure=np.ones((3, 3), bool))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--model", default="dpn-universal")
    ap.add_argument("--finer", type=float, default=1.5)
    ap.add_argument("--datasets", nargs="+", default=list(TEST_SPLITS))
    ap.add_argument("--guess", action="store_true", help="no field angle: the 45 degree guess")
    ap.add_argument("--out", default="docs/results/two_scale_fusion.json")
    args = ap.parse_args()
    loaded = load_model(args.model)
    rows = {}
    for ds in args.datasets:
        t0 = time.perf_counter()
        maps = {v: [] for v in VARIANTS}
        gts, fovs, thin_fovs, factors = [], [], [], []
        for sample in load_split(ds, args.root, TEST_SPLITS[ds]).test:
            rgb, gt, fov = sample.load()
            gt, fov = np.asarray(gt, bool), np.asarray(fov, bool)
            angle = None if args.guess else DATASETS[ds].field_angle
            sc, _ = choose_scale(loaded, rgb, fov, "auto", angle, precision="fp32")
            work, _ = _run(loaded, rgb, sc.factor, precision="fp32")
            fine, _ = _run(loaded, rgb, sc.factor * args.finer, precision="fp32")
            coarse, _ = _run(loaded, rgb, sc.factor / args.finer, precision="fp32")
            variants = (work, fine, (work + fine) / 2, np.maximum(work, fine), (work + coarse) / 2)
            for v, p in zip(VARIANTS, variants + ((work + fine + coarse) / 3,)):
                maps[v].append(p)
            gts.append(gt)
            fovs.append(fov)
            thin_fovs.append(fov & (~gt | thin_vessels(gt)))
            factors.append(round(sc.factor, 3))
        rows[ds] = {
            "factors": factors,
            "auc": {v: round(metrics.auc(maps[v], gts, fovs), 4) for v in VARIANTS},
            "thin_auc": {v: round(metrics.auc(maps[v], gts, thin_fovs), 4) for v in VARIANTS},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(ds, rows[ds], flush=True)
    report = {
        "model": args.model,
        "sha256": loaded.card.sha256,
        "finer": args.finer,
        "field_angle": "45 guessed" if args.guess else "the dataset's",
        "precision": "fp32",
        "rows": rows,
    }
    print("wrote", write_report(args.out, report))


if __name__ == "__main__":
    main()
