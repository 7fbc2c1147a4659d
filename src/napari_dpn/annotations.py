"""Where the vessel and FOV masks of an image live: ``<stem>_vessels.png`` and ``<stem>_fov.png``.

One convention for everything that writes or reads annotations (the segment command, the
napari Save button, ``napari-dpn train --images/--labels``), so corrected masks saved from
napari are training pairs without renaming anything.
"""
from __future__ import annotations

import os
from pathlib import Path

VESSELS_SUFFIX = "_vessels.png"
FOV_SUFFIX = "_fov.png"
_MASK_SUFFIXES = (VESSELS_SUFFIX, FOV_SUFFIX, "_probability.png", "_probability.tif")


def _image_suffixes() -> tuple[str, ...]:
    try:
        from .image_io import IMAGE_SUFFIXES
    except ImportError:  # pragma: no cover
        return (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm")
    return tuple(s.lower() for s in IMAGE_SUFFIXES)


def annotation_paths(image_path: str | os.PathLike, folder: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(vessels mask path, FOV mask path) of an image, in ``folder`` (default: the image's folder)."""
    image_path = Path(image_path)
    folder = Path(folder) if folder is not None else image_path.parent
    return folder / f"{image_path.stem}{VESSELS_SUFFIX}", folder / f"{image_path.stem}{FOV_SUFFIX}"


def is_annotation(path: str | os.PathLike) -> bool:
    """True for files this convention writes (masks, probability maps), which are not images to train on."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in _MASK_SUFFIXES)


def find_pairs(images_dir: str | os.PathLike, labels_dir: str | os.PathLike | None = None,
               fovs_dir: str | os.PathLike | None = None) -> list[tuple[Path, Path, Path | None]]:
    """(image, vessels mask, FOV mask or None) for every image in ``images_dir`` that has a mask.

    ``labels_dir`` defaults to ``images_dir``; ``fovs_dir`` to ``labels_dir``.  Images without a
    vessels mask are skipped (a user may annotate only some), sorted by file name.
    """
    images_dir = Path(images_dir)
    labels_dir = Path(labels_dir) if labels_dir is not None else images_dir
    fovs_dir = Path(fovs_dir) if fovs_dir is not None else labels_dir
    suffixes = _image_suffixes()
    pairs = []
    if not images_dir.is_dir():
        return pairs
    for image in sorted(images_dir.iterdir()):
        if not image.is_file() or image.suffix.lower() not in suffixes or is_annotation(image):
            continue
        label, _ = annotation_paths(image, labels_dir)
        _, fov = annotation_paths(image, fovs_dir)
        if label.is_file():
            pairs.append((image, label, fov if fov.is_file() else None))
    return pairs
