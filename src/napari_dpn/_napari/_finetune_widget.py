"""The "Fine-tune DPN" dock widget: train a model further on corrected annotations.

Training pairs come from the viewer (an image layer with its *corrected* ``"<image> vessels"``
labels layer and, when present, its ``"<image> FOV"`` layer, as the "Segment vessels" widget
makes them; a bare network output is never a training pair: only a layer the user edited,
saved, or opened from a saved annotation) and/or from a folder of images with ``<stem>_vessels.png`` / ``<stem>_fov.png``
saved by that widget (:mod:`napari_dpn.annotations`).  Validation pairs (optional) are image
layers with a ground-truth labels layer, or a folder in the same convention; an image with a
ground truth stays a validation image (its corrected layer is listed for training unticked).

The run uses :func:`napari_dpn.training.train` in a napari worker thread: a progress bar with
the ETA, a live loss plot, Cancel (stops before the next step and keeps the checkpoint).  The
model and its card are written to the user models folder under the chosen name, so the
"Segment vessels" widget lists it at once.  At the end (and after a cancel) a table compares
Se, Sp, Acc, AUC and F1 inside the FOV on the validation images before and after, and shows the
ROC-optimal (Youden) threshold the new model's card recommends.  Closing the viewer or the dock
during a run cancels it the same way (see :mod:`._dock`): no model is saved after the window
is gone, and the checkpoint is the last good state.

Errors never raise into napari: they are shown with ``show_error`` and in the status line.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_dpn.errors import DPNError, InputError
from napari_dpn.text import duration

from . import _roles
from ._dock import DockWidget, Section, one_line_label, wrapped_label
from ._loss_plot import LossPlot
from ._model_picker import DeviceCombo, ModelPicker

DEFAULT_STEPS = 300
DEFAULT_CROP = 256
DEFAULT_LR = "1e-4"
CHECKPOINT_EVERY = 100
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
METRIC_ROWS = (("se", "Se"), ("sp", "Sp"), ("acc", "Acc"), ("auc", "AUC"), ("f1", "F1"), ("threshold", "Threshold"))
ROW_HEIGHT = 24
NO_PAIRS_MESSAGE = (
    "No training pairs: segment an image with 'Segment vessels' and correct its "
    "'<image> vessels' layer, or choose a folder of saved annotations."
)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class LayerPair:
    """An image with its masks, taken from viewer layers when a run starts (``load()`` as
    :class:`napari_dpn.annotations.FilePair`, so the engine names it in its messages).

    ``image`` is the layer's pixels as they are: the engine calls ``load()`` in the worker
    thread, where the float conversion of a large photograph does not stall the viewer.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    fov: np.ndarray | None

    def load(self):
        from napari_dpn.image_io import as_rgb

        return as_rgb(self.image), self.label, self.fov


@dataclass
class _Outcome:
    """What the background job hands back (it never raises)."""

    result: object = None  # training.TrainResult
    after: dict | None = None  # validation metrics of the final (or cancelled) weights
    error: str | None = None


@dataclass
class _Run:
    """What the widget keeps of the last run (for 'Save model' after a cancel)."""

    config: object
    train_pairs: list
    val_pairs: list
    init: str
    out_dir: Path
    description: str
    result: object = None
    before: dict | None = None
    after: dict | None = None
    saved: bool = False


class _Bridge(QObject):
    """Carries training events from the worker thread to the GUI thread (queued signal)."""

    event = Signal(object)


def _layer_data(layer) -> np.ndarray:
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.asarray(data)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.4f}"


def _pair_list(tooltip: str) -> QListWidget:
    """A short list of tickable (image, masks) pairs; the training and validation boxes share it."""
    lst = QListWidget()
    lst.setSelectionMode(QAbstractItemView.NoSelection)
    lst.setMaximumHeight(58)
    lst.setToolTip(tooltip)
    lst.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # long names are elided instead
    lst.setTextElideMode(Qt.ElideMiddle)
    return lst


def _folder_row(box_layout, tooltip: str) -> tuple[QLabel, QToolButton, QToolButton]:
    """'Folder: none'  […] [×] under a pair list; returns (label, choose button, clear button)."""
    row = QHBoxLayout()
    label = wrapped_label("Folder: none")
    choose = QToolButton()
    choose.setText("…")
    choose.setToolTip(tooltip)
    clear = QToolButton()
    clear.setText("×")
    clear.setToolTip("Do not use a folder.")
    row.addWidget(label, 1)
    row.addWidget(choose)
    row.addWidget(clear)
    box_layout.addLayout(row)
    return label, choose, clear


