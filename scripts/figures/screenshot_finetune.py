"""Reproduce the screenshots of docs/fine-tuning.md (docs/images/finetune-*.png).

Run headless under Xvfb from the repository root:

    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/figures/screenshot_finetune.py \
        [--stare /work/shared/datasets]

1. ``finetune-running.png`` (whole window, 1366x768): the scikit-image fundus sample (CC0)
   segmented with the shipped model, specks removed with "Remove specks", then "Fine-tune DPN"
   (tabbed with "Segment vessels") running on it with the live loss plot; the run is cancelled
   after the shot.
2. With ``--stare ROOT``: ``finetune-results.png``, *only the widget panel* after a short
   complete fine-tune of the shipped (DRIVE) model on two STARE images with their manual
   annotations used as the "corrected" masks, validated on two other STARE images (no dataset
   pixels end up in the docs).

Models go to a temporary NAPARI_DPN_MODELS folder, not to the user's models folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def process(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait_until(cond, timeout: float) -> bool:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)
    return cond()


def running_shot(viewer, out: Path, steps_in_shot: int) -> None:
    from screenshots import (  # the Segment widget's helpers
        remove_specks,
        segment_sample,
        shot,
    )

    seg = segment_sample(viewer)
    # Corrections as a user makes them: the small specks removed with 'Remove specks'.
    vessels = viewer.layers["retina vessels"]
    remove_specks(seg, 30)
    vessels.mode = "pan_zoom"
    viewer.layers["retina vessel probability"].visible = False

    dock, w = viewer.window.add_plugin_dock_widget("napari-dpn", "Fine-tune DPN", tabify=True)
    dock.raise_()
    w.select_model("dpn-release-drive")
    w.device_combo.setCurrentText("cpu")
    w.settings.steps_spin.setValue(300)
    w.settings.crop_spin.setValue(128)
    w.settings.name_edit.setText("retina-ft")
    w.settings._on_name_edited("retina-ft")
    w.run()
    ok = wait_until(lambda: w.run_panel.loss_plot.n_steps >= steps_in_shot or not w.is_running, 1800)
    print("steps so far:", w.run_panel.loss_plot.n_steps, ok, w.run_panel.status.text())
    w.run_panel.loss_plot.redraw(force=True)
    w.scroll.ensureWidgetVisible(w.run_panel.log)  # scrolled down to the run, as a user watching it
    viewer.reset_view()
    process(1.0)
    shot(viewer, out / "finetune-running.png")
    w.cancel()
    wait_until(lambda: not w.is_running, 600)
    print(w.results.result_label.text())
    return w


def results_shot(viewer, w, out: Path, root: Path, steps: int) -> None:
    from napari_dpn._napari import _roles
    from napari_dpn.datasets import list_samples

    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    samples = list_samples("stare", root)
    train, val = samples[:2], samples[2:4]
    for s, role in [(s, "train") for s in train] + [(s, "val") for s in val]:
        rgb, gt, fov = s.load()
        name = s.name
        viewer.add_image((rgb * 255).astype(np.uint8), name=name, rgb=True, visible=False)
        labels_name = _roles.vessels_name(name) if role == "train" else _roles.ground_truth_name(name)
        # The manual annotations of the training images stand in for corrected masks.
        meta = (
            _roles.meta("vessels", image=name, corrected=True)
            if role == "train"
            else _roles.meta("ground_truth", image=name)
        )
        viewer.add_labels(gt.astype(np.uint8), name=labels_name, visible=False, metadata=meta)
        viewer.add_labels(
            fov.astype(np.uint8),
            name=_roles.fov_name(name),
            visible=False,
            metadata=_roles.meta("fov", image=name, source="file"),
        )
    w.select_model("dpn-release-drive")
    w.settings.steps_spin.setValue(steps)
    w.settings.crop_spin.setValue(128)
    w.settings.name_edit.setText("dpn-release-drive-stare-ft")
    w.settings._on_name_edited("dpn-release-drive-stare-ft")
    w.run_panel.loss_plot.every_steps = 1
    w.run()
    wait_until(lambda: not w.is_running, 3600)
    print(w.run_panel.status.text())
    print(w.results.result_label.text())
    print(w.results.table_values())
    process(1.0)
    path = out / "finetune-results.png"
    w.body.grab().save(str(path))  # the whole panel, not only the scrolled part
    print("wrote", path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--stare", type=Path, default=None, help="dataset root holding STARE/")
    ap.add_argument("--shot-at", type=int, default=40, help="steps done when the running shot is taken")
    ap.add_argument("--steps", type=int, default=100, help="steps of the STARE run")
    ap.add_argument("--skip-running", action="store_true", help="only the STARE results panel")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["NAPARI_DPN_MODELS"] = tempfile.mkdtemp(prefix="napari-dpn-models-")

    import warnings

    warnings.filterwarnings("ignore")  # no deprecation toasts in the pictures
    from screenshots import open_viewer

    viewer = open_viewer()
    if args.skip_running:
        _, w = viewer.window.add_plugin_dock_widget("napari-dpn", "Fine-tune DPN")
        w.device_combo.setCurrentText("cpu")
    else:
        w = running_shot(viewer, args.out, args.shot_at)
    if args.stare is not None:
        results_shot(viewer, w, args.out, args.stare, args.steps)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
