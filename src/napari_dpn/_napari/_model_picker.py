"""The model and device choosers both dock widgets share.

"Segment vessels" and "Fine-tune DPN" must list the same models the same way (a model just
fine-tuned appears in both at once), so the list, its default, Browse… and the device list live
here once.  Errors are not shown here: ``ModelPicker.error`` hands them to the widget, which
shows them in its own status line.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QSizePolicy,
    QToolButton,
    QWidget,
)

from napari_dpn.errors import DPNError, InputError
from napari_dpn.messages import sentence
from napari_dpn.scale import COMMON_FIELD_ANGLES

from ._dock import one_line_label

BROWSE = "__browse__"
NO_MODEL_MESSAGE = "No model installed: use Browse… to pick a weights file."


def _file_label(card, path) -> str:
    return f"{card.name} ({Path(path).name})"


class _ModelsChanged(QObject):
    """Announces that a model was saved, so every open model list re-reads the models folder."""

    changed = Signal()


MODELS_CHANGED = _ModelsChanged()


def announce_new_model() -> None:
    """Tell every ModelPicker (in any dock widget) that the models on disk changed."""
    MODELS_CHANGED.changed.emit()


class ModelPicker(QWidget):
    """Model combo and ⟳: shipped and user models, then files added with Browse…, then Browse….

    Item data is ``("card" | "file", name or path, ModelCard)``.  ``changed`` carries the chosen
    card (None when there is none); ``summary`` (optional) is a label the caller places, kept
    showing the card's summary.
    """

    changed = Signal(object)
    error = Signal(str)

    def __init__(
        self, tooltip: str = "", refresh_tip: str = "Re-read the model list.", summary: bool = False, parent=None
    ):
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        if tooltip:
            self.combo.setToolTip(tooltip)
        self.refresh_button = QToolButton()
        self.refresh_button.setText("⟳")
        self.refresh_button.setToolTip(refresh_tip)
        row.addWidget(self.combo)
        row.addWidget(self.refresh_button)
        self.summary = None
        if summary:
            self.summary = one_line_label(note=True)  # the whole card summary is its tooltip
        self.combo.currentIndexChanged.connect(self._on_index_changed)
        self.refresh_button.clicked.connect(self.refresh)
        MODELS_CHANGED.changed.connect(self.refresh)
        self.destroyed.connect(lambda *_: _disconnect(self.refresh))

    def _add_item(self, text: str, data, row: int | None = None) -> None:
        row = self.combo.count() if row is None else row
        self.combo.insertItem(row, text, data)
        self.combo.setItemData(row, data[2].summary, Qt.ToolTipRole)

    def refresh(self, *_) -> None:
        """List shipped and user models (and files added with Browse…), keeping the choice."""
        from napari_dpn.models import DEFAULT_MODEL, list_models

        combo = self.combo
        keep = combo.currentData()
        files = [
            combo.itemData(i)
            for i in range(combo.count())
            if isinstance(combo.itemData(i), tuple) and combo.itemData(i)[0] == "file"
        ]
        combo.blockSignals(True)
        combo.clear()
        try:
            cards = list_models()
        except Exception as exc:  # noqa: BLE001 - a broken models folder must not kill the widget
            cards = []
            self.error.emit(sentence(exc, doing="Listing the models"))
        for card in cards:
            self._add_item(card.name, ("card", str(card.extra.get("path", card.name)), card))
        for data in files:
            self._add_item(_file_label(data[2], data[1]), data)
        combo.addItem("Browse…", BROWSE)
        combo.setItemData(combo.count() - 1, "Any .safetensors weights file with a model card.", Qt.ToolTipRole)
        idx = next((i for i in range(combo.count()) if keep is not None and combo.itemData(i) == keep), -1)
        combo.setCurrentIndex(idx if idx >= 0 else max(0, combo.findText(DEFAULT_MODEL)))
        combo.blockSignals(False)
        self._on_index_changed()

    def add_model_file(self, path) -> bool:
        """Add a weights file to the list and select it (what Browse… does)."""
        from napari_dpn.models import read_card

        path = Path(path)
        try:
            if not path.is_file():
                raise InputError(f"Weights file not found: {path}.")
            card = read_card(path)
        except DPNError as exc:
            self.error.emit(f"Cannot use {path.name}: {exc}")
            self._select_first()
            return False
        self.combo.blockSignals(True)
        self._add_item(_file_label(card, path), ("file", str(path), card), self.combo.count() - 1)
        self.combo.setCurrentIndex(self.combo.count() - 2)
        self.combo.blockSignals(False)
        self._on_index_changed()
        return True

    def _select_first(self) -> None:
        # Not through _on_index_changed: with no model installed item 0 is Browse… itself.
        self.combo.blockSignals(True)
        self.combo.setCurrentIndex(0)
        self.combo.blockSignals(False)
        self._announce()

    def _on_index_changed(self, *_) -> None:
        if self.combo.currentData() == BROWSE:
            path, _ = QFileDialog.getOpenFileName(
                self, "Choose a DPN weights file", "", "DPN weights (*.safetensors);;All files (*)"
            )
            if path:
                self.add_model_file(path)
            else:
                self._select_first()
            return
        self._announce()

    def _announce(self) -> None:
        card = self.current_card()
        if self.summary is not None:
            self.summary.setText(card.summary if card is not None else NO_MODEL_MESSAGE)
            if card is not None:
                detail = card.description if card.description and card.description != card.summary else ""
                self.summary.setToolTip(card.summary + (f"\n\n{detail}" if detail else ""))
        self.changed.emit(card)

    def current_card(self):
        data = self.combo.currentData()
        return data[2] if isinstance(data, tuple) else None

    def select_model(self, name: str) -> None:
        idx = self.combo.findText(name)
        if idx < 0:
            raise ValueError(f"no model {name!r} in the list")
        self.combo.setCurrentIndex(idx)


class FieldCombo(QComboBox):
    """The camera's field of view: estimate (None), the common angles (degrees) or 'native'
    (no resampling); the Segment and Correct-a-folder widgets offer the same choices."""

    def __init__(self, tooltip: str, parent=None):
        super().__init__(parent)
        self.addItem("estimate (45° if unknown)", None)
        for angle in COMMON_FIELD_ANGLES:
            self.addItem(f"{angle:g}°", float(angle))
        self.addItem("native scale (no resampling)", "native")
        self.setToolTip(tooltip)


class DeviceCombo(QComboBox):
    """The devices present on this machine ('auto' first), from ``devices.available_devices``."""

    def __init__(self, tooltip: str, parent=None):
        super().__init__(parent)
        self.setToolTip(tooltip)
        self.addItems(["auto", "cpu"])  # until torch is loaded (see refresh)

    def refresh(self, probe: bool = False) -> None:
        """Re-list the devices, keeping the choice when it is still present.  The GPUs are probed
        only once torch is loaded (a run loads it) or with ``probe`` (opening the list): importing
        torch takes 1-2 s, which docking a widget must not cost; 'auto' picks a GPU anyway."""
        if not probe and "torch" not in sys.modules:
            if self.count() == 0:
                self.addItems(["auto", "cpu"])
            return
        try:
            from napari_dpn.devices import available_devices

            devices = list(available_devices())
        except Exception:  # noqa: BLE001 - a broken torch install must not kill the widget
            devices = ["auto", "cpu"]
        keep = self.currentText()
        self.clear()
        self.addItems(devices)
        if keep in devices:
            self.setCurrentText(keep)

    def showPopup(self) -> None:
        if "napari_dpn.devices" not in sys.modules:
            self.refresh(probe=True)  # the user asks for the list: probe the GPUs now
        super().showPopup()


def _disconnect(slot) -> None:
    with contextlib.suppress(TypeError, RuntimeError):  # already gone
        MODELS_CHANGED.changed.disconnect(slot)
