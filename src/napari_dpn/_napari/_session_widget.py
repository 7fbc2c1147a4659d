"""*Correct a folder*: go through a folder of photographs, correct each map, move on (issue 12).

- A session (``napari_dpn.session.Session``) lists the folder's photographs with their state
  (new / segmented / corrected / saved) and lives in ``.napari-dpn-session.json`` beside the
  annotations: opening the folder again resumes at the image where the user stopped.
- **Next** / **Previous** (Shift+N / Shift+P) autosave the current vessels atomically (asking
  before replacing an annotation file this session did not write), replace the image's layers,
  and show the next one at once: it was segmented in the background (prefetch) meanwhile.
- Tools on the vessels layer, each one undoable step (Ctrl+Z): *Remove this branch* and *Add
  vessel here* (click modes), *Remove specks*.
- An uncertainty layer and **Next uncertain region** (Shift+U) zoom onto the most uncertain
  64x64 region not yet visited.
- **Export CSV…**: per-image state, model, density, FOV diameter, time and metrics.

All heavy work (reading, the network, the tools, saving, the CSV) runs in worker threads.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref

import numpy as np
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
)

from napari_dpn import session as S
from napari_dpn.errors import DPNError

from . import _roles
from ._dock import DockWidget, Section, unstarted_worker, wrapped_label
from ._model_picker import DeviceCombo, ModelPicker
from ._session_loop import LoopMixin
from ._session_tools import ToolsMixin

REGION = 64
KEYS = {"next": "Shift-N", "previous": "Shift-P", "uncertain": "Shift-U"}
META = "napari_dpn_session"


@dataclasses.dataclass
class Prepared:
    """Everything an image needs on screen, made in a worker."""

    index: int
    display: np.ndarray
    seg: S.Segmented
    mask: np.ndarray
    uncertainty: np.ndarray
    regions: list
    fresh: bool  # the network ran now (not read from the session's cache)
    resumed: bool  # the mask came from the saved annotation


class SessionWidget(ToolsMixin, LoopMixin, DockWidget):
    """Dock widget: correct the photographs of a folder one after another."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.session: S.Session | None = None
        self.index: int | None = None
        self.shown: Prepared | None = None
        self.layers: dict = {}
        self._ready: dict[int, Prepared] = {}
        self._jobs: dict[tuple, object] = {}  # (generation, index) -> worker
        self._generation = 0  # a new folder or "Re-segment the rest" makes results in flight stale
        self._tool_worker = None
        self._saves = 0
        self._save_workers: set = set()
        self._csv_worker = None
        self._ft_worker = None
        self._models: dict = {}
        self._arrival: Prepared | None = None
        self._filtered = lambda: None
        self._steps: list = []
        self._model_lock = threading.Lock()
        self.mode: str | None = None
        self.region = None  # the region Next uncertain region shows
        self.edits = 0
        self._fit_zoom = 1.0
        self._start_up()
        self._bind_keys()

    # ------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        self.folder_section = folder = Section("Folder")
        form = QFormLayout(folder.body)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder of photographs")
        browse = QToolButton()
        browse.setText("…")
        browse.clicked.connect(lambda: self._browse(self.folder_edit, "Folder of photographs"))
        row = QHBoxLayout()
        row.addWidget(self.folder_edit)
        row.addWidget(browse)
        form.addRow("Photos", row)
        self.notes_edit = QLineEdit()
        self.notes_edit.setPlaceholderText("beside the photographs")
        self.notes_edit.setToolTip(
            "Where the <image>_vessels.png annotations and the session file go (default: beside the photographs)."
        )
        browse2 = QToolButton()
        browse2.setText("…")
        browse2.clicked.connect(lambda: self._browse(self.notes_edit, "Folder for annotations"))
        row2 = QHBoxLayout()
        row2.addWidget(self.notes_edit)
        row2.addWidget(browse2)
        form.addRow("Annotations", row2)
        self.model_picker = ModelPicker("The model that segments images not segmented yet.")
        form.addRow("Model", self.model_picker)
        self.device_combo = DeviceCombo("Where the network runs.")
        form.addRow("Device", self.device_combo)
        self.open_button = QPushButton("Open folder")
        self.open_button.setToolTip("Start, or resume, the session of this folder.")
        self.open_button.clicked.connect(self.open_clicked)
        form.addRow(self.open_button)
        outer.addWidget(folder)

        self.list = QListWidget()
        self.list.setMaximumHeight(160)
        self.list.itemActivated.connect(lambda item: self.go(self.list.row(item)))
        self.list.itemDoubleClicked.connect(lambda item: self.go(self.list.row(item)))
        outer.addWidget(self.list)
        nav = QHBoxLayout()
        self.prev_button = QPushButton("◀ Previous")
        self.prev_button.setToolTip(f"Save and go to the previous image ({KEYS['previous']}).")
        self.next_button = QPushButton("Next ▶")
        self.next_button.setToolTip(f"Save and go to the next image ({KEYS['next']}).")
        self.done_label = QLabel("")
        nav.addWidget(self.prev_button)
        nav.addWidget(self.done_label)
        nav.addWidget(self.next_button)
        self.prev_button.clicked.connect(self.previous)
        self.next_button.clicked.connect(self.next)
        outer.addLayout(nav)

        tools = QFormLayout()
        self.branch_button = QPushButton("Remove this branch")
        self.branch_button.setCheckable(True)
        self.branch_button.setToolTip(
            "Click a false branch: it is cut at the nearest junctions "
            "of the skeleton and removed (not the whole tree). Ctrl+Z undoes."
        )
        self.add_button = QPushButton("Add vessel here")
        self.add_button.setCheckable(True)
        self.add_button.setToolTip(
            "Click a missed vessel: the connected region of probability "
            ">= 'low' around the click is added; drag along it: the path "
            "along the ridge of the probability map is added. Ctrl+Z undoes."
        )
        self.branch_button.toggled.connect(lambda on: self.set_mode("branch" if on else None))
        self.add_button.toggled.connect(lambda on: self.set_mode("add" if on else None))
        row3 = QHBoxLayout()
        row3.addWidget(self.branch_button)
        row3.addWidget(self.add_button)
        tools.addRow(row3)
        self.low_spin = QDoubleSpinBox()
        self.low_spin.setRange(0.01, 0.99)
        self.low_spin.setSingleStep(0.05)
        self.low_spin.setValue(0.3)
        self.low_spin.setToolTip("Hysteresis threshold of 'Add vessel here'.")
        tools.addRow("Low threshold", self.low_spin)
        self.speck_spin = QSpinBox()
        self.speck_spin.setRange(2, 100_000)
        self.speck_spin.setValue(30)
        self.speck_button = QPushButton("Remove specks")
        self.speck_button.setToolTip("Erase vessel pieces smaller than this many pixels (one undo step).")
        self.speck_button.clicked.connect(self.remove_specks)
        row4 = QHBoxLayout()
        row4.addWidget(self.speck_spin)
        row4.addWidget(self.speck_button)
        tools.addRow("Specks <", row4)
        self.local_spin = QDoubleSpinBox()
        self.local_spin.setRange(0.01, 0.99)
        self.local_spin.setSingleStep(0.05)
        self.local_spin.setValue(0.5)
        self.local_spin.setToolTip("A threshold for the region on screen only (a hazy area).")
        self.local_button = QPushButton("Threshold this region")
        self.local_button.setToolTip(
            "Inside the region shown by 'Next uncertain region' only: "
            "vessel = probability >= this threshold. Ctrl+Z undoes."
        )
        self.local_button.clicked.connect(self.threshold_region)
        row6 = QHBoxLayout()
        row6.addWidget(self.local_spin)
        row6.addWidget(self.local_button)
        tools.addRow("Local", row6)
        self.uncertain_button = QPushButton("Next uncertain region")
        self.uncertain_button.setToolTip(
            f"Zoom onto the most uncertain 64x64 region not yet visited ({KEYS['uncertain']})."
        )
        self.uncertain_button.clicked.connect(self.next_uncertain)
        self.csv_button = QPushButton("Export CSV…")
        self.csv_button.setToolTip(
            "Per-image state, model, density, FOV diameter, time, and Se/Sp/Acc/AUC/F1 where a ground truth is known."
        )
        self.csv_button.clicked.connect(self.export_clicked)
        self.outline_check = QCheckBox("Outline")
        self.outline_check.setToolTip(
            "Show the vessels as outlines (contours) instead of filled, to see the photograph under them."
        )
        self.outline_check.toggled.connect(self._on_outline)
        row4.addWidget(self.outline_check)
        row5 = QHBoxLayout()
        row5.addWidget(self.uncertain_button)
        row5.addWidget(self.csv_button)
        tools.addRow(row5)
        outer.addLayout(tools)

        loop = QHBoxLayout()
        self.ft_steps = QSpinBox()
        self.ft_steps.setRange(1, 100_000)
        self.ft_steps.setValue(200)
        self.ft_steps.setToolTip("Fine-tuning steps.")
        self.ft_button = QPushButton("Fine-tune on saved")
        self.ft_button.setToolTip(
            "Fine-tune the chosen model on the images saved so far, in the "
            "background; the new model is saved with its card and selected."
        )
        self.ft_button.clicked.connect(self.finetune)
        self.reseg_button = QPushButton("Re-segment the rest")
        self.reseg_button.setToolTip("Segment the images nobody corrected or saved again, with the chosen model.")
        self.reseg_button.clicked.connect(self.resegment_rest)
        loop.addWidget(self.ft_steps)
        loop.addWidget(self.ft_button)
        loop.addWidget(self.reseg_button)
        outer.addLayout(loop)
        self.status = wrapped_label()
        outer.addWidget(self.status)
        outer.addStretch(1)
        self._sync()

    def _browse(self, edit: QLineEdit, title: str) -> None:
        folder = self._ask_folder(title)
        if folder is not None:
            edit.setText(str(folder))

    def _bind_keys(self) -> None:
        for key, func in (
            (KEYS["next"], lambda v: self.next()),
            (KEYS["previous"], lambda v: self.previous()),
            (KEYS["uncertain"], lambda v: self.next_uncertain()),
        ):
            self.viewer.bind_key(key, func, overwrite=True)

    def _unbind_keys(self) -> None:
        for key in KEYS.values():
            try:
                self.viewer.bind_key(key, None)
            except (KeyError, ValueError, TypeError):
                pass

    def refresh_layers(self) -> None:
        """The viewer's layers changed: forget our layers that were deleted (a deleted vessels
        layer with corrections is saved first: closing napari deletes every layer)."""
        for kind, layer in list(self.layers.items()):
            if layer not in self.viewer.layers:
                if kind == "vessels":
                    self.save_now(layer)
                    self.shown = None
                del self.layers[kind]

    def _sync(self) -> None:
        has = self.session is not None
        shown = self.shown is not None and "vessels" in self.layers
        self.prev_button.setEnabled(has and bool(self.index))
        self.next_button.setEnabled(has and self.index is not None and self.index < len(self.session) - 1)
        for w in (self.branch_button, self.add_button, self.speck_button, self.uncertain_button):
            w.setEnabled(shown)
        self.local_button.setEnabled(shown and self.region is not None)
        self.csv_button.setEnabled(has)
        self.ft_button.setEnabled(has and self._ft_worker is None)
        self.reseg_button.setEnabled(has and self._ft_worker is None)
        if has:
            self.done_label.setText(f"done {self.session.done}/{len(self.session)}")

    def _refresh_list(self) -> None:
        if self.session is None:
            return
        texts = [f"{e.name} — {e.state}" for e in self.session.entries]
        if self.list.count() != len(texts):
            self.list.clear()
            self.list.addItems(texts)
        else:
            for i, t in enumerate(texts):
                if self.list.item(i).text() != t:
                    self.list.item(i).setText(t)
        if self.index is not None:
            self.list.setCurrentRow(self.index)
        self._sync()

    def _say(self, text: str) -> None:
        self.status.setText(text)

    def _error(self, text: str) -> None:
        """A failure: a napari notification and the status line."""
        show_error(text)
        self._say(text)

    # ------------------------------------------------------------------ the session

    def open_clicked(self, *_) -> bool:
        return self.open_folder(self.folder_edit.text().strip(), self.notes_edit.text().strip() or None)

    def open_folder(self, folder, annotations=None) -> bool:
        """Start or resume the session of ``folder``; shows its current image."""
        if not folder:
            show_warning("Choose a folder of photographs first.")
            return False
        self.save_current(ask=False)
        try:
            session = S.Session.open(folder, annotations)
        except DPNError as exc:
            self._error(str(exc))
            return False
        self._clear_layers()
        self.session, self.index, self.shown, self._arrival = session, None, None, None
        self._generation += 1
        self._ready.clear()
        self.folder_edit.setText(str(session.folder))
        if annotations:
            self.notes_edit.setText(str(session.annotations))
        self._refresh_list()
        resumed = any(e.state != "new" for e in session.entries)
        self._say(
            ("Resumed" if resumed else "Started") + f" the session of {session.folder.name}: "
            f"{len(session)} photograph(s), {session.done} done."
        )
        self.go(session.current)
        return True

    def _spec(self) -> str | None:
        data = self.model_picker.combo.currentData()
        return data[1] if isinstance(data, tuple) else None

    def _load(self, spec: str):
        from napari_dpn.models import load_model, resolve_model_path

        path = resolve_model_path(spec)
        key = (str(path), path.stat().st_mtime_ns)
        with self._model_lock:
            if key not in self._models:
                self._models[key] = load_model(path, device="cpu")
            return self._models[key]

    def _prepare(self, session: S.Session, index: int, spec, device, cancel, gen: int = 0) -> Prepared | str:
        """Worker: read the photograph, segment it (or read the cached map), the uncertainty."""
        try:
            from napari_dpn.image_io import as_rgb, read_image

            data = read_image(session.image_path(index))
            rgb = as_rgb(data)
            display = (rgb * 255 + 0.5).astype(np.uint8)
            cached = session.cached(index)
            fresh = cached is None or cached[0].shape != rgb.shape[:2]
            if fresh:
                if spec is None:
                    return "Choose a model first."
                seg = S.segment_photo(self._load(spec), rgb, device=device, should_stop=cancel.is_set)
                if gen != self._generation:  # re-segmenting or another folder meanwhile
                    return "cancelled"
                session.store_probability(index, seg)
            else:
                prob, fov, t = cached
                seg = S.Segmented(prob, fov, t, session.entries[index].model or "", 0.0)
            mask, resumed = None, False
            try:
                saved = session.saved_mask(index)
            except DPNError:
                saved = None
            if saved is not None and saved.shape == seg.probability.shape:
                mask, resumed = saved, True
            if mask is None:
                mask = seg.mask()
            u = S.uncertainty(seg.probability, seg.threshold)
            regions = S.rank_regions(u, seg.fov, REGION)
            return Prepared(index, display, seg, mask, u, regions, fresh, resumed)
        except InterruptedError:
            return "cancelled"
        except DPNError as exc:
            return f"{session.image_path(index).name}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a notification, never a traceback
            return f"{session.image_path(index).name} could not be segmented ({type(exc).__name__}: {exc})."

    def _request(self, index: int) -> None:
        """Start preparing an image in the background unless it is ready or on its way."""
        if (
            self.session is None
            or not 0 <= index < len(self.session)
            or index in self._ready
            or (self._generation, index) in self._jobs
        ):
            return
        gen = self._generation
        worker = unstarted_worker(
            self._prepare,
            self.session,
            index,
            self._spec(),
            self.device_combo.currentText() or "auto",
            self._life.cancel,
            gen,
        )
        session = self.session
        worker.returned.connect(lambda out, i=index, s=session, g=gen: self._on_prepared(s, i, out, g))
        key = (gen, index)
        worker.finished.connect(lambda k=key: self._jobs.pop(k, None))
        self._jobs[key] = worker
        worker.start()

    @property
    def busy(self) -> bool:
        return (
            bool(self._jobs)
            or self._arrival is not None
            or self._tool_worker is not None
            or self._saves > 0
            or self._csv_worker is not None
            or self._ft_worker is not None
        )

    def _on_prepared(self, session, index: int, out, gen: int) -> None:
        self._jobs.pop((gen, index), None)
        if not self.alive or session is not self.session or gen != self._generation:
            return
        if isinstance(out, str):
            if out != "cancelled":
                self._error(out)
            return
        if out.fresh:
            session.note_segmentation(index, out.seg)
        self._ready[index] = out
        self._refresh_list()
        if index == self.index and self.shown is None and self._arrival is None:
            self._show(out)

    def _clear_layers(self) -> None:
        self.edits = 0  # saved (or declined) before: removing the layer must not save it again
        for layer in list(self.layers.values()):
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = {}

    def _show(self, prep: Prepared) -> None:
        """Put this image's data into the session's layers.

        The three layers are made once and then reused: napari's layer removal runs a full
        garbage collection (0.6 s each) and a new layer builds its visual, so replacing layers
        would freeze the viewer on every Next.  One layer is updated per 10 ms timer tick."""
        self.set_mode(None)
        self.shown = None
        self._arrival = prep
        name = self.session.image_path(prep.index).stem
        meta = {META: True, "image": name}
        have = all(
            k in self.layers and self.layers[k] in self.viewer.layers for k in ("image", "uncertainty", "vessels")
        )

        def image():
            if have:
                layer = self.layers["image"]
                layer.data = prep.display
                layer.name, layer.metadata = name, dict(meta)
            else:
                self._clear_layers()
                self.layers["image"] = self.viewer.add_image(prep.display, name=name, rgb=True, metadata=dict(meta))

        def uncertainty():
            if have:
                layer = self.layers["uncertainty"]
                layer.data = prep.uncertainty
                layer.name, layer.metadata = f"{name} uncertainty", dict(meta)
            else:
                self.layers["uncertainty"] = self.viewer.add_image(
                    prep.uncertainty,
                    name=f"{name} uncertainty",
                    colormap="inferno",
                    opacity=0.35,
                    blending="additive",
                    contrast_limits=(0, 1),
                    metadata=dict(meta),
                )

        def vessels():
            data = prep.mask.astype(np.uint8)
            if have:
                layer = self.layers["vessels"]
                layer.events.paint.disconnect(self._on_paint)
                layer.data = data
                layer.editable = True
                layer._reset_history()  # Ctrl+Z must not bring back the previous image's pixels
                layer.name, layer.metadata = f"{name} vessels", dict(meta)
                layer.events.paint.connect(self._on_paint)
            else:
                layer = self.viewer.add_labels(
                    data, name=f"{name} vessels", metadata=dict(meta), **_roles.style("vessels")
                )
                layer.events.paint.connect(self._on_paint)
                layer.mouse_drag_callbacks.append(self._on_click)
                self.layers["vessels"] = layer
            layer.contour = 1 if self.outline_check.isChecked() else 0
            self.viewer.layers.selection.active = layer

        def finish():
            self.viewer.reset_view()
            self._fit_zoom = float(self.viewer.camera.zoom)
            self.shown, self.edits, self._arrival, self.region = prep, 0, None, None
            self.low_spin.setValue(round(max(0.05, prep.seg.threshold / 2), 2))
            e = self.session.entries[prep.index]
            self._say(
                f"{e.name} ({e.state})"
                + (", resumed from its saved annotation" if prep.resumed else "")
                + (f"; first map by {e.model}" if e.model else "")
                + "."
            )
            self._sync()
            for i in list(self._ready):
                if abs(i - prep.index) > 1:
                    del self._ready[i]
            self._request(prep.index + 1)

        self._steps = [image, uncertainty, vessels, finish]
        self._next_step(prep)

    def _next_step(self, prep) -> None:
        if not self.alive or self._arrival is not prep or not self._steps:
            return
        self._steps.pop(0)()
        if self._steps:
            QTimer.singleShot(10, lambda: self._next_step(prep))

    def go(self, index: int) -> bool:
        """Save the current image and show image ``index`` (at once when it was prefetched)."""
        if self.session is None or not 0 <= index < len(self.session):
            return False
        if index == self.index and self.shown is not None:
            return True
        if self.shown is not None and "vessels" in self.layers:  # coming back shows the edits
            self.shown.mask = np.asarray(self.layers["vessels"].data) > 0
        self.save_current()
        self.index = self.session.go(index)
        self._refresh_list()
        prep = self._ready.get(index)
        if prep is not None:
            self._show(prep)
        else:
            self.shown, self._arrival = None, None  # the old image stays until the new one comes
            if "vessels" in self.layers:  # ...but takes no more edits (they would be lost)
                self.layers["vessels"].editable = False
            self._say(f"Segmenting {self.session.entries[index].name}…")
            self._request(index)
        self._sync()
        return True

    def next(self, *_) -> bool:
        return self.index is not None and self.go(self.index + 1)

    def previous(self, *_) -> bool:
        return self.index is not None and self.go(self.index - 1)

    # ------------------------------------------------------------------ saving

    def save_current(self, ask: bool = True) -> bool:
        """Write the shown image's vessels (a worker does it); asks before replacing a file this
        session did not write (without ``ask``, such a file is left alone)."""
        prep, vessels = self.shown, self.layers.get("vessels")
        if self.session is None or prep is None or vessels is None:
            return False
        index, session = prep.index, self.session
        entry = session.entries[index]
        if entry.state == "saved" and self.edits == 0:
            return False  # nothing new
        conflict = session.conflict(index)
        if conflict is not None:
            if not ask or not self._confirm(
                "Replace annotation?",
                f"{conflict.name} in {conflict.parent} was not written "
                "by this session. Replace it with your corrections?",
                ok="Replace",
            ):
                self._say(f"{entry.name} was not saved: {conflict.name} was kept as it is.")
                return False
        mask = np.asarray(vessels.data) > 0
        fov = prep.seg.fov
        worker = unstarted_worker(self._save, session, index, mask, fov)  # the session's lock orders saves
        worker.returned.connect(lambda out, s=session: self._on_saved(s, out))
        worker.finished.connect(self._on_save_finished)
        self._saves += 1
        self._save_workers.add(worker)
        worker.start()
        return True

    @staticmethod
    def _save(session, index, mask, fov):
        try:
            return session.save(index, mask, fov, overwrite=True)
        except DPNError as exc:
            return str(exc)
        except OSError as exc:
            return f"Cannot save: {exc.strerror or exc}."

    def _on_saved(self, session, out) -> None:
        if not self.alive or session is not self.session:
            return
        if isinstance(out, str):
            self._error(out)
        self._refresh_list()

    def _on_save_finished(self) -> None:
        self._saves -= 1
        self._save_workers = {w for w in self._save_workers if not w.is_running}

    def save_now(self, vessels=None) -> bool:
        """Closing: write the current corrections synchronously, never over someone else's file."""
        if not self.alive or self.shown is None or not self.edits or self.session is None:
            return False
        try:
            vessels = vessels if vessels is not None else self.layers["vessels"]
            if self.session.conflict(self.shown.index) is None:
                self.session.save(self.shown.index, np.asarray(vessels.data) > 0, self.shown.seg.fov)
                self.edits = 0
                return True
        except (DPNError, OSError, KeyError):
            pass
        return False

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._watch_window()

    def event(self, ev) -> bool:
        if ev.type() == QEvent.ParentChange and self.parent() is not None:
            QTimer.singleShot(0, self._watch_window)
        return super().event(ev)

    def _watch_window(self) -> None:
        """Hear napari's main window close, to keep the corrections on screen."""
        from qtpy.QtWidgets import QMainWindow

        from ._dock import ancestor

        if not self.alive:
            return
        window = ancestor(self, QMainWindow)
        if window is not None and window is not self._filtered():
            window.installEventFilter(self)
            self._filtered = weakref.ref(window)  # a strong one would keep the window alive

    def eventFilter(self, obj, ev) -> bool:
        if ev.type() == QEvent.Close and obj is self._filtered():
            self.save_now()  # closing napari keeps the corrections of the image on screen
        return False

    def shutdown(self) -> None:
        self.save_now()
        self._unbind_keys()
        super().shutdown()

    def cancel(self, *_) -> None:
        self._life.cancel.set()