# --------------------------------------------------------------------------- widget


class FinetuneWidget(DockWidget):
    """Dock widget: pick pairs and settings, train in the background, compare, save."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self._bridge = _Bridge()
        self._bridge.event.connect(self._on_event)
        self._train_folder: Path | None = None
        self._val_folder: Path | None = None
        self._manual_val: list[tuple] = []  # (image layer, ground-truth layer) added by hand
        self._checked: dict[tuple, bool] = {}  # (list, id(image layer)) -> user's check state
        self._name_edited = False
        self._unfold_after_run: list | None = None
        self.run_info: _Run | None = None
        self.last_error: str | None = None
        self._start_up()

    # ------------------------------------------------------------------ UI

    LAYER_ATTR_EVENTS = ("name", "metadata")  # "corrected" lives in the vessels layer's metadata
    IGNORED_ROLES = ("probability", "errors")

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.body = body = QWidget()
        scroll.setWidget(body)
        outer.addWidget(scroll)
        lay = QVBoxLayout(body)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.setSpacing(4)

        # Training data.
        self.train_section = box = Section("Training data (corrected annotations)")
        v = QVBoxLayout(box.body)
        v.setContentsMargins(4, 0, 0, 0)
        self.train_list = _pair_list(
            "Image layers whose '<image> vessels' layer you corrected "
            "(edited, saved, or opened from a saved annotation). Ticked "
            "ones are trained on."
        )
        v.addWidget(self.train_list)
        self.train_folder_label, self.train_folder_button, self.train_folder_clear = _folder_row(
            v, "A folder of images with <image>_vessels.png (and <image>_fov.png) saved by 'Segment vessels'."
        )
        lay.addWidget(box)

        # Validation data.
        self.val_section = box = Section("Validation (ground truth, optional)")
        v = QVBoxLayout(box.body)
        v.setContentsMargins(4, 0, 0, 0)
        self.val_list = _pair_list(
            "Image layers with a ground-truth labels layer. Metrics before "
            "and after and the recommended threshold are computed on them."
        )
        v.addWidget(self.val_list)
        row = QHBoxLayout()
        self.val_image_combo = QComboBox()
        self.val_image_combo.setToolTip("An image layer to validate on.")
        self.val_gt_combo = QComboBox()
        self.val_gt_combo.setToolTip("Its ground-truth annotation (a labels layer).")
        for combo in (self.val_image_combo, self.val_gt_combo):
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)
        self.val_add_button = QPushButton("Add")
        self.val_add_button.setToolTip("Add this image + ground truth to the validation list.")
        row.addWidget(self.val_image_combo, 1)
        row.addWidget(self.val_gt_combo, 1)
        row.addWidget(self.val_add_button)
        v.addLayout(row)
        self.val_folder_label, self.val_folder_button, self.val_folder_clear = _folder_row(
            v, "A folder of images with <image>_vessels.png ground truth (and <image>_fov.png)."
        )
        lay.addWidget(box)

        # Settings: folded, one summary line (the defaults suit a first fine-tune).
        self.settings_section = box = Section("Settings", expanded=False)
        form = QFormLayout(box.body)
        form.setContentsMargins(4, 0, 0, 0)
        self.model_picker = ModelPicker(tooltip="The model to start from.")
        form.addRow("Base model", self.model_picker)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(DEFAULT_STEPS)
        self.steps_spin.setToolTip(
            "Optimisation steps (one random crop each). A few hundred adapt the shipped model to your images."
        )
        self.crop_spin = QSpinBox()
        self.crop_spin.setRange(16, 4096)
        self.crop_spin.setSingleStep(32)
        self.crop_spin.setValue(DEFAULT_CROP)
        self.crop_spin.setToolTip(
            "Side of the random training crop in pixels (the paper used "
            "512); smaller is faster per step. Images smaller than the "
            "crop are padded."
        )
        row = QHBoxLayout()
        row.addWidget(self.steps_spin, 1)
        row.addWidget(QLabel("Crop"))
        row.addWidget(self.crop_spin, 1)
        form.addRow("Steps", row)
        self.lr_edit = QLineEdit(DEFAULT_LR)
        self.lr_edit.setToolTip("Adam learning rate. 1e-4 fine-tunes gently; the paper trained from scratch with 1e-3.")
        self.augment_check = QCheckBox("Augment")
        self.augment_check.setChecked(True)
        self.augment_check.setToolTip(
            "The paper's 11 offline views (rotations, flips) and random mirroring of the crops."
        )
        row = QHBoxLayout()
        row.addWidget(self.lr_edit, 1)
        row.addWidget(self.augment_check)
        form.addRow("Learning rate", row)
        self.device_combo = DeviceCombo("Where training runs; 'auto' picks a GPU when present.")
        form.addRow("Device", self.device_combo)
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip(
            "Name of the new model in the user models folder (letters, digits, '.', '_', '-', '+')."
        )
        form.addRow("Save as", self.name_edit)
        self.folder_info = one_line_label(note=True)
        form.addRow("", self.folder_info)
        lay.addWidget(box)

        # Run.
        self.run_section = box = Section("Run")
        v = QVBoxLayout(box.body)
        v.setContentsMargins(4, 0, 0, 0)
        row = QHBoxLayout()
        self.run_button = QPushButton("Fine-tune")
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop before the next step; the checkpoint is kept.")
        row.addWidget(self.run_button, 1)
        row.addWidget(self.cancel_button)
        v.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        v.addWidget(self.progress)
        self.status = wrapped_label("Tick the training pairs and press 'Fine-tune'.")
        v.addWidget(self.status)
        self.loss_plot = LossPlot(theme=getattr(self.viewer, "theme", None))
        self.loss_plot.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        v.addWidget(self.loss_plot)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(200)
        self.log.setMaximumHeight(56)
        self.log.setStyleSheet("font-size: small;")
        self.log.setVisible(False)  # shown once a run has something to say
        v.addWidget(self.log)
        lay.addWidget(box)

        # Results: folded until a run has some.
        self.results_section = box = Section("Validation: before → after", expanded=False)
        v = QVBoxLayout(box.body)
        v.setContentsMargins(4, 0, 0, 0)
        self.table = QTableWidget(len(METRIC_ROWS), 3)
        self.table.setHorizontalHeaderLabels(["Before", "After", "Change"])
        self.table.setVerticalHeaderLabels([label for _, label in METRIC_ROWS])
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.horizontalHeader().setFixedHeight(ROW_HEIGHT + 2)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(ROW_HEIGHT)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.table.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        self.table.setToolTip(
            "Inside the FOV, pooled over the validation images, at each "
            "model's ROC-optimal (Youden) threshold; AUC is threshold-free. "
            "Threshold: that Youden threshold."
        )
        self.table.setFixedHeight(ROW_HEIGHT + 2 + ROW_HEIGHT * len(METRIC_ROWS) + 2 * self.table.frameWidth() + 2)
        v.addWidget(self.table)
        self.result_label = wrapped_label("No run yet.", selectable=True)
        v.addWidget(self.result_label)
        self.save_button = QPushButton("Save model from checkpoint")
        self.save_button.setToolTip(
            "After a cancel: save the weights of the last checkpoint as a model (with its card and threshold)."
        )
        self.save_button.setVisible(False)
        v.addWidget(self.save_button)
        lay.addWidget(box)
        lay.addStretch(1)
        # Never narrower than the body: a horizontal scroll bar (or clipped buttons) would hide
        # half of a row on a laptop screen.
        self.scroll.setMinimumWidth(body.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())

        for w in (self.steps_spin, self.crop_spin):
            w.valueChanged.connect(self._update_settings_summary)
        for w in (self.lr_edit, self.name_edit):
            w.textChanged.connect(self._update_settings_summary)
        self.augment_check.toggled.connect(self._update_settings_summary)
        self.device_combo.currentTextChanged.connect(self._update_settings_summary)
        self.train_folder_button.clicked.connect(self.choose_train_folder)
        self.train_folder_clear.clicked.connect(lambda *_: self.set_train_folder(None))
        self.val_folder_button.clicked.connect(self.choose_val_folder)
        self.val_folder_clear.clicked.connect(lambda *_: self.set_val_folder(None))
        self.val_add_button.clicked.connect(self.add_validation_pair)
        self.train_list.itemChanged.connect(self._on_item_changed)
        self.val_list.itemChanged.connect(self._on_item_changed)
        self.model_picker.changed.connect(self._on_model_changed)
        self.model_picker.error.connect(self._error)
        self.name_edit.textEdited.connect(self._on_name_edited)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(self.save_checkpoint_as_model)

    def _update_settings_summary(self, *_) -> None:
        card = self.current_card() if hasattr(self, "model_picker") else None
        parts = [
            card.name if card is not None else "no base model",
            f"{self.steps_spin.value()} steps",
            f"crop {self.crop_spin.value()}",
            f"lr {self.lr_edit.text().strip() or '?'}",
            self.device_combo.currentText() or "auto",
        ]
        if not self.augment_check.isChecked():
            parts.append("no augment")
        name = self.name_edit.text().strip()
        self.settings_section.set_summary(" · ".join(parts) + (f" → {name}" if name else ""))

    def _show_results(self) -> None:
        self.results_section.set_expanded(True)
        QTimer.singleShot(0, lambda: self.alive and self.scroll.ensureWidgetVisible(self.results_section))

    # ------------------------------------------------------------------ viewer -> lists

    def _linked_labels(self, image, role: str, name: str):
        """The labels layer of ``role`` belonging to ``image`` (by metadata, else by name)."""
        by_name = None
        for lyr in self.viewer.layers:
            if not isinstance(lyr, Labels):
                continue
            info = _roles.info_of(lyr)
            if info.get("role") == role and info.get("image") == image.name:
                return lyr
            if lyr.name == name and info.get("role") in (role, None):
                by_name = lyr
        return by_name

    def vessels_layer(self, image):
        return self._linked_labels(image, "vessels", _roles.vessels_name(image.name))

    def fov_layer(self, image):
        return self._linked_labels(image, "fov", _roles.fov_name(image.name))

    def ground_truth_layer(self, image):
        return self._linked_labels(image, "ground_truth", _roles.ground_truth_name(image.name))

    def train_candidates(self) -> list[tuple]:
        """(image, vessels layer, FOV layer or None) for every image with a *corrected* vessels
        layer: edited, saved, or opened from a saved annotation.  A network output nobody
        looked at is not an annotation."""
        out = []
        for image in self._image_layers():
            vessels = self.vessels_layer(image)
            if vessels is not None and _roles.is_corrected(vessels):
                out.append((image, vessels, self.fov_layer(image)))
        return out

    def val_candidates(self) -> list[tuple]:
        """(image, ground truth, FOV layer or None): linked ones, then those added by hand."""
        layers = list(self.viewer.layers)
        out, seen = [], set()
        for image in self._image_layers():
            gt = self.ground_truth_layer(image)
            if gt is not None:
                out.append((image, gt, self.fov_layer(image)))
                seen.add((id(image), id(gt)))
        for image, gt in self._manual_val:
            if image in layers and gt in layers and (id(image), id(gt)) not in seen:
                out.append((image, gt, self.fov_layer(image)))
                seen.add((id(image), id(gt)))
        return out

    def _fill_list(self, lst: QListWidget, key: str, entries, default) -> None:
        lst.blockSignals(True)
        lst.clear()
        for entry in entries:
            image, masks, fov = entry
            what = f"{masks.name} + {fov.name}" if fov is not None else f"{masks.name} (FOV estimated)"
            item = QListWidgetItem(f"{image.name}  —  {what}")
            item.setToolTip(item.text())
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            checked = self._checked.get((key, id(image), id(masks)), default(entry))
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
            self._checked[(key, id(image), id(masks))] = item.checkState() == Qt.Checked

    def refresh_layers(self) -> None:
        """Re-list the training and validation pairs and the validation combos."""
        train = self.train_candidates()
        val = self.val_candidates()
        val_ids = {id(e[0]) for e in val}
        # An image with a ground truth is a validation image: it stays ticked there, and its
        # corrected layer is offered for training unticked (never both by default).
        self._fill_list(self.train_list, "train", train, lambda e: id(e[0]) not in val_ids)
        self._fill_list(self.val_list, "val", val, lambda e: True)
        n_train = sum(1 for e in self._checked_entries(self.train_list))
        n_val = sum(1 for e in self._checked_entries(self.val_list))
        self.train_section.set_summary(f"{n_train} ticked")
        self.val_section.set_summary(f"{n_val} ticked")
        for combo, layers in ((self.val_image_combo, self._image_layers()), (self.val_gt_combo, self._gt_candidates())):
            keep = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            for lyr in layers:
                combo.addItem(lyr.name, lyr)
            idx = next((i for i in range(combo.count()) if combo.itemData(i) is keep), 0)
            combo.setCurrentIndex(idx if combo.count() else -1)
            combo.blockSignals(False)

    def _checked_entries(self, lst: QListWidget) -> list[tuple]:
        out = []
        for i in range(lst.count()):
            item = lst.item(i)
            data = item.data(Qt.UserRole)
            if data and item.checkState() == Qt.Checked:
                out.append(data[1])
        return out

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
            self._error("Choose an image layer and its ground-truth labels layer to add a validation pair.")
            return False
        self._manual_val.append((image, gt))
        self._checked[("val", id(image), id(gt))] = True
        self.refresh_layers()
        return True

    # ------------------------------------------------------------------ folders

    def choose_train_folder(self, *_) -> None:
        folder = self._ask_folder("Folder of images with saved annotations")
        if folder is not None:
            self.set_train_folder(folder)

    def choose_val_folder(self, *_) -> None:
        folder = self._ask_folder("Folder of validation images with ground truth")
        if folder is not None:
            self.set_val_folder(folder)

    @staticmethod
    def _folder_text(folder: Path | None) -> str:
        if folder is None:
            return "Folder: none"
        from napari_dpn.annotations import find_pairs

        pairs = find_pairs(folder)
        no_fov = sum(1 for p in pairs if p[2] is None)
        extra = f", {no_fov} without FOV mask (estimated)" if no_fov else ""
        return f"Folder: {folder} — {len(pairs)} annotated image(s){extra}"

    def set_train_folder(self, folder) -> None:
        self._train_folder = Path(folder).expanduser() if folder else None
        self.train_folder_label.setText(self._folder_text(self._train_folder))

    def set_val_folder(self, folder) -> None:
        self._val_folder = Path(folder).expanduser() if folder else None
        self.val_folder_label.setText(self._folder_text(self._val_folder))

    # ------------------------------------------------------------------ models and devices

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self.is_running:
            self.refresh_models()

    def _on_model_changed(self, *_) -> None:
        if not self._name_edited:
            self.name_edit.setText(self.default_name())
        self._update_folder_info()
        self._update_settings_summary()

    def default_name(self) -> str:
        card = self.current_card()
        base = card.name if card is not None else "dpn"
        return f"{base}-ft-{datetime.now().strftime('%Y%m%d-%H%M')}"

    def _on_name_edited(self, text: str) -> None:
        self._name_edited = bool(text.strip())
        self._update_folder_info()

    def _update_folder_info(self) -> None:
        from napari_dpn.models import user_models_dir

        folder = user_models_dir()
        try:
            shown = "~/" + str(folder.relative_to(Path.home()))
        except ValueError:
            shown = str(folder)
        name = self.name_edit.text().strip() or "…"
        self.folder_info.setText(f"in {shown}")
        self.folder_info.setToolTip(f"{folder / name}.safetensors and its card {name}.json")

    # ------------------------------------------------------------------ collecting a run

    def _error(self, message: str) -> None:
        self.last_error = message
        self.status.setText(message)
        show_error(message)

    def _layer_pair(self, image, masks, fov) -> LayerPair:
        from ._segment_widget import SegmentWidget

        data = SegmentWidget.image_data(image)  # checks only; converted in the worker
        label = _layer_data(masks) > 0
        fov_mask = _layer_data(fov) > 0 if fov is not None else None
        return LayerPair(image.name, data, label, fov_mask)

    def collect_pairs(self) -> tuple[list, list, list[str]]:
        """(training pairs, validation pairs, names without a FOV mask); InputError if unusable."""
        from napari_dpn.annotations import folder_pairs

        train, val, no_fov = [], [], []
        for image, vessels, fov in self._checked_entries(self.train_list):
            train.append(self._layer_pair(image, vessels, fov))
        if self._train_folder is not None:
            train += folder_pairs(self._train_folder)
        if not train:
            raise InputError(NO_PAIRS_MESSAGE)
        for image, gt, fov in self._checked_entries(self.val_list):
            val.append(self._layer_pair(image, gt, fov))
        if self._val_folder is not None:
            val += folder_pairs(self._val_folder)
        no_fov = [p.name for p in train + val if p.fov is None]
        return train, val, no_fov

    def make_config(self):
        """The TrainConfig of the settings; InputError for unusable values."""
        from napari_dpn.models import list_models, shipped_models_dir
        from napari_dpn.training import TrainConfig

        text = self.lr_edit.text().strip()
        try:
            lr = float(text)
        except ValueError:
            lr = float("nan")
        if not (math.isfinite(lr) and lr > 0):
            raise InputError(f"The learning rate must be a positive number such as 1e-4, not '{text}'.")
        name = self.name_edit.text().strip()
        if not NAME_RE.match(name):
            raise InputError(
                "Give the new model a name of letters, digits, '.', '_', '-' or '+' (no spaces or slashes)."
            )
        shipped = shipped_models_dir()
        if (
            any(c.name == name and Path(c.extra.get("path", "")).parent == shipped for c in list_models())
            or (shipped / f"{name}.safetensors").exists()
        ):
            raise InputError(f"'{name}' is a shipped model; choose another name for the fine-tuned one.")
        steps = int(self.steps_spin.value())
        return TrainConfig(
            steps=steps,
            crop=int(self.crop_spin.value()),
            lr=lr,
            augment=self.augment_check.isChecked(),
            device=self.device_combo.currentText() or "auto",
            checkpoint_every=CHECKPOINT_EVERY,
            val_every=0,
            name=name,
        )

    # ------------------------------------------------------------------ running

    def run(self, *_):
        """Start a fine-tuning run in a background worker; returns the worker or None."""
        if self._worker is not None:
            return None
        from napari_dpn.models import user_models_dir

        try:
            config = self.make_config()
            train, val, no_fov = self.collect_pairs()
        except DPNError as exc:
            self._error(str(exc))
            return None
        data = self.model_combo.currentData()
        if not isinstance(data, tuple):
            self._error("No base model chosen: pick one in the list or use Browse….")
            return None
        out_dir = user_models_dir()
        target = out_dir / f"{config.name}.safetensors"
        if target.exists() and not self._confirm(
            "Replace model?",
            f"A model named '{config.name}' already exists in {out_dir}. Replace it when this run finishes?",
            ok="Replace",
        ):
            self.status.setText("Not started: choose another name.")
            return None
        if no_fov:
            show_info(f"No FOV mask for {', '.join(no_fov)}: the field of view will be estimated from the image.")
        names = ", ".join(p.name for p in train[:5]) + ("…" if len(train) > 5 else "")
        description = f"{len(train)} corrected image(s) ({names})"
        self.run_info = _Run(
            config=config, train_pairs=train, val_pairs=val, init=data[1], out_dir=out_dir, description=description
        )
        self._start(config, resume=None)
        return self._worker

    def _start(self, config, resume) -> None:
        run = self.run_info
        self.last_error = None
        worker = self._start_worker(
            self._job,
            f"fine-tuning '{config.name}'",
            config,
            run.train_pairs,
            run.val_pairs,
            run.init,
            run.out_dir,
            resume,
            run.description,
            returned=self._on_returned,
            finished=self._on_finished,
        )
        self._set_running(True)
        if resume is None:
            self.loss_plot.clear()
            self.log.clear()
            self._clear_table()
            self.result_label.setText("Running…")
            self.save_button.setVisible(False)
        self.progress.setRange(0, 0)  # busy until the first step
        self.progress.setFormat("preparing…")
        self.status.setText(
            f"{'Saving' if resume else 'Fine-tuning'} '{config.name}' from {Path(str(run.init)).stem} on "
            f"{len(run.train_pairs)} image(s)"
            + (f", validating on {len(run.val_pairs)}" if run.val_pairs else ", no validation images")
            + f" ({config.device})…"
        )
        worker.start()

    def cancel(self, *_) -> None:
        """Stop before the next step; the engine writes a checkpoint."""
        if self._worker is not None and self.alive:
            self._cancel.set()
            self.cancel_button.setEnabled(False)
            self.status.setText("Cancelling: stopping after the current step…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        # While it runs the pair lists are locked: fold them so the loss plot fits the screen.
        if running and self._unfold_after_run is None:
            self._unfold_after_run = [sec for sec in (self.train_section, self.val_section) if sec.is_expanded()]
            for sec in self._unfold_after_run:
                sec.set_expanded(False)
            self.run_section.set_expanded(True)
        elif not running and self._unfold_after_run is not None:
            for sec in self._unfold_after_run:
                sec.set_expanded(True)
            self._unfold_after_run = None
        for w in (
            self.model_combo,
            self.refresh_button,
            self.steps_spin,
            self.crop_spin,
            self.lr_edit,
            self.augment_check,
            self.device_combo,
            self.name_edit,
            self.train_list,
            self.val_list,
            self.train_folder_button,
            self.train_folder_clear,
            self.val_folder_button,
            self.val_folder_clear,
            self.val_add_button,
            self.save_button,
        ):
            w.setEnabled(not running)

    def _job(self, config, train_pairs, val_pairs, init, out_dir, resume, description, should_stop) -> _Outcome:
        """Background work: train (or finish from a checkpoint).  Never raises."""
        from napari_dpn.training import train

        try:
            result = train(
                config,
                train_pairs,
                val_pairs or None,
                init=init,
                out_dir=out_dir,
                resume=resume,
                callback=self._bridge.event.emit,
                should_stop=should_stop,
                description=description,
            )
            after = result.metrics_after
            if result.cancelled and val_pairs and self.alive:
                after = self._evaluate(result, val_pairs, config.device)
            return _Outcome(result=result, after=after)
        except DPNError as exc:
            return _Outcome(error=str(exc))
        except MemoryError:
            return _Outcome(error=f"Out of memory on {config.device}: choose a smaller crop or 'cpu' as device.")
        except Exception as exc:  # noqa: BLE001 - shown as a notification, never a traceback
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if "out of memory" in text.lower():
                return _Outcome(error=f"Out of memory on {config.device}: choose a smaller crop or 'cpu' as device.")
            return _Outcome(error=f"Fine-tuning failed ({type(exc).__name__}: {text}).")

    @staticmethod
    def _evaluate(result, val_pairs, device) -> dict | None:
        """Validation metrics of a cancelled run's weights (the engine validates only at the end)."""
        from napari_dpn import metrics, training
        from napari_dpn.inference import predict
        from napari_dpn.models import LoadedModel, ModelCard

        try:
            ck = training.load_checkpoint(result.checkpoint)
            pairs = training.prepare_pairs(val_pairs, "validation")
            card = ModelCard(name="checkpoint", architecture=ck["architecture"], input=dict(ck["input"]))
            loaded = LoadedModel(model=result.model, card=card)
            probs = [predict(loaded, p.rgb, device=device).probability for p in pairs]
            report = metrics.evaluate(
                probs, [p.label for p in pairs], [p.fov for p in pairs], names=[p.name for p in pairs]
            )
            return training.summarise_metrics(report)
        except DPNError:
            return None

    # ------------------------------------------------------------------ events (GUI thread)

    def _log(self, text: str) -> None:
        self.log.setVisible(True)
        self.log.appendPlainText(text)

    def _on_event(self, event) -> None:
        if not self.alive:
            return
        from napari_dpn import training as t

        if isinstance(event, t.StepEvent):
            if self.progress.maximum() != event.total:
                self.progress.setRange(0, event.total)
            self.progress.setValue(event.step)
            self.progress.setFormat(
                f"step {event.step}/{event.total} · "
                f"{event.seconds_per_step:.2f} s/step · ETA "
                f"{duration(event.eta_seconds)}"
            )
            self.loss_plot.add(event.step, event.loss, event.head_losses)
        elif isinstance(event, t.ValidationEvent):
            m = event.metrics
            self._log(f"step {event.step}: AUC {m['auc']:.4f}, F1 {m['f1']:.4f}")
        elif isinstance(event, t.MessageEvent):
            self._log(event.text)
        elif isinstance(event, t.CheckpointEvent):
            self._log(f"checkpoint at step {event.step}: {event.path.name}")
        elif isinstance(event, t.CancelledEvent):
            self._log(f"stopped at step {event.step}")
            self.progress.setFormat(f"stopped at step {event.step} · evaluating…")
        elif isinstance(event, t.DoneEvent):
            self._log(f"saved {event.model_path.name}")

    def _on_finished(self) -> None:
        if not self.alive:
            return
        self._worker = None
        self._set_running(False)
        self.loss_plot.redraw(force=True)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def _on_returned(self, out: _Outcome) -> None:
        if not self.alive:
            return
        self.loss_plot.redraw(force=True)
        run = self.run_info
        if out.error:
            self.progress.setFormat("stopped")
            self.result_label.setText(out.error)
            self._error(out.error)
            return
        res = out.result
        run.result = res
        run.before = res.metrics_before if res.metrics_before is not None else run.before
        run.after = out.after
        self._fill_table(run.before, run.after)
        self._show_results()
        if res.cancelled:
            self.progress.setFormat(f"cancelled at step {res.steps}/{run.config.steps}")
            text = f"Cancelled at step {res.steps}; the checkpoint is kept: {res.checkpoint}. No model was saved."
            if run.after:
                text += f" These weights' ROC-optimal threshold on the validation images: {run.after['threshold']:.3f}."
            self.result_label.setText(text)
            self.status.setText(
                f"Cancelled at step {res.steps}. 'Save model from checkpoint' keeps these weights as a model."
            )
            self.save_button.setText(f"Save model from checkpoint (step {res.steps})")
            self.save_button.setVisible(True)
            show_info(f"Fine-tuning cancelled at step {res.steps}; checkpoint {res.checkpoint.name} kept.")
            return
        run.saved = True
        self.save_button.setVisible(False)
        self.progress.setRange(0, max(1, res.steps))
        self.progress.setValue(res.steps)
        self.progress.setFormat(f"done · {res.steps} steps")
        card = res.card
        rule = getattr(card, "threshold_rule", "") or "ROC-optimal"
        self.result_label.setText(
            f"Recommended threshold {res.threshold:.3f} ({rule}); stored in the model card.\n"
            f"Saved '{card.name}' to {res.model_path} — pick it in 'Segment vessels'."
        )
        self.status.setText(f"Done: '{card.name}' saved after {res.steps} steps.")
        show_info(f"Fine-tuned model '{card.name}' saved (threshold {res.threshold:.3f}).")
        self._announce_model(card.name)

    def save_checkpoint_as_model(self, *_):
        """After a cancel: finish the run at the checkpoint's step (save model, card, metrics)."""
        run = self.run_info
        if self._worker is not None or run is None or run.result is None or not run.result.cancelled:
            return None
        from dataclasses import replace

        config = replace(run.config, steps=int(run.result.steps))
        self._start(config, resume=run.result.checkpoint)
        return self._worker

    def _announce_model(self, name: str) -> None:
        """Make the new model appear in every model list at once (ours and Segment vessels')."""
        from ._model_picker import announce_new_model

        self._name_edited = False
        announce_new_model()

    # ------------------------------------------------------------------ results table

    def _clear_table(self) -> None:
        for r in range(self.table.rowCount()):
            for c in range(self.table.columnCount()):
                self.table.setItem(r, c, QTableWidgetItem(""))

    def _fill_table(self, before: dict | None, after: dict | None) -> None:
        for r, (key, _) in enumerate(METRIC_ROWS):
            b = (before or {}).get(key)
            a = (after or {}).get(key)
            change = ""
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                change = f"{a - b:+.4f}"
            for c, text in enumerate((_fmt(b), _fmt(a), change)):
                item = QTableWidgetItem(text)
                item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                self.table.setItem(r, c, item)
        if before is None and after is None:
            self.table.setToolTip(
                "No validation images: add an image with a ground-truth "
                "labels layer, or a folder, to compare before and after."
            )

    def table_values(self) -> dict[str, tuple]:
        """{metric: (before, after)} as shown (floats, or None for '–'), for tests and scripts."""
        out = {}
        for r, (key, _) in enumerate(METRIC_ROWS):
            vals = []
            for c in (0, 1):
                item = self.table.item(r, c)
                text = item.text() if item is not None else ""
                try:
                    vals.append(float(text))
                except ValueError:
                    vals.append(None)
            out[key] = tuple(vals)
        return out


def wait(widget: FinetuneWidget, timeout: float = 600.0) -> None:  # pragma: no cover - helper
    """Block (processing Qt events) until the widget's worker finished; for scripts."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while widget.is_running and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)
