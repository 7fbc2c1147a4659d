"""Image scale: pixels per degree of retina, and resampling a photograph to a model's working scale.

A network learns vessels at the pixel size of its training images.  A photograph from another
camera or at another resolution shows the same vessels at another size, and most of the
cross-camera loss is that mismatch (issue #9: the DRIVE model on CHASE_DB1 gains 0.88 -> 0.97 AUC
from resampling alone).  The unit that transfers between cameras is **pixels per degree** (ppd) of
retina: FOV diameter in pixels / the camera's field angle.  DRIVE (45 degrees, FOV ~539 px) is
12.0 ppd, STARE (35, ~653 px) 18.7, CHASE_DB1 (30, ~921 px) 30.7.

Each model card's ``scale`` block says at which ppd the network works (``working_ppd``).  Inference
resamples the photograph by ``working_ppd / image_ppd`` (anti-aliased), predicts, and resamples the
probability map back to the original pixels.  The image's ppd comes from, in order:

1. a factor the caller gives (``scale=<number>``), or ``native`` (no resampling: the paper's protocol);
2. the FOV diameter and a field angle the user gives (``field_angle``);
3. without a field angle: the FOV diameter and a 45 degree guess, the most common field angle of
   fundus cameras; without a circular FOV either (ultra-widefield), the native scale.  The vessel
   calibre of coarse passes (``scale='calibre'``, ``segmentation.scale_from_calibre``) estimates
   the scale without any metadata, but measured worse than the native scale on AV-WIDE, so it is
   opt-in (docs/scale.md).  The optic disc (``scale='disc'``, ``disc.find_disc``: its diameter in
   pixels over the ~6 degrees it spans in adult eyes) is a second estimate without metadata,
   also opt-in: it measured 13 % (median) off on DRIVE and STARE and 30 % on CHASE_DB1, not
   clearly better than the 45 degree guess (docs/scale.md).

Anything implausible (no FOV, a factor outside ``MIN_FACTOR..MAX_FACTOR``) falls back to the native
scale with one sentence in ``Scale.note``; it never raises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_FIELD_ANGLE = 45.0
COMMON_FIELD_ANGLES = (30.0, 35.0, 45.0, 50.0, 55.0)
MIN_FIELD_ANGLE, MAX_FIELD_ANGLE = 10.0, 220.0
# Resampling factors outside this range mean the estimate is wrong, not the photograph.
MIN_FACTOR, MAX_FACTOR = 0.08, 4.0
# A FOV narrower than this share of the image's longer side is not a fundus disc.
MIN_FOV_SHARE = 0.3
# Below this change the image is left as it is (resampling costs more than it brings).
NEGLIGIBLE = 0.03
SCALE_MODES = ("auto", "native", "calibre", "disc")


@dataclass
class Scale:
    """How an image was (or will be) resampled for the network, and why."""

    factor: float  # working pixels per original pixel (1.0 = native)
    method: str  # native | factor | field-angle | default-angle | calibre | disc | fallback
    ppd: float | None = None  # estimated pixels per degree of the original image
    fov_diameter: float | None = None  # pixels, in the original image
    field_angle: float | None = None  # degrees, given or assumed
    working_ppd: float | None = None  # the model's
    note: str | None = None  # why a fallback happened, in one sentence
    fused_factor: float | None = None  # a second, finer pass averaged in (segmentation.segment's fusion)
    fused_coarser: float | None = None  # with a guessed field angle, a coarser pass averaged in too
    disc_diameter: float | None = None  # pixels, in the original image (method 'disc')
    disc_degrees: float | None = None  # the degrees of retina that diameter is taken to span
    read_reduction: float | None = (
        None  # a huge photograph read averaged down this much (big_photographs.read_photograph)
    )

    def describe(self) -> str:
        """One line for the status bar, the CLI and JSON reports."""
        if self.fused_factor is None:
            fused = ""
        elif self.fused_coarser is None:
            fused = f"; averaged with a pass at x{self.fused_factor:.3g} for thin vessels"
        else:
            fused = (
                f"; averaged with passes at x{self.fused_factor:.3g} and x{self.fused_coarser:.3g}, "
                "as the field angle is a guess"
            )
        read = (
            ""
            if not self.read_reduction
            else f"; read at 1/{self.read_reduction:.3g} of its size, as it is larger than any fundus camera's"
        )
        return self._describe_scale() + fused + read

    def _describe_scale(self) -> str:
        if self.method == "native":
            return "native scale (no resampling)"
        if self.method == "factor":
            return f"resampled x{self.factor:.3g} (given)"
        if self.method == "fallback":
            return f"native scale: {self.note}"
        if self.method == "calibre":
            how = "the calibre of the thickest vessels"
        elif self.method == "disc":
            how = f"optic disc {self.disc_diameter:.0f} px / {self.disc_degrees:g} deg"
        else:
            given = "given" if self.method == "field-angle" else "assumed"
            how = f"FOV {self.fov_diameter:.0f} px / {self.field_angle:g} deg ({given})"
        return f"resampled x{self.factor:.3g} to {self.working_ppd:g} px/deg; {self.ppd:.1f} px/deg from {how}"

    def to_dict(self) -> dict:
        return {**asdict(self), "description": self.describe()}


def working_ppd(card) -> float | None:
    """The pixels per degree a model works at, from its card's ``scale`` block (None: unknown)."""
    value = (getattr(card, "scale", None) or {}).get("working_ppd")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def fov_diameter(fov: np.ndarray) -> float | None:
    """Diameter of a FOV disc in pixels: its widest extent (cameras clip the disc at top and bottom,
    never at its widest).  None when the mask is the whole frame or too small to be a disc."""
    fov = np.asarray(fov, bool)
    if fov.all() or not fov.any():
        return None
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    diameter = float(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    if diameter < MIN_FOV_SHARE * max(fov.shape):
        return None
    return diameter


def check_field_angle(angle: float | None) -> float | None:
    """A field angle in degrees, or None; ValueError with one sentence when it is not plausible."""
    if angle is None:
        return None
    angle = float(angle)
    if not MIN_FIELD_ANGLE <= angle <= MAX_FIELD_ANGLE:
        raise ValueError(
            f"a field angle of {angle:g} degrees is not plausible; fundus cameras have "
            f"{MIN_FIELD_ANGLE:g}-{MAX_FIELD_ANGLE:g} (most 30-55)"
        )
    return angle


def parse_scale(text: str | float) -> str | float:
    """'auto' | 'native' | 'calibre' | 'disc' | a positive factor (string or number); ValueError otherwise."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        key = str(text).strip().lower()
        if key in SCALE_MODES:
            return key
        try:
            value = float(key)
        except ValueError:
            raise ValueError(
                f"scale must be auto, native, calibre, disc or a factor such as 0.5, got {text!r}"
            ) from None
    if not MIN_FACTOR <= value <= MAX_FACTOR:
        raise ValueError(f"a scale factor must lie between {MIN_FACTOR} and {MAX_FACTOR}, got {value:g}")
    return value


def from_fov(fov: np.ndarray, card, field_angle: float | None) -> Scale:
    """The scale from the FOV diameter and a field angle (``None``: the 45 degree guess).

    Falls back to native when the model has no working scale or the FOV is not a disc.
    """
    target = working_ppd(card)
    if target is None:
        return fallback(f"the model card of {getattr(card, 'name', 'this model')} records no working scale")
    diameter = fov_diameter(fov)
    if diameter is None:
        return fallback("no circular field of view was found")
    angle = field_angle if field_angle is not None else DEFAULT_FIELD_ANGLE
    return from_ppd(
        diameter / angle,
        target,
        "field-angle" if field_angle is not None else "default-angle",
        fov_diameter=diameter,
        field_angle=angle,
    )


def from_ppd(ppd: float, target: float, method: str, **extra) -> Scale:
    """The scale that brings an image of ``ppd`` to the model's ``target`` ppd, checked for plausibility."""
    factor = target / ppd
    if not MIN_FACTOR <= factor <= MAX_FACTOR:
        return fallback(
            f"the estimated scale (x{factor:.3g}) is outside the plausible {MIN_FACTOR}-{MAX_FACTOR}",
            ppd=ppd,
            working_ppd=target,
            **extra,
        )
    if abs(factor - 1.0) < NEGLIGIBLE:
        factor = 1.0
    return Scale(factor=factor, method=method, ppd=ppd, working_ppd=target, **extra)


def fallback(note: str, **extra) -> Scale:
    return Scale(factor=1.0, method="fallback", note=note, **extra)


# ------------------------------------------------------------------------------ resampling


def resampled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    h, w = shape[:2]
    return max(1, round(h * factor)), max(1, round(w * factor))


def resample_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W[, C]) float image -> ``size`` (h, w): bilinear, anti-aliased when shrinking.

    Values stay within the input's range (rounding must not push a 0..1 image past 1, which
    ``image_io.as_rgb`` would read as 8-bit data)."""
    import torch
    import torch.nn.functional as F

    arr = np.asarray(image, np.float32)
    if arr.shape[:2] == tuple(size):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t[None, None] if arr.ndim == 2 else t.permute(2, 0, 1)[None]
    shrink = size[0] < arr.shape[0] or size[1] < arr.shape[1]
    out = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)
    out = out[0, 0] if arr.ndim == 2 else out[0].permute(1, 2, 0)
    return np.ascontiguousarray(out.clamp_(float(arr.min()), float(arr.max())).numpy())


def resample_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask resampled to ``size``: area-weighted, then >= 0.5 (thin vessels survive as well
    as nearest-neighbour lets them, without its aliasing)."""
    mask = np.asarray(mask, bool)
    if mask.shape == tuple(size):
        return mask
    return resample_image(mask.astype(np.float32), size) >= 0.5


