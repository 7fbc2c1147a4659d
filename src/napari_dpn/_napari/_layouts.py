"""Recognise the folder layouts of the public datasets (DRIVE, STARE, CHASE_DB1).

The file naming is ``napari_dpn.datasets``'s (one place for it); this module adds what only the
folder reader needs: a folder is recognised at several levels, e.g. ``DRIVE``, ``DRIVE/test`` or
``DRIVE/test/images``, and an image whose annotation is missing still opens (without it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from napari_dpn.datasets import Sample, folder_samples
from napari_dpn.errors import InputError


@dataclass
class DatasetFolder:
    dataset: str  # "DRIVE", "STARE" or "CHASE_DB1"
    root: Path  # the folder that holds the images
    entries: list[Sample]


# (key, shown name, sub-folders that must be there): a DRIVE split or STARE folder is
# recognised by its annotation folder; CHASE_DB1 (flat) by at least one annotated image.
_LAYOUTS = (
    ("drive", "DRIVE", ("images", "1st_manual")),
    ("stare", "STARE", ("images", "labels-ah")),
    ("chase", "CHASE_DB1", ()),
)


def _detect(folder: Path, key: str, name: str, needs: tuple[str, ...]) -> DatasetFolder | None:
    if not all((folder / sub).is_dir() for sub in needs):
        return None
    try:
        samples = folder_samples(key, folder, require_labels=False)
    except InputError:  # not this layout (no images of its naming)
        return None
    if not needs and not any(s.label_path for s in samples):
        return None
    return DatasetFolder(name, samples[0].image_path.parent, samples)


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
        for layout in _LAYOUTS:
            found = _detect(cand, *layout) if cand.is_dir() else None
            if found is not None:
                return found
    return None
