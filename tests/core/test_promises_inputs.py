"""Annotations are not photographs, and one stem names one image (promise 2).

The hostile inputs and faults for the core and the CLI (issue #10: nothing a user makes is ever lost
or silently wrong), split from test_reliability.py by module; the promise numbers are the section
numbers there and below.  Every case checks the one-sentence message and that no user file changed.
What these tests hold the code to is written down in docs/promises.md; the GUI cases are in
test_reliability_gui.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_dpn.manifest import MANIFEST_NAME as MANIFEST
from promise_helpers import (
    SEGMENT,
    error_line,
    run,
    save_mask,
    save_photo,
    snapshot,
    unchanged,
)
from synthetic_fundus import fundus

pytestmark = [pytest.mark.photos(count=2, size=64), pytest.mark.usefixtures("one_torch_thread")]


# ============================================================================= annotations are not photographs

ANNOTATION_NAMES = [
    "eye0_vessels.png",
    "eye0_fov.png",
    "eye0_probability.png",
    "eye0_probability.tif",
    "21_manual1.gif",
    "01_manual2.gif",
    "21_training_mask.gif",
    "Image_01L_1stHO.png",
    "Image_01L_2ndHO.png",
    "im0001.ah.ppm",
    "im0001.vk.ppm",
    "im0001_mask.pgm",
]


@pytest.mark.parametrize("name", ANNOTATION_NAMES)
def test_annotation_and_dataset_label_files_are_never_segmented(tmp_path, capsys, name):
    folder = tmp_path / "in"
    save_photo(folder / "photo.png")
    label = folder / name
    if name.endswith(".tif"):
        import tifffile

        tifffile.imwrite(label, fundus(64)[1].astype(np.float32))
    else:
        Image.fromarray(fundus(64)[1].astype(np.uint8) * 255).save(
            label, format="PPM" if name.endswith(".ppm") else None
        )
    before = snapshot(tmp_path)
    rc, out, err = run(["segment", folder, "--out", tmp_path / "out", *SEGMENT], capsys)
    assert rc == 0 and "1 image(s) segmented" in out
    assert "left out 1 file(s)" in err and name in err
    unchanged(
        before,
        tmp_path,
        new_allowed={f"out/photo_{k}.png" for k in ("probability", "vessels", "fov")} | {f"out/{MANIFEST}"},
    )


def test_an_annotation_named_on_the_command_line_is_left_out(photos, capsys):
    save_mask(photos / "eye0_vessels.png", fundus(64)[1])
    before = snapshot(photos)
    rc, _, err = run(["segment", photos / "eye0_vessels.png", "--out", photos, *SEGMENT], capsys)
    assert rc == 2
    text = error_line(err)
    assert "no photographs found" in text and "left out eye0_vessels.png: it is a vessel annotation" in text
    unchanged(before, photos)


def test_find_pairs_does_not_take_dataset_labels_for_images(tmp_path):
    from napari_dpn.annotations import find_pairs

    save_photo(tmp_path / "Image_01L.png")
    save_mask(tmp_path / "Image_01L_vessels.png", fundus(64)[1])
    save_mask(tmp_path / "Image_01L_1stHO.png", fundus(64)[1])
    save_mask(tmp_path / "Image_01L_1stHO_vessels.png", fundus(64)[1])
    assert [p[0].name for p in find_pairs(tmp_path)] == ["Image_01L.png"]


# ============================================================================= 2. same stem, two images


@pytest.mark.parametrize(
    "names", [("eye.png", "eye.jpg"), ("eye.png", "eye.tif"), ("Eye.png", "eye.jpeg"), ("a/eye.png", "b/eye.png")]
)
def test_two_images_with_one_stem_are_refused_naming_both(tmp_path, capsys, names):
    folder = tmp_path / "in"
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((fundus(64, seed=i)[0] * 255).astype(np.uint8)).save(path)
    inputs = [folder / "a", folder / "b"] if "/" in names[0] else [folder]
    before = snapshot(tmp_path)
    rc, out, err = run(["segment", *inputs, "--out", tmp_path / "out", *SEGMENT], capsys)
    assert rc == 2 and out == ""
    text = error_line(err)
    assert all(Path(n).name in text for n in names) and "eye_vessels.png" in text.lower()
    unchanged(before, tmp_path, new_allowed=set())
    assert not any((tmp_path / "out").glob("*"))


def test_training_folder_with_one_stem_twice_is_refused(tmp_path, capsys):
    folder = tmp_path / "train"
    folder.mkdir()
    rgb, label, fov = fundus(64)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / "eye.png")
    Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / "eye.jpg")
    save_mask(folder / "eye_vessels.png", label)
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", folder, "--out", tmp_path / "models", "--steps", "1"], capsys)
    assert rc == 2
    text = error_line(err)
    assert "eye.jpg" in text and "eye.png" in text and "eye_vessels.png" in text
    unchanged(before, tmp_path)
