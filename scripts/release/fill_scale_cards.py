"""Record in each shipped model card the scale it works at (scale.py), measured on its training data.

Usage: python scripts/release/fill_scale_cards.py DATASETS_ROOT [MODEL ...]

``working_ppd``: the mean FOV diameter of the training dataset (its masks; CHASE_DB1's estimated)
over the dataset's field angle.  ``vessel_calibre_px``: the model's own thickest-vessel width on up
to 8 training images at that scale (``segmentation.vessel_calibre``), the reference of the
calibre estimate for photographs without a circular FOV.  Rewrites the embedded card and the JSON
beside it; the tensors are untouched.

Models trained at a working scale (``dpn-universal``): ``--keep-scale`` keeps their ``working_ppd``
and re-measures only the calibre, on DRIVE's first 8 training images at that scale and the card's
current threshold (as the training run measures it); ``--fusion 1.5`` records the two-scale
fusion the model was measured to gain from (docs/results.md), which ``segment`` then uses by default.
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_dpn.datasets import DATASETS, load_split
from napari_dpn.models import load_model, rewrite_card
from napari_dpn.scale import fov_diameter
from napari_dpn.segmentation import segment, vessel_calibre

TRAINED_ON = {
    "dpn-release-drive": "drive",
    "dpn-drive": "drive",
    "dpn-stare": "stare",
    "dpn-release-stare-ft": "stare",
    "dpn-chase": "chase",
    "dpn-release-chase-ft": "chase",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("models", nargs="*", default=list(TRAINED_ON))
    ap.add_argument("--keep-scale", action="store_true", help="keep working_ppd; re-measure the calibre")
    ap.add_argument("--fusion", type=float, default=None, help="record scale.fusion in the card")
    args = ap.parse_args()
    if args.keep_scale:
        for name in args.models:
            recalibrate(name, args.root, args.fusion)
        return
    for name in args.models:
        key = TRAINED_ON[name]
        info = DATASETS[key]
        split = load_split(key, args.root)
        loaded = load_model(name)
        diameters, calibres = [], []
        for sample in split.train:
            rgb, _, fov = sample.load()
            diameters.append(fov_diameter(fov))
            if len(calibres) < 8:
                seg = segment(loaded, rgb, fov=fov, scale="native", precision="fp32")
                calibres.append(vessel_calibre(seg.mask(), fov))
        ppd = float(np.mean(diameters)) / info.field_angle
        card = loaded.card
        card.scale = {
            "working_ppd": round(ppd, 2),
            "trained_ppd": round(ppd, 2),
            "source": f"{info.folder} training images at their native size: FOV diameter "
            f"{np.mean(diameters):.0f} px (mean of {len(diameters)}) over the camera's "
            f"{info.field_angle:g} degrees ({info.field_angle_source})",
            "vessel_calibre_px": round(float(np.mean([c for c in calibres if c])), 3),
            "vessel_calibre_rule": "95th percentile of the skeleton width of the map at the card's threshold, "
            f"mean over {len(calibres)} training images",
        }
        rewrite_card(loaded.path, card)
        print(f"{name}: {card.scale['working_ppd']} px/deg, calibre {card.scale['vessel_calibre_px']} px")


def recalibrate(name: str, root, fusion: float | None) -> None:
    """Re-measure ``vessel_calibre_px`` at the card's threshold and working scale; record ``fusion``."""
    loaded = load_model(name)
    card = loaded.card
    calibres = []
    for sample in load_split("drive", root).train[:8]:
        rgb, _, fov = sample.load()
        seg = segment(loaded, rgb, fov=fov, field_angle=DATASETS["drive"].field_angle, fusion=None, precision="fp32")
        calibres.append(vessel_calibre(seg.mask(), fov))
    card.scale = {
        **card.scale,
        "vessel_calibre_px": round(float(np.mean([c for c in calibres if c])), 3),
        "vessel_calibre_rule": f"95th percentile of the skeleton width of the map at the card's threshold "
        f"({card.threshold:g}), mean over the first {len(calibres)} DRIVE training images at the working scale",
    }
    if fusion is not None:
        card.scale["fusion"] = fusion
        card.scale["fusion_source"] = (
            "docs/results/two_scale_fusion.json (AUC +0.0003 to +0.0037, thin vessels +0.004 to +0.027)"
        )
    rewrite_card(loaded.path, card)
    print(f"{name}: calibre {card.scale['vessel_calibre_px']} px, fusion {card.scale.get('fusion')}")


if __name__ == "__main__":
    main()
