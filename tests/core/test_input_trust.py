"""Trust, second pass (issue #20, h5): reading what users have (bit depth, CMYK, red-on-black
annotations, huge photographs), bounded memory, model-card validation, full disks by errno."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_dpn.cli import main
from paths import DATASETS as _STAGED
from synthetic_fundus import fundus

DATASETS = _STAGED if _STAGED.is_dir() else Path("/work/shared/datasets")
DRIVE_IMAGE = DATASETS / "DRIVE" / "test" / "images" / "01_test.tif"


def _cli(argv, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def _one_sentence(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("napari-dpn: error:")]
    assert lines, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------ model card validation
def _edited_weights(tmp_path: Path, **changes) -> Path:
    """A copy of a shipped model whose embedded card (and .json) has ``changes``, as a hand edit."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from napari_dpn.models import resolve_model_path

    src = resolve_model_path("dpn-release-drive")
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    card = json.loads(meta["napari_dpn_card"])
    card.update(changes)
    meta["napari_dpn_card"] = json.dumps(card)
    dst = tmp_path / "edited.safetensors"
    save_file(load_file(str(src)), str(dst), metadata=meta)
    dst.with_suffix(".json").write_text(json.dumps(card))
    return dst


@pytest.mark.parametrize(
    ("scale", "field"),
    [("big", "'scale'"), ({"working_ppd": "12"}, "scale.working_ppd"), ({"fusion": 9}, "scale.fusion")],
)
def test_card_with_a_bad_scale_block_is_one_sentence(tmp_path, capsys, scale, field):
    photo = tmp_path / "photo.png"
    rgb, _, _ = fundus(96, seed=1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(photo)
    weights = _edited_weights(tmp_path, scale=scale)
    rc, err = _cli(["segment", photo, "--out", tmp_path / "out", "--model", weights], capsys)
    line = _one_sentence(err)
    assert rc == 2 and field in line and "must be" in line, err
    assert not list((tmp_path / "out").glob("photo_*"))


# ------------------------------------------------------------------- red-on-black annotations
@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 0, 255), (255, 255, 255)])
def test_vessels_drawn_in_colour_on_black_are_training_pairs(tmp_path, colour):
    """train --images/--labels pairs: an RGB PNG with vessels drawn in red on black is an annotation."""
    from napari_dpn.annotations import folder_pairs
    from napari_dpn.training.data import check_annotation

    rgb, label, fov = fundus(96, seed=2)
    (tmp_path / "photos").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(tmp_path / "photos" / "eye.png")
    drawing = np.zeros((*label.shape, 3), np.uint8)
    drawing[label] = colour
    Image.fromarray(drawing).save(tmp_path / "labels" / "eye_vessels.png")
    (pair,) = folder_pairs(tmp_path / "photos", tmp_path / "labels")
    _, mask, _ = pair.load()
    np.testing.assert_array_equal(mask, label)
    check_annotation(pair.name, mask, fov)  # not "no vessel pixels ... empty"


