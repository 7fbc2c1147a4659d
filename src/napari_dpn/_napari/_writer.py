"""Writer: a labels layer -> binary mask PNG/TIFF (0/255 by default, or 0/1), written atomically.

Any non-zero label counts as "vessel".  A labels layer with more than one non-zero label
(e.g. the "errors" layer) is refused: a binary mask would lose what the labels mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_dpn.errors import InputError

SUFFIXES = (".png", ".tif", ".tiff")


def _write(path: str, data, on_value: int) -> list[str]:
    from napari_dpn.image_writers import write_mask

    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        p = p.with_name(p.name + ".png")
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise InputError(f"Only a 2-D labels layer can be saved as a mask, this one has shape {arr.shape}.")
    labels = np.unique(arr)
    if len(labels[labels != 0]) > 1:
        raise InputError(
            f"This labels layer uses {len(labels[labels != 0])} labels; a vessel "
            "mask can hold only one (vessel / background)."
        )
    write_mask(p, arr != 0, on_value=on_value)
    return [str(p)]


def write_mask_255(path: str, data, meta: dict) -> list[str]:
    """Vessel mask, 0 = background, 255 = vessel (the DRIVE/STARE convention)."""
    return _write(path, data, 255)


def write_mask_01(path: str, data, meta: dict) -> list[str]:
    """Vessel mask, 0 = background, 1 = vessel (label images for training tools)."""
    return _write(path, data, 1)
