"""Huge photographs read with bounded memory: a photograph larger than ``READ_MAX_SIDE`` is averaged
down block by block while it is decoded (:func:`read_photograph`), so that a 20000 x 20000 picture
segments on a laptop; the maps still come back at the photograph's own size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_dpn.errors import InputError
from napari_dpn.image_io import (
    TIFF_SUFFIXES,
    as_rgb,
    check_file,
    check_memory,
    is_greyscale,
    open_pillow,
    pillow_to_array,
    read_image,
    tiff_as_shown,
    unit_divisor,
    unreadable,
)

# Photographs whose longer side exceeds this are read block by block and averaged down to at most
# about this side (:func:`read_photograph`): no fundus camera makes larger pictures (the largest,
# DSLR-based, 6000 x 4000), and ``segment`` shrinks every photograph to its model's working scale
# (~12 px/deg: 540 px across a 45 degree field, 2400 px across a 200 degree ultra-widefield one),
# so the network never needed those pixels.  The maps still come back at the photograph's size.
# Not larger: a FOV wider than 6750 px at the 45 degree guess would need a factor under
# scale.MIN_FACTOR, which is taken as implausible and falls back to the native scale.
READ_MAX_SIDE = 6000
# Memory per pixel of the photograph that segmenting it at full size needs whatever its reading:
# the probability map (float32, 4 B), the FOV and vessel masks (1 B each), the 16-bit PNG (2 B) and
# its copy inside the encoder (2 B).
FULL_MAP_BYTES_PER_PIXEL = 10
# ...and per pixel of the (reduced) image the pipeline works on: RGB float32, its network input,
# the FOV estimate's and the resampling's copies.
WORK_BYTES_PER_PIXEL = 40


@dataclass
class Photograph:
    """A photograph as ``segment`` needs it: RGB float32 0..1, maybe averaged down (``reduction``)."""

    rgb: np.ndarray  # float32 (h, w, 3) in 0..1
    shape: tuple[int, int]  # the file's own (H, W): the maps are made at this size
    grey: bool  # a greyscale photograph (is_greyscale of the file's pixels)
    reduction: float = 1.0  # the file's pixels per pixel of ``rgb`` (1: read at full size)


def reduction_for(shape: tuple[int, ...], max_reduction: float | None = None) -> int:
    """The block size a photograph of ``shape`` is read with: 1 up to ``READ_MAX_SIDE``, else the
    smallest integer that brings the longer side to at most that, but never above ``max_reduction``."""
    k = -(-max(shape[:2]) // READ_MAX_SIDE)
    if max_reduction is not None:
        k = min(k, int(max_reduction))
    return max(1, int(k))


def read_photograph(path: str | os.PathLike, max_reduction: float | None = None) -> Photograph:
    """Read a photograph for segmentation with memory bounded by design.

    Up to ``READ_MAX_SIDE`` pixels it is :func:`read_image` + :func:`as_rgb`.  A larger one is
    averaged down in k x k blocks while it is decoded (TIFF: a band of rows, a strip or a tile
    at a time; JPEG: decoded at 1/2, 1/4 or 1/8 by the decoder itself, then block means; other
    formats: decoded, then reduced by Pillow), so only the reduced copy and one band of rows are in
    memory.  ``max_reduction`` caps k (1: never reduce, for ``--scale native``; a given factor f
    allows 1/(1.5 f)).  InputError with the numbers when even the full-size maps would not fit in
    this machine's memory.
    """
    path = Path(path)
    check_file(path)
    height, width = header_shape(path)
    k = reduction_for((height, width), max_reduction) if height else 1
    if k == 1:
        if height:
            check_memory(
                path, height, width, FULL_MAP_BYTES_PER_PIXEL + WORK_BYTES_PER_PIXEL, "segmenting it at full size"
            )
        raw = read_image(path)
        return Photograph(as_rgb(raw), tuple(np.asarray(raw).shape[:2]), bool(is_greyscale(raw)))
    h, w = -(-height // k), -(-width // k)
    check_memory(
        path,
        height,
        width,
        FULL_MAP_BYTES_PER_PIXEL,
        "segmenting it (its maps at full size)",
        extra=WORK_BYTES_PER_PIXEL * h * w,
    )
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            rgb, grey = _read_tiff_reduced(path, k)
        else:
            rgb, grey = _read_pillow_reduced(path, k, max_reduction)
    except (MemoryError, InputError):
        raise
    except Exception as exc:
        raise unreadable(path, exc) from exc
    reduction = float(np.sqrt((height / rgb.shape[0]) * (width / rgb.shape[1])))
    return Photograph(rgb, (height, width), grey, reduction)


def max_reduction(scale) -> float | None:
    """How far :func:`read_photograph` may average a photograph down for ``segment``'s ``scale``:
    not at all at the native scale; for a given factor f, as long as the finer fusion pass (1.5 f)
    still shrinks; for the estimated scales (auto, calibre, disc) as far as ``READ_MAX_SIDE``."""
    from .scale import DEFAULT_FUSION, parse_scale

    mode = parse_scale(scale)
    if mode == "native":
        return 1.0
    if isinstance(mode, str):
        return None
    return max(1.0, 1.0 / (float(mode) * DEFAULT_FUSION))


def header_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) from the file's header, nothing decoded; (0, 0) for a stack, an unknown layout or an
    unreadable file (``read_image`` then says why)."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                if len(tif.series) != 1 or len(tif.series[0].pages) != 1:
                    return 0, 0
                page = tif.pages.first
                return int(page.imagelength), int(page.imagewidth)
        with open_pillow(path) as img:
            return int(img.height), int(img.width)
    except Exception:  # noqa: BLE001 - any decoder error: unknown
        return 0, 0


class _BlockMeans:
    """Means of k x k blocks of an image that arrives as bands of whole rows, top to bottom: only
    the reduced image and fewer than k pending rows are kept."""

    def __init__(self, height: int, width: int, k: int):
        self.k, self.width = k, width
        self.out: Any = None  # np.ndarray once the first band came
        self.height = height
        self.row = 0  # the next output row
        self.pending: list[np.ndarray] = []
        self.lo, self.hi, self.grey = np.inf, -np.inf, True
        self.dtype: Any = None

    def add(self, rows: np.ndarray) -> None:
        rows = rows if rows.ndim == 3 else rows[..., None]
        if self.out is None:
            self.dtype = rows.dtype
            self.out = np.empty((-(-self.height // self.k), -(-self.width // self.k), rows.shape[-1]), np.float32)
        if rows.dtype.kind == "f" and not np.isfinite(rows).all():
            raise InputError("The image contains NaN or infinite values.")
        if rows.size:
            self.lo, self.hi = min(self.lo, float(rows.min())), max(self.hi, float(rows.max()))
        if self.grey and rows.shape[-1] in (3, 4):
            self.grey = bool(np.array_equal(rows[..., 0], rows[..., 1]) and np.array_equal(rows[..., 1], rows[..., 2]))
        self.pending.append(rows)
        n = sum(len(r) for r in self.pending)
        if n >= self.k:
            band = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
            m = n // self.k * self.k
            self._reduce(band[:m])
            self.pending = [band[m:]] if m < n else []

    def _reduce(self, rows: np.ndarray) -> None:
        k = self.k
        x = rows.astype(np.float32)
        sums = np.add.reduceat(np.add.reduceat(x, np.arange(0, len(x), k), axis=0), np.arange(0, self.width, k), axis=1)
        nrows = np.minimum(k, len(x) - np.arange(0, len(x), k))
        ncols = np.minimum(k, self.width - np.arange(0, self.width, k))
        sums /= (nrows[:, None] * ncols[None, :]).astype(np.float32)[..., None]
        self.out[self.row : self.row + len(sums)] = sums
        self.row += len(sums)

    def finish(self) -> tuple[np.ndarray, bool]:
        """RGB float32 0..1 (the scaling rules of :func:`as_rgb`) and whether it is greyscale."""
        if self.pending:
            band = np.concatenate(self.pending)
            self.pending = []
            if len(band):
                self._reduce(band)
        if self.out is None or self.row != self.out.shape[0]:
            raise InputError("The image ended before its last row (a truncated file).")
        self.out /= np.float32(unit_divisor(self.dtype, self.lo, self.hi))
        rgb = self.out
        if rgb.shape[-1] == 1:
            rgb = np.repeat(rgb, 3, axis=-1)
        elif rgb.shape[-1] == 2:  # grey + alpha
            rgb = np.repeat(rgb[..., :1], 3, axis=-1)
        return np.ascontiguousarray(rgb[..., :3]), self.grey or rgb.shape[-1] == 1


def _read_tiff_reduced(path: Path, k: int) -> tuple[np.ndarray, bool]:
    """Block means of a TIFF's first page, read a band of rows at a time (uncompressed: plain reads;
    else strip by strip or tile by tile) and turned to RGB as ``read_image`` does."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        height, width = int(page.imagelength), int(page.imagewidth)
        means = _BlockMeans(height, width, k)
        band_rows = max(k, (1 << 24) // max(1, width * page.samplesperpixel) // k * k)  # ~16 M samples a band
        if page.is_contiguous and page.compression == 1 and page.planarconfig == 1 and page.bitspersample % 8 == 0:
            # uncompressed: read a band of rows at a time (plain reads, not a memory map, whose
            # pages would stay resident and count against the process)
            dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)
            samples = int(page.samplesperpixel)
            offset = int(page.dataoffsets[0])  # contiguous: the strips follow each other
            with open(path, "rb") as f:
                for r0 in range(0, height, band_rows):
                    n = min(band_rows, height - r0)
                    f.seek(offset + r0 * width * samples * dtype.itemsize)
                    band = np.fromfile(f, dtype=dtype, count=n * width * samples)
                    if band.size != n * width * samples:
                        raise InputError(f"Cannot read {path}: the file ends before its last row (a truncated file).")
                    band = band.reshape(n, width, samples).astype(dtype.newbyteorder("="), copy=False)
                    means.add(tiff_as_shown(band, page, path))
        elif page.planarconfig == 1:
            band, band_y = None, -1
            for data, index, _ in page.segments(sort=True):
                y, x = int(index[-3]), int(index[-2])
                tile = data.reshape(data.shape[-3:])  # (rows, cols, samples)
                if y != band_y:
                    if band is not None:
                        means.add(tiff_as_shown(band, page, path))
                    band_y = y
                    band = np.zeros((min(tile.shape[0], height - y), width, tile.shape[-1]), tile.dtype)
                cols = min(tile.shape[1], width - x)
                band[:, x : x + cols] = tile[: band.shape[0], :cols]  # type: ignore[index, union-attr]
            if band is not None:
                means.add(tiff_as_shown(band, page, path))
        else:  # planes stored apart (rare): the whole page, as read_image does
            means.add(read_image(path))
        return means.finish()


