"""How much does a map lose when the photograph comes from another camera? Simulated camera shifts.

Usage: python scripts/benchmarks/camera_shift.py DATASETS_ROOT [--models dpn-universal dpn-drive ...]
           [--datasets drive chase] [--shifts ...] [--out docs/results/camera_shift.json] [--table]

Rows are keyed by model name and the first 8 hex digits of its weights' sha256 (two versions of a
model can stand side by side); rows already in the output file are kept. ``--table`` prints the
markdown table of docs/results.md from the output file and evaluates nothing.

Each test photograph is changed the way another camera, another exposure or another file format
changes it (below), then segmented as a user gets it: ``segmentation.segment`` with its defaults
(FOV estimated from the changed photograph, scale auto with no field angle given, the model card's
fusion). AUC is pooled over the dataset's own FOV mask, as in the paper. The shifts are fixed and
seeded (the same photographs for every model); none of them is the training augmentation's code.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _provenance import write_report
from napari_dpn import metrics
from napari_dpn.datasets import DATASETS, load_split
from napari_dpn.image_io import as_rgb
from napari_dpn.models import load_model
from napari_dpn.segmentation import segment

TEST_SPLITS = {ds: DATASETS[ds].default_split for ds in ("drive", "stare", "chase")}  # the paper's test splits


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32) / 255


def _vignette(rgb: np.ndarray, edge: float) -> np.ndarray:
    """Light falling off towards the edge of the FOV to ``edge`` of the centre's."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2) / (0.5 * max(h, w))
    return rgb * (1 - (1 - edge) * np.clip(r, 0, 1) ** 2)[..., None]


def _noise(rgb: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    return rgb + np.random.default_rng(seed).normal(0, sigma, rgb.shape).astype(np.float32)


SHIFTS = {
    "none": lambda x, s: x,
    "darker x0.5": lambda x, s: x * 0.5,
    "brighter x1.6": lambda x, s: x * 1.6,
    "gamma 0.6": lambda x, s: np.clip(x, 0, 1) ** 0.6,
    "gamma 1.6": lambda x, s: np.clip(x, 0, 1) ** 1.6,
    "warm cast (R x1.2, B x0.6)": lambda x, s: x * np.array([1.2, 1.0, 0.6], np.float32),
    "cool cast (R x0.8, B x1.4)": lambda x, s: x * np.array([0.8, 1.0, 1.4], np.float32),
    "defocus (blur sigma 1.5)": lambda x, s: ndi.gaussian_filter(x, (1.5, 1.5, 0)),
    "sensor noise (sigma 0.01)": lambda x, s: _noise(x, 0.01, s),
    "sensor noise (sigma 0.02)": lambda x, s: _noise(x, 0.02, s),
    "sensor noise (sigma 0.04)": lambda x, s: _noise(x, 0.04, s),
    "JPEG quality 85": lambda x, s: _jpeg(x, 85),
    "JPEG quality 60": lambda x, s: _jpeg(x, 60),
    "JPEG quality 30": lambda x, s: _jpeg(x, 30),
    "vignetting (edge 50 %)": lambda x, s: _vignette(x, 0.5),
    "greyscale (red-free print)": lambda x, s: np.repeat(x[..., 1:2], 3, axis=2),
}


def shifted_auc(loaded, samples, shift: str) -> tuple[float, list[str], float]:
    """Pooled FOV AUC of ``loaded`` on ``samples`` ((rgb, gt, fov) triples) changed by ``shift``,
    segmented with ``segment``'s defaults; also the fallback notes and the seconds taken."""
    t0, probs, gts, fovs, notes = time.perf_counter(), [], [], [], set()
    for i, (rgb, gt, fov) in enumerate(samples):
        changed = np.clip(SHIFTS[shift](as_rgb(rgb), i), 0, 1).astype(np.float32)
        seg = segment(loaded, changed, precision="fp32")
        probs.append(seg.probability)
        gts.append(np.asarray(gt, bool))
        fovs.append(np.asarray(fov, bool))
        if seg.scale.method == "fallback":
            notes.add(seg.scale.note)
    return round(metrics.auc(probs, gts, fovs), 4), sorted(notes), round(time.perf_counter() - t0, 1)


def markdown(rows: dict) -> str:
    """Shift x (model, dataset): AUC, and its change against the unchanged photographs."""
    cols = list(dict.fromkeys((r["label"], r["dataset"]) for r in rows.values()))
    shifts = list(dict.fromkeys(r["shift"] for r in rows.values()))
    lines = ["| shift | " + " | ".join(f"`{m}` {d}" for m, d in cols) + " |", "|---|" + "---|" * len(cols)]
    for shift in shifts:
        cells = []
        for m, d in cols:
            row, base = rows.get(f"{m}|{d}|{shift}"), rows.get(f"{m}|{d}|none")
            if row is None:
                cells.append("-")
            elif shift == "none" or base is None:
                cells.append(f"{row['auc']:.4f}")
            else:
                cells.append(f"{row['auc']:.4f} ({row['auc'] - base['auc']:+.4f})")
        lines.append(f"| {shift} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--models", nargs="+", default=["dpn-universal", "dpn-drive", "dpn-release-drive"])
    ap.add_argument("--datasets", nargs="+", default=["drive", "chase"], choices=list(TEST_SPLITS))
    ap.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=list(SHIFTS))
    ap.add_argument("--out", default="docs/results/camera_shift.json")
    ap.add_argument("--table", action="store_true", help="print the markdown table of the output file and stop")
    args = ap.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else {}
    if args.table:
        print(markdown(rows))
        return
    for name in args.models:
        loaded = load_model(name)
        label = f"{loaded.card.name}@{(loaded.card.sha256 or '')[:8]}"
        for ds in args.datasets:
            samples = [s.load() for s in load_split(ds, args.root, TEST_SPLITS[ds]).test]
            for shift in args.shifts:
                auc, notes, seconds = shifted_auc(loaded, samples, shift)
                rows[f"{label}|{ds}|{shift}"] = {
                    "label": label,
                    "model": name,
                    "sha256": loaded.card.sha256,
                    "dataset": ds,
                    "shift": shift,
                    "auc": auc,
                    "fallbacks": notes,
                    "seconds": seconds,
                }
                print(f"{label:20s} {ds:6s} {shift:28s} AUC {auc:.4f}", *notes, flush=True)
                write_report(out, {"precision": "fp32", "scale": "auto, no field angle", "rows": rows})
    print("wrote", out)


if __name__ == "__main__":
    main()
