"""The Fine-tune widget's settings panel: base model, steps, crop, learning rate, augment,
device and the new model's name, folded to one summary line (the defaults suit a first
fine-tune).  Every change goes to :attr:`FinetuneState.settings` at once."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QSpinBox

from napari_dpn.models import user_models_dir

from . import _finetune_tips as tips
from ._dock import Section, one_line_label
from ._finetune_state import FinetuneState
from ._model_picker import DeviceCombo, ModelPicker


class SettingsPanel(Section):
    """The settings of one :class:`FinetuneState`; ``model_picker`` is the base model's list."""

    def __init__(self, state: FinetuneState, parent=None):
        super().__init__("Settings", expanded=False, parent=parent)
        self.state = state
        s = state.settings
        form = QFormLayout(self.body)
        form.setContentsMargins(4, 0, 0, 0)
        self.model_picker = ModelPicker(tooltip=tips.BASE_MODEL)
        form.addRow("Base model", self.model_picker)
        self.steps_spin = _spin(1, 1_000_000, s.steps, tips.STEPS)
        self.crop_spin = _spin(16, 4096, s.crop, tips.CROP, step=32)
        form.addRow("Steps", _row(self.steps_spin, QLabel("Crop"), self.crop_spin))
        self.lr_edit = QLineEdit(s.lr)
        self.lr_edit.setToolTip(tips.LR)
        self.augment_check = QCheckBox("Augment")
        self.augment_check.setChecked(s.augment)
        self.augment_check.setToolTip(tips.AUGMENT)
        form.addRow("Learning rate", _row(self.lr_edit, self.augment_check))
        self.device_combo = DeviceCombo(tips.DEVICE)
        form.addRow("Device", self.device_combo)
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip(tips.NAME)
        form.addRow("Save as", self.name_edit)
        self.folder_info = one_line_label(note=True)
        form.addRow("", self.folder_info)
        for w in (self.steps_spin, self.crop_spin):
            w.valueChanged.connect(self._changed)
        for w in (self.lr_edit, self.name_edit):
            w.textChanged.connect(self._changed)
        self.augment_check.toggled.connect(self._changed)
        self.device_combo.currentTextChanged.connect(self._changed)
        self.model_picker.changed.connect(self._on_model_changed)
        self.name_edit.textEdited.connect(self._on_name_edited)
        state.events.running.connect(self._set_running)

    def _changed(self, *_) -> None:
        self.state.update_settings(
            steps=int(self.steps_spin.value()),
            crop=int(self.crop_spin.value()),
            lr=self.lr_edit.text(),
            augment=self.augment_check.isChecked(),
            device=self.device_combo.currentText() or "auto",
            name=self.name_edit.text().strip(),
        )
        self._update_summary()

    def _update_summary(self) -> None:
        s = self.state.settings
        card = self.model_picker.current_card()
        parts = [
            card.name if card is not None else "no base model",
            f"{s.steps} steps",
            f"crop {s.crop}",
            f"lr {s.lr.strip() or '?'}",
            s.device,
        ]
        if not s.augment:
            parts.append("no augment")
        self.set_summary(" · ".join(parts) + (f" → {s.name}" if s.name else ""))

    def _on_model_changed(self, *_) -> None:
        if not self.state.settings.name_edited:
            self.name_edit.setText(self.default_name())
        self._update_folder_info()
        self._update_summary()

    def default_name(self) -> str:
        card = self.model_picker.current_card()
        base = card.name if card is not None else "dpn"
        return f"{base}-ft-{datetime.now().strftime('%Y%m%d-%H%M')}"

    def _on_name_edited(self, text: str) -> None:
        self.state.update_settings(name_edited=bool(text.strip()))
        self._update_folder_info()

    def forget_name(self) -> None:
        """A model was saved under the name: the next base model names the next one again."""
        self.state.update_settings(name_edited=False)

    def _update_folder_info(self) -> None:
        folder = user_models_dir()
        try:
            shown = "~/" + str(folder.relative_to(Path.home()))
        except ValueError:
            shown = str(folder)
        name = self.name_edit.text().strip() or "…"
        self.folder_info.setText(f"in {shown}")
        self.folder_info.setToolTip(f"{folder / name}.safetensors and its card {name}.json")

    def _set_running(self, running: bool) -> None:
        self.model_picker.combo.setEnabled(not running)
        self.model_picker.refresh_button.setEnabled(not running)
        for w in (self.steps_spin, self.crop_spin, self.lr_edit, self.augment_check, self.device_combo, self.name_edit):
            w.setEnabled(not running)


def _spin(low: int, high: int, value: int, tooltip: str, step: int = 1) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setToolTip(tooltip)
    return spin


def _row(first, *rest) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addWidget(first, 1)
    for w in rest:
        row.addWidget(w, 1 if isinstance(w, QSpinBox) else 0)
    return row
