"""Where to look next: the uncertainty of a probability map and its regions ranked, most
uncertain first (Qt-free; the *Correct a folder* widget's *Next uncertain region*)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def uncertainty(prob: np.ndarray, threshold: float = 0.5, sigma: float = 2.0) -> np.ndarray:
    """1 at the threshold, 0 at a certain 0 or 1 (``1 - |2p - 1|`` for threshold 0.5, rescaled
    around other thresholds), Gaussian-smoothed: float32 (H, W) in 0..1."""
    p = np.asarray(prob, np.float32)
    t = float(min(max(threshold, 1e-3), 1 - 1e-3))
    u = np.where(p < t, p / t, (1.0 - p) / (1.0 - t)).astype(np.float32)
    return ndimage.gaussian_filter(u, sigma) if sigma > 0 else u


def tta_uncertainty(loaded, rgb: np.ndarray, device="cpu", precision: str = "auto", sigma: float = 2.0) -> np.ndarray:
    """Disagreement of flip test-time augmentation: the standard deviation of the probability
    over the original and three flips (x2 so it spans 0..1), smoothed."""
    from .image_io import as_rgb
    from .inference import predict

    rgb = as_rgb(rgb)
    maps = []
    for flip in ((), (0,), (1,), (0, 1)):
        view = np.flip(rgb, flip) if flip else rgb
        p = predict(loaded, np.ascontiguousarray(view), device=device, precision=precision).probability
        maps.append(np.flip(p, flip) if flip else p)
    u = np.clip(2.0 * np.std(np.stack(maps), axis=0), 0, 1).astype(np.float32)
    return ndimage.gaussian_filter(u, sigma) if sigma > 0 else u


def rank_regions(uncert: np.ndarray, fov: np.ndarray | None = None, size: int = 64) -> list[tuple]:
    """Non-overlapping ``size`` x ``size`` regions (y0, x0, y1, x1, score), most uncertain first;
    the score is the summed uncertainty inside the FOV, so half-outside tiles rank lower."""
    u = np.asarray(uncert, np.float32)
    if fov is not None:
        u = u * np.asarray(fov, bool)
    h, w = u.shape
    out = []
    for y0 in range(0, h, size):
        for x0 in range(0, w, size):
            y1, x1 = min(h, y0 + size), min(w, x0 + size)
            if fov is not None and not np.asarray(fov, bool)[y0:y1, x0:x1].any():
                continue
            out.append((y0, x0, y1, x1, float(u[y0:y1, x0:x1].sum())))
    out.sort(key=lambda r: (-r[4], r[0], r[1]))
    return out
