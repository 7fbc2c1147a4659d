"""Convert the official DPN release's DRIVE caffemodel into weights/dpn-release-drive.*

Usage: python scripts/release/import_release_weights.py [CAFFEMODEL] [--eval-json FILE]

The measured metrics and the recommended threshold in the card come from
``napari-dpn evaluate --dataset drive --json FILE`` (pass that file with --eval-json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_dpn.convert import RELEASE_INPUT, import_caffe
from napari_dpn.models import ModelCard, file_sha256

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("caffemodel", nargs="?", default=str(ROOT.parent / "shared/reference/dpn-release-drive.caffemodel"))
    ap.add_argument("--eval-json", default=None)
    args = ap.parse_args()
    card = ModelCard(
        name="dpn-release-drive",
        architecture="dpn-release",
        description="Official DPN release, trained by its authors on the 20 DRIVE training images",
        input=dict(RELEASE_INPUT),
        base_model=None,
        training={
            "data": "DRIVE training set (20 images, 1st observer)",
            "by": "the authors of DPN, with Caffe (official release)",
            "source": "github.com/guomugong/DPN @ 38e5abdb1c2cb620b708f546026f4df4feb3a9f0, snapshot/drive_pretrain.caffemodel",
            "source_sha256": file_sha256(args.caffemodel),
            "converted_with": "napari-dpn import-caffe (scripts/release/import_release_weights.py)",
        },
        licence="Anti 996 (as stated by the official repository; permissive, keep the attribution)",
        attribution="Song Guo, 'DPN: Detail-Preserving Network with High Resolution Representation for "
        "Efficient Segmentation of Retinal Vessels' (official release guomugong/DPN)",
    )
    if args.eval_json:
        res = json.loads(Path(args.eval_json).read_text())
        pooled = res["pooled"]
        card.threshold = round(float(pooled["train_threshold"]["threshold"]), 4)
        card.threshold_rule = "accuracy-maximising point on the 20 DRIVE training images, FOV pixels pooled"
        card.metrics = {
            "dataset": "DRIVE test (20 images, 1st observer, official FOV masks, pooled)",
            "auc": round(pooled["auc"], 4),
            **{
                rule: {k: round(v, 4) for k, v in pooled[rule].items() if isinstance(v, float)}
                for rule in ("train_threshold", "youden", "max_acc")
            },
        }
    out = import_caffe(args.caffemodel, ROOT / "weights" / "dpn-release-drive.safetensors", card=card)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
