"""Manifest, readers, writer and sample data of the napari plugin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
npe2 = pytest.importorskip("npe2")

from PIL import Image as PILImage  # noqa: E402

from napari_dpn._napari import _reader, _writer  # noqa: E402
from napari_dpn._napari._sample_data import retina_sample  # noqa: E402
from paths import DATASETS  # noqa: E402

needs_display = pytest.mark.needs_display  # skipped without a display, see conftest.py


def rgb_image(h=40, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def mask_image(h=40, w=48):
    m = np.zeros((h, w), np.uint8)
    m[10:20, 5:30] = 255
    return m


# ----------------------------------------------------------------------------- manifest


def test_manifest_is_valid_and_complete():
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution("napari-dpn")
    c = mf.contributions
    assert {w.display_name for w in c.widgets} >= {"Segment vessels"}
    assert any(r.accepts_directories for r in c.readers)
    patterns = {p for r in c.readers for p in r.filename_patterns}
    assert {"*.ppm", "*.pgm", "*.gif"} <= patterns
    assert {w.display_name for w in c.writers} == {"vessel mask 0/255", "vessel mask 0/1"}
    assert [s.key for s in c.sample_data] == ["retina"]
    for cmd in c.commands:  # every command resolves to an importable object
        module, _, attr = cmd.python_name.partition(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr)), cmd.python_name


def test_manifest_has_no_npe1_hooks():
    text = (Path(_reader.__file__).parents[1] / "napari.yaml").read_text()
    assert "napari_get_reader" not in text and "napari_experimental" not in text


# ----------------------------------------------------------------------------- file reader


def test_reader_ignores_other_files(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"x")
    assert _reader.get_reader(str(tmp_path / "a.tif")) is None
    assert _reader.get_reader(str(tmp_path)) is None
    assert _reader.get_reader([str(tmp_path / "a.ppm"), str(tmp_path / "b.ppm")]) is None


def test_colour_ppm_is_an_rgb_image(tmp_path):
    rgb = rgb_image()
    p = tmp_path / "im0001.ppm"
    PILImage.fromarray(rgb).save(p)
    [(data, kwargs, kind)] = _reader.get_reader(str(p))(str(p))
    assert kind == "image" and kwargs["rgb"] is True and kwargs["name"] == "im0001"
    np.testing.assert_array_equal(data, rgb)
    assert kwargs["metadata"]["napari_dpn"]["path"] == str(p)


def test_greyscale_file_named_ppm_is_opened_by_content(tmp_path):
    """STARE's labels are greyscale P5 files with a .ppm name: they open as labels."""
    p = tmp_path / "im0001.ah.ppm"
    PILImage.fromarray(mask_image()).save(p, format="PPM")  # mode L -> P5 netpbm
    assert p.read_bytes()[:2] == b"P5"
    [(data, kwargs, kind)] = _reader.read_files(str(p))
    assert kind == "labels" and data.dtype == np.uint8
    np.testing.assert_array_equal(data, mask_image() > 0)


def test_many_valued_greyscale_is_an_image(tmp_path):
    grey = np.arange(40 * 48, dtype=np.uint32).reshape(40, 48) % 256
    p = tmp_path / "grey.pgm"
    PILImage.fromarray(grey.astype(np.uint8)).save(p)
    [(data, kwargs, kind)] = _reader.read_files(str(p))
    assert kind == "image" and kwargs["colormap"] == "gray" and data.ndim == 2


def test_pgm_fov_mask_is_labels_with_fov_role(tmp_path):
    p = tmp_path / "im0001_mask.pgm"
    PILImage.fromarray(mask_image()).save(p)
    [(data, kwargs, kind)] = _reader.read_files(str(p))
    assert kind == "labels" and kwargs["metadata"]["napari_dpn"]["role"] == "fov"


def test_palette_gif_with_two_colours_is_labels(tmp_path):
    """Like DRIVE's 2nd_manual: palette GIF, index 0 = (4,2,4), index 1 = (252,254,252)."""
    idx = (mask_image() > 0).astype(np.uint8)
    img = PILImage.fromarray(idx, mode="P")
    img.putpalette([4, 2, 4, 252, 254, 252] + [0] * (256 * 3 - 6))
    p = tmp_path / "01_manual2.gif"
    img.save(p)
    [(data, kwargs, kind)] = _reader.read_files(str(p))
    assert kind == "labels"
    np.testing.assert_array_equal(data, idx)


def test_colour_gif_is_an_image(tmp_path):
    p = tmp_path / "photo.gif"
    PILImage.fromarray(rgb_image()).convert("P", palette=PILImage.ADAPTIVE).save(p)
    [(_, kwargs, kind)] = _reader.read_files(str(p))
    assert kind == "image" and kwargs["rgb"] is True


