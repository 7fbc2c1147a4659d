"""The "Segment vessels" dock widget.

One button turns a fundus photograph into three layers (``<image>`` is the photograph's layer
name):

- ``"<image> vessel probability"``  image layer, 0..1, magma, additive blending;
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
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Qt, QTimer, Signal
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

from napari_dpn import comparison
from napari_dpn.errors import DPNError, InputError
from napari_dpn.scale import COMMON_FIELD_ANGLES
from napari_dpn.session import speck_components
from napari_dpn.text import duration

from . import _roles
from ._dock import DockWidget, Section, wrapped_label
from ._model_picker import DeviceCombo, ModelPicker

NO_GT = "(none)"
VESSEL_COLOUR = "#00e5ff"
FP_COLOUR = "#ff00ff"
FN_COLOUR = "#39ff14"
BRUSH_SIZE = 3
SPECK_PIXELS = 30
# Comparisons and speck removal on images up to this many pixels run at once on the GUI thread
# (tens of milliseconds); larger images go to a worker thread (an 8-Mpx AUC takes ~0.4 s).
INLINE_PIXELS = 1_000_000
EDIT_CHECK_MS = 300
# Between two steps of putting a result into the viewer: a real timer, not a zero-time one (a
# chain of those runs back to back without letting the event loop paint or take input).
STEP_MS = 10
NO_IMAGE_MESSAGE = "Open a fundus photograph first (File > Open, or File > Open Sample > DPN retinal vessels)."


# --------------------------------------------------------------------------- state


@dataclass
class _Outcome:
    """What the background job hands back (it never raises)."""

    run: int = 0
    layer: object = None
    fov_layer: object = None
    prediction: object = None
    prob: np.ndarray | None = None
    fov: np.ndarray | None = None
    mask: np.ndarray | None = None  # bool: prob >= threshold inside the FOV
    threshold: float = 0.5
    card: object = None
    model_label: str = ""
    scale: object = None  # scale.Scale: what the photograph was resampled by, and why
    error: str | None = None
    cancelled: bool = False


@dataclass
class _Result:
    """Everything the widget keeps for one image layer (segmented, or a resumed annotation)."""

    image: Image
    name: str
    prob: np.ndarray | None  # None: a resumed annotation not segmented yet
    fov: np.ndarray | None
    threshold: float
    card: object = None
    model_label: str = ""
    device: str = ""
    seconds: float = 0.0
    note: str | None = None
    scale: str = ""  # the scale the network saw, in words (scale.Scale.describe)
    layers: dict = field(default_factory=dict)  # "probability", "vessels", "fov", "errors"
    edited: bool = False
    edits: int = 0  # paint events on the vessels layer, ever
    resumed: str | None = None  # the annotation file it was resumed from
    roc_cache: dict = field(default_factory=dict)  # id(gt layer) -> (auc, youden)
    metrics: dict | None = None
    _mask: tuple | None = None  # (prob, threshold, mask) of the last vessel_mask()

    def vessel_mask(self) -> np.ndarray | None:
        """What the threshold gives: probability >= threshold inside the FOV (cached).

        Outside the FOV there is no retina to annotate, and a network trained with an FOV-only loss
        (ours) is free to answer anything there (a false vessel along the photograph's edge, say).
        """
        if self.prob is None:
            return None
        cached = self._mask
        if cached is not None and cached[0] is self.prob and cached[1] == self.threshold:
            return cached[2]
        mask = self.prob >= self.threshold
        if self.fov is not None:
            mask &= self.fov
        self._mask = (self.prob, self.threshold, mask)
        return mask

    def layer(self, viewer, kind):
        lyr = self.layers.get(kind)
        return lyr if lyr is not None and lyr in viewer.layers else None


@dataclass
class _Request:
    """One comparison with a ground truth, as it was when asked for."""

    serial: int
    res: _Result
    gt_layer: object
    pred: np.ndarray
    gt: np.ndarray
    roc: bool


class _Bridge(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progress = Signal(float)


def _label_colormap(colours: dict):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", **colours})


def _light_worker(func, *args):
    """A plain napari worker for short numeric jobs (comparison, specks)."""
    from napari.qt.threading import create_worker

    return create_worker(func, *args, _start_thread=False)


def looks_like_annotation(layer) -> bool:
    """True for an image layer that is a mask (a ground truth or saved annotation opened by
    napari's own reader, say): never preselected as the photograph to segment."""
    from ._reader import annotation_of

    if _roles.role_of(layer) in ("ground_truth", "fov", "mask", "vessels", "errors"):
        return True
    source = getattr(getattr(layer, "source", None), "path", None)
    return annotation_of(layer.name) is not None or (source is not None and annotation_of(Path(source)) is not None)


# --------------------------------------------------------------------------- widget


class SegmentWidget(DockWidget):
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
        self.fusion_check.setChecked(True)
        self.fusion_check.setToolTip(
            "Also run the network at 1.5x the working scale and average the two maps: more of the "
            "thin vessels, for about 3x the time (skipped for very large photographs)."
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
            self._on_image_changed()
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

    def _on_image_changed(self, *_) -> None:
        image = self.current_image()
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

    # ------------------------------------------------------------------ models and devices

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self.is_running:
            self.refresh_models()

    def _on_model_changed(self, card) -> None:
        if card is not None:
            self.clahe_check.setChecked(bool((card.input or {}).get("clahe")))

    # ------------------------------------------------------------------ running

    def _error(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    @staticmethod
    def image_data(layer) -> np.ndarray:
        """The layer's pixels as they are (converted to float in the worker), or InputError
        with a sentence for the user.  Only cheap checks here: this runs on the GUI thread."""
        if layer is None:
            raise InputError(NO_IMAGE_MESSAGE)
        if isinstance(layer, Labels):
            raise InputError(
                f"'{layer.name}' is a labels layer (a mask); choose the fundus photograph, an image layer, to segment."
            )
        if not isinstance(layer, Image):
            raise InputError(
                f"'{layer.name}' is a {type(layer).__name__.lower()} layer; choose an image layer to segment."
            )
        data = layer.data[0] if layer.multiscale else layer.data
        data = np.asarray(data)
        if data.ndim - (1 if layer.rgb else 0) != 2:
            raise InputError(
                f"'{layer.name}' is a {data.ndim}-D stack {tuple(data.shape)}; "
                "DPN segments one 2-D photograph at a time."
            )
        if looks_like_annotation(layer):
            raise InputError(
                f"'{layer.name}' is an annotation (a mask), not a photograph; open "
                "it with the 'DPN retinal vessels' reader to get a labels layer, "
                "and choose the photograph to segment."
            )
        return data

    @classmethod
    def image_rgb(cls, layer) -> np.ndarray:
        """The layer's pixels as core RGB float (for scripts; the widget converts in its worker)."""
        from napari_dpn.image_io import as_rgb

        return as_rgb(cls.image_data(layer))

    @property
    def is_running(self) -> bool:
        return self._worker is not None or self._arrival is not None

    def run(self, *_, layer=None):
        """Segment the chosen image layer (or ``layer``) in a background worker.

        Returns the worker (or None if nothing was started).  Corrections on the image's vessels
        layer are never replaced: with an edited layer the new result goes to the probability
        layer only.
        """
        if self.is_running or not self.alive:
            return None
        layer = layer if layer is not None else self.current_image()
        if layer is None and len(self.viewer.layers):
            layer = self.viewer.layers.selection.active
        try:
            data = self.image_data(layer)
        except DPNError as exc:
            self._error(str(exc))
            return None
        card = self.current_card()
        model = self.model_combo.currentData()
        if card is None or not isinstance(model, tuple):
            self._error("No model chosen: install the shipped weights or use Browse… to pick a weights file.")
            return None
        fov_layer = self._loaded_fov_layer(layer)
        fov = np.asarray(fov_layer.data) > 0 if fov_layer is not None else None
        device = self.device_combo.currentText() or "auto"
        self._run_serial += 1
        worker = self._start_worker(
            self._job,
            f"segmenting '{layer.name}' with {card.name}",
            self._run_serial,
            layer,
            fov_layer,
            model[1],
            device,
            self.clahe_check.isChecked(),
            self.field_combo.currentData(),
            self.fusion_check.isChecked(),
            data,
            fov,
            returned=self._on_returned,
            finished=self._on_finished,
        )
        self._run_started = time.monotonic()
        self._set_running(True)
        self.status.setText(f"Segmenting '{layer.name}' with {card.name} on {device}…")
        worker.start()
        return worker

    def cancel(self, *_) -> None:
        if self._worker is not None:
            self._cancel.set()
            self.status.setText("Cancelling…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.progress.setVisible(running)
        # Busy until a tiled run reports its first tile; a single pass has nothing to report.
        self.progress.setRange(0, 0)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        for w in (
            self.model_combo,
            self.device_combo,
            self.clahe_check,
            self.fusion_check,
            self.field_combo,
            self.image_combo,
            self.refresh_button,
        ):
            w.setEnabled(not running)

    def _on_progress(self, fraction: float) -> None:
        if not self.alive or self._worker is None:
            return
        fraction = max(0.0, min(1.0, float(fraction)))
        if fraction >= 1.0:
            return  # the pass is over; the bar stays busy while the result is put in place
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 100)
        self.progress.setValue(int(round(100 * fraction)))
        if fraction > 0:
            elapsed = time.monotonic() - self._run_started
            self.progress.setFormat(f"%p% · ETA {duration(elapsed * (1 - fraction) / fraction)}")

    def _load(self, spec: str):
        """Load (and cache) a model; runs in the worker thread."""
        from napari_dpn.models import load_model, resolve_model_path

        path = resolve_model_path(spec)
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._models:
            self._models[key] = load_model(path, device="cpu")
        return self._models[key]

    def _job(self, run, layer, fov_layer, spec, device, clahe, field, fused, data, fov, should_stop) -> _Outcome:
        """Background work: convert, load, segment at the model's scale (``segmentation.segment``:
        FOV, scale, network, map back), threshold.  Never raises.  ``field``: the camera's field
        angle, None (estimated) or 'native'; ``fused``: the two-scale fusion."""
        out = _Outcome(run=run, layer=layer, fov_layer=fov_layer)
        try:
            from napari_dpn.image_io import as_rgb
            from napari_dpn.segmentation import DEFAULT_FUSION, segment

            rgb = as_rgb(data)
            loaded = self._load(spec)
            card = loaded.card
            if bool(card.input.get("clahe")) != clahe:
                card = dataclasses.replace(card, input={**card.input, "clahe": clahe})
                loaded = dataclasses.replace(loaded, card=card)
            if should_stop():
                return dataclasses.replace(out, cancelled=True)
            seg = segment(
                loaded,
                rgb,
                fov=fov,
                scale="native" if field == "native" else "auto",
                field_angle=field if isinstance(field, float) else None,
                fusion=DEFAULT_FUSION if fused else None,
                device=device,
                progress=self._bridge.progress.emit,
                should_stop=should_stop,
            )
            if should_stop():
                return dataclasses.replace(out, cancelled=True)
            return dataclasses.replace(
                out,
                prediction=seg.prediction,
                prob=seg.probability,
                fov=seg.fov,
                mask=seg.mask(),
                threshold=seg.threshold,
                card=card,
                model_label=card.name,
                scale=seg.scale,
            )
        except DPNError as exc:
            if should_stop():
                return dataclasses.replace(out, cancelled=True)
            return dataclasses.replace(out, error=str(exc))
        except MemoryError:
            return dataclasses.replace(
                out, error=f"Out of memory on {device}: choose 'cpu' as device or a smaller image."
            )
        except Exception as exc:  # noqa: BLE001 - shown as a notification, never a traceback
            if should_stop():
                return dataclasses.replace(out, cancelled=True)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if "out of memory" in text.lower():
                return dataclasses.replace(out, error=f"Out of memory on {device}: choose 'cpu' as device.")
            return dataclasses.replace(out, error=f"Segmentation failed ({type(exc).__name__}: {text}).")

    def _on_finished(self) -> None:
        if not self.alive:
            return
        self._worker = None
        if self._arrival is None:
            self._set_running(False)
            self._sync_controls()

    def _on_returned(self, out: _Outcome) -> None:
        if not self.alive or out.run != self._run_serial:
            return
        if out.cancelled:
            self.status.setText("Cancelled; nothing was changed.")
            return
        if out.error:
            self._error(out.error)
            return
        layer = out.layer
        if layer not in self.viewer.layers:
            self.status.setText("The image layer was closed while segmenting.")
            return
        pred = out.prediction
        fov_layer = out.fov_layer if out.fov_layer in self.viewer.layers else None
        old = self._results.get(id(layer))
        # Corrections made before the run or while it ran stay; the result goes beside them.
        keep = old is not None and old.edited and old.layer(self.viewer, "vessels") is not None
        if keep:
            res = old
            res.prob, res.threshold, res.card = out.prob, out.threshold, out.card
            if res.fov is None or res.layer(self.viewer, "fov") is None:
                res.fov = out.fov
        else:
            res = _Result(
                image=layer,
                name=layer.name,
                prob=out.prob,
                fov=out.fov,
                threshold=out.threshold,
                layers=dict(old.layers) if old else {},
            )
            self._results[id(layer)] = res
        res.model_label, res.device = out.model_label, str(pred.device)
        res.seconds, res.note = float(pred.seconds), getattr(pred, "note", None) or getattr(out.scale, "note", None)
        res.scale = out.scale.describe() if out.scale is not None else ""
        res.roc_cache = {}
        res._mask = (res.prob, res.threshold, out.mask) if res.fov is out.fov else None
        steps = [lambda: self._put_probability(res), lambda: self._put_fov(res, fov_layer)]
        if not keep:
            steps.append(lambda: self._put_vessels(res, res.vessel_mask().astype(np.uint8)))
        steps.append(lambda: self._arrived(res, keep))
        self._arrival = deque(steps)
        QTimer.singleShot(STEP_MS, self._next_arrival_step)

    def _next_arrival_step(self) -> None:
        """Put a new result into the viewer one layer per event-loop turn: adding a layer costs
        napari 0.1–0.3 s, three at once stalled the viewer for over half a second."""
        if not self.alive or self._arrival is None:
            return
        step = self._arrival.popleft()
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - never leave the widget half-busy
            self._arrival = None
            self._error(f"Could not show the result ({type(exc).__name__}: {exc}).")
        if self._arrival:
            QTimer.singleShot(STEP_MS, self._next_arrival_step)
            return
        self._arrival = None
        if self._worker is None:
            self._set_running(False)
            self._sync_controls()

    def _arrived(self, res: _Result, kept: bool) -> None:
        if res.image not in self.viewer.layers:
            self.status.setText("The image layer was closed while segmenting.")
            return
        if res.image is self.current_image():
            self._syncing = True
            self.slider.setValue(res.threshold)
            self._syncing = False
        self._show_run_info(res)
        if kept:
            message = (
                f"Your corrections in '{_roles.vessels_name(res.name)}' were kept; the new "
                f"result is in '{_roles.probability_name(res.name)}'. 'Re-apply "
                "threshold…' replaces the corrections by it."
            )
            self.status.setText(self.status.text() + " " + message)
            show_info(message)
        if res.note:
            show_warning(res.note)
        self._sync_controls()
        self._update_comparison()

    def _show_run_info(self, res: _Result) -> None:
        if res.prob is None:
            self.status.setText(
                f"'{res.name}': resumed from {Path(res.resumed).name}; "
                "'Segment vessels' adds a probability map without touching it."
                if res.resumed
                else f"'{res.name}': not segmented yet."
            )
            return
        text = f"'{res.name}': {res.model_label}, {res.seconds:.2f} s on {res.device}."
        if res.scale:
            text += f" Scale: {res.scale}."
        if res.note:
            text += f" Note: {res.note}"
        self.status.setText(text)

    # ------------------------------------------------------------------ layers

    def _loaded_fov_layer(self, image):
        """A FOV mask opened from a file for this image (dataset folder), if any."""
        for lyr in self.viewer.layers:
            info = _roles.info_of(lyr)
            if (
                isinstance(lyr, Labels)
                and info.get("role") == "fov"
                and info.get("source") == "file"
                and (info.get("image") == image.name or lyr.name == _roles.fov_name(image.name))
                and tuple(lyr.data.shape) == tuple(self._image_shape(image))
            ):
                return lyr
        return None

    @staticmethod
    def _image_shape(image):
        shape = (image.data[0] if image.multiscale else image.data).shape
        return shape[:2] if image.rgb else shape[-2:]

    def _put(self, res: _Result, kind: str, name: str, data, layer_type: str, **kwargs):
        """Update the result's layer of this kind, or add it (never stack duplicates)."""
        lyr = res.layer(self.viewer, kind)
        if lyr is None and name in self.viewer.layers:
            cand = self.viewer.layers[name]
            if _roles.role_of(cand) == kind and (layer_type == "labels") == isinstance(cand, Labels):
                lyr = cand
        if lyr is not None:
            lyr.data = data
            lyr.name = name
        else:
            kwargs.setdefault("metadata", _roles.meta(kind, image=res.name))
            add = self.viewer.add_labels if layer_type == "labels" else self.viewer.add_image
            self._putting = True  # our own output: nothing to re-list
            try:
                lyr = add(
                    data,
                    name=name,
                    translate=tuple(res.image.translate[-2:]),
                    scale=tuple(res.image.scale[-2:]),
                    **kwargs,
                )
            finally:
                self._putting = False
        res.layers[kind] = lyr
        return lyr

    def _put_probability(self, res: _Result) -> None:
        self._put(
            res,
            "probability",
            _roles.probability_name(res.name),
            res.prob,
            "image",
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            opacity=0.7,
            blending="additive",
        )

    def _put_fov(self, res: _Result, fov_layer) -> None:
        if fov_layer is not None:
            res.layers["fov"] = fov_layer
        elif res.fov is not None and not (res.edited and res.layer(self.viewer, "fov") is not None):
            self._put(
                res,
                "fov",
                _roles.fov_name(res.name),
                res.fov.astype(np.uint8),
                "labels",
                visible=False,
                opacity=0.3,
                metadata=_roles.meta("fov", image=res.name, source="estimated"),
            )

    def _put_vessels(self, res: _Result, mask: np.ndarray) -> None:
        vessels = res.layer(self.viewer, "vessels")
        if vessels is not None:
            self._unwatch_vessels(vessels)
        vessels = self._put(
            res,
            "vessels",
            _roles.vessels_name(res.name),
            mask,
            "labels",
            opacity=0.8,
            colormap=_label_colormap({1: VESSEL_COLOUR}),
        )
        _roles.set_info(vessels, corrected=None, saved=None)
        res.edited = False
        self._watch_vessels(vessels)
        vessels.selected_label = 1
        vessels.brush_size = BRUSH_SIZE
        vessels.mode = "paint"
        self.viewer.layers.selection.active = vessels

    def _show_layers(self, res: _Result, fov_layer) -> None:
        """All of a result's layers at once (a re-threshold whose vessels layer was deleted)."""
        self._put_probability(res)
        self._put_fov(res, fov_layer)
        self._put_vessels(res, res.vessel_mask().astype(np.uint8))

    def _watch_vessels(self, layer) -> None:
        self._unwatch_vessels(layer)
        layer.events.paint.connect(self._on_paint)
        layer.events.set_data.connect(self._on_vessels_data)

    def _unwatch_vessels(self, layer) -> None:
        for emitter, slot in ((layer.events.paint, self._on_paint), (layer.events.set_data, self._on_vessels_data)):
            try:
                emitter.disconnect(slot)
            except (TypeError, ValueError, RuntimeError):
                pass

    def _result_of_vessels(self, layer) -> _Result | None:
        for res in self._results.values():
            if res.layers.get("vessels") is layer:
                return res
        return None

    def _on_paint(self, event=None) -> None:
        if not self.alive:
            return
        source = getattr(event, "source", None)
        res = self._result_of_vessels(source) if source is not None else self.current_result()
        if res is None:
            return
        res.edits += 1
        if not res.edited:
            res.edited = True
            vessels = res.layer(self.viewer, "vessels")
            if vessels is not None:
                _roles.set_info(vessels, corrected=True)
        self._edit_timer.start()
        if res is self.current_result():
            self._sync_controls()
            self._update_comparison()

    def _on_vessels_data(self, event=None) -> None:
        # Undo and redo replace pixels without a paint event: look again shortly.
        if self.alive:
            self._edit_timer.start()

    def _check_edits(self) -> None:
        """Make the lock follow the pixels: unlock a result whose vessels layer is back to the
        thresholded mask (every stroke undone), lock one that differs from it (a redo, or a
        change made from the console)."""
        if not self.alive:
            return
        for res in list(self._results.values()):
            vessels = res.layer(self.viewer, "vessels")
            mask = res.vessel_mask()
            if vessels is None or mask is None:
                continue
            data = np.asarray(vessels.data)
            same = data.shape == mask.shape and np.array_equal(data > 0, mask)
            if same == (not res.edited):
                continue
            res.edited = not same
            if same:
                res.resumed = None
            _roles.set_info(
                vessels, corrected=None if same else True, saved=None if same else _roles.info_of(vessels).get("saved")
            )
            if res is self.current_result():
                self._sync_controls()
                self._update_comparison()
                if same:
                    self.edit_status.setText("All corrections undone: the threshold is unlocked.")

    # ------------------------------------------------------------------ threshold

    @property
    def threshold(self) -> float:
        return float(self.slider.value())

    def set_threshold(self, value: float) -> None:
        """Move the slider (as a user would)."""
        self.slider.setValue(float(value))

    def _on_threshold(self, value) -> None:
        if self._syncing or not self.alive:
            return
        res = self.current_result()
        if res is None or res.prob is None:
            return
        if res.edited:
            # Never overwrite corrections; the slider is disabled, this is only a safeguard.
            self._sync_controls()
            return
        res.threshold = float(value)
        self._apply_threshold(res)
        self._update_comparison()

    def _apply_threshold(self, res: _Result) -> None:
        vessels = res.layer(self.viewer, "vessels")
        mask = res.vessel_mask().astype(np.uint8)
        if vessels is None:
            self._show_layers(res, self._loaded_fov_layer(res.image))
            return
        vessels.data = mask
        _roles.set_info(vessels, corrected=None, saved=None)

    def reapply_threshold(self, *_) -> bool:
        """Discard corrections (after confirmation) and threshold the probability again."""
        res = self.current_result()
        if res is None:
            return False
        if res.prob is None:
            show_warning("Segment the image first: there is no probability map to threshold yet.")
            return False
        if res.edited:
            changed = self._edited_pixels(res)
            if not self._confirm(
                "Discard corrections?",
                f"Re-applying the threshold {self.threshold:.3f} replaces "
                f"'{_roles.vessels_name(res.name)}' and discards your corrections "
                f"({changed:,} pixels differ from the thresholded result).",
                ok="Discard corrections",
            ):
                return False
        res.edited = False
        res.resumed = None
        res.threshold = self.threshold
        self._apply_threshold(res)
        self._sync_controls()
        self._update_comparison()
        return True

    def _edited_pixels(self, res: _Result) -> int:
        vessels = res.layer(self.viewer, "vessels")
        mask = res.vessel_mask()
        if vessels is None or mask is None:
            return 0
        return int(np.count_nonzero((np.asarray(vessels.data) > 0) != mask))

    def apply_youden(self, *_) -> float | None:
        """Set the ROC-optimal threshold (needs a ground-truth layer)."""
        res = self.current_result()
        gt_layer = self.current_ground_truth()
        gt = self._gt_mask(res) if res is not None else None
        if res is None or res.prob is None or gt is None:
            show_warning("The ROC-optimal threshold needs a segmented image and its ground truth.")
            return None
        cached = res.roc_cache.get(id(gt_layer))
        t = cached[1] if cached is not None else comparison.youden_threshold(res.prob, gt, res.fov)
        if t is None:
            show_warning("The ground truth has no vessel (or only vessel) inside the FOV.")
            return None
        self.set_threshold(t)
        return t

    def remove_specks(self, *_) -> bool:
        """Erase vessel pieces smaller than the speck size, as one undoable edit."""
        res = self.current_result()
        vessels = res.layer(self.viewer, "vessels") if res is not None else None
        if vessels is None:
            show_warning("Segment the image first: there is no vessels layer to clean.")
            return False
        if self._speck_worker is not None:
            return False
        size = int(self.speck_spin.value())
        mask = np.asarray(vessels.data) > 0
        edits = res.edits
        if mask.size <= INLINE_PIXELS:
            self._apply_specks(res, vessels, edits, size, speck_components(mask, size))
            return True
        worker = _light_worker(speck_components, mask, size)
        worker.returned.connect(lambda out, r=res, v=vessels, e=edits, s=size: self._apply_specks(r, v, e, s, out))
        worker.finished.connect(self._on_speck_finished)
        self._speck_worker = worker
        self.speck_button.setEnabled(False)
        self.edit_status.setText("Looking for specks…")
        worker.start()
        return True

    def _on_speck_finished(self) -> None:
        if self.alive:
            self._speck_worker = None
            self.speck_button.setEnabled(self.current_result() is not None)

    def _apply_specks(self, res, vessels, edits, size, found) -> None:
        if not self.alive or vessels not in self.viewer.layers:
            return
        if res.edits != edits:  # painted meanwhile: the pieces found may have changed
            self._speck_worker = None
            self.remove_specks()
            return
        pixels, n = found
        indices = np.nonzero(pixels)
        if n == 0:
            self.edit_status.setText(f"No speck smaller than {size} px.")
            return
        with vessels.block_history():  # one Ctrl+Z undoes it all; emits one paint event
            vessels.data_setitem(indices, 0)
        self.edit_status.setText(
            f"Removed {n} speck(s) ({indices[0].size:,} px) smaller than {size} px. Ctrl+Z undoes it."
        )

    def _sync_controls(self) -> None:
        res = self.current_result()
        has = res is not None
        has_prob = has and res.prob is not None
        edited = has and res.edited
        self.slider.setEnabled(has_prob and not edited)
        self.youden_button.setEnabled(has_prob and not edited and self.current_ground_truth() is not None)
        self.reapply_button.setVisible(edited and has_prob)
        self.speck_button.setEnabled(has and self._speck_worker is None)
        self.save_button.setEnabled(has)
        self.edit_status.setStyleSheet("color: #f0a000; font-weight: bold;" if edited else "color: gray;")
        if edited and not has_prob:
            self.edit_status.setText(
                "Your saved annotation — 'Segment vessels' adds a probability map without changing it."
            )
        elif edited:
            self.edit_status.setText("Edited — threshold locked; 'Re-apply threshold' discards edits.")
        elif has:
            self.edit_status.setText("Paint or erase on the vessels layer to correct it.")
        else:
            self.edit_status.setText("")
        self.threshold_section.set_summary(
            "" if not has_prob else f"{res.threshold:.3f}, edited" if edited else f"{res.threshold:.3f}"
        )

    # ------------------------------------------------------------------ ground truth

    def _on_gt_changed(self, *_, remember: bool = True) -> None:
        if not self.alive:
            return
        image = self.current_image()
        if remember and image is not None:
            self._gt_choice[id(image)] = self.current_ground_truth()
        self._sync_controls()
        self._update_comparison()

    def _gt_mask(self, res: _Result | None):
        gt = self.current_ground_truth()
        if res is None or gt is None:
            return None
        data = np.asarray(gt.data[0] if getattr(gt, "multiscale", False) else gt.data)
        if data.shape != tuple(self._image_shape(res.image)):
            return None
        return data > 0

    def _remove_errors(self, res: _Result) -> None:
        errors = res.layer(self.viewer, "errors")
        if errors is not None:
            self.viewer.layers.remove(errors)
        res.metrics = None

    def _update_comparison(self) -> None:
        """Compare the current vessels layer with the chosen ground truth: at once for a small
        image, in a worker for a large one (the newest request wins)."""
        if not self.alive:
            return
        self._cmp_serial += 1
        res = self.current_result()
        gt_layer = self.current_ground_truth()
        self.compare_section.set_summary(gt_layer.name if gt_layer is not None else NO_GT)
        if res is None:
            self.metrics_label.setText(
                "Segment the image to compare it with a ground truth."
                if gt_layer is not None
                else "No ground truth chosen."
            )
            return
        if gt_layer is None:
            self.metrics_label.setText("No ground truth chosen.")
            self._remove_errors(res)
            return
        gt = self._gt_mask(res)
        if gt is None:
            self.metrics_label.setText(
                f"'{gt_layer.name}' has shape {tuple(np.shape(gt_layer.data))}, the image "
                f"{tuple(self._image_shape(res.image))}: choose the annotation of this image."
            )
            self._remove_errors(res)
            return
        vessels = res.layer(self.viewer, "vessels")
        pred = np.asarray(vessels.data) > 0 if vessels is not None else res.vessel_mask()
        if pred is None:
            return
        req = _Request(
            self._cmp_serial, res, gt_layer, pred, gt, roc=res.prob is not None and id(gt_layer) not in res.roc_cache
        )
        if pred.size <= INLINE_PIXELS:
            self._apply_comparison(req, self._compare(req))
            return
        self.metrics_label.setText(f"Comparing '{res.name}' with '{gt_layer.name}'…")
        if self._cmp_worker is not None:
            self._cmp_pending = req
            return
        self._start_comparison(req)

    @staticmethod
    def _compare(req: _Request) -> dict:
        return comparison.compare(req.pred, req.gt, req.res.fov, req.res.prob, req.roc)

    def _start_comparison(self, req: _Request) -> None:
        worker = _light_worker(self._compare, req)
        worker.returned.connect(lambda out, r=req: self._apply_comparison(r, out))
        worker.finished.connect(self._on_comparison_finished)
        self._cmp_worker = worker
        worker.start()

    def _on_comparison_finished(self) -> None:
        if not self.alive:
            return
        self._cmp_worker = None
        req, self._cmp_pending = self._cmp_pending, None
        if req is not None and req.serial == self._cmp_serial:
            self._start_comparison(req)

    @property
    def comparing(self) -> bool:
        """True while a comparison with the ground truth is computed in the background."""
        return self._cmp_worker is not None or self._cmp_pending is not None

    @property
    def busy(self) -> bool:
        """True while anything runs in the background (segmenting, comparing, speck removal)."""
        return self.is_running or self.comparing or self._speck_worker is not None

    def _apply_comparison(self, req: _Request, out: dict) -> None:
        if not self.alive:
            return
        res = req.res
        if "auc" in out:
            res.roc_cache[id(req.gt_layer)] = (out["auc"], out.get("youden"))
        if (
            req.serial != self._cmp_serial
            or res is not self.current_result()
            or req.gt_layer is not self.current_ground_truth()
        ):
            return  # a newer request is on its way
        m = dict(out["metrics"])
        auc, _ = res.roc_cache.get(id(req.gt_layer), (math.nan, None))
        m["auc"] = auc
        res.metrics = m
        auc_text = f"{auc:.4f}" if math.isfinite(auc) else "–"
        what = (
            "your annotation"
            if res.prob is None
            else "corrected mask"
            if res.edited
            else f"threshold {res.threshold:.3f}"
        )
        self.metrics_label.setText(
            f"'{res.name}' vs '{req.gt_layer.name}', inside the FOV ({what}):\n"
            f"Se {m['se']:.4f}   Sp {m['sp']:.4f}   Acc {m['acc']:.4f}\n"
            f"AUC {auc_text}   F1 {m['f1']:.4f}\n"
            "errors layer: magenta = false positive, green = false negative"
        )
        self._put(
            res,
            "errors",
            _roles.errors_name(res.name),
            out["errors"],
            "labels",
            opacity=0.9,
            colormap=_label_colormap({1: FP_COLOUR, 2: FN_COLOUR}),
        )
        vessels = res.layer(self.viewer, "vessels")
        if vessels is not None and self.viewer.layers.selection.active is not vessels:
            self.viewer.layers.selection.active = vessels

    @property
    def metrics(self) -> dict | None:
        res = self.current_result()
        return getattr(res, "metrics", None) if res is not None else None

    # ------------------------------------------------------------------ resuming saved annotations

    def _schedule_adoption(self) -> None:
        # Not from inside napari's layer-inserted event: adopting may add layers itself.
        if not self._adopt_scheduled:
            self._adopt_scheduled = True
            QTimer.singleShot(0, self._adopt_all)

    def _adopt_all(self) -> None:
        self._adopt_scheduled = False
        if not self.alive:
            return
        for lyr in self.viewer.layers:  # annotations opened with the reader, at any time
            if _roles.role_of(lyr) == "vessels" and _roles.info_of(lyr).get("source") == "file":
                self._adopt_seen.add(id(lyr))
        for image in self._image_layers():
            first = id(image) not in self._adopt_seen
            self._adopt_seen.add(id(image))
            if looks_like_annotation(image) or id(image) in self._results:
                continue
            try:
                # Files only when the photograph is new; open layers whenever they appear.
                self.resume_annotation(image, files=first)
            except DPNError as exc:
                show_warning(f"Could not resume the saved annotation of '{image.name}': {exc}")
        self._sync_controls()
        self._update_comparison()

    def _linked_labels(self, image, role: str, name: str):
        shape = tuple(self._image_shape(image))
        for lyr in self.viewer.layers:
            info = _roles.info_of(lyr)
            if (
                isinstance(lyr, Labels)
                and tuple(np.shape(lyr.data)) == shape
                and (
                    (info.get("role") == role and info.get("image") == image.name)
                    or (lyr.name == name and info.get("role") in (role, None))
                )
            ):
                return lyr
        return None

    def resume_annotation(self, image, files: bool = True) -> bool:
        """Make an annotation saved earlier for ``image`` its vessels layer (edited, ready to save).

        The annotation is a labels layer already open for it (the napari-dpn reader names a saved
        ``<stem>_vessels.png`` ``"<stem> vessels"``), else the file in the save folder or beside
        the image.  Returns True when one was found.
        """
        from napari_dpn.annotations import annotation_paths
        from napari_dpn.image_io import read_mask

        vessels = self._linked_labels(image, "vessels", _roles.vessels_name(image.name))
        if vessels is not None and not _roles.is_corrected(vessels):
            vessels = None  # a bare network output (another widget's): nothing to resume
        fov_layer = self._linked_labels(image, "fov", _roles.fov_name(image.name))
        shape = tuple(self._image_shape(image))
        source = _roles.info_of(vessels).get("path") if vessels is not None else None
        if vessels is None:
            image_path = self.image_path(image) if files else None
            if image_path is None:
                return False
            found = None
            for folder in (self._save_folder, None):
                paths = annotation_paths(image_path, folder)
                if paths[0].is_file():
                    found = paths
                    break
            if found is None:
                return False
            mask = read_mask(found[0])
            if mask.shape != shape:
                raise InputError(f"{found[0].name} is {mask.shape[1]}x{mask.shape[0]}, the image {shape[1]}x{shape[0]}")
            source = str(found[0])
            vessels = self.viewer.add_labels(
                mask.astype(np.uint8),
                name=_roles.vessels_name(image.name),
                opacity=0.8,
                colormap=_label_colormap({1: VESSEL_COLOUR}),
                metadata=_roles.meta("vessels", image=image.name, path=source, source="file", corrected=True),
            )
            vessels.translate = image.translate[-2:]
            vessels.scale = image.scale[-2:]
            if fov_layer is None and found[1].is_file():
                fov = read_mask(found[1])
                if fov.shape == shape:
                    fov_layer = self.viewer.add_labels(
                        fov.astype(np.uint8),
                        name=_roles.fov_name(image.name),
                        opacity=0.3,
                        visible=False,
                        metadata=_roles.meta("fov", image=image.name, path=str(found[1]), source="file"),
                    )
                    fov_layer.translate = image.translate[-2:]
                    fov_layer.scale = image.scale[-2:]
        _roles.set_info(vessels, role="vessels", image=image.name, corrected=True)
        fov = np.asarray(fov_layer.data) > 0 if fov_layer is not None else None
        res = _Result(
            image=image,
            name=image.name,
            prob=None,
            fov=fov,
            threshold=self.threshold,
            layers={"vessels": vessels, **({"fov": fov_layer} if fov_layer else {})},
            edited=True,
            resumed=source or vessels.name,
        )
        self._results[id(image)] = res
        self._watch_vessels(vessels)
        vessels.selected_label = 1
        vessels.brush_size = BRUSH_SIZE
        where = f" from {Path(source).name}" if source else ""
        show_info(
            f"Resumed your annotation of '{image.name}'{where}: '{vessels.name}' holds it, ready to correct and save."
        )
        if image is self.current_image():
            self._show_run_info(res)
        return True

    # ------------------------------------------------------------------ saving

    def choose_save_folder(self, *_) -> None:
        folder = self._ask_folder("Folder for saved annotations")
        if folder is not None:
            self.set_save_folder(folder)

    def set_save_folder(self, folder) -> None:
        self._save_folder = Path(folder) if folder else None
        self.folder_label.setText(f"Folder: {self._save_folder}" if self._save_folder else "Folder: next to the image")

    @staticmethod
    def image_path(layer) -> Path | None:
        """The file the image layer came from, if any."""
        path = _roles.info_of(layer).get("path")
        if not path:
            path = getattr(getattr(layer, "source", None), "path", None)
        if path and Path(path).is_file():
            return Path(path)
        return None

    def save_annotation(self, *_) -> tuple[Path, Path | None] | None:
        """Write the corrected vessels and the FOV as '<stem>_vessels.png' / '<stem>_fov.png'."""
        from napari_dpn.annotations import annotation_paths
        from napari_dpn.image_io import write_mask

        res = self.current_result()
        vessels = res.layer(self.viewer, "vessels") if res is not None else None
        if vessels is None:
            self._save_error("Nothing to save yet: segment the image first.")
            return None
        image_path = self.image_path(res.image)
        folder = self._save_folder
        if folder is None and image_path is None:
            folder = self._ask_folder(f"Folder for the annotation of '{res.name}'")
            if folder is None:
                self.save_status.setText("Not saved.")
                return None
        if image_path is None:
            image_path = Path(folder) / f"{res.name}.png"
        try:
            vessels_path, fov_path = (Path(p) for p in annotation_paths(image_path, folder))
        except DPNError as exc:
            self._save_error(str(exc))
            return None
        fov_layer = res.layer(self.viewer, "fov")
        fov = np.asarray(fov_layer.data) > 0 if fov_layer is not None else res.fov
        targets = [vessels_path] + ([fov_path] if fov is not None else [])
        existing = [p for p in targets if p.exists()]
        if existing:
            protected = self._ground_truth_paths() & {p.resolve() for p in existing}
            warn = " One of them is a ground-truth annotation." if protected else ""
            if not self._confirm(
                "Overwrite?",
                f"{', '.join(p.name for p in existing)} already exist in {existing[0].parent}.{warn} Overwrite?",
                ok="Overwrite",
            ):
                self.save_status.setText("Not saved: the existing files were kept.")
                return None
        try:
            write_mask(vessels_path, np.asarray(vessels.data) > 0, on_value=255)
            if fov is not None:
                write_mask(fov_path, fov, on_value=255)
        except (DPNError, OSError) as exc:
            self._save_error(f"Cannot save the annotation: {exc}")
            return None
        _roles.set_info(vessels, corrected=True, saved=str(vessels_path))
        if fov is None:
            self.save_status.setText(
                f"Saved {vessels_path.name} in {vessels_path.parent} (no FOV "
                "mask to save: segment the image to estimate one)."
            )
            show_info(f"Saved {vessels_path}.")
            return vessels_path, None
        self.save_status.setText(f"Saved {vessels_path.name} and {fov_path.name} in {vessels_path.parent}.")
        show_info(f"Saved {vessels_path} and {fov_path.name}.")
        return vessels_path, fov_path

    def _ground_truth_paths(self) -> set[Path]:
        """Files of annotations opened as ground truth (or dataset masks): never overwritten
        without a warning.  The image's own saved annotation is not one of them."""
        paths = set()
        for lyr in self.viewer.layers:
            info = _roles.info_of(lyr)
            path = info.get("path")
            if path and (
                info.get("role") == "ground_truth"
                or (info.get("role") in ("fov", "mask") and not str(path).lower().endswith("_fov.png"))
            ):
                paths.add(Path(path).resolve())
        return paths

    def _save_error(self, message: str) -> None:
        self.save_status.setText(message)
        show_error(message)
