"""Copy a trained model into weights/ with its measured test metrics in the model card.

Usage: python scripts/ship_model.py runs/NAME/NAME.safetensors --eval-json docs/results/X.json \
           --dataset-terms "STARE: research use; cite Hoover et al. 2000" \
           [--name SHIPPED_NAME] [--hardware "1x NVIDIA H200, torch 2.11"] [--description TEXT]

The metrics come from ``napari-dpn evaluate --json`` on the model's test split; the card keeps
how its threshold was chosen (on the training images) and the training record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_dpn.models import load_model, save_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--eval-json", required=True)
    ap.add_argument("--dataset-terms", default="")
    ap.add_argument("--name", help="ship under this name (default: the trained name)")
    ap.add_argument("--hardware", help="what it was trained on, in words (the card records only the device type)")
    ap.add_argument("--description", help="replace the card's one-line description")
    args = ap.parse_args()
    loaded = load_model(args.weights)
    card = loaded.card
    res = json.loads(Path(args.eval_json).read_text())
    meta, pooled = res.get("meta", {}), res["pooled"]
    card.metrics = {
        "dataset": f"{meta.get('dataset', '?')} split {meta.get('split', '?')}, {meta.get('n_test', '?')} test images, FOV pixels pooled",
        "auc": round(pooled["auc"], 4),
        "per_image_auc_mean": round(res["per_image_summary"]["auc"]["mean"], 4),
        **{
            rule: {k: round(v, 4) for k, v in pooled[rule].items() if isinstance(v, float)}
            for rule in ("train_threshold", "youden", "max_acc")
            if pooled.get(rule)
        },
        "command": f"napari-dpn evaluate --dataset {meta.get('dataset')} --split {meta.get('split')} "
        f"--model {args.name or card.name}",
    }
    if not card.licence:  # trained here from scratch: our own weights, under the code's licence
        card.licence = "BSD-3-Clause (napari-dpn's own training)"
    if args.dataset_terms:
        card.licence += f"; trained on {args.dataset_terms}"
    if args.name:
        card.training["trained_as"] = card.name
        card.name = args.name
    if args.hardware:
        card.training["hardware"] = args.hardware
    if args.description:
        card.description = args.description
    card.extra.pop("path", None)
    out = save_model(loaded.model, card, ROOT / "weights" / f"{card.name}.safetensors")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
