"""The *Folder* panel of *Correct a folder*: which folder, where the annotations go, the model,
device and field of view, **Open folder**, and the list of the folder's photographs with their
states.  The field of view is remembered per folder (in the session file); changing it segments
the images nobody corrected, accepted or skipped again."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ._dock import Section
from ._model_picker import DeviceCombo, FieldCombo, ModelPicker
from ._session_navigation import Navigator
from ._session_saving import FolderSaver
from ._session_state import FolderState

FIELD_TIP = (
    "The camera's field of view, as in the Segment widget: each photograph is resampled to the "
    "scale the model was trained at (pixels per degree = FOV diameter / this angle) and the map "
    "back. Remembered for this folder; changing it segments the images nobody corrected, "
    "accepted or skipped again."
)


class FolderPanel(QWidget):
    """Folder, annotations, model, device, field of view, Open; the list of images.
    ``dialogs``: ``confirm`` and ``ask_folder`` (the widget's, which tests replace)."""

    def __init__(self, state: FolderState, nav: Navigator, saver: FolderSaver, dialogs, parent=None):
        super().__init__(parent)
        self.state, self.nav, self.saver, self.dialogs = state, nav, saver, dialogs
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.section = Section("Folder")
        form = QFormLayout(self.section.body)
        self.folder_edit = self._folder_row(form, "Photos", "folder of photographs", "Folder of photographs")
        self.notes_edit = self._folder_row(form, "Annotations", "beside the photographs", "Folder for annotations")
        self.notes_edit.setToolTip(
            "Where the <image>_vessels.png annotations and the session file go (default: beside the photographs)."
        )
        self.model_picker = ModelPicker("The model that segments images not segmented yet.")
        form.addRow("Model", self.model_picker)
        self.device_combo = DeviceCombo("Where the network runs.")
        form.addRow("Device", self.device_combo)
        self.field_combo = FieldCombo(FIELD_TIP)
        self.field_combo.currentIndexChanged.connect(self._on_field_changed)
        form.addRow("Field of view", self.field_combo)
        self.open_button = QPushButton("Open folder")
        self.open_button.setToolTip("Start, or resume, the session of this folder.")
        self.open_button.clicked.connect(self.open_clicked)
        form.addRow(self.open_button)
        outer.addWidget(self.section)
        self.list = QListWidget()
        self.list.setMaximumHeight(160)
        self.list.itemActivated.connect(lambda item: self.nav.go(self.list.row(item)))
        self.list.itemDoubleClicked.connect(lambda item: self.nav.go(self.list.row(item)))
        outer.addWidget(self.list)
        state.listed.connect(self.refresh_list)

    def _folder_row(self, form: QFormLayout, label: str, placeholder: str, title: str) -> QLineEdit:
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        browse = QToolButton()
        browse.setText("…")
        browse.clicked.connect(lambda: self._browse(edit, title))
        row = QHBoxLayout()
        row.addWidget(edit)
        row.addWidget(browse)
        form.addRow(label, row)
        return edit

    def _browse(self, edit: QLineEdit, title: str) -> None:
        folder = self.dialogs.ask_folder(title)
        if folder is not None:
            edit.setText(str(folder))

    def spec(self) -> str | None:
        """The chosen model's file (or name), None when none is chosen."""
        data = self.model_picker.combo.currentData()
        return data[1] if isinstance(data, tuple) else None

    def refresh_list(self) -> None:
        session = self.state.session
        if session is None:
            return
        texts = [f"{e.name} — {session.label(i)}" for i, e in enumerate(session.entries)]
        if self.list.count() != len(texts):
            self.list.clear()
            self.list.addItems(texts)
        else:
            for i, t in enumerate(texts):
                if self.list.item(i).text() != t:
                    self.list.item(i).setText(t)
        if self.state.index is not None:
            self.list.setCurrentRow(self.state.index)
        self.state.changed.emit()

    def open_clicked(self, *_) -> bool:
        return self.open_folder(self.folder_edit.text().strip(), self.notes_edit.text().strip() or None)

    def open_folder(self, folder, annotations=None) -> bool:
        """Start or resume the session of ``folder``; shows its current image."""
        if not folder:
            self.state.notify("warning", "Choose a folder of photographs first.")
            return False
        if self.state.dirty:
            self.saver.save_current(ask=False)
        session = self.nav.open(folder, annotations, self.dialogs.confirm)
        if session is None:
            return False
        self.folder_edit.setText(str(session.folder))
        if annotations:
            self.notes_edit.setText(str(session.annotations))
        self._set_field_combo(session.field_angle)
        self.nav.start(session)
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
        st = self.state
        if st.session is None:
            return
        angle = self.field_combo.currentData()
        if angle == st.session.field_angle:
            return
        st.session.field_angle = angle
        n = len(self.nav.resegment_rest())  # persists the session too
        if st.shown is None and st.index is not None:  # the image on screen is segmented again
            self.nav.wait_for(st.index)
        st.say(
            f"Field of view {self.field_combo.currentText()} for {st.session.folder.name}; "
            f"{n} image(s) nobody corrected, accepted or skipped are segmented again with it."
        )
        st.warn_write()
