"""Dataset layouts (napari_dpn.layouts): adding a dataset is one DatasetLayout, and every place that
spells a dataset's file names (loaders, photograph filter, ground-truth and FOV lookup, help texts)
reads it from there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_dpn import annotations, layouts, session_file
from napari_dpn.datasets import DATASETS, dataset_key, find_dataset, folder_samples, load_split
from napari_dpn.layouts import AnnotationName, DatasetLayout
from paths import DATASETS as STAGED
from paths import REPO

# A newcomer's dataset: photos/eye1.png, truth/eye1_truth.png, discs/eye1_disc.png.
TOY = DatasetLayout(
    key="toy",
    name="TOY",
    image_pattern=r"eye\d+",
    label_stem="{stem}_truth",
    images_dir="photos",
    labels_dir="truth",
    fov_stem="{stem}_disc",
    fov_dir="discs",
    annotations=(AnnotationName("_truth", "ground_truth"), AnnotationName("_disc", "fov")),
)


@pytest.fixture
def toy():
    """The toy layout registered, as layouts.py registers the four datasets; removed afterwards."""
    layouts.register(TOY)
    yield TOY
    layouts.LAYOUTS.pop(TOY.key)


def _png(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def make_toy(root: Path, n: int = 2) -> Path:
    for i in range(1, n + 1):
        _png(root / "photos" / f"eye{i}.png", np.full((20, 24, 3), 90 + i))
        _png(root / "truth" / f"eye{i}_truth.png", np.eye(20, 24) * 255)
        _png(root / "discs" / f"eye{i}_disc.png", np.full((20, 24), 255))
    return root


def make_avwide(root: Path, n: int = 2) -> Path:
    for i in range(1, n + 1):
        _png(root / "images" / f"wide_image_{i:02d}.png", np.full((20, 24, 3), 80 + i))
        _png(root / "manual" / f"wide_image_{i:02d}_vessels.png", np.eye(20, 24) * 255)
    return root


def test_a_registered_toy_layout_is_found_everywhere(toy, tmp_path):
    root = make_toy(tmp_path / "TOY")
    for where in (root, root / "photos", root / "truth"):  # any level of the layout, as DRIVE's
        found = find_dataset(where)
        assert found is not None and found.dataset == "TOY"
        assert [e.name for e in found.entries] == ["eye1", "eye2"]
    entry = find_dataset(root).entries[0]
    assert entry.label_path == root / "truth" / "eye1_truth.png"
    assert entry.fov_path == root / "discs" / "eye1_disc.png"
    assert [s.name for s in folder_samples("toy", root)] == ["eye1", "eye2"]
    # the folder session's lookups
    photo = root / "photos" / "eye1.png"
    assert session_file.ground_truth_path(photo) == root / "truth" / "eye1_truth.png"
    assert session_file.dataset_fov_path(photo) == root / "discs" / "eye1_disc.png"
    # its labels are not photographs, wherever they lie
    _png(root / "photos" / "eye2_truth.png", np.eye(20, 24) * 255)
    _png(root / "photos" / "eye2_disc.png", np.full((20, 24), 255))
    assert [p.name for p in session_file.list_photographs(root / "photos")] == ["eye1.png", "eye2.png"]
    assert annotations.is_dataset_label("eye2_truth.png") and annotations.not_a_photograph("eye2_disc.png")
    assert [p.name for p in annotations.photographs_in(root / "photos")] == ["eye1.png", "eye2.png"]
    # help texts name it
    assert "TOY/" in layouts.folders_text() and "toy" in layouts.keys_text()


def test_without_the_toy_layout_nothing_is_found(tmp_path):
    root = make_toy(tmp_path / "TOY")
    assert find_dataset(root) is None
    assert session_file.ground_truth_path(root / "photos" / "eye1.png") is None
    assert not annotations.is_dataset_label("eye2_truth.png")


def test_the_four_datasets_have_one_layout_each():
    assert list(layouts.LAYOUTS) == ["drive", "stare", "chase", "avwide"]
    assert [DATASETS[k].folder for k in layouts.LAYOUTS] == ["DRIVE", "STARE", "CHASE_DB1", "AV-WIDE"]
    assert dataset_key("AV-WIDE") == "avwide" and dataset_key("CHASE_DB1") == "chase"
    assert layouts.layout_for("chasedb1") is layouts.CHASE_DB1
    assert layouts.DRIVE.label_name("21_training") == "21_manual1"
    assert layouts.DRIVE.label_name("eye") is None  # DRIVE labels are named by the number
    assert layouts.STARE.label_name("im0001") == "im0001.ah"
    assert layouts.DRIVE.fov_name("01_test") == "01_test_mask"


def test_avwide_folder_is_found_and_its_ground_truth_looked_up(tmp_path):
    root = make_avwide(tmp_path / "AV-WIDE")
    for where in (root, root / "images", root / "manual"):
        found = find_dataset(where)
        assert found is not None and found.dataset == "AV-WIDE" and len(found.entries) == 2
    assert find_dataset(root).entries[0].fov_path is None  # no circular FOV: the whole frame
    photo = root / "images" / "wide_image_01.png"
    assert session_file.ground_truth_path(photo) == root / "manual" / "wide_image_01_vessels.png"
    # beside the photograph, <stem>_vessels.png is the user's own saved annotation, not ground truth
    flat = make_avwide(tmp_path / "flat")
    (flat / "manual" / "wide_image_01_vessels.png").rename(flat / "images" / "wide_image_01_vessels.png")
    assert session_file.ground_truth_path(flat / "images" / "wide_image_01.png") is None


def _staged() -> Path | None:
    """The staged datasets beside the checkout (or beside the folder of worktrees), else None."""
    return next((p for p in (STAGED, REPO.parents[1] / "shared" / "datasets") if (p / "AV-WIDE").is_dir()), None)


@pytest.mark.skipif(_staged() is None, reason="datasets not staged")
def test_staged_avwide_loads_with_its_layout():
    root = _staged()
    split = load_split("avwide", root)
    assert (len(split.train), len(split.test)) == (20, 10)
    assert split.train[0].label_path == root / "AV-WIDE" / "manual" / "wide_image_01_vessels.png"
    found = find_dataset(root / "AV-WIDE")
    assert found.dataset == "AV-WIDE" and len(found.entries) == 30
