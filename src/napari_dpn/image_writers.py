"""Writing masks and probability maps, atomically (``files.atomic_write``), and checking an output
folder before a long run starts writing into it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from napari_dpn.errors import InputError, OutputError
from napari_dpn.files import atomic_write, os_error_message
from napari_dpn.image_io import TIFF_SUFFIXES


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
