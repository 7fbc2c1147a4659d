"""Field-of-view (FOV) estimation for fundus photographs that come without a FOV mask.

The paper's metrics count only pixels inside the FOV.  CHASE_DB1 and most users' own images have
no mask, so we estimate one: the fundus is the large bright disc, the border around it is dark.
Measured against the DRIVE and STARE masks in ``docs/fov.md`` (``scripts/benchmarks/measure_fov.py``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, morphology

from napari_dpn.errors import InputError

# Fallback limits: outside them the "disc" is not a plausible fundus FOV.
MIN_FRACTION = 0.20
MAX_FRACTION = 0.99
# Threshold position between the typical border and the typical fundus brightness: low, so the
# dim, vignetted periphery (CHASE_DB1) stays inside while the border noise stays out.
BORDER_STEP = 0.1
# Outside must be clearly darker than inside, otherwise there is no dark border to find.
MAX_BORDER_RATIO = 0.5
# Photographs whose shorter side exceeds twice this are estimated at this size and the mask is
# resampled back: the steps below cost the square of the side (a 2300 px image took 2.9 s, at
# 640 px it takes 0.03 s), and the border is no sharper than that at the scale of the disc.
WORKING_SIDE = 640


def estimate_fov(rgb: np.ndarray) -> np.ndarray:
    """Estimate the FOV of an RGB float image (H, W, 3) in 0..1 as a bool mask (H, W).

    Steps (all scale with the image's shorter side, tuned at ~600 px):
    1. smooth the red channel (the brightest fundus channel; smoothing removes JPEG noise);
    2. Otsu splits "dark border" from "fundus"; the threshold sits 10 % of the way from the
       border's median to the fundus' median, so dim vignetted edges and dark lesions stay
       inside while the (noisy, JPEG) border stays out;
    3. open to cut thin bridges, keep the largest connected component (drops camera text and
       labels in the corners), fill holes;
    4. erode by ~1 px so the bright rim ring of the border is excluded.

    Photographs larger than twice ``WORKING_SIDE`` are estimated on a shrunk copy.
    Falls back to the whole image (all True) when the result is degenerate: under 20 % or over
    99 % of the image, or when the excluded part is not clearly darker than the disc (an image
    with no dark border at all, e.g. a crop from inside the fundus).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise InputError(f"FOV estimation needs an RGB image (H, W, 3), got shape {rgb.shape}.")
    if min(rgb.shape[:2]) > 2 * WORKING_SIDE:
        from .scale import resample_image, resample_mask, resampled_shape

        small = resample_image(rgb, resampled_shape(rgb.shape, WORKING_SIDE / min(rgb.shape[:2])))
        return resample_mask(estimate_fov(small), rgb.shape[:2])
    whole = np.ones(rgb.shape[:2], dtype=bool)
    side = min(rgb.shape[:2])
    red = filters.gaussian(rgb[..., 0].astype(np.float32), sigma=max(1.0, side / 300))
    if float(red.max() - red.min()) < 1e-3:
        return whole
    otsu = filters.threshold_otsu(red)
    border, fundus = np.median(red[red <= otsu]), np.median(red[red > otsu])
    mask = red > border + BORDER_STEP * (fundus - border)
    mask = ndi.binary_opening(mask, morphology.disk(max(1, round(side / 200))))
    labels = measure.label(mask)
    if labels.max() == 0:
        return whole
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    mask = ndi.binary_fill_holes(labels == largest)
    mask = ndi.binary_erosion(mask, morphology.disk(max(1, round(side / 600))))

    fraction = mask.mean()
    if not MIN_FRACTION <= fraction <= MAX_FRACTION:
        return whole
    if red[~mask].mean() > MAX_BORDER_RATIO * red[mask].mean():
        return whole
    return mask
