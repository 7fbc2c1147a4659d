"""Correcting a whole folder: the session file, the vessel-aware tools and "where to look next".

Qt-free (the *Correct a folder* dock widget and the tests call the same functions).

- :class:`Session`: the photographs of a folder, each with a state (new / segmented / corrected /
  saved / accepted / skipped, see :data:`STATES`), the model that produced its first map, timings
  and timestamps, persisted atomically in ``.napari-dpn-session.json`` beside the annotations, so
  reopening the folder resumes exactly.  Moving on is not approval: only an image the user edited
  (saved) or accepted as is is a correction (:attr:`Session.corrected_indices`,
  :meth:`Session.training_pairs`); an untouched one stays "segmented" and is segmented again by a
  new model (:meth:`Session.needs_segmentation`).
- Tools on a boolean vessel mask: :func:`remove_branch` (cut a skeleton segment at its nearest
  junctions), :func:`add_vessel` (hysteresis region of the probability map around a click),
  :func:`remove_specks`.
- :func:`uncertainty` and :func:`rank_regions`: the regions a grader should look at first.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import layouts
from .annotations import annotation_paths, is_annotation
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
_VERSION = 2
# Free bytes a save needs beyond the mask's own size (FOV file, session file, file-system blocks).
_SAVE_MARGIN = 64 * 1024
# Ground truth beside a photograph by this plugin's own convention (the datasets' names: layouts.py).
_GT_SUFFIX = "_gt"
_GT_EXTENSIONS = (".png", ".gif", ".tif", ".tiff", ".bmp")
CSV_COLUMNS = (
    "image",
    "state",
    "model",
    "threshold",
    "scale",
    "field_angle",
    "fov_diameter_px",
    "vessel_density",
    "seconds",
    "se",
    "sp",
    "acc",
    "auc",
    "f1",
    "ground_truth",
    "measured",
)
_EIGHT = np.ones((3, 3), bool)


class SessionConflict(InputError):
    """An annotation file that the session did not write is in the way."""


class SessionDamaged(InputError):
    """The session file cannot be read as a session (not JSON, or not the shape a session has)."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


# ----------------------------------------------------------------------------- files


def _not_photo(stem: str) -> bool:
    """Annotations of a dataset (``layouts``), our ``_gt`` ground truth and probability maps."""
    ends = f"{_GT_SUFFIX}|{layouts.label_suffix_regex()}|_probability"
    return re.search(f"({ends})$", stem, re.IGNORECASE) is not None


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


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _finetune_scale(angle) -> dict:
    """The folder's field-of-view setting as fine-tune settings: train at the scale it segments at."""
    return {"scale": "native"} if angle == "native" else {"field_angle": angle}


def free_model_name(stem: str, out_dir=None, first: int = 1) -> str:
    """``<stem>-ft<N>`` with the first N from ``first`` that no model has: no weights, card or
    checkpoint of that name in ``out_dir`` (default: the user models folder) and no listed or
    shipped model called so.  Two folders called ``photos`` must never share a model (the save
    itself refuses to replace one, so a name taken meanwhile is not lost either)."""
    from .models import WEIGHTS_SUFFIX, list_models, shipped_model_names, user_models_dir

    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem)[:80]
    stem = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", stem) or "session"  # a model name's rule
    out = Path(out_dir) if out_dir else user_models_dir()
    taken = {c.name.lower() for c in list_models()} | shipped_model_names()
    n = max(1, int(first))
    while True:
        name = f"{stem}-ft{n}"
        files = (out / f"{name}{s}" for s in (WEIGHTS_SUFFIX, ".json", ".ckpt.pt"))
        if name.lower() not in taken and not any(f.exists() for f in files):
            return name
        n += 1


# ----------------------------------------------------------------------------- segmentation


@dataclass
class Segmented:
    """What the session keeps of one segmentation (``segmentation.Segmentation`` plus who made it)."""

    probability: np.ndarray  # float32 (H, W), the photograph's own pixels
    fov: np.ndarray  # bool (H, W)
    threshold: float
    model: str
    seconds: float
    scale: float = 1.0  # the factor the photograph was resampled by for the network
    scale_note: str = ""  # ``Scale.describe()``: how and why (the status line)
    field_angle: float | str | None = None  # the setting it was made with (None: estimated)

    def mask(self, threshold: float | None = None) -> np.ndarray:
        t = self.threshold if threshold is None else threshold
        return (self.probability >= t) & self.fov


def segment_photo(
    loaded,
    rgb: np.ndarray,
    device="auto",
    precision: str = "auto",
    fov: np.ndarray | None = None,
    should_stop=None,
    field_angle: float | str | None = None,
) -> Segmented:
    """``segmentation.segment`` at the model's scale, as the Segment widget and the CLI run it;
    ``field_angle``: the camera's field in degrees, None (estimated, 45 if unknown) or 'native'
    (no resampling)."""
    from .segmentation import segment

    t0 = time.perf_counter()
    native = field_angle == "native"
    seg = segment(
        loaded,
        rgb,
        fov=fov,
        scale="native" if native else "auto",
        field_angle=None if native else field_angle,
        fusion="auto",
        device=device,
        precision=precision,
        should_stop=should_stop,
    )
    return Segmented(
        seg.probability,
        seg.fov,
        seg.threshold,
        loaded.card.name,
        time.perf_counter() - t0,
        seg.scale.factor,
        seg.scale.describe(),
        field_angle,
    )


