"""Reproduce the screenshots of docs/correcting-a-folder.md (docs/images/session-*.png).

    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/figures/screenshot_session.py

napari at 1366x768 (a laptop screen), a folder of three photographs made from the scikit-image
fundus sample (CC0: the original, mirrored, and a crop), "Correct a folder" docked, the shipped
model 'dpn-release-drive' on the CPU.  Shots: the first image with its uncertainty layer; after
*Next uncertain region*; after Next (the prefetched second image).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from screenshots import SCREEN, open_viewer, shot, wait  # noqa: F401


def main(argv=None) -> int:
    from PIL import Image
    from qtpy.QtWidgets import QApplication
    from skimage import data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="session-shots-"))
    rgb = data.retina()
    h, w = rgb.shape[:2]
    for name, img in (
        ("retina-a", rgb),
        ("retina-b", rgb[:, ::-1]),
        ("retina-c", rgb[h // 8 : h - h // 8, w // 8 : w - w // 8]),
    ):
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"{name}.png")
    viewer = open_viewer()
    _, sw = viewer.window.add_plugin_dock_widget("napari-dpn", "Correct a folder", tabify=True)
    sw.select_model("dpn-release-drive")
    sw.device_combo.setCurrentText("cpu")
    sw.folder_edit.setText(str(folder))
    sw.open_clicked()
    wait(sw, 900)
    shot(viewer, args.out / "session-first.png")
    sw.next_uncertain()
    wait(sw)
    shot(viewer, args.out / "session-uncertain.png")
    sw.layers["vessels"].data_setitem((np.array([700]), np.array([700])), 1)
    sw.next()
    wait(sw, 900)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    shot(viewer, args.out / "session-next.png")
    print(sw.status.text())
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