# ------------------------------------------------------------------ bit depth and CMYK (item 19)
def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def _drive_photo() -> np.ndarray:
    """DRIVE 01_test, halved: a real photograph, small enough for a quick CPU run."""
    if not DRIVE_IMAGE.is_file():
        pytest.skip(f"the DRIVE dataset is not staged at {DRIVE_IMAGE}")
    with Image.open(DRIVE_IMAGE) as img:
        return np.asarray(img.convert("RGB").resize((img.width // 2, img.height // 2), Image.LANCZOS))


def test_twelve_bit_and_cmyk_tiffs_segment_like_the_8bit_photograph(tmp_path, capsys):
    """Item 19: a 12-bit photograph in a 16-bit TIFF and a CMYK TIFF give the 8-bit original's vessels."""
    rgb8 = _drive_photo()
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb8).save(src / "eight.png")
    twelve = np.round(rgb8.astype(np.float64) * 4095 / 255).astype(np.uint16)
    tifffile.imwrite(src / "twelve.tif", twelve, photometric="rgb")  # no tag says 12 bits
    tifffile.imwrite(  # this one says so in SMaxSampleValue, and its maximum is below 4095
        src / "tagged.tif", (twelve * 0.9).astype(np.uint16), photometric="rgb", extratags=[(341, 3, 1, 4095, True)]
    )
    Image.fromarray(rgb8).convert("CMYK").save(src / "cmyk.tif")
    assert tifffile.TiffFile(src / "cmyk.tif").pages.first.photometric == 5  # SEPARATED, as prepress tools write
    out = tmp_path / "out"
    # dpn-drive, as the paper's models are not trained to ignore exposure (dpn-universal, trained
    # with exposure jitter, happened to tolerate the dark 12-bit image; dpn-drive found no vessels)
    rc, err = _cli(
        ["segment", src, "--out", out, "--model", "dpn-drive", "--fusion", "none", "--device", "cpu"], capsys
    )
    assert rc == 0, err
    reference = np.asarray(Image.open(out / "eight_vessels.png")) > 0
    assert 0.05 < reference.mean() < 0.3
    for stem in ("twelve", "tagged", "cmyk"):
        mask = np.asarray(Image.open(out / f"{stem}_vessels.png")) > 0
        assert _dice(mask, reference) >= 0.9, (stem, _dice(mask, reference))


def test_bit_depth_rules(tmp_path):
    """The documented rules: tags first; without them 8/10/12-bit from the maximum, never 14."""
    from napari_dpn.image_io import as_rgb, read_image

    ramp = np.linspace(0, 1, 64 * 64 * 3).reshape(64, 64, 3)
    for depth in (8, 10, 12):
        data = np.round(ramp * (2**depth - 1)).astype(np.uint16)
        assert as_rgb(data).max() == pytest.approx(1.0), depth
    dim16 = np.round(ramp * 12000).astype(np.uint16)  # a dim 16-bit photograph is not stretched
    assert as_rgb(dim16).max() == pytest.approx(12000 / 65535, abs=1e-6)
    path = tmp_path / "fourteen.tif"  # ... but a 14-bit one whose tag says so is
    tifffile.imwrite(path, dim16, photometric="rgb", extratags=[(341, 3, 1, 16383, True)])
    assert as_rgb(read_image(path)).max() == pytest.approx(12000 / 16383, abs=1e-4)
    white = tmp_path / "miniswhite.tif"
    tifffile.imwrite(white, np.full((64, 64), 200, np.uint8), photometric="miniswhite")
    assert read_image(white).max() == 55
    lab = tmp_path / "lab.tif"
    tifffile.imwrite(lab, np.zeros((64, 64, 3), np.uint8), photometric="cielab")
    with pytest.raises(Exception, match="L\\*a\\*b"):
        read_image(lab)


# --------------------------------------------------------------- file-system errors by errno
@contextlib.contextmanager
def _tmpfs(folder: Path, options: str = "size=200k"):
    """A REAL small tmpfs at ``folder`` (skips when not root or mount fails); always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> None:
    """Fill the disk to the last byte (a file that keeps the space)."""
    with open(folder / "filler.bin", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
            f.flush()


@pytest.mark.parametrize("name", ["map_probability.png", "map_probability.tif", "map_vessels.png", "map_vessels.tif"])
def test_full_disk_writers_one_sentence_and_nothing_half_written(tmp_path, name):
    from napari_dpn.errors import OutputError
    from napari_dpn.image_writers import write_mask, write_probability

    rng = np.random.default_rng(0)
    with _tmpfs(tmp_path / "disk") as disk:
        _fill(disk)
        before = sorted(p.name for p in disk.iterdir())
        with pytest.raises(OutputError) as caught:
            if "probability" in name:
                write_probability(disk / name, rng.random((400, 400)).astype(np.float32))
            else:
                write_mask(disk / name, rng.random((800, 800)) > 0.5)
        assert str(caught.value) == f"Cannot write {disk / name}: the disk is full."
        assert sorted(p.name for p in disk.iterdir()) == before  # no temporary, no half-written file


def test_full_disk_model_save_is_one_sentence(tmp_path):
    """safetensors wraps the OSError in its own error ("... (os error 28)"): still the errno's sentence."""
    from napari_dpn.errors import OutputError
    from napari_dpn.model import build_model
    from napari_dpn.models import ModelCard, save_model

    with _tmpfs(tmp_path / "disk") as disk:
        with pytest.raises(OutputError, match="the disk is full"):
            save_model(build_model("dpn"), ModelCard(name="mine", architecture="dpn"), disk / "mine")
        assert list(disk.iterdir()) == []


def test_read_only_file_system_and_long_names_by_errno(tmp_path):
    from napari_dpn.errors import OutputError
    from napari_dpn.image_writers import write_mask

    mask = np.zeros((64, 64), bool)
    with pytest.raises(OutputError, match="the file name is too long"):
        write_mask(tmp_path / ("x" * 300 + ".png"), mask)
    with (
        _tmpfs(tmp_path / "ro", "size=200k,ro") as disk,
        pytest.raises(OutputError, match="the file system is read-only"),
    ):
        write_mask(disk / "m.png", mask)


# ------------------------------------------------------------- big photographs, bounded memory
def test_a_huge_header_is_refused_with_the_real_reason(tmp_path, capsys):
    """A 100000 x 100000 TIFF (a header and sparse data): not "out of memory ... fewer workers" but
    the photograph is too large for this machine's memory, with the numbers."""
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "huge.tif", shape=(100_000, 100_000, 3), dtype=np.uint8, photometric="rgb")
    rc, err = _cli(["segment", src, "--out", tmp_path / "out", "--device", "cpu"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert "100,000 x 100,000 pixels" in err and "GB of memory" in err and "too large for this machine" in err, err
    assert "fewer workers" not in err


def _pillow_too_big_jpeg(path: Path) -> tuple[int, int]:
    """A genuine JPEG above Pillow's decompression-bomb limit (2 x 89.5 Mpx): a synthetic fundus
    enlarged to 13,600 x 13,500 (greyscale, to keep the test's own memory small)."""
    rgb, _, _ = fundus(400, seed=3)
    small = Image.fromarray((rgb[..., 1] * 255).astype(np.uint8))
    size = (13_600, 13_500)
    assert size[0] * size[1] > 2 * Image.MAX_IMAGE_PIXELS
    small.resize(size, Image.BILINEAR).save(path, quality=85)
    return size[1], size[0]


def test_a_genuine_big_jpeg_is_segmented_in_bounded_memory(tmp_path, monkeypatch):
    """The 184-Mpx JPEG was refused as "corrupt" (Pillow's bomb guard); now it is segmented, its
    maps at its own size, and the process's peak memory stays within ~12 bytes per pixel of the
    photograph plus the fixed cost of Python, torch and the model (reading it whole and as float
    RGB alone would take 4 + 12 bytes per pixel)."""
    import resource
    import sys

    src = tmp_path / "in"
    src.mkdir()
    h, w = _pillow_too_big_jpeg(src / "big.jpg")
    out = tmp_path / "out"
    code = (
        "import sys; from napari_dpn.cli import main; "
        f"sys.exit(main(['segment', {str(src)!r}, '--out', {str(out)!r}, '--device', 'cpu', '--quiet']))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    assert done.returncode == 0, done.stderr
    assert "corrupt" not in done.stderr
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # our own map is no bomb
    with Image.open(out / "big_vessels.png") as vessels:
        assert vessels.size == (w, h)
        mask = np.asarray(vessels) > 0
    assert 0.0 < mask.mean() < 0.3
    fixed = 700e6  # Python, torch and the model (about 0.3-0.5 GB)
    assert peak < fixed + 12 * h * w, f"peak {peak / 1e9:.2f} GB for {h * w / 1e6:.0f} Mpx"


@pytest.mark.parametrize(
    "layout",
    [{}, {"compression": "zlib", "rowsperstrip": 7}, {"compression": "zlib", "tile": (64, 64)}, {"byteorder": ">"}],
    ids=["uncompressed", "strips", "tiles", "big-endian"],
)
def test_big_tiffs_are_block_means_read_band_by_band(tmp_path, monkeypatch, layout):
    """Every TIFF layout gives exactly the k x k block means of the full read (ragged edges too)."""
    import napari_dpn.big_photographs as big_photographs

    monkeypatch.setattr(big_photographs, "READ_MAX_SIDE", 100)
    rng = np.random.default_rng(4)
    rgb = (rng.random((451, 333, 3)) * 4095).astype(np.uint16)  # 12-bit data: the depth rule applies too
    tifffile.imwrite(tmp_path / "big.tif", rgb, photometric="rgb", **layout)
    photo = big_photographs.read_photograph(tmp_path / "big.tif")
    k = 5
    padded = np.full((455, 335, 3), np.nan)
    padded[:451, :333] = rgb
    expected = np.nanmean(padded.reshape(91, k, 67, k, 3), axis=(1, 3)) / 4095
    assert photo.shape == (451, 333) and photo.rgb.shape == (91, 67, 3) and not photo.grey
    np.testing.assert_allclose(photo.rgb, expected, atol=1e-6)
    assert big_photographs.read_photograph(tmp_path / "big.tif", max_reduction=1).rgb.shape == (451, 333, 3)


@pytest.mark.parametrize("on", [255, 4095, 65535])
def test_sixteen_bit_masks_by_their_bit_depth(tmp_path, on):
    """A 16-bit annotation holding 0/255 or 0/4095 is not empty (it was read against 65535)."""
    from napari_dpn.image_io import read_mask

    _, label, _ = fundus(96, seed=5)
    tifffile.imwrite(tmp_path / "eye_vessels.tif", label.astype(np.uint16) * on)
    np.testing.assert_array_equal(read_mask(tmp_path / "eye_vessels.tif"), label)
