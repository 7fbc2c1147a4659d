"""The session file of a folder being corrected, and the folder's conventions (Qt-free).

What ``.napari-dpn-session.json`` holds (one :class:`Entry` per photograph, its :data:`STATES`),
how a file that is not a session is told (:func:`parse_session_data`, :class:`SessionDamaged`)
and moved aside; which files of a folder are photographs (:func:`list_photographs`), their
ground truth (:func:`ground_truth_path`) and dataset FOV mask (:func:`dataset_fov_path`); and
whether a disk has room for a save (:func:`room_for`, :func:`is_disk_full`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import layouts
from .annotations import is_annotation
from .datasets import find_file
from .errors import InputError

SESSION_FILE = ".napari-dpn-session.json"
CACHE_DIR = ".napari-dpn-cache"
# new: never segmented; segmented: the network's map, nobody approved it (moving on is not
# approval); corrected: edited, not written yet; saved: edited and written (a correction);
# accepted: the network's map accepted as is and written (a correction); skipped: left out by the
# user (not a correction, not segmented again).
STATES = ("new", "segmented", "corrected", "saved", "accepted", "skipped")
CORRECTIONS = ("saved", "accepted")  # the user's annotation is on disk: a training pair
LABELS = {  # what the list and the status line call each state
    "new": "new",
    "segmented": "segmented, not reviewed",
    "corrected": "corrected, not saved yet",
    "saved": "corrected and saved",
    "accepted": "accepted as is",
    "skipped": "skipped",
}
# 1: "saved" also meant "moved on from, untouched" (issue 20); 2: "saved" is an edited correction.
VERSION = 2
# Free bytes a save needs beyond the mask's own size (FOV file, session file, file-system blocks).
_SAVE_MARGIN = 64 * 1024
# Ground truth beside a photograph by this plugin's own convention (the datasets' names: layouts.py).
_GT_SUFFIX = "_gt"
_GT_EXTENSIONS = (".png", ".gif", ".tif", ".tiff", ".bmp")


class SessionConflict(InputError):
    """An annotation file that the session did not write is in the way."""


class SessionDamaged(InputError):
    """The session file cannot be read as a session (not JSON, or not the shape a session has)."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def list_photographs(folder: str | Path) -> list[Path]:
    """The photographs of a folder, by name: annotations, probability maps and dataset ground
    truths / FOV masks are left out."""
    from .image_io import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"No such folder: {folder}.")
    suffixes = tuple(s.lower() for s in IMAGE_SUFFIXES)
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in suffixes
        and not is_annotation(p)
        and not _not_photo(p.stem)
    )


def _not_photo(stem: str) -> bool:
    """Annotations of a dataset (``layouts``), our ``_gt`` ground truth and probability maps."""
    ends = f"{_GT_SUFFIX}|{layouts.label_suffix_regex()}|_probability"
    return re.search(f"({ends})$", stem, re.IGNORECASE) is not None


def _layout_file(image: Path, stem: str, sub: str, beside: bool) -> Path | None:
    """``stem`` in a layout's sub-folder ``sub`` (next to the photograph's folder, or in it) or,
    where ``beside``, in the photograph's own folder; any image suffix."""
    folder = image.parent
    places = [folder.parent / sub, folder, folder / sub] if sub else [folder]
    for where in places:
        if (beside or where != folder) and where.is_dir() and (found := find_file(where, stem)) is not None:
            return found
    return None


def ground_truth_path(image: str | Path) -> Path | None:
    """The ground truth of a photograph when one is known: ``<stem>_gt.*`` beside it, or a dataset
    layout's first-observer label (``NN_manual1.gif``, ``imNNNN.ah.ppm``, ``<stem>_1stHO.png``...)."""
    image = Path(image)
    folder, stem = image.parent, image.stem
    found = next((c for c in (folder / f"{stem}{_GT_SUFFIX}{s}" for s in _GT_EXTENSIONS) if c.is_file()), None)
    for layout in layouts.LAYOUTS.values():
        label = layout.label_name(stem)
        if found is None and label is not None:
            found = _layout_file(image, label, layout.labels_dir, layout.labels_beside_images)
    return found


