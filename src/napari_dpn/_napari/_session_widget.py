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

How it is built: one :class:`~._session_state.FolderState` holds what the widget knows; the
panels (:class:`~._session_folder.FolderPanel`, :class:`~._session_review.ReviewPanel`,
:class:`~._session_tools.ToolsPanel`, :class:`~._session_loop.LoopPanel`) read and change it and
listen to its signals; :class:`~._session_layers.FolderLayers` owns the viewer's layers,
:class:`~._session_navigation.Navigator` moves between images, :class:`~._session_saving.FolderSaver`
writes.  This widget composes them, binds the keys, shows the notifications and keeps the
corrections when napari closes.  All heavy work (reading, the network, the tools, saving, the
CSV) runs in worker threads.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QFileDialog, QMainWindow, QVBoxLayout

from ._dock import DockWidget, ancestor, wrapped_label
from ._session_folder import FolderPanel
from ._session_layers import FolderLayers
from ._session_loop import LoopPanel
from ._session_navigation import Navigator
from ._session_review import ReviewPanel
from ._session_saving import FolderSaver, ask_save_failure
from ._session_state import KEYS, FolderState
from ._session_tools import ToolsPanel

TOOL_CONTROLS = (
    "branch_button",
    "add_button",
    "low_spin",
    "speck_spin",
    "speck_button",
    "outline_check",
    "local_spin",
    "local_button",
    "uncertain_button",
)


class _Dialogs:
    """The widget's questions as the panels ask them; late-bound, so a test that replaces
    ``widget._confirm`` (and the like) answers for every panel."""

    def __init__(self, widget: SessionWidget):
        self._widget = weakref.ref(widget)

    def confirm(self, title: str, text: str, ok: str = "OK") -> bool:
        return self._widget()._confirm(title, text, ok=ok)

    def ask_folder(self, title: str):
        return self._widget()._ask_folder(title)

    def ask_save_failure(self, text: str, can_keep_open: bool) -> str:
        return self._widget()._ask_save_failure(text, can_keep_open)


class _LoopHost:
    """What the loop panel needs of the widget: its life, theme, a place for the running panel
    and where the CSV goes."""

    def __init__(self, widget: SessionWidget):
        self._widget = weakref.ref(widget)

    @property
    def life(self):
        return self._widget().life

    @property
    def theme(self):
        return getattr(self._widget().viewer, "theme", None)

    def place(self, panel) -> None:
        widget = self._widget()
        outer = widget.layout()
        at = outer.indexOf(widget.status)
        outer.insertWidget(at if at >= 0 else outer.count(), panel)

    def ask_save_path(self) -> Path | None:
        return self._widget()._ask_save_path()


