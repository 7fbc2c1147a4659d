"""Tiny synthetic images for the tests: a fundus-like orange-red disc on black with a few dark curvy
"vessels" (the label is exactly those curves, the FOV exactly the disc), and a Y-shaped vessel tree."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import disk, line, line_aa


def fundus(size: int | tuple[int, int] = 64, seed: int = 0, n_vessels: int = 4):
    """(rgb float32 (h, w, 3) in 0..1, label bool, fov bool); ``size``: a side, or (h, w)."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    fov = np.zeros((h, w), bool)
    fov[disk((h / 2 - 0.5, w / 2 - 0.5), min(h, w) * 0.45, shape=fov.shape)] = True
    label = np.zeros((h, w), bool)
    size = min(h, w)
    for _ in range(n_vessels):
        # A wavy polyline from one side of the disc to the other.
        t = np.linspace(0, 1, 12)
        a = rng.uniform(0, np.pi)
        c = np.array([h / 2, w / 2]) + rng.uniform(-size / 6, size / 6, 2)
        d = np.array([np.cos(a), np.sin(a)])
        n = np.array([-d[1], d[0]])
        amp, freq, phase = rng.uniform(1, size / 12), rng.uniform(1, 3), rng.uniform(0, 6.3)
        pts = c + np.outer((t - 0.5) * size, d) + np.outer(amp * np.sin(2 * np.pi * freq * t + phase), n)
        for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:]):
            rr, cc, _ = line_aa(int(r0), int(c0), int(r1), int(c1))
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            label[rr[ok], cc[ok]] = True
    label &= fov
    rgb = np.zeros((h, w, 3), np.float32)
    rgb[fov] = (0.8, 0.35, 0.15)
    rgb[label] = (0.45, 0.12, 0.06)
    rgb += rng.normal(0, 0.03, rgb.shape).astype(np.float32) * fov[..., None]
    return np.clip(rgb, 0, 1), label, fov


def fundus_uint8(size: int | tuple[int, int] = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB, vessel mask): the same picture as a camera file holds it."""
    rgb, label, _ = fundus(size, seed)
    return (rgb * 255).round().astype(np.uint8), label


def y_tree(size=80, width=1):
    """A Y: a trunk from the bottom to a fork at (40, 40), two arms up-left and up-right."""
    m = np.zeros((size, size), bool)
    for r0, c0, r1, c1 in ((75, 40, 40, 40), (40, 40, 8, 10), (40, 40, 8, 70)):
        rr, cc = line(r0, c0, r1, c1)
        m[rr, cc] = True
    if width > 1:
        m = ndimage.binary_dilation(m, iterations=width // 2)
    return m
