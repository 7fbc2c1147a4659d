"""The base class of both dock widgets: what they share around their own work.

The real viewer behind napari's proxy, the background worker and its cancel flag, the layer
lists, the dialogs tests replace, and the model/device API (tests, scripts and the
fine-tune → segment refresh hook call it on the widget).  Notifications stay in each widget's
module (``show_error`` there), where the tests capture them.

Life cycle of a run: :meth:`DockWidget._start_worker` runs the job in a napari worker thread
whose ``quit()`` sets the job's cancel flag.  napari calls ``quit()`` on every worker when the
viewer window closes or the application quits; the widget also cancels when its dock is closed
and when it is destroyed.  The job stops at its next check (the training engine then writes its
checkpoint and saves no model), and the widget's slots do nothing once the widget is gone.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from napari.layers import Image, Labels
from napari.qt.threading import FunctionWorker
from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QElidingLabel

from . import _roles

if TYPE_CHECKING:
    from ._model_picker import DeviceCombo, ModelPicker

NOTE_STYLE = "color: gray; font-size: small;"


def wrapped_label(text: str = "", *, selectable: bool = False, note: bool = False) -> QLabel:
    """A word-wrapped label (status lines, results, notes): most rows of both widgets."""
    label = QLabel(text)
    label.setWordWrap(True)
    if selectable:
        label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    if note:
        label.setStyleSheet(NOTE_STYLE)
    return label


def one_line_label(text: str = "", *, note: bool = False) -> QElidingLabel:
    """A one-line label that elides ("…") what does not fit; the full text is its tooltip."""
    label = QElidingLabel(text)
    label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
    label.setToolTip(text)
    if note:
        label.setStyleSheet(NOTE_STYLE)
    return label


class Section(QWidget):
    """A titled part of a dock widget that folds away: ``▾ Title ……… summary`` and its body.

    Folded, only the header row is left, with a one-line summary of the body's state (e.g. the
    settings) so a 768 px high screen holds both widgets without scrolling through everything.
    """

    toggled = Signal(bool)

    def __init__(self, title: str, expanded: bool = True, parent=None):
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setChecked(expanded)
        self.header.setAutoRaise(True)
        self.header.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.header.setStyleSheet("QToolButton { font-weight: bold; border: none; }")
        self.header.setToolTip(f"Show or hide '{title}'.")
        self.summary = one_line_label(note=True)
        row.addWidget(self.header)
        row.addWidget(self.summary, 1)
        row.addStretch()  # keeps the title on the left while the summary is hidden
        outer.addLayout(row)
        self.body = QWidget()
        outer.addWidget(self.body)
        self.header.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    @property
    def title(self) -> str:
        return self.header.text()

    def set_expanded(self, expanded: bool = True) -> None:
        expanded = bool(expanded)
        if self.header.isChecked() != expanded:
            self.header.setChecked(expanded)  # comes back here through toggled
            return
        self.header.setArrowType(Qt.DownArrow if expanded else Qt.RightArrow)
        self.body.setVisible(expanded)
        self.summary.setVisible(not expanded and bool(self.summary.text()))
        self.toggled.emit(expanded)

    def is_expanded(self) -> bool:
        return self.header.isChecked()

    def set_summary(self, text: str) -> None:
        self.summary.setText(text)
        self.summary.setToolTip(text)
        self.summary.setVisible(not self.is_expanded() and bool(text))


class CancellableWorker(FunctionWorker):
    """napari's FunctionWorker whose ``quit()`` also sets the job's cancel flag.

    napari calls ``quit()`` on the workers when the viewer window closes (after asking, when
    the close comes from the user) and when the application quits; a plain FunctionWorker
    ignores it, which let a fine-tuning run go on, invisible, after the window was gone.
    """

    cancel_event: threading.Event | None = None

    def quit(self) -> None:
        super().quit()
        if self.cancel_event is not None:
            self.cancel_event.set()


class _Job:
    """The worker's callable, with a readable name: napari lists running workers by it when it
    asks before closing the window ("napari-worker: Executing fine-tuning 'x'")."""

    def __init__(self, func, description: str, *args):
        self.func = func
        self.description = description
        self.args = args

    def __call__(self):
        return self.func(*self.args)

    def __repr__(self) -> str:
        return self.description


class _Life:
    """Plain-Python state the destroyed-signal handler may touch after the Qt side is gone."""

    def __init__(self):
        self.closed = False
        self.cancel = threading.Event()


def _widget_gone(life: _Life, *_) -> None:
    life.closed = True
    life.cancel.set()


def unstarted_worker(func, *args):
    """A napari worker for ``func(*args)``, not started yet: connect its signals, then ``start()``."""
    from napari.qt.threading import create_worker

    return create_worker(func, *args, _start_thread=False)


def named_worker(func, description: str, *args, cancel_event: threading.Event):
    """An unstarted :class:`CancellableWorker` for ``func(*args)``, listed by napari as
    ``description``; napari's ``quit()`` sets ``cancel_event``."""
    from napari.qt.threading import create_worker

    worker = create_worker(_Job(func, description, *args), _worker_class=CancellableWorker, _start_thread=False)
    worker.cancel_event = cancel_event
    return worker


