"""The one state of the *Correct a folder* widget, and the image preparation its workers run.

Qt-free: :class:`FolderState` is a dataclass that every panel reads and changes through a few
methods; it announces what changed with psygnal signals (napari's own, no Qt): ``listed`` (the
images' states: the list and the buttons), ``changed`` (what the buttons may do), ``said`` (the
status line), ``notified`` (a napari notification), ``arriving`` / ``arrived`` (an image is
coming / on screen).  :func:`prepare_image` is what a worker
does before an image can be shown: read it, segment it (or read the kept map), its uncertainty.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import numpy as np
from psygnal import Signal

from napari_dpn.errors import DPNError
from napari_dpn.image_io import as_rgb, read_image
from napari_dpn.messages import sentence
from napari_dpn.models import load_model, resolve_model_path
from napari_dpn.session import Session
from napari_dpn.session_maps import Segmented, segment_photo
from napari_dpn.uncertainty import rank_regions, uncertainty

REGION = 64  # the side of an uncertain region (px)
KEYS = {  # the widget's keyboard shortcuts
    "next": "Shift-N",
    "previous": "Shift-P",
    "uncertain": "Shift-U",
    "save": "Shift-S",
    "accept": "Shift-A",
    "skip": "Shift-K",
}


@dataclass
class Prepared:
    """Everything an image needs on screen, made in a worker."""

    index: int
    display: np.ndarray
    seg: Segmented
    mask: np.ndarray
    uncertainty: np.ndarray
    regions: list
    fresh: bool  # the network ran now (not read from the session's cache)
    resumed: bool  # the mask came from the saved annotation


@dataclass
class FolderState:
    """What the widget knows: the session, the image on screen, the prepared and unsaved ones,
    the edits and the work running.  ``generation`` grows when a new folder or *Re-segment the
    rest* makes the results in flight stale."""

    session: Session | None = None
    index: int | None = None  # the current image
    shown: Prepared | None = None  # the image on screen, once all its layers are filled
    arrival: Prepared | None = None  # the image whose layers are being filled
    ready: dict[int, Prepared] = field(default_factory=dict)  # prepared (prefetched) images
    jobs: dict[tuple, object] = field(default_factory=dict)  # (generation, index) -> worker
    generation: int = 0
    edits: int = 0  # edits of the image on screen (a tool's result is stale when it changed)
    dirty: bool = False  # the image on screen has edits not written yet
    unsaved: dict[int, tuple] = field(default_factory=dict)  # index -> (mask, FOV) whose save failed
    mode: str | None = None  # 'branch', 'add' or None: what a click on the vessels does
    region: tuple | None = None  # the region *Next uncertain region* shows
    fit_zoom: float = 1.0  # the zoom that fits the whole image
    saves: int = 0  # annotation writes in flight
    workers: dict[str, object] = field(default_factory=dict)  # 'tool', 'csv', 'finetune' -> worker
    warned: str | None = None  # the session-file error already shown

    listed = Signal()
    changed = Signal()
    said = Signal(str)
    arriving = Signal()  # an image's layers are about to be filled
    arrived = Signal(object)  # the Prepared image now on screen
    notified = Signal(str, str)  # kind ('error', 'warning', 'info'), text

    @property
    def busy(self) -> bool:
        """Whether anything runs or waits: a preparation, an arrival, a tool, a save, the CSV, a fine-tune."""
        return bool(self.jobs) or self.arrival is not None or self.saves > 0 or bool(self.workers)

    def say(self, text: str) -> None:
        self.said.emit(text)

    def error(self, text: str) -> None:
        """A failure: a notification and the status line."""
        self.notified.emit("error", text)
        self.said.emit(text)

    def notify(self, kind: str, text: str) -> None:
        self.notified.emit(kind, text)

    def name(self, index: int) -> str:
        return self.session.entries[index].name

    def start(self, session: Session) -> None:
        """A new folder: every result of the last one is stale."""
        self.session, self.index, self.shown, self.arrival = session, None, None, None
        self.generation += 1
        self.ready.clear()
        self.unsaved.clear()
        self.dirty = False

    def warn_write(self) -> None:
        """Say once that the session file could not be written (a full disk): its state is kept
        in memory and written at the next write that succeeds."""
        error = self.session.write_error if self.session is not None else None
        if error and error != self.warned:
            self.notify(
                "warning", f"{error.rstrip('.')}; the session's state is kept in memory until it can be written."
            )
        self.warned = error

    def keep_near(self, index: int) -> None:
        """Forget prepared images far from ``index`` (memory), never one whose save failed."""
        for i in list(self.ready):
            if abs(i - index) > 1 and i not in self.unsaved:
                del self.ready[i]

    def set_worker(self, name: str, worker) -> None:
        """Record the running worker of a kind ('tool', 'csv', 'finetune') and update the buttons."""
        self.workers[name] = worker
        self.changed.emit()

    def worker_done(self, name: str, alive: bool) -> None:
        """The worker of a kind finished; the buttons are updated only while the widget lives
        (a late worker must not touch deleted Qt objects)."""
        self.workers.pop(name, None)
        if alive:
            self.changed.emit()


class ModelCache:
    """Models loaded once per file version, shared by the workers (a lock: two prefetches)."""

    def __init__(self):
        self._models: dict = {}
        self._lock = threading.Lock()

    def get(self, spec: str):
        path = resolve_model_path(spec)
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_model(path, device="cpu")
            return self._models[key]


def prepare_image(session: Session, index: int, job: dict) -> Prepared | str:
    """Worker: read the photograph, segment it (or read the cached map), the uncertainty; a
    sentence on failure, "cancelled" when stopped or stale.  ``job``: models (a ModelCache),
    spec, device, cancel (an Event) and stale (a callable: another folder or re-segmenting)."""
    name = session.image_path(index).name
    try:
        rgb = as_rgb(read_image(session.image_path(index)))
        display = (rgb * 255 + 0.5).astype(np.uint8)
        seg = session.cached_segmentation(index)
        fresh = seg is None or seg.probability.shape != rgb.shape[:2]
        if fresh:
            if job["spec"] is None:
                return "Choose a model first."
            loaded = job["models"].get(job["spec"])
            seg = segment_photo(
                loaded, rgb, device=job["device"], should_stop=job["cancel"].is_set, field_angle=session.field_angle
            )
            if job["stale"]():  # re-segmenting or another folder meanwhile
                return "cancelled"
            with contextlib.suppress(DPNError, OSError):  # a full disk: the map stays in memory
                session.store_probability(index, seg)
        elif not seg.model:  # a cache written before it recorded its model
            seg.model = session.entries[index].model or ""
        mask, resumed = _resumed_mask(session, index, seg)
        u = uncertainty(seg.probability, seg.threshold)
        return Prepared(index, display, seg, mask, u, rank_regions(u, seg.fov, REGION), fresh, resumed)
    except InterruptedError:
        return "cancelled"
    except Exception as exc:  # noqa: BLE001 - a notification, never a traceback
        return f"{name}: {sentence(exc, doing='segmentation')}"


def _resumed_mask(session: Session, index: int, seg: Segmented) -> tuple[np.ndarray, bool]:
    """The saved annotation when the image has one of the map's shape (an untouched map's old
    file is not resumed), else the network's mask; and whether it was resumed."""
    saved = None
    if not session.needs_segmentation(index):
        try:
            saved = session.saved_mask(index)
        except DPNError:
            saved = None
    if saved is not None and saved.shape == seg.probability.shape:
        return saved, True
    return seg.mask(), False
