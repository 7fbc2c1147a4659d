"""Every dataset format reads (promise 3).

The hostile inputs and faults for the core and the CLI (issue #10: nothing a user makes is ever lost
or silently wrong), split from test_reliability.py by module; the promise numbers are the section
numbers there and below.  Every case checks the one-sentence message and that no user file changed.
What these tests hold the code to is written down in docs/promises.md; the GUI cases are in
test_reliability_gui.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_dpn
from napari_dpn.image_io import read_image, read_mask
from paths import DATASETS
from paths import REPO as ROOT
from promise_helpers import (
    snapshot,
)
from synthetic_fundus import fundus

pytestmark = [pytest.mark.photos(count=2, size=64), pytest.mark.usefixtures("one_torch_thread")]


# ============================================================================= 3. every dataset format reads


def test_imagecodecs_is_a_dependency():
    """DRIVE's TIFFs are LZW-compressed: tifffile needs imagecodecs to decode them."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("imagecodecs") for d in deps)


def _lzw_tiff(tmp_path) -> Path:
    drive = DATASETS / "DRIVE" / "test" / "images" / "01_test.tif"
    if drive.is_file():
        return drive
    pytest.importorskip("imagecodecs")
    import tifffile

    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, (fundus(64)[0] * 255).astype(np.uint8), compression="lzw")
    return path


def test_a_missing_codec_is_named_not_called_corrupt(tmp_path):
    """Without imagecodecs (blocked in a fresh interpreter) the message says what to install."""
    path = _lzw_tiff(tmp_path)
    code = (
        "import sys; sys.modules['imagecodecs'] = None\n"
        "from napari_dpn.image_io import read_image\n"
        "from napari_dpn.errors import InputError\n"
        "try:\n    read_image(sys.argv[1])\n"
        "except InputError as exc:\n    print(exc)\nelse:\n    print('READ')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(napari_dpn.__file__).parents[1])}
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=120)
    text = res.stdout.strip()
    assert res.returncode == 0 and "\n" not in text, res.stderr
    assert "imagecodecs" in text and "LZW" in text and "pip install imagecodecs" in text
    assert "corrupt" not in text


needs_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason="../shared/datasets is not staged here")


@needs_datasets
def test_a_real_drive_tiff_reads():
    before = snapshot(DATASETS / "DRIVE" / "test" / "images")
    arr = read_image(DATASETS / "DRIVE" / "test" / "images" / "01_test.tif")
    assert arr.shape == (584, 565, 3) and arr.dtype == np.uint8 and arr.max() > 100
    assert snapshot(DATASETS / "DRIVE" / "test" / "images") == before


# (folder, glob, kind, (H, W)) for every kind of file the staged datasets hold
DATASET_FILES = [
    ("DRIVE/training/images", "*.tif", "rgb", (584, 565)),
    ("DRIVE/test/images", "*.tif", "rgb", (584, 565)),
    ("DRIVE/training/1st_manual", "*.gif", "label", (584, 565)),
    ("DRIVE/test/2nd_manual", "*.gif", "label", (584, 565)),  # palette GIF, greys 3/253
    ("DRIVE/test/mask", "*.gif", "fov", (584, 565)),
    ("STARE/images", "*.ppm", "rgb", (605, 700)),
    ("STARE/labels-ah", "*.ah.ppm", "label", (605, 700)),  # greyscale P5 named .ppm
    ("STARE/labels-vk", "*.vk.ppm", "label", (605, 700)),
    ("STARE/mask", "*.pgm", "fov", (605, 700)),
    ("CHASE_DB1", "Image_??[LR].jpg", "rgb", (960, 999)),
    ("CHASE_DB1", "*_1stHO.png", "label", (960, 999)),  # 1-bit PNG
    ("CHASE_DB1", "*_2ndHO.png", "label", (960, 999)),
    ("AV-WIDE/images", "*.png", "rgb", None),
    ("AV-WIDE/manual", "*.png", "label", None),
]


@needs_datasets
@pytest.mark.parametrize("folder, pattern, kind, shape", DATASET_FILES, ids=[f"{f}/{g}" for f, g, *_ in DATASET_FILES])
def test_every_format_in_the_datasets_reads(folder, pattern, kind, shape):
    files = sorted((DATASETS / folder).glob(pattern))
    if not files:
        pytest.skip(f"no {pattern} in {folder}")
    for path in (files[0], files[-1]):
        if kind == "rgb":
            arr = read_image(path)
            assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8, path
        else:
            arr = read_mask(path)
            fraction = arr.mean()
            assert arr.dtype == bool and (0.02 < fraction < 0.25 if kind == "label" else 0.5 < fraction < 0.9), path
        if shape:
            assert arr.shape[:2] == shape, path
