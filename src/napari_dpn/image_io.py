"""Reading the images and masks users have (writing them: ``image_writers``; huge photographs with
bounded memory: ``big_photographs``).

Every reader turns decoder failures into an :class:`~napari_dpn.errors.InputError` with one
sentence, so the CLI and the widgets can show it without a traceback.  Images enter the core as
RGB float32 in 0..1 (:func:`as_rgb`); masks as bool (H, W) (:func:`read_mask`).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from napari_dpn.errors import InputError

# Smallest side the networks accept (``model.MIN_SIDE``, which is this one): defined here so that
# reading an image (the napari reader) never imports torch, 1-2 s on a GUI thread.
MIN_SIDE = 8

TIFF_SUFFIXES = (".tif", ".tiff")
# Pillow opens these by content, so a STARE label named .ppm that is really greyscale P5 works.
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".bmp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PILLOW_SUFFIXES


def check_file(path: Path) -> None:
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


def pillow_to_array(img: Image.Image) -> np.ndarray:
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
    returned as it is meant to be seen (:func:`tiff_as_shown`): CMYK becomes RGB, min-is-white
    is inverted, and 16-bit samples whose tags say fewer bits are stretched to the 16-bit range.
    """
    path = Path(path)
    check_file(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                itemsize = np.dtype(page.dtype).itemsize if page.dtype is not None else 1
                check_memory(path, page.imagelength, page.imagewidth, itemsize * page.samplesperpixel, "reading it")
                arr = tif.asarray()
                arr = tiff_as_shown(arr, page, path)
        else:
            with open_pillow(path) as img:
                check_memory(path, img.height, img.width, _FULL_DECODE_BYTES * len(img.getbands()), "reading it")
                img.load()
                arr = pillow_to_array(img)
    except (MemoryError, InputError):
        raise
    except Exception as exc:
        raise unreadable(path, exc) from exc
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


def tiff_as_shown(arr: np.ndarray, page, path: Path) -> np.ndarray:
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


# ------------------------------------------------------------------ memory for big images

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
def open_pillow(path: Path):
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


def unreadable(path, exc: BaseException) -> InputError:
    """The sentence for a file the decoders could not read: the missing codec named, else corrupt."""
    missing = missing_codec(exc)
    if missing:
        return InputError(f"Cannot read {path}: {missing}.")
    return InputError(f"Cannot read {path}: the file is corrupt or not a valid image ({type(exc).__name__}).")


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


def unit_divisor(dtype: np.dtype, lo: float, hi: float) -> float:
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
    divisor = unit_divisor(arr.dtype, lo, hi)
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