def fov_diameter(fov: np.ndarray) -> float:
    """FOV diameter in pixels: the disc's widest extent (``scale.fov_diameter``); without a disc
    (ultra-widefield, whole frame) the diameter of the disc with the FOV's area."""
    from .scale import fov_diameter as disc_diameter

    return disc_diameter(fov) or float(2.0 * math.sqrt(np.count_nonzero(fov) / math.pi))


def vessel_density(mask: np.ndarray, fov: np.ndarray) -> float:
    """Fraction of the FOV's pixels that are vessel (NaN for an empty FOV)."""
    n = np.count_nonzero(fov)
    return float(np.count_nonzero(np.asarray(mask, bool) & fov) / n) if n else math.nan


# ----------------------------------------------------------------------------- the session


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


def parse_session_data(data, path: Path) -> tuple[dict, str | None, list, object, int]:
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
    if version > _VERSION:
        raise bad(f"it was written by a newer napari-dpn (version {version}); update napari-dpn to open it")
    entries = {}
    for n, item in enumerate(images, 1):
        if not isinstance(item, dict):
            raise bad(f"image {n} is {_describe_json(item)}, not an object")
        for key, types in _ENTRY_TYPES.items():
            if key in item and (not isinstance(item[key], types) or isinstance(item[key], bool)):
                raise bad(f'image {n} has "{key}" {_describe_json(item[key])}')
        if "name" not in item:
            raise bad(f'image {n} has no "name"')
        visited = item.get("visited", [])
        if not all(isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v) for v in visited):
            raise bad(f'image {n} has "visited" regions that are not [row, column] pairs')
        if item.get("state", "new") not in STATES:
            raise bad(f'image {n} has the unknown state "{item["state"]}" (one of {", ".join(STATES)})')
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


