"""The click tools change only what is at the click (issue 20, item 5).

A probability map of a vessel tree whose vessels fade out over a few pixels, as a network's map
does: at a low threshold every vessel has a halo, and the halos of the whole tree touch.  One
branch is missed by the threshold; *Add vessel here* on it must add that branch (joined to the
tree) and nothing far from the click, whatever the low threshold.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import line

from napari_dpn import vessel_tools

SIZE = 400
THRESHOLD = 0.5
# (r0, c0, r1, c1, peak): a trunk, branches, sub-branches; the last one is the missed branch.
VESSELS = (
    (390, 200, 200, 200, 0.95),
    (200, 200, 40, 80, 0.9),
    (200, 200, 40, 330, 0.9),
    (120, 140, 90, 30, 0.85),
    (120, 265, 60, 380, 0.85),
    (300, 200, 300, 360, 0.9),
    (300, 200, 300, 40, 0.9),
)
MISSED = (300, 280, 270, 300, 0.45)  # below the threshold, above every low threshold < 0.45
CLICK = (285, 290)


def _line_map(r0, c0, r1, c1, peak, sigma=2.0):
    m = np.zeros((SIZE, SIZE), bool)
    rr, cc = line(r0, c0, r1, c1)
    m[rr, cc] = True
    d = ndimage.distance_transform_edt(~m)
    return peak * np.exp(-(d**2) / (2 * sigma**2)), m


def tree():
    """(probability, thresholded mask, centre line of the missed branch)."""
    prob = np.zeros((SIZE, SIZE))
    for v in VESSELS:
        prob = np.maximum(prob, _line_map(*v)[0])
    missed, centre = _line_map(*MISSED)
    prob = np.maximum(prob, missed).astype(np.float32)
    return prob, prob >= THRESHOLD, centre & (prob < THRESHOLD)


def _chebyshev(pixels, point):
    rr, cc = np.nonzero(pixels)
    return np.maximum(np.abs(rr - point[0]), np.abs(cc - point[1]))


@pytest.mark.parametrize("low", [0.1, 0.2, 0.3, 0.4])
def test_add_vessel_adds_the_missed_segment_and_nothing_far_away(low):
    prob, mask, centre = tree()
    added = vessel_tools.vessel_region(prob, mask, CLICK, low)
    assert added.any() and not (added & mask).any()
    radius = vessel_tools.click_radius(prob.shape)
    far = _chebyshev(added, CLICK)
    assert far.max() <= radius, f"{int((far > radius).sum())} px added beyond {radius} px of the click"
    # The missed branch itself comes back, joined to the tree it leaves.
    assert added[centre].mean() > 0.95
    joined, _ = ndimage.label(mask | added, structure=np.ones((3, 3), bool))
    assert joined[CLICK] == joined[390, 200], "the new segment meets the trunk"
    # The existing vessels are not thickened beyond the junction: pixels added next to the old
    # vessels (their halo) lie where the branch meets them.
    halo = added & (ndimage.distance_transform_edt(~mask) <= vessel_tools.HALO_PX)
    assert halo.sum() < 80 and _chebyshev(halo, (300, 280)).max() <= 16


def test_add_vessel_added_pixels_are_a_small_part_of_the_tree():
    """The report's numbers: one click added 18,266 px to an 18,600-px mask."""
    prob, mask, centre = tree()
    for low in (0.1, 0.3):
        added = vessel_tools.add_vessel(prob, mask, CLICK, low) & ~mask
        assert added.sum() < 0.1 * mask.sum(), (low, int(added.sum()), int(mask.sum()))


def test_add_vessel_clicked_on_an_existing_vessel_does_not_thicken_the_tree():
    prob, mask, _ = tree()
    added = vessel_tools.vessel_region(prob, mask, (250, 200), 0.2)  # on the trunk
    assert added.sum() < 150 and _chebyshev(added, (250, 200)).max() <= 16


def test_click_radius_follows_the_image_size():
    assert vessel_tools.click_radius((565, 584)) == 40
    assert vessel_tools.click_radius((2300, 3500)) == 140


def test_remove_branch_in_empty_space_removes_nothing_far_away():
    _, mask, _ = tree()
    assert not vessel_tools.branch_pixels(mask, (20, 380)).any()  # far from every vessel
    assert vessel_tools.branch_pixels(mask, (250, 203)).any()  # 3 px beside the trunk


def test_other_click_tools_stay_local():
    prob, mask, _ = tree()
    traced = vessel_tools.trace_pixels(prob, mask, (298, 282), (272, 299), 2)
    assert traced.any() and _chebyshev(traced, (285, 290)).max() <= 40
    on, off = vessel_tools.threshold_box(prob, mask, None, (260, 260, 320, 320), 0.2)
    changed = on | off
    assert changed.any() and not changed[:260].any() and not changed[320:].any()
    assert not changed[:, :260].any() and not changed[:, 320:].any()


# ----------------------------------------------------------------------------- item 11: Cancel stops a pass


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from napari_dpn.models import load_model
    from widget_setup import save_random_model

    return load_model(save_random_model(tmp_path_factory.mktemp("models")))


def _stop_after(seconds):
    import time

    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0 > seconds


def test_cancel_stops_a_single_untiled_pass_between_layers(tiny_model):
    import time

    from napari_dpn.inference import predict

    rgb = np.random.default_rng(0).random((640, 640, 3), dtype=np.float32)
    t0 = time.perf_counter()
    predict(tiny_model, rgb, device="cpu")
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    with pytest.raises(InterruptedError):
        predict(tiny_model, rgb, device="cpu", should_stop=_stop_after(0.1 * full))
    assert time.perf_counter() - t0 < 0.6 * full, "it stopped inside the pass, not after it"
    # The model still runs whole passes afterwards (in this thread, without a check).
    assert predict(tiny_model, rgb[:64, :64], device="cpu").probability.shape == (64, 64)


def test_cancel_stops_the_fused_segmentation_between_passes(tiny_model, monkeypatch):
    import napari_dpn.inference as inference
    from napari_dpn.segmentation import segment

    calls = []
    real = inference.predict

    def counted(loaded, rgb, **kw):
        calls.append(rgb.shape)
        return real(loaded, rgb, **kw)

    monkeypatch.setattr(inference, "predict", counted)
    stop = {"now": False}

    def progress(f):
        stop["now"] = stop["now"] or f >= 0.2  # the first pass is over

    rgb = np.random.default_rng(0).random((96, 96, 3), dtype=np.float32)
    with pytest.raises(InterruptedError):
        segment(
            tiny_model,
            rgb,
            scale="native",
            fusion=1.5,
            device="cpu",
            progress=progress,
            should_stop=lambda: stop["now"],
        )
    assert len(calls) == 1, "the second pass never started"
