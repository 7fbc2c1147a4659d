"""Whole-image prediction on the best device, with tiling for images too large for memory.

The paper feeds the whole image in one forward pass; we do the same whenever the
image fits the memory budget.  Larger images (HRF-sized, ultra-widefield) are cut
into tiles whose margin is wider than the network's receptive field and whose
origins sit on multiples of 4 (the coarsest pooling stride), so the stitched map
equals the one-pass map.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .devices import resolve_precision, select_device
from .model import flush_denormals_
from .models import LoadedModel
from .preprocess import normalise

# Receptive-field radius measured from gradients: 119 px (dpn), 89 px (dpn-release).
TILE_MARGIN = 128
# Pixels per forward pass on the CPU: keeps a 3504x2336 (HRF) image under ~2 GB of activations.
CPU_MAX_PIXELS = 2_000_000
_ALIGN = 4


@dataclass
class Prediction:
    probability: np.ndarray  # float32 (H, W) in 0..1
    device: str
    seconds: float
    tiled: bool = False
    tiles: int = 1
    note: str | None = None
    precision: str = "fp32"  # what the forward pass ran in: fp32, bf16 (CPU) or fp16 (CUDA)


def max_pixels_for(device: torch.device) -> int:
    """The most pixels one pass may take on ``device`` (above: tiles)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1_000_000, int(free * 0.6 / 1200))  # ~1.2 kB per pixel in fp16 with workspace
    return CPU_MAX_PIXELS


# The cancel check of the pass running in this thread (None: none).  One pass of a large image
# takes seconds on a CPU; the layers of the network ask it, so Cancel stops a pass within one layer.
_STOP = threading.local()


def _stop_hook(module, args) -> None:
    check = getattr(_STOP, "check", None)
    if check is not None and check():
        raise InterruptedError("prediction cancelled")


def make_interruptible(model: torch.nn.Module) -> None:
    """Let every layer of ``model`` ask the cancel check of the thread that runs it (once per
    model; a thread-local check, so passes of one shared model in several threads stay apart)."""
    if getattr(model, "_dpn_interruptible", False):
        return
    for module in model.modules():
        if next(module.children(), None) is None:
            module.register_forward_pre_hook(_stop_hook)
    model._dpn_interruptible = True  # type: ignore[assignment]  # a flag torch's stubs do not know


def _forward(
    model: torch.nn.Module,
    x: np.ndarray,
    device: torch.device,
    precision: str = "fp32",
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """One forward pass of a (3, h, w) array; returns (h, w) probabilities.  InterruptedError
    between two layers once ``should_stop()`` is true."""
    if should_stop is not None:
        if should_stop():
            raise InterruptedError("prediction cancelled")
        make_interruptible(model)
    t = torch.from_numpy(x)[None].to(device).contiguous(memory_format=torch.channels_last)
    previous = getattr(_STOP, "check", None)
    _STOP.check = should_stop
    try:
        with torch.inference_mode():
            if device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    y = model(t)
            elif precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = model(t)
            else:
                y = model(t)
    finally:
        _STOP.check = previous
    return y[0, 0].float().cpu().numpy()


def _tile_starts(size: int, core: int) -> list[int]:
    return list(range(0, size, core)) if size > core else [0]


def predict_array(
    model: torch.nn.Module,
    x: np.ndarray,
    device: torch.device,
    max_pixels: int,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    precision: str = "fp32",
) -> tuple[np.ndarray, int]:
    """Probability map of a normalised (3, H, W) array, tiled when H*W exceeds ``max_pixels``.
    InterruptedError as soon as ``should_stop()`` is true (between tiles, and between layers)."""
    _, h, w = x.shape
    if h * w <= max_pixels:
        out = _forward(model, x, device, precision, should_stop)
        if progress:
            progress(1.0)
        return out, 1
    m = TILE_MARGIN
    side = int(math.sqrt(max_pixels)) - 2 * m
    core = max(_ALIGN * 16, side // _ALIGN * _ALIGN)
    ys, xs = _tile_starts(h, core), _tile_starts(w, core)
    out = np.empty((h, w), np.float32)
    n, done = len(ys) * len(xs), 0
    for y0 in ys:
        for x0 in xs:
            if should_stop and should_stop():
                raise InterruptedError("prediction cancelled")
            # Context origins on multiples of 4 keep every pooling grid where the whole-image pass has it.
            cy0, cx0 = max(0, y0 - m), max(0, x0 - m)
            cy1, cx1 = min(h, y0 + core + m), min(w, x0 + core + m)
            tile = _forward(model, np.ascontiguousarray(x[:, cy0:cy1, cx0:cx1]), device, precision, should_stop)
            y1, x1 = min(h, y0 + core), min(w, x0 + core)
            out[y0:y1, x0:x1] = tile[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
            done += 1
            if progress:
                progress(done / n)
    return out, n


def predict(
    loaded: LoadedModel,
    image: np.ndarray,
    device: str | torch.device = "auto",
    max_pixels: int | None = None,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    precision: str = "auto",
) -> Prediction:
    """Vessel probability for one image (any layout ``image_io.as_rgb`` accepts).

    ``precision`` applies to the CPU: 'auto' runs bf16 where the CPU has native bf16
    (about 2x faster; probabilities within ~1e-2 of fp32, the same DRIVE AUC to 4 digits),
    'fp32' forces full precision.  Falls back from a GPU that runs out of memory to tiles,
    then to the CPU, and says so in ``Prediction.note``.  ``should_stop``: asked between tiles and
    between the network's layers; InterruptedError once it is true.
    """
    from .image_io import as_rgb

    if should_stop is not None and should_stop():
        raise InterruptedError("prediction cancelled")
    t0 = time.perf_counter()
    rgb = as_rgb(image)
    x = normalise(rgb, loaded.card.input)
    dev = select_device(device)
    limit = max_pixels or max_pixels_for(dev)
    prec = resolve_precision(precision, dev)
    note = None
    model = loaded.model.to(dev).to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    flush_denormals_(model)
    try:
        prob, n = predict_array(model, x, dev, limit, progress, should_stop, prec)
    except torch.OutOfMemoryError:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        try:
            prob, n = predict_array(model, x, dev, max(250_000, limit // 4), progress, should_stop, prec)
            note = f"{dev.type.upper()} ran out of memory for the whole image; processed it in tiles"
        except torch.OutOfMemoryError:
            dev = torch.device("cpu")
            model = model.to(dev)
            prec = resolve_precision(precision, dev)
            prob, n = predict_array(model, x, dev, CPU_MAX_PIXELS, progress, should_stop, prec)
            note = "the GPU ran out of memory; fell back to the CPU"
    return Prediction(
        probability=prob,
        device=str(dev),
        seconds=time.perf_counter() - t0,
        tiled=n > 1,
        tiles=n,
        note=note,
        precision="fp16" if dev.type == "cuda" else prec,
    )