def dataset_fov_path(image: str | Path) -> Path | None:
    """A dataset's own FOV mask of a photograph (DRIVE ``mask/NN_test_mask.gif``, STARE
    ``mask/imNNNN_mask.pgm``: the layouts' ``fov_stem``), or None."""
    image = Path(image)
    for layout in layouts.LAYOUTS.values():
        name = layout.fov_name(image.stem)
        found = _layout_file(image, name, layout.fov_dir, True) if name else None
        if found is not None:
            return found
    return None


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def now_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Entry:
    name: str  # file name inside the folder
    state: str = "new"
    model: str | None = None  # the model that produced the first map
    threshold: float | None = None
    scale: float | None = None
    fov_diameter: float | None = None
    density: float | None = None
    seconds: float | None = None  # the network's time for the first map
    segmented_at: str | None = None
    saved_at: str | None = None
    digest: str | None = None  # sha256 of the vessels file this session wrote or resumed
    visited: list = field(default_factory=list)  # uncertain regions already shown [y0, x0]
    field_angle: float | str | None = None  # the field-of-view setting of the first map
    scale_note: str | None = None  # how the first map's photograph was resampled (one line)
    before: str | None = None  # the state before the first edit (an edit undone goes back to it)


_ENTRY_TYPES = {  # what each field of a session file's image may hold
    "name": (str,),
    "state": (str,),
    "model": (str, type(None)),
    "threshold": (int, float, type(None)),
    "scale": (int, float, type(None)),
    "fov_diameter": (int, float, type(None)),
    "density": (int, float, type(None)),
    "seconds": (int, float, type(None)),
    "segmented_at": (str, type(None)),
    "saved_at": (str, type(None)),
    "digest": (str, type(None)),
    "visited": (list,),
    "field_angle": (int, float, str, type(None)),
    "scale_note": (str, type(None)),
    "before": (str, type(None)),
}


def _describe_json(value) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a text", bool: "true/false"}.get(type(value), "a number")


def _entry_problem(item) -> str | None:
    """What is wrong with one image of a session file (the end of a sentence), or None."""
    if not isinstance(item, dict):
        return f"is {_describe_json(item)}, not an object"
    for key, types in _ENTRY_TYPES.items():
        if key in item and (not isinstance(item[key], types) or isinstance(item[key], bool)):
            return f'has "{key}" {_describe_json(item[key])}'
    if "name" not in item:
        return 'has no "name"'
    visited = item.get("visited", [])
    if not all(isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v) for v in visited):
        return 'has "visited" regions that are not [row, column] pairs'
    if item.get("state", "new") not in STATES:
        return f'has the unknown state "{item["state"]}" (one of {", ".join(STATES)})'
    return None


def parse_session_data(data, path: Path) -> tuple[dict[str, Entry], str | None, list[dict], float | str | None, int]:
    """(entries by name, current name, models, field angle, version) of a session file's JSON;
    SessionDamaged with one sentence saying what is wrong when it is not a session."""

    def bad(what: str):
        return SessionDamaged(f"The session file {path} is damaged: {what}.", path)

    if not isinstance(data, dict):
        raise bad(f"it holds {_describe_json(data)}, not a session")
    images = data.get("images", [])
    if not isinstance(images, list):
        raise bad(f'"images" is {_describe_json(images)}, not a list')
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad(f'"version" is {_describe_json(version)}, not a number')
    if version > VERSION:
        raise bad(f"it was written by a newer napari-dpn (version {version}); update napari-dpn to open it")
    entries = {}
    for n, item in enumerate(images, 1):
        problem = _entry_problem(item)
        if problem:
            raise bad(f"image {n} {problem}")
        entries[item["name"]] = Entry(**{k: item[k] for k in _ENTRY_TYPES if k in item})
    current = data.get("current")
    models = data.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise bad('"models" is not a list of objects')
    angle = data.get("field_angle")
    if angle is not None and angle != "native" and (not isinstance(angle, (int, float)) or isinstance(angle, bool)):
        raise bad(f'"field_angle" is {_describe_json(angle)}')
    return entries, current if isinstance(current, str) else None, list(models), angle, version


def room_for(folder: str | Path, nbytes: int) -> bool:
    """Whether ``folder``'s file system has ``nbytes`` (plus a margin) free: a full disk is said
    before a save is tried and lost, not after.  True when the free space cannot be read."""
    import shutil

    try:
        return shutil.disk_usage(folder).free >= int(nbytes) + _SAVE_MARGIN
    except OSError:
        return True


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether a failed write failed for lack of space (ENOSPC / EDQUOT), by errno: the OSError
    itself or the one an OutputError was raised from."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def move_aside(path: Path) -> Path:
    """Rename a damaged session file to ``<name>.damaged-<time>[-N].json`` beside it, never over
    another file; returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for n in range(1, 1000):
        target = path.with_name(f"{path.name}.damaged-{stamp}" + (f"-{n}" if n > 1 else "") + ".json")
        try:
            os.link(path, target)  # fails if the name exists: nothing is replaced
        except FileExistsError:
            continue
        except OSError:
            if target.exists():
                continue
            os.rename(path, target)  # no hard links here (and the name was free a moment ago)
            return target
        path.unlink()
        return target
    raise InputError(f"Cannot move the damaged session file {path} aside; move it away to start afresh.")
