"""The generalisation table: every model on every dataset's test split, at the native scale and
with scale-aware inference (the dataset's field angle given, and unknown = estimated).

Usage: python scripts/benchmarks/generalisation.py DATASETS_ROOT --models dpn-drive dpn-stare ...
           [--modes native dataset unknown] [--out docs/results/generalisation.json]

AUC and Se/Sp/Acc/F1 at the model card's threshold, FOV pixels pooled (AV-WIDE: the whole frame).
Rows already in the output file are kept (the file is updated, so runs can be split up).
``--table`` prints the markdown table of docs/results.md from the output file and evaluates nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _provenance import commit, cpu_model
from napari_dpn import metrics
from napari_dpn.datasets import DATASETS, load_split
from napari_dpn.evaluation import predict_samples
from napari_dpn.files import atomic_write
from napari_dpn.models import load_model

TEST_SPLITS = {
    ds: DATASETS[ds].default_split for ds in ("drive", "stare", "chase", "avwide")
}  # the paper's test splits
MODES = {"native": ("native", "dataset"), "dataset": ("auto", "dataset"), "unknown": ("auto", None)}


def markdown(rows: dict, datasets: list[str]) -> str:
    """Model x test set, AUC at native / dataset field angle / estimated scale."""
    models = list(dict.fromkeys(r["model"] for r in rows.values()))
    head = "| model | " + " | ".join(f"{d} native / angle known / estimated" for d in datasets) + " |"
    lines = [head, "|---|" + "---|" * len(datasets)]
    for m in models:
        cells = []
        for d in datasets:
            vals = [rows.get(f"{m}|{d}|{mode}", {}).get("auc") for mode in MODES]
            cells.append(" / ".join("-" if v is None else f"{v:.4f}" for v in vals))
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--models", nargs="+", default=[])
    ap.add_argument("--table", action="store_true", help="print the markdown table of the output file and stop")
    ap.add_argument("--datasets", nargs="+", default=list(TEST_SPLITS))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--out", default="docs/results/generalisation.json")
    args = ap.parse_args()
    out = Path(args.out)
    table = json.loads(out.read_text()) if out.is_file() else {"rows": {}}
    if args.table:
        print(markdown(table["rows"], args.datasets))
        return
    for name in args.models:
        loaded = load_model(name)
        for ds in args.datasets:
            test = load_split(ds, args.root, TEST_SPLITS[ds]).test
            for mode in args.modes:
                scale, angle = MODES[mode]
                t0, scales = time.perf_counter(), []
                probs, gts, fovs, names = predict_samples(
                    loaded, test, precision="fp32", scale=scale, field_angle=angle, scales=scales
                )
                rep = metrics.evaluate(probs, gts, fovs, names=names, train_threshold=loaded.card.threshold)
                pooled = rep["pooled"]
                row = {
                    "model": name,
                    "sha256": loaded.card.sha256,
                    "dataset": ds,
                    "split": TEST_SPLITS[ds],
                    "mode": mode,
                    "auc": round(pooled["auc"], 4),
                    "at_card_threshold": {
                        k: round(pooled["train_threshold"][k], 4) for k in ("threshold", "se", "sp", "acc", "f1")
                    },
                    "per_image_auc": {r["name"]: round(r["auc"], 4) for r in rep["per_image"]},
                    "factors": [round(s.factor, 3) for s in scales],
                    "methods": sorted({s.method for s in scales}),
                    "seconds": round(time.perf_counter() - t0, 1),
                    "commit": commit(),
                    "cpu": cpu_model(),
                }
                table["rows"][f"{name}|{ds}|{mode}"] = row
                print(
                    f"{name:22s} {ds:7s} {mode:8s} AUC {row['auc']:.4f}  F1 {row['at_card_threshold']['f1']:.4f}"
                    f"  factors {min(row['factors']):.2f}-{max(row['factors']):.2f} {row['methods']}",
                    flush=True,
                )
                out.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(out) as tmp:
                    Path(tmp).write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
