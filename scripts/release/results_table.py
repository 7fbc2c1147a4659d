"""Markdown rows for docs/results.md from the JSON files of ``napari-dpn evaluate``.

Usage: python scripts/release/results_table.py docs/results/*.json
"""

import json
import sys
from pathlib import Path

RULES = [
    ("train_threshold", "threshold chosen on training images (max. accuracy)"),
    ("youden", "ROC point, max Se+Sp-1 (test set)"),
    ("max_acc", "max. accuracy (test set; the paper's rows)"),
]


def rows(path: Path) -> list[str]:
    res = json.loads(path.read_text())
    meta = res.get("meta", {})
    pooled = res["pooled"]
    auc = res["per_image_summary"]["auc"]
    out = []
    for rule, label in RULES:
        e = pooled.get(rule)
        if not e:
            continue
        if rule == "train_threshold":
            label = "threshold from the " + res.get("train_threshold_source", "training images")
        out.append(
            f"| {meta.get('model', path.stem)} | {label}, t={e['threshold']:.3f} | {e['se']:.4f} | {e['sp']:.4f} | "
            f"{e['acc']:.4f} | {pooled['auc']:.4f} | {e['f1']:.4f} |"
        )
    out.append(
        f"| | per-image AUC mean / min / max | | | | {auc['mean']:.4f} / {auc['min']:.4f} / {auc['max']:.4f} | |"
    )
    return out


def main() -> None:
    print("| model | threshold rule | Se | Sp | Acc | AUC | F1 |")
    print("|---|---|---|---|---|---|---|")
    for p in sys.argv[1:]:
        print("\n".join(rows(Path(p))))


if __name__ == "__main__":
    main()
