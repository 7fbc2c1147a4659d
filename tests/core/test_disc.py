"""The optic-disc scale estimate: ppd = disc diameter / DISC_DEGREES, without any metadata."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage.draw import disk, line_aa

from napari_dpn import disc, scale
from napari_dpn.cli import main
from napari_dpn.datasets import DATASETS as INFO
from napari_dpn.datasets import load_split
from napari_dpn.models import load_model
from paths import DATASETS

needs_drive = pytest.mark.skipif(not (DATASETS / "DRIVE").is_dir(), reason="datasets not staged")


def fundus_with_disc(size=600, disc_diameter=80, centre=(300, 150), seed=0, with_disc=True):
    """An orange fundus (FOV 0.9 x size) with dark vessels and a pale disc with a brighter cup."""
    rng = np.random.default_rng(seed)
    fov = np.zeros((size, size), bool)
    fov[disk((size / 2, size / 2), 0.45 * size, shape=fov.shape)] = True
    lum = np.zeros((size, size), np.float32)
    if with_disc:
        lum[disk(centre, disc_diameter / 2, shape=lum.shape)] = 1.0
        lum[disk(centre, disc_diameter / 5, shape=lum.shape)] = 1.6  # the cup
        lum = ndi.gaussian_filter(lum, 1.5)
    rgb = np.stack([0.75 + 0.2 * lum, 0.35 + 0.35 * lum, 0.15 + 0.3 * lum], -1)
    for angle in np.linspace(0.3, 2 * np.pi, 6, endpoint=False):  # vessels leaving the disc
        r1, c1 = centre[0] + 0.4 * size * np.sin(angle), centre[1] + 0.4 * size * np.cos(angle)
        rr, cc, _ = line_aa(centre[0], centre[1], int(r1), int(c1))
        ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        vessel = np.zeros((size, size), bool)
        vessel[rr[ok], cc[ok]] = True
        rgb[ndi.binary_dilation(vessel, iterations=2)] *= 0.6
    rgb += rng.normal(0, 0.02, rgb.shape)
    rgb = np.clip(rgb, 0, 1).astype(np.float32) * fov[..., None]
    return rgb, fov


def test_a_disc_of_known_diameter_gives_its_ppd():
    rgb, fov = fundus_with_disc(disc_diameter=80)
    found = disc.find_disc(rgb, fov)
    assert found.ppd == pytest.approx(80 / disc.DISC_DEGREES, rel=0.1)
    assert found.centre == pytest.approx((300, 150), abs=10)
    assert "optic disc" in found.describe() and f"/ {disc.DISC_DEGREES:g} deg" in found.describe()


def test_the_estimate_scales_with_the_image():
    rgb, fov = fundus_with_disc(disc_diameter=80)
    once = disc.find_disc(rgb, fov).ppd
    big = scale.resample_image(rgb, (1200, 1200))
    twice = disc.find_disc(big, np.kron(fov, np.ones((2, 2), bool))).ppd
    assert twice == pytest.approx(2 * once, rel=0.05)


def test_without_a_disc_there_is_a_sentence_not_an_exception():
    rgb, fov = fundus_with_disc(with_disc=False)
    found = disc.find_disc(rgb, fov)
    assert found.ppd is None and found.note and "no optic disc" in found.describe()
    for junk in (np.zeros((40, 40, 3), np.float32), np.full((64, 64, 3), 0.5, np.float32)):
        assert disc.find_disc(junk).ppd is None


def test_parse_scale_knows_disc():
    assert scale.parse_scale("Disc") == "disc"


def test_scale_from_disc_and_its_fallback():
    card = load_model("dpn-drive").card
    rgb, fov = fundus_with_disc(disc_diameter=80)
    sc = disc.scale_from_disc(rgb, fov, card)
    assert sc.method == "disc" and sc.ppd == pytest.approx(80 / disc.DISC_DEGREES, rel=0.1)
    assert sc.factor == pytest.approx(card.scale["working_ppd"] / sc.ppd)
    assert "px/deg from optic disc" in sc.describe() and f"/ {disc.DISC_DEGREES:g} deg" in sc.describe()
    blank, fov = fundus_with_disc(with_disc=False)
    sc = disc.scale_from_disc(blank, fov, card)
    assert sc.method == "fallback" and sc.factor == 1.0 and "no optic disc" in sc.note


def test_cli_segment_scale_disc(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    rgb, _ = fundus_with_disc(disc_diameter=80)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(photos / "eye.png")
    report = tmp_path / "report.json"
    args = ["segment", str(photos), "--out", str(tmp_path / "out"), "--device", "cpu", "--fusion", "none"]
    assert main([*args, "--model", "dpn-drive", "--scale", "disc", "--json", str(report)]) == 0
    assert "px/deg from optic disc" in capsys.readouterr().out
    assert json.loads(report.read_text())["images"]["eye.png"]["scale"]["method"] == "disc"


@needs_drive
def test_a_drive_training_image():
    sample = load_split("drive", DATASETS).train[1]  # 22_training
    rgb, _, fov = sample.load()
    true = scale.fov_diameter(fov) / INFO["drive"].field_angle
    assert disc.find_disc(rgb, fov).ppd == pytest.approx(true, rel=0.15)
