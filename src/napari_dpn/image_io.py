"""Reading the images and masks users have, and writing results atomically.

Every reader turns decoder failures into an :class:`~napari_dpn.errors.InputError` with one
sentence, so the CLI and the widgets can show it without a traceback.  Images enter the core as
RGB float32 in 0..1 (:func:`as_rgb`); masks as bool (H, W) (:func:`read_mask`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from napari_dpn.errors import InputError, OutputError, OutputExistsError

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
    images are expanded to RGB).  Use :func:`as_rgb` to get the core's float RGB.
    """
    path = Path(path)
    _check_file(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            arr = tifffile.imread(path)
        else:
            with Image.open(path) as img:
                img.load()
                arr = _pillow_to_array(img)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise many exception types
        missing = missing_codec(exc)
        if missing:
            raise InputError(f"Cannot read {path}: {missing}.") from exc
        raise InputError(
            f"Cannot read {path}: the file is corrupt or not a valid image ({type(exc).__name__})."
        ) from exc
    return np.asarray(arr)


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


def _to_unit(arr: np.ndarray) -> np.ndarray:
    """Scale pixel values to float32 0..1 (see :func:`as_rgb` for the rules)."""
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise InputError(f"Integer image values must lie in 0..65535, got {lo}..{hi}.")
        return arr.astype(np.float32) / (255.0 if hi <= 255 else 65535.0)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise InputError("The image contains NaN or infinite values.")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            raise InputError(f"Float image values must lie in 0..1 (or 0..255), got {lo:g}..{hi:g}.")
        return arr if hi <= 1.0 else arr / 255.0
    raise InputError(f"Unsupported pixel type {arr.dtype}.")


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

    Scaling: bool -> 0/1; uint8 / 255; uint16 / 65535 (12-bit data therefore looks dark; rescale
    it yourself if that matters); other integers by 255 if max <= 255 else 65535; float kept if in
    0..1, and float within 0..255 with max > 1 is taken as 8-bit data and divided by 255.
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

    Colour masks become greyscale (ITU-R 601 luma), then the mask is ``> 127`` on the 8-bit scale
    (so DRIVE's palette 2nd_manual GIFs, 3/253, work).  A mask whose only values are 0 and 1 is
    taken as 0/1 labels.  Mode '1' PNGs (CHASE_DB1), P5 netpbm (STARE) and TIFF all read here.
    """
    arr = read_image(path)
    if arr.size == 0:
        raise InputError(f"The mask {path} is empty.")
    if arr.dtype == bool:
        return _check_mask_shape(arr, path)
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        else:
            arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            arr = arr.astype(np.float32)
    _check_mask_shape(arr, path)
    if arr.dtype.kind in "iub" and np.isin(np.unique(arr), (0, 1)).all():
        return arr.astype(bool)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"The mask {path} contains NaN or infinite values.")
    if arr.dtype.kind == "f" and float(arr.max()) <= 1.0:
        return arr > 0.5
    scale = 65535.0 if (arr.dtype == np.uint16 or float(arr.max()) > 255) else 255.0
    return arr.astype(np.float32) > 127.0 * scale / 255.0


def _check_mask_shape(arr: np.ndarray, path) -> np.ndarray:
    if arr.ndim != 2:
        raise InputError(f"The mask {path} has shape {arr.shape}; expected one 2-D mask.")
    return arr


def os_error_message(exc: OSError, path: str | os.PathLike, action: str = "write") -> str:
    """One sentence for a failed file-system call: what could not be done to which file, and why."""
    reasons = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EACCES: "permission denied (the folder is read-only for you)",
        errno.EPERM: "permission denied (the folder is read-only for you)",
        errno.EROFS: "the file system is read-only",
        errno.ENOTDIR: "part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder",
        errno.ENAMETOOLONG: "the file name is too long",
        errno.ENOENT: "the folder does not exist",
        errno.EEXIST: "a file of that name is in the way",
    }
    reason = reasons.get(exc.errno) or (exc.strerror or str(exc) or type(exc).__name__).rstrip(".")
    return f"Cannot {action} {path}: {reason}."


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


def _exists_message(path: Path) -> str:
    return f"{path} already exists and was not replaced."


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary file keeps the target's suffix so writers that choose the format by suffix
    work; it is removed if the block raises.  Readers never see a half-written file.  With
    ``overwrite=False`` an existing ``path`` is never replaced, not even one that appears while
    the block runs (OutputExistsError).  File-system failures (read-only folder, full disk)
    raise OutputError with one sentence.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        if folder.exists():
            raise OutputError(f"Cannot write {path}: {folder} is a file, not a folder.")
        raise OutputError(f"Cannot write {path}: the folder {folder} does not exist.")
    if path.is_dir():
        raise OutputError(f"Cannot write {path}: it is a folder.")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise OutputExistsError(_exists_message(path))
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}"
    # os.open (not mkstemp, which makes 0600 files) so the result gets the usual permissions
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise OutputError(os_error_message(exc, path)) from None
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_no_clobber(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError) and not overwrite:
            raise OutputExistsError(_exists_message(path)) from None
        raise OutputError(os_error_message(exc, path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _place_no_clobber(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (FileExistsError), atomically where the
    file system has hard links (``link`` fails on an existing name; ``replace`` would not)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares): check, then replace
        if path.exists() or path.is_symlink():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink(missing_ok=True)


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
    out = np.where(mask.astype(bool), np.uint8(on_value), np.uint8(0))
    with atomic_write(path, overwrite=overwrite) as tmp:
        if kind == "png":
            Image.fromarray(out).save(tmp, format="PNG")
        else:
            tifffile.imwrite(tmp, out, compression="zlib")
    return path


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
    if not np.isfinite(prob).all():
        raise InputError("The probability map contains NaN or infinite values.")
    if prob.min() < 0 or prob.max() > 1:
        raise InputError("Probabilities must lie in 0..1.")
    with atomic_write(path, overwrite=overwrite) as tmp:
        if kind == "png":
            Image.fromarray(np.round(prob * 65535.0).astype(np.uint16)).save(tmp, format="PNG")
        else:
            tifffile.imwrite(tmp, prob, compression="zlib")
    return path
