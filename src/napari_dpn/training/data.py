"""Training and validation pairs: loading, checking the annotations, and crops as network input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import TrainingError
from ..model import MIN_SIDE
from .events import MessageEvent


@dataclass
class Pair:
    """A checked training or validation image: RGB float32 0..1, bool label, bool FOV."""

    name: str
    rgb: np.ndarray
    label: np.ndarray
    fov: np.ndarray
    field_angle: float | None = None  # degrees, when the caller knows this photograph's camera
    scale: dict | None = None  # how it was resampled for training (to_working_scale), as Scale.to_dict


def _as_bool(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    return mask >= 0.5 if np.issubdtype(mask.dtype, np.floating) else mask > 0


# What a vessel annotation must look like to be trained on (real ones: 7-17 % of the FOV is vessel,
# the FOV 69-74 % of the image; see /work/shared/datasets/SOURCES.md).  Outside these bounds the
# annotation is unfinished, inverted or all vessel, and training on it would teach nonsense.
MIN_VESSEL_FRACTION = 0.001  # of the FOV pixels
MAX_VESSEL_FRACTION = 0.60  # of the FOV pixels, and of the whole image
MIN_FOV_FRACTION = 0.05  # of the image
MIN_BACKGROUND_PIXELS = 100  # non-vessel FOV pixels, whatever the fractions


def check_annotation(name: str, label: np.ndarray, fov: np.ndarray) -> None:
    """TrainingError (one sentence naming the bounds) unless ``label`` holds both classes in
    plausible amounts inside a plausible ``fov``: the FOV covers at least 5 % of the image, and
    vessels make up 0.1-60 % of the FOV (and at most 60 % of the whole image)."""
    fov_pixels = int(np.count_nonzero(fov))
    if fov_pixels < MIN_FOV_FRACTION * fov.size:
        raise TrainingError(
            f"{name}: the FOV mask covers only {fov_pixels / fov.size:.1%} of the image; "
            f"it must cover at least {MIN_FOV_FRACTION:.0%} (a fundus photograph's FOV "
            "is usually about 70 %)"
        )
    vessel = int(np.count_nonzero(label & fov))
    if vessel == 0:
        raise TrainingError(
            f"{name}: the annotation has no vessel pixels inside the FOV; an empty annotation cannot be trained on"
        )
    share, whole = vessel / fov_pixels, np.count_nonzero(label) / label.size
    bounds = (
        f"a vessel annotation must mark between {MIN_VESSEL_FRACTION:.1%} and "
        f"{MAX_VESSEL_FRACTION:.0%} of the FOV (real ones mark about 7-17 %)"
    )
    if share > MAX_VESSEL_FRACTION or fov_pixels - vessel < MIN_BACKGROUND_PIXELS:
        raise TrainingError(
            f"{name}: the annotation marks {share:.1%} of the FOV as vessel; {bounds}, so it looks inverted or filled"
        )
    if whole > MAX_VESSEL_FRACTION:
        raise TrainingError(
            f"{name}: the annotation marks {whole:.1%} of the whole image as vessel; {bounds} "
            "and of the image, so it looks inverted or filled outside the FOV"
        )
    if share < MIN_VESSEL_FRACTION:
        raise TrainingError(
            f"{name}: the annotation marks only {share:.2%} of the FOV as vessel; {bounds}, so it looks unfinished"
        )


def prepare_pairs(pairs, what: str = "training", emit: Callable[[Any], None] | None = None) -> list[Pair]:
    """Load and check pairs: ``(rgb, label[, fov])`` tuples or dataset ``Sample`` objects.

    A missing FOV (None, or a Sample without mask) is estimated with ``fov.estimate_fov`` and
    reported through ``emit``; mismatched sizes and empty annotations are errors.
    """
    pairs = list(pairs or [])
    if not pairs:
        raise TrainingError(f"no {what} images were given")
    out = []
    for i, p in enumerate(pairs, 1):
        name = str(getattr(p, "name", "") or f"{what} image {i}")
        fov = None
        if hasattr(p, "load"):
            rgb, label, fov = p.load()
        else:
            if len(p) not in (2, 3):
                raise TrainingError(f"{name}: expected (image, label) or (image, label, fov), got {len(p)} items")
            rgb, label = p[0], p[1]
            fov = p[2] if len(p) == 3 else None
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise TrainingError(f"{name}: expected an RGB image (H, W, 3), got shape {rgb.shape}")
        rgb = rgb.astype(np.float32, copy=False)
        if rgb.size and float(rgb.max()) > 1.0 + 1e-3:
            raise TrainingError(
                f"{name}: image values go up to {rgb.max():g}; expected RGB in 0..1 (use image_io.as_rgb)"
            )
        h, w = rgb.shape[:2]
        if min(h, w) < MIN_SIDE:
            raise TrainingError(f"{name}: the image is {w}x{h}; both sides must be at least {MIN_SIDE} pixels")
        if label is None:
            raise TrainingError(f"{name}: has no vessel annotation")
        label = _as_bool(label)
        if label.shape != (h, w):
            raise TrainingError(
                f"{name}: the annotation is {label.shape[1]}x{label.shape[0]} "
                f"but the image is {w}x{h} (W x H); they must be the same size"
            )
        if fov is None:
            from ..fov import estimate_fov

            fov = estimate_fov(rgb)
            if emit:
                emit(
                    MessageEvent(
                        f"{name}: no FOV mask given; estimated it from the image ({fov.mean():.0%} of the image)"
                    )
                )
        fov = _as_bool(fov)
        if fov.shape != (h, w):
            raise TrainingError(
                f"{name}: the FOV mask is {fov.shape[1]}x{fov.shape[0]} "
                f"but the image is {w}x{h} (W x H); they must be the same size"
            )
        if not fov.any():
            raise TrainingError(f"{name}: the FOV mask is empty")
        check_annotation(name, label, fov)
        out.append(Pair(name, rgb, label, fov, field_angle=getattr(p, "field_angle", None)))
    return out


def to_working_scale(pairs: list[Pair], loaded, scale, field_angle, emit=None) -> list[Pair]:
    """The pairs resampled (image, label and FOV) exactly as ``segmentation.segment`` resamples a
    photograph for ``loaded`` (its ``choose_scale``: the card's working scale, the FOV diameter and
    the field angle, 45 degrees when unknown), so a fine-tuned network learns vessels at the pixel
    size it will see them at.  A pair's own ``field_angle`` wins over ``field_angle``."""
    from ..scale import resample_image, resample_mask, resampled_shape
    from ..segmentation import choose_scale

    out = []
    for p in pairs:
        angle = p.field_angle if p.field_angle is not None else field_angle
        sc, _ = choose_scale(loaded, p.rgb, p.fov, scale, angle, device="cpu")
        size = resampled_shape(p.rgb.shape, sc.factor)
        if min(size) < MIN_SIDE:
            raise TrainingError(
                f"{p.name}: at the model's working scale (x{sc.factor:.3g}) the image would be "
                f"{size[1]}x{size[0]}; both sides must be at least {MIN_SIDE} pixels"
            )
        rgb, label, fov = p.rgb, p.label, p.fov
        if sc.factor != 1.0:
            rgb, label, fov = resample_image(rgb, size), resample_mask(label, size), resample_mask(fov, size)
            check_annotation(f"{p.name} (resampled x{sc.factor:.3g})", label, fov)
        if emit:
            emit(MessageEvent(f"{p.name}: {sc.describe()}"))
        out.append(Pair(p.name, rgb, label, fov, field_angle=p.field_angle, scale=sc.to_dict()))
    return out


def fingerprint(pairs: list[Pair]) -> list:
    return [[p.name, *p.label.shape, int(p.label.sum())] for p in pairs]


def network_input(crops: np.ndarray, convention: dict, device: torch.device) -> torch.Tensor:
    """uint8 crops (B, H, W, 3) -> (B, 3, H, W) float32 network input, computed on ``device``.

    The same arithmetic as ``preprocess.normalise`` (without CLAHE, which the training views
    already carry), but on the device: uploading uint8 and normalising there takes the ~10 ms per
    512 crop of NumPy work off the step (tested against ``normalise``).
    """
    x = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float()  # a channels_last view
    if convention.get("channel_order", "RGB").upper() == "BGR":
        x = x.flip(1)
    mean = torch.tensor(convention.get("mean", [0, 0, 0]), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(convention.get("std", [1, 1, 1]), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    scale = float(convention.get("scale", 1.0)) / 255.0
    return (x * scale - mean) / std