# Two-scale fusion (segmentation.segment): the map at the working scale averaged with one at 1.5x
# that scale.  Measured with dpn-universal (docs/results/two_scale_fusion.json): AUC +0.0003 DRIVE,
# +0.0011 STARE, +0.0031 CHASE_DB1, +0.0037 AV-WIDE; on thin vessels (< 3 px) +0.004 to +0.027.
# Models trained at one dataset's scale lost AUC with it (dpn-stare on DRIVE 0.9664 -> 0.9635), so
# "auto" (the default) fuses only where the model card records ``scale.fusion``.
DEFAULT_FUSION = 1.5  # the factor when fusion is asked for without one (the widget's "Two scales")


def card_fusion(card) -> float | None:
    """The two-scale factor a model card recommends (``scale.fusion``), or None: one pass."""
    value = (getattr(card, "scale", None) or {}).get("fusion")
    try:
        value = check_fusion(value)
    except ValueError:
        return None
    return value if isinstance(value, float) else None


def check_fusion(fusion, card=None) -> float | str | None:
    """A fusion factor from a caller or the command line: None/'none'/1 (one pass), a number in
    1-3, or 'auto': what ``card`` recommends (without a card, 'auto' is returned as it is)."""
    if isinstance(fusion, str) and fusion.strip().lower() == "auto":
        return "auto" if card is None else card_fusion(card)
    if fusion is None or (isinstance(fusion, str) and fusion.strip().lower() in ("none", "off", "1")):
        return None
    try:
        value = float(fusion)
    except (TypeError, ValueError):
        raise ValueError(
            f"the fusion factor must be a number between 1 and 3, 'auto' or 'none', got {fusion!r}"
        ) from None
    if not 1.0 <= value <= 3.0:
        raise ValueError(f"the fusion factor must lie between 1 and 3 (or be 'none'), got {value:g}")
    return None if value == 1.0 else value
