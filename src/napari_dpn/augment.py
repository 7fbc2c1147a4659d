"""The paper's augmentations (section 4.2): an offline set of 11 views, then random crop + mirror.

Offline set.  The paper lists horizontal and vertical flips and rotations by 22, 45, 90, 135,
180, 225, 270 and 315 degrees and says the images were "augmented by a factor of 10".  The
official release's ``train.lst`` settles the count: it lists the original plus those ten
transforms (folders ``img``, ``img_m1``, ``img_m2``, ``img_22`` ... ``img_315``), 11 views per
image.  We use exactly these 11 views (:data:`OFFLINE_VIEWS`).

Rotations turn about the image centre on the same canvas (``resize=False``).  A fundus FOV is a
roughly centred disc, so it rotates into itself and nearly nothing inside it is lost, while an
expanded canvas would only add empty corners for the random crop to land in.  Multiples of 90
degrees use ``np.rot90`` (exact, lossless; width and height swap).  The image is interpolated
bilinearly; label and FOV bilinearly too and then thresholded at 0.5, which differs from
nearest-neighbour only by single pixels along mask edges and is ten times faster in
scikit-image (whose order-0 warp takes ~0.1 s per DRIVE-sized mask).  Everything rotated in from outside the image is 0: black in the
image and outside the FOV, so it never counts as vessel or as annotated background.

Per step.  A random crop of ``crop`` pixels (512; 736 for CHASE_DB1-sized images) and a random
left-right mirror (Caffe's ``mirror: true``).  Images smaller than the crop are padded with 0,
i.e. background outside the FOV.

Speed.  The views are computed once and kept as uint8 (the photographs are 8-bit; bilinear
values are rounded, an error below 0.2 %) with bool masks: 4 bytes per pixel per view, so
20 DRIVE images take about 290 MB.  A step then only slices a crop and maybe mirrors it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.transform import rotate as _sk_rotate

# (name, kind, parameter) of the release's 11 training views.
OFFLINE_VIEWS: tuple[tuple[str, str, int], ...] = (
    ("original", "identity", 0),
    ("flip_h", "flip", 1),  # left-right (release: img_m1/img_m2)
    ("flip_v", "flip", 0),  # up-down
    ("rot22", "rotate", 22),
    ("rot45", "rotate", 45),
    ("rot90", "rotate", 90),
    ("rot135", "rotate", 135),
    ("rot180", "rotate", 180),
    ("rot225", "rotate", 225),
    ("rot270", "rotate", 270),
    ("rot315", "rotate", 315),
)

# Short side from which an image counts as CHASE_DB1-sized (999x960) and gets the 736 crop.
LARGE_SIDE = 900


def default_crop(shape: tuple[int, ...]) -> int:
    """The paper's crop for an image of this (H, W[, C]) shape: 512, or 736 for CHASE-sized images."""
    return 736 if min(shape[:2]) >= LARGE_SIDE else 512


def clahe(rgb: np.ndarray) -> np.ndarray:
    """CLAHE on the green channel exactly as inference does it (``preprocess.clahe_green``)."""
    from .preprocess import clahe_green

    return clahe_green(rgb)


def rotate(image: np.ndarray, label: np.ndarray, fov: np.ndarray, angle: float):
    """Rotate image, label and FOV together by ``angle`` degrees counter-clockwise.

    Multiples of 90 are exact (``np.rot90``); other angles keep the canvas and fill with 0.
    """
    if angle % 90 == 0:
        k = int(angle // 90) % 4
        return tuple(np.ascontiguousarray(np.rot90(a, k)) for a in (image, label, fov))
    img = _sk_rotate(
        np.asarray(image, np.float32), angle, order=1, mode="constant", cval=0, preserve_range=True
    ).astype(np.float32)
    masks = np.stack([label, fov], axis=-1).astype(np.float32)
    masks = _sk_rotate(masks, angle, order=1, mode="constant", cval=0, preserve_range=True) >= 0.5
    return img, masks[..., 0], masks[..., 1]


def flip(image: np.ndarray, label: np.ndarray, fov: np.ndarray, axis: int):
    """Mirror all three along ``axis`` (1: left-right, 0: up-down)."""
    return tuple(np.ascontiguousarray(np.flip(a, axis)) for a in (image, label, fov))


def apply_view(kind: str, param: int, image, label, fov):
    if kind == "identity":
        return image, label, fov
    if kind == "flip":
        return flip(image, label, fov, param)
    return rotate(image, label, fov, param)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)


@dataclass
class View:
    """One precomputed training view: uint8 RGB and bool label / FOV."""

    image: np.ndarray
    label: np.ndarray
    fov: np.ndarray
    name: str = ""


def offline_views(image, label, fov, augment: bool = True, name: str = "") -> list[View]:
    """The 11 offline views of one image (only the original when ``augment`` is False)."""
    views = []
    for view_name, kind, param in OFFLINE_VIEWS if augment else OFFLINE_VIEWS[:1]:
        img, lab, fv = apply_view(kind, param, image, label, fov)
        views.append(
            View(
                to_uint8(img), np.asarray(lab, bool), np.asarray(fv, bool), f"{name}:{view_name}" if name else view_name
            )
        )
    return views


