import numpy as np
import pytest
from skimage.transform import rotate as sk_rotate

from napari_dpn import augment
from synthetic_fundus import fundus


def test_offline_set_is_the_releases_eleven_views():
    rgb, label, fov = fundus(48, seed=1)
    views = augment.offline_views(rgb, label, fov)
    assert [v.name for v in views] == [name for name, _, _ in augment.OFFLINE_VIEWS]
    assert len(views) == 11  # original + 2 flips + 8 rotations, as in the release's train.lst
    assert {22, 45, 90, 135, 180, 225, 270, 315} == {p for _, k, p in augment.OFFLINE_VIEWS if k == "rotate"}
    assert len(augment.offline_views(rgb, label, fov, augment=False)) == 1
    v = views[0]
    assert v.image.dtype == np.uint8 and v.label.dtype == bool and v.fov.dtype == bool
    np.testing.assert_allclose(v.image / 255.0, rgb, atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("angle", [22, 45, 135, 315])
def test_rotation_matches_skimage_on_all_three(angle):
    rgb, label, fov = fundus(64, seed=2)
    img_r, lab_r, fov_r = augment.rotate(rgb, label, fov, angle)
    np.testing.assert_allclose(img_r, sk_rotate(rgb, angle, order=1, preserve_range=True), atol=1e-5)
    # Masks: skimage's bilinear rotation thresholded at 0.5; close to nearest-neighbour.
    for mask, got in ((label, lab_r), (fov, fov_r)):
        assert got.dtype == bool and got.shape == mask.shape
        bilinear = sk_rotate(mask.astype(float), angle, order=1, preserve_range=True) >= 0.5
        assert np.mean(got != bilinear) < 0.002  # float32 vs float64 rounding at exact 0.5 ties
        nearest = sk_rotate(mask.astype(float), angle, order=0, preserve_range=True) > 0.5
        assert (got & nearest).sum() / (got | nearest).sum() > 0.8
        assert abs(int(got.sum()) - int(mask.sum())) <= 0.1 * mask.sum()


@pytest.mark.parametrize("angle", [22, 45, 90, 135, 180, 225, 270, 315])
def test_rotation_keeps_image_label_and_fov_aligned(angle):
    rgb, label, fov = fundus(64, seed=3)
    img_r, lab_r, fov_r = augment.rotate(rgb, label, fov, angle)
    # Vessels are the dark pixels of the rotated image inside the rotated FOV.
    dark = (img_r[..., 0] < 0.62) & fov_r & (img_r.sum(-1) > 0.3)
    iou = (dark & lab_r).sum() / max(1, (dark | lab_r).sum())
    assert iou > 0.6, iou
    # The rotated image is black (0) wherever the rotated FOV says "outside", up to the rim.
    outside = ~fov_r
    assert np.median(img_r[outside].sum(-1)) == 0.0
    # Label stays inside the FOV (rim pixels aside).
    assert (lab_r & ~fov_r).sum() <= 0.05 * lab_r.sum()


def test_rotation_centre_and_direction():
    """A marked pixel lands where a counter-clockwise turn about the centre puts it, in all three."""
    n = 41
    img = np.zeros((n, n, 3), np.float32)
    lab = np.zeros((n, n), bool)
    lab[10:13, 28:31] = True  # 3x3 block: up-right of centre
    img[lab] = 1.0
    fov = lab.copy()
    for angle in (45, 90):
        i, l, f = augment.rotate(img, lab, fov, angle)
        ci = np.argwhere(i[..., 0] > 0.5).mean(0)
        cl, cf = np.argwhere(l).mean(0), np.argwhere(f).mean(0)
        c, (r0, c0) = (n - 1) / 2, (11, 29)
        a = np.deg2rad(angle)
        # counter-clockwise on screen (rows grow downwards)
        exp = (c - ((c0 - c) * np.sin(a) + (c - r0) * np.cos(a)), c + ((c0 - c) * np.cos(a) - (c - r0) * np.sin(a)))
        for got in (ci, cl, cf):
            np.testing.assert_allclose(got, exp, atol=0.6)


def test_right_angles_are_exact_and_swap_sides():
    rgb = np.random.default_rng(0).random((30, 40, 3)).astype(np.float32)
    lab = np.zeros((30, 40), bool)
    lab[3, 5] = True
    fov = np.ones((30, 40), bool)
    i, l, f = augment.rotate(rgb, lab, fov, 90)
    assert i.shape == (40, 30, 3) and l.shape == f.shape == (40, 30)
    np.testing.assert_array_equal(i, np.rot90(rgb))
    assert l[np.nonzero(l)].size == 1 and f.all()


def test_flips():
    rgb, label, fov = fundus(32, seed=4)
    i, l, f = augment.flip(rgb, label, fov, 1)
    np.testing.assert_array_equal(i, rgb[:, ::-1])
    np.testing.assert_array_equal(l, label[:, ::-1])
    np.testing.assert_array_equal(f, fov[:, ::-1])


def test_sampler_crops_pads_and_is_reproducible():
    rgb, label, fov = fundus(40, seed=5)
    views = augment.offline_views(rgb, label, fov)
    s = augment.PatchSampler(views, crop=48, seed=7)  # larger than the image: padded
    img, lab, fv = s.sample(3)
    assert img.shape == (48, 48, 3) and lab.shape == fv.shape == (48, 48)
    # the 4 padded pixels of each side are background outside the FOV
    assert not fv[:4].any() and not fv[:, :4].any() and not lab[:4].any()
    assert (img[:4] == 0).all()
    s2 = augment.PatchSampler(views, crop=48, seed=7)
    for k in (0, 3, 30, 12):  # any order: a crop depends only on (seed, index)
        for a, b in zip(s.sample(k), s2.sample(k)):
            np.testing.assert_array_equal(a, b)
    # one epoch visits every view once
    small = augment.PatchSampler(views, crop=16, seed=1)
    assert sorted(small._view_index(k) for k in range(11)) == list(range(11))
    # mirroring happens about half of the time, and only left-right
    flat = augment.PatchSampler(views[:1], crop=40, seed=2)
    mirrored = [np.array_equal(flat.sample(k)[1], views[0].label[:, ::-1]) for k in range(40)]
    assert 8 < sum(mirrored) < 32


def test_default_crop():
    assert augment.default_crop((584, 565, 3)) == 512
    assert augment.default_crop((605, 700)) == 512
    assert augment.default_crop((960, 999, 3)) == 736


def test_clahe_uses_preprocessing():
    rgb, _, _ = fundus(64, seed=6)
    out = augment.clahe(rgb)
    assert out.shape == rgb.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], out[..., 1])


