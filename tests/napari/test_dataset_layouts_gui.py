"""The napari folder reader opens every dataset layout (napari_dpn.layouts) alike: AV-WIDE as
DRIVE, STARE and CHASE_DB1, and a toy layout registered in the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from PIL import Image

from napari_dpn import layouts
from napari_dpn._napari import _reader
from napari_dpn.layouts import AnnotationName, DatasetLayout
from paths import DATASETS, REPO

needs_display = pytest.mark.needs_display


def _staged() -> Path | None:
    """The staged datasets beside the checkout (or beside the folder of worktrees), else None."""
    return next((p for p in (DATASETS, REPO.parents[1] / "shared" / "datasets") if (p / "AV-WIDE").is_dir()), None)


def _png(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


@pytest.fixture
def shown(monkeypatch):
    got = []
    monkeypatch.setattr("napari.utils.notifications.show_info", got.append)
    return got


@needs_display
@pytest.mark.skipif(_staged() is None, reason="datasets not staged")
@pytest.mark.parametrize("sub", ["", "images", "manual"])
def test_viewer_opens_the_staged_avwide_folder(make_napari_viewer, shown, sub):
    root = _staged() / "AV-WIDE"
    viewer = make_napari_viewer()
    viewer.open(str(root / sub), plugin="napari-dpn")
    assert {lyr.name for lyr in viewer.layers} == {"wide_image_01", "wide_image_01 ground truth"}
    image, truth = viewer.layers["wide_image_01"], viewer.layers["wide_image_01 ground truth"]
    assert image.rgb and truth.data.shape == image.data.shape[:2]
    assert set(np.unique(truth.data)) == {0, 1}
    assert truth.metadata["napari_dpn"]["path"] == str(root / "manual" / "wide_image_01_vessels.png")
    assert shown == [
        f"AV-WIDE folder: opened wide_image_01 with its ground truth, the first of its 30 images; "
        f"the others are in {root / 'images'}."
    ]


@needs_display
def test_viewer_opens_a_synthetic_avwide_folder(make_napari_viewer, shown, tmp_path):
    root = tmp_path / "AV-WIDE"
    for i in (1, 2):
        _png(root / "images" / f"wide_image_{i:02d}.png", np.full((20, 24, 3), 80 + i))
        _png(root / "manual" / f"wide_image_{i:02d}_vessels.png", np.eye(20, 24) * 255)
    assert _reader.get_folder_reader(str(root)) is not None
    viewer = make_napari_viewer()
    viewer.open(str(root), plugin="napari-dpn")
    assert {lyr.name for lyr in viewer.layers} == {"wide_image_01", "wide_image_01 ground truth"}
    assert shown and shown[0].startswith("AV-WIDE folder: opened wide_image_01")


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
    layouts.register(TOY)
    yield TOY
    layouts.LAYOUTS.pop(TOY.key)


@needs_display
def test_a_registered_toy_layout_opens_in_the_viewer(make_napari_viewer, shown, toy, tmp_path):
    root = tmp_path / "mine"
    _png(root / "photos" / "eye1.png", np.full((20, 24, 3), 90))
    _png(root / "truth" / "eye1_truth.png", np.eye(20, 24) * 255)
    _png(root / "discs" / "eye1_disc.png", np.full((20, 24), 255))
    viewer = make_napari_viewer()
    viewer.open(str(root), plugin="napari-dpn")
    assert {lyr.name for lyr in viewer.layers} == {"eye1", "eye1 ground truth", "eye1 FOV"}
    assert shown == ["TOY folder: opened eye1 with its ground truth and FOV mask."]
    # its annotation files, opened alone, are named after their photograph (layouts' AnnotationName)
    assert _reader.annotation_of(root / "truth" / "eye1_truth.png") == ("ground_truth", "eye1", 1)
    assert _reader.annotation_of(root / "discs" / "eye1_disc.png") == ("fov", "eye1", 1)


def test_manifest_title_names_every_layout():
    text = (Path(_reader.__file__).parents[1] / "napari.yaml").read_text()
    title = next(line for line in text.splitlines() if "title: Open a" in line and "folder" in line)
    assert all(layout.name in title for layout in layouts.LAYOUTS.values())
