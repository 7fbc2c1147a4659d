"""Copy a trained model into weights/ with its measured test metrics in the model card.

Usage: python scripts/release/ship_model.py runs/NAME/NAME.safetensors --eval-json docs/results/X.json \
           --dataset-terms "STARE: research use; cite Hoover et al. 2000" \
           [--name SHIPPED_NAME] [--hardware "1x NVIDIA H200, torch 2.11"] [--description TEXT]

The metrics come from ``napari-dpn evaluate --json`` on the model's test split, or, for a model
trained on several datasets, from ``scripts/benchmarks/generalisation.py``'s rows for it
(``--generalisation docs/results/generalisation.json``: every test split, scale-aware with the
dataset's field angle; ``auc`` is the first dataset's). The card keeps how its threshold was
chosen (on the training images) and the training record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_dpn.models import load_model, save_model

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--eval-json")
    src.add_argument("--generalisation", metavar="JSON", help="rows of scripts/benchmarks/generalisation.py")
    ap.add_argument("--row-model", help="with --generalisation: the model name of the rows (default: --name)")
    ap.add_argument("--dataset-terms", default="")
    ap.add_argument("--name", help="ship under this name (default: the trained name)")
    ap.add_argument("--hardware", help="what it was trained on, in words (the card records only the device type)")
    ap.add_argument("--description", help="replace the card's one-line description")
    args = ap.parse_args()
    loaded = load_model(args.weights)
    card = loaded.card
    if args.generalisation:
        card.metrics = generalisation_metrics(Path(args.generalisation), args.row_model or args.name or card.name)
    else:
        card.metrics = evaluate_metrics(Path(args.eval_json), args.name or card.name)
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


def generalisation_metrics(path: Path, model: str) -> dict:
    rows = [r for r in json.loads(path.read_text())["rows"].values() if r["model"] == model and r["mode"] == "dataset"]
    if not rows:
        raise SystemExit(f"no scale-aware rows for {model} in {path}")
    first = rows[0]
    return {
        "dataset": f"{first['dataset']} split {first['split']} test images, FOV pixels pooled, scale-aware "
        "(the dataset's field angle)",
        "auc": first["auc"],
        "per_dataset": {
            r["dataset"]: {"split": r["split"], "auc": r["auc"], "at_card_threshold": r["at_card_threshold"]}
            for r in rows
        },
        "command": f"python scripts/benchmarks/generalisation.py DATASETS --models {model}",
    }


def evaluate_metrics(path: Path, name: str) -> dict:
    res = json.loads(path.read_text())
    meta, pooled = res.get("meta", {}), res["pooled"]
    return {
        "dataset": f"{meta.get('dataset', '?')} split {meta.get('split', '?')}, {meta.get('n_test', '?')} test images, FOV pixels pooled",
        "auc": round(pooled["auc"], 4),
        "per_image_auc_mean": round(res["per_image_summary"]["auc"]["mean"], 4),
        **{
            rule: {k: round(v, 4) for k, v in pooled[rule].items() if isinstance(v, float)}
            for rule in ("train_threshold", "youden", "max_acc")
            if pooled.get(rule)
        },
        "command": f"napari-dpn evaluate --dataset {meta.get('dataset')} --split {meta.get('split')} --model {name}",
    }


if __name__ == "__main__":
    main()
