"""The "Segment vessels" dock widget.

One button turns a fundus photograph into three layers (``<image>`` is the photograph's layer
name):

- ``"<image> vessel probability"``  image layer, 0..1, grey, additive blending (colours: ``_roles.style``);
- ``"<image> vessels"``             labels layer = probability >= threshold inside the FOV, ready to paint;
- ``"<image> FOV"``                 field-of-view mask (from the dataset, else estimated), hidden.

The threshold slider recomputes only ``(probability >= t) & FOV`` (the network is not run again).
With a ground-truth layer the widget shows Se/Sp/Acc/AUC/F1 inside the FOV and a
``"<image> errors"`` labels layer (1 = false positive, magenta; 2 = false negative, green).  The
ground truth follows the image: switching *Image* picks that image's own annotation (by the
reader's metadata or the name ``"<image> ground truth"``), or the one chosen for it before, or
none.

Corrections are never lost or overwritten silently:

- the first brush stroke, erase, fill or *Remove specks* on the vessels layer *locks* the
  threshold (slider and Youden button disabled, a status line says so); undoing every edit
  unlocks it again;
- only "Re-apply threshold…", after a confirmation, replaces the corrected mask by a fresh
  thresholded one;
- segmenting an edited image again (also when the edits are made while the network runs) keeps
  the corrected layer: the new result goes to the probability layer only, and the status line
  says that "Re-apply threshold…" applies it;
- a photograph whose saved annotation (``<stem>_vessels.png``, :mod:`napari_dpn.annotations`)
  lies beside it, or in the chosen save folder, resumes it as its vessels layer (edited, ready
  to save); so does an annotation opened with the napari-dpn reader.

The GUI thread only moves layers: the float conversion, the network, the FOV, the thresholded
mask, the comparison with a ground truth of a large image and speck removal run in napari
worker threads, and a new result is put into the viewer one layer per event-loop turn.

Errors never raise into napari: they are shown with ``show_error`` and in the status line.

This module holds the widget itself (its controls, the image and ground-truth lists, the model);
each section of its behaviour is a mixin in a module of its own: running the network
(``_segment_running``), the result's layers and paint edits (``_segment_layers``), threshold and
corrections (``_segment_threshold``), the ground-truth comparison (``_segment_compare``), resuming
and saving annotations (``_segment_saving``); what they share is in ``_segment_state``.  Every
name they define that scripts or tests use is importable from here too.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
)
from superqt import QLabeledDoubleSlider

from napari_dpn.scale import COMMON_FIELD_ANGLES, card_fusion

from . import _roles
from ._dock import DockWidget, Section, wrapped_label
from ._model_picker import DeviceCombo, ModelPicker
from ._segment_compare import CompareMixin as CompareMixin
from ._segment_compare import _Request as _Request
from ._segment_layers import LayersMixin as LayersMixin
from ._segment_running import RunningMixin as RunningMixin
from ._segment_running import _Bridge as _Bridge
from ._segment_saving import SavingMixin as SavingMixin
from ._segment_state import BRUSH_SIZE as BRUSH_SIZE
from ._segment_state import EDIT_CHECK_MS as EDIT_CHECK_MS
from ._segment_state import FN_COLOUR as FN_COLOUR
from ._segment_state import FP_COLOUR as FP_COLOUR
from ._segment_state import INLINE_PIXELS as INLINE_PIXELS
from ._segment_state import NO_GT as NO_GT
from ._segment_state import NO_IMAGE_MESSAGE as NO_IMAGE_MESSAGE
from ._segment_state import SPECK_PIXELS as SPECK_PIXELS
from ._segment_state import STEP_MS as STEP_MS
from ._segment_state import VESSEL_COLOUR as VESSEL_COLOUR
from ._segment_state import _label_colormap as _label_colormap
from ._segment_state import _light_worker as _light_worker
from ._segment_state import _Outcome as _Outcome
from ._segment_state import _Result as _Result
from ._segment_state import looks_like_annotation as looks_like_annotation
from ._segment_threshold import ThresholdMixin as ThresholdMixin


class SegmentWidget(RunningMixin, LayersMixin, ThresholdMixin, CompareMixin, SavingMixin, DockWidget):
    """Dock widget: pick image/model/device, segment in the background, threshold, correct, save."""

    LAYER_EVENTS = ("inserted", "removed", "moved")
    IGNORED_ROLES = ("probability", "errors")  # neither an image to segment nor a ground truth

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self._results: dict[int, _Result] = {}
        self._models: dict[tuple, object] = {}  # (path, mtime) -> LoadedModel, worker-side
        self._bridge = _Bridge()
        self._bridge.progress.connect(self._on_progress)
        self._save_folder: Path | None = None
        self._syncing = False
        self._putting = False
        self._gt_choice: dict[int, object] = {}  # id(image) -> ground truth chosen for it (or None)
        self._run_serial = 0
        self._run_started = 0.0
        self._arrival: deque | None = None  # steps still to put a new result in the viewer
        self._cmp_serial = 0
        self._cmp_worker = None
        self._cmp_pending: _Request | None = None
        self._speck_worker = None
        self._adopt_seen: set[int] = set()
        self._adopt_scheduled = False
        self._edit_timer = QTimer(self)
        self._edit_timer.setSingleShot(True)
        self._edit_timer.setInterval(EDIT_CHECK_MS)
        self._edit_timer.timeout.connect(self._check_edits)
        self._start_up()

    # ------------------------------------------------------------------ UI

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.setSpacing(4)

        self.segment_section = box = Section("Segment")
        form = QFormLayout(box.body)
        form.setContentsMargins(4, 2, 0, 2)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The fundus photograph to segment (colour or greyscale).")
        self.image_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.image_combo.setMinimumContentsLength(8)
        form.addRow("Image", self.image_combo)

        self.model_picker = ModelPicker(
            refresh_tip="Re-read the model list (picks up newly fine-tuned models).", summary=True
        )
        self.model_info = self.model_picker.summary
        form.addRow("Model", self.model_picker)
        form.addRow("", self.model_info)

        row = QHBoxLayout()
        self.device_combo = DeviceCombo("Where the network runs; 'auto' picks a GPU when present.")
        self.clahe_check = QCheckBox("CLAHE")
        self.clahe_check.setToolTip(
            "Contrast equalisation of the green channel before the "
            "network; preset from the model card (the model was trained "
            "with it or without it)."
        )
        self.fusion_check = QCheckBox("Two scales")
        self.fusion_check.setToolTip(
            "Also run the network at 1.5x the working scale and average the two maps: more of the "
            "thin vessels, for about 3x the time (skipped for very large photographs); preset from "
            "the model card (on for models trained across scales, such as dpn-universal). With the "
            "field of view 'estimate (45° if unknown)' a pass at 1/1.5x joins them: the 45 degree guess may be too fine."
        )
        row.addWidget(self.device_combo, 1)
        row.addWidget(self.clahe_check)
        row.addWidget(self.fusion_check)
        form.addRow("Device", row)

        self.field_combo = QComboBox()
        self.field_combo.addItem("estimate (45° if unknown)", None)
        for angle in COMMON_FIELD_ANGLES:
            self.field_combo.addItem(f"{angle:g}°", float(angle))
        self.field_combo.addItem("native scale (no resampling)", "native")
        self.field_combo.setToolTip(
            "The camera's field of view. The photograph is resampled to the scale the model was "
            "trained at (pixels per degree of retina = FOV diameter / this angle) and the map back "
            "to its own pixels. Unknown: 45° is assumed for a round field of view; without one "
            "(ultra-widefield) the photograph is used at its own scale."
        )
        form.addRow("Field of view", self.field_combo)

        row = QHBoxLayout()
        self.run_button = QPushButton("Segment vessels")
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.run_button, 1)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)
        form.addRow(self.progress)
        self.status = wrapped_label("Pick a photograph and press 'Segment vessels'.")
        form.addRow(self.status)
        outer.addWidget(box)

        self.threshold_section = box = Section("Threshold and corrections")
        lay = QVBoxLayout(box.body)
        lay.setContentsMargins(4, 2, 0, 2)
        row = QHBoxLayout()
        self.slider = QLabeledDoubleSlider(Qt.Horizontal)
        self.slider.setRange(0.0, 1.0)
        self.slider.setDecimals(3)
        self.slider.setSingleStep(0.01)
        self.slider.setValue(0.5)
        self.slider.setToolTip(
            "Vessel = probability >= threshold, inside the FOV. Starts at the model card's recommended value."
        )
        row.addWidget(self.slider, 1)
        self.youden_button = QPushButton("ROC-optimal")
        self.youden_button.setToolTip("Set the threshold that maximises Se + Sp - 1 (Youden) against the ground truth.")
        row.addWidget(self.youden_button)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.speck_spin = QSpinBox()
        self.speck_spin.setRange(2, 100_000)
        self.speck_spin.setValue(SPECK_PIXELS)
        self.speck_spin.setPrefix("< ")
        self.speck_spin.setSuffix(" px")
        self.speck_spin.setToolTip("Vessel pieces smaller than this many pixels (8-connected) count as specks.")
        self.speck_button = QPushButton("Remove specks")
        self.speck_button.setToolTip(
            "Erase every isolated vessel piece smaller than the size on "
            "the left, in one undoable step (Ctrl+Z). Unlike the fill "
            "tool, it never touches a connected vessel tree."
        )
        row.addWidget(self.speck_button, 1)
        row.addWidget(self.speck_spin)
        lay.addLayout(row)
        self.edit_status = wrapped_label()
        lay.addWidget(self.edit_status)
        self.reapply_button = QPushButton("Re-apply threshold…")
        self.reapply_button.setToolTip(
            "Replace the corrected vessels by probability >= threshold (discards your corrections after asking)."
        )
        lay.addWidget(self.reapply_button)
        outer.addWidget(box)

        self.compare_section = box = Section("Compare with ground truth")
        form = QFormLayout(box.body)
        form.setContentsMargins(4, 2, 0, 2)
        self.gt_combo = QComboBox()
        self.gt_combo.setToolTip(
            "A manual annotation (labels layer) of the same image. It follows the image: each image keeps its own."
        )
        self.gt_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.gt_combo.setMinimumContentsLength(8)
        form.addRow("Ground truth", self.gt_combo)
        self.metrics_label = wrapped_label("No ground truth chosen.", selectable=True)
        form.addRow(self.metrics_label)
        outer.addWidget(box)

        self.save_section = box = Section("Save")
        lay = QVBoxLayout(box.body)
        lay.setContentsMargins(4, 2, 0, 2)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save annotation")
        self.save_button.setToolTip("Write '<image>_vessels.png' and '<image>_fov.png'.")
        self.folder_button = QToolButton()
        self.folder_button.setText("…")
        self.folder_button.setToolTip("Choose the folder for saved annotations.")
        row.addWidget(self.save_button, 1)
        row.addWidget(self.folder_button)
        lay.addLayout(row)
        self.folder_label = wrapped_label("Folder: next to the image", note=True)
        lay.addWidget(self.folder_label)
        self.save_status = wrapped_label()
        lay.addWidget(self.save_status)
        outer.addWidget(box)
        outer.addStretch(1)

        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.model_picker.changed.connect(self._on_model_changed)
        self.model_picker.error.connect(self._error)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.slider.valueChanged.connect(self._on_threshold)
        self.youden_button.clicked.connect(self.apply_youden)
        self.reapply_button.clicked.connect(self.reapply_threshold)
        self.speck_button.clicked.connect(self.remove_specks)
        self.gt_combo.currentIndexChanged.connect(self._on_gt_changed)
        self.folder_button.clicked.connect(self.choose_save_folder)
        self.save_button.clicked.connect(self.save_annotation)
        self._sync_controls()

    # ------------------------------------------------------------------ viewer <-> combos

    def _on_layers_changed(self, event=None) -> None:
        if not self.alive:
            return
        if self._putting and getattr(event, "type", "") == "inserted":
            self._connect_layer(event.value)
            return
        if event is not None and getattr(event, "type", "") == "removed":
            self._results.pop(id(event.value), None)
            self._gt_choice.pop(id(event.value), None)
            for res in self._results.values():
                if res.layers.get("vessels") is event.value:
                    res.edited = False  # the corrections went with the layer; unlock
                    res.resumed = None
        super()._on_layers_changed(event)

    @staticmethod
    def _fill_combo(combo: QComboBox, layers, keep, first: str | None = None) -> None:
        combo.blockSignals(True)
        combo.clear()
        if first is not None:
            combo.addItem(first, None)
        for lyr in layers:
            combo.addItem(lyr.name, lyr)
        idx = next((i for i in range(combo.count()) if combo.itemData(i) is keep), -1)
        if idx < 0:
            idx = 0 if first is not None or keep is not None else -1
        combo.setCurrentIndex(idx if combo.count() else -1)
        combo.blockSignals(False)

    def refresh_layers(self) -> None:
        """Re-list the image and ground-truth layers, keeping the current choices."""
        old_image = self.current_image()
        images = self._image_layers()
        keep = old_image
        if keep is None or keep not in images:
            photos = [lyr for lyr in images if not looks_like_annotation(lyr)]
            active = self.viewer.layers.selection.active
            keep = active if active in photos else (photos[-1] if photos else None)
        self._fill_combo(self.image_combo, images, keep)
        old_gt = self.gt_combo.currentData()
        old_candidates = {id(self.gt_combo.itemData(i)) for i in range(self.gt_combo.count())}
        candidates = self._gt_candidates()
        self._fill_combo(self.gt_combo, candidates, old_gt, first=NO_GT)
        if self.current_image() is not old_image:
            self._on_image_changed(show=False)  # a new layer: napari shows it already
        elif old_gt is not None and self.gt_combo.currentData() is not old_gt:
            self._on_gt_changed()
        elif any(id(lyr) not in old_candidates for lyr in candidates):
            self._autoselect_gt()  # a new annotation layer appeared (e.g. a dataset folder)
        if any(id(img) not in self._adopt_seen for img in images) or any(
            _roles.role_of(lyr) == "vessels"
            and _roles.info_of(lyr).get("source") == "file"
            and id(lyr) not in self._adopt_seen
            for lyr in self.viewer.layers
        ):
            self._schedule_adoption()

    def current_image(self):
        data = self.image_combo.currentData() if self.image_combo.count() else None
        return data if data is not None and data in self.viewer.layers else None

    def current_result(self) -> _Result | None:
        image = self.current_image()
        return self._results.get(id(image)) if image is not None else None

    def current_ground_truth(self):
        lyr = self.gt_combo.currentData()
        return lyr if lyr is not None and lyr in self.viewer.layers else None

    def set_image(self, layer) -> None:
        idx = next(i for i in range(self.image_combo.count()) if self.image_combo.itemData(i) is layer)
        self.image_combo.setCurrentIndex(idx)

    def set_ground_truth(self, layer) -> None:
        idx = next(i for i in range(self.gt_combo.count()) if self.gt_combo.itemData(i) is layer)
        self.gt_combo.setCurrentIndex(idx)

    def paired_ground_truth(self, image):
        """The ground truth that belongs to ``image``: the one chosen for it before, else its own
        annotation (reader metadata, or the name ``"<image> ground truth"``), else None."""
        if image is None:
            return None
        candidates = [self.gt_combo.itemData(i) for i in range(self.gt_combo.count())]
        candidates = [lyr for lyr in candidates if lyr is not None]
        if id(image) in self._gt_choice:
            chosen = self._gt_choice[id(image)]
            if chosen is None or chosen in candidates:
                return chosen
        for lyr in candidates:
            info = _roles.info_of(lyr)
            if info.get("role") == "ground_truth" and info.get("image") == image.name and not info.get("observer"):
                return lyr
        for lyr in candidates:
            if lyr.name == _roles.ground_truth_name(image.name):
                return lyr
        return None

    def _select_gt(self, layer) -> None:
        idx = next((i for i in range(self.gt_combo.count()) if self.gt_combo.itemData(i) is layer), 0)
        self.gt_combo.blockSignals(True)
        self.gt_combo.setCurrentIndex(idx)
        self.gt_combo.blockSignals(False)

    def _autoselect_gt(self) -> None:
        """Pick the image's own ground truth when it appears and none is chosen."""
        image = self.current_image()
        if image is None or self.gt_combo.currentData() is not None:
            return
        gt = self.paired_ground_truth(image)
        if gt is not None:
            self._select_gt(gt)
            self._on_gt_changed(remember=False)

    def _on_image_changed(self, *_, show: bool = True) -> None:
        image = self.current_image()
        if show:
            self.show_image(image)
        # The ground truth follows the image (never the previous image's annotation).
        self._select_gt(self.paired_ground_truth(image))
        # Errors layers of the other images would lie over this one as if they were its own.
        for res in self._results.values():
            errors = res.layer(self.viewer, "errors")
            if errors is not None:
                errors.visible = res.image is image
        res = self.current_result()
        if res is not None:
            self._syncing = True
            self.slider.setValue(res.threshold)
            self._syncing = False
            self._show_run_info(res)
        self._sync_controls()
        self._update_comparison()

    def show_image(self, image) -> None:
        """The canvas follows the Image box: the chosen photograph and its layers (probability,
        vessels, ground truth) are shown, the other images' photographs and layers hidden (their
        eye in the layer list brings them back; FOV layers stay as they are), its vessels layer
        (else the photograph) is selected, and the view fits it when its size differs."""
        if image is None:
            return
        previous = self.viewer.layers.selection.active
        mine = [image]
        res = self._results.get(id(image))
        if res is not None:
            mine += [res.layer(self.viewer, k) for k in ("probability", "vessels")]
        gt = self.paired_ground_truth(image)
        mine.append(gt)
        mine = [lyr for lyr in mine if lyr is not None]
        theirs = []
        for other in self._image_layers():
            if other is image or looks_like_annotation(other):
                continue
            theirs.append(other)
            r = self._results.get(id(other))
            if r is not None:
                theirs += [r.layer(self.viewer, k) for k in ("probability", "vessels", "errors")]
            theirs.append(self.paired_ground_truth(other))
        for lyr in theirs:
            if lyr is not None and lyr not in mine:
                lyr.visible = False
        for lyr in mine:
            lyr.visible = True
        vessels = res.layer(self.viewer, "vessels") if res is not None else None
        self.viewer.layers.selection.active = vessels if vessels is not None else image
        prev_shape = None
        if previous is not None and previous in self.viewer.layers and getattr(previous, "ndim", 0) >= 2:
            prev_shape = tuple(round(float(v)) for v in previous.extent.world[1][-2:])
        if prev_shape != tuple(round(float(v)) for v in image.extent.world[1][-2:]):
            self._fit_view(image)

    def _fit_view(self, layer) -> None:
        """Centre and zoom the camera on ``layer`` alone (napari's reset_view fits all layers)."""
        lo, hi = (np.asarray(v, float)[-2:] for v in layer.extent.world)
        size = np.maximum(hi - lo, 1.0)
        self.viewer.camera.center = tuple((lo + hi) / 2 - 0.5)
        canvas = np.asarray(getattr(self.viewer, "_canvas_size", (0, 0)), float)[-2:]
        if canvas.min() > 0:
            self.viewer.camera.zoom = 0.95 * float(np.min(canvas / size))

    # ------------------------------------------------------------------ models and devices

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self.is_running:
            self.refresh_models_soon()

    def _on_model_changed(self, card) -> None:
        if card is not None:
            self.clahe_check.setChecked(bool((card.input or {}).get("clahe")))
            self.fusion_check.setChecked(card_fusion(card) is not None)
