"""Lossless, smaller copy of DRIVE / STARE / CHASE_DB1 in the same layout, to carry to a GPU machine.

    python scripts/training/compact_datasets.py DATASETS_ROOT OUT_DIR [drive stare chase]

TIFF and PPM/PGM images become PNG (the loaders find any supported suffix); GIF, JPEG and PNG
files are copied as they are.  Every converted file is read back and compared with the original
pixel for pixel.  The datasets' terms still apply to the copy: keep it out of the repository
(`.devdata/` is git-ignored for this use).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from napari_dpn.image_io import read_image

FOLDERS = {"drive": "DRIVE", "stare": "STARE", "chase": "CHASE_DB1"}
CONVERT = {".tif", ".tiff", ".ppm", ".pgm"}


def compact(src: Path, dst: Path) -> tuple[int, int]:
    before = after = 0
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        before += f.stat().st_size
        if f.suffix.lower() in CONVERT:
            pixels = read_image(f)
            out = out.with_suffix(".png")
            Image.fromarray(pixels).save(out, compress_level=9)
            if not np.array_equal(read_image(out), pixels):
                raise SystemExit(f"{f}: the PNG copy differs from the original")
        elif f.suffix.lower() in {".gif", ".jpg", ".jpeg", ".png"}:
            shutil.copy2(f, out)
        else:
            continue
        after += out.stat().st_size
    return before, after


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    root, out = Path(argv[0]), Path(argv[1])
    for key in argv[2:] or list(FOLDERS):
        before, after = compact(root / FOLDERS[key], out / FOLDERS[key])
        print(f"{FOLDERS[key]}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
