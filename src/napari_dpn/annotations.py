"""Where the vessel and FOV masks of an image live: ``<stem>_vessels.png`` and ``<stem>_fov.png``.

One convention for everything that writes or reads annotations (the segment command, the
napari Save button, ``napari-dpn train --images/--labels``), so corrected masks saved from
napari are training pairs without renaming anything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .layouts import DRIVE, fov_suffix_regex, label_suffix_regex

VESSELS_SUFFIX = "_vessels.png"
FOV_SUFFIX = "_fov.png"
PROBABILITY_SUFFIXES = ("_probability.png", "_probability.tif", "_probability.tiff")
_MASK_SUFFIXES = (VESSELS_SUFFIX, FOV_SUFFIX, *PROBABILITY_SUFFIXES)


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


def is_dataset_label(path: str | os.PathLike) -> bool:
    """True for ground-truth and FOV-mask files named as a dataset layout names them
    (``21_manual1.gif``, ``21_training_mask.gif``, ``im0001.ah.ppm``, ``Image_01L_1stHO.png``...;
    HRF's ``NN_x_mask`` too); the names come from :mod:`napari_dpn.layouts`."""
    return bool(re.fullmatch(f".*({label_suffix_regex()})", Path(path).stem, re.IGNORECASE))


def not_a_photograph(path: str | os.PathLike) -> str | None:
    """Why a file in a folder of photographs is not one (a few words), or None if it may be one."""
    name = Path(path).name.lower()
    if name.endswith(VESSELS_SUFFIX):
        return "a vessel annotation"
    if name.endswith(FOV_SUFFIX):
        return "a FOV mask"
    if any(name.endswith(s) for s in PROBABILITY_SUFFIXES):
        return "a probability map"
    if is_dataset_label(path):
        return "a dataset annotation or mask"
    return None


def photographs_in(folder: str | os.PathLike) -> list[Path]:
    """The image files of ``folder`` that may be photographs, sorted by name: annotations, masks and
    probability maps (ours and the datasets') are left out, as are hidden files."""
    suffixes = _image_suffixes()
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes and not_a_photograph(p) is None
    )


def same_stem(paths) -> list[tuple[Path, Path]]:
    """Pairs of images whose outputs would share a name: same folder-independent stem, any case
    (``eye.png`` and ``eye.jpg``; ``Eye.png`` and ``eye.tif`` on a case-insensitive disk)."""
    seen: dict[str, Path] = {}
    clashes = []
    for p in paths:
        key = Path(p).stem.lower()
        if key in seen:
            clashes.append((seen[key], Path(p)))
        else:
            seen[key] = Path(p)
    return clashes


def same_stem_message(clashes: list[tuple[Path, Path]]) -> str:
    """One sentence naming the first clash (and how many more there are)."""
    a, b = clashes[0]
    more = f" (and {len(clashes) - 1} more such pair(s))" if len(clashes) > 1 else ""
    return (
        f"{a} and {b} would both be saved as {a.stem}{VESSELS_SUFFIX}{more}; "
        "rename one of them or put them in separate folders"
    )


def output_paths(
    image_path: str | os.PathLike, folder: str | os.PathLike, probability_suffix: str = ".png"
) -> tuple[Path, Path, Path]:
    """(probability map, vessels mask, FOV mask) that ``segment`` writes for an image in ``folder``."""
    vessels, fov = annotation_paths(image_path, folder)
    return Path(folder) / f"{Path(image_path).stem}_probability{probability_suffix}", vessels, fov


def find_pairs(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike | None = None,
    fovs_dir: str | os.PathLike | None = None,
) -> list[tuple[Path, Path, Path | None]]:
    """(image, vessels mask, FOV mask or None) for every image in ``images_dir`` that has a mask.

    ``labels_dir`` defaults to ``images_dir``; ``fovs_dir`` to ``labels_dir``.  Images without a
    vessels mask are skipped (a user may annotate only some), sorted by file name.
    """
    images_dir = Path(images_dir)
    labels_dir = Path(labels_dir) if labels_dir is not None else images_dir
    fovs_dir = Path(fovs_dir) if fovs_dir is not None else labels_dir
    suffixes = _image_suffixes()
    pairs: list[tuple[Path, Path, Path | None]] = []
    if not images_dir.is_dir():
        return pairs
    for image in sorted(images_dir.iterdir()):
        if not image.is_file() or image.suffix.lower() not in suffixes or not_a_photograph(image):
            continue
        label, _ = annotation_paths(image, labels_dir)
        _, fov = annotation_paths(image, fovs_dir)
        if label.is_file():
            pairs.append((image, label, fov if fov.is_file() else None))
        elif (numbered := _by_number(image, labels_dir, "label")) is not None:
            # Dataset-style names (DRIVE: 21_training.tif, 21_manual1.gif, 21_training_mask.gif):
            # a label named by the photograph's leading number, as the layouts' "{id}" names.
            pairs.append((image, numbered, fov if fov.is_file() else _by_number(image, fovs_dir, "fov")))
    return pairs


