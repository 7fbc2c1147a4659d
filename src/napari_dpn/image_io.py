"""Reading the images and masks users have, and writing masks and probability maps (atomically:
``files.atomic_write``).

Every reader turns decoder failures into an :class:`~napari_dpn.errors.InputError` with one
sentence, so the CLI and the widgets can show it without a traceback.  Images enter the core as
RGB float32 in 0..1 (:func:`as_rgb`); masks as bool (H, W) (:func:`read_mask`).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from napari_dpn.errors import InputError, OutputError
from napari_dpn.files import atomic_write, os_error_message

# Smallest side the networks accept (``model.MIN_SIDE``, which is this one): defined here so that
# reading an image (the napari reader) never imports torch, 1-2 s on a GUI thread.
MIN_SIDE = 8

TIFF_SUFFIXES = (".tif", ".tiff")
# Pillow opens these by content, so a STARE label named .ppm that is really greyscale P5 works.
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".bmp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PILLOW_SUFFIXES


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"File not found: {path}.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file.")
    if path.stat().st_size == 0:
        raise InputError(f"File {path} is empty (0 bytes).")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(
            f"Unsupported image format '{path.suffix or path.name}' for {path}; use one of {', '.join(IMAGE_SUFFIXES)}."
        )


def _pillow_to_array(img: Image.Image) -> np.ndarray:
    """Decode the first frame into a plain array: palette -> RGB(A), 16-bit stays 16-bit."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "LA":
        img = img.getchannel("L")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize > 2 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)  # 16-bit greyscale PNGs may decode as 32-bit mode "I"
    return arr


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an array, exactly as stored (dtype and channels unchanged).

    TIFF goes through tifffile; everything else through Pillow (first frame of a GIF; palette
    images are expanded to RGB).  Use :func:`as_rgb` to get the core's float RGB.  A TIFF is
    returned as it is meant to be seen (:func:`_tiff_as_shown`): CMYK becomes RGB, min-is-white
    is inverted, and 16-bit samples whose tags say fewer bits are stretched to the 16-bit range.
    """
    path = Path(path)
    _check_file(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                itemsize = np.dtype(page.dtype).itemsize if page.dtype is not None else 1
                check_memory(path, page.imagelength, page.imagewidth, itemsize * page.samplesperpixel, "reading it")
                arr = tif.asarray()
                arr = _tiff_as_shown(arr, page, path)
        else:
            with _open_pillow(path) as img:
                check_memory(path, img.height, img.width, _FULL_DECODE_BYTES * len(img.getbands()), "reading it")
                img.load()
                arr = _pillow_to_array(img)
    except (MemoryError, InputError):
        raise
    except Exception as exc:
        missing = missing_codec(exc)
        if missing:
            raise InputError(f"Cannot read {path}: {missing}.") from exc
        raise InputError(
            f"Cannot read {path}: the file is corrupt or not a valid image ({type(exc).__name__})."
        ) from exc
    return np.asarray(arr)


# TIFF PhotometricInterpretation values (TIFF 6.0, section 8 and 16).
_MINISWHITE, _SEPARATED, _CIELAB, _ICCLAB, _ITULAB = 0, 5, 8, 9, 10
_INKSET_CMYK = 1
# Sensor bit depths: a 12-bit camera's samples go up to 4095 even in a 16-bit file.
STANDARD_DEPTHS = (8, 10, 12, 14, 16)
# The depths inferred from the data alone (no tag): see ``data_bit_depth``.
INFERRED_DEPTHS = (8, 10, 12)


def _depth_holding(value: float) -> int:
    """The smallest standard bit depth whose range holds ``value``."""
    return next((d for d in STANDARD_DEPTHS if value <= 2**d - 1), 16)


def tiff_bit_depth(page) -> int | None:
    """The bit depth a 16-bit TIFF's tags say its samples use, when they say less than 16.

    ``SMaxSampleValue`` (341) or ``MaxSampleValue`` (281) give the largest sample value (the
    depth is the smallest of 8/10/12/14/16 bits that holds it); a ``BitsPerSample`` of 9-15
    (packed 12-bit files, which tifffile unpacks to uint16) gives it directly.  None: no tag
    says, or the tags say 16 bits.
    """
    bits = page.bitspersample
    if isinstance(bits, int) and 8 < bits < 16:
        return bits
    for code in (341, 281):
        tag = page.tags.get(code)
        if tag is None:
            continue
        values = np.atleast_1d(np.asarray(tag.value, dtype=np.float64))
        if values.size and np.isfinite(values).all() and 0 < values.max() < 65535:
            return _depth_holding(float(values.max()))
    return None


def _depth_of_max(top: float) -> int:
    return next((d for d in INFERRED_DEPTHS if top <= 2**d - 1), 16)


def data_bit_depth(arr: np.ndarray) -> int:
    """The bit depth of 16-bit samples from their maximum, when no tag says (``as_rgb``'s rule).

    12-bit (and 10-bit) camera data stored in 16-bit files is common and, divided by 65535,
    becomes a nearly black photograph in which the network finds no vessels.  So a maximum of at
    most 255 / 1023 / 4095 is read as 8- / 10- / 12-bit data.  A brighter maximum is 16-bit: 14-bit
    data (maximum 4096-16383) is not inferred, as a dim 16-bit photograph looks the same, and is
    not stretched.  The price: a 16-bit photograph whose brightest pixel is under 1/16 of full
    scale (practically black) is stretched as if it were 12-bit.
    """
    return _depth_of_max(int(arr.max()) if arr.size else 0)


def _tiff_as_shown(arr: np.ndarray, page, path: Path) -> np.ndarray:
    """A decoded TIFF page as a viewer shows it: CMYK -> RGB, min-is-white inverted, a 12-bit
    (10, 14) page's 16-bit samples stretched to 0..65535 when its tags say so.  InputError with
    one sentence for colour spaces it cannot turn into RGB (CIE L*a*b*, inks other than CMYK)."""
    photometric = int(page.photometric)
    samples = int(page.samplesperpixel)
    if samples > 1 and arr.ndim == 3 and arr.shape[0] == samples and arr.shape[-1] != samples:
        arr = np.moveaxis(arr, 0, -1)  # planar configuration "separate"
    if photometric in (_CIELAB, _ICCLAB, _ITULAB):
        raise InputError(f"Cannot read {path}: it stores CIE L*a*b* colour; save it as RGB (or greyscale) first.")
    if photometric == _SEPARATED:
        inkset = page.tags.get(332)  # InkSet: 1 = CMYK (the default), 2 = other inks
        inks = samples - len(page.extrasamples or ())
        if (inkset is not None and int(inkset.value) != _INKSET_CMYK) or inks != 4 or arr.shape[-1] < 4:
            raise InputError(f"Cannot read {path}: it stores {inks} printing inks, not CMYK; save it as RGB first.")
        arr = cmyk_to_rgb(arr[..., :4])
    elif photometric == _MINISWHITE and arr.dtype.kind in "biu":
        arr = ~arr if arr.dtype == bool else (2 ** int(page.bitspersample) - 1 - arr).astype(arr.dtype)
    if arr.dtype == np.uint16:
        depth = tiff_bit_depth(page)
        if depth is not None and depth < 16:
            arr = stretch_to_16bit(arr, depth)
    return arr


def stretch_to_16bit(arr: np.ndarray, depth: int) -> np.ndarray:
    """uint16 samples of ``depth`` bits -> the full 0..65535 range (values above the depth clip)."""
    top = 2**depth - 1
    out = np.minimum(arr, top).astype(np.uint32)
    out *= 65535
    out += top // 2
    out //= top
    return out.astype(np.uint16)


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """CMYK (..., 4) -> RGB (..., 3) in the same dtype: R = (1 - C)(1 - K), and so on.

    The device-independent formula (no ICC profile): Pillow's RGB -> CMYK round-trips exactly,
    and a prepress CMYK file comes out with plausible colours, which is all vessels need."""
    top = 1.0 if cmyk.dtype.kind == "f" else float(np.iinfo(cmyk.dtype).max)
    ink = cmyk.astype(np.float32) / top
    rgb = (1.0 - ink[..., :3]) * (1.0 - ink[..., 3:4])
    if cmyk.dtype.kind == "f":
        return rgb
    return np.round(rgb * top).astype(cmyk.dtype)


# ------------------------------------------------------------------ big photographs, bounded memory

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
_FULL_DECODE_BYTES = 2  # Pillow's own buffer and the array copied out of it, per byte of a sample
_GB = 1e9
_PILLOW_LOCK = threading.Lock()


def available_memory() -> int:
    """Bytes of memory this machine can give now (psutil's "available": free plus reclaimable cache)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no psutil, or no /proc: the free pages
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_memory(path, height: int, width: int, bytes_per_pixel: float, doing: str, extra: float = 0.0) -> None:
    """InputError with the real numbers when ``doing`` something with a height x width photograph
    needs more memory than this machine has available (a 60000 x 60000 header asked for 10.8 GB
    and then advised "fewer workers"); the needed bytes are ``bytes_per_pixel`` per pixel plus ``extra``."""
    need = float(height) * float(width) * bytes_per_pixel + extra
    have = available_memory()
    if need > have:
        raise InputError(
            f"{Path(path).name} is {width:,} x {height:,} pixels ({height * width / 1e6:,.0f} megapixels): "
            f"{doing} needs about {need / _GB:.1f} GB of memory and this machine has {have / _GB:.1f} GB "
            "available, so it is too large for this machine; downsample it or cut it into pieces first."
        )


@contextlib.contextmanager
def _open_pillow(path: Path):
    """``Image.open`` without Pillow's decompression-bomb guard, which refused a genuine 20000 x 20000
    JPEG as "corrupt": the callers check the real memory needed (:func:`check_memory`) instead."""
    with _PILLOW_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    try:
        yield img
    finally:
        img.close()


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
    _check_file(path)
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
        missing = missing_codec(exc)
        if missing:
            raise InputError(f"Cannot read {path}: {missing}.") from exc
        raise InputError(
            f"Cannot read {path}: the file is corrupt or not a valid image ({type(exc).__name__})."
        ) from exc
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
        with _open_pillow(path) as img:
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
        self.out /= np.float32(_unit_divisor(self.dtype, self.lo, self.hi))
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
                    means.add(_tiff_as_shown(band, page, path))
        elif page.planarconfig == 1:
            band, band_y = None, -1
            for data, index, _ in page.segments(sort=True):
                y, x = int(index[-3]), int(index[-2])
                tile = data.reshape(data.shape[-3:])  # (rows, cols, samples)
                if y != band_y:
                    if band is not None:
                        means.add(_tiff_as_shown(band, page, path))
                    band_y = y
                    band = np.zeros((min(tile.shape[0], height - y), width, tile.shape[-1]), tile.dtype)
                cols = min(tile.shape[1], width - x)
                band[:, x : x + cols] = tile[: band.shape[0], :cols]  # type: ignore[index, union-attr]
            if band is not None:
                means.add(_tiff_as_shown(band, page, path))
        else:  # planes stored apart (rare): the whole page, as read_image does
            means.add(read_image(path))
        return means.finish()


def _read_pillow_reduced(path: Path, k: int, cap: float | None = None) -> tuple[np.ndarray, bool]:
    """Block means of a JPEG/PNG/...: a JPEG is decoded at 1/2, 1/4 or 1/8 by libjpeg itself (DCT
    scaling, the most memory-frugal decoding there is), then averaged down the rest of the way
    (in all by k, or the next power of two when ``cap`` allows); other formats are decoded whole."""
    limit = float("inf") if cap is None else float(cap)
    with _open_pillow(path) as img:
        width, height = img.size
        if img.format == "JPEG":
            s = 1
            while s < k and s * 2 <= min(8.0, limit):
                s *= 2
            img.draft(img.mode if img.mode in ("RGB", "L") else None, (-(-width // s), -(-height // s)))
        img.load()
        arr = _pillow_to_array(img)
    scale = round(width / arr.shape[1])  # what the decoder already did (1, 2, 4 or 8)
    rest = max(1, -(-k // scale))
    if scale * rest > limit:
        rest = max(1, int(k // scale))
    means = _BlockMeans(arr.shape[0], arr.shape[1], rest)
    rows = max(rest, (1 << 24) // max(1, arr[0].size) // rest * rest)
    for r0 in range(0, arr.shape[0], rows):
        means.add(arr[r0 : r0 + rows])
    return means.finish()


def missing_codec(exc: BaseException) -> str | None:
    """The half-sentence naming the missing decoder when ``exc`` says one is missing, else None.

    tifffile needs the ``imagecodecs`` package for LZW (DRIVE's TIFFs), JPEG, ZSTD... and says
    "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package"; Pillow says "decoder jpeg not
    available" when it was built without a library.  Neither means the file is corrupt.
    """
    text = str(exc)
    if "imagecodecs" in text:
        match = re.search(r"COMPRESSION\.(\w+)|PREDICTOR\.(\w+)", text)
        what = f"its {(match[1] or match[2]).upper()} compression" if match else "its compression"
        return (
            f"decoding {what} needs the 'imagecodecs' package, which is not installed "
            "(pip install imagecodecs); the file itself is fine"
        )
    match = re.search(r"decoder (\w+) not available", text)
    if match:
        return (
            f"this Pillow was built without the {match[1]} decoder; "
            "reinstall Pillow from its wheels (pip install --force-reinstall pillow)"
        )
    return None


def is_greyscale(array: np.ndarray) -> bool:
    """True for a greyscale photograph: one channel, or three (four) channels with equal values."""
    arr = np.asarray(array)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1):
        return True
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))
    return False


def _unit_divisor(dtype: np.dtype, lo: float, hi: float) -> float:
    """What pixel values of this type and range are divided by to lie in 0..1 (:func:`as_rgb`'s rules)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return 1.0
    if dtype == np.uint8:
        return 255.0
    if dtype.kind in "iu":
        if lo < 0 or hi > 65535:
            raise InputError(f"Integer image values must lie in 0..65535, got {int(lo)}..{int(hi)}.")
        return float(2 ** _depth_of_max(hi) - 1)
    if dtype.kind == "f":
        if lo < 0 or hi > 255:
            raise InputError(f"Float image values must lie in 0..1 (or 0..255), got {lo:g}..{hi:g}.")
        return 1.0 if hi <= 1.0 else 255.0
    raise InputError(f"Unsupported pixel type {dtype}.")


def _to_unit(arr: np.ndarray) -> np.ndarray:
    """Scale pixel values to float32 0..1 (see :func:`as_rgb` for the rules)."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError("The image contains NaN or infinite values.")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"Unsupported pixel type {arr.dtype}.")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.dtype.kind in "iuf" else (0.0, 1.0)
    divisor = _unit_divisor(arr.dtype, lo, hi)
    out = arr.astype(np.float32)
    if divisor != 1.0:
        out /= np.float32(divisor)
    return out


def _channels_last(arr: np.ndarray) -> np.ndarray:
    """Return (H, W) or (H, W, C) with C in 1/3/4, or raise for stacks and odd shapes."""
    if arr.ndim == 2:
        return arr
    if arr.ndim != 3:
        raise InputError(f"Expected a 2-D image (H, W) or (H, W, 3), got {arr.ndim} dimensions {arr.shape}.")
    if arr.shape[-1] in (1, 3, 4):
        return arr
    if arr.shape[0] in (1, 3, 4):
        return np.moveaxis(arr, 0, -1)
    raise InputError(
        f"Shape {arr.shape} looks like a stack of {arr.shape[0]} images; give one 2-D colour or greyscale image."
    )


def as_rgb(array: np.ndarray) -> np.ndarray:
    """Any single image array -> RGB float32 (H, W, 3) in 0..1, the core's input convention.

    Scaling: bool -> 0/1; uint8 / 255; uint16 and other integers by their bit depth
    (:func:`data_bit_depth`: a maximum up to 255 / 1023 / 4095 is 8- / 10- / 12-bit data, anything
    brighter 16-bit; ``read_image`` already stretched TIFFs whose tags give the depth); float kept
    if in 0..1, and float within 0..255 with max > 1 is taken as 8-bit data and divided by 255.
    Greyscale (H, W) / (H, W, 1) is replicated to 3 channels, RGBA loses alpha, and
    channels-first (C, H, W) with C in 1/3/4 is accepted when the last axis is not a channel axis.
    Raises InputError for stacks, >3 dims, empty or smaller than MIN_SIDE images, NaN/inf.
    """
    arr = np.asarray(array)
    if arr.size == 0:
        raise InputError(f"The image is empty (shape {arr.shape}).")
    arr = _channels_last(arr)
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"The image is {w}x{h} pixels; both sides must be at least {MIN_SIDE}.")
    unit = _to_unit(arr)
    if unit.ndim == 2:
        unit = unit[..., None]
    if unit.shape[-1] == 1:
        unit = np.repeat(unit, 3, axis=-1)
    return np.ascontiguousarray(unit[..., :3], dtype=np.float32)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a binary mask as bool (H, W).

    A pixel is "on" where its brightest colour channel is ``> 127`` on the 8-bit scale: for grey
    masks that is the grey value (so DRIVE's palette 2nd_manual GIFs, 3/253, work); for colour
    masks any clearly non-black colour counts, so vessels drawn in red (or green, blue...) on black
    are vessels (luma would make pure red 76 and drop them).  A mask whose only values are 0 and 1
    is taken as 0/1 labels.  Mode '1' PNGs (CHASE_DB1), P5 netpbm (STARE) and TIFF all read here.
    """
    arr = read_image(path)
    if arr.size == 0:
        raise InputError(f"The mask {path} is empty.")
    if arr.dtype == bool:
        return _check_mask_shape(arr, path)
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        # red-on-black drawings: any colour on black is "on"
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3].max(axis=-1)
    _check_mask_shape(arr, path)
    if arr.dtype.kind in "iub" and np.isin(np.unique(arr), (0, 1)).all():
        return arr.astype(bool)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"The mask {path} contains NaN or infinite values.")
    if arr.dtype.kind == "f" and float(arr.max()) <= 1.0:
        return arr > 0.5
    # half of the data's bit depth (as_rgb's rule), so a 16-bit mask holding 0/255 or 0/4095 works
    top = float(arr.max())
    scale = 255.0 if arr.dtype == np.uint8 or top <= 255 else 2.0 ** _depth_of_max(top) - 1.0
    return arr.astype(np.float32) > 127.0 * scale / 255.0


def _check_mask_shape(arr: np.ndarray, path) -> np.ndarray:
    if arr.ndim != 2:
        raise InputError(f"The mask {path} has shape {arr.shape}; expected one 2-D mask.")
    return arr


def ensure_output_folder(path: str | os.PathLike, what: str = "the output folder") -> Path:
    """Create ``path`` (with parents) if needed and check that files can be created in it.

    Raises OutputError with one sentence when ``path`` is a file, cannot be created, or is not
    writable, so that a long run fails before it starts rather than at its first write.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(os_error_message(exc, path, "create the folder")) from None
    probe = path / f".napari-dpn-write-test.{uuid.uuid4().hex[:8]}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise OutputError(os_error_message(exc, path, "write to")) from None
    probe.unlink(missing_ok=True)
    return path


def _output_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".png":
        return "png"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    raise InputError(f"Cannot write {path}: use a .png, .tif or .tiff file name.")


def write_mask(path: str | os.PathLike, mask: np.ndarray, on_value: int = 255, overwrite: bool = True) -> Path:
    """Write a 2-D mask as uint8 0/``on_value`` PNG or TIFF (by suffix), atomically; with
    ``overwrite=False`` an existing file is kept and OutputExistsError raised."""
    path = Path(path)
    kind = _output_kind(path)
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise InputError(f"A mask must be a non-empty 2-D array, got shape {mask.shape}.")
    if not 0 < int(on_value) <= 255:
        raise InputError(f"on_value must be in 1..255, got {on_value}.")
    out = mask.astype(np.uint8)  # one byte per pixel, no temporaries (maps of huge photographs)
    if mask.dtype != bool:
        np.not_equal(mask, 0, out=out, casting="unsafe")
    out *= np.uint8(on_value)
    with atomic_write(path, overwrite=overwrite) as tmp:
        if kind == "png":
            Image.fromarray(out).save(tmp, format="PNG")
        else:
            tifffile.imwrite(tmp, out, compression="zlib")
    return path


BIG_MAP_PIXELS = 16_000_000  # above this a 16-bit PNG is compressed at zlib level 1 (36 Mpx: 5.7 s, not 25 s)


def _to_uint16(prob: np.ndarray, rows: int = 1024) -> np.ndarray:
    """round(p * 65535) as uint16, a band of rows at a time: the 16-bit copy is the only big array."""
    out = np.empty(prob.shape, np.uint16)
    for r0 in range(0, prob.shape[0], rows):
        band = prob[r0 : r0 + rows] * np.float32(65535.0)
        np.round(band, out=band)
        out[r0 : r0 + rows] = band
    return out


def write_probability(path: str | os.PathLike, prob: np.ndarray, overwrite: bool = True) -> Path:
    """Write a probability map: 16-bit PNG (round(p * 65535)) or float32 TIFF, atomically.

    PNG is lossless to 1/65535, which is far below anything a threshold will notice; TIFF keeps
    the float values exactly.
    """
    path = Path(path)
    kind = _output_kind(path)
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2 or prob.size == 0:
        raise InputError(f"A probability map must be a non-empty 2-D array, got {prob.shape}.")
    lo, hi = float(prob.min()), float(prob.max())  # NaN-propagating, no temporary
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError("The probability map contains NaN or infinite values.")
    if lo < 0 or hi > 1:
        raise InputError("Probabilities must lie in 0..1.")
    with atomic_write(path, overwrite=overwrite) as tmp:
        if kind == "png":
            # zlib level 1 for huge maps: 4x faster than the default 6 on 16-bit maps, the same size
            level = 1 if prob.size > BIG_MAP_PIXELS else 6
            Image.fromarray(_to_uint16(prob)).save(tmp, format="PNG", compress_level=level)
        else:
            tifffile.imwrite(tmp, prob, compression="zlib")
    return path
