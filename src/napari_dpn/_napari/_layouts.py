"""Recognise the folder layouts of the public datasets (DRIVE, STARE, CHASE_DB1).

Only what the folder reader needs: which image files a folder holds, and for each one the
ground-truth annotation (first observer) and the field-of-view mask beside it, if any.
A folder is recognised at several levels, e.g. ``DRIVE``, ``DRIVE/test`` or ``DRIVE/test/images``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Entry:
    image: Path
    ground_truth: Path | None
    fov: Path | None

    @property
    def name(self) -> str:
        return self.image.stem


@dataclass
class DatasetFolder:
    dataset: str          # "DRIVE", "STARE" or "CHASE_DB1"
    root: Path            # the folder that holds the images
    entries: list[Entry]


def _first(paths) -> Path | None:
    paths = sorted(paths)
    return paths[0] if paths else None


def _drive_split(folder: Path) -> DatasetFolder | None:
    images = folder / "images"
    manual = folder / "1st_manual"
    if not (images.is_dir() and manual.is_dir()):
        return None
    entries = []
    for img in sorted(images.glob("*.tif")):
        ident = img.stem.split("_")[0]
        entries.append(Entry(
            image=img,
            ground_truth=_first(manual.glob(f"{ident}_manual1.gif")),
            fov=_first((folder / "mask").glob(f"{ident}_*mask.gif")),
        ))
    return DatasetFolder("DRIVE", images, entries) if entries else None


def _stare(folder: Path) -> DatasetFolder | None:
    images = folder / "images"
    labels = folder / "labels-ah"
    if not (images.is_dir() and labels.is_dir()):
        return None
    entries = []
    for img in sorted(images.glob("*.ppm")):
        entries.append(Entry(
            image=img,
            ground_truth=_first(labels.glob(f"{img.stem}.ah.ppm")),
            fov=_first((folder / "mask").glob(f"{img.stem}_mask.pgm")),
        ))
    return DatasetFolder("STARE", images, entries) if entries else None


_CHASE = re.compile(r"^Image_\d+[LR]$")


def _chase(folder: Path) -> DatasetFolder | None:
    entries = []
    for img in sorted(folder.glob("Image_*.jpg")):
        if not _CHASE.match(img.stem):
            continue
        gt = folder / f"{img.stem}_1stHO.png"
        entries.append(Entry(image=img, ground_truth=gt if gt.is_file() else None, fov=None))
    if entries and any(e.ground_truth for e in entries):
        return DatasetFolder("CHASE_DB1", folder, entries)
    return None


def find_dataset(folder: str | Path) -> DatasetFolder | None:
    """The dataset layout of ``folder`` (or of its parent / its test split), else None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = [folder]
    if folder.name in ("images", "1st_manual", "mask", "labels-ah", "labels-vk"):
        candidates.append(folder.parent)
    # a dataset root: prefer the test split, then training
    candidates += [folder / "test", folder / "training"]
    for cand in candidates:
        for detect in (_drive_split, _stare, _chase):
            found = detect(cand) if cand.is_dir() else None
            if found is not None:
                return found
    return None
