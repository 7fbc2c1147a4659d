"""Reproduce the screenshots of docs/user-guide.md (docs/images/*.png).

Run headless under Xvfb from the repository root:

    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/figures/screenshots.py

It opens napari at 1366x768 (a laptop screen), loads the scikit-image fundus sample (CC0),
docks "Segment vessels", segments with the shipped model 'dpn-release-drive' on the CPU, makes
a few corrections the way a user would (Remove specks, a brush stroke), and saves full-window
screenshots.  With ``--drive DRIVE/test`` it also
segments the first DRIVE test image and saves *only the widget panel* with its metrics (no
dataset pixels end up in the docs: DRIVE may not be redistributed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SCREEN = (1366, 768)  # the laptop screen the widgets are laid out for


def wait(widget, timeout=600.0):
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while getattr(widget, "busy", widget.is_running) and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)


def shot(viewer, path: Path) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print("wrote", path)


def stroke(layer, points, label, size):
    """A brush stroke through ``points`` (y, x), as one undoable step."""
    layer.brush_size = size
    pts = np.asarray(points, float)
    dense = []
    for a, b in zip(pts[:-1], pts[1:]):
        n = int(np.ceil(np.hypot(*(b - a)))) + 1
        dense += list(np.linspace(a, b, n))
    with layer.block_history():
        for p in dense:
            layer.paint(p, label)


def segment_sample(viewer):
    """Open the scikit-image fundus sample and segment it with the shipped model on the CPU in a
    docked "Segment vessels" (both screenshot scripts start so); returns the widget."""
    viewer.open_sample("napari-dpn", "retina")
    _, w = viewer.window.add_plugin_dock_widget("napari-dpn", "Segment vessels", tabify=True)
    w.select_model("dpn-release-drive")
    w.device_combo.setCurrentText("cpu")
    w.run()
    wait(w)
    print(w.status.text())
    return w


def remove_specks(widget, max_area: int) -> None:
    """Press 'Remove specks' with pieces under ``max_area`` pixels, as a user does."""
    from qtpy.QtWidgets import QApplication

    widget.speck_spin.setValue(max_area)
    widget.remove_specks()
    end = time.monotonic() + 120
    while widget.busy and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)
    print(widget.edit_status.text())


def open_viewer():
    import napari

    viewer = napari.Viewer(title="napari-dpn")
    viewer.window._qt_window.resize(*SCREEN)
    return viewer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument(
        "--drive",
        type=Path,
        default=None,
        help="a DRIVE folder (e.g. /work/shared/datasets/DRIVE/test) for the metrics panel",
    )
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import warnings

    warnings.filterwarnings("ignore")  # no deprecation toasts in the pictures
    viewer = open_viewer()
    w = segment_sample(viewer)

    prob = viewer.layers["retina vessel probability"]
    vessels = viewer.layers["retina vessels"]

    # 1. the widget docked, whole result
    viewer.reset_view()
    shot(viewer, args.out / "segment-widget.png")

    # 2. the probability map alone, zoomed on the optic disc
    vessels.visible = False
    viewer.layers["retina"].visible = False
    viewer.camera.center = (700, 1050)
    viewer.camera.zoom = 1.6
    shot(viewer, args.out / "probability-map.png")

    # 3. corrections over the image: 'Remove specks' erases the small isolated pieces, and a
    #    short missed piece is painted with the brush
    viewer.layers["retina"].visible = True
    prob.visible = False
    vessels.visible = True
    viewer.layers.selection.active = vessels
    remove_specks(w, 40)
    vessels.mode = "paint"
    stroke(vessels, [(760, 930), (800, 960), (840, 975)], 1, 3)
    viewer.camera.center = (720, 980)
    viewer.camera.zoom = 2.4
    shot(viewer, args.out / "corrections.png")

    if args.drive is not None:
        for layer in list(viewer.layers):
            viewer.layers.remove(layer)
        viewer.open(str(args.drive), plugin="napari-dpn")
        w.refresh_layers()
        w.run()
        wait(w)
        print(w.metrics_label.text())
        from qtpy.QtWidgets import QApplication

        for _ in range(10):
            QApplication.processEvents()
        path = args.out / "metrics-panel.png"
        w.grab().save(str(path))
        print("wrote", path)

    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
