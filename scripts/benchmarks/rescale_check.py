"""The rescale check of issue #9: DRIVE's test images upscaled x2, x3 and x4 (as a modern camera's
larger photographs of the same eyes) must segment as well as the originals with the defaults.

Usage: python scripts/benchmarks/rescale_check.py DATASETS_ROOT [--model NAME] [--factors 1 2 3 4]
           [--native-too 2] [--out docs/results/rescale_check.json]

Images are upscaled bilinearly, ground truth and FOV by pixel repetition.  Each image goes through
``segmentation.segment`` exactly as ``napari-dpn segment`` runs it (FOV estimated, scale auto, no
field angle given); AUC is pooled inside the official FOV masks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _provenance import write_report
from napari_dpn.datasets import load_split
from napari_dpn.models import DEFAULT_MODEL, load_model
from napari_dpn.scale import resample_image
from napari_dpn.segmentation import segment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--factors", nargs="+", type=int, default=[1, 2, 3, 4])
    ap.add_argument("--native-too", nargs="*", type=int, default=[2], help="also run these factors without resampling")
    ap.add_argument("--out", default="docs/results/rescale_check.json")
    args = ap.parse_args()
    loaded = load_model(args.model)
    test = load_split("drive", args.root).test
    rows = []
    for k in args.factors:
        for mode in ["auto"] + (["native"] if k in args.native_too else []):
            scores, labels, factors, t0 = [], [], [], time.perf_counter()
            for sample in test:
                rgb, gt, fov = sample.load()
                if k > 1:
                    rgb = resample_image(rgb, (rgb.shape[0] * k, rgb.shape[1] * k))
                    gt, fov = (np.kron(m, np.ones((k, k), bool)) for m in (gt, fov))
                seg = segment(loaded, rgb, scale=mode, precision="fp32")
                scores.append(seg.probability[fov])
                labels.append(gt[fov])
                factors.append(seg.scale.factor)
            auc = float(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))
            row = {
                "upscale": k,
                "mode": mode,
                "auc": round(auc, 4),
                "factor_min": round(min(factors), 3),
                "factor_max": round(max(factors), 3),
                "seconds_per_image": round((time.perf_counter() - t0) / len(test), 2),
            }
            rows.append(row)
            print(row, flush=True)
    result = {
        "model": args.model,
        "sha256": loaded.card.sha256,
        "rows": rows,
    }
    write_report(args.out, result)


if __name__ == "__main__":
    main()
