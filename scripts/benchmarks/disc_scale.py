"""The optic-disc scale estimate (issue #9, item 3): pixels per degree without any metadata.

Usage: python scripts/benchmarks/disc_scale.py DATASETS_ROOT [--vessels] [--calibre]
           [--out docs/results/disc_scale.json]

1. Calibration, on the **training** images of DRIVE, STARE and CHASE_DB1 only: the disc diameter
   ``disc.find_disc`` measures over the true px/deg (FOV diameter / the dataset's field angle), in
   degrees; the median over all of them is what ``disc.DISC_DEGREES`` should be.
2. On the **test** images (the paper's splits): the relative error |estimate / true - 1| of the
   px/deg from the disc, from the 45 degree guess (FOV diameter / 45) and, with ``--calibre``, from
   the vessel calibre of the default model's coarse passes (slow: several network passes each).
   ``--vessels`` also runs the disc search with the default model's vessel map (a network pass).
3. The rescale check: DRIVE's test images upscaled x2 and x3 (the estimate must scale with them).
4. AV-WIDE's test images (ultra-widefield, no circular FOV, true scale unknown; about 9.6 px/deg by
   the route in ``datasets.py``): is a disc found, and what px/deg it gives.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _provenance import write_report
from napari_dpn import disc
from napari_dpn.datasets import DATASETS, DRIVE_PPD, load_split
from napari_dpn.scale import DEFAULT_FIELD_ANGLE, fov_diameter, resample_image

SPLITS = {ds: DATASETS[ds].default_split for ds in ("drive", "stare", "chase")}  # the paper's test splits
AVWIDE_PPD = 1300 / 135  # datasets.py: the field-angle and the vessel-calibre routes agree on ~9.6


def true_ppd(ds: str, fov: np.ndarray) -> float:
    return fov_diameter(fov) / DATASETS[ds].field_angle


def errors(est: list, true: list) -> dict:
    """Median and mean |est / true - 1| in percent over the images with an estimate, and the failures."""
    rel = [abs(e / t - 1) for e, t in zip(est, true) if e is not None]
    return {
        "median_pct": round(100 * float(np.median(rel)), 1) if rel else None,
        "mean_pct": round(100 * float(np.mean(rel)), 1) if rel else None,
        "max_pct": round(100 * float(np.max(rel)), 1) if rel else None,
        "failed": sum(e is None for e in est),
        "n": len(est),
    }


def vessel_map(loaded, rgb, fov):
    from napari_dpn.segmentation import segment

    return segment(loaded, rgb, fov=fov, precision="fp32", fusion=None).probability


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--vessels", action="store_true", help="also the disc search helped by the default model's map")
    ap.add_argument("--calibre", action="store_true", help="also the vessel-calibre estimate (slow)")
    ap.add_argument("--out", default="docs/results/disc_scale.json")
    args = ap.parse_args()
    loaded = None
    if args.vessels or args.calibre:
        from napari_dpn.models import DEFAULT_MODEL, load_model

        loaded = load_model(DEFAULT_MODEL)
    rows, seconds = [], []

    def measure(rgb, fov, vessels=None):
        t0 = time.perf_counter()
        est = disc.find_disc(rgb, fov, vessels)
        seconds.append(time.perf_counter() - t0)
        return est

    # 1. Calibration on the training images.
    degrees = {}
    for ds, split in SPLITS.items():
        for sample in load_split(ds, args.root, split).train:
            rgb, _, fov = sample.load()
            est, true = measure(rgb, fov), true_ppd(ds, fov)
            deg = None if est.diameter is None else est.diameter / true
            degrees.setdefault(ds, []).append(deg)
            rows.append(
                {
                    "part": "train",
                    "dataset": ds,
                    "image": sample.name,
                    "true_ppd": round(true, 2),
                    "disc_px": None if est.diameter is None else round(est.diameter, 1),
                    "disc_deg": None if deg is None else round(deg, 3),
                    "note": est.note,
                }
            )
    found = [d for v in degrees.values() for d in v if d is not None]
    calibration = {
        "disc_degrees_median_all": round(float(np.median(found)), 3),
        "per_dataset_median": {ds: round(float(np.median([d for d in v if d])), 3) for ds, v in degrees.items()},
        "per_dataset_iqr": {
            ds: [round(float(q), 2) for q in np.percentile([d for d in v if d], [25, 75])] for ds, v in degrees.items()
        },
        "failed": sum(d is None for v in degrees.values() for d in v),
        "n": sum(len(v) for v in degrees.values()),
        "DISC_DEGREES_used": disc.DISC_DEGREES,
    }
    print("calibration (train):", calibration, flush=True)

    # 2. Test images: disc vs the 45 degree guess (vs the calibre estimate).
    test = {}
    for ds, split in SPLITS.items():
        est = {
            "disc": [],
            "angle45": [],
            **({"disc+vessels": []} if args.vessels else {}),
            **({"calibre": []} if args.calibre else {}),
        }
        truth = []
        for sample in load_split(ds, args.root, split).test:
            rgb, _, fov = sample.load()
            true = true_ppd(ds, fov)
            truth.append(true)
            d = measure(rgb, fov)
            est["disc"].append(d.ppd)
            est["angle45"].append(fov_diameter(fov) / DEFAULT_FIELD_ANGLE)
            row = {
                "part": "test",
                "dataset": ds,
                "image": sample.name,
                "true_ppd": round(true, 2),
                "disc_ppd": None if d.ppd is None else round(d.ppd, 2),
                "angle45_ppd": round(est["angle45"][-1], 2),
                "note": d.note,
            }
            if args.vessels:
                dv = disc.find_disc(rgb, fov, vessel_map(loaded, rgb, fov))
                est["disc+vessels"].append(dv.ppd)
                row["disc_vessels_ppd"] = None if dv.ppd is None else round(dv.ppd, 2)
            if args.calibre:
                from napari_dpn.scale import working_ppd
                from napari_dpn.segmentation import scale_from_calibre

                cal = scale_from_calibre(loaded, rgb, fov, precision="fp32")[0]
                est["calibre"].append(None if cal.method != "calibre" else working_ppd(loaded.card) / cal.factor)
                row["calibre_ppd"] = None if est["calibre"][-1] is None else round(est["calibre"][-1], 2)
            rows.append(row)
            print(row, flush=True)
        test[ds] = {m: errors(e, truth) for m, e in est.items()}
        print(ds, test[ds], flush=True)

    # 3. The rescale check: DRIVE's test images upscaled.
    rescale = {}
    for k in (2, 3):
        ratios, est_k, truth = [], [], []
        for sample in load_split("drive", args.root).test:
            rgb, _, fov = sample.load()
            base = next(r["disc_ppd"] for r in rows if r["part"] == "test" and r["image"] == sample.name)
            big = resample_image(rgb, (rgb.shape[0] * k, rgb.shape[1] * k))
            d = measure(big, np.kron(fov, np.ones((k, k), bool)))
            est_k.append(d.ppd)
            truth.append(k * true_ppd("drive", fov))
            if d.ppd is not None and base is not None:
                ratios.append(d.ppd / base)
        rescale[f"x{k}"] = {
            "ratio_to_x1_median": round(float(np.median(ratios)), 3),
            "ratio_to_x1_min": round(float(np.min(ratios)), 3),
            "ratio_to_x1_max": round(float(np.max(ratios)), 3),
            "error_vs_true": errors(est_k, truth),
        }
        print(f"rescale x{k}:", rescale[f"x{k}"], flush=True)

    # 4. AV-WIDE: ultra-widefield, no circular FOV.
    avwide = []
    for sample in load_split("avwide", args.root, "20/10").test:
        rgb, _, fov = sample.load()
        d = measure(rgb, fov)
        avwide.append(
            {
                "image": sample.name,
                "size": list(rgb.shape[:2]),
                "found": d.ppd is not None,
                "disc_px": None if d.diameter is None else round(d.diameter, 1),
                "ppd": None if d.ppd is None else round(d.ppd, 2),
                "centre": None if d.centre is None else [round(v) for v in d.centre],
                "note": d.note,
            }
        )
        print(avwide[-1], flush=True)

    result = {
        "protocol": "DISC_DEGREES calibrated on the training images of DRIVE, STARE and CHASE_DB1; errors on "
        "the test images (splits: " + ", ".join(f"{d} {s}" for d, s in SPLITS.items()) + "); true px/deg = FOV "
        "diameter / the dataset's field angle; error = |estimate / true - 1|",
        "threads": 1,
        "seconds_per_image_mean": round(float(np.mean(seconds)), 3),
        "calibration": calibration,
        "test": test,
        "rescale_drive_test": rescale,
        "avwide_test": {"reference_ppd": round(AVWIDE_PPD, 1), "drive_ppd": round(DRIVE_PPD, 2), "images": avwide},
        "rows": rows,
    }
    write_report(args.out, result)
    print(f"seconds per image (disc search): {result['seconds_per_image_mean']}")


if __name__ == "__main__":
    main()
