"""Turn an RGB image into exactly the input a model was trained on (its card's ``input`` block)."""

from __future__ import annotations

import numpy as np
from skimage import exposure


def clahe_green(rgb: np.ndarray, clip_limit: float = 0.01, kernel_size=None) -> np.ndarray:
    """CLAHE on the green channel (the paper's STARE preprocessing), replicated to three channels.

    The green channel carries the best vessel contrast; equalising it locally and
    feeding it as a grey image also removes most colour differences between cameras.
    ``kernel_size``: the tile in pixels; None (inference) is an eighth of the image's sides.
    """
    green = np.ascontiguousarray(rgb[..., 1], dtype=np.float64)
    eq = exposure.equalize_adapthist(np.clip(green, 0, 1), kernel_size=kernel_size, clip_limit=clip_limit)
    eq = eq.astype(np.float32)
    return np.repeat(eq[..., None], 3, axis=2)


def normalise(rgb: np.ndarray, convention: dict) -> np.ndarray:
    """(H, W, 3) RGB float in 0..1 -> (3, H, W) float32 in the network's channel order and scale."""
    img = clahe_green(rgb) if convention.get("clahe") else np.asarray(rgb, dtype=np.float32)
    if convention.get("channel_order", "RGB").upper() == "BGR":
        img = img[..., ::-1]
    mean = np.asarray(convention.get("mean", [0, 0, 0]), np.float32)
    std = np.asarray(convention.get("std", [1, 1, 1]), np.float32)
    img = (img * np.float32(convention.get("scale", 1.0)) - mean) / std
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
