"""The network's maps a folder session keeps: one image's segmentation with who made it, and
its cache file beside the annotations (Qt-free)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Segmented:
    """What the session keeps of one segmentation (``segmentation.Segmentation`` plus who made it)."""

    probability: np.ndarray  # float32 (H, W), the photograph's own pixels
    fov: np.ndarray  # bool (H, W)
    threshold: float
    model: str
    seconds: float
    scale: float = 1.0  # the factor the photograph was resampled by for the network
    scale_note: str = ""  # ``Scale.describe()``: how and why (the status line)
    field_angle: float | str | None = None  # the setting it was made with (None: estimated)

    def mask(self, threshold: float | None = None) -> np.ndarray:
        t = self.threshold if threshold is None else threshold
        return (self.probability >= t) & self.fov


def segment_photo(
    loaded,
    rgb: np.ndarray,
    device="auto",
    precision: str = "auto",
    fov: np.ndarray | None = None,
    should_stop=None,
    field_angle: float | str | None = None,
) -> Segmented:
    """``segmentation.segment`` at the model's scale, as the Segment widget and the CLI run it;
    ``field_angle``: the camera's field in degrees, None (estimated, 45 if unknown) or 'native'
    (no resampling)."""
    from .segmentation import segment

    t0 = time.perf_counter()
    native = field_angle == "native"
    seg = segment(
        loaded,
        rgb,
        fov=fov,
        scale="native" if native else "auto",
        field_angle=None if native or isinstance(field_angle, str) else field_angle,
        fusion="auto",
        device=device,
        precision=precision,
        should_stop=should_stop,
    )
    return Segmented(
        seg.probability,
        seg.fov,
        seg.threshold,
        loaded.card.name,
        time.perf_counter() - t0,
        seg.scale.factor,
        seg.scale.describe(),
        field_angle,
    )


def fov_diameter(fov: np.ndarray) -> float:
    """FOV diameter in pixels: the disc's widest extent (``scale.fov_diameter``); without a disc
    (ultra-widefield, whole frame) the diameter of the disc with the FOV's area."""
    from .scale import fov_diameter as disc_diameter

    return disc_diameter(fov) or float(2.0 * math.sqrt(np.count_nonzero(fov) / math.pi))


def vessel_density(mask: np.ndarray, fov: np.ndarray) -> float:
    """Fraction of the FOV's pixels that are vessel (NaN for an empty FOV)."""
    n = np.count_nonzero(fov)
    return float(np.count_nonzero(np.asarray(mask, bool) & fov) / n) if n else math.nan


def write_map_cache(path: Path, seg: Segmented) -> Path:
    """Write the probability map (float16), FOV, threshold and who made it, atomically."""
    from .files import atomic_write

    path.parent.mkdir(exist_ok=True)
    angle = "" if seg.field_angle is None else str(seg.field_angle)
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            probability=seg.probability.astype(np.float16),
            fov=seg.fov,
            threshold=seg.threshold,
            model=np.str_(seg.model),
            scale=seg.scale,
            seconds=seg.seconds,
            scale_note=np.str_(seg.scale_note),
            field_angle=np.str_(angle),
        )
    return path


def read_map_cache(path: Path) -> Segmented | None:
    """The kept map with who made it (model, scale, field angle), or None.  A cache written
    before that was recorded has the model ''."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            meta = {k: z[k].item() for k in ("model", "scale", "seconds", "scale_note", "field_angle") if k in z}
            angle = meta.get("field_angle") or None
            if angle not in (None, "native"):
                angle = float(angle)
            return Segmented(
                z["probability"].astype(np.float32),
                z["fov"].astype(bool),
                float(z["threshold"]),
                str(meta.get("model", "")),
                float(meta.get("seconds", 0.0)),
                float(meta.get("scale", 1.0)),
                str(meta.get("scale_note", "")),
                angle,
            )
    except (OSError, ValueError, KeyError):
        return None


def read_map_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(probability, FOV, threshold) of a cache file, or None."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return z["probability"].astype(np.float32), z["fov"].astype(bool), float(z["threshold"])
    except (OSError, ValueError, KeyError):
        return None
