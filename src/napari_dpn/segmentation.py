"""One segmentation pipeline for every caller (CLI, widgets, evaluation, the folder session, the GPU batch):

photograph -> FOV -> scale -> resample -> network -> probability (original pixels) -> mask,
by default with a second, finer pass averaged in (two-scale fusion; a third, coarser one too when the
field angle is guessed).

``segment`` runs three stages, which the GPU batch (``batch.py``) reuses around its own batched
network: ``prepare`` (RGB, FOV, the card's scale: no network) -> ``network`` (the calibre estimate
if needed, the passes and their fusion) -> ``finish`` (the map at the photograph's size, the mask's
threshold).

``segment`` never raises for a scale problem: an implausible estimate falls back to the native
scale and says so in ``Segmentation.scale.note``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from . import inference
from . import scale as scale_mod
from .disc import scale_from_disc
from .fov import estimate_fov
from .image_io import as_rgb
from .inference import Prediction
from .models import LoadedModel
from .scale import Scale, check_fusion

# The vessel-calibre statistic: this percentile of the vessel width along the skeleton is the
# width of the main arcade vessels, which have about the same size in every adult eye.
CALIBRE_PERCENTILE = 95
MIN_SKELETON = 300  # skeleton pixels below which a calibre is not trusted
# A map with more "vessel" than this share of its FOV is no vessel tree (noise, a blank photograph):
# no calibre, and no skeleton of a dense mask, which is slow and holds the GIL (a GUI would stall).
MAX_VESSEL_SHARE = 0.35
COARSE_SIDE = 1024  # longer side of the first pass of the calibre estimate
COARSE_CONVERGED = 0.15  # relative change under which the calibre estimate stops
# Two-scale fusion (scale.check_fusion) costs about 3x the time of one pass: it is skipped where
# the finer image would exceed this.
FUSION_MAX_PIXELS = 4_000_000
COARSER_MIN_SIDE = 64  # a coarser hedge pass smaller than this sees no vessels worth adding


@dataclass
class Segmentation:
    """Probability and FOV in the photograph's own pixels, with the scale the network saw."""

    probability: np.ndarray  # float32 (H, W) in 0..1
    fov: np.ndarray  # bool (H, W)
    threshold: float  # the model card's, unless the caller gave one
    scale: Scale
    prediction: Prediction  # device, seconds, precision, tiling and fallback notes of the pass

    def mask(self, threshold: float | None = None) -> np.ndarray:
        """Vessels: probability >= threshold, inside the FOV only (outside is no retina)."""
        t = self.threshold if threshold is None else float(threshold)
        return (self.probability >= t) & self.fov

    def summary(self) -> dict:
        """What a report or a manifest records about this run."""
        p = self.prediction
        return {
            "scale": self.scale.to_dict(),
            "device": p.device,
            "precision": p.precision,
            "seconds": round(p.seconds, 3),
            "tiles": p.tiles,
            "note": p.note,
            "threshold": self.threshold,
            "fov_diameter": self.scale.fov_diameter,
        }


def vessel_calibre(mask: np.ndarray, fov: np.ndarray | None = None) -> float | None:
    """Width in pixels of the thickest vessels of a binary vessel map (None: too few vessels, or so
    many that the map is no vessel tree)."""
    # A fresh C-contiguous bool copy: skimage's skeletonize crashes on some read-only/strided views.
    mask = np.array(mask, dtype=np.uint8).astype(bool)
    inside = mask.size
    if fov is not None:
        fov = np.asarray(fov, bool)
        mask &= fov
        inside = int(np.count_nonzero(fov))
    if not inside or np.count_nonzero(mask) > MAX_VESSEL_SHARE * inside:
        return None
    skeleton = skeletonize(mask)
    if skeleton.sum() < MIN_SKELETON:
        return None
    widths = 2.0 * ndi.distance_transform_edt(mask)[skeleton]
    return float(np.percentile(widths, CALIBRE_PERCENTILE))


