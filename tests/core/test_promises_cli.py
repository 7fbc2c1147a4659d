"""Rough edges (promise 8b), and the promises page itself.

The hostile inputs and faults for the core and the CLI (issue #10: nothing a user makes is ever lost
or silently wrong), split from test_reliability.py by module; the promise numbers are the section
numbers there and below.  Every case checks the one-sentence message and that no user file changed.
What these tests hold the code to is written down in docs/promises.md; the GUI cases are in
test_reliability_gui.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paths import REPO as ROOT
from promise_helpers import (
    SEGMENT,
    TRAIN,
    TRAIN_BASE,
    error_line,
    run,
    save_mask,
    save_photo,
    snapshot,
    unchanged,
)
from synthetic_fundus import fundus

pytestmark = [pytest.mark.photos(count=2, size=64), pytest.mark.usefixtures("one_torch_thread")]


# ============================================================================= 8b. rough edges


@pytest.mark.parametrize("device", ["cpu:abc", "gpu", "cuda:x", "cpu:7", "cpu:-1"])
def test_bad_devices_are_one_line(photos, tmp_path, capsys, device):
    before = snapshot(tmp_path)
    rc, _, err = run(["segment", photos, "--out", tmp_path / "out", "--device", device, "--quiet"], capsys)
    assert rc == 2 and "device" in error_line(err)
    unchanged(before, tmp_path)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--threads", "-1"),
        ("--threads", "0"),
        ("--weight-decay", "-1"),
        ("--checkpoint-every", "-5"),
        ("--val-every", "-1"),
        ("--log-every", "-1"),
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--seed", "-1"),
        ("--crop", "100000"),
    ],
)
def test_bad_training_numbers_are_one_line(pairs, tmp_path, capsys, flag, value):
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", tmp_path / "models", *TRAIN_BASE, flag, value], capsys)
    assert rc == 2 and value in error_line(err)
    unchanged(before, tmp_path)


def test_greyscale_photographs_are_accepted_with_a_note(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    grey = (fundus(64)[0][..., 1] * 255).astype(np.uint8)
    Image.fromarray(grey).save(folder / "grey.png")
    save_photo(folder / "colour.png")
    rc, out, err = run(["segment", folder, "--out", tmp_path / "out", *SEGMENT], capsys)
    assert rc == 0 and "2 image(s) segmented" in out
    notes = [line for line in err.splitlines() if "greyscale" in line]
    assert len(notes) == 1 and "grey.png" in notes[0] and "colour.png" not in notes[0]
    assert "lower accuracy" in notes[0]


def _fake_flat(root: Path, dataset: str) -> Path:
    """Two tiny images of CHASE_DB1 (no FOV masks) or STARE without its mask folder."""
    for i, stem in enumerate(["Image_01L", "Image_01R"] if dataset == "chase" else ["im0001", "im0002"]):
        rgb, label, _ = fundus(64, seed=i)
        img = Image.fromarray((rgb * 255).astype(np.uint8))
        if dataset == "chase":
            base = root / "CHASE_DB1"
            base.mkdir(parents=True, exist_ok=True)
            img.save(base / f"{stem}.jpg", quality=95)
            save_mask(base / f"{stem}_1stHO.png", label)
        else:
            base = root / "STARE"
            (base / "images").mkdir(parents=True, exist_ok=True)
            (base / "labels-ah").mkdir(exist_ok=True)
            img.save(base / "images" / f"{stem}.ppm")
            Image.fromarray(label.astype(np.uint8) * 255).save(base / "labels-ah" / f"{stem}.ah.ppm", format="PPM")
    return root


@pytest.mark.parametrize("dataset", ["chase", "stare"])
def test_evaluate_says_when_the_fov_was_estimated(tmp_path, capsys, dataset):
    root = _fake_flat(tmp_path / "data", dataset)
    before = snapshot(root)
    rc, out, _ = run(
        [
            "evaluate",
            "--dataset",
            dataset,
            "--root",
            root,
            "--split",
            "all",
            "--device",
            "cpu",
            "--no-train-threshold",
            "--json",
            tmp_path / "r.json",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0
    line = next(line for line in out.splitlines() if line.startswith("FOV:"))
    assert "estimated" in line and "all 2 images" in line
    meta = json.loads((tmp_path / "r.json").read_text())["meta"]
    assert "estimated" in meta["fov"] and len(meta["fov_estimated"]) == 2
    unchanged(before, root)


def test_evaluate_with_official_masks_says_nothing_about_estimates(fake_drive, tmp_path, capsys):
    rc, out, _ = run(
        [
            "evaluate",
            "--dataset",
            "drive",
            "--root",
            fake_drive,
            "--device",
            "cpu",
            "--no-train-threshold",
            "--json",
            tmp_path / "r.json",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0 and "FOV:" not in out
    assert json.loads((tmp_path / "r.json").read_text())["meta"]["fov"] == "official FOV masks"


def _release_layout(root: Path, dataset: str) -> Path:
    if dataset == "drive":
        from test_cli import _fake_drive

        _fake_drive(root, n=1, size=64)
        return root / "DRIVE"
    if dataset == "drive-training":
        from test_cli import _fake_drive

        _fake_drive(root, n=1, size=64)
        return root / "DRIVE" / "training"
    _fake_flat(root, dataset)
    return root / ("CHASE_DB1" if dataset == "chase" else "STARE")


@pytest.mark.parametrize(
    "dataset, key", [("drive", "drive"), ("drive-training", "drive"), ("chase", "chase"), ("stare", "stare")]
)
def test_train_on_a_raw_dataset_folder_suggests_dataset(tmp_path, capsys, dataset, key):
    folder = _release_layout(tmp_path / "data", dataset)
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", folder, "--out", tmp_path / "models", *TRAIN], capsys)
    assert rc == 2
    text = error_line(err)
    assert "IMAGE_vessels.png" in text and f"--dataset {key} --root" in text
    unchanged(before, tmp_path)


def test_train_on_a_folder_of_sub_folders_says_so(tmp_path, capsys):
    save_photo(tmp_path / "set" / "images" / "a.png")
    save_mask(tmp_path / "set" / "manual" / "a_vessels.png", fundus(64)[1])
    rc, _, err = run(["train", "--images", tmp_path / "set", "--out", tmp_path / "models", *TRAIN], capsys)
    assert rc == 2 and "sub-folders are not searched" in error_line(err)


# ============================================================================= the promises page


def test_the_promises_page_exists_and_names_the_refusals():
    text = (ROOT / "docs" / "promises.md").read_text()
    for words in ("--overwrite", "atomic", "## In napari", "refuse"):
        assert words in text
