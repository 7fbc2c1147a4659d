"""fov.estimate_fov on synthetic fundus-like images."""

import numpy as np
import pytest

from napari_dpn.errors import InputError
from napari_dpn.fov import estimate_fov


def fundus(h=120, w=140, radius=50, noise=0.02, seed=0):
    """A bright disc with darker vignetted periphery on a noisy dark border; and its true disc.

    Not ``synthetic_fundus.fundus``: the dim rim is what these FOV tests are about."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    disc = r <= radius
    red = np.where(disc, 0.7 - 0.4 * (r / radius) ** 4, 0.03)  # edge of the disc is dim (0.3)
    rgb = np.stack([red, red * 0.5, red * 0.2], axis=-1) + rng.normal(0, noise, (h, w, 3))
    return np.clip(rgb, 0, 1).astype(np.float32), disc


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_disc_found_and_rim_excluded():
    rgb, disc = fundus()
    fov = estimate_fov(rgb)
    assert fov.dtype == bool and fov.shape == disc.shape
    assert dice(fov, disc) > 0.97
    assert not (fov & ~disc).any()  # nothing of the border is inside


def test_camera_text_in_corner_ignored():
    rgb, disc = fundus()
    rgb[3:12, 3:40] = 1.0  # bright burnt-in label, not touching the disc
    fov = estimate_fov(rgb)
    assert not fov[3:12, 3:40].any()
    assert dice(fov, disc) > 0.97


def test_dark_lesion_inside_is_kept():
    rgb, disc = fundus()
    rgb[55:65, 65:75] = 0.02  # dark haemorrhage in the middle -> hole filled
    assert estimate_fov(rgb)[55:65, 65:75].all()


def test_no_dark_border_gives_whole_image():
    rng = np.random.default_rng(1)
    rgb = np.clip(0.6 + rng.normal(0, 0.05, (80, 90, 3)), 0, 1).astype(np.float32)
    rgb[20:40, 20:40, 0] = 0.4  # darker macula-like patch, still not a border
    assert estimate_fov(rgb).all()


def test_flat_and_tiny_disc_fall_back():
    assert estimate_fov(np.zeros((40, 40, 3), np.float32)).all()
    rgb, _ = fundus(radius=10)  # < 20 % of the image: not a plausible FOV
    assert estimate_fov(rgb).all()


def test_rejects_non_rgb():
    with pytest.raises(InputError):
        estimate_fov(np.zeros((40, 40), np.float32))