def _run(loaded: LoadedModel, rgb: np.ndarray, factor: float, **kwargs) -> tuple[np.ndarray, Prediction]:
    """Probability at ``factor`` x the original size, resampled back to the original pixels."""
    if factor == 1.0:
        pred = inference.predict(loaded, rgb, **kwargs)
        return pred.probability, pred
    size = scale_mod.resampled_shape(rgb.shape, factor)
    pred = inference.predict(loaded, scale_mod.resample_image(rgb, size), **kwargs)
    return np.clip(scale_mod.resample_image(pred.probability, rgb.shape[:2]), 0.0, 1.0), pred


def to_photo_pixels(prob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A map the network made at another scale, resampled to the photograph's (H, W) (bilinear, in
    0..1; as ``segment`` brings back each pass)."""
    if tuple(prob.shape[:2]) == tuple(shape[:2]):
        return prob
    return np.clip(scale_mod.resample_image(prob, cast("tuple[int, int]", tuple(shape[:2]))), 0.0, 1.0)


def _fuse(runs: list[tuple[np.ndarray, Prediction]]) -> tuple[np.ndarray, Prediction]:
    """The mean of the maps of passes at several scales (all in the photograph's pixels)."""
    prob0, pred0 = runs[0]
    combined = dataclasses.replace(
        pred0,
        seconds=sum(p.seconds for _, p in runs),
        tiles=sum(p.tiles for _, p in runs),
        tiled=any(p.tiled for _, p in runs),
        note=next((p.note for _, p in runs if p.note), None),
    )
    total = cast(np.ndarray, sum(m for m, _ in runs))  # maps, not the start value 0
    return total / float(len(runs)), combined


def _check(should_stop) -> None:
    """Between two passes (and before the first): InterruptedError once ``should_stop()`` is true."""
    if should_stop is not None and should_stop():
        raise InterruptedError("segmentation cancelled")


def _scaled_progress(progress, start: float, share: float):
    return None if progress is None else (lambda f: progress(start + share * f))


def scale_from_calibre(
    loaded: LoadedModel, rgb: np.ndarray, fov: np.ndarray, device="auto", precision: str = "auto", should_stop=None
) -> tuple[Scale, tuple[np.ndarray, Prediction] | None]:
    """Estimate the scale without metadata: coarse passes until the thickest vessels of the
    network's own map are as wide as on its training images at its working scale.

    Returns the scale and, when the last pass ran at exactly that scale, its probability map
    in the original pixels with its ``Prediction`` (so the caller need not run the network again).
    """
    ref = (loaded.card.scale or {}).get("vessel_calibre_px")
    target = scale_mod.working_ppd(loaded.card)
    if not isinstance(ref, (int, float)) or target is None:
        return scale_mod.fallback(
            f"the model card of {loaded.card.name} records no vessel calibre to compare with"
        ), None
    factor = min(1.0, COARSE_SIDE / max(rgb.shape[:2]))
    for _ in range(4):
        size = scale_mod.resampled_shape(rgb.shape, factor)
        _check(should_stop)
        pred = inference.predict(
            loaded, scale_mod.resample_image(rgb, size), device=device, precision=precision, should_stop=should_stop
        )
        calibre = vessel_calibre(pred.probability >= loaded.card.threshold, scale_mod.resample_mask(fov, size))
        if calibre is None:
            return scale_mod.fallback("too few vessels were found to estimate the scale from their calibre"), None
        new = float(np.clip(factor * float(ref) / calibre, scale_mod.MIN_FACTOR / 2, scale_mod.MAX_FACTOR * 2))
        if abs(new / factor - 1.0) < COARSE_CONVERGED:
            sc = scale_mod.from_ppd(target / factor, target, "calibre", fov_diameter=scale_mod.fov_diameter(fov))
            if sc.factor != factor:  # rounded to native, or implausible
                return sc, None
            return sc, (np.clip(scale_mod.resample_image(pred.probability, rgb.shape[:2]), 0.0, 1.0), pred)
        factor = new
    return scale_mod.from_ppd(target / factor, target, "calibre", fov_diameter=scale_mod.fov_diameter(fov)), None


def card_scale(
    card, rgb: np.ndarray, fov: np.ndarray, scale: str | float = "auto", field_angle: float | None = None
) -> Scale | None:
    """The ``Scale`` for this photograph from the model card alone (see ``scale.py`` for the order
    of the rules); None where only the network's own map can tell (``scale='calibre'``)."""
    mode = scale_mod.parse_scale(scale)
    if mode == "native":
        return Scale(factor=1.0, method="native")
    if not isinstance(mode, str):
        return Scale(factor=float(mode), method="factor")
    if scale_mod.working_ppd(card) is None:
        return scale_mod.fallback(f"the model card of {card.name} records no working scale")
    if mode == "calibre":
        return None
    if mode == "disc":
        return scale_from_disc(rgb, fov, card)
    angle = scale_mod.check_field_angle(field_angle)
    if scale_mod.fov_diameter(fov) is None and angle is None:
        # Measured: the calibre estimate put AV-WIDE at x0.65-0.89 where x1.26 is right, and cost
        # dpn-universal 0.016 AUC against the native scale (docs/scale.md); so it is opt-in.
        return scale_mod.fallback(
            "no circular field of view, so the photograph's own scale is used (give the field angle, "
            "a factor, or try scale 'calibre')"
        )
    return scale_mod.from_fov(fov, card, angle)


def choose_scale(
    loaded: LoadedModel,
    rgb: np.ndarray,
    fov: np.ndarray,
    scale: str | float = "auto",
    field_angle: float | None = None,
    device="auto",
    precision: str = "auto",
    should_stop=None,
) -> tuple[Scale, tuple[np.ndarray, Prediction] | None]:
    """The ``Scale`` for this photograph (``card_scale``, else the calibre estimate), and the
    probability already computed at it, if the estimate needed one."""
    sc = card_scale(loaded.card, rgb, fov, scale, field_angle)
    if sc is not None:
        return sc, None
    return scale_from_calibre(loaded, rgb, fov, device, precision, should_stop)


@dataclass
class Prepared:
    """Stage 1 of ``segment``: a photograph ready for the network (everything before it, on a CPU)."""

    rgb: np.ndarray  # float32 (h, w, 3): the photograph, or a copy averaged down as it was read
    fov: np.ndarray  # bool (h, w)
    scale: Scale | None  # None: the calibre estimate runs the network (stage 2)
    reduction: float = 1.0  # how much smaller (per side) ``rgb`` is than the photograph
    shape: tuple[int, int] | None = None  # the photograph's own (H, W) when reduced


def prepare(
    card,
    image: np.ndarray,
    *,
    fov: np.ndarray | None = None,
    scale: str | float = "auto",
    field_angle: float | None = None,
    shape: tuple[int, int] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Prepared:
    """Stage 1: RGB, FOV (given or estimated) and the scale the model card gives (``card_scale``).
    Needs only the card, so it runs where the model is not (the GPU batch's decode processes)."""
    rgb = as_rgb(image)
    reduction = _read_reduction(rgb.shape, shape)
    if reduction != 1.0:
        factor = scale_mod.parse_scale(scale)
        if not isinstance(factor, str):
            scale = factor * reduction
    if fov is not None and reduction != 1.0:
        fov = scale_mod.resample_mask(fov, rgb.shape[:2])
    fov = estimate_fov(rgb) if fov is None else np.asarray(fov, bool)
    _check(should_stop)
    sc = card_scale(card, rgb, fov, scale, field_angle)
    own = None if shape is None or reduction == 1.0 else cast("tuple[int, int]", tuple(shape))
    return Prepared(rgb, fov, sc, reduction, own)


def _pass_factors(rgb_shape, sc: Scale, fusion: float | None) -> tuple[float | None, float | None]:
    """(finer, coarser): the factors of the fused passes besides ``sc`` (None: no such pass)."""
    finer = coarser = None
    if fusion is not None:
        h, w = scale_mod.resampled_shape(rgb_shape, sc.factor * fusion)
        finer = sc.factor * fusion if h * w <= FUSION_MAX_PIXELS else None
        if finer is not None and sc.method == "default-angle":
            # The 45 degree guess is too fine for a 30-35 degree camera, too coarse for a 50-55:
            # hedge with a coarser pass as well (docs/results.md, "Two-scale fusion").
            h, w = scale_mod.resampled_shape(rgb_shape, sc.factor / fusion)
            coarser = sc.factor / fusion if min(h, w) >= COARSER_MIN_SIDE else None
    return finer, coarser


def network(
    loaded: LoadedModel,
    prep: Prepared,
    *,
    fusion: float | None = None,
    device="auto",
    precision: str = "auto",
    max_pixels: int | None = None,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, Prediction, Scale]:
    """Stage 2: the calibre estimate if stage 1 left the scale open, then the network's passes
    (one, or fused with a finer and perhaps a coarser one), in ``prep.rgb``'s pixels."""
    rgb, done = prep.rgb, None
    sc = prep.scale
    if sc is None:
        sc, done = scale_from_calibre(loaded, rgb, prep.fov, device, precision, should_stop)
    finer, coarser = _pass_factors(rgb.shape, sc, fusion)
    factors = [f for f in (sc.factor, finer, coarser) if f is not None]
    # One progress bar over all passes, shared by pixels (a pass at x costs x^2).
    weights = np.array([(f / sc.factor) ** 2 for f in factors])
    starts = np.concatenate([[0.0], np.cumsum(weights)[:-1]]) / weights.sum()
    shares = weights / weights.sum()
    kwargs = dict(device=device, precision=precision, max_pixels=max_pixels, should_stop=should_stop)
    _check(should_stop)
    runs = [done or _run(loaded, rgb, sc.factor, progress=_scaled_progress(progress, 0.0, shares[0]), **kwargs)]
    for f, start, share in zip(factors[1:], starts[1:], shares[1:]):
        _check(should_stop)  # between passes: Cancel never waits for the next one
        runs.append(_run(loaded, rgb, f, progress=_scaled_progress(progress, float(start), float(share)), **kwargs))
    prob, pred = _fuse(runs) if len(runs) > 1 else runs[0]
    if finer is not None:
        sc = dataclasses.replace(
            sc, fused_factor=round(finer, 4), fused_coarser=None if coarser is None else round(coarser, 4)
        )
    return prob, pred, sc


def finish(
    prob: np.ndarray,
    fov: np.ndarray,
    sc: Scale,
    pred: Prediction,
    threshold: float,
    reduction: float = 1.0,
    shape: tuple[int, int] | None = None,
) -> Segmentation:
    """Stage 3: the ``Segmentation`` of a map in the (maybe reduced) photograph's pixels, brought
    to the photograph's own size when it was read averaged down."""
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    if reduction != 1.0:
        assert shape is not None  # a map read averaged down comes with the photograph's own shape
        prob, fov, sc = _at_full_size(prob, fov, sc, cast("tuple[int, int]", tuple(shape)), reduction)
    return Segmentation(probability=prob, fov=fov, threshold=float(threshold), scale=sc, prediction=pred)


def segment(
    loaded: LoadedModel,
    image: np.ndarray,
    *,
    fov: np.ndarray | None = None,
    threshold: float | None = None,
    scale: str | float = "auto",
    field_angle: float | None = None,
    device="auto",
    precision: str = "auto",
    max_pixels: int | None = None,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    fusion: float | str | None = "auto",
    shape: tuple[int, int] | None = None,
) -> Segmentation:
    """Segment one photograph (any layout ``image_io.as_rgb`` accepts) at the model's working scale.

    ``fov``: a known FOV mask (else estimated); ``scale``: 'auto' (default), 'native' or a factor;
    ``field_angle``: the camera's field in degrees, if known; ``fusion``: average with a pass at
    that many times the chosen scale ('auto', the default of the CLI and the widgets too: what the
    model card recommends; None: one pass, as ``evaluate`` runs the paper's protocol).  When the
    field angle is guessed (45 degrees), a pass at the chosen scale divided by ``fusion`` is
    averaged in too: the guess may be too fine as well as too coarse.  ``should_stop``: asked
    before and between the passes, between tiles and between the network's layers;
    InterruptedError once it is true.  ValueError for an invalid
    ``scale``/``field_angle``/``fusion``; every other scale problem falls back to the native scale.
    ``shape``: the photograph's own (H, W) when ``image`` is a copy of it averaged down as it was
    read (``big_photographs.read_photograph``): a given factor counts in the photograph's pixels, and the
    maps and the scale come back in them.

    Parameters
    ----------
    loaded : LoadedModel
        From :func:`napari_dpn.load_model`.
    image : numpy.ndarray
        The photograph: (H, W, 3) RGB (uint8, uint16 or float 0..1), RGBA or greyscale.
    fov, threshold, scale, field_angle, device, precision, max_pixels, progress, should_stop, fusion, shape
        As above.

    Returns
    -------
    Segmentation
        ``probability`` (float32, the photograph's size), ``fov``, ``threshold`` (the card's unless
        given), the ``scale`` the network saw; ``mask()`` is the vessel map.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_dpn import load_model, segment
    >>> yy, xx = np.mgrid[:64, :64]
    >>> fov = (yy - 32) ** 2 + (xx - 32) ** 2 < 30**2  # a round field of view...
    >>> rgb = np.where(fov[..., None], np.float32([0.8, 0.4, 0.2]), np.float32(0))
    >>> rgb[30:33, 4:60] *= 0.5  # ...crossed by one dark vessel
    >>> result = segment(load_model("dpn-release-drive"), rgb, device="cpu")
    >>> result.probability.shape, result.probability.dtype
    ((64, 64), dtype('float32'))
    >>> result.mask().shape
    (64, 64)
    """
    fusion = cast("float | None", check_fusion(fusion, loaded.card))  # with a card, 'auto' is its number
    _check(should_stop)
    prep = prepare(
        loaded.card, image, fov=fov, scale=scale, field_angle=field_angle, shape=shape, should_stop=should_stop
    )
    prob, pred, sc = network(
        loaded,
        prep,
        fusion=fusion,
        device=device,
        precision=precision,
        max_pixels=max_pixels,
        progress=progress,
        should_stop=should_stop,
    )
    t = loaded.card.threshold if threshold is None else threshold
    return finish(prob, prep.fov, sc, pred, t, prep.reduction, prep.shape)


def _read_reduction(work_shape, shape) -> float:
    """How much smaller (per side) the image is than the photograph it was read from (1: not)."""
    if shape is None or tuple(shape[:2]) == tuple(work_shape[:2]):
        return 1.0
    return float(np.sqrt(shape[0] / work_shape[0] * shape[1] / work_shape[1]))


def _at_full_size(prob, fov, sc: Scale, shape: tuple[int, int], r: float):
    """The maps of a photograph read averaged down, at its own size (bilinear, as every pass's map
    is brought back), and the scale in its pixels.  Memory: the maps themselves and one float copy."""
    fov = scale_mod.resample_mask(fov, shape)
    prob = scale_mod.resample_image(prob, shape)  # stays within the map's own range: no clip copy

    def times(value, f):
        return None if value is None else value * f

    sc = dataclasses.replace(
        sc,
        factor=sc.factor / r,
        ppd=times(sc.ppd, r),
        fov_diameter=times(sc.fov_diameter, r),
        disc_diameter=times(sc.disc_diameter, r),
        fused_factor=None if sc.fused_factor is None else round(sc.fused_factor / r, 4),
        fused_coarser=None if sc.fused_coarser is None else round(sc.fused_coarser / r, 4),
        read_reduction=round(r, 4),
    )
    return prob, fov, sc
