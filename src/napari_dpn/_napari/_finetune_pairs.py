"""The Fine-tune widget's pairs panel: which images train and which validate.

Two foldable sections (training data, validation) list the viewer's candidate pairs with the
user's ticks (kept in :class:`FinetuneState`), a folder row each, and the combos that add a
validation pair by hand.  :meth:`PairsPanel.collect_pairs` turns the ticked ones and the
folders into pairs for the engine when a run starts.
"""

from __future__ import annotations

from napari.layers import Image
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_dpn.errors import InputError

from . import _finetune_tips as tips
from . import _roles
from ._dock import Section, wrapped_label
from ._finetune_data import (
    NO_PAIRS_MESSAGE,
    folder_text,
    layer_pair,
    pairs_of_folder,
    train_candidates,
    val_candidates,
)
from ._finetune_state import FinetuneState


def _pair_list(tooltip: str) -> QListWidget:
    """A short list of tickable (image, masks) pairs; the training and validation boxes share it."""
    lst = QListWidget()
    lst.setSelectionMode(QAbstractItemView.NoSelection)
    lst.setMaximumHeight(58)
    lst.setToolTip(tooltip)
    lst.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # long names are elided instead
    lst.setTextElideMode(Qt.ElideMiddle)
    return lst


class _FolderRow(QHBoxLayout):
    """'Folder: none'  […] [×] under a pair list."""

    def __init__(self, tooltip: str):
        super().__init__()
        self.label = wrapped_label("Folder: none")
        self.choose = QToolButton()
        self.choose.setText("…")
        self.choose.setToolTip(tooltip)
        self.clear = QToolButton()
        self.clear.setText("×")
        self.clear.setToolTip(tips.FOLDER_CLEAR)
        self.addWidget(self.label, 1)
        self.addWidget(self.choose)
        self.addWidget(self.clear)
        self.buttons = (self.choose, self.clear)