NOISE_ONLY = augment.Photometric(
    brightness=0.0,
    contrast=(1.0, 1.0),
    gamma=(1.0, 1.0),
    saturation=(1.0, 1.0),
    blur_p=0.0,
    noise_p=1.0,
    noise_std=(0.03, 0.03),
    jpeg_p=0.0,
)


def _fine_grain(img, fov):
    """Standard deviation of what a 1-pixel blur removes (noise), inside the FOV, green channel."""
    from scipy.ndimage import gaussian_filter

    g = img[..., 1].astype(np.float32)
    return float((g - gaussian_filter(g, 1.0))[fov].std())


def test_robust_sampler_is_reproducible_and_keeps_masks_aligned():
    rgb, label, fov = fundus(120, seed=3)
    view = augment.View(augment.to_uint8(rgb), label, fov)
    for clahe in (False, True):
        a = augment.RobustSampler([view], crop=64, seed=4, clahe=clahe)
        b = augment.RobustSampler([view], crop=64, seed=4, clahe=clahe)
        for k in (5, 0, 9):
            img, lab, fv = a.sample(k)
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and lab.shape == fv.shape == (64, 64)
            assert not (lab & ~fv).any()  # the label never leaves the FOV, whatever the rotation
            for x, y in zip((img, lab, fv), b.sample(k)):
                np.testing.assert_array_equal(x, y)
        if clahe:
            np.testing.assert_array_equal(img[..., 0], img[..., 2])  # CLAHE on green, as grey


def test_camera_noise_goes_through_clahe_as_it_does_at_inference():
    """The jitter models the camera, so it comes before CLAHE: the network then trains on noise
    as strong as CLAHE makes a noisy photograph's (equalising the jittered crop), not on noise
    added to an image already equalised."""
    from napari_dpn.preprocess import clahe_green

    rgb, label, fov = fundus(160, seed=8, n_vessels=2)
    rgb = rgb * 0.4  # as dark as a real fundus photograph, which CLAHE stretches (and its noise with it)
    before = augment.RobustSampler(  # the old order: CLAHE on the whole image, jitter after
        [augment.View(augment.to_uint8(clahe_green(rgb)), label, fov)], 96, seed=1, photometric=NOISE_ONLY
    )
    after = augment.RobustSampler(
        [augment.View(augment.to_uint8(rgb), label, fov)], 96, seed=1, photometric=NOISE_ONLY, clahe=True
    )
    ratios = []
    for k in range(6):
        (a, _, fa), (b, _, fb) = before.sample(k), after.sample(k)
        np.testing.assert_array_equal(fa, fb)  # same crop geometry
        if fb.sum() > 500:
            ratios.append(_fine_grain(b, fb) / _fine_grain(a, fa))
    assert len(ratios) >= 3 and min(ratios) > 1.25  # 1.0 in the old order; DRIVE image 21: 2.0-2.3


def test_ablation_switches_off_one_part_and_keeps_every_other_draw():
    """An ablation run must differ from the full augmentation in the part left out only: the
    parts switched off become the identity, and the crops, mirrors and other jitters stay the same."""
    rgb, label, fov = fundus(120, seed=5)
    view = augment.View(augment.to_uint8(rgb), label, fov)
    photometric = ("exposure", "blur", "noise", "jpeg")
    plain = augment.RobustSampler([view], crop=48, seed=2, photometric=None)
    no_jitter = augment.RobustSampler([view], crop=48, seed=2, off=photometric)
    full = augment.RobustSampler([view], crop=48, seed=2)
    changed = 0
    for k in range(6):
        for x, y in zip(plain.sample(k), no_jitter.sample(k)):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(plain.sample(k)[1], full.sample(k)[1])  # the same crop as the full run
        changed += not np.array_equal(plain.sample(k)[0], full.sample(k)[0])
    assert changed >= 5  # and the full run's jitter does change the pixels

    # Without rotation and scale jitter the crop is a plain window of the image (or its mirror),
    # where it may reach a little past the border (zeros).
    still = augment.RobustSampler([view], crop=48, seed=2, photometric=None, off=("rotation", "scale"))
    padded = np.pad(augment.pad_to(view, 48).label, 48)
    for k in range(6):
        lab = still.sample(k)[1]
        windows = np.lib.stride_tricks.sliding_window_view(padded, lab.shape)
        found = (windows == lab).all(axis=(2, 3)).any() or (windows == lab[:, ::-1]).all(axis=(2, 3)).any()
        assert found and lab.any()
    with pytest.raises(ValueError, match="unknown augmentation part"):
        augment.RobustSampler([view], crop=48, off=("sharpness",))
