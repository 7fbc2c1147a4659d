"""*Correct a folder*: go through a folder of photographs, correct each map, move on (issue 12).

- A session (``napari_dpn.session.Session``) lists the folder's photographs with their state
  (new / segmented / corrected / saved / accepted / skipped) and lives in
  ``.napari-dpn-session.json`` beside the annotations: opening the folder again resumes at the
  image where the user stopped, with the folder's field of view.
- Moving on is not approval (issue 20): **Next** / **Previous** (Shift+N / Shift+P) autosave the
  vessels only when they were edited (asking before replacing an annotation file this session did
  not write); an untouched image stays "segmented".  **Accept as is** (Shift+A) makes the
  network's map the annotation, **Skip** (Shift+K) leaves the image out, **Save** (Shift+S)
  writes the corrections now.  The next image was segmented in the background (prefetch), so it
  appears at once; one that was not shows a busy bar, the old image hidden.
- A full disk loses nothing: Next stays on the image and says so; closing napari with unsaved
  corrections that cannot be written keeps the window open and offers another folder.
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
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
)

from napari_dpn import session as S
from napari_dpn.errors import DPNError
from napari_dpn.scale import COMMON_FIELD_ANGLES

from . import _roles
from ._dock import DockWidget, Section, unstarted_worker, wrapped_label
from ._model_picker import DeviceCombo, ModelPicker
from ._session_loop import LoopMixin
from ._session_tools import ToolsMixin

REGION = 64
KEYS = {
    "next": "Shift-N",
    "previous": "Shift-P",
    "uncertain": "Shift-U",
    "save": "Shift-S",
    "accept": "Shift-A",
    "skip": "Shift-K",
}
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
        self.dirty = False  # the image on screen has edits not written yet
        self._unsaved: dict[int, tuple] = {}  # index -> (mask, FOV) whose save failed: kept in memory
        self._warned: str | None = None  # the session-file error already shown
        self._hidden: dict = {}  # layer kind -> visibility, while the next image is being prepared
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
        self.field_combo = QComboBox()
        self.field_combo.addItem("estimate (45° if unknown)", None)
        for angle in COMMON_FIELD_ANGLES:
            self.field_combo.addItem(f"{angle:g}°", float(angle))
        self.field_combo.addItem("native scale (no resampling)", "native")
        self.field_combo.setToolTip(
            "The camera's field of view, as in the Segment widget: each photograph is resampled to the "
            "scale the model was trained at (pixels per degree = FOV diameter / this angle) and the map "
            "back. Remembered for this folder; changing it segments the images nobody corrected, "
            "accepted or skipped again."
        )
        self.field_combo.currentIndexChanged.connect(self._on_field_changed)
        form.addRow("Field of view", self.field_combo)
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
        review = QHBoxLayout()
        self.save_button = QPushButton("Save")
        self.save_button.setToolTip(f"Save this image's corrections now ({KEYS['save']}).")
        self.save_button.clicked.connect(self.save_clicked)
        self.accept_button = QPushButton("Accept as is")
        self.accept_button.setToolTip(
            f"The network's map is right: save it as this image's annotation (a correction, used for "
            f"fine-tuning) and go to the next image ({KEYS['accept']}). Moving on alone approves nothing."
        )
        self.accept_button.clicked.connect(self.accept_clicked)
        self.skip_button = QPushButton("Skip")
        self.skip_button.setToolTip(
            f"Leave this image out: not a correction, not used for fine-tuning, not segmented again; "
            f"go to the next image ({KEYS['skip']})."
        )
        self.skip_button.clicked.connect(self.skip_clicked)
        review.addWidget(self.save_button)
        review.addWidget(self.accept_button)
        review.addWidget(self.skip_button)
        outer.addLayout(review)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy: the image being segmented
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(8)
        self.progress.setVisible(False)
        outer.addWidget(self.progress)

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
            (KEYS["save"], lambda v: self.save_clicked()),
            (KEYS["accept"], lambda v: self.accept_clicked()),
            (KEYS["skip"], lambda v: self.skip_clicked()),
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
                    error = self._save_sync(layer)
                    if error is not None:  # the layer is gone already: offer another folder
                        show_error(error)
                        self._rescue(error, layer, can_keep_open=False)
                    self.shown = None
                del self.layers[kind]

    def _sync(self) -> None:
        has = self.session is not None
        shown = self.shown is not None and "vessels" in self.layers
        self.prev_button.setEnabled(has and bool(self.index))
        self.next_button.setEnabled(has and self.index is not None and self.index < len(self.session) - 1)
        for w in (
            self.branch_button,
            self.add_button,
            self.speck_button,
            self.uncertain_button,
            self.save_button,
            self.accept_button,
            self.skip_button,
        ):
            w.setEnabled(shown)
        self.local_button.setEnabled(shown and self.region is not None)
        self.csv_button.setEnabled(has)
        self.ft_button.setEnabled(has and self._ft_worker is None)
        self.reseg_button.setEnabled(has and self._ft_worker is None)
        if has:
            counts = self.session.counts()
            skipped = f" · {counts['skipped']} skipped" if counts["skipped"] else ""
            self.done_label.setText(f"done {self.session.done}/{len(self.session)}{skipped}")
            self.done_label.setToolTip(
                ", ".join(f"{n} {S.LABELS[state]}" for state, n in counts.items() if n)
                + ". Done: corrected and saved, accepted as is, or skipped; moving on approves nothing."
            )

    def _refresh_list(self) -> None:
        if self.session is None:
            return
        texts = [f"{e.name} — {self.session.label(i)}" for i, e in enumerate(self.session.entries)]
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

    def _warn_write(self) -> None:
        """Say once that the session file could not be written (a full disk): its state is kept
        in memory and written at the next write that succeeds."""
        error = self.session.write_error if self.session is not None else None
        if error and error != self._warned:
            show_warning(f"{error.rstrip('.')}; the session's state is kept in memory until it can be written.")
        self._warned = error

    # ------------------------------------------------------------------ the session

    def open_clicked(self, *_) -> bool:
        return self.open_folder(self.folder_edit.text().strip(), self.notes_edit.text().strip() or None)

    def open_folder(self, folder, annotations=None) -> bool:
        """Start or resume the session of ``folder``; shows its current image."""
        if not folder:
            show_warning("Choose a folder of photographs first.")
            return False
        if self.dirty:
            self.save_current(ask=False)
        try:
            try:
                session = S.Session.open(folder, annotations)
            except S.SessionDamaged as exc:
                if not self._confirm(
                    "Damaged session file",
                    f"{exc} Start a new session of this folder? The damaged file is kept beside it "
                    "(renamed .damaged-<time>.json); your annotation files are not touched.",
                    ok="Start afresh",
                ):
                    self._say(str(exc))
                    return False
                session = S.Session.open(folder, annotations, start_afresh=True)
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
        self._unsaved.clear()
        self.dirty = False
        self._set_field_combo(session.field_angle)
        self._refresh_list()
        resumed = any(e.state != "new" for e in session.entries)
        self._say(
            ("Resumed" if resumed else "Started") + f" the session of {session.folder.name}: "
            f"{len(session)} photograph(s), {session.done} done."
            + (f" The damaged session file was kept as {session.backup.name}." if session.backup else "")
        )
        if session.backup is not None:
            show_warning(
                f"Started a new session of {session.folder.name}; the damaged session file is kept as {session.backup}."
            )
        self.go(session.current)
        self._warn_write()
        return True

    def _set_field_combo(self, angle) -> None:
        i = self.field_combo.findData(angle)
        if i < 0 and isinstance(angle, (int, float)):
            self.field_combo.addItem(f"{angle:g}°", float(angle))
            i = self.field_combo.count() - 1
        self.field_combo.blockSignals(True)
        self.field_combo.setCurrentIndex(max(i, 0))
        self.field_combo.blockSignals(False)

    def _on_field_changed(self, *_) -> None:
        """A new field of view for this folder: remembered in the session file, and the images
        nobody corrected, accepted or skipped are segmented again with it."""
        if self.session is None:
            return
        angle = self.field_combo.currentData()
        if angle == self.session.field_angle:
            return
        self.session.field_angle = angle
        n = self.resegment_rest()  # persists the session too
        if self.shown is None and self.index is not None:  # the image on screen is segmented again
            self._wait_for(self.index)
        self._say(
            f"Field of view {self.field_combo.currentText()} for {self.session.folder.name}; "
            f"{n} image(s) nobody corrected, accepted or skipped are segmented again with it."
        )
        self._warn_write()

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
            seg = session.cached_segmentation(index)
            fresh = seg is None or seg.probability.shape != rgb.shape[:2]
            if fresh:
                if spec is None:
                    return "Choose a model first."
                seg = S.segment_photo(
                    self._load(spec), rgb, device=device, should_stop=cancel.is_set, field_angle=session.field_angle
                )
                if gen != self._generation:  # re-segmenting or another folder meanwhile
                    return "cancelled"
                try:
                    session.store_probability(index, seg)
                except (DPNError, OSError):
                    pass  # a full disk: the map stays in memory; it is made again next time
            elif not seg.model:  # a cache written before it recorded its model
                seg.model = session.entries[index].model or ""
            mask, resumed = None, False
            saved = None
            if not session.needs_segmentation(index):  # an untouched map's old file is not resumed
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
                if index == self.index:
                    self.progress.setVisible(False)
                self._error(out)
            return
        if out.fresh or session.entries[index].model is None:  # a prefetch that never arrived
            session.note_segmentation(index, out.seg)
            self._warn_write()
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

        def unhide(kind):  # each layer shows again with its new data, not before
            visible = self._hidden.pop(kind, None)
            if visible is not None and kind in self.layers:
                self.layers[kind].visible = visible

        def image():
            unhide("image")
            if have:
                layer = self.layers["image"]
                layer.data = prep.display
                layer.name, layer.metadata = name, dict(meta)
            else:
                self._clear_layers()
                self.layers["image"] = self.viewer.add_image(prep.display, name=name, rgb=True, metadata=dict(meta))

        def uncertainty():
            unhide("uncertainty")
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
            unhide("vessels")
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
            self.dirty = prep.index in self._unsaved  # a failed save: still to be written
            self.progress.setVisible(False)
            self.low_spin.setValue(round(max(0.05, prep.seg.threshold / 2), 2))
            e = self.session.entries[prep.index]
            scale = prep.seg.scale_note or e.scale_note
            self._say(
                f"{e.name} ({self.session.label(prep.index)})"
                + (", resumed from its saved annotation" if prep.resumed else "")
                + (f"; first map by {e.model}" if e.model else "")
                + (f"; {scale}" if scale else "")
                + ("; its corrections are NOT saved yet" if self.dirty else "")
                + "."
            )
            self._sync()
            for i in list(self._ready):
                if abs(i - prep.index) > 1 and i not in self._unsaved:
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
        """Leave the current image (its edits saved; an untouched map is not approved) and show
        image ``index`` (at once when it was prefetched).  False, staying on the image with its
        corrections, when they cannot be saved (a full disk)."""
        if self.session is None or not 0 <= index < len(self.session):
            return False
        if index == self.index and self.shown is not None:
            return True
        if self.shown is not None and "vessels" in self.layers:  # coming back shows the edits
            self.shown.mask = np.asarray(self.layers["vessels"].data) > 0
            if self.dirty and not self.session.room_to_save(self.shown.index, self.shown.mask.shape):
                self._error(
                    f"Cannot save the corrections of {self.session.entries[self.shown.index].name}: the disk "
                    f"holding {self.session.annotations} is full; you stay on this image and nothing is lost "
                    "(free some space, or press Save to choose another folder)."
                )
                return False
        if self.dirty:
            self.save_current()
        self.index = self.session.go(index)
        self._refresh_list()
        prep = self._ready.get(index)
        if prep is not None:
            self._show(prep)
        else:
            self._wait_for(index)
            self._request(index)
        self._sync()
        self._warn_write()
        return True

    def _wait_for(self, index: int) -> None:
        """The image to show is being segmented: the old one must not pass for it (hidden, takes
        no more edits), a busy bar and the status say what is going on."""
        self.shown, self._arrival = None, None
        if "vessels" in self.layers:
            self.layers["vessels"].editable = False
        for kind, layer in self.layers.items():
            if layer in self.viewer.layers:
                self._hidden.setdefault(kind, layer.visible)
                layer.visible = False
        self.progress.setVisible(True)
        self._say(f"Segmenting {self.session.entries[index].name} (image {index + 1} of {len(self.session)})…")

    def next(self, *_) -> bool:
        return self.index is not None and self.go(self.index + 1)

    def previous(self, *_) -> bool:
        return self.index is not None and self.go(self.index - 1)

    # ------------------------------------------------------------------ saving

    def save_current(self, ask: bool = True, state: str = "saved") -> bool:
        """Write the shown image's vessels (a worker does it): its corrections (``state``
        "saved"), or the map accepted as is ("accepted"); asks before replacing a file this
        session did not write (without ``ask``, such a file is left alone).  An edited map that
        ends up exactly as the network made it is not a correction and is not written."""
        prep, vessels = self.shown, self.layers.get("vessels")
        if self.session is None or prep is None or vessels is None:
            return False
        index, session = prep.index, self.session
        entry = session.entries[index]
        if state == "saved" and not self.dirty:
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
        # An edit of a network map (not of a resumed annotation) may have been undone to the map.
        reference = prep.seg if state == "saved" and not prep.resumed else None
        worker = unstarted_worker(self._save, session, index, mask, fov, state, reference)
        worker.returned.connect(lambda out, s=session, i=index, m=mask, f=fov: self._on_saved(s, out, i, m, f))
        worker.finished.connect(self._on_save_finished)
        self._saves += 1
        self._save_workers.add(worker)
        self.dirty = False  # the worker has these corrections; a failure gives them back
        worker.start()
        return True

    @staticmethod
    def _save(session, index, mask, fov, state="saved", reference=None):
        """Worker: write the annotation (the session's save lock orders saves); None when the
        "corrections" are exactly the network's map (not a correction: nothing written)."""
        try:
            if reference is not None and np.array_equal(mask, reference.mask()):
                session.unmark_corrected(index)
                return None
            return session.save(index, mask, fov, overwrite=True, state=state)
        except DPNError as exc:
            return str(exc)
        except OSError as exc:
            from napari_dpn.image_io import os_error_message

            return os_error_message(exc, session.vessels_path(index))

    def _on_saved(self, session, out, index=None, mask=None, fov=None) -> None:
        if not self.alive or session is not self.session:
            return
        if isinstance(out, str):
            if index is not None:  # keep the corrections and go back to them: nothing is lost
                self._unsaved[index] = (mask, fov)
                self._error(f"{out} The corrections of {session.entries[index].name} are kept; it is shown again.")
                if self.index == index and self.shown is not None:
                    self.dirty = True
                else:
                    if index in self._ready:
                        self._ready[index].mask = mask
                    self.go(index)
            else:
                self._error(out)
        elif index is not None:
            self._unsaved.pop(index, None)
            if out is not None and index == self.index:
                self._say(f"Saved {Path(out).name} ({session.label(index)}).")
        self._warn_write()
        self._refresh_list()

    # ------------------------------------------------------------------ review: save, accept, skip

    def save_clicked(self, *_) -> bool:
        """Save the image's corrections now; an untouched map is not saved (that is *Accept as is*)."""
        prep = self.shown
        if self.session is None or prep is None or "vessels" not in self.layers:
            return False
        entry = self.session.entries[prep.index]
        if not self.dirty:
            self._say(
                f"{entry.name} is saved already."
                if self.session.is_correction(prep.index)
                else f"{entry.name} has no corrections to save; 'Accept as is' keeps the network's map as its annotation."
            )
            return False
        mask = np.asarray(self.layers["vessels"].data) > 0
        if not self.session.room_to_save(prep.index, mask.shape):
            reason = (
                f"Cannot save the corrections of {entry.name}: the disk holding {self.session.annotations} is full."
            )
            self._error(reason)
            if not self._confirm(
                "The disk is full",
                f"{reason} Save a copy to another folder? The corrections stay on screen, to be saved "
                "here as well once there is room.",
                ok="Choose a folder…",
            ):
                return False
            error = self._save_elsewhere(mask)
            if error is not None:
                self._error(error)
            return error is None
        return self.save_current()

    def accept_clicked(self, *_) -> bool:
        """The map on screen is right as it is: write it as the annotation (a correction) and go
        to the next image.  With edits, it is saved as a correction the same way."""
        prep = self.shown
        if self.session is None or prep is None or "vessels" not in self.layers:
            return False
        name = self.session.entries[prep.index].name
        mask = np.asarray(self.layers["vessels"].data) > 0
        if not self.session.room_to_save(prep.index, mask.shape):
            self._error(f"Cannot save {name}: the disk holding {self.session.annotations} is full; nothing changed.")
            return False
        if self.dirty:
            started = self.save_current()
        elif self.session.is_correction(prep.index):
            started = True  # accepted or saved already: nothing to write
        else:
            started = self.save_current(state="accepted")
        if started and prep.index + 1 < len(self.session):
            self.go(prep.index + 1)
        return started

    def skip_clicked(self, *_) -> bool:
        """Leave the image out (not a correction, not segmented again) and go to the next one."""
        prep = self.shown
        if self.session is None or prep is None:
            return False
        name = self.session.entries[prep.index].name
        if self.dirty and not self._confirm(
            "Skip this image?", f"{name} has corrections that are not saved. Skip it without saving them?", ok="Skip"
        ):
            return False
        if self.dirty:  # the edits are dropped: coming back shows the map (or file), not them
            self.layers["vessels"].data = prep.mask.astype(np.uint8)
            self.layers["vessels"]._reset_history()
        self.dirty = False
        self._unsaved.pop(prep.index, None)
        self.session.skip(prep.index)
        self._refresh_list()
        self._say(f"Skipped {name}: not a correction, not used for fine-tuning, not segmented again.")
        self._warn_write()
        if prep.index + 1 < len(self.session):
            self.go(prep.index + 1)
        return True

    def _on_save_finished(self) -> None:
        self._saves -= 1
        self._save_workers = {w for w in self._save_workers if not w.is_running}

    def save_now(self, vessels=None) -> bool:
        """Write the current corrections synchronously (before fine-tuning, closing), never over
        someone else's file; True when they were written.  A failure is said, never swallowed."""
        error = self._save_sync(vessels)
        if error is not None:
            self._error(error)
        return error is None and self.shown is not None and not self.dirty

    def _save_sync(self, vessels=None) -> str | None:
        """Write the current corrections now; the sentence why they could not be, or None (also
        when there was nothing to write)."""
        if not self.alive or self.shown is None or not self.dirty or self.session is None:
            return None
        name = self.session.entries[self.shown.index].name
        try:
            vessels = vessels if vessels is not None else self.layers["vessels"]
        except KeyError:
            return None
        mask = np.asarray(vessels.data) > 0
        conflict = self.session.conflict(self.shown.index)
        if conflict is not None:
            return f"The corrections of {name} were not saved: {conflict.name} was not written by this session."
        try:
            self.session.save(self.shown.index, mask, self.shown.seg.fov)
        except (DPNError, OSError) as exc:
            folder = self.session.annotations
            if S.is_disk_full(exc):  # by errno, whatever the exception's words
                reason = f"the disk is full ({folder})"
            elif isinstance(exc, DPNError):
                reason = str(exc).rstrip(".")
            else:
                from napari_dpn.image_io import os_error_message

                reason = os_error_message(exc, folder).rstrip(".")
            return f"The corrections of {name} could not be saved: {reason}."
        self.dirty = False
        self._unsaved.pop(self.shown.index, None)
        return None

    def _ask_save_failure(self, text: str, can_keep_open: bool) -> str:
        """Ask what to do with corrections that cannot be saved: 'elsewhere', 'discard' or
        'keep' (the window stays open); tests replace this method."""
        box = QMessageBox(QMessageBox.Warning, "Corrections not saved", text, QMessageBox.NoButton, self)
        elsewhere = box.addButton("Save to another folder…", QMessageBox.AcceptRole)
        discard = box.addButton("Close without saving", QMessageBox.DestructiveRole)
        keep = box.addButton("Keep the window open", QMessageBox.RejectRole) if can_keep_open else None
        box.setDefaultButton(elsewhere)
        box.exec_()
        clicked = box.clickedButton()
        if clicked is discard:
            return "discard"
        if keep is not None and clicked is keep:
            return "keep"
        return "elsewhere" if clicked is elsewhere or keep is None else "keep"

    def _rescue(self, text: str, vessels, can_keep_open: bool) -> bool:
        """Closing with corrections that cannot be saved where they belong: ask, and save them
        to another folder or (only when told to) drop them.  True when nothing is left to keep
        the window open for; False: keep it open, the corrections stay on screen."""
        if self.session is None or self.shown is None:
            return True
        mask = np.asarray(vessels.data) > 0
        question = (
            " Save them to another folder, close without them, or keep the window open?"
            if can_keep_open
            else " Save them to another folder?"
        )
        for _ in range(20):
            choice = self._ask_save_failure(text + question, can_keep_open)
            if choice == "keep":
                self._say(text + " The window stays open; the corrections are on screen.")
                return False
            if choice == "discard":
                self.dirty = False
                return True
            error = self._save_elsewhere(mask)
            if error is None:
                self.dirty = False
                self._unsaved.pop(self.shown.index, None)
                return True
            text = error
        return not can_keep_open

    def _save_elsewhere(self, mask) -> str | None:
        """Ask for a folder and write the shown image's vessels and FOV there (never over a file);
        None when written, else the sentence why not."""
        folder = self._ask_folder("Save the corrections to which folder?")
        if folder is None:
            return "No folder was chosen."
        index = self.shown.index
        try:
            path = self.session.save_copy(index, mask, self.shown.seg.fov, folder)
        except (DPNError, OSError) as exc:
            return str(exc) if isinstance(exc, DPNError) else f"Cannot write to {folder}: {exc.strerror or exc}."
        show_info(f"Saved the corrections of {self.session.entries[index].name} as {path}.")
        self._say(f"Saved a copy of the corrections as {path} (outside the session's annotations folder).")
        return None

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
        """Closing napari saves the corrections on screen; when they cannot be saved (a full
        disk, a file that is not ours) the close is vetoed unless they went to another folder or
        the user chose to drop them."""
        if ev.type() == QEvent.Close and obj is self._filtered() and self.alive:
            error = self._save_sync()
            if error is not None and "vessels" in self.layers:
                show_error(error)
                if not self._rescue(error, self.layers["vessels"], can_keep_open=True):
                    ev.ignore()
                    return True
        return False

    def shutdown(self) -> None:
        error = self._save_sync()
        if error is not None and "vessels" in self.layers:
            show_error(error)
            self._rescue(error, self.layers["vessels"], can_keep_open=False)
        self._unbind_keys()
        super().shutdown()

    def cancel(self, *_) -> None:
        self._life.cancel.set()