class PairsPanel(QWidget):
    """Training and validation pairs of one :class:`FinetuneState`, from ``viewer``'s layers.

    ``error`` carries a sentence for the user; ``ask_folder(title)`` returns a folder or None.
    """

    error = Signal(str)

    def __init__(self, state: FinetuneState, viewer, ask_folder=lambda title: None, parent=None):
        super().__init__(parent)
        self.state, self.viewer, self._ask_folder = state, viewer, ask_folder
        self._unfold_after_run: list | None = None
        self._gt: list = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.train_section = Section("Training data (corrected annotations)")
        v = QVBoxLayout(self.train_section.body)
        v.setContentsMargins(4, 0, 0, 0)
        self.train_list = _pair_list(tips.TRAIN_LIST)
        v.addWidget(self.train_list)
        self.train_folder = _FolderRow(tips.TRAIN_FOLDER)
        v.addLayout(self.train_folder)
        lay.addWidget(self.train_section)
        self.val_section = Section("Validation (ground truth, optional)")
        v = QVBoxLayout(self.val_section.body)
        v.setContentsMargins(4, 0, 0, 0)
        self.val_list = _pair_list(tips.VAL_LIST)
        v.addWidget(self.val_list)
        v.addLayout(self._add_row())
        self.val_folder = _FolderRow(tips.VAL_FOLDER)
        v.addLayout(self.val_folder)
        lay.addWidget(self.val_section)
        self.train_folder_label, self.val_folder_label = self.train_folder.label, self.val_folder.label
        self._connect()

    def _add_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.val_image_combo = QComboBox()
        self.val_image_combo.setToolTip(tips.VAL_IMAGE)
        self.val_gt_combo = QComboBox()
        self.val_gt_combo.setToolTip(tips.VAL_GT)
        for combo in (self.val_image_combo, self.val_gt_combo):
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)
            row.addWidget(combo, 1)
        self.val_add_button = QPushButton("Add")
        self.val_add_button.setToolTip(tips.VAL_ADD)
        row.addWidget(self.val_add_button)
        return row

    def _connect(self) -> None:
        self.train_folder.choose.clicked.connect(lambda *_: self.choose_folder("train"))
        self.train_folder.clear.clicked.connect(lambda *_: self.set_train_folder(None))
        self.val_folder.choose.clicked.connect(lambda *_: self.choose_folder("val"))
        self.val_folder.clear.clicked.connect(lambda *_: self.set_val_folder(None))
        self.val_add_button.clicked.connect(self.add_validation_pair)
        self.train_list.itemChanged.connect(self._on_item_changed)
        self.val_list.itemChanged.connect(self._on_item_changed)
        self.state.events.pairs.connect(self.refresh)
        self.state.events.running.connect(self._set_running)

    def _set_running(self, running: bool) -> None:
        """The lists are locked during a run, and folded so the loss plot fits the screen."""
        for w in (
            self.train_list,
            self.val_list,
            self.val_add_button,
            *self.train_folder.buttons,
            *self.val_folder.buttons,
        ):
            w.setEnabled(not running)
        if running and self._unfold_after_run is None:
            self._unfold_after_run = [s for s in (self.train_section, self.val_section) if s.is_expanded()]
            for section in self._unfold_after_run:
                section.set_expanded(False)
        elif not running and self._unfold_after_run is not None:
            for section in self._unfold_after_run:
                section.set_expanded(True)
            self._unfold_after_run = None

    # ------------------------------------------------------------------ viewer -> lists

    def _images(self) -> list:
        return [lyr for lyr in self.viewer.layers if _is_image(lyr)]

    def train_candidates(self) -> list[tuple]:
        """(image, vessels layer, FOV layer or None) for every image with a corrected vessels layer."""
        return train_candidates(self.viewer.layers, self._images())

    def val_candidates(self) -> list[tuple]:
        """(image, ground truth, FOV layer or None): linked ones, then those added by hand."""
        return val_candidates(self.viewer.layers, self._images(), self.state.manual_val)

    def _fill_list(self, lst: QListWidget, key: str, entries, default) -> None:
        lst.blockSignals(True)
        lst.clear()
        for entry in entries:
            image, masks, fov = entry
            what = f"{masks.name} + {fov.name}" if fov is not None else f"{masks.name} (FOV estimated)"
            item = QListWidgetItem(f"{image.name}  —  {what}")
            item.setToolTip(item.text())
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            checked = self.state.is_checked(key, image, masks, default(entry))
            item.setCheckState(Qt.Checked if checked else Qt.Unchecked)
            item.setData(Qt.UserRole, (key, entry))
            lst.addItem(item)
        if not entries:
            item = QListWidgetItem("(none in the viewer)" if key == "train" else "(none)")
            item.setFlags(Qt.NoItemFlags)
            lst.addItem(item)
        lst.blockSignals(False)

    def _on_item_changed(self, item) -> None:
        data = item.data(Qt.UserRole)
        if data:
            key, (image, masks, _) = data
            self.state.set_checked(key, image, masks, item.checkState() == Qt.Checked)

    def refresh(self, gt_candidates=None) -> None:
        """Re-list the pairs, the folders' lines and the validation combos (``gt_candidates``:
        labels layers offered as ground truth; the last ones given when None)."""
        if gt_candidates is not None:
            self._gt = gt_candidates
        train, val = self.train_candidates(), self.val_candidates()
        val_ids = {id(e[0]) for e in val}
        # An image with a ground truth is a validation image: it stays ticked there, and its
        # corrected layer is offered for training unticked (never both by default).
        self._fill_list(self.train_list, "train", train, lambda e: id(e[0]) not in val_ids)
        self._fill_list(self.val_list, "val", val, lambda e: True)
        self.train_section.set_summary(f"{len(_checked_entries(self.train_list))} ticked")
        self.val_section.set_summary(f"{len(_checked_entries(self.val_list))} ticked")
        for combo, layers in ((self.val_image_combo, self._images()), (self.val_gt_combo, self._gt)):
            keep = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            for lyr in layers:
                combo.addItem(lyr.name, lyr)
            idx = next((i for i in range(combo.count()) if combo.itemData(i) is keep), 0)
            combo.setCurrentIndex(idx if combo.count() else -1)
            combo.blockSignals(False)

    def set_checked(self, which: str, image_name: str, checked: bool) -> None:
        """Tick or untick the pair of ``image_name`` in the 'train' or 'val' list."""
        lst = self.train_list if which == "train" else self.val_list
        for i in range(lst.count()):
            data = lst.item(i).data(Qt.UserRole)
            if data and data[1][0].name == image_name:
                lst.item(i).setCheckState(Qt.Checked if checked else Qt.Unchecked)
                return
        raise ValueError(f"no {which} pair for {image_name!r}")

    def add_validation_pair(self, *_, image=None, ground_truth=None) -> bool:
        image = image if image is not None else self.val_image_combo.currentData()
        gt = ground_truth if ground_truth is not None else self.val_gt_combo.currentData()
        if image is None or gt is None:
            self.error.emit("Choose an image layer and its ground-truth labels layer to add a validation pair.")
            return False
        self.state.add_validation(image, gt)
        return True

    # ------------------------------------------------------------------ folders

    def choose_folder(self, which: str) -> None:
        title = {
            "train": "Folder of images with saved annotations",
            "val": "Folder of validation images with ground truth",
        }[which]
        folder = self._ask_folder(title)
        if folder is not None:
            self.state.set_folder(which, folder)
            self._show_folders()

    def set_train_folder(self, folder) -> None:
        self.state.set_folder("train", folder)
        self._show_folders()

    def set_val_folder(self, folder) -> None:
        self.state.set_folder("val", folder)
        self._show_folders()

    def _show_folders(self) -> None:
        self.train_folder.label.setText(folder_text(self.state.train_folder))
        self.val_folder.label.setText(folder_text(self.state.val_folder))

    def collect_pairs(self) -> tuple[list, list, list[str]]:
        """(training pairs, validation pairs, names without a FOV mask); InputError if unusable."""
        train = [layer_pair(*entry) for entry in _checked_entries(self.train_list)]
        if self.state.train_folder is not None:
            train += pairs_of_folder(self.state.train_folder)
        if not train:
            raise InputError(NO_PAIRS_MESSAGE)
        val = [layer_pair(*entry) for entry in _checked_entries(self.val_list)]
        if self.state.val_folder is not None:
            val += pairs_of_folder(self.state.val_folder)
        no_fov = [p.name for p in train + val if getattr(p, "fov", None) is None and not hasattr(p, "dataset")]
        return train, val, no_fov


def _is_image(layer) -> bool:
    return isinstance(layer, Image) and _roles.role_of(layer) not in ("probability",)


def _checked_entries(lst: QListWidget) -> list[tuple]:
    out = []
    for i in range(lst.count()):
        item = lst.item(i)
        data = item.data(Qt.UserRole)
        if data and item.checkState() == Qt.Checked:
            out.append(data[1])
    return out