def ancestor(widget, cls):
    """The nearest parent widget of type ``cls`` (or None)."""
    w = widget.parentWidget() if widget is not None else None
    while w is not None and not isinstance(w, cls):
        w = w.parentWidget()
    return w


class DockWidget(QWidget):
    """Subclasses build ``model_picker`` and ``device_combo`` in ``_build_ui``, define
    ``refresh_layers`` and ``cancel``, and call ``_start_up()`` at the end of ``__init__``."""

    LAYER_EVENTS = ("inserted", "removed")  # viewer.layers events that re-list the layers
    model_picker: ModelPicker
    device_combo: DeviceCombo

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        # napari hands plugin widgets a PublicOnlyProxy of the viewer, whose layers are new
        # proxy objects on every access; identity checks (which layer was painted, which
        # result belongs to which image) need the real objects.  We use public API only.
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self._worker = None
        self._life = _Life()
        self._docked = False
        self._tabified = False
        self.destroyed.connect(functools.partial(_widget_gone, self._life))
        _roles.keep_arranged(self.viewer)  # layers stacked by role, the vessels layer selected

    def _start_up(self) -> None:
        self._build_ui()
        self._connect_viewer()
        self.refresh_layers()
        self.refresh_models_soon()

    # ------------------------------------------------------------------ viewer

    LAYER_ATTR_EVENTS = ("name",)  # events of each layer that re-list the layers

    def _connect_viewer(self) -> None:
        for name in self.LAYER_EVENTS:
            getattr(self.viewer.layers.events, name).connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            self._connect_layer(layer)

    def _connect_layer(self, layer) -> None:
        for name in self.LAYER_ATTR_EVENTS:
            getattr(layer.events, name).connect(self._on_layer_attr_changed)

    def _disconnect_viewer(self) -> None:
        for name in self.LAYER_EVENTS:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                getattr(self.viewer.layers.events, name).disconnect(self._on_layers_changed)
        for layer in list(self.viewer.layers):
            for name in self.LAYER_ATTR_EVENTS:
                with contextlib.suppress(TypeError, ValueError, RuntimeError):
                    getattr(layer.events, name).disconnect(self._on_layer_attr_changed)

    def _on_layer_attr_changed(self, event=None) -> None:
        if self.alive:
            self.refresh_layers()

    IGNORED_ROLES: tuple = ()  # roles of layers whose arrival changes nothing this widget lists

    def _on_layers_changed(self, event=None) -> None:
        if not self.alive:
            return
        if event is not None and getattr(event, "type", "") == "inserted":
            self._connect_layer(event.value)
            if _roles.role_of(event.value) in self.IGNORED_ROLES:
                return  # re-listing costs tens of ms, on top of napari adding a layer
        self.refresh_layers()

    def _image_layers(self) -> list:
        return [
            lyr for lyr in self.viewer.layers if isinstance(lyr, Image) and _roles.role_of(lyr) not in ("probability",)
        ]

    def _gt_candidates(self) -> list:
        skip = ("probability", "vessels", "errors", "fov")
        return [lyr for lyr in self.viewer.layers if isinstance(lyr, Labels) and _roles.role_of(lyr) not in skip]

    # ------------------------------------------------------------------ models and devices

    @property
    def model_combo(self) -> QComboBox:
        self._ensure_models()  # asked before the deferred first listing: list them now
        return self.model_picker.combo

    @property
    def refresh_button(self) -> QToolButton:
        return self.model_picker.refresh_button

    def refresh_models(self, *_) -> None:
        """Re-read the devices and the models, keeping both choices."""
        self._models_listed, self._models_listed_at = True, time.monotonic()
        self.device_combo.refresh()
        self.model_picker.refresh()

    _models_listed = False
    _models_listed_at = -1e9

    def refresh_models_soon(self) -> None:
        """Re-read the models when the widget docks or shows.  Quick: the model cards are read
        without torch, and the devices are probed only once torch is loaded (``DeviceCombo``);
        importing torch (1-2 s, holding the GIL even in a background thread) would freeze the
        viewer."""
        if not self._models_listed:
            # The first listing in the next event-loop turn: docking and reading the model cards
            # are two short stalls, not one long one (scripts asking at once list them then).
            QTimer.singleShot(0, lambda: self.alive and not self._models_listed and self.refresh_models())
        elif time.monotonic() - self._models_listed_at > 2.0:  # not twice in one dock (init, then show)
            self.refresh_models()

    def _ensure_models(self) -> None:
        if not self._models_listed:
            self.refresh_models()

    def add_model_file(self, path) -> bool:
        """Add a weights file to the model list and select it (what Browse… does)."""
        self._ensure_models()
        return self.model_picker.add_model_file(path)

    def current_card(self):
        self._ensure_models()
        return self.model_picker.current_card()

    def select_model(self, name: str) -> None:
        self._ensure_models()
        self.model_picker.select_model(name)

    # ------------------------------------------------------------------ dialogs and running

    def _ask_folder(self, title: str) -> Path | None:
        """Ask for a folder; tests replace this method."""
        folder = QFileDialog.getExistingDirectory(self, title)
        return Path(folder) if folder else None

    def _confirm(self, title: str, text: str, ok: str = "OK") -> bool:
        """Ask the user; tests replace this method."""
        box = QMessageBox(QMessageBox.Warning, title, text, QMessageBox.Cancel, self)
        yes = box.addButton(ok, QMessageBox.DestructiveRole)
        box.setDefaultButton(QMessageBox.Cancel)
        box.exec_()
        return box.clickedButton() is yes

    @property
    def is_running(self) -> bool:
        return self._worker is not None

    @property
    def alive(self) -> bool:
        """False once the widget's dock was closed or the widget destroyed: its slots then do
        nothing (a late worker result must not touch deleted Qt objects)."""
        return not self._life.closed

    @property
    def _cancel(self) -> threading.Event:
        """The cancel flag of the current (or last) run."""
        return self._life.cancel

    def _start_worker(self, func, description: str, *args, returned, finished):
        """Run ``func(*args, should_stop)`` in a napari worker thread; returns the worker.

        ``should_stop()`` turns true on Cancel, on closing the window, dock or application.
        """
        from napari.qt.threading import create_worker

        cancel = threading.Event()
        self._life.cancel = cancel
        worker = create_worker(
            _Job(func, description, *args, cancel.is_set), _worker_class=CancellableWorker, _start_thread=False
        )
        worker.cancel_event = cancel
        worker.returned.connect(returned)
        worker.finished.connect(finished)
        self._worker = worker
        return worker

    def shutdown(self) -> None:
        """Stop for good: cancel a running job and ignore what it still sends."""
        if self._life.closed:
            return
        self._life.closed = True
        self._life.cancel.set()
        self._disconnect_viewer()

    def closeEvent(self, event) -> None:
        self.cancel()
        super().closeEvent(event)

    def event(self, ev) -> bool:
        if ev.type() == QEvent.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                # napari closes a dock by taking the widget out of it (setParent(None)).
                self.shutdown()
        return super().event(ev)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._tabified:
            self._tabified = True
            QTimer.singleShot(0, self._tabify_with_siblings)

    def _tabify_with_siblings(self) -> None:
        """Share one dock area with the other napari-dpn widget as tabs (a laptop screen holds one
        widget's height, not two), and show this one."""
        if not self.alive:
            return
        dock = ancestor(self, QDockWidget)
        window = ancestor(dock, QMainWindow) if dock is not None else None
        if dock is None or window is None or dock.isFloating():
            return
        area = window.dockWidgetArea(dock)
        for other in window.findChildren(QDockWidget):
            if other is dock or other.isFloating() or other.isHidden():
                continue
            if isinstance(other.widget(), DockWidget) and window.dockWidgetArea(other) == area:
                window.tabifyDockWidget(other, dock)
                dock.show()
                dock.raise_()
                return
