"""Correcting a whole folder: the session file, the vessel-aware tools and "where to look next".

Qt-free (the *Correct a folder* dock widget and the tests call the same functions).

- :class:`Session`: the photographs of a folder, each with a state (new / segmented / corrected /
  saved), the model that produced its first map, timings and timestamps, persisted atomically in
  ``.napari-dpn-session.json`` beside the annotations, so reopening the folder resumes exactly.
- Tools on a boolean vessel mask: :func:`remove_branch` (cut a skeleton segment at its nearest
  junctions), :func:`add_vessel` (hysteresis region of the probability map around a click),
  :func:`remove_specks`.
- :func:`uncertainty` and :func:`rank_regions`: the regions a grader should look at first.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .annotations import annotation_paths, is_annotation
from .errors import InputError

SESSION_FILE = ".napari-dpn-session.json"
CACHE_DIR = ".napari-dpn-cache"
STATES = ("new", "segmented", "corrected", "saved")
_VERSION = 1
# Files beside the photographs that are annotations of a dataset, not photographs to correct.
_NOT_PHOTOS = re.compile(r"(_gt|_1stHO|_2ndHO|_manual\d|_mask|\.ah|\.vk|_probability)$", re.IGNORECASE)
CSV_COLUMNS = (
    "image",
    "state",
    "model",
    "threshold",
    "scale",
    "fov_diameter_px",
    "vessel_density",
    "seconds",
    "se",
    "sp",
    "acc",
    "auc",
    "f1",
    "ground_truth",
)
_EIGHT = np.ones((3, 3), bool)


class SessionConflict(InputError):
    """An annotation file that the session did not write is in the way."""


# ----------------------------------------------------------------------------- files


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
        and not _NOT_PHOTOS.search(p.stem)
    )


def ground_truth_path(image: str | Path) -> Path | None:
    """The ground truth of a photograph when one is known: ``<stem>_gt.*`` beside it, or the
    DRIVE / STARE / CHASE_DB1 naming (``NN_manual1.gif``, ``imNNNN.ah.ppm``, ``<stem>_1stHO.png``)."""
    image = Path(image)
    folder, stem = image.parent, image.stem
    candidates = [folder / f"{stem}_gt{s}" for s in (".png", ".gif", ".tif", ".tiff", ".bmp")]
    candidates += [
        folder / f"{stem}_1stHO.png",
        folder / f"{stem}.ah.ppm",
        folder.parent / "labels-ah" / f"{stem}.ah.ppm",
    ]
    m = re.match(r"^(\d+)_(test|training)$", stem)
    if m:
        candidates.append(folder.parent / "1st_manual" / f"{m.group(1)}_manual1.gif")
    return next((c for c in candidates if c.is_file()), None)


def dataset_fov_path(image: str | Path) -> Path | None:
    """A dataset's own FOV mask of a photograph (DRIVE ``mask/NN_test_mask.gif``, STARE
    ``mask/imNNNN_mask.pgm``), or None."""
    image = Path(image)
    for folder in (image.parent, image.parent.parent / "mask"):
        for suffix in (".gif", ".pgm", ".png", ".tif"):
            p = folder / f"{image.stem}_mask{suffix}"
            if p.is_file():
                return p
    return None


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
    field_angle: float | None = None,
) -> Segmented:
    """``segmentation.segment`` at the model's scale, as the Segment widget and the CLI run it."""
    from .segmentation import segment

    t0 = time.perf_counter()
    seg = segment(
        loaded,
        rgb,
        fov=fov,
        field_angle=field_angle,
        fusion="auto",
        device=device,
        precision=precision,
        should_stop=should_stop,
    )
    return Segmented(
        seg.probability, seg.fov, seg.threshold, loaded.card.name, time.perf_counter() - t0, seg.scale.factor
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


class Session:
    """A folder of photographs being corrected; ``Session.open(folder)`` creates or resumes one."""

    def __init__(
        self, folder: Path, annotations: Path, entries: list[Entry], current: int = 0, models: list | None = None
    ):
        self.folder, self.annotations = folder, annotations
        self.entries, self.current = entries, current
        self.models = list(models or [])  # fine-tuned versions: name, path, base, images, at
        self._lock = threading.RLock()  # entries and the session file: the widget saves from a worker thread
        self._save_lock = threading.Lock()  # one annotation write at a time

    # -- creation and persistence
    @classmethod
    def open(cls, folder: str | Path, annotations: str | Path | None = None) -> Session:
        """The session of ``folder`` (annotations beside the photographs unless given): resumed
        from its session file, new photographs added, vanished ones dropped."""
        folder = Path(folder).expanduser().resolve()
        photos = list_photographs(folder)
        if not photos:
            raise InputError(f"No photographs in {folder}.")
        annotations = Path(annotations).expanduser().resolve() if annotations else folder
        annotations.mkdir(parents=True, exist_ok=True)
        old, current_name, models = {}, None, []
        path = annotations / SESSION_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                known = set(Entry.__dataclass_fields__)
                old = {e["name"]: Entry(**{k: v for k, v in e.items() if k in known}) for e in data.get("images", [])}
                current_name = data.get("current")
                models = list(data.get("models", []))
            except (ValueError, TypeError, KeyError) as exc:
                raise InputError(f"The session file {path} is damaged ({exc}); move it away to start afresh.") from None
        entries = []
        for p in photos:
            e = old.get(p.name) or Entry(p.name)
            vessels, _ = annotation_paths(p, annotations)
            if e.state == "new" and vessels.is_file():  # saved before the session existed
                e.state, e.digest, e.saved_at = "saved", _digest(vessels), _now()
            entries.append(e)
        names = [e.name for e in entries]
        session = cls(folder, annotations, entries, names.index(current_name) if current_name in names else 0, models)
        session.write()
        return session

    @property
    def path(self) -> Path:
        return self.annotations / SESSION_FILE

    def write(self) -> Path:
        """Write the session file atomically."""
        from .image_io import atomic_write

        with self._lock:
            data = {
                "version": _VERSION,
                "folder": str(self.folder),
                "annotations": str(self.annotations),
                "current": self.entries[self.current].name,
                "images": [asdict(e) for e in self.entries],
                "models": self.models,
            }
            with atomic_write(self.path) as tmp:
                Path(tmp).write_text(json.dumps(data, indent=1) + "\n")
        return self.path

    # -- navigation
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def done(self) -> int:
        return sum(e.state == "saved" for e in self.entries)

    def image_path(self, index: int | None = None) -> Path:
        return self.folder / self.entries[self.current if index is None else index].name

    def vessels_path(self, index: int | None = None) -> Path:
        return annotation_paths(self.image_path(index), self.annotations)[0]

    def fov_path(self, index: int | None = None) -> Path:
        return annotation_paths(self.image_path(index), self.annotations)[1]

    def cache_path(self, index: int | None = None) -> Path:
        return self.annotations / CACHE_DIR / f"{self.image_path(index).stem}.npz"

    def go(self, index: int) -> int:
        self.current = max(0, min(len(self.entries) - 1, int(index)))
        self.write()
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
        with atomic_write(cache) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, probability=seg.probability.astype(np.float16), fov=seg.fov, threshold=seg.threshold
            )
        return cache

    def note_segmentation(self, index: int, seg: Segmented) -> None:
        """Record the first map's model, time and numbers; 'new' becomes 'segmented'."""
        e = self.entries[index]
        if e.model is None:
            e.model, e.seconds, e.scale = seg.model, round(seg.seconds, 3), seg.scale
            e.threshold, e.segmented_at = seg.threshold, _now()
            e.fov_diameter = round(fov_diameter(seg.fov), 1)
            e.density = round(vessel_density(seg.mask(), seg.fov), 5)
        if e.state == "new":
            e.state = "segmented"
        self.write()

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
        e = self.entries[index]
        if e.state in ("new", "segmented", "saved"):
            e.state = "corrected"
            self.write()

    def conflict(self, index: int) -> Path | None:
        """The vessels file of an image when it exists and is not the one this session wrote or
        resumed (someone else's file: ask before replacing it), else None."""
        path = self.vessels_path(index)
        if not path.is_file():
            return None
        return None if _digest(path) == self.entries[index].digest else path

    def save(self, index: int, mask: np.ndarray, fov: np.ndarray | None = None, overwrite: bool = False) -> Path:
        """Write the corrected vessels (and FOV) of an image atomically; refuse (SessionConflict)
        to replace a vessels file the session did not write unless ``overwrite``."""
        from .image_io import write_mask

        # Saves are ordered by their own lock; the session's lock (entries, the session file) is
        # held only for the bookkeeping, so the GUI thread's navigation never waits for a PNG.
        with self._save_lock:
            return self._save(index, mask, fov, overwrite, write_mask)

    def _save(self, index, mask, fov, overwrite, write_mask) -> Path:
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
            e.state, e.saved_at, e.digest = "saved", _now(), digest
            if numbers is not None:
                e.density, e.fov_diameter = numbers
            self.write()
        return vessels

    def saved_mask(self, index: int) -> np.ndarray | None:
        """The vessels annotation on disk of an image (resumed), or None."""
        from .image_io import read_mask

        path = self.vessels_path(index)
        return read_mask(path) if path.is_file() else None

    # -- the human-in-the-loop cycle
    def training_pairs(self) -> list[tuple]:
        """(rgb, vessels, FOV or None) of every saved image: the corrected annotations."""
        from .image_io import as_rgb, read_image, read_mask

        pairs = []
        for i, e in enumerate(self.entries):
            if e.state != "saved" or not self.vessels_path(i).is_file():
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
    ):
        """Fine-tune ``init`` (a model name or path) on the saved annotations; the new model is
        saved with its card in the user models folder (or ``out_dir``) and recorded with the
        images it saw.  Returns the engine's ``TrainResult``."""
        from .models import user_models_dir
        from .training import TrainConfig, train

        pairs = self.training_pairs()
        if not pairs:
            raise InputError("No saved annotation to fine-tune on: correct and save an image first.")
        seen = [e.name for e in self.entries if e.state == "saved"]
        side = min(min(p[0].shape[:2]) for p in pairs)
        name = name or f"{self.folder.name}-ft{len(self.models) + 1}"
        config = TrainConfig(
            steps=int(steps),
            crop=min(512, side // 16 * 16),
            lr=1e-4,
            threshold_rule="max_acc",  # the fewest pixels for the grader to change
            device=device,
            name=name,
            val_every=0,
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
        )
        if result.model_path is not None:
            with self._lock:
                self.models.append(
                    {
                        "name": name,
                        "path": str(result.model_path),
                        "base": str(init),
                        "images": seen,
                        "steps": result.steps,
                        "at": _now(),
                    }
                )
                self.write()
        return result

    def reset_unsaved(self) -> list[int]:
        """Forget the maps of the images nobody corrected or saved (state new / segmented), so
        the next visit segments them again with the chosen model; returns their indices."""
        reset = []
        with self._lock:
            for i, e in enumerate(self.entries):
                if e.state in ("new", "segmented"):
                    self.cache_path(i).unlink(missing_ok=True)
                    e.state, e.model, e.seconds, e.segmented_at = "new", None, None, None
                    reset.append(i)
            self.write()
        return reset

    def visit(self, index: int, region) -> None:
        self.entries[index].visited.append([int(region[0]), int(region[1])])
        self.write()

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
                fov_diameter_px=_fmt(e.fov_diameter),
                vessel_density=_fmt(e.density),
                seconds=_fmt(e.seconds),
            )
            gt_path = ground_truth_path(self.image_path(i))
            cached = self.cached(i)
            mask = self.saved_mask(i) if e.state == "saved" else None
            if mask is None and cached is not None:
                mask = (cached[0] >= cached[2]) & cached[1]
            if gt_path is not None and mask is not None:
                try:
                    gt = read_mask(gt_path)
                    fov = (
                        read_mask(self.fov_path(i))
                        if self.fov_path(i).is_file()
                        else (cached[1] if cached is not None else None)
                    )
                    if gt.shape == mask.shape:
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
                    pass
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