def pad_to(view: View, crop: int) -> View:
    """Pad a view with 0 (background outside the FOV) so both sides are at least ``crop``."""
    h, w = view.label.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    if not ph and not pw:
        return view
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    return View(np.pad(view.image, pads + ((0, 0),)), np.pad(view.label, pads), np.pad(view.fov, pads), view.name)


class PatchSampler:
    """Random crops of the precomputed views, reproducible from ``(seed, sample index)`` alone.

    Views are visited epoch by epoch in a shuffled order (as Caffe's data layer with
    ``shuffle: true``); the crop position and the mirror come from a generator seeded with the
    sample index.  No sampler state needs saving, so a resumed run draws the same crops.
    """

    def __init__(self, views: list[View], crop: int, seed: int = 0, mirror: bool = True):
        if not views:
            raise ValueError("no views to sample from")
        self.views = [pad_to(v, crop) for v in views]
        self.crop, self.seed, self.mirror = int(crop), int(seed), mirror
        self._epoch, self._order = -1, np.arange(len(self.views))

    def _view_index(self, index: int) -> int:
        epoch, pos = divmod(index, len(self.views))
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.views))
            self._epoch = epoch
        return int(self._order[pos])

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Crop number ``index``: (uint8 (C, C, 3), bool (C, C) label, bool (C, C) FOV)."""
        view = self.views[self._view_index(index)]
        rng = np.random.default_rng([self.seed, 1, index])
        h, w = view.label.shape
        y = int(rng.integers(0, h - self.crop + 1))
        x = int(rng.integers(0, w - self.crop + 1))
        sl = (slice(y, y + self.crop), slice(x, x + self.crop))
        img, lab, fv = view.image[sl], view.label[sl], view.fov[sl]
        if self.mirror and rng.random() < 0.5:
            img, lab, fv = img[:, ::-1], lab[:, ::-1], fv[:, ::-1]
        return img, lab, fv


# --------------------------------------------------------------------------- any-camera augmentation


@dataclass(frozen=True)
class Photometric:
    """Ranges of the per-crop jitter that makes a network robust to cameras it never saw.

    Applied to the network's input image (after CLAHE when the model uses it): exposure
    (brightness, contrast, gamma), optics (Gaussian blur), sensor noise and JPEG re-compression.
    """

    brightness: float = 0.10  # +- added, on 0..1
    contrast: tuple[float, float] = (0.7, 1.4)
    gamma: tuple[float, float] = (0.7, 1.45)
    saturation: tuple[float, float] = (0.6, 1.4)  # only matters for colour input (no CLAHE)
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.4, 1.3)
    noise_p: float = 0.3
    noise_std: tuple[float, float] = (0.005, 0.04)
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (25, 90)


# Parts of the any-camera augmentation that ``RobustSampler(off=...)`` can switch off one by one,
# to measure what each is worth (scripts/benchmarks/augment_ablation.py).
AUGMENT_PARTS = {
    "exposure": "brightness, contrast, gamma and saturation",
    "blur": "Gaussian blur",
    "noise": "sensor noise",
    "jpeg": "JPEG re-compression",
    "scale": "scale jitter around the working scale",
    "rotation": "rotation by any angle (mirroring stays)",
}


def photometric_without(parts, ph: Photometric = Photometric()) -> Photometric:
    """``ph`` with the named photometric parts switched off.

    Their ranges collapse to the identity instead of being skipped, so every random draw still
    happens and the other parts see the same numbers: the runs of an ablation differ in one
    part only."""
    from dataclasses import replace

    off = set(parts)
    changes: dict[str, Any] = {}
    if "exposure" in off:
        changes.update(brightness=0.0, contrast=(1.0, 1.0), gamma=(1.0, 1.0), saturation=(1.0, 1.0))
    for part in ("blur", "noise", "jpeg"):
        if part in off:
            changes[f"{part}_p"] = 0.0
    return replace(ph, **changes)


def jitter(img: np.ndarray, rng: np.random.Generator, ph: Photometric = Photometric()) -> np.ndarray:
    """One random photometric variant of a uint8 (H, W, 3) crop, still uint8."""
    from scipy.ndimage import gaussian_filter

    x = img.astype(np.float32) / 255.0
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(*ph.saturation)
    x = (x - x.mean()) * rng.uniform(*ph.contrast) + x.mean() + rng.uniform(-ph.brightness, ph.brightness)
    x = np.clip(x, 0, 1) ** rng.uniform(*ph.gamma)
    if rng.random() < ph.blur_p:
        x = gaussian_filter(x, sigma=(rng.uniform(*ph.blur_sigma),) * 2 + (0,))
    if rng.random() < ph.noise_p:
        x = x + rng.normal(0, rng.uniform(*ph.noise_std), x.shape).astype(np.float32)
    out = to_uint8(np.clip(x, 0, 1))
    if rng.random() < ph.jpeg_p:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=int(rng.integers(*ph.jpeg_quality)))
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


class RobustSampler:
    """Random crops for any-camera training, reproducible from ``(seed, sample index)`` alone.

    Instead of the paper's 11 fixed views, every crop gets its own random rotation (any angle),
    mirror, and scale jitter around the working scale (log-uniform in ``scale_range``), cut by one
    affine resampling of the whole image (bilinear image, nearest-neighbour masks), then the
    photometric jitter above.  Images are visited epoch by epoch in a shuffled order.  ``off``
    names parts of ``AUGMENT_PARTS`` to leave out (an ablation), keeping the random draws.

    With ``clahe`` the views are plain RGB and CLAHE runs on each crop *after* the jitter, as it
    runs on a photograph at inference: a camera's noise and JPEG blocks go through CLAHE, which
    amplifies them.  (Jitter on an already equalised image, as before, taught the network far
    weaker noise than users' photographs bring: sensor noise of sigma 0.02 cost dpn-universal 0.026
    AUC on DRIVE, docs/results.md.)  The crop is cut with a margin of half a CLAHE tile so its
    tiles see their context; the tile is an eighth of the view's sides, as inference uses on the
    whole image, times the crop's zoom.
    """

    def __init__(
        self,
        images: list[View],
        crop: int,
        seed: int = 0,
        scale_range: tuple[float, float] = (0.8, 1.25),
        photometric: Photometric | None = Photometric(),
        clahe: bool = False,
        off: tuple[str, ...] = (),
    ):
        if not images:
            raise ValueError("no images to sample from")
        unknown = set(off) - set(AUGMENT_PARTS)
        if unknown:
            raise ValueError(f"unknown augmentation part(s) {sorted(unknown)}; known: {', '.join(AUGMENT_PARTS)}")
        if photometric is not None:
            photometric = photometric_without(off, photometric)
        self.rotate = "rotation" not in off
        if "scale" in off:
            scale_range = (1.0, 1.0)
        self.tiles = [(v.label.shape[0] / 8, v.label.shape[1] / 8) for v in images]  # before padding
        self.views = [pad_to(v, crop) for v in images]
        self.crop, self.seed = int(crop), int(seed)
        self.scale_range, self.photometric, self.clahe = scale_range, photometric, bool(clahe)
        self._epoch, self._order = -1, np.arange(len(self.views))

    _view_index = PatchSampler._view_index

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Crop number ``index``: (uint8 (C, C, 3), bool (C, C) label, bool (C, C) FOV)."""
        from scipy.ndimage import map_coordinates

        vi = self._view_index(index)  # type: ignore[misc]  # PatchSampler's rule, borrowed (not a subclass)
        view = self.views[vi]
        rng = np.random.default_rng([self.seed, 2, index])
        h, w = view.label.shape
        c = self.crop
        s = float(np.exp(rng.uniform(*np.log(self.scale_range))))  # >1: zoom in (vessels look wider)
        a = rng.uniform(0, 2 * np.pi)  # drawn even with rotation off: the later draws stay the same
        if not self.rotate:
            a = 0.0
        # Crop centre anywhere the rotated, scaled crop stays (mostly) inside the image.
        half = c / (2 * s) * (abs(np.cos(a)) + abs(np.sin(a))) / 2**0.5
        cy = rng.uniform(min(half, h / 2), max(h - half, h / 2))
        cx = rng.uniform(min(half, w / 2), max(w - half, w / 2))
        tile = tuple(max(8, round(t * s)) for t in self.tiles[vi]) if self.clahe else None
        m = (max(tile) + 1) // 2 if tile else 0  # context around the crop for its CLAHE tiles
        yy, xx = np.mgrid[0 : c + 2 * m, 0 : c + 2 * m].astype(np.float32) - (c + 2 * m - 1) / 2
        if rng.random() < 0.5:
            xx = -xx
        cos, sin = np.cos(a) / s, np.sin(a) / s
        coords = np.stack([cy + cos * yy - sin * xx, cx + sin * yy + cos * xx])
        img = np.stack(
            [map_coordinates(view.image[..., k], coords, order=1, mode="constant", cval=0) for k in range(3)], axis=-1
        )
        lab = map_coordinates(view.label.view(np.uint8), coords, order=0, mode="constant", cval=0) > 0
        fov = map_coordinates(view.fov.view(np.uint8), coords, order=0, mode="constant", cval=0) > 0
        if self.photometric is not None:
            img = jitter(img, rng, self.photometric)
        if self.clahe:
            from .preprocess import clahe_green

            inner = (slice(m, m + c), slice(m, m + c))
            img = to_uint8(clahe_green(img.astype(np.float32) / 255.0, kernel_size=tile)[inner])
            lab, fov = lab[inner], fov[inner]
        return img, lab, fov