_LEADING_NUMBER = re.compile(r"^(\d+)(?=\D|$)")


def _by_number(image: Path, folder: Path, what: str) -> Path | None:
    """The one file of ``folder`` that shares ``image``'s leading number and is a vessel label
    (``what='label'``) or a FOV mask (``'fov'``); None when there is none or more than one.
    In the image's own folder only files named as annotations count (not other photographs)."""
    m = _LEADING_NUMBER.match(image.stem)
    if not m or not folder.is_dir():
        return None
    number, suffixes = int(m.group(1)), _image_suffixes()
    fov_stem = re.compile(f".*({fov_suffix_regex()}|{re.escape(Path(FOV_SUFFIX).stem)})", re.IGNORECASE)
    found = []
    for p in folder.iterdir():
        n = _LEADING_NUMBER.match(p.stem)
        if not n or int(n.group(1)) != number or p == image or not p.is_file() or p.suffix.lower() not in suffixes:
            continue
        if p.name.startswith(".") or any(p.name.lower().endswith(s) for s in PROBABILITY_SUFFIXES):
            continue
        is_fov = bool(fov_stem.fullmatch(p.stem))
        if (what == "fov") != is_fov:
            continue
        if folder == image.parent and not_a_photograph(p) is None:
            continue  # another photograph of the same number, not an annotation
        found.append(p)
    return found[0] if len(found) == 1 else None


# ------------------------------------------------------------------ training pairs on disk


@dataclass(frozen=True)
class FilePair:
    """An image and its masks on disk, loaded only when training starts."""

    name: str
    image: Path
    label: Path
    fov: Path | None

    def load(self):
        from .image_io import as_rgb, read_image, read_mask

        return as_rgb(read_image(self.image)), read_mask(self.label), read_mask(self.fov) if self.fov else None


def folder_pairs(images, labels=None, fovs=None) -> list[FilePair]:
    """The annotated images of a folder as training pairs (``train --images``, the fine-tune widget);
    InputError with what naming was expected when there are none."""

    images = Path(images).expanduser()
    if not images.is_dir():
        raise InputError(f"no such folder: {images}")
    found = find_pairs(images, labels and Path(labels).expanduser(), fovs and Path(fovs).expanduser())
    if not found:
        raise InputError(_no_pairs_message(images, labels))
    clashes = same_stem([img for img, _, _ in found])
    if clashes:
        a, b = clashes[0]
        label = next(lab for img, lab, _ in found if img == a)
        raise InputError(
            f"{a.name} and {b.name} in {images} would both be trained with {label.name}; "
            "rename one of them (and its annotation)"
        )
    return [FilePair(img.stem, img, lab, fov) for img, lab, fov in found]


def _no_pairs_message(images: Path, labels) -> str:
    from .datasets import DATASETS, detect_layout
    from .image_io import IMAGE_SUFFIXES

    where = Path(labels).expanduser() if labels else images
    text = (
        f"no annotated images in {images}: each image IMAGE.ext needs IMAGE{VESSELS_SUFFIX} "
        f"in {where} (optionally IMAGE{FOV_SUFFIX}) or one label sharing its leading number "
        f"({DRIVE.label_name('21_training')}.gif for 21_training.tif)"
    )
    layout = detect_layout(images)
    if layout:
        key, root = layout
        return text + f"; for the {DATASETS[key].folder} release use --dataset {key} --root {root}"
    entries = list(images.iterdir())
    if not any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries) and any(
        p.is_dir() for p in entries
    ):
        return text + "; images in sub-folders are not searched, so give the folder that holds them"
    return text
