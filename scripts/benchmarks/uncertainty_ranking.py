"""Do the top-ranked uncertain regions hold the errors?  (issue 12, "where to look next")

For every test image of DRIVE, STARE and CHASE_DB1: segment it with a shipped model (the mask is
probability >= the model card's threshold inside the FOV), compute the uncertainty map
(napari_dpn.uncertainty.uncertainty, and optionally flip-TTA disagreement), rank the non-overlapping
64x64 regions (uncertainty.rank_regions) and measure which share of the FP+FN pixels (inside the FOV)
the 10 highest-ranked regions hold, against their share of the FOV's area.  Enrichment = error
share / area share; the target is >= 3.  "oracle" ranks the regions by their true error
count: the ceiling any uncertainty map could reach at this region size and count.

    OMP_NUM_THREADS=1 python scripts/benchmarks/uncertainty_ranking.py \
        --root /work/shared/datasets --json docs/results/uncertainty_ranking.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _provenance import commit, cpu_model
from napari_dpn import uncertainty as U
from napari_dpn.datasets import load_split
from napari_dpn.files import atomic_write
from napari_dpn.inference import predict
from napari_dpn.models import load_model

MODELS = {"drive": "dpn-drive", "stare": "dpn-stare", "chase": "dpn-chase"}


def score(u, fov, errors, top, size):
    regions = U.rank_regions(u, fov, size)[:top]
    sel = np.zeros(fov.shape, bool)
    for y0, x0, y1, x1, _ in regions:
        sel[y0:y1, x0:x1] = True
    sel &= fov
    area = sel.sum() / fov.sum()
    err = (errors & sel).sum() / max(1, errors.sum())
    return {
        "area_share": float(area),
        "error_share": float(err),
        "enrichment": float(err / area) if area else float("nan"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/work/shared/datasets")
    ap.add_argument("--datasets", nargs="+", default=["drive", "stare", "chase"])
    ap.add_argument("--model", help="one model for every dataset (default: each dataset's own)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many test images each")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--tta", action="store_true", help="also rank by flip-TTA disagreement (4 passes)")
    ap.add_argument("--json", default="docs/results/uncertainty_ranking.json")
    args = ap.parse_args(argv)

    out = {
        "meta": {
            "command": " ".join(["python", "scripts/benchmarks/uncertainty_ranking.py"] + (argv or sys.argv[1:])),
            "commit": commit(),
            "cpu": cpu_model(),
            "top": args.top,
            "size": args.size,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "datasets": {},
    }
    for ds in args.datasets:
        split = load_split(ds, args.root)
        test = split.test[: args.limit] if args.limit else split.test
        name = args.model or MODELS[ds]
        loaded = load_model(name)
        t = float(loaded.card.threshold)
        rows = []
        for sample in test:
            rgb, gt, fov = sample.load()
            t0 = time.perf_counter()
            prob = predict(loaded, rgb, device="cpu").probability
            mask = (prob >= t) & fov
            errors = (mask != gt) & fov
            row = {
                "image": sample.name,
                "seconds": round(time.perf_counter() - t0, 2),
                "error_pixels": int(errors.sum()),
                "fov_pixels": int(fov.sum()),
                "distance": score(U.uncertainty(prob, t), fov, errors, args.top, args.size),
            }
            # The ceiling: regions ranked by their true error count (what no ranking can beat).
            row["oracle"] = score(errors.astype(np.float32), fov, errors, args.top, args.size)
            if args.tta:
                row["tta"] = score(U.tta_uncertainty(loaded, rgb, device="cpu"), fov, errors, args.top, args.size)
            rows.append(row)
            print(ds, sample.name, {k: v for k, v in row.items() if k in ("distance", "tta", "oracle")}, flush=True)
        summary = {}
        for kind in ("distance", "tta", "oracle"):
            vals = [r[kind] for r in rows if kind in r]
            if vals:
                summary[kind] = {
                    k: float(np.mean([v[k] for v in vals])) for k in ("area_share", "error_share", "enrichment")
                }
                summary[kind]["min_enrichment"] = float(min(v["enrichment"] for v in vals))
        out["datasets"][ds] = {"model": name, "threshold": t, "n_images": len(rows), "summary": summary, "images": rows}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            Path(tmp).write_text(json.dumps(out, indent=1) + "\n")
        print(ds, summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