@pytest.mark.skipif(not (DATASETS / "DRIVE").is_dir(), reason="datasets not staged")
@pytest.mark.parametrize(
    "rel, kind",
    [
        ("STARE/images/im0001.ppm", "image"),
        ("STARE/labels-ah/im0001.ah.ppm", "labels"),
        ("STARE/mask/im0001_mask.pgm", "labels"),
        ("DRIVE/test/1st_manual/01_manual1.gif", "labels"),
        ("DRIVE/test/2nd_manual/01_manual2.gif", "labels"),
        ("DRIVE/test/mask/01_test_mask.gif", "labels"),
    ],
)
def test_real_dataset_files(rel, kind):
    p = DATASETS / rel
    [(data, kwargs, got)] = _reader.get_reader(str(p))(str(p))
    assert got == kind
    if kind == "labels":
        assert set(np.unique(data)) == {0, 1}


# ----------------------------------------------------------------------------- folder reader


def make_drive(root: Path, n=2):
    for split, first in (("test", 1), ("training", 21)):
        for sub in ("images", "1st_manual", "mask"):
            (root / split / sub).mkdir(parents=True)
        for i in range(first, first + n):
            PILImage.fromarray(rgb_image(seed=i)).save(root / split / "images" / f"{i:02d}_{split}.tif")
            PILImage.fromarray(mask_image()).save(root / split / "1st_manual" / f"{i:02d}_manual1.gif")
            PILImage.fromarray(np.full((40, 48), 255, np.uint8)).save(
                root / split / "mask" / f"{i:02d}_{split}_mask.gif"
            )


def make_stare(root: Path):
    for sub in ("images", "labels-ah", "mask"):
        (root / sub).mkdir(parents=True)
    for ident in ("im0001", "im0002", "im0003"):
        PILImage.fromarray(rgb_image()).save(root / "images" / f"{ident}.ppm")
        PILImage.fromarray(mask_image()).save(root / "labels-ah" / f"{ident}.ah.ppm", format="PPM")
        PILImage.fromarray(mask_image()).save(root / "mask" / f"{ident}_mask.pgm")


def make_chase(root: Path):
    root.mkdir(parents=True)
    for ident in ("Image_01L", "Image_01R"):
        PILImage.fromarray(rgb_image()).save(root / f"{ident}.jpg")
        PILImage.fromarray(mask_image()).convert("1").save(root / f"{ident}_1stHO.png")
        PILImage.fromarray(mask_image()).convert("1").save(root / f"{ident}_2ndHO.png")


@pytest.fixture
def infos(monkeypatch):
    got = []
    monkeypatch.setattr(_reader, "_notify_folder", lambda *a: got.append(_reader.folder_message(*a)))
    return got


@pytest.mark.parametrize("sub", ["", "test", "test/images"])
def test_drive_folder_opens_first_image_with_truth_and_fov(tmp_path, infos, sub):
    make_drive(tmp_path / "DRIVE")
    folder = tmp_path / "DRIVE" / sub
    layers = _reader.get_folder_reader(str(folder))(str(folder))
    assert [(kw["name"], kind) for _, kw, kind in layers] == [
        ("01_test", "image"),
        ("01_test ground truth", "labels"),
        ("01_test FOV", "labels"),
    ]
    image, gt, fov = layers
    assert image[1]["rgb"] and image[1]["metadata"]["napari_dpn"]["path"].endswith("01_test.tif")
    np.testing.assert_array_equal(gt[0], mask_image() > 0)
    assert fov[1]["visible"] is False and fov[0].all()
    assert gt[1]["metadata"]["napari_dpn"] == {
        "role": "ground_truth",
        "image": "01_test",
        "path": str(tmp_path / "DRIVE/test/1st_manual/01_manual1.gif"),
    }
    assert infos == [
        f"DRIVE folder: opened 01_test with its ground truth and FOV mask, the "
        f"first of its 2 images; the others are in {tmp_path / 'DRIVE/test/images'}."
    ]


def test_stare_folder(tmp_path, infos):
    make_stare(tmp_path / "STARE")
    layers = _reader.read_folder(str(tmp_path / "STARE"))
    assert [kw["name"] for _, kw, _ in layers] == ["im0001", "im0001 ground truth", "im0001 FOV"]
    assert "first of its 3 images" in infos[0]