class SessionWidget(DockWidget):
    """Dock widget: correct the photographs of a folder one after another."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.state = FolderState()
        self._filtered = lambda: None
        self._start_up()
        self._bind_keys()

    # ------------------------------------------------------------------ composition

    def _build_ui(self) -> None:
        st, dialogs = self.state, _Dialogs(self)
        self.folder_layers = FolderLayers(self.viewer, st, None, None, alive=lambda: self.alive)
        self.saver = FolderSaver(st, self.folder_layers, dialogs, go=lambda i: self.nav.go(i))
        self.nav = Navigator(st, self.folder_layers, self.saver, self._job, self._busy_bar)
        self.folder = FolderPanel(st, self.nav, self.saver, dialogs)
        self.review = ReviewPanel(st, self.nav, self.saver, self.folder_layers, dialogs)
        self.tools = ToolsPanel(st, self.folder_layers, self.viewer)
        self.folder_layers.on_paint, self.folder_layers.on_click = self.tools.on_paint, self.tools.on_click
        self.loop = LoopPanel(st, self.nav, self.folder_layers, self.folder, _LoopHost(self))
        self.status = wrapped_label()
        outer = QVBoxLayout(self)
        for part in (self.folder, self.review, self.tools, self.loop, self.status):
            outer.addWidget(part)
        outer.addStretch(1)
        self.tools.uncertain_row.addWidget(self.loop.csv_button)  # beside Next uncertain region, as before
        # What DockWidget and scripts reach by name.
        self.model_picker, self.device_combo = self.folder.model_picker, self.folder.device_combo
        self.folder_section, self.folder_edit, self.notes_edit = (
            self.folder.section,
            self.folder.folder_edit,
            self.folder.notes_edit,
        )
        self.field_combo, self.list = self.folder.field_combo, self.folder.list
        for name in (
            "prev_button",
            "next_button",
            "done_label",
            "save_button",
            "accept_button",
            "skip_button",
            "progress",
        ):
            setattr(self, name, getattr(self.review, name))
        for name in TOOL_CONTROLS:
            setattr(self, name, getattr(self.tools, name))
        self.ft_steps, self.ft_button, self.reseg_button, self.csv_button = (
            self.loop.ft_steps,
            self.loop.ft_button,
            self.loop.reseg_button,
            self.loop.csv_button,
        )
        st.said.connect(self._say)
        st.notified.connect(self._notify)

    def _say(self, text: str) -> None:
        self.status.setText(text)

    @staticmethod
    def _notify(kind: str, text: str) -> None:
        {"error": show_error, "warning": show_warning, "info": show_info}[kind](text)

    def _job(self):
        """(model spec, device, cancel flag) of a preparation started now."""
        return self.folder.spec(), self.device_combo.currentText() or "auto", self.life.cancel

    def _busy_bar(self, on: bool) -> None:
        self.review.progress.setVisible(on)

    @property
    def life(self):
        """The widget's cancel flag and closed state (plain Python, safe after the Qt side is gone)."""
        return self._life

    def _bind_keys(self) -> None:
        for key, func in (
            (KEYS["next"], lambda v: self.review.next()),
            (KEYS["previous"], lambda v: self.review.previous()),
            (KEYS["uncertain"], lambda v: self.tools.next_uncertain()),
            (KEYS["save"], lambda v: self.review.save_clicked()),
            (KEYS["accept"], lambda v: self.review.accept_clicked()),
            (KEYS["skip"], lambda v: self.review.skip_clicked()),
        ):
            self.viewer.bind_key(key, func, overwrite=True)

    def _unbind_keys(self) -> None:
        for key in KEYS.values():
            with contextlib.suppress(KeyError, ValueError, TypeError):
                self.viewer.bind_key(key, None)

    # ------------------------------------------------------------------ what scripts and tests read

    session = property(lambda self: self.state.session)
    index = property(lambda self: self.state.index)
    shown = property(lambda self: self.state.shown)
    mode = property(lambda self: self.state.mode)
    dirty = property(lambda self: self.state.dirty)
    busy = property(lambda self: self.state.busy)
    layers = property(lambda self: self.folder_layers.layers)
    ft_panel = property(lambda self: self.loop.ft_panel)

    @property
    def edits(self) -> int:
        return self.state.edits

    @edits.setter
    def edits(self, n: int) -> None:
        self.state.edits = n

    # ------------------------------------------------------------------ the actions, by name

    def open_folder(self, folder, annotations=None) -> bool:
        return self.folder.open_folder(folder, annotations)

    def open_clicked(self, *_) -> bool:
        return self.folder.open_clicked()

    def go(self, index: int) -> bool:
        return self.nav.go(index)

    def next(self, *_) -> bool:
        return self.review.next()

    def previous(self, *_) -> bool:
        return self.review.previous()

    def save_clicked(self, *_) -> bool:
        return self.review.save_clicked()

    def accept_clicked(self, *_) -> bool:
        return self.review.accept_clicked()

    def skip_clicked(self, *_) -> bool:
        return self.review.skip_clicked()

    def save_now(self, vessels=None) -> bool:
        return self.saver.save_now(vessels)

    def set_mode(self, mode: str | None) -> None:
        self.tools.set_mode(mode)

    def apply_tool(self, mode: str, point) -> bool:
        return self.tools.apply_tool(mode, point)

    def remove_specks(self, *_) -> bool:
        return self.tools.remove_specks()

    def threshold_region(self, *_) -> bool:
        return self.tools.threshold_region()

    def next_uncertain(self, *_):
        return self.tools.next_uncertain()

    def finetune(self, *_) -> bool:
        return self.loop.finetune()

    def resegment_rest(self, *_) -> int:
        return self.loop.resegment_rest()

    def export_clicked(self, *_) -> bool:
        return self.loop.export_clicked()

    def export_csv(self, path) -> bool:
        return self.loop.export_csv(path)

    # ------------------------------------------------------------------ dialogs (tests replace them)

    def _ask_save_failure(self, text: str, can_keep_open: bool) -> str:
        """Ask what to do with corrections that cannot be saved: 'elsewhere', 'discard' or 'keep'."""
        return ask_save_failure(self, text, can_keep_open)

    def _ask_save_path(self) -> Path | None:
        """Ask where the CSV goes."""
        default = str(self.state.session.annotations / "session.csv")
        path, _ = QFileDialog.getSaveFileName(self, "Export CSV", default, "CSV (*.csv)")
        return Path(path) if path else None

    # ------------------------------------------------------------------ the viewer and closing

    def refresh_layers(self) -> None:
        """The viewer's layers changed: forget our layers that were deleted (a deleted vessels
        layer with corrections is saved first: closing napari deletes every layer)."""
        for kind, layer in self.folder_layers.deleted():
            if kind == "vessels":
                self.saver.save_or_rescue(layer, can_keep_open=False)
                self.state.shown = None

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._watch_window()

    def event(self, ev) -> bool:
        if ev.type() == QEvent.ParentChange and self.parent() is not None:
            QTimer.singleShot(0, self._watch_window)
        return super().event(ev)

    def _watch_window(self) -> None:
        """Hear napari's main window close, to keep the corrections on screen."""
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
        closing = ev.type() == QEvent.Close and obj is self._filtered() and self.alive
        if closing and not self.saver.save_or_rescue(can_keep_open=True):
            ev.ignore()
            return True
        return False

    def shutdown(self) -> None:
        if self.alive:
            self.saver.save_or_rescue(can_keep_open=False)
        self._unbind_keys()
        super().shutdown()

    def cancel(self, *_) -> None:
        self._life.cancel.set()
