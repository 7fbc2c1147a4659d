"""Record in each shipped model card the scale it works at (scale.py), measured on its training data.

Usage: python scripts/release/fill_scale_cards.py DATASETS_ROOT [MODEL ...]

``working_ppd``: the mean FOV diameter of the training dataset (its masks; CHASE_DB1's estimated)
over the dataset's field angle.  ``vessel_calibre_px``: the model's own thickest-vessel width on up
to 8 training images at that scale (``segmentation.vessel_calibre``), the reference of the
calibre estimate for photographs without a circular FOV.  Rewrites the embedded card and the JSON
beside it; the tensors are untouched.
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