def test_chase_folder_has_no_fov(tmp_path, infos):
    make_chase(tmp_path / "CHASE_DB1")
    assert _reader.get_folder_reader(str(tmp_path / "CHASE_DB1")) is not None
    layers = _reader.read_folder(str(tmp_path / "CHASE_DB1"))
    assert [kw["name"] for _, kw, _ in layers] == ["Image_01L", "Image_01L ground truth"]
    assert "with its ground truth," in infos[0] and "FOV" not in infos[0]


def test_image_without_its_annotation_still_opens(tmp_path, infos):
    from napari_dpn.datasets import folder_samples
    from napari_dpn.errors import InputError

    make_drive(tmp_path / "DRIVE")
    (tmp_path / "DRIVE/test/1st_manual/01_manual1.gif").unlink()
    layers = _reader.read_folder(str(tmp_path / "DRIVE"))
    assert [kw["name"] for _, kw, _ in layers] == ["01_test", "01_test FOV"]
    assert "with its FOV mask," in infos[0]
    with pytest.raises(InputError, match="Missing DRIVE label for 01_test.tif"):
        folder_samples("drive", tmp_path / "DRIVE/test")  # training/evaluation need every label


def test_other_folders_are_not_claimed(tmp_path):
    (tmp_path / "images").mkdir()
    assert _reader.get_folder_reader(str(tmp_path)) is None
    assert _reader.get_folder_reader(str(tmp_path / "nope")) is None


@needs_display
def test_open_folder_in_viewer_and_segment_widget_finds_truth(make_napari_viewer, tmp_path, monkeypatch):
    from napari_dpn._napari._segment_widget import SegmentWidget

    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_info", lambda m: shown.append(m))
    make_drive(tmp_path / "DRIVE", n=1)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "DRIVE"), plugin="napari-dpn")
    assert {lyr.name for lyr in viewer.layers} == {"01_test", "01_test ground truth", "01_test FOV"}
    assert shown and "DRIVE folder" in shown[0]
    w = SegmentWidget(viewer)
    assert w.current_image().name == "01_test"
    assert w.current_ground_truth().name == "01_test ground truth"
    assert w.result_layers.loaded_fov_layer(w.current_image()).name == "01_test FOV"


@needs_display
def test_open_gif_in_viewer(make_napari_viewer, tmp_path):
    p = tmp_path / "21_manual1.gif"
    PILImage.fromarray(mask_image()).save(p)
    viewer = make_napari_viewer()
    [lyr] = viewer.open(str(p), plugin="napari-dpn")
    # DRIVE's first-observer annotation of 21_training.tif: named (and tagged) after its image
    assert lyr._type_string == "labels" and lyr.name == "21_training ground truth"
    assert lyr.metadata["napari_dpn"]["image"] == "21_training"


# ----------------------------------------------------------------------------- writer


@pytest.mark.parametrize(
    "name, writer, on",
    [
        ("m.png", _writer.write_mask_255, 255),
        ("m.tif", _writer.write_mask_255, 255),
        ("m.png", _writer.write_mask_01, 1),
        ("m.tiff", _writer.write_mask_01, 1),
    ],
)
def test_writer_binary_masks(tmp_path, name, writer, on):
    from napari_dpn.image_io import read_image

    data = (mask_image() > 0).astype(np.uint8)
    [out] = writer(str(tmp_path / name), data, {})
    back = read_image(out)
    assert set(np.unique(back)) == {0, on}
    np.testing.assert_array_equal(back > 0, data > 0)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # nothing half-written left over


def test_writer_adds_png_suffix_and_refuses_multilabel(tmp_path):
    from napari_dpn.errors import InputError

    [out] = _writer.write_mask_255(str(tmp_path / "noext"), np.ones((9, 9), np.uint8), {})
    assert out.endswith("noext.png")
    with pytest.raises(InputError, match="labels"):
        _writer.write_mask_255(str(tmp_path / "e.png"), np.arange(81).reshape(9, 9) % 3, {})


@needs_display
def test_writer_through_viewer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    lyr = viewer.add_labels((mask_image() > 0).astype(np.uint8), name="vessels")
    out = tmp_path / "saved.png"
    written = lyr.save(str(out), plugin="napari-dpn")
    assert written == [str(out)]
    assert set(np.unique(np.asarray(PILImage.open(out)))) == {0, 255}


# ----------------------------------------------------------------------------- sample data


def test_sample_data():
    [(data, kwargs, kind)] = retina_sample()
    assert kind == "image" and kwargs["rgb"] and data.shape[-1] == 3 and data.dtype == np.uint8


@needs_display
def test_sample_data_through_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-dpn", "retina")
    assert viewer.layers[0].name == "retina" and viewer.layers[0].rgb
