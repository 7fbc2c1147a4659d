"""The base class of both dock widgets: what they share around their own work.

The real viewer behind napari's proxy, the background worker and its cancel flag, the layer
lists, the dialogs tests replace, and the model/device API (tests, scripts and the
fine-tune → segment refresh hook call it on the widget).  Notifications stay in each widget's
module (``show_error`` there), where the tests capture them.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QLabel,
    QMessageBox,
    QToolButton,
    QWidget,
)

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
        self._cancel = threading.Event()

    def _start_up(self) -> None:
        self._build_ui()
        self._connect_viewer()
        self.refresh_layers()
        self.refresh_models()

    # ------------------------------------------------------------------ viewer

    def _connect_viewer(self) -> None:
        for name in self.LAYER_EVENTS:
            getattr(self.viewer.layers.events, name).connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)

    def _on_layers_changed(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._on_layers_changed)
        self.refresh_layers()

    def _image_layers(self) -> list:
        return [lyr for lyr in self.viewer.layers
                if isinstance(lyr, Image) and _roles.role_of(lyr) not in ("probability",)]

    def _gt_candidates(self) -> list:
        skip = ("probability", "vessels", "errors", "fov")
        return [lyr for lyr in self.viewer.layers
                if isinstance(lyr, Labels) and _roles.role_of(lyr) not in skip]

    # ------------------------------------------------------------------ models and devices

    @property
    def model_combo(self) -> QComboBox:
        return self.model_picker.combo

    @property
    def refresh_button(self) -> QToolButton:
        return self.model_picker.refresh_button

    def refresh_models(self, *_) -> None:
        """Re-read the devices and the models, keeping both choices."""
        self.device_combo.refresh()
        self.model_picker.refresh()

    def add_model_file(self, path) -> bool:
        """Add a weights file to the model list and select it (what Browse… does)."""
        return self.model_picker.add_model_file(path)

    def current_card(self):
        return self.model_picker.current_card()

    def select_model(self, name: str) -> None:
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

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.cancel()
        super().closeEvent(event)
