"""image_io: every format users have, clear errors, atomic writes."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_dpn.errors import InputError
from napari_dpn.files import atomic_write
from napari_dpn.image_io import as_rgb, read_image, read_mask
from napari_dpn.image_writers import write_mask, write_probability

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("suffix", [".png", ".bmp", ".ppm", ".tif"])
def test_read_rgb_lossless_formats(tmp_path, suffix):
    path = tmp_path / f"img{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, RGB8)
    else:
        Image.fromarray(RGB8).save(path)
    np.testing.assert_array_equal(read_image(path), RGB8)


def test_read_jpeg(tmp_path):
    path = tmp_path / "img.jpg"
    Image.fromarray(RGB8).save(path, quality=95)
    arr = read_image(path)
    assert arr.shape == RGB8.shape and arr.dtype == np.uint8


def test_netpbm_opened_by_content(tmp_path):
    """STARE labels are greyscale P5 files named .ppm."""
    grey = (RNG.random((12, 10)) > 0.5).astype(np.uint8) * 255
    path = tmp_path / "im0001.ah.ppm"
    Image.fromarray(grey).save(path, format="PPM")  # mode L -> P5 despite the suffix
    assert path.read_bytes()[:2] == b"P5"
    np.testing.assert_array_equal(read_image(path), grey)
    np.testing.assert_array_equal(read_mask(path), grey > 127)


def test_palette_gif_mask(tmp_path):
    """DRIVE 2nd_manual: palette GIF whose grey values are 3/253."""
    idx = (RNG.random((12, 10)) > 0.5).astype(np.uint8)
    img = Image.frombytes("P", (10, 12), idx.tobytes())
    img.putpalette([4, 2, 4, 252, 254, 252] + [0] * 762)
    path = tmp_path / "01_manual2.gif"
    img.save(path)
    rgb = read_image(path)
    assert rgb.shape == (12, 10, 3)
    np.testing.assert_array_equal(read_mask(path), idx.astype(bool))


def test_mode_1_png_mask(tmp_path):
    """CHASE_DB1 annotations are 1-bit PNGs."""
    truth = RNG.random((12, 10)) > 0.5
    path = tmp_path / "Image_01L_1stHO.png"
    Image.fromarray(truth).convert("1").save(path)
    np.testing.assert_array_equal(read_mask(path), truth)


def test_tiff_and_01_masks(tmp_path):
    truth = RNG.random((12, 10)) > 0.5
    tifffile.imwrite(tmp_path / "m.tif", truth.astype(np.uint8) * 255)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), truth)
    Image.fromarray(truth.astype(np.uint8)).save(tmp_path / "m01.png")  # 0/1 label image
    np.testing.assert_array_equal(read_mask(tmp_path / "m01.png"), truth)


def test_mask_stack_rejected(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 12, 10), np.uint8))
    with pytest.raises(InputError, match="expected one 2-D mask"):
        read_mask(tmp_path / "stack.tif")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"this is not a png at all"), "corrupt"),
    ],
)
def test_read_errors(tmp_path, setup, message):
    path = tmp_path / "x.png"
    setup(path)
    with pytest.raises(InputError, match=message):
        read_image(path)


def test_truncated_png_is_corrupt(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="corrupt"):
        read_image(path)


def test_unsupported_format_and_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="Unsupported"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


# ------------------------------------------------------------------------------------ as_rgb
def test_as_rgb_dtypes():
    np.testing.assert_allclose(as_rgb(RGB8), RGB8 / 255.0, atol=1e-7)
    u16 = RGB8.astype(np.uint16) * 257
    np.testing.assert_allclose(as_rgb(u16), RGB8 / 255.0, atol=1e-6)
    assert as_rgb(np.ones((9, 9), bool)).min() == 1.0
    f = RNG.random((9, 9, 3)).astype(np.float64)
    out = as_rgb(f)
    assert out.dtype == np.float32 and out.shape == (9, 9, 3)
    np.testing.assert_allclose(out, f, atol=1e-7)
    np.testing.assert_allclose(as_rgb(RGB8.astype(np.float32)), RGB8 / 255.0, atol=1e-6)


def test_as_rgb_shapes():
    grey = RNG.random((9, 11)).astype(np.float32)
    out = as_rgb(grey)
    assert out.shape == (9, 11, 3) and np.all(out[..., 0] == out[..., 2])
    assert as_rgb(grey[..., None]).shape == (9, 11, 3)
    rgba = np.concatenate([RGB8, np.full((12, 10, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(as_rgb(rgba), as_rgb(RGB8))
    np.testing.assert_array_equal(as_rgb(np.moveaxis(RGB8, -1, 0)), as_rgb(RGB8))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((5, 12, 10), np.uint8), "stack"),
        (np.zeros((2, 12, 10, 3), np.uint8), "dimensions"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((7, 40, 3), np.uint8), "at least 8"),
        (np.full((9, 9), np.nan, np.float32), "NaN"),
        (np.full((9, 9), np.inf, np.float32), "NaN or infinite"),
        (np.full((9, 9), -0.5, np.float32), "0..1"),
        (np.full((9, 9), 300.0), "0..1"),
    ],
)
def test_as_rgb_rejects(array, message):
    with pytest.raises(InputError, match=message):
        as_rgb(array)


# ----------------------------------------------------------------------------------- writing
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_write_mask_roundtrip(tmp_path, suffix):
    mask = RNG.random((12, 10)) > 0.5
    path = write_mask(tmp_path / f"m{suffix}", mask)
    np.testing.assert_array_equal(read_mask(path), mask)
    assert set(np.unique(read_image(path))) <= {0, 255}
    write_mask(path, mask, on_value=1)
    assert set(np.unique(read_image(path))) <= {0, 1}
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left


def test_write_probability_png_is_16_bit(tmp_path):
    prob = RNG.random((12, 10)).astype(np.float32)
    path = write_probability(tmp_path / "p.png", prob)
    stored = read_image(path)
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, np.round(prob * 65535).astype(np.uint16))


def test_write_probability_tiff_is_float(tmp_path):
    prob = RNG.random((12, 10)).astype(np.float32)
    path = write_probability(tmp_path / "p.tiff", prob)
    np.testing.assert_array_equal(read_image(path), prob)


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match=".png"):
        write_mask(tmp_path / "m.jpg", np.zeros((9, 9), bool))
    with pytest.raises(InputError, match="0..1"):
        write_probability(tmp_path / "p.png", np.full((9, 9), 2.0))
    with pytest.raises(InputError, match="does not exist"):
        write_mask(tmp_path / "missing" / "m.png", np.zeros((9, 9), bool))


def test_atomic_write_cleans_up_on_failure(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png"
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
