"""What is each part of the any-camera augmentation worth? Short training runs, one part left out each.

Usage: python scripts/benchmarks/augment_ablation.py DATASETS_ROOT [--steps 1500] [--variants ...]
           [--runs runs/ablation] [--out docs/results/augment_ablation.json] [--table]

Every variant fine-tunes the same start (``dpn-drive``, the paper's recipe on DRIVE alone, which never
saw the any-camera augmentation) for the same steps on the training images of DRIVE, STARE,
CHASE_DB1 and AV-WIDE at 12 px/deg, exactly as ``dpn-universal`` was trained (``napari-dpn train
... --augment-mode robust --clahe``), with ``--augment-off`` leaving out one part
(``augment.AUGMENT_PARTS``), all of them (``none``) or nothing (``all``). The parts left out
still draw their random numbers, so the variants see the same crops and differ in one part only.
Each model is then measured as ``camera_shift.py`` measures: the DRIVE and CHASE_DB1 test photographs,
unchanged and under five camera shifts, segmented with ``segment``'s defaults (no field angle:
CHASE_DB1, a 30° camera, is then 1.5x off the working scale, which tests the scale jitter).

Short runs measure how fast each part teaches robustness from a DRIVE-only start, not the value it
ends at after 45,000 steps; differences of a few 0.001 are within one run's noise. Trained models
and checkpoints stay in ``--runs``; a variant already trained is evaluated only, one half-trained
resumes. ``--table`` prints the markdown table of docs/results.md from the output file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from camera_shift import TEST_SPLITS, shifted_auc

from _provenance import write_report
from napari_dpn.augment import AUGMENT_PARTS
from napari_dpn.datasets import load_split
from napari_dpn.models import load_model

VARIANTS = {"all": (), **{f"no-{p}": (p,) for p in AUGMENT_PARTS}, "none": tuple(AUGMENT_PARTS)}
SHIFTS = (
    "none",
    "darker x0.5",
    "gamma 1.6",
    "defocus (blur sigma 1.5)",
    "sensor noise (sigma 0.02)",
    "JPEG quality 60",
)
DATASETS = ("drive", "chase")


def train_variant(root: str, variant: str, steps: int, runs: Path, init: str) -> Path:
    """Train (or resume, or find) one variant; return its weights."""
    name = f"ablation-{variant}"
    weights, ckpt = runs / f"{name}.safetensors", runs / f"{name}.ckpt.pt"
    if weights.is_file():
        return weights
    cmd = [sys.executable, "-m", "napari_dpn.cli", "train", "--dataset", "drive,stare,chase,avwide"]
    cmd += ["--root", root, "--working-ppd", "12", "--augment-mode", "robust", "--clahe", "--crop", "256"]
    cmd += ["--steps", str(steps), "--lr", "5e-4", "--val", "none", "--checkpoint-every", "500"]
    cmd += ["--log-every", "500", "--quiet", "--device", "cpu", "--threads", "1", "--threshold-rule", "max_acc"]
    cmd += ["--out", str(runs), "--name", name, "--overwrite"]
    if VARIANTS[variant]:
        cmd += ["--augment-off", ",".join(VARIANTS[variant])]
    cmd += ["--resume", str(ckpt)] if ckpt.is_file() else ["--init", init]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return weights


def markdown(rows: dict) -> str:
    """One table per dataset: variant x (AUC unchanged, its change under each shift, the mean change)."""
    variants = list(dict.fromkeys(r["variant"] for r in rows.values()))
    tables = []
    for ds in DATASETS:
        lines = [
            f"| {ds}: left out | unchanged | " + " | ".join(SHIFTS[1:]) + " | mean change |",
            "|---|" + "---|" * (len(SHIFTS) + 1),
        ]
        for variant in variants:
            got = {r["shift"]: r["auc"] for r in rows.values() if r["variant"] == variant and r["dataset"] == ds}
            clean = got.get("none")
            if clean is None:
                continue
            changes = [got[s] - clean if s in got else None for s in SHIFTS[1:]]
            known = [c for c in changes if c is not None]
            cells = [f"{clean:.4f}"] + [f"{c:+.4f}" if c is not None else "-" for c in changes]
            cells.append(f"{sum(known) / len(known):+.4f}" if known else "-")
            label = "nothing (all parts)" if variant == "all" else variant.removeprefix("no-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--init", default="dpn-drive")
    ap.add_argument("--runs", default="runs/ablation")
    ap.add_argument("--out", default="docs/results/augment_ablation.json")
    ap.add_argument("--table", action="store_true", help="print the markdown table of the output file and stop")
    args = ap.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else {}
    if args.table:
        print(markdown(rows))
        return
    runs = Path(args.runs)
    samples = {ds: [s.load() for s in load_split(ds, args.root, TEST_SPLITS[ds]).test] for ds in DATASETS}
    for variant in args.variants:
        loaded = load_model(train_variant(args.root, variant, args.steps, runs, args.init))
        for ds in DATASETS:
            for shift in SHIFTS:
                auc, notes, seconds = shifted_auc(loaded, samples[ds], shift)
                rows[f"{variant}|{ds}|{shift}"] = {
                    "variant": variant,
                    "augment_off": list(VARIANTS[variant]),
                    "sha256": loaded.card.sha256,
                    "steps": loaded.card.training.get("steps"),
                    "dataset": ds,
                    "shift": shift,
                    "auc": auc,
                    "fallbacks": notes,
                    "seconds": seconds,
                }
                print(f"{variant:12s} {ds:6s} {shift:28s} AUC {auc:.4f}", *notes, flush=True)
                write_report(
                    out, {"precision": "fp32", "scale": "auto, no field angle", "init": args.init, "rows": rows}
                )
    print(markdown(rows))


if __name__ == "__main__":
    main()
