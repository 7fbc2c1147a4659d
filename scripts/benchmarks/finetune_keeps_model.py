"""Issue #20 items 2-4: does a fine-tuned model keep its base's working scale, fusion and threshold
rule, and is it at least as good as its base where it is used as ``segment`` uses it?

Usage: python scripts/benchmarks/finetune_keeps_model.py DATASETS_ROOT [--steps 50] [--drive-steps 10]
           [--paths cli session widget] [--out docs/results/finetune_keeps_model.json]

Part 1 (CHASE_DB1): dpn-universal fine-tuned on the first 3 training images of the paper's split
(1st observer's labels, saved as ``<image>_vessels.png`` beside the photographs), ``--steps`` steps,
through each user path: ``napari-dpn train --images`` (the CLI), ``Session.finetune`` (the folder
session's "Fine-tune on saved") and the Fine-tune DPN widget (a real napari viewer, offscreen).
All three build their settings with ``training.finetune_config``.  For each new card: its scale
block and fusion against the base's, its threshold rule, the scale the training images were
resampled to; and F1 at the card's threshold (Se, Sp, Acc, AUC too) on the 8 test images of the
split, segmented as ``napari-dpn segment`` does by default (scale auto: FOV / the 45 degree
guess; the card's fusion), pooled inside the FOV; the base the same way.

Part 2 (DRIVE): ``napari-dpn train --images X --labels Y --steps 10`` on 3 DRIVE training
photographs and their manual labels under DRIVE's own names (``21_training.tif``,
``21_manual1.gif``), copied into a temporary folder, no ``--init``: the AUC of the result on the
20 DRIVE test images, segmented as ``segment`` does.

CPU use is kept to one thread (torch.set_num_threads(1), ``--threads 1``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _provenance import write_report


def _evaluate(model, samples) -> dict:
    """Pooled metrics of ``model`` on ``samples`` at its card threshold, segmented as ``segment`` does."""
    from napari_dpn import metrics
    from napari_dpn.models import load_model
    from napari_dpn.segmentation import segment

    loaded = load_model(model, device="cpu")
    probs, gts, fovs = [], [], []
    t0 = time.perf_counter()
    for s in samples:
        rgb, gt, fov = s.load()
        seg = segment(loaded, rgb, device="cpu")  # the CLI's defaults: scale auto, fusion auto
        probs.append(seg.probability)
        gts.append(gt)
        fovs.append(fov)
    rep = metrics.evaluate(probs, gts, fovs, names=[s.name for s in samples], train_threshold=loaded.card.threshold)
    at = rep["pooled"]["train_threshold"]
    return {
        "model": loaded.card.name,
        "threshold": loaded.card.threshold,
        "auc": round(rep["pooled"]["auc"], 4),
        **{k: round(at[k], 4) for k in ("se", "sp", "acc", "f1")},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _claims(card, base) -> dict:
    """What the new card says against what its base says and what its training did."""
    scales = card.training.get("image_scales") or []
    keys = ("working_ppd", "trained_ppd", "fusion")
    return {
        "name": card.name,
        "base_model": card.base_model,
        "scale": {k: card.scale.get(k) for k in (*keys, "source", "vessel_calibre_px")},
        "base_scale": {k: base.scale.get(k) for k in keys},
        "keeps_working_ppd": card.scale.get("working_ppd") == base.scale.get("working_ppd"),
        "keeps_fusion": card.scale.get("fusion") == base.scale.get("fusion"),
        "threshold": card.threshold,
        "threshold_rule": card.threshold_rule,
        "settings_threshold_rule": card.training["settings"]["threshold_rule"],
        "base_threshold_rule": base.threshold_rule,
        "settings_scale": card.training["settings"]["scale"],
        "image_scales": scales,
        "training_seconds": card.training.get("seconds"),
    }


def _chase_folder(samples, folder: Path) -> Path:
    from napari_dpn.annotations import annotation_paths
    from napari_dpn.image_writers import write_mask

    folder.mkdir(parents=True, exist_ok=True)
    for s in samples:
        photo = folder / s.image_path.name
        shutil.copy(s.image_path, photo)
        _, gt, fov = s.load()
        vessels, fov_path = annotation_paths(photo)
        write_mask(vessels, gt, on_value=255)
        write_mask(fov_path, fov, on_value=255)
    return folder


def _cli(folder: Path, out: Path, steps: int, extra=()) -> Path:
    from napari_dpn.cli import main

    name = f"cli-{folder.name}"
    args = ["train", "--images", str(folder), "--steps", str(steps), "--out", str(out), "--name", name]
    rc = main([*args, "--threads", "1", "--device", "cpu", "--quiet", *extra])
    if rc != 0:
        raise SystemExit(f"train failed (rc {rc})")
    return out / f"{name}.safetensors"


def _session(folder: Path, out: Path, steps: int) -> Path:
    from napari_dpn.session import Session

    result = Session.open(folder).finetune("dpn-universal", steps=steps, name="session-ft", device="cpu", out_dir=out)
    return result.model_path


def _widget(folder: Path, out: Path, steps: int) -> Path:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["NAPARI_DPN_MODELS"] = str(out)
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_dpn._napari._finetune_widget import FinetuneWidget

    viewer = napari.Viewer(show=False)
    w = FinetuneWidget(viewer)
    try:
        w.select_model("dpn-universal")
        w.device_combo.setCurrentText("cpu")
        w.settings.steps_spin.setValue(steps)
        w.settings.crop_spin.setValue(512)  # the CLI's and the session's crop for these images
        w.settings.lr_edit.setText("1e-4")
        w.settings.name_edit.setText("widget-ft")
        w.settings._on_name_edited("widget-ft")
        w._confirm = lambda *a, **k: True
        w.pairs.set_train_folder(folder)
        if w.run() is None:
            raise SystemExit(f"the widget did not start: {w.state.last_error}")
        while w.is_running:
            QApplication.processEvents()
            time.sleep(0.05)
        res = w.state.run.result
        if res is None or res.model_path is None:
            raise SystemExit(f"the widget's run failed: {w.state.last_error}")
        return res.model_path
    finally:
        viewer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--drive-steps", type=int, default=10)
    ap.add_argument("--paths", nargs="+", default=["cli", "session", "widget"])
    ap.add_argument("--skip-drive", action="store_true")
    ap.add_argument("--skip-chase", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("docs/results/finetune_keeps_model.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from napari_dpn.datasets import load_split
    from napari_dpn.models import load_model

    base = load_model("dpn-universal", device="cpu").card
    report = {"base": base.name, "steps": args.steps}
    work = Path(tempfile.mkdtemp(prefix="ft-keeps-"))
    try:
        if not args.skip_chase:
            split = load_split("chase", args.root)
            train, test = split.train[:3], split.test
            report["chase"] = {"train": [s.name for s in train], "test": [s.name for s in test]}
            t0 = time.perf_counter()
            report["chase"]["base"] = _evaluate("dpn-universal", test)
            print("base", report["chase"]["base"], flush=True)
            for path in args.paths:
                folder = _chase_folder(train, work / path / "photos")
                out = work / path / "models"
                made = {"cli": _cli, "session": _session, "widget": _widget}[path](folder, out, args.steps)
                card = load_model(made, device="cpu").card
                entry = _claims(card, base)
                entry["test"] = _evaluate(made, test)
                entry["f1_change"] = round(entry["test"]["f1"] - report["chase"]["base"]["f1"], 4)
                report["chase"][path] = entry
                print(path, entry["test"], entry["f1_change"], flush=True)
            report["chase"]["seconds"] = round(time.perf_counter() - t0, 1)
        if not args.skip_drive:
            split = load_split("drive", args.root)
            images, labels = work / "drive" / "images", work / "drive" / "labels"
            images.mkdir(parents=True)
            labels.mkdir(parents=True)
            for s in split.train[:3]:
                shutil.copy(s.image_path, images / s.image_path.name)
                shutil.copy(s.label_path, labels / s.label_path.name)
            from napari_dpn.cli import main as cli_main

            out = work / "drive" / "models"
            cmd = ["train", "--images", str(images), "--labels", str(labels), "--steps", str(args.drive_steps)]
            rc = cli_main(
                [*cmd, "--out", str(out), "--name", "drive-ft", "--threads", "1", "--device", "cpu", "--quiet"]
            )
            if rc != 0:
                raise SystemExit(f"train failed (rc {rc})")
            card = load_model(out / "drive-ft.safetensors", device="cpu").card
            report["drive"] = {
                "command": "napari-dpn " + " ".join(cmd[:1] + ["--images", "X", "--labels", "Y", *cmd[5:]]),
                "files": sorted(p.name for p in images.iterdir()) + sorted(p.name for p in labels.iterdir()),
                "base_model": card.base_model,
                "claims": _claims(card, base),
                "test": _evaluate(out / "drive-ft.safetensors", split.test),
                "base_test": _evaluate("dpn-universal", split.test),
            }
            print("drive", report["drive"]["test"], report["drive"]["base_test"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["note"] = "pooled inside the FOV; Se, Sp, Acc, F1 at each model's own card threshold"
    print(write_report(args.out, report))


if __name__ == "__main__":
    main()
