"""Image scale from the optic disc: pixels per degree without any metadata (issue #9, item 3).

The optic disc is about 1.8 mm, roughly 6 degrees of retina across, in nearly every adult eye, so
its diameter in pixels over ``DISC_DEGREES`` is the photograph's pixels per degree, whatever the
camera's field angle.  The detector works on a copy shrunk so the field of view is ``WORK_FOV`` px
wide (fast, and the same parameters fit every camera):

1. remove the vessels by a grey closing of luminance (the disc is the brightest large blob once
   the dark vessels that cross it are filled in);
2. candidates: the brightest blobs of the smoothed closed image inside the eroded FOV; each is
   scored by its brightness plus the density of dark vessel-like detail around it (the big
   vessels converge on the disc; bright exudates and reflexes have none), or of a vessel
   probability map when the caller has one;
3. diameter: along rays from the winner's centre, where the closed image falls a quarter of the way from the
   disc's level to the surrounding retina's; twice the median radius (rays leaving the FOV first
   are not counted, so a disc cut by the edge still measures).

It never raises: ``DiscEstimate.note`` says in one sentence why no disc was found.  Measured on the
test splits (docs/scale.md) it is within ~13 % (median) on DRIVE and STARE but 30 % on CHASE_DB1,
not clearly better than the 45 degree guess, so it is opt-in (``scale='disc'``), never the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, morphology

# Calibrated on the training images of DRIVE, STARE and CHASE_DB1 (scripts/benchmarks/disc_scale.py):
# the disc diameter this detector measures, in degrees of retina.
DISC_DEGREES = 6.1
WORK_FOV = 500  # px: the FOV diameter of the working copy (a disc is then 60-100 px wide)
NO_FOV_SIDE = 1000  # px: its longer side without a circular FOV (ultra-widefield: a wider field)
VESSEL_RADIUS = 6  # px at the working size: the closing that fills the vessels crossing the disc
SMOOTH = 8.0  # px: Gaussian sigma for finding bright blobs
N_CANDIDATES = 5  # brightest blobs compared
# Weight of the vessel density against brightness when choosing among the blobs (train: with the
# black top-hat, more weight picked the dense vessels next to the disc; with a network's map, 1.0).
W_TOPHAT, W_VESSELS = 0.25, 1.0
MIN_RADIUS, MAX_RADIUS = 8, 110  # px at the working size: the disc radii searched
FIRST_RADIUS = 40  # px at the working size: the radius guessed before the first measurement
N_REFINE = 2  # measurements, each with the surround placed by the previous radius
SURROUND = (1.6, 3.0)  # the retina's level: median over this annulus, in disc radii
PEAK_RADIUS, PEAK_PERCENTILE = 5, 90  # the disc's level: this percentile within this radius of its centre
# The edge: where the level falls this share of the way from the disc's level to the retina's.  Low,
# because the disc's level is its bright cup (at 0.5 the cup was measured, not the disc).
EDGE_LEVEL = 0.25
N_RAYS = 72
MIN_CONTRAST = 0.04  # the disc must be this much brighter (0..1 luminance) than the retina around it
MIN_RAYS = 0.35  # share of rays that must find the edge inside the FOV


@dataclass
class DiscEstimate:
    """Where the optic disc is and how wide, in the original image's pixels (None: not found)."""

    ppd: float | None
    diameter: float | None = None  # px
    centre: tuple[float, float] | None = None  # (row, col)
    contrast: float | None = None  # disc level - surround level (0..1 luminance)
    note: str | None = None  # why no disc was found, in one sentence

    def describe(self) -> str:
        if self.ppd is None:
            return f"no optic disc: {self.note}"
        return f"optic disc {self.diameter:.0f} px / {DISC_DEGREES:g} deg"


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Red plus green: the disc is bright in both, and one saturates where the other does not."""
    return 0.5 * rgb[..., 0] + 0.5 * rgb[..., 1]


def _working_copy(rgb, fov, vessels):
    from .scale import fov_diameter, resample_image, resample_mask, resampled_shape

    rgb = np.asarray(rgb, np.float32)
    fov = np.ones(rgb.shape[:2], bool) if fov is None else np.asarray(fov, bool)
    diameter = fov_diameter(fov)
    factor = WORK_FOV / diameter if diameter else NO_FOV_SIDE / max(rgb.shape[:2])
    size = resampled_shape(rgb.shape, factor)
    lum = resample_image(_luminance(rgb), size)
    fov_w = resample_mask(fov, size)
    ves = None if vessels is None else resample_image(np.asarray(vessels, np.float32), size)
    return lum, fov_w, ves, factor


def _edge_radii(closed, fov, centre, level):
    """Per ray: the first radius where ``closed`` drops below ``level`` (NaN: left the FOV first)."""
    angles = np.linspace(0, 2 * np.pi, N_RAYS, endpoint=False)
    radii = np.arange(MIN_RADIUS // 2, MAX_RADIUS + 1, 0.5)
    rr = centre[0] + np.outer(np.sin(angles), radii)
    cc = centre[1] + np.outer(np.cos(angles), radii)
    vals = ndi.map_coordinates(closed, [rr, cc], order=1, mode="nearest")
    inside = ndi.map_coordinates(fov.astype(np.float32), [rr, cc], order=0, mode="constant") > 0.5
    out = np.full(N_RAYS, np.nan)
    for i in range(N_RAYS):
        below = np.flatnonzero((vals[i] < level) | ~inside[i])
        if below.size and inside[i, below[0]]:
            out[i] = radii[below[0]]
    return out


def _standardise(image, inside, peaks):
    """Values at ``peaks`` on a scale where the median of ``inside`` is 0 and its top is 1."""
    vals = image[inside]
    med = np.median(vals)
    return (image[tuple(peaks.T)] - med) / (vals.max() - med + 1e-6)


def find_disc(rgb: np.ndarray, fov: np.ndarray | None = None, vessels: np.ndarray | None = None) -> DiscEstimate:
    """Locate and measure the optic disc of an RGB float image (H, W, 3) in 0..1.

    ``fov``: the field of view (None: the whole frame); ``vessels``: an optional vessel probability
    map of the same size (helps to tell the disc from bright lesions).  Never raises."""
    try:
        return _find_disc(rgb, fov, vessels)
    except Exception as exc:  # noqa: BLE001 - an estimate, not a requirement
        return DiscEstimate(None, note=f"the optic disc search failed ({type(exc).__name__}: {exc})")


def _find_disc(rgb, fov, vessels) -> DiscEstimate:
    lum, fov_w, ves, factor = _working_copy(rgb, fov, vessels)
    if fov_w.sum() < 100:
        return DiscEstimate(None, note="the field of view is too small to hold an optic disc")
    inner = ndi.binary_erosion(fov_w, morphology.disk(VESSEL_RADIUS + 2))
    fill = float(np.median(lum[fov_w]))
    lum = np.where(fov_w, lum, fill)
    closed = ndi.grey_closing(lum, footprint=morphology.disk(VESSEL_RADIUS))
    smooth = ndi.gaussian_filter(closed, SMOOTH)
    # Dark thin detail (vessels): black top-hat of the luminance, or the caller's probability map.
    weight = W_VESSELS
    if ves is None:
        ves, weight = np.clip(closed - lum, 0, None), W_TOPHAT
    density = ndi.gaussian_filter(np.where(fov_w, ves, 0), 3 * SMOOTH)
    peaks = feature.peak_local_max(
        np.where(inner, smooth, smooth.min()), min_distance=int(2 * SMOOTH), num_peaks=N_CANDIDATES
    )
    if not len(peaks):
        return DiscEstimate(None, note="no bright blob was found inside the field of view")
    bright, dens = _standardise(smooth, inner, peaks), _standardise(density, inner, peaks)
    best = int(np.argmax(bright + weight * dens))
    centre = tuple(float(v) for v in peaks[best])
    yy, xx = np.ogrid[: lum.shape[0], : lum.shape[1]]
    dist = np.hypot(yy - centre[0], xx - centre[1])
    peak_level = float(np.percentile(closed[(dist <= PEAK_RADIUS) & fov_w], PEAK_PERCENTILE))
    radius: float = FIRST_RADIUS
    for _ in range(N_REFINE):  # the surround is measured at a distance relative to the disc's radius
        dist = np.hypot(yy - centre[0], xx - centre[1])
        surround = fov_w & (dist >= SURROUND[0] * radius) & (dist <= SURROUND[1] * radius)
        if surround.sum() < 50:
            return DiscEstimate(None, note="too little retina around the brightest blob to measure a disc")
        base = float(np.median(closed[surround]))
        contrast = peak_level - base
        if contrast < MIN_CONTRAST:
            return DiscEstimate(None, contrast=contrast, note="no blob clearly brighter than the retina around it")
        radii = _edge_radii(closed, fov_w, centre, base + EDGE_LEVEL * contrast)
        ok = np.isfinite(radii)
        if ok.mean() < MIN_RAYS:
            return DiscEstimate(None, contrast=contrast, note="the edge of the brightest blob could not be traced")
        radius = float(np.median(radii[ok]))
    diameter = 2.0 * radius / factor
    centre_orig = (centre[0] / factor, centre[1] / factor)
    return DiscEstimate(diameter / DISC_DEGREES, diameter, centre_orig, contrast)


def scale_from_disc(rgb: np.ndarray, fov: np.ndarray | None, card):
    """The ``scale.Scale`` that brings this photograph to ``card``'s working px/deg, from its optic
    disc; the native scale with one sentence when no disc (or no plausible scale) is found."""
    from . import scale as scale_mod

    target = scale_mod.working_ppd(card)
    if target is None:
        return scale_mod.fallback(f"the model card of {getattr(card, 'name', 'this model')} records no working scale")
    found = find_disc(rgb, fov)
    if found.ppd is None:
        return scale_mod.fallback(f"no optic disc was found to estimate the scale from ({found.note})")
    return scale_mod.from_ppd(
        found.ppd,
        target,
        "disc",
        fov_diameter=None if fov is None else scale_mod.fov_diameter(fov),
        disc_diameter=found.diameter,
        disc_degrees=DISC_DEGREES,
    )