def _read_pillow_reduced(path: Path, k: int, cap: float | None = None) -> tuple[np.ndarray, bool]:
    """Block means of a JPEG/PNG/...: a JPEG is decoded at 1/2, 1/4 or 1/8 by libjpeg itself (DCT
    scaling, the most memory-frugal decoding there is), then averaged down the rest of the way
    (in all by k, or the next power of two when ``cap`` allows); other formats are decoded whole."""
    limit = float("inf") if cap is None else float(cap)
    with open_pillow(path) as img:
        width, height = img.size
        if img.format == "JPEG":
            s = 1
            while s < k and s * 2 <= min(8.0, limit):
                s *= 2
            img.draft(img.mode if img.mode in ("RGB", "L") else None, (-(-width // s), -(-height // s)))
        img.load()
        arr = pillow_to_array(img)
    scale = round(width / arr.shape[1])  # what the decoder already did (1, 2, 4 or 8)
    rest = max(1, -(-k // scale))
    if scale * rest > limit:
        rest = max(1, int(k // scale))
    means = _BlockMeans(arr.shape[0], arr.shape[1], rest)
    rows = max(rest, (1 << 24) // max(1, arr[0].size) // rest * rest)
    for r0 in range(0, arr.shape[0], rows):
        means.add(arr[r0 : r0 + rows])
    return means.finish()
