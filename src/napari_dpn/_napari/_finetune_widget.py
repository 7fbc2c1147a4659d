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
"Segment vessels" widget lists it at once.  Training runs at the base model's working scale, as
segmentation resamples photographs (``training.finetune_config``), and the card keeps the base's
scale, fusion and threshold rule.  At the end (and after a cancel) a table compares Se, Sp, Acc,
AUC and F1 inside the FOV on the validation images before and after, each model at the threshold
it is used with.  *Resume…* trains on from a cancelled or finished run's checkpoint.  Closing the viewer or the dock
during a run cancels it the same way (see :mod:`._dock`): no model is saved after the window
is gone, and the checkpoint is the last good state.

Errors never raise into napari: they are shown with ``show_error`` and in the status line.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, QTimer
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
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from ._dock import DockWidget, Section, one_line_label, wrapped_label
from ._finetune_pairs import NO_PAIRS_MESSAGE, LayerPair, PairsMixin, _folder_row, _pair_list
from ._finetune_results import METRIC_ROWS, ROW_HEIGHT, ResultsMixin
from ._finetune_running import CHECKPOINT_EVERY, NAME_RE, RunningMixin, _Bridge, _Run
from ._loss_plot import LossPlot
from ._model_picker import DeviceCombo, ModelPicker

__all__ = ["CHECKPOINT_EVERY", "NAME_RE", "NO_PAIRS_MESSAGE", "FinetuneWidget", "LayerPair", "wait"]

DEFAULT_STEPS = 300
DEFAULT_CROP = 256
DEFAULT_LR = "1e-4"


class FinetuneWidget(PairsMixin, RunningMixin, ResultsMixin, DockWidget):
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
        self.resume_button = QPushButton("Resume…")
        self.resume_button.setToolTip(
            "Train on from a checkpoint up to the Steps set: the last cancelled or finished run, "
            "else a .ckpt.pt file you pick (trained on the ticked pairs). Never replaces a model."
        )
        row.addWidget(self.run_button, 1)
        row.addWidget(self.resume_button)
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
            "Inside the FOV, pooled over the validation images at the model's working scale, each "
            "model at the threshold it is used with: Before at the base model's card threshold, "
            "After at the new card's (max accuracy on the validation images, the rule of the "
            "shipped models); AUC is threshold-free."
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
        self.resume_button.clicked.connect(self.resume)
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

    # ------------------------------------------------------------------ models and devices

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self.is_running:
            self.refresh_models_soon()

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


def wait(widget: FinetuneWidget, timeout: float = 600.0) -> None:  # pragma: no cover - helper
    """Block (processing Qt events) until the widget's worker finished; for scripts."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while widget.is_running and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)