def is_disk_full(exc: BaseException) -> bool:
    """Whether a failed write failed for lack of space (ENOSPC / EDQUOT), by errno: the OSError
    itself or the one an OutputError was raised from."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class Session:
    """A folder of photographs being corrected; ``Session.open(folder)`` creates or resumes one."""

    def __init__(
        self, folder: Path, annotations: Path, entries: list[Entry], current: int = 0, models: list | None = None
    ):
        self.folder, self.annotations = folder, annotations
        self.entries, self.current = entries, current
        self.models = list(models or [])  # fine-tuned versions: name, path, base, images, at
        self.field_angle: float | str | None = None  # the folder's camera: degrees, None (estimate) or 'native'
        self.write_error: str | None = None  # why the session file could not be written (kept in memory)
        self.backup: Path | None = None  # where a damaged session file was moved to
        self._lock = threading.RLock()  # entries and the session file: the widget saves from a worker thread
        self._save_lock = threading.Lock()  # one annotation write at a time

    # -- creation and persistence
    @classmethod
    def open(cls, folder: str | Path, annotations: str | Path | None = None, start_afresh: bool = False) -> Session:
        """The session of ``folder`` (annotations beside the photographs unless given): resumed
        from its session file, new photographs added, vanished ones dropped.

        A session file that is not a session raises SessionDamaged (one sentence); with
        ``start_afresh`` it is moved aside (``.napari-dpn-session.damaged-<time>.json``, never
        over another file: ``session.backup``) and a new session starts.  A file of version 1,
        where moving on saved the untouched map as "saved", is read with :meth:`_migrate_v1`."""
        folder = Path(folder).expanduser().resolve()
        photos = list_photographs(folder)
        if not photos:
            raise InputError(f"No photographs in {folder}.")
        annotations = Path(annotations).expanduser().resolve() if annotations else folder
        try:
            annotations.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from .image_io import os_error_message

            raise InputError(os_error_message(exc, annotations, "create the folder")) from None
        old, current_name, models, angle, version, backup = {}, None, [], None, _VERSION, None
        path = annotations / SESSION_FILE
        if path.is_file():
            try:
                try:
                    data = json.loads(path.read_text())
                except (ValueError, UnicodeDecodeError) as exc:
                    raise SessionDamaged(f"The session file {path} is damaged: it is not JSON ({exc}).", path) from None
                except OSError as exc:
                    from .image_io import os_error_message

                    raise InputError(os_error_message(exc, path, "read")) from None
                old, current_name, models, angle, version = parse_session_data(data, path)
            except SessionDamaged:
                if not start_afresh:
                    raise
                backup = _move_aside(path)
        entries = []
        for p in photos:
            e = old.get(p.name) or Entry(p.name)
            vessels, _ = annotation_paths(p, annotations)
            if e.state == "new" and vessels.is_file():
                digest = _digest(vessels)
                if e.digest is None or digest != e.digest:  # saved before the session, or by someone else
                    e.state, e.digest, e.saved_at = "saved", digest, _now()
            entries.append(e)
        names = [e.name for e in entries]
        session = cls(folder, annotations, entries, names.index(current_name) if current_name in names else 0, models)
        session.field_angle, session.backup = angle, backup
        if version < 2:
            session._migrate_v1()
        session.persist()
        return session

    def _migrate_v1(self) -> None:
        """Version 1 marked an image "saved" when the user merely moved on from it (the network's
        map, written untouched).  Such an entry stays a correction only if its vessels file differs
        from the cached map, or was changed since the session wrote it, or cannot be compared; an
        untouched one becomes "segmented" again (its file stays on disk, recognised as the
        session's own, so a later correction replaces it without asking)."""
        for i, e in enumerate(self.entries):
            if e.state != "saved":
                continue
            path = self.vessels_path(i)
            if not path.is_file():
                e.state = "segmented" if e.model else "new"
                continue
            cached = self.cached(i)
            if cached is None or e.digest is None or _digest(path) != e.digest:
                continue  # someone's annotation, or nothing to compare with: keep it
            try:
                saved = self.saved_mask(i)
            except InputError:
                continue
            prob, fov, t = cached
            if saved is None or saved.shape != prob.shape:
                continue
            differ = saved != ((prob >= t) & fov)
            # The cache holds float16: pixels this close to the threshold may round across it.
            if not differ.any() or bool((np.abs(prob[differ] - t) <= 2e-3).all()):
                e.state = "segmented"

    @property
    def path(self) -> Path:
        return self.annotations / SESSION_FILE

    def write(self) -> Path:
        """Write the session file atomically (OutputError with one sentence when it cannot)."""
        from .image_io import atomic_write, os_error_message

        with self._lock:
            data = {
                "version": _VERSION,
                "folder": str(self.folder),
                "annotations": str(self.annotations),
                "current": self.entries[self.current].name,
                "field_angle": self.field_angle,
                "images": [asdict(e) for e in self.entries],
                "models": self.models,
            }
            try:
                with atomic_write(self.path) as tmp:
                    Path(tmp).write_text(json.dumps(data, indent=1) + "\n")
            except OSError as exc:  # the write inside the block (atomic_write converts its own)
                from .errors import OutputError

                raise OutputError(os_error_message(exc, self.path)) from exc
            self.write_error = None
        return self.path

    def persist(self) -> str | None:
        """Write the session file; when that fails (a full disk) keep the state in memory, remember
        the sentence in ``write_error`` and return it, never raise: a brush stroke, Next or a
        prefetch must not fail because the bookkeeping could not be written.  The next write
        that succeeds records everything."""
        from .errors import DPNError

        try:
            self.write()
        except (DPNError, OSError) as exc:
            self.write_error = str(exc) if isinstance(exc, DPNError) else f"Cannot write {self.path}: {exc}."
        return self.write_error

    # -- navigation
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def done(self) -> int:
        """Images nobody needs to look at again: corrections (saved, accepted) and skipped ones."""
        return sum(e.state in CORRECTIONS or e.state == "skipped" for e in self.entries)

    def counts(self) -> dict:
        """How many images are in each state."""
        return {state: sum(e.state == state for e in self.entries) for state in STATES}

    def is_correction(self, index: int) -> bool:
        """Whether the image's annotation on disk is the user's: edited and saved, or accepted as
        is.  Only these are training pairs; moving on from an image approves nothing."""
        return self.entries[index].state in CORRECTIONS

    @property
    def corrected_indices(self) -> list[int]:
        """The images whose annotation is a correction (:meth:`is_correction`)."""
        return [i for i in range(len(self.entries)) if self.is_correction(i)]

    def needs_segmentation(self, index: int) -> bool:
        """Whether a new model (or field of view) segments this image again: nobody edited,
        accepted or skipped it (new / segmented)."""
        return self.entries[index].state in ("new", "segmented")

    def label(self, index: int) -> str:
        """The image's state in words, as the list shows it."""
        return LABELS[self.entries[index].state]

    def image_path(self, index: int | None = None) -> Path:
        return self.folder / self.entries[self.current if index is None else index].name

    def vessels_path(self, index: int | None = None) -> Path:
        return annotation_paths(self.image_path(index), self.annotations)[0]

    def fov_path(self, index: int | None = None) -> Path:
        return annotation_paths(self.image_path(index), self.annotations)[1]

    def cache_path(self, index: int | None = None) -> Path:
        return self.annotations / CACHE_DIR / f"{self.image_path(index).stem}.npz"

    def go(self, index: int) -> int:
        """Make ``index`` the current image (persisted; a failed write is kept in ``write_error``)."""
        self.current = max(0, min(len(self.entries) - 1, int(index)))
        self.persist()
        return self.current

    # -- the segmentation of one image
    def record_segmentation(self, index: int, seg: Segmented) -> None:
        """Keep the probability map (in the cache folder) and, on the first map, which model made
        it; a 'new' image becomes 'segmented'."""
        self.store_probability(index, seg)
        self.note_segmentation(index, seg)

    def store_probability(self, index: int, seg: Segmented) -> Path:
        """Write the probability map, FOV and threshold to the cache folder (any thread)."""
        from .image_io import atomic_write

        cache = self.cache_path(index)
        cache.parent.mkdir(exist_ok=True)
        angle = "" if seg.field_angle is None else str(seg.field_angle)
        with atomic_write(cache) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                probability=seg.probability.astype(np.float16),
                fov=seg.fov,
                threshold=seg.threshold,
                model=np.str_(seg.model),
                scale=seg.scale,
                seconds=seg.seconds,
                scale_note=np.str_(seg.scale_note),
                field_angle=np.str_(angle),
            )
        return cache

    def cached_segmentation(self, index: int) -> Segmented | None:
        """The kept map of an image with who made it (model, scale, field angle), or None.  A
        cache written before that was recorded has the model ''."""
        path = self.cache_path(index)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                meta = {k: z[k].item() for k in ("model", "scale", "seconds", "scale_note", "field_angle") if k in z}
                angle = meta.get("field_angle") or None
                if angle not in (None, "native"):
                    angle = float(angle)
                return Segmented(
                    z["probability"].astype(np.float32),
                    z["fov"].astype(bool),
                    float(z["threshold"]),
                    str(meta.get("model", "")),
                    float(meta.get("seconds", 0.0)),
                    float(meta.get("scale", 1.0)),
                    str(meta.get("scale_note", "")),
                    angle,
                )
        except (OSError, ValueError, KeyError):
            return None

    def note_segmentation(self, index: int, seg: Segmented) -> None:
        """Record the first map's model, time, scale and numbers; 'new' becomes 'segmented'."""
        e = self.entries[index]
        if e.model is None and seg.model:
            e.model, e.seconds, e.scale = seg.model, round(seg.seconds, 3), seg.scale
            e.threshold, e.segmented_at = seg.threshold, _now()
            e.field_angle, e.scale_note = seg.field_angle, seg.scale_note or None
            e.fov_diameter = round(fov_diameter(seg.fov), 1)
            e.density = round(vessel_density(seg.mask(), seg.fov), 5)
        if e.state == "new":
            e.state = "segmented"
        self.persist()

    def cached(self, index: int) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(probability, FOV, threshold) kept for an image, or None."""
        path = self.cache_path(index)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                return z["probability"].astype(np.float32), z["fov"].astype(bool), float(z["threshold"])
        except (OSError, ValueError, KeyError):
            return None

    def mark_corrected(self, index: int) -> None:
        """The user edited the image: a correction, to be saved (persisted without raising)."""
        e = self.entries[index]
        if e.state != "corrected":
            e.before, e.state = e.state, "corrected"
            self.persist()

    def unmark_corrected(self, index: int) -> None:
        """The edits were undone to what was there before: the image goes back to its earlier
        state (an untouched map stays "segmented", not a correction)."""
        e = self.entries[index]
        if e.state == "corrected":
            e.state, e.before = e.before or "segmented", None
            self.persist()

    def skip(self, index: int) -> None:
        """Leave the image out: not a correction, not a training pair, not segmented again by
        *Re-segment the rest*.  Its annotation file, if any, stays on disk untouched; editing or
        accepting it later makes it a correction again."""
        e = self.entries[index]
        e.state, e.before = "skipped", None
        self.persist()

    def room_to_save(self, index: int, shape) -> bool:
        """Whether the annotations folder has room for this image's vessels and FOV files."""
        return room_for(self.annotations, 2 * (int(np.prod(shape[:2])) // 8 + 4096))

    def conflict(self, index: int) -> Path | None:
        """The vessels file of an image when it exists and is not the one this session wrote or
        resumed (someone else's file: ask before replacing it), else None."""
        path = self.vessels_path(index)
        if not path.is_file():
            return None
        return None if _digest(path) == self.entries[index].digest else path

    def save(
        self, index: int, mask: np.ndarray, fov: np.ndarray | None = None, overwrite: bool = False, state="saved"
    ) -> Path:
        """Write the corrected vessels (and FOV) of an image atomically: it is a correction
        ("saved"; ``state="accepted"``: the network's map accepted as is).  Refuses
        (SessionConflict) to replace a vessels file the session did not write unless
        ``overwrite``; a failed write (a full disk: OutputError) changes no state.  The session
        file is written after the annotation; when only that fails, ``write_error`` says so."""
        from .image_io import write_mask

        if state not in CORRECTIONS:
            raise ValueError(f"state must be one of {CORRECTIONS}")
        # Saves are ordered by their own lock; the session's lock (entries, the session file) is
        # held only for the bookkeeping, so the GUI thread's navigation never waits for a PNG.
        with self._save_lock:
            return self._save(index, mask, fov, overwrite, write_mask, state)

    def accept(self, index: int, mask: np.ndarray, fov: np.ndarray | None = None, overwrite: bool = False) -> Path:
        """The user accepts the map as it is: written like a correction, state "accepted"."""
        return self.save(index, mask, fov, overwrite, state="accepted")

    def save_copy(self, index: int, mask: np.ndarray, fov: np.ndarray | None, folder: str | Path) -> Path:
        """Write an image's vessels (and FOV) into another ``folder`` (when the annotations folder
        is full), never over a file there (OutputExistsError); the session's state is unchanged."""
        from .image_io import write_mask

        folder = Path(folder)
        vessels, fov_path = annotation_paths(self.image_path(index), folder)
        write_mask(vessels, np.asarray(mask, bool), on_value=255, overwrite=False)
        if fov is not None and not fov_path.exists():
            write_mask(fov_path, np.asarray(fov, bool), on_value=255, overwrite=False)
        return vessels

    def _save(self, index, mask, fov, overwrite, write_mask, state="saved") -> Path:
        path = self.conflict(index)
        if path is not None and not overwrite:
            raise SessionConflict(f"{path.name} was not written by this session; confirm to replace it.")
        vessels = write_mask(self.vessels_path(index), np.asarray(mask, bool), on_value=255)
        if fov is not None and (
            not self.fov_path(index).is_file() or overwrite or self.entries[index].digest is not None
        ):
            write_mask(self.fov_path(index), np.asarray(fov, bool), on_value=255)
        digest = _digest(vessels)
        numbers = (
            (round(vessel_density(mask, np.asarray(fov, bool)), 5), round(fov_diameter(np.asarray(fov, bool)), 1))
            if fov is not None
            else None
        )
        with self._lock:
            e = self.entries[index]
            e.state, e.saved_at, e.digest, e.before = state, _now(), digest, None
            if numbers is not None:
                e.density, e.fov_diameter = numbers
            self.persist()
        return vessels

    def saved_mask(self, index: int) -> np.ndarray | None:
        """The vessels annotation on disk of an image (resumed), or None."""
        from .image_io import read_mask

        path = self.vessels_path(index)
        return read_mask(path) if path.is_file() else None

    # -- the human-in-the-loop cycle
    def training_pairs(self) -> list[tuple]:
        """(rgb, vessels, FOV or None) of every correction (edited and saved, or accepted as is;
        :attr:`corrected_indices`); an image the user only moved on from is never one."""
        from .image_io import as_rgb, read_image, read_mask

        pairs = []
        for i in self.corrected_indices:
            if not self.vessels_path(i).is_file():
                continue
            rgb = as_rgb(read_image(self.image_path(i)))
            fov = read_mask(self.fov_path(i)) if self.fov_path(i).is_file() else None
            pairs.append((rgb, read_mask(self.vessels_path(i)), fov))
        return pairs

    def finetune(
        self,
        init,
        steps: int = 200,
        name: str | None = None,
        device: str = "auto",
        out_dir=None,
        should_stop=None,
        callback=None,
        field_angle: float | str | None = None,
    ):
        """Fine-tune ``init`` (a model name or path) on the saved annotations at its working scale
        (``field_angle``: the camera's, as given to segment; None: the folder's setting, else the
        45 degree guess; 'native': no resampling, as the folder was segmented); the new
        model is saved with its card in the user models folder (or ``out_dir``) and recorded with
        the images it saw.  Returns the engine's ``TrainResult``."""
        from .models import user_models_dir
        from .training import finetune_config, train

        pairs = self.training_pairs()
        if not pairs:
            raise InputError("No saved annotation to fine-tune on: correct and save an image first.")
        seen = [self.entries[i].name for i in self.corrected_indices if self.vessels_path(i).is_file()]
        side = min(min(p[0].shape[:2]) for p in pairs)
        name = name or free_model_name(self.folder.name, out_dir, len(self.models) + 1)
        # The shared fine-tune settings: the base model's working scale (as segment resamples), its
        # fusion carried over, the shipped threshold rule (max accuracy), lr 1e-4.
        config = finetune_config(
            steps=int(steps),
            crop=min(512, side // 16 * 16),
            **_finetune_scale(self.field_angle if field_angle is None else field_angle),
            device=device,
            name=name,
            checkpoint_every=max(1, int(steps)),
        )
        out = Path(out_dir) if out_dir else user_models_dir()
        out.mkdir(parents=True, exist_ok=True)
        result = train(
            config,
            pairs,
            None,
            init=init,
            out_dir=out,
            callback=callback,
            should_stop=should_stop,
            description=f"fine-tuning '{name}' on {len(pairs)} image(s)",
            overwrite=False,  # never replace a model: a name taken meanwhile becomes <name>-2
        )
        if result.model_path is not None:
            with self._lock:
                self.models.append(
                    {
                        "name": result.card.name,  # the name it was saved under
                        "path": str(result.model_path),
                        "sha256": result.card.sha256,
                        "base": str(init),
                        "images": seen,
                        "steps": result.steps,
                        "at": _now(),
                    }
                )
                self.write()
        return result

    def reset_unsaved(self) -> list[int]:
        """Forget the maps of the images nobody edited, accepted or skipped
        (:meth:`needs_segmentation`: moving on from one approved nothing), so the next visit
        segments them again with the chosen model and field of view; returns their indices."""
        reset = []
        with self._lock:
            for i, e in enumerate(self.entries):
                if self.needs_segmentation(i):
                    self.cache_path(i).unlink(missing_ok=True)
                    e.state, e.model, e.seconds, e.segmented_at = "new", None, None, None
                    e.scale, e.scale_note, e.field_angle = None, None, None
                    reset.append(i)
            self.persist()
        return reset

    def visit(self, index: int, region) -> None:
        self.entries[index].visited.append([int(region[0]), int(region[1])])
        self.persist()

    # -- export
    def rows(self) -> list[dict]:
        """One row per image for the CSV: metrics against the ground truth when one is known."""
        from . import metrics
        from .errors import DPNError
        from .image_io import read_mask

        rows = []
        for i, e in enumerate(self.entries):
            row = {k: "" for k in CSV_COLUMNS}
            row.update(
                image=e.name,
                state=e.state,
                model=e.model or "",
                threshold=_fmt(e.threshold),
                scale=_fmt(e.scale),
                field_angle=_fmt_angle(e) if e.model else "",
                fov_diameter_px=_fmt(e.fov_diameter),
                vessel_density=_fmt(e.density),
                seconds=_fmt(e.seconds),
            )
            gt_path = ground_truth_path(self.image_path(i))
            # Metrics measure the user's annotation (a correction) or else the network's map of
            # the model in the row: a map whose model is not recorded is not measured at all.
            cached = self.cached(i) if e.model else None
            mask = self.saved_mask(i) if self.is_correction(i) else None
            row["measured"] = "annotation" if mask is not None else ""
            if mask is None and cached is not None:
                mask = (cached[0] >= cached[2]) & cached[1]
                row["measured"] = "network map"
            if gt_path is None or mask is None:
                row["measured"] = ""
            if gt_path is not None and mask is not None:
                try:
                    gt = read_mask(gt_path)
                    fov = (
                        read_mask(self.fov_path(i))
                        if self.fov_path(i).is_file()
                        else (cached[1] if cached is not None else None)
                    )
                    if gt.shape != mask.shape:
                        row["measured"] = ""
                    else:
                        m = metrics.confusion_metrics(mask, gt, fov)
                        row.update(
                            se=_fmt(m["se"]),
                            sp=_fmt(m["sp"]),
                            acc=_fmt(m["acc"]),
                            f1=_fmt(m["f1"]),
                            ground_truth=gt_path.name,
                        )
                        if cached is not None:
                            row["auc"] = _fmt(metrics.auc(cached[0], gt, fov))
                except DPNError:
                    row["measured"] = ""
            rows.append(row)
        return rows

    def export_csv(self, path: str | Path) -> Path:
        """Write the per-image table atomically."""
        from .image_io import atomic_write

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows())
        path = Path(path)
        with atomic_write(path) as tmp:
            Path(tmp).write_text(buf.getvalue())
        return path


def _fmt_angle(e: Entry) -> str:
    """The field-of-view setting of an image's first map, as the CSV says it."""
    if e.field_angle is None:
        return "estimated"
    return "native" if e.field_angle == "native" else f"{float(e.field_angle):g}"


def _move_aside(path: Path) -> Path:
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


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


# ----------------------------------------------------------------------------- tools


# How far a click may be from what a click tool acts on (px): a click in empty space does nothing.
CLICK_REACH = 6
# The halo of the tree: candidate pixels this close to the existing vessels are not followed by
# *Add vessel here* (they ring the whole tree at a low threshold), only joined where the new
# segment meets the tree.
HALO_PX = 3


def _neighbours(skel: np.ndarray) -> np.ndarray:
    k = np.ones((3, 3), np.int32)
    k[1, 1] = 0
    return ndimage.convolve(skel.astype(np.int32), k, mode="constant") * skel


def branch_pixels(mask: np.ndarray, point) -> np.ndarray:
    """The pixels of the skeleton segment nearest to ``point`` (row, col), cut at its junctions:
    every vessel pixel whose nearest skeleton pixel lies on that segment (bool mask).  Nothing when
    no vessel lies within ``CLICK_REACH`` px of the click."""
    from skimage.morphology import skeletonize

    mask = np.asarray(mask, bool)
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    comps, _ = ndimage.label(mask, structure=_EIGHT)
    r, c = (int(round(v)) for v in point)
    r, c = min(max(r, 0), mask.shape[0] - 1), min(max(c, 0), mask.shape[1] - 1)
    if comps[r, c] == 0:  # the nearest vessel pixel's component, if the click is beside one
        y0, x0 = max(0, r - CLICK_REACH), max(0, c - CLICK_REACH)
        near = comps[y0 : r + CLICK_REACH + 1, x0 : c + CLICK_REACH + 1]
        if not near.any():
            return out  # a click in empty space removes nothing (not the nearest vessel anywhere)
        dist, (ir, ic) = ndimage.distance_transform_edt(near == 0, return_indices=True)
        rr, cc = r - y0, c - x0
        if dist[rr, cc] > CLICK_REACH:
            return out
        r, c = int(ir[rr, cc]) + y0, int(ic[rr, cc]) + x0
    comp = comps == comps[r, c]
    skel = skeletonize(comp)
    if not skel.any():
        return comp
    junction = (_neighbours(skel) >= 3) & skel
    junction = ndimage.binary_dilation(junction, structure=_EIGHT) & skel
    segments, _ = ndimage.label(skel & ~junction, structure=_EIGHT)
    # Each vessel pixel belongs to its nearest skeleton pixel's segment (0 = a junction).
    _, (ir, ic) = ndimage.distance_transform_edt(~skel, return_indices=True)
    owner = segments[ir, ic]
    seg_id = owner[r, c]
    if seg_id == 0:  # clicked on a junction: take the nearest segment pixel
        _, (jr, jc) = ndimage.distance_transform_edt(segments == 0, return_indices=True)
        seg_id = segments[jr[r, c], jc[r, c]]
        if seg_id == 0:
            return comp
    return comp & (owner == seg_id)


def remove_branch(mask: np.ndarray, point) -> np.ndarray:
    """The mask without the branch clicked at ``point``: the skeleton segment is cut at the nearest
    junctions and only its pixels go, never the rest of the tree."""
    mask = np.asarray(mask, bool)
    return mask & ~branch_pixels(mask, point)


def click_radius(shape) -> int:
    """Half the side of the window a click tool may change: about one vessel segment between two
    junctions (4% of the longer side, at least 40 px: 40 px on DRIVE, 140 px on a 3500-px photo)."""
    return max(40, int(round(0.04 * max(shape[:2]))))


def vessel_region(prob: np.ndarray, mask: np.ndarray, point, low: float, radius: int | None = None) -> np.ndarray:
    """The pixels *Add vessel here* adds: the missed vessel segment at the click, nothing else.

    The connected region of ``prob >= low`` that is not vessel yet, grown from the click (the
    nearest such pixel within 3 px) inside a window of ``radius`` px around it
    (:func:`click_radius`).  It does not run along the halo of the existing vessels (the pixels
    within ``HALO_PX`` of them, which at a low threshold ring the whole tree) except at the click;
    where the segment meets the tree the halo between them is added, so the new segment joins it.
    """
    prob = np.asarray(prob)
    mask = np.asarray(mask, bool)
    out = np.zeros(prob.shape, bool)
    r, c = (int(round(v)) for v in point)
    h, w = prob.shape
    if not (0 <= r < h and 0 <= c < w):
        return out
    rad = int(radius) if radius else click_radius(prob.shape)
    y0, y1, x0, x1 = max(0, r - rad), min(h, r + rad + 1), max(0, c - rad), min(w, c + rad + 1)
    p, m = prob[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    cand = (p >= low) & ~m
    r, c = r - y0, c - x0
    if not cand[r, c]:
        a0, a1, b0, b1 = max(0, r - 3), min(cand.shape[0], r + 4), max(0, c - 3), min(cand.shape[1], c + 4)
        win = np.where(cand[a0:a1, b0:b1], p[a0:a1, b0:b1], -1)
        if win.max() < 0:
            return out
        dr, dc = np.unravel_index(np.argmax(win), win.shape)
        r, c = a0 + dr, b0 + dc
    if m.any():
        near = (ndimage.distance_transform_edt(~m) <= HALO_PX) & cand
    else:
        near = np.zeros(m.shape, bool)
    yy, xx = np.ogrid[: m.shape[0], : m.shape[1]]
    at_click = (yy - r) ** 2 + (xx - c) ** 2 <= (HALO_PX + 2) ** 2
    labels, _ = ndimage.label(cand & (~near | at_click), structure=_EIGHT)
    region = labels == labels[r, c]
    # Join the segment to the vessels it meets: the halo pixels next to its ends.
    region |= ndimage.binary_dilation(region, structure=_EIGHT, iterations=HALO_PX + 1) & near
    out[y0:y1, x0:x1] = region
    return out


def trace_pixels(prob: np.ndarray, mask: np.ndarray, start, end, width: int = 1) -> np.ndarray:
    """The pixels a drag from ``start`` to ``end`` adds: the cheapest path along the ridge of
    the probability map (cost 1 - p), ``width`` pixels wide, minus what is already vessel."""
    from skimage.graph import route_through_array

    prob = np.asarray(prob, np.float32)
    h, w = prob.shape

    def clip(p):
        return (min(max(int(round(p[0])), 0), h - 1), min(max(int(round(p[1])), 0), w - 1))

    start, end = clip(start), clip(end)
    # Search only the box around both ends (with a margin): a drag is local.
    m = max(16, abs(start[0] - end[0]) // 2, abs(start[1] - end[1]) // 2)
    y0, y1 = max(0, min(start[0], end[0]) - m), min(h, max(start[0], end[0]) + m + 1)
    x0, x1 = max(0, min(start[1], end[1]) - m), min(w, max(start[1], end[1]) + m + 1)
    cost = 1.0 - np.clip(prob[y0:y1, x0:x1], 0, 1) + 1e-3
    path, _ = route_through_array(
        cost, (start[0] - y0, start[1] - x0), (end[0] - y0, end[1] - x0), fully_connected=True, geometric=True
    )
    out = np.zeros(prob.shape, bool)
    rr, cc = np.asarray(path).T
    out[rr + y0, cc + x0] = True
    if width > 1:
        out = ndimage.binary_dilation(out, iterations=width // 2)
    return out & ~np.asarray(mask, bool)


def add_vessel(prob: np.ndarray, mask: np.ndarray, point, low: float, radius: int | None = None) -> np.ndarray:
    """The mask plus the missed vessel segment at ``point`` (:func:`vessel_region`)."""
    return np.asarray(mask, bool) | vessel_region(prob, mask, point, low, radius)


def threshold_box(
    prob: np.ndarray, mask: np.ndarray, fov: np.ndarray | None, box, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """A local threshold (a hazy area): inside ``box`` (y0, x0, y1, x1), the pixels to turn on
    and the pixels to turn off so that vessel = ``prob >= threshold`` inside the FOV there."""
    prob = np.asarray(prob)
    mask = np.asarray(mask, bool)
    y0, x0, y1, x1 = (int(v) for v in box[:4])
    want = np.zeros(mask.shape, bool)
    inside = np.zeros(mask.shape, bool)
    inside[y0:y1, x0:x1] = True
    if fov is not None:
        inside &= np.asarray(fov, bool)
    want[inside] = prob[inside] >= threshold
    return want & ~mask & inside, mask & ~want & inside


def speck_components(mask: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """(bool mask of the pixels of the 8-connected components smaller than ``n`` pixels, how many
    such components): what *Remove specks* removes, and the count its preview shows."""
    mask = np.asarray(mask, bool)
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return np.zeros(mask.shape, bool), 0
    small = np.bincount(labels.ravel()) < n
    small[0] = False
    return small[labels], int(np.count_nonzero(small))


def speck_pixels(mask: np.ndarray, n: int) -> np.ndarray:
    """The pixels of the 8-connected components smaller than ``n`` pixels (bool mask)."""
    return speck_components(mask, n)[0]


def remove_specks(mask: np.ndarray, n: int) -> np.ndarray:
    """The mask without its components smaller than ``n`` pixels."""
    mask = np.asarray(mask, bool)
    return mask & ~speck_pixels(mask, n)


# ----------------------------------------------------------------------------- where to look


def uncertainty(prob: np.ndarray, threshold: float = 0.5, sigma: float = 2.0) -> np.ndarray:
    """1 at the threshold, 0 at a certain 0 or 1 (``1 - |2p - 1|`` for threshold 0.5, rescaled
    around other thresholds), Gaussian-smoothed: float32 (H, W) in 0..1."""
    p = np.asarray(prob, np.float32)
    t = float(min(max(threshold, 1e-3), 1 - 1e-3))
    u = np.where(p < t, p / t, (1.0 - p) / (1.0 - t)).astype(np.float32)
    return ndimage.gaussian_filter(u, sigma) if sigma > 0 else u


def tta_uncertainty(loaded, rgb: np.ndarray, device="cpu", precision: str = "auto", sigma: float = 2.0) -> np.ndarray:
    """Disagreement of flip test-time augmentation: the standard deviation of the probability
    over the original and three flips (x2 so it spans 0..1), smoothed."""
    from .image_io import as_rgb
    from .inference import predict

    rgb = as_rgb(rgb)
    maps = []
    for flip in ((), (0,), (1,), (0, 1)):
        view = np.flip(rgb, flip) if flip else rgb
        p = predict(loaded, np.ascontiguousarray(view), device=device, precision=precision).probability
        maps.append(np.flip(p, flip) if flip else p)
    u = np.clip(2.0 * np.std(np.stack(maps), axis=0), 0, 1).astype(np.float32)
    return ndimage.gaussian_filter(u, sigma) if sigma > 0 else u


def rank_regions(uncert: np.ndarray, fov: np.ndarray | None = None, size: int = 64) -> list[tuple]:
    """Non-overlapping ``size`` x ``size`` regions (y0, x0, y1, x1, score), most uncertain first;
    the score is the summed uncertainty inside the FOV, so half-outside tiles rank lower."""
    u = np.asarray(uncert, np.float32)
    if fov is not None:
        u = u * np.asarray(fov, bool)
    h, w = u.shape
    out = []
    for y0 in range(0, h, size):
        for x0 in range(0, w, size):
            y1, x1 = min(h, y0 + size), min(w, x0 + size)
            if fov is not None and not np.asarray(fov, bool)[y0:y1, x0:x1].any():
                continue
            out.append((y0, x0, y1, x1, float(u[y0:y1, x0:x1].sum())))
    out.sort(key=lambda r: (-r[4], r[0], r[1]))
    return out
